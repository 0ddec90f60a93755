"""The vocabulary factory and the offline SentencePiece model trained from the world."""
import json
import os

import gin
import pytest
import seqio
import sentencepiece as spm

from tasks import synthetic_world as sw
from tasks import vocab


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
  small = str(tmp_path_factory.mktemp("small"))
  medium = str(tmp_path_factory.mktemp("medium"))
  sw.generate_world(small, "small", seed=2)
  sw.generate_world(medium, "medium", seed=2, formats_to_write="webqa,mmqa,paq,vqa")
  return small, medium


def _answers(world_dir):
  with open(os.path.join(world_dir, "webqa", "WebQA_train_val.json")) as f:
    out = {a.strip('"') for r in json.load(f).values() for a in r["A"]}
  with open(os.path.join(world_dir, "paq", "PAQ.jsonl")) as f:
    out |= {a for r in map(json.loads, f) for a in r["answer"]}
  return sorted(out)


def test_offline_vocabulary_is_deterministic_and_t5_shaped(worlds, tmp_path):
  small, _ = worlds
  a = vocab.build_offline_vocabulary(small, str(tmp_path / "a" / "spm.model"))
  b = vocab.build_offline_vocabulary(small, str(tmp_path / "b" / "spm.model"))
  with open(tmp_path / "a" / "spm.model", "rb") as fa, open(tmp_path / "b" / "spm.model",
                                                            "rb") as fb:
    assert fa.read() == fb.read()
  assert isinstance(a, seqio.SentencePieceVocabulary)
  assert a.extra_ids == 100
  raw = spm.SentencePieceProcessor(model_file=str(tmp_path / "a" / "spm.model"))
  assert 300 < raw.get_piece_size() <= vocab.DEFAULT_OFFLINE_VOCAB_SIZE
  assert a.vocab_size == raw.get_piece_size() + 100
  assert (a.pad_id, a.eos_id, a.unk_id) == (0, 1, 2)
  # T5 sentinels appended by seqio: <extra_id_0> is the highest id.
  assert a.encode("<extra_id_0>") == [a.vocab_size - 1]
  assert a.encode("<extra_id_99>") == [raw.get_piece_size()]
  assert a.decode(a.encode("the <extra_id_3> flag")) == "the <extra_id_3> flag"
  assert b.encode("What color are the shapes?") == a.encode("What color are the shapes?")


def test_every_answer_round_trips_in_few_pieces(worlds, tmp_path):
  _, medium = worlds
  v = vocab.build_offline_vocabulary(medium, str(tmp_path / "spm.model"))
  answers = _answers(medium)
  assert len(answers) > 500
  lengths = []
  for answer in answers:
    ids = v.encode(answer)
    assert v.decode(ids) == answer
    assert 1 <= len(ids) <= 5, (answer, v.tokenizer.encode_as_pieces(answer))
    lengths.append(len(ids))
  assert sum(lengths) / len(lengths) <= 3.0
  for word in ("red", "3", "top", "yes", "no"):
    assert len(v.encode(word)) == 1, word
  assert 2 not in v.encode("Is the shape on the flag of Zorvania a circle or a square?")


def test_cache_is_reused_and_rebuilt_when_missing_or_stale(worlds, tmp_path):
  small, medium = worlds
  path = str(tmp_path / "cache" / "spm.model")
  vocab.build_offline_vocabulary(small, path)
  stamp = os.stat(path).st_mtime_ns
  with open(path, "rb") as f:
    first = f.read()
  vocab.build_offline_vocabulary(small, path)
  assert os.stat(path).st_mtime_ns == stamp  # reused, not retrained
  os.remove(path)
  v = vocab.build_offline_vocabulary(small, path)
  with open(path, "rb") as f:
    assert f.read() == first  # rebuilt identically
  assert v.decode(v.encode("the flag")) == "the flag"
  vocab.build_offline_vocabulary(medium, path)  # another world's text: retrained
  with open(path, "rb") as f:
    assert f.read() != first
  default = vocab.build_offline_vocabulary(small)
  assert default.sentencepiece_model_file == os.path.join(small, "vocab", "sentencepiece.model")


def test_factory_names_paths_and_errors(worlds, tmp_path, monkeypatch):
  small, _ = worlds
  assert vocab.get_vocabulary("t5").sentencepiece_model_file == vocab.T5_PUBLIC_VOCAB
  with pytest.raises(FileNotFoundError, match="missing.model"):
    vocab.get_vocabulary(str(tmp_path / "missing.model"))
  with pytest.raises(FileNotFoundError, match="no world_manifest.json"):
    vocab.build_offline_vocabulary(str(tmp_path))
  path = str(tmp_path / "spm.model")
  vocab.build_offline_vocabulary(small, path)
  monkeypatch.delenv("MURAG_VOCAB_PATH", raising=False)
  assert vocab.default_vocabulary().sentencepiece_model_file == vocab.T5_PUBLIC_VOCAB
  monkeypatch.setenv("MURAG_VOCAB_PATH", path)
  assert vocab.default_vocabulary().sentencepiece_model_file == path
  monkeypatch.delenv("MURAG_VOCAB_PATH")
  with gin.unlock_config():
    gin.parse_config(f"default_vocabulary.vocab_path = '{path}'")
  try:
    assert vocab.default_vocabulary().sentencepiece_model_file == path
  finally:
    gin.clear_config()


def test_task_prompts_encode_without_unknown_pieces(worlds, tmp_path):
  from tasks import preprocessors
  small, _ = worlds
  assert preprocessors.CAPTION_PROMPT in vocab.PROMPT_TEXTS
  v = vocab.build_offline_vocabulary(small, str(tmp_path / "spm.model"))
  ids = v.encode(preprocessors.CAPTION_PROMPT)
  assert v.unk_id not in ids
  assert v.decode(ids) == preprocessors.CAPTION_PROMPT


def test_validation_names_are_made_of_pieces_seen_in_training(worlds, tmp_path):
  """Validation realms never occur in training records; their names' pieces should.

  Training text here = WebQA train records and PAQ (stage-2 pre-training), as in the demo.
  """
  _, medium = worlds
  v = vocab.build_offline_vocabulary(medium, str(tmp_path / "spm.model"))
  with open(os.path.join(medium, "webqa", "WebQA_train_val.json")) as f:
    records = json.load(f).values()
  def sources(r):
    return r["img_posFacts"] + r["img_negFacts"] + r["txt_posFacts"] + r["txt_negFacts"]
  train_pieces = set()
  for r in records:
    if r["split"] == "train":
      train_pieces.update(v.encode(r["Q"]))
      for s in sources(r):
        train_pieces.update(v.encode(s["title"] + " " + (s.get("caption") or s.get("fact"))))
  with open(os.path.join(medium, "paq", "PAQ.jsonl")) as f:
    for line in f:
      train_pieces.update(v.encode(json.loads(line)["question"]))
  train_titles = {s["title"] for r in records if r["split"] == "train" for s in sources(r)}
  val_names = {s["title"].split(" of ")[-1] for r in records if r["split"] == "val"
               for s in sources(r)} - {t.split(" of ")[-1] for t in train_titles}
  assert len(val_names) >= 10
  unseen = {n: v.tokenizer.encode_as_pieces(n) for n in val_names
            if not set(v.encode(n)) <= train_pieces}
  # Built from training text only, yet nothing in validation maps to <unk> (id 2).
  for r in records:
    if r["split"] == "val":
      assert 2 not in v.encode(r["Q"]), r["Q"]
      for s in sources(r):
        assert 2 not in v.encode(s["title"] + " " + (s.get("caption") or s.get("fact")))
  # No validation name is a single piece of its own; almost all are fully covered.
  assert all(len(v.encode(n)) >= 2 for n in val_names)
  assert len(unseen) <= len(val_names) // 5, unseen
