"""Tests for murag.build_memory: resumable corpus encoding, index, neighbour files (one file
for several splits, read by the fixed task), hard-negative mining and the tasks reading it, a
few in-batch training steps on mined negatives, and full-wiki evaluation end to end."""
import dataclasses
import json
import os
import re

import jax
import numpy as np
import pytest

import seqio

from murag import build_memory
from murag import checkpoints
from murag import evaluate_fullwiki
from murag import model as model_lib
from murag import partitioner as partitioner_lib
from murag import train as train_lib
from murag.memory import index as index_lib
from tasks import murag_tasks
from tasks import neighbours as nb
from tasks import pipeline
from tests.tasks import murag_data_helpers as helpers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
  helpers.registered("memory_corpus", "webqa")
  vocab = helpers.vocabulary()
  cfg = model_lib.MuRAGConfig(
      vocab_size=vocab.vocab_size, emb_dim=16, num_heads=2, head_dim=8,
      num_encoder_layers=1, num_decoder_layers=1, mlp_dim=32,
      relative_attention_num_buckets=8, relative_attention_max_distance=16,
      image_size=32, vit_patch_size=8, vit_width=16, vit_depth=1,
      vit_mlp_dim=32, vit_num_heads=2, top_k=2)
  model = model_lib.MuRAGModel(cfg, vocab)
  corpus_cfg = pipeline.DatasetConfig(
      mixture_or_task_name="webqa_memory_v1",
      task_feature_lengths=helpers.LENGTHS, split="train", batch_size=16)
  return model, corpus_cfg


@pytest.fixture(scope="module")
def built(setup, tmp_path_factory):
  """One full build_memory run (encoding, index, neighbour and hard-negative files).

  The checkpoint is a params bundle of the fresh PRNGKey(0) parameters (= `_params`).
  """
  model, corpus_cfg = setup
  query_cfg = pipeline.DatasetConfig(task_feature_lengths=helpers.LENGTHS,
                                     batch_size=16)
  out_dir = str(tmp_path_factory.mktemp("mem"))
  bundle = str(tmp_path_factory.mktemp("bundle"))
  checkpoints.save_params(os.path.join(bundle, "params"), _params(model, corpus_cfg))
  summary = build_memory.build_memory(
      model=model, output_dir=out_dir, corpus_cfg=corpus_cfg, checkpoint_path=bundle,
      neighbour_tasks=[("webqa_inbatch_v1", ("train", "validation"),
                        "webqa_neighbours.jsonl"),
                       ("webqa_inbatch_v1", "validation",
                        "webqa_val_neighbours.jsonl")],
      hard_negative_tasks=[("webqa_inbatch_v1", "train",
                            "webqa_hard_negatives.jsonl")],
      num_hard_negatives=3, query_cfg=query_cfg, k=3, batches_per_shard=2)
  return out_dir, summary


def _params(model, corpus_cfg):
  lm = corpus_cfg.task_feature_lengths["memory_tokens"]
  return model.get_initial_variables(
      jax.random.PRNGKey(0), {"memory_tokens": (1, 1, lm),
                              "decoder_input_tokens": (1, 8)})["params"]


def test_interrupted_encoding_resumes_to_same_embeddings(setup, built,
                                                         tmp_path):
  model, corpus_cfg = setup
  params = _params(model, corpus_cfg)
  full, summary = built
  assert summary["complete"] and summary["shards"] >= 3
  emb_full, ids_full = build_memory.load_embeddings(full)
  emb_full = np.concatenate(emb_full)
  corpus_ids = build_memory.corpus_string_ids("webqa_memory_v1")
  assert len(emb_full) == len(corpus_ids) == len(set(ids_full.tolist()))

  part = str(tmp_path / "part")
  first = build_memory.encode_corpus(model=model, params=params,
                                     corpus_cfg=corpus_cfg, output_dir=part,
                                     batches_per_shard=2, max_shards=1)
  assert not first["complete"] and first["shards"] == 1
  with pytest.raises(ValueError, match="has not finished encoding"):
    build_memory.load_embeddings(part)
  # A half-written shard (no marker) from the "crash" is redone.
  with open(os.path.join(part, "embeddings", "h000-s00001.npy"), "wb") as f:
    f.write(b"garbage")
  rest = build_memory.encode_corpus(model=model, params=params,
                                    corpus_cfg=corpus_cfg, output_dir=part,
                                    batches_per_shard=2)
  assert rest["complete"] and rest["items"] == len(emb_full)
  emb_part, ids_part = build_memory.load_embeddings(part)
  np.testing.assert_array_equal(np.concatenate(emb_part), emb_full)
  np.testing.assert_array_equal(ids_part, ids_full)
  # Embeddings are the model's [CLS] retrieval embeddings of the items.
  it = pipeline.get_dataset_iterator(
      pipeline.DatasetConfig(**{**vars(corpus_cfg), "shuffle": False,
                                "num_epochs": 1, "drop_remainder": False}),
      feature_converter=model.FEATURE_CONVERTER_CLS(memory_slots=1,
                                                    image_size=32))
  batch = next(it)
  direct = model.embed_memory(params, batch["memory_tokens"][:, 0],
                              batch["memory_images"][:, 0],
                              batch["memory_image_mask"][:, 0])
  np.testing.assert_allclose(emb_full[:16], np.asarray(direct), rtol=1e-5,
                             atol=1e-6)
  # A corrupted finished shard is reported by name.
  with open(os.path.join(part, "embeddings", "h000-s00000.npy"), "r+b") as f:
    f.seek(150)
    f.write(b"\x00\x01\x02")
  with pytest.raises(index_lib.IndexCorruptedError, match="h000-s00000.npy"):
    build_memory.load_embeddings(part)


def test_build_memory_index_and_neighbours(built):
  out_dir, summary = built
  meta = json.load(open(os.path.join(out_dir, "metadata.json")))
  assert meta["fingerprint"] == summary["fingerprint"]
  assert sorted(meta["ids"]) == sorted(
      build_memory.corpus_string_ids("webqa_memory_v1"))
  index = index_lib.MemoryIndex.load(os.path.join(out_dir, "index"),
                                     expected_fingerprint=meta["fingerprint"])
  assert len(index) == meta["items"]
  table = nb.NeighbourTable.from_jsonl(
      os.path.join(out_dir, "webqa_val_neighbours.jsonl"))
  assert len(table) > 0
  rec = next(iter(table))
  assert len(rec.neighbour_ids) == 3 and set(rec.neighbour_ids) <= set(
      meta["ids"])
  assert rec.neighbour_scores == sorted(rec.neighbour_scores, reverse=True)
  metrics = summary["webqa_val_neighbours.jsonl"]
  assert metrics == summary["retrieval"]["webqa_inbatch_v1/validation"]
  assert 0.0 <= metrics["retrieval/recall@3"] <= 100.0
  assert metrics["retrieval/num_queries"] == len(table)
  # Another checkpoint (different params) is refused.
  with pytest.raises(index_lib.FingerprintMismatchError):
    index_lib.MemoryIndex.load(
        os.path.join(out_dir, "index"),
        expected_fingerprint=index_lib.make_fingerprint("other", meta["ids"]))


def _questions(split):
  """question id -> positive source ids, from the converted WebQA split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  webqa = helpers.built("webqa")
  out = {}
  for ex in tfds.as_numpy(webqa.as_dataset(split=split, shuffle_files=False)):
    s = ex["sources"]
    out[ex["guid"].decode()] = {i.decode() for i, p in zip(s["id"], s["positive"]) if p}
  return out


@pytest.fixture(scope="module")
def registered_on_memory(built):
  """All tasks registered to read the built memory's neighbour / hard-negative files."""
  out_dir, _ = built
  murag_tasks.register_all(image_config=helpers.IMAGE_CONFIG, data_dir=helpers.data_dir(),
                           vocabulary=helpers.vocabulary(), neighbours_dir=out_dir,
                           shuffle_buffer_size=helpers.SHUFFLE_BUFFER, top_k=3)
  yield out_dir
  murag_tasks.register_all(image_config=helpers.IMAGE_CONFIG, data_dir=helpers.data_dir(),
                           vocabulary=helpers.vocabulary(),
                           shuffle_buffer_size=helpers.SHUFFLE_BUFFER)


def test_several_splits_in_one_file_feed_the_fixed_task(built, registered_on_memory):
  out_dir, summary = built
  train_q, val_q = _questions("train"), _questions("validation")
  table = nb.NeighbourTable.from_jsonl(os.path.join(out_dir, "webqa_neighbours.jsonl"))
  assert {r.example_id for r in table} == set(train_q) | set(val_q)
  # The validation records are those of the single-split file (same index, same queries).
  val_only = nb.NeighbourTable.from_jsonl(os.path.join(out_dir, "webqa_val_neighbours.jsonl"))
  for rec in val_only:
    assert table.get(rec.example_id).neighbour_ids == rec.neighbour_ids
  assert set(summary["webqa_neighbours.jsonl"]) == {"webqa_inbatch_v1/train",
                                                    "webqa_inbatch_v1/validation"}
  assert (summary["webqa_neighbours.jsonl"]["webqa_inbatch_v1/validation"]
          == summary["webqa_val_neighbours.jsonl"])
  assert summary["webqa_neighbours.jsonl"]["webqa_inbatch_v1/train"][
      "retrieval/num_queries"] == len(train_q)
  # The fixed task's validation split reads the real global neighbours.
  task = seqio.get_mixture_or_task("webqa_fixed_v1")
  seen = set()
  for ex in task.get_dataset(helpers.LENGTHS, split="validation", shuffle=False,
                             num_epochs=1).as_numpy_iterator():
    qid = ex["question_id"].decode()
    rec = table.get(qid)
    np.testing.assert_array_equal(ex["memory_ids"], nb.stable_int_ids(rec.neighbour_ids))
    np.testing.assert_allclose(ex["memory_scores"], rec.neighbour_scores, rtol=1e-6)
    np.testing.assert_array_equal(ex["memory_labels"],
                                  [int(i in val_q[qid]) for i in rec.neighbour_ids])
    seen.add(qid)
  assert seen == set(val_q)


def _differ_only_in_ties(got_ids, got_scores, want_ids, want_scores, tol=1e-5):
  """Equal id lists, except that items with (nearly) tied scores may swap places."""
  np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-6)
  for j, (g, w) in enumerate(zip(got_ids, want_ids)):
    if g != w:
      near = [k for k, s in enumerate(want_scores) if abs(s - want_scores[j]) <= tol]
      assert g in {want_ids[k] for k in near}, (got_ids, want_ids)


def test_mined_hard_negatives_equal_brute_force(setup, built):
  model, corpus_cfg = setup
  out_dir, summary = built
  train_q = _questions("train")
  mined = nb.NeighbourTable.from_jsonl(os.path.join(out_dir, "webqa_hard_negatives.jsonl"))
  assert summary["hard_negatives"]["webqa_hard_negatives.jsonl"] == len(mined) == len(train_q)
  emb, int_ids = build_memory.load_embeddings(out_dir)
  emb = np.concatenate(emb)  # [N, D]
  ids = build_memory.string_ids_for(int_ids, build_memory.corpus_string_ids("webqa_memory_v1"))
  qids, q, _ = build_memory.embed_queries(
      model=model, params=_params(model, corpus_cfg),
      query_cfg=pipeline.DatasetConfig(mixture_or_task_name="webqa_inbatch_v1",
                                       task_feature_lengths=helpers.LENGTHS, batch_size=16))
  scores = q @ emb.T  # [Q, N]
  for qid, row in zip(qids, scores):
    rec = mined.get(qid)
    order = np.argsort(-row, kind="stable")
    want = [j for j in order if ids[j] not in train_q[qid]][:3]
    assert not set(rec.neighbour_ids) & train_q[qid]
    assert rec.neighbour_scores == sorted(rec.neighbour_scores, reverse=True)
    _differ_only_in_ties(rec.neighbour_ids, rec.neighbour_scores, [ids[j] for j in want],
                         row[want])


def _one_device():
  """A 1-device mesh: compiles much faster than the 8 simulated devices; the sharded train
  step and inference are tested in tests/murag/test_train.py and test_infer.py."""
  return partitioner_lib.Partitioner(devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def hardneg_run(setup, built, registered_on_memory, tmp_path_factory):
  """Two in-batch training steps on webqa_inbatch_hardneg_v1 (a checkpoint for later)."""
  model, _ = setup
  model_dir = str(tmp_path_factory.mktemp("hardneg_run"))
  cfg = pipeline.DatasetConfig(mixture_or_task_name="webqa_inbatch_hardneg_v1",
                               task_feature_lengths=helpers.LENGTHS, split="train",
                               batch_size=8, shuffle_buffer_size=helpers.SHUFFLE_BUFFER)
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    step, _ = train_lib.train(
        model=model, train_dataset_cfg=cfg,
        checkpoint_cfg=checkpoints.CheckpointConfig(period=2, keep=1, async_save=False),
        partitioner=_one_device(), total_steps=2,
        model_dir=model_dir, log_period=1, feature_converter_kwargs={"memory_slots": 6})
  losses = [float(x) for x in re.findall(r"\[murag\.train\] step=\d+ loss=(\S+)", buf.getvalue())]
  return model_dir, step, losses


def test_hardneg_task_memory_holds_the_mined_negatives(built, registered_on_memory):
  out_dir, _ = built
  mined = nb.NeighbourTable.from_jsonl(os.path.join(out_dir, "webqa_hard_negatives.jsonl"))
  corpus = nb.load_corpus_items(f"murag_memory_corpus/webqa_px32:{murag_tasks.VERSION}",
                                helpers.data_dir())
  plain = {ex["question_id"]: ex for ex in seqio.get_mixture_or_task("webqa_inbatch_v1")
           .get_dataset(helpers.LENGTHS, split="train", shuffle=False,
                        num_epochs=1).as_numpy_iterator()}
  n = 0
  for ex in seqio.get_mixture_or_task("webqa_inbatch_hardneg_v1").get_dataset(
      helpers.LENGTHS, split="train", shuffle=False, num_epochs=1).as_numpy_iterator():
    base = plain[ex["question_id"]]
    rec = mined.get(ex["question_id"].decode())
    pos = base["memory_labels"] > 0
    mined_int = nb.stable_int_ids(rec.neighbour_ids)
    rest = ~pos & ~np.isin(base["memory_ids"], mined_int)
    np.testing.assert_array_equal(
        ex["memory_ids"], np.concatenate([base["memory_ids"][pos], mined_int,
                                          base["memory_ids"][rest]]))
    np.testing.assert_array_equal(
        ex["memory_labels"], [1] * pos.sum() + [0] * (len(mined_int) + rest.sum()))
    p = int(pos.sum())
    mined_text = [t.decode() for t in ex["memory_text"][p:p + len(mined_int)]]
    assert mined_text == [corpus[i]["text"] for i in rec.neighbour_ids]
    assert [bytes(b) for b in ex["memory_images"][p:p + len(mined_int)]] == [
        corpus[i]["image"] for i in rec.neighbour_ids]
    np.testing.assert_allclose(ex["memory_scores"][p:p + len(mined_int)],
                               rec.neighbour_scores, rtol=1e-6)
    n += 1
  assert n == len(plain) == len(mined)


def test_inbatch_training_on_mined_negatives(hardneg_run):
  _, step, losses = hardneg_run
  assert step == 2 and len(losses) == 2 and np.all(np.isfinite(losses)) and losses[0] > 0


def test_fullwiki_evaluation_end_to_end(setup, built, hardneg_run, tmp_path):
  model, _ = setup
  out_dir, _ = built
  model_dir, _, _ = hardneg_run
  fixed = model_lib.MuRAGModel(dataclasses.replace(model.config, retrieval_mode="fixed"),
                               model.vocabulary)
  eval_cfg = pipeline.DatasetConfig(mixture_or_task_name="webqa_fixed_v1",
                                    task_feature_lengths=helpers.LENGTHS, split="validation",
                                    batch_size=8, shuffle=False, num_epochs=1)
  with pytest.raises(ValueError, match="retrieval_mode = 'fixed'"):
    evaluate_fullwiki.evaluate_fullwiki(
        model=model, checkpoint_path=model_dir, memory_dir=out_dir, dataset_cfg=eval_cfg,
        partitioner=_one_device(), output_dir=str(tmp_path / "x"),
        query_task="webqa_inbatch_v1")
  res = evaluate_fullwiki.evaluate_fullwiki(
      model=fixed, checkpoint_path=model_dir, memory_dir=out_dir, dataset_cfg=eval_cfg,
      partitioner=_one_device(), output_dir=str(tmp_path / "fw"),
      query_task="webqa_inbatch_v1", k=2, num_decodes=2)
  val_q = _questions("validation")
  # Neighbours from the index = the memory's own top-3 lists, cut to 2.
  table = nb.NeighbourTable.from_jsonl(res["neighbours"])
  mem = nb.NeighbourTable.from_jsonl(os.path.join(out_dir, "webqa_val_neighbours.jsonl"))
  assert {r.example_id for r in table} == set(val_q)
  for r in table:
    assert r.neighbour_ids == mem.get(r.example_id).neighbour_ids[:2]
  # Predictions: an answer per question, retrieved = its neighbours (string ids, scores).
  preds = [json.loads(line) for line in open(res["predictions"])]
  assert {p["question_id"] for p in preds} == set(val_q) and res["num_questions"] == len(val_q)
  for p in preds:
    rec = table.get(p["question_id"])
    assert isinstance(p["answer"], str)
    assert p["retrieved_ids"] == rec.neighbour_ids
    np.testing.assert_allclose(p["retrieved_scores"], rec.neighbour_scores, rtol=1e-5)
  # Metrics: recall / MRR recomputed from the neighbour file and the positives.
  m = res["metrics"]
  recall2 = np.mean([len(set(r.neighbour_ids) & val_q[r.example_id]) / len(val_q[r.example_id])
                     for r in table])
  rr = np.mean([next((1.0 / (j + 1) for j, i in enumerate(r.neighbour_ids)
                      if i in val_q[r.example_id]), 0.0) for r in table])
  assert m["retrieval/recall@2"] == pytest.approx(100 * recall2)
  assert m["retrieval/mrr"] == pytest.approx(100 * rr)
  assert m["retrieval/recall@2"] == pytest.approx(res["index_retrieval"]["retrieval/recall@2"])
  assert "accuracy" in m and 0.0 <= m["accuracy"] <= 100.0 and "retrieval_f1" in m
  saved = json.load(open(tmp_path / "fw" / "fullwiki-metrics.json"))
  assert saved["metrics"] == pytest.approx(m)
  # The query encoder must be the one the index was built with.
  with pytest.raises(index_lib.FingerprintMismatchError):
    evaluate_fullwiki.evaluate_fullwiki(
        model=fixed, checkpoint_path=model_dir, memory_dir=out_dir, dataset_cfg=eval_cfg,
        partitioner=_one_device(), output_dir=str(tmp_path / "fw2"),
        query_task="webqa_inbatch_v1", k=2, query_checkpoint_path=model_dir)
