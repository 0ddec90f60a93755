r"""Training binary, mirroring `t5x.train` (MuRAG paper, Section 4.1; T5X, Roberts et al. 2022).

  python -m murag.train \
    --gin_file=gin_configs/experiments/murag_tiny_cpu_pretrain.gin \
    --gin.MODEL_DIR=\"/tmp/murag\" --gin.TRAIN_STEPS=20 --gin_search_paths=.

`train(...)` is keyword-only and receives every collaborator (model, dataset configs,
checkpoint config, partitioner), like `t5x.train.train`. It resumes automatically from the
newest checkpoint in MODEL_DIR (parameters, optimizer state, step, rng and data position), or
initialises from `CheckpointConfig.init_checkpoint` for fine-tuning; logs every loss, the
learning rate, steps/s, examples/s, ETA and the time spent waiting for input to TensorBoard and
the console; runs periodic eval (`eval_fn` on `train_eval_dataset_cfg`, beam-search inference
with the tasks' metric functions on `infer_eval_dataset_cfg`); stops on a NaN / Inf loss
keeping the last good checkpoint.

Multi-host: pass --coordinator_address / --num_processes / --process_id (or
--jax_distributed_auto on Cloud TPU) and `jax.distributed.initialize` runs before anything
touches a device; each host then reads its shard of the global batch.
"""
import inspect
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import gin
import jax
import numpy as np
from absl import logging

from murag import checkpoints as checkpoints_lib
from murag import optimizers
from murag import trainer as trainer_lib

if __name__ == "__main__":
  # Run the binary from the package module, so gin registers every configurable once (under
  # murag.train) rather than a second time under __main__.
  import importlib as _importlib  # pylint: disable=g-import-not-at-top
  _mod = _importlib.import_module("murag.train")
  _importlib.import_module("murag.train").main(sys.argv[1:], entry=None)
  sys.exit(0)




REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NonFiniteLossError(FloatingPointError):
  """Raised when a training loss is NaN or Inf."""


class GinConfigError(ValueError):
  """A gin file or binding is malformed or names an unknown configurable / parameter."""


def _default_get_dataset_fn():
  from tasks import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.get_dataset_iterator


def make_feature_converter(model, feature_converter=None, feature_converter_kwargs=None):
  """The model's feature converter (T5X: `model.FEATURE_CONVERTER_CLS(pack=False)`).

  Args:
    model: the model; its `config.image_size` is passed on when the converter takes it.
    feature_converter: an instance to use as is.
    feature_converter_kwargs: extra constructor arguments (e.g. {"memory_slots": 4}).

  Returns:
    A seqio FeatureConverter instance, or None when the model names no converter class.
  """
  if feature_converter is not None:
    return feature_converter
  cls = getattr(model, "FEATURE_CONVERTER_CLS", None)
  if cls is None:
    return None
  kwargs = dict(feature_converter_kwargs or {})
  image_size = getattr(getattr(model, "config", None), "image_size", None)
  if image_size is not None and "image_size" not in kwargs and "image_size" in (
      inspect.signature(cls).parameters):
    kwargs["image_size"] = image_size
  return cls(pack=False, **kwargs)


def model_feature_shapes(batch_size: int, task_feature_lengths, converter):
  """Global shapes / dtypes of the MuRAG model features (tasks/features.py) without data.

  Args:
    batch_size: global batch size.
    task_feature_lengths: {"query_tokens", "memory_tokens", "targets"} lengths.
    converter: the feature converter (gives M and the image size via `model_dims`).

  Returns:
    (shapes, types) dicts keyed by feature name.
  """
  from tasks import features as features_lib  # pylint: disable=g-import-not-at-top
  if not hasattr(converter, "model_dims"):
    raise ValueError(f"{type(converter).__name__} has no model_dims(); abstract shapes are "
                     f"only known for the MuRAG feature converter")
  dims = converter.model_dims(dict(task_feature_lengths))
  shapes = {k: (batch_size,) + features_lib.resolve_shape(s, dims)
            for k, (_, s) in features_lib.MURAG_MODEL_FEATURES.items()}
  types = {k: np.dtype(d) for k, (d, _) in features_lib.MURAG_MODEL_FEATURES.items()}
  return shapes, types


def _peek_batch(iterator):
  """First batch of an iterator, then rewinds it with get_state / set_state."""
  state = iterator.get_state()
  batch = next(iterator)
  iterator.set_state(state)
  return batch


def _mean_metrics(pending: list) -> dict:
  stacked = jax.device_get(pending)
  keys = stacked[0].keys()
  return {k: float(np.mean([m[k] for m in stacked])) for k in keys}


@gin.configurable
def train(
    *,
    model: Any,
    train_dataset_cfg: Any,
    train_eval_dataset_cfg: Any = None,
    infer_eval_dataset_cfg: Any = None,
    checkpoint_cfg: checkpoints_lib.CheckpointConfig,
    partitioner: Any,
    total_steps: int,
    model_dir: str,
    eval_period: int = 0,
    random_seed: int = 0,
    optimizer: Any = None,
    get_dataset_fn: Optional[Callable[..., Any]] = None,
    feature_converter: Any = None,
    feature_converter_kwargs: Optional[dict] = None,
    log_period: int = 100,
    eval_steps: int = 10,
    infer_eval_fn: Optional[Callable[..., dict]] = None,
    stop_after_steps: Optional[int] = None,
    lower_only: bool = False,
    step_callback: Optional[Callable[[int, Any], None]] = None,
    log_grad_norm: bool = False,
) -> tuple[int, Any]:
  """Trains `model` until step `total_steps`, resuming from `model_dir` when possible.

  Args:
    model: a BaseModel-style model (loss_fn, eval_fn, get_initial_variables, ...).
    train_dataset_cfg: the training data config, passed to `get_dataset_fn`.
    train_eval_dataset_cfg: optional config for periodic `eval_fn` evaluation.
    infer_eval_dataset_cfg: optional config for periodic inference evaluation.
    checkpoint_cfg: a `CheckpointConfig`.
    partitioner: a `murag.partitioner.Partitioner`.
    total_steps: the absolute step to train to.
    model_dir: run directory (checkpoints, TensorBoard logs, operative config).
    eval_period: evaluate every this many steps (0 = never).
    random_seed: seed of parameter init and dropout.
    optimizer: optax transformation; defaults to `model.optimizer` or `optimizers.adafactor()`.
    get_dataset_fn: `(cfg, *, shard_id, num_shards, feature_converter) -> BatchIterator`
      (default `tasks.pipeline.get_dataset_iterator`).
    feature_converter: default `model.FEATURE_CONVERTER_CLS(pack=False,
      **feature_converter_kwargs)` (image_size defaults to `model.config.image_size`).
    feature_converter_kwargs: e.g. {"memory_slots": M}.
    log_period: write train metrics every this many steps.
    eval_steps: batches per `eval_fn` evaluation.
    infer_eval_fn: `(model=, params=, dataset_cfg=, partitioner=, step=, model_dir=,
      feature_converter=) -> dict`,
      default `murag.infer.evaluate_with_inference`.
    stop_after_steps: optionally stop this run after so many steps (resume later).
    lower_only: build the sharded state abstractly and lower the train step for the
      configured shapes without reading data or allocating parameters (a dry run of a
      full-size configuration); returns (0, the `jax.stages.Lowered`).
    step_callback: optional `(step, state) -> None` called on every host at the end of each
      step, after that step's logging, NaN check, checkpoint and eval (monitoring hooks,
      benchmarks/train_throughput.py). It may read `state` but must not keep it: the state is
      donated to the next step.
    log_grad_norm: also log the global gradient norm (`train/grad_norm`); it costs a
      cross-device reduction per step (see `trainer.Trainer.log_grad_norm`).

  Returns:
    (final step, final TrainState), or (0, Lowered) with lower_only.

  Raises:
    NonFiniteLossError: a loss became NaN / Inf (the last good checkpoint is kept).
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  is_primary = jax.process_index() == 0
  get_dataset_fn = get_dataset_fn or _default_get_dataset_fn()
  converter = make_feature_converter(model, feature_converter, feature_converter_kwargs)
  optimizer = (optimizer or getattr(model, "optimizer_def", None) or optimizers.adafactor())

  if lower_only:
    shapes, types = model_feature_shapes(train_dataset_cfg.batch_size,
                                         train_dataset_cfg.task_feature_lengths, converter)
    trainer = trainer_lib.Trainer(model=model, optimizer=optimizer, partitioner=partitioner,
                                  input_shapes=shapes, input_types=types,
                                  log_grad_norm=log_grad_norm)
    return 0, trainer.lower_train_step()
  os.makedirs(model_dir, exist_ok=True)

  data_iter = get_dataset_fn(train_dataset_cfg, shard_id=jax.process_index(),
                             num_shards=jax.process_count(), feature_converter=converter)
  shapes, types = trainer_lib.shapes_and_types(_peek_batch(data_iter), jax.process_count())
  global_batch = next(iter(shapes.values()))[0]
  trainer = trainer_lib.Trainer(model=model, optimizer=optimizer, partitioner=partitioner,
                                input_shapes=shapes, input_types=types,
                                log_grad_norm=log_grad_norm)

  ckpt = checkpoints_lib.Checkpointer(model_dir, checkpoint_cfg)
  latest = ckpt.latest_step()
  if latest is not None:
    logging.info("Resuming from %s/%d", ckpt.directory, latest)
    restored, data_state = ckpt.restore(latest, trainer.abstract_state.as_dict())
    state = trainer_lib.TrainState.from_dict(restored)
    if data_state is not None:
      data_iter.set_state(data_state)
  elif checkpoint_cfg.init_checkpoint and checkpoint_cfg.strict_init:
    # Every parameter comes from the checkpoint: no fresh initialisation is needed (and its
    # compilation is skipped).
    logging.info("Initialising parameters from %s", checkpoint_cfg.init_checkpoint)
    params = checkpoints_lib.load_params(
        checkpoint_cfg.init_checkpoint, trainer.abstract_state.params,
        importer=checkpoint_cfg.init_importer, strict=True)
    state = trainer.state_from_params(params, random_seed)
  else:
    state = trainer.init_state(random_seed)
    if checkpoint_cfg.init_checkpoint:
      logging.info("Initialising parameters from %s", checkpoint_cfg.init_checkpoint)
      params = checkpoints_lib.load_params(
          checkpoint_cfg.init_checkpoint, trainer.abstract_state.params, state.params,
          importer=checkpoint_cfg.init_importer, strict=False)
      state = trainer.state_with_params(state, params)
  step = int(jax.device_get(state.step))
  last_saved = latest

  if is_primary:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.operative_config_str())
  writer = metric_writers.create_default_writer(os.path.join(model_dir, "train"),
                                                just_logging=not is_primary)
  end_step = total_steps if stop_after_steps is None else min(total_steps,
                                                               step + stop_after_steps)
  pending: list = []
  input_wait = 0.0
  period_start = time.time()
  period_start_step = step
  print(f"[murag.train] start step={step} total_steps={total_steps} "
        f"global_batch={global_batch} mesh={dict(partitioner.mesh.shape)}", flush=True)

  def check_finite():
    bad = trainer_lib.first_non_finite([m["loss"] for m in pending])
    if bad is not None:
      bad_step = step - len(pending) + bad + 1
      ckpt.close()
      raise NonFiniteLossError(
          f"non-finite loss at step {bad_step} (value {jax.device_get(pending[bad]['loss'])}); "
          f"training stopped. The last good checkpoint is step {last_saved} in "
          f"{ckpt.directory}" if last_saved is not None else
          f"non-finite loss at step {bad_step}; training stopped before any checkpoint was "
          f"written in {ckpt.directory}")

  while step < end_step:
    t0 = time.time()
    try:
      host_batch = next(data_iter)
    except StopIteration:
      ckpt.close()
      raise ValueError(f"training data of {train_dataset_cfg!r} ran out at step {step} "
                       f"(< total_steps={total_steps}); use a repeating dataset") from None
    input_wait += time.time() - t0
    state, metrics = trainer.train_step(state, trainer.put_batch(host_batch))
    pending.append(metrics)
    step += 1
    if step % log_period == 0 or step == end_step:
      check_finite()
      means = _mean_metrics(pending)
      elapsed = max(time.time() - period_start, 1e-9)
      steps_per_sec = (step - period_start_step) / elapsed
      scalars = {f"train/{k}": v for k, v in means.items()}
      scalars.update({
          "timing/steps_per_sec": steps_per_sec,
          "timing/examples_per_sec": steps_per_sec * global_batch,
          "timing/eta_seconds": (total_steps - step) / max(steps_per_sec, 1e-9),
          "timing/input_wait_seconds": input_wait,
          "timing/input_wait_fraction": input_wait / elapsed,
      })
      writer.write_scalars(step, scalars)
      print(f"[murag.train] step={step} loss={means['loss']:.6f} "
            f"steps/s={steps_per_sec:.2f}", flush=True)
      pending, input_wait = [], 0.0
      period_start, period_start_step = time.time(), step
    if step % checkpoint_cfg.period == 0 or step == end_step:
      check_finite()
      ckpt.save(step, state.as_dict(), data_iter.get_state())
      last_saved = step
    if eval_period and step % eval_period == 0:
      _run_evals(model=model, trainer=trainer, state=state, writer=writer, step=step,
                 get_dataset_fn=get_dataset_fn, converter=converter, partitioner=partitioner,
                 train_eval_dataset_cfg=train_eval_dataset_cfg,
                 infer_eval_dataset_cfg=infer_eval_dataset_cfg, eval_steps=eval_steps,
                 infer_eval_fn=infer_eval_fn, model_dir=model_dir)
    if step_callback is not None:
      step_callback(step, state)
  ckpt.close()
  writer.flush()
  if is_primary:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(gin.operative_config_str())
  return step, state


def _run_evals(*, model, trainer, state, writer, step, get_dataset_fn, converter, partitioner,
               train_eval_dataset_cfg, infer_eval_dataset_cfg, eval_steps, infer_eval_fn,
               model_dir):
  """Periodic evaluation: mean `eval_fn` metrics, then inference metrics."""
  if train_eval_dataset_cfg is not None:
    it = get_dataset_fn(train_eval_dataset_cfg, shard_id=jax.process_index(),
                        num_shards=jax.process_count(), feature_converter=converter)
    results = []
    for _ in range(eval_steps):
      try:
        host_batch = next(it)
      except StopIteration:
        break
      results.append(trainer.eval_step(state.params, trainer.put_batch(host_batch)))
    if results:
      writer.write_scalars(step, {f"eval/{k}": v for k, v in _mean_metrics(results).items()})
  if infer_eval_dataset_cfg is not None:
    if infer_eval_fn is None:
      from murag import infer  # pylint: disable=g-import-not-at-top
      infer_eval_fn = infer.evaluate_with_inference
    scores = infer_eval_fn(model=model, params=state.params, dataset_cfg=infer_eval_dataset_cfg,
                           partitioner=partitioner, step=step, model_dir=model_dir,
                           feature_converter=converter)
    writer.write_scalars(step, {f"infer_eval/{k}": float(v) for k, v in scores.items()
                                if np.ndim(v) == 0})


# --- command line ------------------------------------------------------------------------------

def split_gin_args(argv: Sequence[str]) -> tuple[list, list, list, list]:
  """T5X-style flags: --gin_file, --gin.KEY=VALUE, --gin_bindings, --gin_search_paths.

  Returns:
    (gin files, gin bindings, search paths, remaining argv).
  """
  files, bindings, paths, rest = [], [], [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    def value():
      nonlocal i
      if "=" in arg:
        return arg.split("=", 1)[1]
      i += 1
      if i >= len(args):
        raise ValueError(f"flag {arg} needs a value")
      return args[i]
    if arg.startswith("--gin."):
      key, _, val = arg[len("--gin."):].partition("=")
      if not _:
        raise ValueError(f"malformed gin flag {arg!r}: expected --gin.KEY=VALUE")
      bindings.append(f"{key}={val}")
    elif arg.split("=")[0] == "--gin_file":
      files.append(value())
    elif arg.split("=")[0] == "--gin_bindings":
      bindings.append(value())
    elif arg.split("=")[0] == "--gin_search_paths":
      paths.extend(p for p in value().split(",") if p)
    else:
      rest.append(arg)
    i += 1
  return files, bindings, paths, rest


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str]):
  """Parses gin files and bindings; errors name the file or binding at fault."""
  for path in list(search_paths) + [os.getcwd(), REPO_ROOT]:
    gin.add_config_file_search_path(os.path.abspath(path))
  for f in files:
    try:
      gin.parse_config_file(f, skip_unknown=False)
    except Exception as e:  # gin raises several types; re-raise naming the file
      raise GinConfigError(f"while parsing gin file '{f}': {e}") from e
  for b in bindings:
    try:
      gin.parse_config(b)
    except Exception as e:
      raise GinConfigError(f"bad gin binding '{b}': {e}") from e


@gin.configurable
def process_environment(variables: Optional[dict] = None) -> dict:
  """Sets environment variables from gin before any task module is imported.

  The task registry reads a few settings from the environment when `DatasetConfig.module` is
  imported (e.g. MURAG_TFDS_CONFIG, MURAG_NEIGHBOURS_DIR); gin sets them through
  `process_environment.variables = {...}`. None values are skipped.

  Returns:
    The variables set.
  """
  out = {k: str(v) for k, v in (variables or {}).items() if v is not None}
  os.environ.update(out)
  return out


def maybe_initialize_distributed(rest: Sequence[str]) -> list:
  """Handles --coordinator_address/--num_processes/--process_id and --jax_distributed_auto."""
  opts, remaining = {}, []
  for arg in rest:
    key, sep, val = arg.partition("=")
    if key in ("--coordinator_address", "--num_processes", "--process_id") and sep:
      opts[key[2:]] = val
    elif arg == "--jax_distributed_auto":
      opts["auto"] = "1"
    else:
      remaining.append(arg)
  if "auto" in opts:
    jax.distributed.initialize()
  elif opts:
    jax.distributed.initialize(coordinator_address=opts["coordinator_address"],
                               num_processes=int(opts["num_processes"]),
                               process_id=int(opts["process_id"]))
  return remaining


def main(argv: Sequence[str], entry: Callable[[], Any] = None):
  """Parses flags and gin, then runs `entry` (default `train`) with gin-supplied arguments."""
  files, bindings, paths, rest = split_gin_args(argv)
  rest = maybe_initialize_distributed(rest)
  if rest:
    raise ValueError(f"unknown flag(s) {rest}; expected --gin_file, --gin.KEY=VALUE, "
                     f"--gin_bindings, --gin_search_paths, --coordinator_address, "
                     f"--num_processes, --process_id, --jax_distributed_auto")
  if not files:
    raise ValueError("at least one --gin_file is required")
  logging.set_verbosity(logging.INFO)
  # Task modules imported later (by DatasetConfig.module) attach metric functions whose
  # modules declare gin configurables; gin refuses new configurables once finalized, so
  # they are registered first (this also lets gin files bind them).
  import tasks.metrics.bartscore  # pylint: disable=g-import-not-at-top,unused-import
  import tasks.metrics.generation  # pylint: disable=g-import-not-at-top,unused-import
  parse_gin(files, bindings, paths)
  gin.finalize()
  process_environment()
  return (entry or train)()
