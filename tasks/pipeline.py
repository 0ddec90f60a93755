"""Host-sharded, deterministic, exactly resumable MuRAG input pipeline.

Data flow (DESIGN.md): TFDS shards -> seqio Task / Mixture (this host's shard,
`seqio.ShardInfo(shard_id, num_shards)`) -> MuRAGFeatureConverter -> batches of
batch_size // num_shards rows of the model features of tasks/features.py, as numpy.

Determinism: for a fixed (task, split, seed, shard) the example order is fixed — TFDS file
shuffling and seqio's example shuffle and mixture sampling are all seeded from `seed`, and
every map is order-preserving.

Resumption: `BatchIterator.get_state()` is a small JSON dict (the config fingerprint and
the number of batches this host has consumed). `set_state` rebuilds the pipeline and skips
the consumed examples *before* the feature converter, so skipped examples are read and
tokenized but their images are never decoded; the next batch is the one an uninterrupted
run would have produced. The cost of a restore therefore grows with the position (reading
and tokenizing the skipped examples), not with the checkpoint size.
"""
import dataclasses
import importlib
import json
from typing import Dict, Mapping, Optional

import gin
import numpy as np
import seqio
import tensorflow as tf

STATE_VERSION = 1


@gin.configurable
@dataclasses.dataclass
class DatasetConfig:
  """What to read and how (T5X `DatasetConfig` style).

  Attributes:
    mixture_or_task_name: a registered seqio task or mixture.
    task_feature_lengths: {"query_tokens": Lq, "memory_tokens": Lm, "targets": Lt}.
    split: dataset split.
    batch_size: GLOBAL batch size (each of num_shards hosts gets batch_size // num_shards).
    shuffle: shuffle files and examples (seeded).
    seed: seed of every random choice of the pipeline.
    use_cached: read a seqio offline cache.
    module: module imported first to register tasks (e.g. "tasks.murag_tasks").
    num_epochs: None repeats forever (training); 1 for a single pass (evaluation).
    drop_remainder: drop a final partial batch (always true when repeating).
    tfds_data_dir: TFDS data directory override for every task (None: keep the default).
    shuffle_buffer_size: example shuffle buffer (None: the task's).
    autotune: tf.data autotuning of map parallelism and buffer sizes. Its optimisation
      thread sleeps between rounds (up to a minute once a pipeline has run a while), and
      deleting the iterator can wait for it to wake up: in the demo process the end of a
      training stage at times blocked 25-55 s at 0% CPU in the iterator's destructor.
      False turns the tuning off (AUTOTUNE maps run on every core) so there is no such
      thread; the demo and the tiny CPU configs use it.
  """
  mixture_or_task_name: str = ""
  task_feature_lengths: Optional[Mapping[str, int]] = None
  split: str = "train"
  batch_size: int = 8
  shuffle: bool = True
  seed: Optional[int] = 0
  use_cached: bool = False
  module: Optional[str] = None
  num_epochs: Optional[int] = None
  drop_remainder: bool = True
  tfds_data_dir: Optional[str] = None
  shuffle_buffer_size: Optional[int] = None
  autotune: bool = True


def _fingerprint(cfg: DatasetConfig, shard_id: int, num_shards: int, converter) -> dict:
  return {
      "name": cfg.mixture_or_task_name, "split": cfg.split, "seed": cfg.seed,
      "shuffle": cfg.shuffle, "batch_size": cfg.batch_size, "shard_id": shard_id,
      "num_shards": num_shards,
      "task_feature_lengths": dict(sorted((cfg.task_feature_lengths or {}).items())),
      "memory_slots": getattr(converter, "memory_slots", None),
      "image_size": getattr(converter, "image_size", None),
      "num_epochs": cfg.num_epochs,
  }


class BatchIterator:
  """Iterator of per-host numpy batches with exact `get_state` / `set_state`."""

  def __init__(self, cfg: DatasetConfig, shard_id: int, num_shards: int, feature_converter):
    if cfg.batch_size % num_shards:
      raise ValueError(f"DatasetConfig.batch_size={cfg.batch_size} is not divisible by "
                       f"num_shards={num_shards}")
    if not 0 <= shard_id < num_shards:
      raise ValueError(f"shard_id={shard_id} not in [0, {num_shards})")
    lengths = cfg.task_feature_lengths or {}
    missing = {"query_tokens", "memory_tokens", "targets"} - set(lengths)
    if missing:
      raise ValueError(f"DatasetConfig.task_feature_lengths misses {sorted(missing)} "
                       f"(got {dict(lengths)})")
    self.cfg = cfg
    self.shard_id, self.num_shards = shard_id, num_shards
    self.per_host_batch = cfg.batch_size // num_shards
    self.converter = feature_converter
    self._fingerprint = _fingerprint(cfg, shard_id, num_shards, feature_converter)
    self._position = 0
    self._dataset = None
    self._iter = None  # built lazily, so a restore right after construction builds once

  # -- pipeline ------------------------------------------------------------------------------
  def task_dataset(self) -> tf.data.Dataset:
    """This host's stream of task features (before conversion)."""
    return task_dataset(self.cfg, self.shard_id, self.num_shards)

  def _build(self, skip_batches: int):
    ds = self.task_dataset()
    if skip_batches:
      ds = ds.skip(skip_batches * self.per_host_batch)  # before the (costly) conversion
    ds = self.converter(ds, dict(self.cfg.task_feature_lengths))
    drop = self.cfg.drop_remainder or self.cfg.num_epochs is None
    ds = ds.batch(self.per_host_batch, drop_remainder=drop)
    ds = ds.with_options(dataset_options(self.cfg)).prefetch(2)
    self._dataset = ds
    self._iter = iter(ds.as_numpy_iterator())
    self._position = skip_batches

  @property
  def dataset(self) -> tf.data.Dataset:
    """The batched dataset from the current position on."""
    if self._dataset is None:
      self._build(skip_batches=self._position)
    return self._dataset

  @property
  def element_spec(self) -> Dict[str, tf.TensorSpec]:
    return self.dataset.element_spec

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._iter is None:
      self._build(skip_batches=self._position)
    batch = next(self._iter)
    self._position += 1
    return batch

  # -- checkpointing -------------------------------------------------------------------------
  def get_state(self) -> dict:
    """JSON-serialisable position: config fingerprint + batches consumed on this host."""
    return {"version": STATE_VERSION, "batches_consumed": self._position,
            "config": self._fingerprint}

  def set_state(self, state: Mapping) -> None:
    """Restores a position from `get_state()`; the next batch equals the uninterrupted run's.

    Raises:
      ValueError: the state comes from a different pipeline configuration or shard.
    """
    if isinstance(state, (str, bytes)):
      state = json.loads(state)
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"iterator state version {state.get('version')} != {STATE_VERSION}")
    saved = json.loads(json.dumps(state["config"]))
    current = json.loads(json.dumps(self._fingerprint))
    if saved != current:
      diff = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current)
              if saved.get(k) != current.get(k)}
      raise ValueError(f"iterator state does not match this pipeline: (saved, current) {diff}")
    self._position = int(state["batches_consumed"])
    self._dataset = self._iter = None  # rebuilt (skipping the consumed batches) on next use


def task_dataset(cfg: DatasetConfig, shard_id: int = 0, num_shards: int = 1) -> tf.data.Dataset:
  """Host `shard_id`'s stream of task features (seqio.ShardInfo(shard_id, num_shards)).

  Args:
    cfg: what to read.
    shard_id: this host's index.
    num_shards: number of hosts.

  Returns:
    The unbatched tf.data.Dataset of task features, deterministic for cfg.seed.
  """
  if cfg.module:
    importlib.import_module(cfg.module)
  if cfg.tfds_data_dir:
    seqio.utils.set_tfds_data_dir_override(cfg.tfds_data_dir)
  provider = seqio.get_mixture_or_task(cfg.mixture_or_task_name)
  kwargs = dict(sequence_length=dict(cfg.task_feature_lengths or {}), split=cfg.split,
                use_cached=cfg.use_cached, shuffle=cfg.shuffle, seed=cfg.seed,
                shard_info=seqio.ShardInfo(shard_id, num_shards), num_epochs=cfg.num_epochs)
  if isinstance(provider, seqio.Task):
    kwargs["shuffle_buffer_size"] = cfg.shuffle_buffer_size
  return provider.get_dataset(**kwargs).with_options(dataset_options(cfg))


def dataset_options(cfg: DatasetConfig) -> tf.data.Options:
  """The tf.data options every pipeline of `cfg` gets (deterministic order; autotune)."""
  options = tf.data.Options()
  options.deterministic = True
  if not cfg.autotune:
    options.autotune.enabled = False
  return options


def get_dataset_iterator(cfg: DatasetConfig, *, shard_id: int = 0, num_shards: int = 1,
                         feature_converter=None) -> BatchIterator:
  """Returns this host's batch iterator.

  Args:
    cfg: what to read.
    shard_id: this host's index (jax.process_index()).
    num_shards: number of hosts (jax.process_count()).
    feature_converter: a seqio FeatureConverter instance (the model's
      FEATURE_CONVERTER_CLS(...)); default MuRAGFeatureConverter().

  Returns:
    A BatchIterator of dict[str, np.ndarray] with batch_size // num_shards rows.
  """
  if feature_converter is None:
    from tasks.feature_converters import MuRAGFeatureConverter  # pylint: disable=g-import-not-at-top
    feature_converter = MuRAGFeatureConverter()
  return BatchIterator(cfg, shard_id, num_shards, feature_converter)
