"""Exact maximum-inner-product top-K and score-ordered merging (paper §3.4).

The global memory of MuRAG's fixed-retrieval stage is searched by maximum inner
product. This module holds the exact (brute force) search used below the ScaNN
size threshold, as the brute-force "delta" segment of incremental additions and
as the reference in tests and benchmarks, plus the merge of several partial
top-K lists (shards, segments) into one.

Ordering contract, relied on by `ShardedIndex` being exactly equal to an
unsharded brute-force search: results are sorted by descending score and ties
are broken by ascending global row number (what a stable `np.argsort(-scores)`
gives).

Shape letters: B queries, N database rows, D embedding size, K neighbours.
"""
from typing import Sequence, Tuple

import numpy as np

# Query rows per matmul, so a [B, N] score block stays small (bytes ~ 4 * rows * N).
_MAX_SCORE_ELEMENTS = 1 << 26


def _sorted_topk_rows(scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
  """Top-k of each row of `scores` [B, N], ties broken by lower column index."""
  b, n = scores.shape
  kk = min(k, n)
  if kk == 0:
    return np.zeros((b, 0), np.int64), np.zeros((b, 0), np.float32)
  if kk < n:
    cand = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]  # [B, kk]
  else:
    cand = np.broadcast_to(np.arange(n), (b, n)).copy()
  cand_scores = np.take_along_axis(scores, cand, axis=1)
  kth = cand_scores.min(axis=1)  # [B]
  # argpartition picks an arbitrary member of a tie at the k-th score; rows with
  # more ties outside the candidate set are redone exactly.
  n_at_kth = (scores == kth[:, None]).sum(axis=1)
  n_at_kth_in_cand = (cand_scores == kth[:, None]).sum(axis=1)
  for row in np.nonzero(n_at_kth > n_at_kth_in_cand)[0]:
    above = np.nonzero(scores[row] > kth[row])[0]
    at = np.nonzero(scores[row] == kth[row])[0][:kk - len(above)]
    cand[row] = np.concatenate([above, at])
    cand_scores[row] = scores[row, cand[row]]
  # Sort by (-score, index): lexsort's last key is the primary one.
  order = np.lexsort((cand, -cand_scores), axis=1)
  return (np.take_along_axis(cand, order, axis=1),
          np.take_along_axis(cand_scores, order, axis=1))


def exact_search(database: np.ndarray, queries: np.ndarray,
                 k: int) -> Tuple[np.ndarray, np.ndarray]:
  """Exact top-k by inner product.

  Args:
    database: [N, D] float32 (may be a np.memmap).
    queries: [B, D] float32.
    k: neighbours per query.

  Returns:
    (rows [B, min(k, N)] int64 database row numbers, scores [B, min(k, N)]
    float32), sorted by descending score, ties by ascending row.
  """
  queries = np.asarray(queries, np.float32)
  n = database.shape[0]
  kk = min(k, n)
  b = queries.shape[0]
  rows = np.zeros((b, kk), np.int64)
  scores = np.zeros((b, kk), np.float32)
  step = max(1, _MAX_SCORE_ELEMENTS // max(n, 1))
  for s in range(0, b, step):
    block = queries[s:s + step] @ database.T  # [b, D] x [D, N] -> [b, N]
    rows[s:s + step], scores[s:s + step] = _sorted_topk_rows(block, kk)
  return rows, scores


def merge_topk(parts: Sequence[Tuple[np.ndarray, np.ndarray]],
               k: int) -> Tuple[np.ndarray, np.ndarray]:
  """Merges partial top-k lists by score.

  Args:
    parts: sequence of (keys [B, k_i], scores [B, k_i]); keys are anything
      orderable the caller uses as a tie-break (global row numbers); padded
      entries carry score -inf. Entries of earlier parts win exact ties against
      later ones only through the key order.
    k: neighbours to keep.

  Returns:
    (keys [B, k'], scores [B, k']) with k' = min(k, sum k_i), sorted by
    descending score then ascending key.
  """
  keys = np.concatenate([p[0] for p in parts], axis=1)  # [B, sum k_i]
  scores = np.concatenate([p[1] for p in parts], axis=1)
  order = np.lexsort((keys, -scores), axis=1)[:, :k]
  return (np.take_along_axis(keys, order, axis=1),
          np.take_along_axis(scores, order, axis=1))
