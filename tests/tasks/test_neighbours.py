"""Fixed-retrieval records (MuRAG §3.4): neighbour files joined with the memory corpus."""
import json
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks import murag_tasks
from tasks import neighbours as nb
from tests.tasks import murag_data_helpers as helpers

K = 4


def test_int_ids_agree_between_host_and_graph():
  ids = ["30000034", "ecf01748be6416c7fa7c097e2ef4af02", "psgs_w100/7"]
  host = nb.stable_int_ids(ids)
  graph = nb.stable_int_id_tf(tf.constant(ids)).numpy()
  np.testing.assert_array_equal(host, graph)
  assert (host >= 0).all() and (host < 2**31 - 1).all()
  assert nb.stable_int_id(ids[1]) == host[1]
  with pytest.raises(ValueError, match="non-empty"):
    nb.stable_int_id("")


def test_host_ids_equal_the_tf_op_for_every_farmhash_length_class():
  # FarmHash takes different paths for 0-16, 17-32, 33-64 and > 64 bytes; ids may be UTF-8.
  rng = np.random.default_rng(0)
  alphabet = list("abcXYZ019_-/.") + ["é", "漢", "ß", "🙂"]
  ids = ["".join(rng.choice(alphabet, n)) for n in list(range(1, 140)) + [257, 1000]]
  np.testing.assert_array_equal(nb.stable_int_ids(ids),
                                nb.stable_int_id_tf(tf.constant(ids)).numpy())


def test_id_map_round_trip(tmp_path):
  m = nb.IdMap(["a", "b", "c"])
  ints = [nb.stable_int_id(s) for s in ("c", "a")]
  assert m.to_string(ints + [-1]) == ["c", "a", ""]
  m.save(str(tmp_path / "ids.txt"))
  assert nb.IdMap.load(str(tmp_path / "ids.txt")).to_string(ints) == ["c", "a"]


def test_neighbour_file_round_trip_and_errors(tmp_path):
  t = nb.NeighbourTable.from_arrays(["q1", "q2"], [["a", "b"], ["b", "c"]],
                                    [[2.0, 1.0], [3.0, 0.5]])
  path = str(tmp_path / "n.jsonl")
  t.write_jsonl(path)
  back = nb.NeighbourTable.from_jsonl(path)
  assert back.get("q2").neighbour_ids == ["b", "c"] and back.get("q2").neighbour_scores == [3.0, 0.5]
  with open(path, "a") as f:
    f.write('{"example_id": "q3", "neighbour_ids": ["a"]}\n')
  with pytest.raises(ValueError, match=r"n.jsonl:3"):
    nb.NeighbourTable.from_jsonl(path)
  corpus = {"a": {"text": "A", "image": b""}, "b": {"text": "B", "image": b"jpg"}}
  joined = nb.join_neighbours(t, corpus, ["q1"], k=2)["q1"]
  assert joined["memory_text"] == ["A", "B"] and joined["memory_image"] == [b"", b"jpg"]
  with pytest.raises(KeyError, match="not in the memory corpus"):
    nb.join_neighbours(t, corpus, ["q2"], k=2)


def _write_neighbours(directory):
  """A neighbour file as the global memory would write it: positives + corpus items."""
  corpus = helpers.built("memory_corpus", "webqa_px32")
  corpus_ids = sorted(e["id"].decode() for e in tfds.as_numpy(
      corpus.as_dataset(split="train", shuffle_files=False)))
  rng = np.random.RandomState(0)
  records, expected = [], {}
  webqa = helpers.built("webqa")
  for split in ("train", "validation"):
    for ex in tfds.as_numpy(webqa.as_dataset(split=split, shuffle_files=False)):
      s = ex["sources"]
      pos = [i.decode() for i, p in zip(s["id"], s["positive"]) if p][:1]
      others = [c for c in rng.permutation(corpus_ids)[:K] if c not in pos][:K - len(pos)]
      ids = list(rng.permutation(pos + others))
      scores = sorted(rng.rand(K).tolist(), reverse=True)
      guid = ex["guid"].decode()
      records.append({"example_id": guid, "neighbour_ids": ids, "neighbour_scores": scores})
      expected[guid] = (ids, scores, set(pos))
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "webqa_neighbours.jsonl"), "w") as f:
    f.write("\n".join(json.dumps(r) for r in records) + "\n")
  return expected


def test_fixed_task_memory_is_the_neighbours(tmp_path):
  helpers.registered("webqa", "memory_corpus")
  expected = _write_neighbours(str(tmp_path))
  murag_tasks.register_all(image_config=helpers.IMAGE_CONFIG, data_dir=helpers.data_dir(),
                           vocabulary=helpers.vocabulary(), neighbours_dir=str(tmp_path),
                           shuffle_buffer_size=helpers.SHUFFLE_BUFFER, top_k=K)
  task = seqio.get_mixture_or_task("webqa_fixed_v1")
  ds = task.get_dataset(helpers.LENGTHS, split="validation", shuffle=False, num_epochs=1)
  corpus = nb.load_corpus_items(f"murag_memory_corpus/webqa_px32:{murag_tasks.VERSION}",
                                helpers.data_dir())
  n = 0
  for ex in ds.take(10).as_numpy_iterator():
    ids, scores, pos = expected[ex["question_id"].decode()]
    np.testing.assert_array_equal(ex["memory_ids"], nb.stable_int_ids(ids))
    np.testing.assert_allclose(ex["memory_scores"], scores, rtol=1e-6)
    np.testing.assert_array_equal(ex["memory_labels"], [int(i in pos) for i in ids])
    assert [t.decode() for t in ex["memory_text"]] == [corpus[i]["text"] for i in ids]
    assert [bytes(b) for b in ex["memory_images"]] == [corpus[i]["image"] for i in ids]
    n += 1
  assert n == 10
  batch = next(iter(helpers.converter(memory_slots=K)(
      task.get_dataset(helpers.LENGTHS, split="validation", shuffle=False, num_epochs=1),
      helpers.LENGTHS).batch(2).as_numpy_iterator()))
  assert batch["memory_scores"].shape == (2, K) and (batch["memory_mask"] == 1).all()
