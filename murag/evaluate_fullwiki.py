r"""Full-wiki evaluation: retrieval over the whole corpus, answers and metrics (paper §4.2).

In the full-wiki setting MuRAG answers each question from the Top-K items retrieved from
the global memory of every source (1.1M for WebQA, 500K for MultimodalQA) instead of the
question's own distractor set. Given a fine-tuned checkpoint (fixed-retrieval or in-batch)
and a memory directory written by `murag.build_memory`, this binary

1. obtains the eval split's Top-K neighbours: either reads a neighbour file of the memory
   (`evaluate_fullwiki.neighbours_file`), or (default) embeds the questions with the
   query encoder of the checkpoint that built the index (its parameter digest must match
   the index fingerprint, `allow_fingerprint_mismatch` overrides), searches the index and
   writes `<output_dir>/<task>-<split>-neighbours.jsonl`;
2. registers `<task>_fullwiki`, a copy of the fixed task (`webqa_fixed_v1` /
   `mmqa_fixed_v1`) reading that file, and decodes answers with beam search from the
   reader's encoding of [neighbours ; question] (`MuRAGConfig.retrieval_mode = "fixed"`,
   M = K memory slots), via `murag.infer.predict_and_score`;
3. writes `<output_dir>/<task>_fullwiki-predictions.jsonl` (question id, answer, retrieved
   string ids and scores, targets) and `<output_dir>/fullwiki-metrics.json`: the task's
   answer metrics (webqa_metrics: accuracy, Retr F1, ...; mmqa_metrics: EM / F1) plus
   retrieval recall@K, hit@K, MRR and F1 (`tasks.metrics.retrieval`) of the retrieved lists.

  python -m murag.evaluate_fullwiki \
    --gin_file=gin_configs/experiments/murag_webqa_eval_fullwiki.gin \
    --gin.CHECKPOINT_PATH=\"/runs/webqa_fixed\" --gin.MEMORY_DIR=\"/runs/memory\" \
    --gin.INFER_OUTPUT_DIR=\"/runs/fullwiki\"

Flags are `murag.train`'s (--gin_file, --gin.KEY=VALUE, --gin_search_paths, multi-host).
"""
import json
import os
import sys
from typing import Any, Optional

import gin
import jax
from absl import logging

if __name__ == "__main__":
  # Run from the package module so gin registers the configurable once (not under __main__).
  import importlib as _importlib  # pylint: disable=g-import-not-at-top
  _mod = _importlib.import_module("murag.evaluate_fullwiki")
  _importlib.import_module("murag.train").main(sys.argv[1:], entry=_mod.evaluate_fullwiki)
  sys.exit(0)


# Imported here, not lazily: these modules register gin configurables (build_memory, infer,
# IndexConfig, the BARTScore scorer imported by tasks.metrics.webqa), and gin refuses new
# configurables once `murag.train.main` has locked the config.
from murag import build_memory  # pylint: disable=g-import-not-at-top,g-bad-import-order
from murag import checkpoints as checkpoints_lib  # pylint: disable=g-import-not-at-top
from murag import infer  # pylint: disable=g-import-not-at-top
from murag import train as train_lib  # pylint: disable=g-import-not-at-top
from murag import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
from murag.memory import index as index_lib  # pylint: disable=g-import-not-at-top
from tasks import pipeline  # pylint: disable=g-import-not-at-top
from tasks.metrics import mmqa as _mmqa  # pylint: disable=g-import-not-at-top,unused-import
from tasks.metrics import retrieval  # pylint: disable=g-import-not-at-top
from tasks.metrics import webqa as _webqa  # pylint: disable=g-import-not-at-top,unused-import


def _metadata(memory_dir: str) -> dict:
  path = os.path.join(memory_dir, "metadata.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: evaluate_fullwiki.memory_dir must be a "
                            "directory written by murag.build_memory")
  with open(path) as f:
    return json.load(f)


def index_neighbours(*, model, memory_dir: str, meta: dict, query_cfg, k: int,
                     out_path: str, query_checkpoint_path: Optional[str] = None,
                     allow_fingerprint_mismatch: bool = False) -> dict:
  """Top-k neighbours of a query task's questions from the memory's index -> JSONL.

  The questions are embedded with the checkpoint that built the index (the memory's
  `metadata.json` names it) unless `query_checkpoint_path` says otherwise; the index
  refuses parameters whose digest does not match its fingerprint.

  Returns:
    Retrieval metrics of the written lists (recall@K, hit@K, MRR, F1).
  """
  ckpt = query_checkpoint_path or meta.get("checkpoint")
  if not ckpt:
    raise ValueError(f"{memory_dir}/metadata.json names no checkpoint (the memory was built "
                     "from fresh parameters): set evaluate_fullwiki.query_checkpoint_path")
  params = build_memory.load_model_params(model, dict(query_cfg.task_feature_lengths), ckpt)
  fingerprint = index_lib.make_fingerprint(build_memory.params_fingerprint(params),
                                           meta["ids"])
  index = index_lib.MemoryIndex.load(os.path.join(memory_dir, "index"),
                                     expected_fingerprint=fingerprint,
                                     allow_fingerprint_mismatch=allow_fingerprint_mismatch)
  table, metrics = build_memory.search_neighbours(model=model, params=params, index=index,
                                                  query_cfg=query_cfg, k=k)
  build_memory.write_table([table], out_path)
  logging.info("full-wiki neighbours of %d questions -> %s: %s", len(table), out_path, metrics)
  return metrics


@gin.configurable
def evaluate_fullwiki(*, model: Any, checkpoint_path: str, memory_dir: str, dataset_cfg: Any,
                      partitioner: Any, output_dir: str, query_task: str, k: int = 4,
                      neighbours_file: Optional[str] = None,
                      query_checkpoint_path: Optional[str] = None,
                      allow_fingerprint_mismatch: bool = False,
                      num_decodes: Optional[int] = None,
                      max_examples: Optional[int] = None) -> dict:
  """Full-wiki evaluation of `checkpoint_path` (see the module docstring).

  Args:
    model: a MuRAGModel with `retrieval_mode = "fixed"`.
    checkpoint_path: the evaluated checkpoint (MODEL_DIR, step dir or params bundle).
    memory_dir: a `murag.build_memory` output directory (metadata.json, index/).
    dataset_cfg: DatasetConfig naming the fixed task (webqa_fixed_v1 / mmqa_fixed_v1), the
      eval split, lengths and batch size.
    partitioner: the Partitioner.
    output_dir: where predictions, neighbours and metrics go.
    query_task: task whose questions are embedded for the search (webqa_inbatch_v1 /
      mmqa_inbatch_v1; its question ids are the fixed task's).
    k: neighbours per question (= the model's memory slots).
    neighbours_file: use this neighbour file (relative to memory_dir, or absolute) instead
      of searching the index.
    query_checkpoint_path: query encoder checkpoint (default: the memory's checkpoint).
    allow_fingerprint_mismatch: search an index built by other parameters.
    num_decodes: beam width (None: the model's, 2 as in the paper).
    max_examples: evaluate at most this many questions.

  Returns:
    {"task", "split", "k", "neighbours", "predictions", "metrics": {...},
     "index_retrieval": {...} (when the index was searched)}.
  """
  from tasks import murag_tasks  # pylint: disable=g-import-not-at-top
  from tasks import neighbours as nb  # pylint: disable=g-import-not-at-top
  if getattr(model.config, "retrieval_mode", None) != "fixed":
    raise ValueError("evaluate_fullwiki needs MuRAGConfig.retrieval_mode = 'fixed' (the memory "
                     "slots are the global neighbours); got "
                     f"{getattr(model.config, 'retrieval_mode', None)!r}")
  if k < 1:
    raise ValueError(f"evaluate_fullwiki.k must be >= 1, got {k}")
  meta = _metadata(memory_dir)
  os.makedirs(output_dir, exist_ok=True)
  if dataset_cfg.module:
    __import__(dataset_cfg.module)
  if dataset_cfg.tfds_data_dir:
    import seqio  # pylint: disable=g-import-not-at-top
    seqio.utils.set_tfds_data_dir_override(dataset_cfg.tfds_data_dir)
  task, split = dataset_cfg.mixture_or_task_name, dataset_cfg.split
  result = {"task": task, "split": split, "k": k, "memory_dir": memory_dir}
  if neighbours_file:
    path = os.path.join(memory_dir, neighbours_file)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"evaluate_fullwiki.neighbours_file: {path} not found")
  else:
    path = os.path.join(output_dir, f"{task}-{split}-neighbours.jsonl")
    query_cfg = pipeline.DatasetConfig(**{**vars(dataset_cfg), "mixture_or_task_name":
                                          query_task, "shuffle": False})
    if jax.process_index() == 0:  # like build_memory: the primary searches, all read the file
      result["index_retrieval"] = index_neighbours(
          model=model, memory_dir=memory_dir, meta=meta, query_cfg=query_cfg, k=k,
          out_path=path, query_checkpoint_path=query_checkpoint_path,
          allow_fingerprint_mismatch=allow_fingerprint_mismatch)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("evaluate_fullwiki:neighbours")
  result["neighbours"] = path
  fw_task = f"{task}_fullwiki"
  murag_tasks.register_with_neighbours(task, fw_task, path, top_k=k)

  eval_cfg = pipeline.DatasetConfig(**{**vars(dataset_cfg), "mixture_or_task_name": fw_task,
                                       "module": None, "shuffle": False})
  converter = train_lib.make_feature_converter(model, None, {"memory_slots": k})
  shapes, types = train_lib.model_feature_shapes(eval_cfg.batch_size,
                                                 eval_cfg.task_feature_lengths, converter)
  abstract, shardings, _ = trainer_lib.abstract_params(model, partitioner, shapes, types)
  params = checkpoints_lib.load_params(checkpoint_path, abstract, strict=True)
  ids = meta["ids"]
  id_strings = dict(zip((int(i) for i in nb.stable_int_ids(ids)), ids))
  scores = infer.predict_and_score(
      model=model, params=params, param_shardings=shardings, dataset_cfg=eval_cfg,
      partitioner=partitioner, output_dir=output_dir, num_decodes=num_decodes,
      max_examples=max_examples, feature_converter=converter,
      retrieved_id_strings=id_strings)
  if jax.process_index() != 0:
    return result
  pred_path = os.path.join(output_dir, f"{fw_task}-predictions.jsonl")
  with open(pred_path) as f:
    records = [json.loads(line) for line in f]
  metrics = dict(scores.get(fw_task, {}))
  metrics.update(retrieval.retrieval_metrics(
      [r["targets"] for r in records],
      [{"retrieved_ids": r["retrieved_ids"], "retrieved_scores": r["retrieved_scores"]}
       for r in records], ks=sorted({1, k})))
  result.update(predictions=pred_path, num_questions=len(records), metrics=metrics)
  with open(os.path.join(output_dir, "fullwiki-metrics.json"), "w") as f:
    json.dump(result, f, indent=1, sort_keys=True, default=float)
  logging.info("full-wiki %s/%s: %s", task, split, metrics)
  return result
