"""Checkpoints: orbax CheckpointManager for training state, data position and parameters.

The MuRAG paper trains in stages (Section 4.1: LAION, then CC/PAQ/VQA, then fine-tuning on
WebQA / MultimodalQA) and keeps the checkpoint with the best validation score; every stage
starts from the previous stage's parameters. This module gives:

* `Checkpointer`: async, keep-N, period-driven saves of {step, params, opt_state, rng} (sharded
  arrays, restored straight into their target shardings) and of every host's data iterator
  state (`BatchIterator.get_state()`), one directory per step under MODEL_DIR/checkpoints;
  automatic resume from the newest step.
* `load_params`: parameters for fine-tuning from a pretrained checkpoint (a MODEL_DIR, a step
  directory, a params-only export bundle) or an importer callable, merged into a fresh init.
* `save_params`: a params-only checkpoint (optionally bf16) for export bundles.
"""
import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

STATE_ITEM = "state"
DATA_ITEM = "data"


@gin.configurable
@dataclasses.dataclass
class CheckpointConfig:
  """What, when and from where to checkpoint (gin: `CheckpointConfig.period = 1000`).

  Attributes:
    period: save every `period` steps (and at the end of training).
    keep: number of newest checkpoints kept (None keeps all).
    async_save: write in a background thread while training continues.
    save_data_state: also save the data iterator state (exact resume of the input).
    init_checkpoint: parameters to start from when MODEL_DIR has no checkpoint: a MODEL_DIR,
      a step directory or a params-only bundle directory (see `load_params`).
    init_importer: alternatively a callable `(path, abstract_params) -> params` (e.g. a
      Hugging Face safetensors importer) applied to `init_checkpoint`.
    strict_init: when False, parameters absent from the init checkpoint keep their fresh
      initialisation (logged); when True that is an error.
  """
  period: int = 1000
  keep: Optional[int] = 3
  async_save: bool = True
  save_data_state: bool = True
  init_checkpoint: Optional[str] = None
  init_importer: Optional[Callable[[str, Any], Any]] = None
  strict_init: bool = False


def _gather_host_states(state: Optional[Mapping[str, Any]]) -> list:
  """Every host's JSON-serialisable iterator state, in process order (collective)."""
  payload = np.frombuffer(json.dumps(state).encode("utf-8"), dtype=np.uint8)
  if jax.process_count() == 1:
    return [state]
  lengths = multihost_utils.process_allgather(np.asarray([payload.size], np.int32))
  width = int(np.max(lengths))
  padded = np.zeros([width], np.uint8)
  padded[:payload.size] = payload
  gathered = np.asarray(multihost_utils.process_allgather(padded))  # [P, width]
  return [json.loads(bytes(row[:int(n)]).decode("utf-8"))
          for row, n in zip(gathered, np.ravel(lengths))]


class Checkpointer:
  """Saves and restores the train state and the data position under `model_dir`."""

  def __init__(self, model_dir: str, cfg: CheckpointConfig):
    """Opens (or creates) `model_dir/checkpoints`.

    Args:
      model_dir: the run directory (MODEL_DIR).
      cfg: the CheckpointConfig.
    """
    self.cfg = cfg
    self.directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1,  # the trainer decides when to save
        max_to_keep=cfg.keep,
        enable_async_checkpointing=cfg.async_save,
        create=True,
    )
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                       DATA_ITEM: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Mapping[str, Any], data_state: Optional[Mapping[str, Any]]):
    """Saves `state` (a dict of arrays) and every host's `data_state` at `step`.

    Must be called on every process (the data states are gathered collectively).
    """
    hosts = _gather_host_states(data_state) if self.cfg.save_data_state else []
    args = {STATE_ITEM: ocp.args.StandardSave(dict(state)),
            DATA_ITEM: ocp.args.JsonSave({"hosts": hosts, "process_count": jax.process_count()})}
    self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def restore(self, step: int, abstract_state: Mapping[str, Any]):
    """Restores step `step` into the shardings of `abstract_state` (ShapeDtypeStructs).

    Returns:
      (state dict, this host's data state or None).
    """
    restored = self.manager.restore(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardRestore(dict(abstract_state)),
        DATA_ITEM: ocp.args.JsonRestore()}))
    data = restored[DATA_ITEM] or {}
    hosts = data.get("hosts") or []
    host_state = None
    if hosts:
      if data.get("process_count") != jax.process_count():
        raise ValueError(f"checkpoint {self.directory}/{step} holds the data position of "
                         f"{data.get('process_count')} hosts but this run has "
                         f"{jax.process_count()}; set CheckpointConfig.save_data_state=False "
                         f"to resume without the exact data position")
      host_state = hosts[jax.process_index()]
    return restored[STATE_ITEM], host_state

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def save_params(path: str, params, *, dtype: Optional[str] = None):
  """Writes a params-only orbax checkpoint (the export bundle's `params/`).

  Args:
    path: the target directory (must not exist).
    params: the parameter tree.
    dtype: e.g. "bfloat16" to cast floating parameters before saving.
  """
  if dtype is not None:
    target = jnp.dtype(dtype)
    params = jax.tree.map(
        lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), params)


def _find_params_dir(path: str) -> tuple[str, bool]:
  """Resolves a MODEL_DIR / step dir / bundle to (directory, is_train_state)."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  if os.path.isdir(os.path.join(path, STATE_ITEM)):
    return os.path.join(path, STATE_ITEM), True
  if os.path.isdir(os.path.join(path, "params")):
    return os.path.join(path, "params"), False
  steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
  if steps:
    return os.path.join(path, str(max(steps)), STATE_ITEM), True
  if os.path.isfile(os.path.join(path, "_METADATA")) or os.path.isfile(
      os.path.join(path, "_CHECKPOINT_METADATA")):
    return path, False
  raise FileNotFoundError(f"no checkpoint found at init checkpoint path '{path}' (expected a "
                          f"MODEL_DIR, a step directory or a params-only bundle)")


def load_params(path: str, abstract_params, fresh_params=None, *,
                importer: Optional[Callable[[str, Any], Any]] = None, strict: bool = False):
  """Parameters for fine-tuning, placed in the shardings of `abstract_params`.

  Args:
    path: a MODEL_DIR, step directory or params-only directory (orbax), or whatever
      `importer` understands.
    abstract_params: ShapeDtypeStructs (with shardings) of the model's parameters.
    fresh_params: freshly initialised parameters used for names absent from the checkpoint.
    importer: optional `(path, abstract_params) -> params tree` used instead of orbax.
    strict: raise when a parameter is absent from the checkpoint.

  Returns:
    The parameter tree with the structure, dtypes and shardings of `abstract_params`.

  Raises:
    ValueError: a parameter's shape differs, or (strict) is missing; the message names it.
  """
  if importer is not None:
    loaded = importer(path, abstract_params)
  else:
    directory, is_state = _find_params_dir(path)
    with ocp.PyTreeCheckpointer() as ckptr:
      meta = ckptr.metadata(directory)
      tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
      if is_state:
        tree = {"params": tree["params"]}
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      loaded = ckptr.restore(directory, args=ocp.args.PyTreeRestore(
          item=tree, restore_args=restore_args, partial_restore=True))
      if is_state:
        loaded = loaded["params"]
  flat_loaded = traverse_util.flatten_dict(_plain(loaded), sep="/")
  flat_abstract = traverse_util.flatten_dict(_plain(abstract_params), sep="/")
  flat_fresh = traverse_util.flatten_dict(_plain(fresh_params), sep="/") if fresh_params else {}
  out, missing = {}, []
  for name, spec in flat_abstract.items():
    if name not in flat_loaded:
      if strict or name not in flat_fresh:
        missing.append(name)
        continue
      out[name] = flat_fresh[name]
      continue
    value = np.asarray(flat_loaded[name])
    if value.shape != tuple(spec.shape):
      raise ValueError(f"init checkpoint '{path}': parameter '{name}' has shape {value.shape}, "
                       f"the model expects {tuple(spec.shape)}")
    value = value.astype(spec.dtype)
    sharding = getattr(spec, "sharding", None)
    out[name] = jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)
  if missing:
    raise ValueError(f"init checkpoint '{path}' lacks parameter(s) {missing[:10]}")
  fallback = [n for n in flat_abstract if n not in flat_loaded]
  if fallback:
    logging.warning("init checkpoint %s: %d parameter(s) keep their fresh init, e.g. %s",
                    path, len(fallback), fallback[:5])
  unused = [n for n in flat_loaded if n not in flat_abstract]
  if unused:
    logging.warning("init checkpoint %s: %d parameter(s) unused by the model, e.g. %s",
                    path, len(unused), unused[:5])
  return traverse_util.unflatten_dict(out, sep="/")


def _plain(tree):
  """FrozenDicts and nested mappings -> plain dicts (leaves untouched)."""
  if tree is None:
    return None
  if hasattr(tree, "unfreeze"):
    tree = tree.unfreeze()
  if isinstance(tree, Mapping):
    return {k: _plain(v) for k, v in tree.items()}
  return tree
