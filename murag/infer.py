r"""Inference binary: answers with attribution as JSONL, and task metrics (MuRAG paper, §4.1).

  python -m murag.infer --gin_file=gin_configs/experiments/murag_webqa_finetune_inbatch.gin \
    --gin_file=gin_configs/runs/infer.gin --gin.CHECKPOINT_PATH=\"/tmp/run\" \
    --gin.INFER_OUTPUT_DIR=\"/tmp/run/infer\"

The paper decodes answers with beam search of width 2 (§4.1) from the reader's encoding of the
query and its Top-K retrieved memory items (§3.4). For every example `infer` writes one JSON line
{"question_id", "answer", "retrieved_ids", "retrieved_scores", "targets"} to
`<output_dir>/<task>-predictions.jsonl` (one file per task of a mixture; multi-host runs write
one part per host and the primary merges them), then scores the predictions with the task's
seqio metric functions and writes `<output_dir>/<task>-metrics.json`.

Retrieved ids: the model returns the int32 `memory_ids` of its Top-K items; ids equal to the
stable int id of one of the example's string `positive_ids` are written as that string (so the
retrieval metrics can match them), the others as the decimal int id.
"""
import json
import os
import sys
from typing import Any, Callable, Mapping, Optional

import gin
import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from murag import checkpoints as checkpoints_lib
from murag import trainer as trainer_lib

if __name__ == "__main__":
  # Run the binary from the package module, so gin registers every configurable once (under
  # murag.infer) rather than a second time under __main__.
  import importlib as _importlib  # pylint: disable=g-import-not-at-top
  _mod = _importlib.import_module("murag.infer")
  _importlib.import_module("murag.train").main(sys.argv[1:], entry=_mod.infer)
  sys.exit(0)




def _str(x) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if hasattr(x, "item") and not isinstance(x, str):
    return _str(x.item())
  return str(x)


def _task_batches(task, cfg, converter, shard_id, num_shards, per_host_batch, max_examples):
  """Yields (raw examples list, model-feature numpy batch, n real rows) for one task."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tasks import pipeline  # pylint: disable=g-import-not-at-top
  lengths = dict(cfg.task_feature_lengths)
  ds = task.get_dataset(sequence_length=lengths, split=cfg.split, use_cached=cfg.use_cached,
                        shuffle=False, seed=cfg.seed, num_epochs=1,
                        shard_info=seqio.ShardInfo(shard_id, num_shards))
  if max_examples:
    ds = ds.take(max(1, max_examples // num_shards))
  # The converter maps one example to one example (no packing), so zipping the raw and the
  # converted stream of the same deterministic dataset keeps them aligned.
  model_ds = converter(ds, lengths)
  pairs = tf.data.Dataset.zip((ds, model_ds)).with_options(pipeline.dataset_options(cfg))
  raws, feats = [], []
  for raw, feat in pairs.as_numpy_iterator():
    raws.append(raw)
    feats.append(feat)
    if len(feats) == per_host_batch:
      yield raws, _stack(feats, per_host_batch), len(feats)
      raws, feats = [], []
  if feats:
    yield raws, _stack(feats, per_host_batch), len(feats)


def _stack(feats, rows):
  """Stacks examples and pads to `rows` by repeating the last one (outputs dropped later)."""
  feats = feats + [feats[-1]] * (rows - len(feats))
  return {k: np.stack([f[k] for f in feats]) for k in feats[0]}


def _retrieved_ids_as_strings(ids, raw, id_strings=None) -> list:
  from tasks import neighbours  # pylint: disable=g-import-not-at-top
  positives = [_str(p) for p in raw.get("positive_ids", [])]
  to_str = {int(i): p for p, i in zip(positives, neighbours.stable_int_ids(positives))}
  id_strings = id_strings or {}
  return [to_str.get(int(i), id_strings.get(int(i), str(int(i)))) for i in ids]


def make_predict_fn(model, partitioner, param_shardings, num_decodes: Optional[int]):
  """A jitted `(params, global batch) -> (tokens [B, Lt], aux)` with beam search."""

  def predict(params, batch):
    kwargs = {} if num_decodes is None else {"num_decodes": num_decodes}
    return model.predict_batch_with_aux(params, batch, **kwargs)

  fn = jax.jit(predict, in_shardings=(param_shardings, partitioner.batch_sharding()),
               out_shardings=partitioner.replicated())

  def run(params, batch):
    with jax.set_mesh(partitioner.mesh):
      return jax.device_get(fn(params, batch))
  return run


def predict_and_score(*, model, params, param_shardings, dataset_cfg, partitioner, output_dir,
                      num_decodes: Optional[int] = None, max_examples: Optional[int] = None,
                      feature_converter=None, compute_metrics: bool = True,
                      retrieved_id_strings: Optional[Mapping[int, str]] = None) -> dict:
  """Writes predictions JSONL per task and returns {task: {metric: value}}.

  Args:
    model: a BaseModel-style model with `predict_batch_with_aux` and `output_vocabulary`.
    params: parameters (sharded as `param_shardings`).
    param_shardings: NamedSharding tree of `params`.
    dataset_cfg: a `tasks.pipeline.DatasetConfig` naming a task or mixture (its tasks are
      evaluated one by one, in order, unshuffled, one pass).
    partitioner: the Partitioner.
    output_dir: where `<task>-predictions.jsonl` and `<task>-metrics.json` go.
    num_decodes: beam width (None: the model's default, 2 for MuRAG as in the paper).
    max_examples: evaluate at most this many examples per task.
    feature_converter: the model's converter instance.
    compute_metrics: run the tasks' metric functions.
    retrieved_id_strings: optional int memory id -> string id map (e.g. of the whole
      corpus, for full-wiki evaluation); retrieved ids found in it are written as strings.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  if dataset_cfg.module:
    importlib.import_module(dataset_cfg.module)
  provider = seqio.get_mixture_or_task(dataset_cfg.mixture_or_task_name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  os.makedirs(output_dir, exist_ok=True)
  pid, nproc = jax.process_index(), jax.process_count()
  partitioner.check_global_batch_size(dataset_cfg.batch_size)
  per_host = dataset_cfg.batch_size // nproc
  predict = make_predict_fn(model, partitioner, param_shardings, num_decodes)
  results = {}
  for task in tasks:
    vocab = getattr(model, "output_vocabulary", None) or task.output_features["targets"].vocabulary
    part = os.path.join(output_dir, f"{task.name}-predictions.jsonl")
    part_path = part if nproc == 1 else f"{part}-{pid:05d}-of-{nproc:05d}"
    # Every host must run the same number of global steps: agree on the longest shard.
    batches = list(_task_batches(task, dataset_cfg, feature_converter, pid, nproc, per_host,
                                 max_examples))
    n_steps = int(np.max(multihost_utils.process_allgather(np.asarray([len(batches)]))))
    with open(part_path, "w") as f:
      for i in range(n_steps):
        raws, feats, n = batches[i] if i < len(batches) else (
            [], {k: np.zeros_like(v) for k, v in batches[0][1].items()}, 0)
        tokens, aux = predict(params, partitioner.host_batch_to_global(feats))
        rows = slice(pid * per_host, pid * per_host + n)  # this host's rows of the global batch
        for raw, toks, ids, scores in zip(raws, np.asarray(tokens)[rows],
                                          np.asarray(aux["retrieved_ids"])[rows],
                                          np.asarray(aux["retrieved_scores"])[rows]):
          answer = vocab.decode([int(t) for t in toks])
          record = {
              "question_id": _str(raw.get("question_id", "")),
              "answer": task.postprocess_fn(answer, example=raw, is_target=False)
                        if task.postprocess_fn else answer,
              "retrieved_ids": _retrieved_ids_as_strings(ids, raw, retrieved_id_strings),
              "retrieved_scores": [float(s) for s in scores],
              "targets": (task.postprocess_fn(_str(raw.get("targets_pretokenized", "")),
                                              example=raw, is_target=True)
                          if task.postprocess_fn else _str(raw.get("targets_pretokenized", ""))),
          }
          f.write(json.dumps(record) + "\n")
    if nproc > 1:
      multihost_utils.sync_global_devices(f"murag.infer {task.name}")
      if pid == 0:
        with open(part, "w") as out:
          for p in range(nproc):
            with open(f"{part}-{p:05d}-of-{nproc:05d}") as src:
              out.write(src.read())
    if pid == 0 and compute_metrics and task.metric_fns:
      records = [json.loads(line) for line in open(part)]
      targets = [r["targets"] for r in records]
      predictions = [{"answer": r["answer"], "retrieved_ids": r["retrieved_ids"],
                      "retrieved_scores": r["retrieved_scores"]} for r in records]
      scores = {}
      for metric_fn in task.metric_fns:
        scores.update(metric_fn(targets, predictions))
      results[task.name] = scores
      with open(os.path.join(output_dir, f"{task.name}-metrics.json"), "w") as f:
        json.dump(scores, f, indent=1, sort_keys=True)
      logging.info("%s metrics: %s", task.name, scores)
  return results


def _input_shapes(model, dataset_cfg, converter):
  from murag import train as train_lib  # pylint: disable=g-import-not-at-top
  del model
  return train_lib.model_feature_shapes(dataset_cfg.batch_size, dataset_cfg.task_feature_lengths,
                                        converter)


@gin.configurable
def infer(*, model: Any, dataset_cfg: Any, checkpoint_path: str, partitioner: Any,
          output_dir: str, num_decodes: Optional[int] = None,
          max_examples: Optional[int] = None, compute_metrics: bool = True,
          feature_converter_kwargs: Optional[dict] = None,
          input_shapes_fn: Optional[Callable[..., tuple]] = None) -> dict:
  """Loads parameters from `checkpoint_path` and runs `predict_and_score`.

  Args:
    model: the model.
    dataset_cfg: `tasks.pipeline.DatasetConfig` of the evaluation task / mixture.
    checkpoint_path: a MODEL_DIR (newest step), a step directory or an export bundle.
    partitioner: the Partitioner.
    output_dir: output directory.
    num_decodes: beam width (None: model default).
    max_examples: per-task cap.
    compute_metrics: also score (eval.gin sets it; infer.gin too).
    feature_converter_kwargs: e.g. {"memory_slots": M}.
    input_shapes_fn: `(model, dataset_cfg, converter) -> (shapes, types)` for non-MuRAG models.

  Returns:
    {task name: {metric: value}}.
  """
  from murag import train as train_lib  # pylint: disable=g-import-not-at-top
  converter = train_lib.make_feature_converter(model, None, feature_converter_kwargs)
  shapes, types = (input_shapes_fn or _input_shapes)(model, dataset_cfg, converter)
  abstract, shardings, _ = trainer_lib.abstract_params(model, partitioner, shapes, types)
  params = checkpoints_lib.load_params(checkpoint_path, abstract, strict=True)
  return predict_and_score(model=model, params=params, param_shardings=shardings,
                           dataset_cfg=dataset_cfg, partitioner=partitioner,
                           output_dir=output_dir, num_decodes=num_decodes,
                           max_examples=max_examples, feature_converter=converter,
                           compute_metrics=compute_metrics)


@gin.configurable
def evaluate_with_inference(*, model, params, dataset_cfg, partitioner, step, model_dir,
                            num_decodes: Optional[int] = None, max_examples: Optional[int] = 64,
                            feature_converter=None,
                            feature_converter_kwargs: Optional[dict] = None) -> dict:
  """The trainer's periodic inference eval: flattened `{task/metric: value}` at `step`."""
  from murag import train as train_lib  # pylint: disable=g-import-not-at-top
  converter = train_lib.make_feature_converter(model, feature_converter,
                                               feature_converter_kwargs)
  shardings = jax.tree.map(lambda x: x.sharding, params)
  results = predict_and_score(
      model=model, params=params, param_shardings=shardings, dataset_cfg=dataset_cfg,
      partitioner=partitioner, output_dir=os.path.join(model_dir, "infer_eval", str(step)),
      num_decodes=num_decodes, max_examples=max_examples, feature_converter=converter)
  return {f"{task}/{k}": v for task, scores in results.items() for k, v in scores.items()
          if v is not None and np.ndim(v) == 0}
