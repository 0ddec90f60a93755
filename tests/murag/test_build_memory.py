"""Tests for murag.build_memory: resumable corpus encoding, index, neighbour files."""
import json
import os

import jax
import numpy as np
import pytest

from murag import build_memory
from murag import model as model_lib
from murag.memory import index as index_lib
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
  """One full build_memory run (encoding, index, neighbour file)."""
  model, corpus_cfg = setup
  query_cfg = pipeline.DatasetConfig(task_feature_lengths=helpers.LENGTHS,
                                     batch_size=16)
  out_dir = str(tmp_path_factory.mktemp("mem"))
  summary = build_memory.build_memory(
      model=model, output_dir=out_dir, corpus_cfg=corpus_cfg,
      neighbour_tasks=[("webqa_inbatch_v1", "validation",
                        "webqa_neighbours.jsonl")],
      query_cfg=query_cfg, k=3, batches_per_shard=2)
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
      os.path.join(out_dir, "webqa_neighbours.jsonl"))
  assert len(table) > 0
  rec = next(iter(table))
  assert len(rec.neighbour_ids) == 3 and set(rec.neighbour_ids) <= set(
      meta["ids"])
  assert rec.neighbour_scores == sorted(rec.neighbour_scores, reverse=True)
  metrics = summary["webqa_neighbours.jsonl"]
  assert 0.0 <= metrics["retrieval/recall@3"] <= 100.0
  assert metrics["retrieval/num_queries"] == len(table)
  # Another checkpoint (different params) is refused.
  with pytest.raises(index_lib.FingerprintMismatchError):
    index_lib.MemoryIndex.load(
        os.path.join(out_dir, "index"),
        expected_fingerprint=index_lib.make_fingerprint("other", meta["ids"]))
