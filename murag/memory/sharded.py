"""A global memory split into per-host sub-indexes (paper §4.2, scale-out).

The full-wiki corpora (1.1M WebQA sources) and larger ones do not need to fit
one host: the corpus is split into contiguous row ranges, each range gets its
own `MemoryIndex` (one per host, or several per machine), every shard is
searched for the top-K and the partial lists are merged by score. For exact
(brute-force) shards the merged result is identical to an unsharded search,
ties included: keys are (shard number, row) and rows are in corpus order.

Multi-host use: host h loads `ShardedIndex.load(dir, shards=[h])`, calls
`search_keyed`, the hosts exchange their (keys, scores, ids) (for example with
`jax.experimental.multihost_utils.process_allgather`), and each calls
`merge_keyed` on the gathered lists. On one machine `search` does all of this,
searching the shards in parallel threads (numpy and ScaNN release the GIL).

Shape letters: B queries, D embedding size, K neighbours, S shards.
"""
import concurrent.futures
import hashlib
import json
import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from murag.memory import index as index_lib

SHARDED_MANIFEST = "sharded_manifest.json"
_KEY_SHIFT = 40  # key = shard << 40 | row: ordered like concatenated rows.


def shard_dir(directory: str, shard: int) -> str:
  return os.path.join(directory, f"shard_{shard:05d}")


def merge_keyed(parts: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                k: int) -> Tuple[np.ndarray, np.ndarray]:
  """Merges per-shard (keys [B, K], scores [B, K], ids [B, K]) lists.

  Returns:
    (ids [B, k], scores [B, k]) by descending score, ties by key.
  """
  keys = np.concatenate([p[0] for p in parts], axis=1)  # [B, S*K]
  scores = np.concatenate([p[1] for p in parts], axis=1)
  ids = np.concatenate([p[2] for p in parts], axis=1)
  order = np.lexsort((keys, -scores), axis=1)[:, :k]  # [B, k]
  return (np.take_along_axis(ids, order, axis=1),
          np.take_along_axis(scores, order, axis=1))


class ShardedIndex:
  """Several `MemoryIndex` shards searched together; see module docstring."""

  def __init__(self, shards: Sequence[index_lib.MemoryIndex],
               shard_numbers: Optional[Sequence[int]] = None,
               max_workers: Optional[int] = None):
    if not shards:
      raise ValueError("ShardedIndex: no shards")
    self.shards = list(shards)
    self.shard_numbers = list(shard_numbers if shard_numbers is not None
                              else range(len(shards)))
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers or len(self.shards))

  @classmethod
  def build(cls, vectors: np.ndarray, ids: Sequence[Any], num_shards: int, *,
            fingerprint: str = "",
            config: Optional[index_lib.IndexConfig] = None,
            calibration_queries: Optional[np.ndarray] = None
            ) -> "ShardedIndex":
    """Splits [N, D] `vectors` / [N] `ids` into contiguous shards and builds."""
    ids = np.asarray(ids)
    index_lib._check_unique(ids, "ShardedIndex.build")  # pylint: disable=protected-access
    bounds = np.linspace(0, len(ids), num_shards + 1).astype(int)
    shards = [index_lib.MemoryIndex.build(
        vectors[a:b], ids[a:b], fingerprint=fingerprint, config=config,
        calibration_queries=calibration_queries)
              for a, b in zip(bounds[:-1], bounds[1:])]
    return cls(shards)

  def __len__(self) -> int:
    return sum(len(s) for s in self.shards)

  def search_keyed(self, queries: np.ndarray, k: int
                   ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Searches every local shard in parallel -> [(keys, scores, ids)]."""
    def one(i):
      shard = self.shards[i]
      rows, scores = shard.search_rows(queries, k)
      all_ids = shard.ids
      missing = "" if all_ids.dtype.kind == "U" else -1
      ids = np.where(rows >= 0, all_ids[np.clip(rows, 0, None)], missing)
      keys = np.where(rows >= 0,
                      (np.int64(self.shard_numbers[i]) << _KEY_SHIFT) + rows,
                      np.iinfo(np.int64).max)
      return keys, scores, ids
    return list(self._pool.map(one, range(len(self.shards))))

  def search(self, queries: np.ndarray,
             k: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Batched search over all shards -> (ids [B, k], scores [B, k])."""
    k = k or self.shards[0].config.k
    return merge_keyed(self.search_keyed(queries, k), k)

  def add(self, vectors: np.ndarray, ids: Sequence[Any]) -> None:
    """Adds items to the last local shard (ids must be new in every shard)."""
    ids = np.asarray(ids)
    for shard in self.shards[:-1]:
      clash = np.intersect1d(shard.ids, ids)
      if len(clash):
        raise ValueError(f"ShardedIndex.add: id {clash[0].item()!r} already exists")
    self.shards[-1].add(vectors, ids)

  def save(self, directory: str) -> None:
    """Writes shard_NNNNN/ sub-indexes plus a sharded manifest."""
    os.makedirs(directory, exist_ok=True)
    entries = []
    for number, shard in zip(self.shard_numbers, self.shards):
      path = shard_dir(directory, number)
      shard.save(path)
      with open(os.path.join(path, index_lib.MANIFEST), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      entries.append({"shard": number, "items": len(shard),
                      "manifest_sha256": digest})
    with open(os.path.join(directory, SHARDED_MANIFEST), "w") as f:
      json.dump({"num_shards": len(entries), "shards": entries}, f, indent=1)

  @classmethod
  def load(cls, directory: str, *, shards: Optional[Sequence[int]] = None,
           **load_kwargs) -> "ShardedIndex":
    """Loads all shards, or only `shards` (e.g. [host_id]) of a saved index.

    Args:
      directory: written by `save`.
      shards: shard numbers to load; None loads all.
      **load_kwargs: forwarded to `MemoryIndex.load` (expected_fingerprint,
        allow_fingerprint_mismatch, verify_checksums, config_overrides).

    Returns:
      The index over the loaded shards.
    """
    path = os.path.join(directory, SHARDED_MANIFEST)
    try:
      with open(path) as f:
        manifest = json.load(f)
    except FileNotFoundError as e:
      raise index_lib.IndexCorruptedError(f"{path}: missing") from e
    except json.JSONDecodeError as e:
      raise index_lib.IndexCorruptedError(f"{path}: unreadable: {e}") from e
    entries = {e["shard"]: e for e in manifest["shards"]}
    wanted = sorted(entries) if shards is None else list(shards)
    loaded = []
    for number in wanted:
      if number not in entries:
        raise ValueError(f"{path}: no shard {number} (has {sorted(entries)})")
      sub = shard_dir(directory, number)
      with open(os.path.join(sub, index_lib.MANIFEST), "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != entries[number][
            "manifest_sha256"]:
          raise index_lib.IndexCorruptedError(
              f"{os.path.join(sub, index_lib.MANIFEST)}: sha256 differs from "
              f"{path}")
      loaded.append(index_lib.MemoryIndex.load(sub, **load_kwargs))
    return cls(loaded, wanted)

  def close(self) -> None:
    self._pool.shutdown()

