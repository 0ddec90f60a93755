"""ScaNN tree + asymmetric-hashing + exact re-ordering searcher (paper §3.4, §4.2).

MuRAG's fixed-retrieval stage and full-wiki evaluation search 1.1M (WebQA) or
500K (MultimodalQA) memory encodings by maximum inner product with ScaNN
(Guo et al., 2020). This module wraps ScaNN's pybind searcher:

* `build_scann`: hands one contiguous array to ScaNN's builder (several shards
  are first copied into one temporary memory-mapped file, so the only anonymous
  copy of the corpus is ScaNN's own), or (streaming)
  trains the partitioner and the AH codebooks on a random sample of rows and
  then inserts the remaining rows in chunks (`upsert`), so the build never
  holds a second full float32 copy of the corpus (the input may be a list of
  memory-mapped embedding shards); slower to build and to search.
* `calibrate`: picks the search-time parameters (leaves to search, candidates
  re-ordered exactly) that reach a recall target on sample queries at the
  lowest measured latency.

Host-side only (no Flax). Shape letters: B queries, N rows, D size, K neighbours.
"""
import contextlib
import dataclasses
import logging
import math
import os
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from murag.memory import exact

_scann_pybind = None


def scann_ops_pybind():
  """Imports ScaNN's pybind wrapper without loading its TensorFlow op.

  `import scann` also imports TensorFlow when it is installed (about 4 s and
  several hundred MB) only to register the TF op, which this code never uses.
  When TF is not already loaded, it is hidden during the import.
  """
  global _scann_pybind
  if _scann_pybind is None:
    hide_tf = "tensorflow" not in sys.modules
    if hide_tf:
      sys.modules["tensorflow"] = None  # makes `import tensorflow` fail fast.
    try:
      from scann.scann_ops.py import scann_ops_pybind as module  # pylint: disable=g-import-not-at-top
    finally:
      if hide_tf:
        del sys.modules["tensorflow"]
    _scann_pybind = module
  return _scann_pybind


@dataclasses.dataclass
class ScannParams:
  """Build- and search-time ScaNN parameters (see ScaNN's algorithm docs)."""
  num_leaves: int
  leaves_to_search: int
  reorder_num_neighbors: int
  dimensions_per_block: int = 2
  anisotropic_quantization_threshold: float = 0.2
  soar_lambda: Optional[float] = None
  reorder_dtype: str = "float32"  # float32 | bfloat16 | int8
  training_sample_size: int = 100_000
  training_iterations: int = 12


_REORDER_TYPES = ("float32", "bfloat16", "int8")


def _scann_config(params: ScannParams, n: int, d: int, k: int,
                  sample: np.ndarray) -> str:
  """Returns ScaNN's text config for `params` (built via its ScannBuilder)."""
  sp = scann_ops_pybind()
  if params.reorder_dtype not in _REORDER_TYPES:
    raise ValueError(f"reorder_dtype={params.reorder_dtype!r}: expected one of "
                     f"{_REORDER_TYPES} (gin binding IndexConfig.reorder_dtype)")
  reorder_type = getattr(sp.scann_builder.ReorderType,
                         params.reorder_dtype.upper())
  builder = sp.builder(sample, k, "dot_product")
  builder = builder.tree(
      num_leaves=params.num_leaves,
      num_leaves_to_search=params.leaves_to_search,
      training_sample_size=min(n, params.training_sample_size),
      training_iterations=params.training_iterations,
      soar_lambda=params.soar_lambda)
  builder = builder.score_ah(
      params.dimensions_per_block,
      anisotropic_quantization_threshold=(
          params.anisotropic_quantization_threshold),
      training_sample_size=min(n, params.training_sample_size))
  builder = builder.reorder(params.reorder_num_neighbors, quantize=reorder_type)
  del d
  return builder.create_config()


def _gather_rows(shards: Sequence[np.ndarray], rows: np.ndarray) -> np.ndarray:
  """Gathers sorted global `rows` from a list of [N_i, D] shards -> [R, D]."""
  out = np.empty((len(rows), shards[0].shape[1]), np.float32)
  start = 0
  for shard in shards:
    end = start + shard.shape[0]
    lo, hi = np.searchsorted(rows, [start, end])
    out[lo:hi] = shard[rows[lo:hi] - start]
    start = end
  return out


class ScannSearcher:
  """A built ScaNN searcher plus the map from its positions to corpus rows."""

  def __init__(self, searcher, order: np.ndarray, params: ScannParams,
               num_threads: int = 2):
    self._searcher = searcher  # scann_pybind.ScannNumpy
    self.order = order  # [N] int64: ScaNN position -> corpus row.
    self.params = params
    self._searcher.set_num_threads(max(1, num_threads))

  @property
  def size(self) -> int:
    return len(self.order)

  def search(self, queries: np.ndarray, k: int,
             leaves_to_search: Optional[int] = None,
             reorder_num_neighbors: Optional[int] = None,
             batch_size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """Approximate top-k.

    Args:
      queries: [B, D] float32.
      k: neighbours.
      leaves_to_search: overrides the calibrated value.
      reorder_num_neighbors: overrides the calibrated value.
      batch_size: queries per ScaNN worker task.

    Returns:
      (rows [B, k] int64 corpus rows, -1 where fewer than k were found;
      scores [B, k] float32, -inf there).
    """
    b = queries.shape[0]
    leaves = leaves_to_search or self.params.leaves_to_search
    reorder = reorder_num_neighbors or self.params.reorder_num_neighbors
    reorder = max(reorder, k)
    pos, dist = self._searcher.search_batched(
        np.ascontiguousarray(queries, np.float32), k, reorder, leaves,
        True, batch_size)
    rows = np.full((b, k), -1, np.int64)
    scores = np.full((b, k), -np.inf, np.float32)
    pos = np.asarray(pos).reshape(b, -1)[:, :k].astype(np.int64)
    dist = np.asarray(dist, np.float32).reshape(b, -1)[:, :k]
    valid = (pos >= 0) & (pos < self.size) & np.isfinite(dist)
    kk = pos.shape[1]
    rows[:, :kk] = np.where(valid, self.order[np.clip(pos, 0, self.size - 1)],
                            -1)
    scores[:, :kk] = np.where(valid, dist, -np.inf)
    return rows, scores

  def serialize(self, directory: str) -> None:
    self._searcher.serialize(directory, True)

  @classmethod
  def load(cls, directory: str, order: np.ndarray, params: ScannParams,
           num_threads: int = 2) -> "ScannSearcher":
    sp = scann_ops_pybind()
    with open(f"{directory}/scann_assets.pbtxt") as f:
      assets = f.read()
    # Asset paths are relative (serialize(..., True)) to `directory`.
    searcher = sp.scann_pybind.ScannNumpy(directory, assets)
    return cls(searcher, order, params, num_threads)


@contextlib.contextmanager
def _contiguous_rows(shards: Sequence[np.ndarray], scratch_dir: Optional[str],
                     chunk_rows: int = 65536) -> Iterator[np.ndarray]:
  """The concatenation of `shards` as one C-contiguous float32 [N, D] array.

  A single shard that already is one (an in-memory array or a memory-mapped
  .npy file) is used as is. Otherwise the rows are copied, chunk by chunk, into a
  temporary memory-mapped file in `scratch_dir` (default: the system temp
  directory), deleted on exit. The copy is file-backed: the kernel can drop its
  pages, so the build does not hold a second anonymous copy of the corpus
  beside ScaNN's own (np.concatenate did: +N*D*4 bytes of peak memory).
  """
  if len(shards) == 1:
    only = shards[0]
    if (isinstance(only, np.ndarray) and only.dtype == np.float32
        and only.flags["C_CONTIGUOUS"]):
      yield only
      return
  n = sum(s.shape[0] for s in shards)
  d = shards[0].shape[1]
  fd, path = tempfile.mkstemp(prefix="scann_rows_", suffix=".npy",
                              dir=scratch_dir)
  os.close(fd)
  try:
    out = np.lib.format.open_memmap(path, "w+", np.float32, (n, d))
    start = 0
    for shard in shards:
      for a in range(0, shard.shape[0], chunk_rows):
        b = min(shard.shape[0], a + chunk_rows)
        out[start + a:start + b] = shard[a:b]
      start += shard.shape[0]
    out.flush()
    yield out
    del out
  finally:
    os.remove(path)


def build_scann(shards: Sequence[np.ndarray], params: ScannParams, *, k: int,
                seed: int = 0, num_threads: int = 2, streaming: bool = False,
                chunk_rows: int = 32768,
                scratch_dir: Optional[str] = None) -> ScannSearcher:
  """Builds a ScaNN searcher over the concatenation of `shards`.

  Args:
    shards: [N_i, D] float32 arrays (np.memmap is fine).
    params: ScaNN parameters.
    k: default number of neighbours.
    seed: sampling seed for the training rows.
    num_threads: ScaNN threads for training and search.
    streaming: False: one in-memory [N, D] array is handed to ScaNN's
      builder (faster build and search; holds a second copy of the corpus
      while building). True: train on a sample, then insert the other rows
      chunk by chunk from the shards (less memory; slower, see the README).
    chunk_rows: rows per streamed insertion.
    scratch_dir: where the one-shot build writes its temporary memory-mapped
      copy of the rows when `shards` are not already one contiguous float32
      array (default: the system temp directory; needs N * D * 4 bytes).

  Returns:
    The searcher; its `order` maps ScaNN positions to global rows.
  """
  sp = scann_ops_pybind()
  n = sum(s.shape[0] for s in shards)
  d = shards[0].shape[1]
  if not streaming:
    with _contiguous_rows(shards, scratch_dir) as data:  # [N, D], file-backed
      config = _scann_config(params, n, d, k, np.asarray(data[:1]))
      t0 = time.time()
      # ScaNN copies the rows into its own dataset; `data` may go afterwards.
      searcher = sp.scann_pybind.ScannNumpy(data, config, num_threads)
    logging.info("ScaNN built over %d rows in %.1fs", n, time.time() - t0)
    return ScannSearcher(searcher, np.arange(n, dtype=np.int64), params,
                         num_threads)
  rng = np.random.default_rng(seed)
  n_train = min(n, params.training_sample_size)
  train_rows = np.sort(rng.choice(n, n_train, replace=False))
  sample = _gather_rows(shards, train_rows)  # [n_train, D]
  config = _scann_config(params, n, d, k, sample)
  t0 = time.time()
  searcher = sp.scann_pybind.ScannNumpy(sample, config, num_threads)
  del sample
  logging.info("ScaNN trained on %d of %d rows in %.1fs", n_train, n,
               time.time() - t0)
  is_train = np.zeros(n, bool)
  is_train[train_rows] = True
  rest = []
  start = 0
  for shard in shards:
    for s in range(0, shard.shape[0], chunk_rows):
      e = min(shard.shape[0], s + chunk_rows)
      keep = ~is_train[start + s:start + e]
      if keep.any():
        chunk = np.ascontiguousarray(shard[s:e][keep], np.float32)
        searcher.upsert([None] * len(chunk), chunk, 256)
        rest.append(np.arange(start + s, start + e)[keep])
    start += shard.shape[0]
  order = np.concatenate([train_rows] + rest).astype(np.int64)
  logging.info("ScaNN built over %d rows in %.1fs", n, time.time() - t0)
  return ScannSearcher(searcher, order, params, num_threads)


def exact_search_shards(shards: Sequence[np.ndarray], queries: np.ndarray,
                        k: int) -> Tuple[np.ndarray, np.ndarray]:
  """Exact top-k over the concatenation of shards -> (rows, scores) [B, k]."""
  parts = []
  start = 0
  for shard in shards:
    rows, scores = exact.exact_search(shard, queries, k)
    parts.append((rows + start, scores))
    start += shard.shape[0]
  return exact.merge_topk(parts, k)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
  """Mean fraction of each row of `truth` [B, K] present in `found` [B, K']."""
  hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
  return float(np.sum(hits) / truth.size)


def calibrate(searcher: ScannSearcher, queries: np.ndarray,
              truth: np.ndarray, *, k: int, recall_target: float,
              exclude: Optional[np.ndarray] = None,
              timing_repeats: int = 3) -> Dict[str, object]:
  """Chooses the fastest (leaves_to_search, reorder) reaching `recall_target`.

  Args:
    searcher: a built searcher; its params are updated in place.
    queries: [B, D] calibration queries.
    truth: [B, k (+1 when `exclude`)] exact rows for `queries`.
    k: neighbours the recall is measured at.
    recall_target: required mean recall@k on the calibration queries.
    exclude: [B] rows to drop from both lists (a query's own row when the
      queries are sampled from the corpus), or None.
    timing_repeats: timed repetitions per candidate (the minimum is used).

  Returns:
    A JSON-serialisable report: the grid tried and the choice.
  """
  num_leaves = searcher.params.num_leaves
  extra = 0 if exclude is None else 1

  def strip(rows):
    if exclude is None:
      return rows[:, :k]
    out = np.empty((rows.shape[0], k), rows.dtype)
    for i, (r, x) in enumerate(zip(rows, exclude)):
      out[i] = r[r != x][:k]
    return out

  truth_k = strip(truth)
  fracs = (0.002, 0.004, 0.007, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.12,
           0.2, 0.35, 0.6, 1.0)
  leaves_grid = sorted({max(1, min(num_leaves, round(num_leaves * f)))
                        for f in fracs})
  reorder_grid = sorted({int(math.ceil(k * m)) for m in
                         (1.5, 2, 3, 4, 6, 10, 20, 40)})
  tried: List[Dict[str, float]] = []
  feasible = []
  for leaves in leaves_grid:
    for reorder in reorder_grid:
      rows, _ = searcher.search(queries, k + extra, leaves, reorder + extra)
      rec = recall_at_k(strip(rows), truth_k)
      tried.append({"leaves_to_search": leaves, "reorder": reorder,
                    "recall": rec})
      if rec >= recall_target:
        feasible.append((leaves, reorder))
        break
    if feasible and feasible[-1] == (leaves, reorder_grid[0]):
      break  # More leaves cannot lower the re-ordering cost any further.
  if not feasible:
    raise ValueError(
        f"ScaNN calibration: no (leaves_to_search, reorder) reaches recall@{k}"
        f" >= {recall_target} (best {max(t['recall'] for t in tried):.3f}); "
        "raise IndexConfig.num_leaves / training_sample_size or lower "
        "IndexConfig.recall_target")
  best = None
  for leaves, reorder in feasible:
    elapsed = math.inf
    for _ in range(timing_repeats):
      t0 = time.perf_counter()
      searcher.search(queries, k, leaves, reorder)
      elapsed = min(elapsed, time.perf_counter() - t0)
    if best is None or elapsed < best[2]:
      best = (leaves, reorder, elapsed)
  searcher.params.leaves_to_search, searcher.params.reorder_num_neighbors = (
      best[0], best[1])
  return {"k": k, "recall_target": recall_target, "num_queries": len(queries),
          "tried": tried,
          "chosen": {"leaves_to_search": best[0], "reorder": best[1],
                     "queries_per_s": len(queries) / best[2]}}
