"""Hard-negative mining from the global memory (beyond the MuRAG paper).

MuRAG's in-batch stage (§3.4) contrasts each question's positive sources with
the dataset's own hard negatives and the rest of the batch; the paper names
the absence of mined hard negatives among its limitations. This module mines
them from the global MIPS index: each training question's retrieval embedding
is searched, and the top-ranked items that are NOT among its positive sources
are kept, best first. `murag.build_memory` writes them per question id in the
neighbour-file format of tasks/neighbours.py

    {"example_id": str, "neighbour_ids": [str, ...], "neighbour_scores": [float, ...]}

and the `*_inbatch_hardneg_v1` tasks put them into the example's memory
candidates as negatives (label 0). Host-side (numpy), no Flax.

Shape letters: Q queries, D embedding size, K searched neighbours, N negatives.
"""
import json
import os
from typing import List, Sequence, Tuple

import numpy as np


def mine(index, queries: np.ndarray, positives: Sequence[Sequence[str]],
         num_negatives: int) -> Tuple[List[List[str]], List[List[float]]]:
  """Top-ranked non-positive items of each query.

  Args:
    index: a MemoryIndex / ShardedIndex with string ids.
    queries: [Q, D] float32 query embeddings.
    positives: per query, the string ids of its positive items (excluded).
    num_negatives: N, negatives kept per query.

  Returns:
    (ids [Q][<=N] str, scores [Q][<=N] float), each list in descending score
    order (the index's order; ties as the index breaks them). A query gets
    fewer than N items only when the index holds fewer non-positive items.
  """
  queries = np.asarray(queries, np.float32)
  if queries.ndim != 2 or len(queries) != len(positives):
    raise ValueError(f"hard_negatives.mine: queries of shape {queries.shape} for "
                     f"{len(positives)} positive lists")
  if num_negatives <= 0:
    raise ValueError(f"num_negatives must be positive, got {num_negatives}")
  if not len(queries):
    return [], []
  # Searching N + max|P| guarantees N non-positives when the index has them.
  k = min(num_negatives + max(len(p) for p in positives), len(index))
  ids, scores = index.search(queries, k)  # [Q, K] best first
  out_ids, out_scores = [], []
  for row_ids, row_scores, pos in zip(ids, scores, positives):
    pos = set(pos)
    keep = [(str(i), float(s)) for i, s in zip(row_ids, row_scores)
            if str(i) and str(i) != "-1" and np.isfinite(s) and str(i) not in pos]
    keep = keep[:num_negatives]
    out_ids.append([i for i, _ in keep])
    out_scores.append([s for _, s in keep])
  return out_ids, out_scores


def write_jsonl(path: str, example_ids: Sequence[str], ids: Sequence[Sequence[str]],
                scores: Sequence[Sequence[float]]) -> int:
  """Writes mined negatives (neighbour-file format) atomically; returns the count."""
  if not len(example_ids) == len(ids) == len(scores):
    raise ValueError(f"{path}: {len(example_ids)} example ids, {len(ids)} id lists, "
                     f"{len(scores)} score lists")
  if len(set(example_ids)) != len(example_ids):
    raise ValueError(f"{path}: duplicate example ids")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for e, i, s in zip(example_ids, ids, scores):
      f.write(json.dumps({"example_id": str(e), "neighbour_ids": list(map(str, i)),
                          "neighbour_scores": list(map(float, s))}) + "\n")
  os.replace(tmp, path)
  return len(example_ids)
