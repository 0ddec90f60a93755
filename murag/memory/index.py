"""The global memory index: exact or ScaNN MIPS search (paper §3.4, §4.2).

After in-batch training, MuRAG encodes the whole multimodal corpus (1.1M WebQA
sources, 500K MultimodalQA sources), indexes the encodings for maximum inner
product search, and retrieves the global top-K for fixed-retrieval training and
full-wiki inference. `MemoryIndex` is that index, host-side (no Flax):

* below `IndexConfig.brute_force_threshold` items: exact numpy search;
* above it: ScaNN partitioning + anisotropic asymmetric hashing + exact
  re-ordering; the number of leaves follows the corpus size and the search
  parameters are calibrated on sample queries to reach `recall_target`
  (every choice can be fixed through gin);
* `add()` appends items to an exact "delta" segment searched alongside the
  main one and merged by score; past `delta_fold_fraction` of the corpus the
  delta is folded in by a rebuild, so new knowledge needs no retraining;
* `save()`/`load()`: a directory with `manifest.json` (config, counts, dims,
  fingerprint, sha256 of every file). A damaged file raises
  `IndexCorruptedError` naming it; an index whose fingerprint (model checkpoint
  + corpus) differs from the expected one raises `FingerprintMismatchError`
  unless `allow_fingerprint_mismatch=True`.

Search results: `(ids [B, K], scores [B, K])`, descending score, ties by row;
missing neighbours (K > size) have id `""` (or -1 for integer ids), score -inf.
Shape letters: B queries, N items, D embedding size, K neighbours.
"""
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import gin
import numpy as np

from murag.memory import exact
from murag.memory import scann_searcher

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class IndexCorruptedError(IOError):
  """An index file is missing or its checksum does not match the manifest."""


class FingerprintMismatchError(ValueError):
  """The index was built from another checkpoint or corpus than expected."""


@gin.configurable
@dataclasses.dataclass
class IndexConfig:
  """How a `MemoryIndex` is built and searched.

  Attributes:
    k: neighbours the calibration targets (search may ask for any k).
    recall_target: recall@k the ScaNN parameters must reach on calibration
      queries.
    brute_force_threshold: corpora smaller than this are searched exactly.
    num_leaves: ScaNN partitions; None -> round(leaves_per_sqrt_n * sqrt(N)).
    leaves_per_sqrt_n: see num_leaves.
    leaves_to_search: partitions searched; None -> calibrated.
    reorder_num_neighbors: AH candidates re-scored exactly; None ->
      calibrated.
    dimensions_per_block: AH sub-space size (2 = 4 bits per 2 dims).
    anisotropic_quantization_threshold: ScaNN's AVQ/noise-shaping threshold.
    soar_lambda: spill each point to a second partition (SOAR); None = off.
    reorder_dtype: float32 (exact scores), bfloat16 or int8 (less memory).
    streaming_build: build ScaNN from a training sample plus chunked
      insertion of the other rows (never holds a second full copy of the
      corpus; slower build and search) instead of one in-memory array.
    scratch_dir: where the one-shot build spills several embedding shards into
      one temporary memory-mapped file (N * D * 4 bytes; default: the system
      temp directory).
    training_sample_size: rows the partitioner and codebooks train on (at
      least 100 per leaf: max(this, 100 * num_leaves), capped at N).
    calibration_queries: corpus rows sampled as calibration queries when the
      caller passes none.
    calibration_margin: added to recall_target during calibration, against
      the sampling noise of the calibration set.
    delta_fold_fraction: fold the delta segment into the main index once it
      holds more than this fraction of the main index ...
    delta_fold_min: ... and more than this many items.
    num_threads: ScaNN threads.
    seed: training-sample and calibration-sample seed.
  """
  k: int = 10
  recall_target: float = 0.95
  brute_force_threshold: int = 50_000
  num_leaves: Optional[int] = None
  leaves_per_sqrt_n: float = 2.0
  leaves_to_search: Optional[int] = None
  reorder_num_neighbors: Optional[int] = None
  dimensions_per_block: int = 2
  anisotropic_quantization_threshold: float = 0.2
  soar_lambda: Optional[float] = None
  reorder_dtype: str = "float32"
  streaming_build: bool = False
  scratch_dir: Optional[str] = None
  training_sample_size: int = 100_000
  calibration_queries: int = 500
  calibration_margin: float = 0.005
  delta_fold_fraction: float = 0.05
  delta_fold_min: int = 10_000
  num_threads: int = 2
  seed: int = 0


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def make_fingerprint(checkpoint: str, corpus_ids: Sequence[Any]) -> str:
  """Fingerprint of (model checkpoint, corpus) an index was built from.

  Args:
    checkpoint: an identity of the encoder weights, e.g. a digest of the
      parameters (see `digest_arrays`) or "path@step".
    corpus_ids: the corpus item ids, in index order.

  Returns:
    A hex sha256.
  """
  h = hashlib.sha256(b"murag-memory-v1\0")
  h.update(checkpoint.encode() + b"\0")
  for i in corpus_ids:
    h.update(str(i).encode() + b"\n")
  return h.hexdigest()


def digest_arrays(named: Mapping[str, np.ndarray]) -> str:
  """sha256 over named arrays (e.g. flattened params), order-independent."""
  h = hashlib.sha256()
  for name in sorted(named):
    a = np.ascontiguousarray(named[name])
    h.update(f"{name}:{a.dtype.str}:{a.shape}\0".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _as_ids(ids: Union[Sequence[Any], np.ndarray], n: int, what: str):
  ids = np.asarray(ids)
  if ids.ndim != 1 or len(ids) != n:
    raise ValueError(f"{what}: {len(ids)} ids for {n} vectors")
  if ids.dtype.kind not in "iuU":
    ids = ids.astype(str)
  if ids.dtype.kind == "u":
    ids = ids.astype(np.int64)
  return ids


def _check_unique(ids: np.ndarray, what: str) -> None:
  uniq, counts = np.unique(ids, return_counts=True)
  if len(uniq) != len(ids):
    raise ValueError(f"{what}: duplicate id {uniq[counts > 1][0].item()!r}")


def _as_vectors(vectors, what: str) -> np.ndarray:
  if vectors.ndim != 2:
    raise ValueError(f"{what}: expected [N, D] vectors, got {vectors.shape}")
  if vectors.dtype != np.float32:
    vectors = np.asarray(vectors, np.float32)
  return vectors


class MemoryIndex:
  """MIPS index over (id, vector) items; see the module docstring."""

  def __init__(self, config: IndexConfig, ids: np.ndarray,
               shards: Sequence[np.ndarray], fingerprint: str,
               searcher: Optional[scann_searcher.ScannSearcher] = None,
               calibration: Optional[Dict[str, Any]] = None):
    self.config = config
    self.fingerprint = fingerprint
    self._ids = ids  # [N] base ids, in row order.
    self._shards = list(shards)  # [N_i, D] base vectors (maybe memory-mapped).
    self._searcher = searcher
    self.calibration = calibration
    self.dim = int(self._shards[0].shape[1])
    self._delta_ids = ids[:0]
    self._delta = np.zeros((0, self.dim), np.float32)

  # ----------------------------------------------------------------- building
  @classmethod
  def build(cls, vectors: Union[np.ndarray, Sequence[np.ndarray]],
            ids: Union[Sequence[Any], np.ndarray], *, fingerprint: str = "",
            config: Optional[IndexConfig] = None,
            calibration_queries: Optional[np.ndarray] = None) -> "MemoryIndex":
    """Builds an index.

    Args:
      vectors: [N, D] float32, or a list of [N_i, D] shards (memory-mapped
        embedding shards are read chunk by chunk, never concatenated).
      ids: [N] item ids (str or int), unique.
      fingerprint: see `make_fingerprint`.
      config: defaults to gin's `IndexConfig()`.
      calibration_queries: [Q, D] sample queries for picking ScaNN's search
        parameters; None samples corpus rows (their own row excluded).

    Returns:
      The index.
    """
    config = config or IndexConfig()
    shards = ([vectors] if isinstance(vectors, np.ndarray) else list(vectors))
    if not shards:
      raise ValueError("MemoryIndex.build: no vectors")
    shards = [_as_vectors(s, f"MemoryIndex.build shard {i}")
              for i, s in enumerate(shards)]
    dims = {s.shape[1] for s in shards}
    if len(dims) != 1:
      raise ValueError(f"MemoryIndex.build: shards have different dims {dims}")
    n = sum(s.shape[0] for s in shards)
    ids = _as_ids(ids, n, "MemoryIndex.build")
    _check_unique(ids, "MemoryIndex.build")
    index = cls(config, ids, shards, fingerprint)
    if n >= config.brute_force_threshold:
      index._build_scann(calibration_queries)
    return index

  def _auto_params(self, n: int) -> scann_searcher.ScannParams:
    c = self.config
    num_leaves = c.num_leaves or max(
        2, min(n // 50, round(c.leaves_per_sqrt_n * math.sqrt(n))))
    return scann_searcher.ScannParams(
        num_leaves=num_leaves,
        leaves_to_search=c.leaves_to_search or max(1, num_leaves // 20),
        reorder_num_neighbors=c.reorder_num_neighbors or 10 * c.k,
        dimensions_per_block=c.dimensions_per_block,
        anisotropic_quantization_threshold=(
            c.anisotropic_quantization_threshold),
        soar_lambda=c.soar_lambda, reorder_dtype=c.reorder_dtype,
        training_sample_size=min(n, max(c.training_sample_size,
                                        100 * num_leaves)))

  def _build_scann(self, calibration_queries: Optional[np.ndarray]) -> None:
    c = self.config
    n = self.num_base
    params = self._auto_params(n)
    self._searcher = scann_searcher.build_scann(
        self._shards, params, k=c.k, seed=c.seed, num_threads=c.num_threads,
        streaming=c.streaming_build, scratch_dir=c.scratch_dir)
    self.calibration = None
    if c.leaves_to_search is not None and c.reorder_num_neighbors is not None:
      return
    rng = np.random.default_rng(c.seed + 1)
    if calibration_queries is None:
      rows = np.sort(rng.choice(n, min(n, c.calibration_queries),
                                replace=False))
      queries = scann_searcher._gather_rows(self._shards, rows)  # pylint: disable=protected-access
      exclude, extra = rows, 1
    else:
      queries = _as_vectors(np.asarray(calibration_queries),
                            "calibration_queries")
      exclude, extra = None, 0
    truth, _ = scann_searcher.exact_search_shards(self._shards, queries,
                                                  c.k + extra)
    self.calibration = scann_searcher.calibrate(
        self._searcher, queries, truth, k=c.k,
        recall_target=min(1.0, c.recall_target + c.calibration_margin),
        exclude=exclude)
    logging.info("ScaNN calibration chose %s", self.calibration["chosen"])

  # --------------------------------------------------------------- properties
  @property
  def num_base(self) -> int:
    return len(self._ids)

  @property
  def num_delta(self) -> int:
    return len(self._delta_ids)

  def __len__(self) -> int:
    return self.num_base + self.num_delta

  @property
  def kind(self) -> str:
    return "scann" if self._searcher is not None else "brute_force"

  @property
  def ids(self) -> np.ndarray:
    """[N] all ids in row order (base then delta)."""
    return np.concatenate([self._ids, self._delta_ids])

  @property
  def scann_params(self) -> Optional[Dict[str, Any]]:
    if self._searcher is None:
      return None
    return dataclasses.asdict(self._searcher.params)

  # ---------------------------------------------------------------- searching
  def search_rows(self, queries: np.ndarray,
                  k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Like `search` but returns global row numbers (-1 when missing)."""
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f"MemoryIndex.search: queries of shape {queries.shape}"
                       f", index dim is {self.dim}")
    if self._searcher is not None:
      parts = [self._searcher.search(queries, k)]
    else:
      parts = [scann_searcher.exact_search_shards(self._shards, queries, k)]
    if self.num_delta:
      rows, scores = exact.exact_search(self._delta, queries, k)
      parts.append((rows + self.num_base, scores))
    rows, scores = exact.merge_topk(parts, k) if len(parts) > 1 else parts[0]
    b = queries.shape[0]
    if rows.shape[1] < k:  # fewer items than k: pad.
      pad = k - rows.shape[1]
      rows = np.concatenate([rows, np.full((b, pad), -1, np.int64)], axis=1)
      scores = np.concatenate(
          [scores, np.full((b, pad), -np.inf, np.float32)], axis=1)
    # Keep padding after real results even if merged with -1 keys.
    rows = np.where(np.isneginf(scores), -1, rows)
    return rows, scores

  def search(self, queries: np.ndarray,
             k: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Batched MIPS search.

    Args:
      queries: [B, D] float32.
      k: neighbours (default `config.k`).

    Returns:
      (ids [B, k], scores [B, k] float32), descending score.
    """
    k = k or self.config.k
    rows, scores = self.search_rows(queries, k)
    all_ids = self.ids
    missing = "" if all_ids.dtype.kind == "U" else -1
    ids = np.where(rows >= 0, all_ids[np.clip(rows, 0, None)], missing)
    return ids, scores

  # ------------------------------------------------------------------- adding
  def add(self, vectors: np.ndarray, ids: Union[Sequence[Any], np.ndarray], *,
          fingerprint: Optional[str] = None) -> None:
    """Adds items without rebuilding (exact delta segment).

    Args:
      vectors: [M, D] float32.
      ids: [M] new unique ids of the same kind (str/int) as the index's.
      fingerprint: the new (checkpoint + corpus) fingerprint, if tracked.
    """
    vectors = _as_vectors(np.asarray(vectors), "MemoryIndex.add")
    if vectors.shape[1] != self.dim:
      raise ValueError(f"MemoryIndex.add: dim {vectors.shape[1]} != index "
                       f"dim {self.dim}")
    ids = _as_ids(ids, len(vectors), "MemoryIndex.add")
    if (ids.dtype.kind == "U") != (self._ids.dtype.kind == "U"):
      raise ValueError("MemoryIndex.add: ids must be of the same kind "
                       f"({self._ids.dtype}) as the index's, got {ids.dtype}")
    _check_unique(np.concatenate([self.ids, ids]), "MemoryIndex.add")
    self._delta_ids = np.concatenate([self._delta_ids, ids])
    self._delta = np.concatenate([self._delta, vectors])
    if fingerprint is not None:
      self.fingerprint = fingerprint
    c = self.config
    if (self.num_delta > c.delta_fold_min and
        self.num_delta > c.delta_fold_fraction * self.num_base):
      self.fold_delta()

  def fold_delta(self) -> None:
    """Rebuilds the main index over base + delta items."""
    if not self.num_delta:
      return
    logging.info("Folding %d delta items into the index of %d", self.num_delta,
                 self.num_base)
    self._shards = self._shards + [self._delta]
    self._ids = self.ids
    self._delta_ids = self._ids[:0]
    self._delta = np.zeros((0, self.dim), np.float32)
    self._searcher = None
    if self.num_base >= self.config.brute_force_threshold:
      self._build_scann(None)

  # ----------------------------------------------------------- save and load
  def save(self, directory: str) -> None:
    """Writes the index to `directory` (atomically replaced)."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_index_", dir=parent)
    try:
      vec = np.lib.format.open_memmap(os.path.join(tmp, "vectors.npy"), "w+",
                                      np.float32, (self.num_base, self.dim))
      start = 0
      for shard in self._shards:
        vec[start:start + len(shard)] = shard
        start += len(shard)
      vec.flush()
      del vec
      np.save(os.path.join(tmp, "ids.npy"), self._ids)
      np.save(os.path.join(tmp, "delta_vectors.npy"), self._delta)
      np.save(os.path.join(tmp, "delta_ids.npy"), self._delta_ids)
      if self._searcher is not None:
        os.makedirs(os.path.join(tmp, "scann"))
        self._searcher.serialize(os.path.join(tmp, "scann"))
        np.save(os.path.join(tmp, "scann_order.npy"), self._searcher.order)
      files = {}
      for root, _, names in os.walk(tmp):
        for name in sorted(names):
          path = os.path.join(root, name)
          rel = os.path.relpath(path, tmp)
          files[rel] = {"sha256": _sha256(path),
                        "bytes": os.path.getsize(path)}
      manifest = {
          "format_version": FORMAT_VERSION, "kind": self.kind,
          "config": dataclasses.asdict(self.config),
          "scann_params": self.scann_params,
          "calibration": self.calibration,
          "counts": {"base": self.num_base, "delta": self.num_delta},
          "dim": self.dim, "id_dtype": self._ids.dtype.str,
          "fingerprint": self.fingerprint, "files": files}
      with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
      if os.path.exists(directory):
        shutil.rmtree(directory)
      os.replace(tmp, directory)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise

  @classmethod
  def load(cls, directory: str, *, expected_fingerprint: Optional[str] = None,
           allow_fingerprint_mismatch: bool = False,
           verify_checksums: bool = True,
           config_overrides: Optional[Mapping[str, Any]] = None
           ) -> "MemoryIndex":
    """Loads an index written by `save`.

    Args:
      directory: the index directory.
      expected_fingerprint: fingerprint of the checkpoint + corpus the caller
        uses; a different stored one raises FingerprintMismatchError ...
      allow_fingerprint_mismatch: ... unless this is True (a warning then).
      verify_checksums: check every file's sha256 against the manifest.
      config_overrides: IndexConfig fields to change (e.g. num_threads).

    Returns:
      The index; base vectors are memory-mapped.
    """
    manifest_path = os.path.join(directory, MANIFEST)
    try:
      with open(manifest_path) as f:
        manifest = json.load(f)
    except FileNotFoundError as e:
      raise IndexCorruptedError(f"{manifest_path}: missing index manifest") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise IndexCorruptedError(f"{manifest_path}: unreadable manifest: {e}") from e
    if manifest.get("format_version") != FORMAT_VERSION:
      raise IndexCorruptedError(
          f"{manifest_path}: format_version {manifest.get('format_version')}, "
          f"expected {FORMAT_VERSION}")
    stored = manifest["fingerprint"]
    if expected_fingerprint is not None and stored != expected_fingerprint:
      msg = (f"{directory}: index fingerprint {stored!r} does not match the "
             f"expected {expected_fingerprint!r} (built from another "
             "checkpoint or corpus); rebuild it, or pass "
             "allow_fingerprint_mismatch=True to use it anyway")
      if not allow_fingerprint_mismatch:
        raise FingerprintMismatchError(msg)
      logging.warning("%s", msg)
    for rel, info in manifest["files"].items():
      path = os.path.join(directory, rel)
      if not os.path.isfile(path):
        raise IndexCorruptedError(f"{path}: index file missing")
      if os.path.getsize(path) != info["bytes"]:
        raise IndexCorruptedError(
            f"{path}: size {os.path.getsize(path)} != {info['bytes']} in the "
            "manifest (truncated or replaced)")
      if verify_checksums and _sha256(path) != info["sha256"]:
        raise IndexCorruptedError(f"{path}: sha256 mismatch (file corrupted)")
    config = IndexConfig(**{**manifest["config"], **(config_overrides or {})})
    vectors = np.load(os.path.join(directory, "vectors.npy"), mmap_mode="r")
    ids = np.load(os.path.join(directory, "ids.npy"))
    searcher = None
    if manifest["kind"] == "scann":
      order = np.load(os.path.join(directory, "scann_order.npy"))
      params = scann_searcher.ScannParams(**manifest["scann_params"])
      searcher = scann_searcher.ScannSearcher.load(
          os.path.join(directory, "scann"), order, params, config.num_threads)
    index = cls(config, ids, [vectors], stored, searcher,
                manifest.get("calibration"))
    index._delta = np.load(os.path.join(directory, "delta_vectors.npy"))
    index._delta_ids = np.load(os.path.join(directory, "delta_ids.npy"))
    return index
