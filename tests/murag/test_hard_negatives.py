"""Hard-negative mining from the global index (beyond the paper) and neighbour-file grouping."""
import json

import numpy as np
import pytest

from murag import build_memory
from murag.memory import hard_negatives
from murag.memory import index as index_lib
from murag.memory import sharded
from tasks import neighbours as nb


def _data(n=300, d=16, q=40, seed=0):
  rng = np.random.default_rng(seed)
  vectors = rng.standard_normal((n, d)).astype(np.float32)
  queries = rng.standard_normal((q, d)).astype(np.float32)
  ids = [f"item-{i}" for i in range(n)]
  scores = queries @ vectors.T  # [Q, N]
  order = np.argsort(-scores, axis=1, kind="stable")
  # Positives: some of the best-ranked items (so mining must skip them) and random ones.
  positives = []
  for r in range(q):
    pos = {ids[order[r, j]] for j in rng.choice(6, size=int(rng.integers(0, 4)), replace=False)}
    pos |= {ids[j] for j in rng.choice(n, size=int(rng.integers(0, 3)), replace=False)}
    positives.append(sorted(pos))
  return vectors, queries, ids, positives, scores


def _brute_force(scores, ids, positives, n_neg):
  out_ids, out_scores = [], []
  for row, pos in zip(scores, positives):
    order = np.argsort(-row, kind="stable")
    keep = [j for j in order if ids[j] not in set(pos)][:n_neg]
    out_ids.append([ids[j] for j in keep])
    out_scores.append(row[keep])
  return out_ids, out_scores


@pytest.mark.parametrize("num_shards", [1, 3])
def test_mined_negatives_equal_brute_force(num_shards):
  vectors, queries, ids, positives, scores = _data()
  if num_shards == 1:
    index = index_lib.MemoryIndex.build(vectors, ids)
  else:
    index = sharded.ShardedIndex.build(vectors, ids, num_shards)
  got_ids, got_scores = hard_negatives.mine(index, queries, positives, num_negatives=5)
  want_ids, want_scores = _brute_force(scores, ids, positives, 5)
  assert got_ids == want_ids
  for g, w, pos in zip(got_scores, want_scores, positives):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert g == sorted(g, reverse=True)
  for g, pos in zip(got_ids, positives):
    assert len(g) == 5 and not set(g) & set(pos)
  # Some rows really had positives among their top-5 (the test exercises the exclusion).
  top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
  assert any({ids[j] for j in row} & set(p) for row, p in zip(top5, positives))


def test_mining_a_tiny_index_returns_what_exists(tmp_path):
  vectors = np.eye(4, dtype=np.float32)
  index = index_lib.MemoryIndex.build(vectors, ["a", "b", "c", "d"])
  ids, scores = hard_negatives.mine(index, vectors[:2], [["a", "b"], []], num_negatives=10)
  assert ids[0] == ["c", "d"]  # only two non-positives exist; ties broken by row
  assert len(ids[1]) == 4 and ids[1][0] == "b" and scores[1][0] == pytest.approx(1.0)
  path = str(tmp_path / "hn.jsonl")
  assert hard_negatives.write_jsonl(path, ["q1", "q2"], ids, scores) == 2
  table = nb.NeighbourTable.from_jsonl(path)
  assert table.get("q2").neighbour_ids == ids[1]
  assert table.get("q1").neighbour_scores == pytest.approx(scores[0])
  with pytest.raises(ValueError, match="duplicate"):
    hard_negatives.write_jsonl(path, ["q1", "q1"], ids, scores)
  with pytest.raises(ValueError, match="num_negatives"):
    hard_negatives.mine(index, vectors[:1], [[]], num_negatives=0)
  assert json.loads(open(path).readline())["example_id"] == "q1"


def test_neighbour_groups():
  groups = build_memory.neighbour_groups([
      ("webqa_inbatch_v1", ("train", "validation"), "webqa_neighbours.jsonl"),
      ("webqa_inbatch_v1", "validation", "webqa_val_neighbours.jsonl"),
      ("mmqa_inbatch_v1", "train", "mmqa_neighbours.jsonl"),
      ("mmqa_inbatch_v1", "validation", "mmqa_neighbours.jsonl")])
  assert groups == {
      "webqa_neighbours.jsonl": [("webqa_inbatch_v1", "train"),
                                 ("webqa_inbatch_v1", "validation")],
      "webqa_val_neighbours.jsonl": [("webqa_inbatch_v1", "validation")],
      "mmqa_neighbours.jsonl": [("mmqa_inbatch_v1", "train"), ("mmqa_inbatch_v1", "validation")]}
  with pytest.raises(ValueError, match=r"neighbour_tasks\[1\].*listed twice"):
    build_memory.neighbour_groups([("t", "train", "f"), ("t", ("train",), "f")])
  with pytest.raises(ValueError, match=r"neighbour_tasks\[0\].*expected"):
    build_memory.neighbour_groups([("t", "f")])


def test_write_table_merges_and_refuses_duplicates(tmp_path):
  a = nb.NeighbourTable.from_arrays(["q1"], [["x", "y"]], [[2.0, 1.0]])
  b = nb.NeighbourTable.from_arrays(["q2"], [["y", "z"]], [[3.0, 0.5]])
  path = str(tmp_path / "n.jsonl")
  assert build_memory.write_table([a, b], path) == 2
  back = nb.NeighbourTable.from_jsonl(path)
  assert back.get("q1").neighbour_ids == ["x", "y"] and back.get("q2").neighbour_ids == ["y", "z"]
  with pytest.raises(ValueError, match="'q1' occurs in both train and validation"):
    build_memory.write_table([a, a], path, ["train", "validation"])
  assert len(nb.NeighbourTable.from_jsonl(path)) == 2  # the failed write left the file intact
