"""Every MuRAG task reads its synthetic-world conversion back with the paper's semantics."""
import numpy as np
import pytest
import seqio

from tasks import murag_tasks
from tasks import preprocessors as prep
from tests.tasks import murag_data_helpers as helpers

SOURCES = ("laion", "cc", "paq", "vqa", "webqa", "mmqa", "memory_corpus")


def _examples(name, split="train", n=8):
  helpers.registered(*SOURCES)
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(helpers.LENGTHS, split=split, shuffle=False, num_epochs=1)
  return task, list(ds.take(n).as_numpy_iterator())


def _decode(ids):
  return helpers.vocabulary().decode([int(i) for i in ids if i > 0])


def test_all_tasks_and_mixtures_registered():
  helpers.registered(*SOURCES)
  names = set(seqio.TaskRegistry.names())
  assert set(murag_tasks.TASK_NAMES) <= names
  assert {"murag_pretrain_stage1", "murag_pretrain_stage2"} <= set(seqio.MixtureRegistry.names())
  for name in murag_tasks.TASK_NAMES:
    assert name.endswith("_v1")


@pytest.mark.parametrize("name", ["laion_caption_v1", "cc_caption_v1"])
def test_caption_tasks(name):
  _, exs = _examples(name)
  for ex in exs:
    assert ex["query_text"].decode() == prep.CAPTION_PROMPT
    assert len(ex["query_image"]) > 0 and ex["retrieve"] == 0       # M_p = ∅
    assert list(ex["memory_text"]) == [ex["targets_pretokenized"]]  # memory = its caption
    assert list(ex["memory_images"]) == [b""] and list(ex["memory_labels"]) == [1]
    assert ex["targets_pretokenized"].decode().startswith(_decode(ex["targets"]))
    assert len(ex["targets"]) <= helpers.LENGTHS["targets"]
    assert ex["targets"][-1] == helpers.vocabulary().eos_id  # kept after trimming


def test_vqa_task():
  task, exs = _examples("vqa_qa_v1", split="validation")
  for ex in exs:
    assert len(ex["query_image"]) > 0 and ex["retrieve"] == 1
    assert ex["query_text"].decode().endswith("?")
    assert len(ex["memory_text"]) == 1 and len(ex["answers"]) == 10
    assert ex["targets_pretokenized"] in list(ex["answers"])
  target = task.postprocess_fn(b"", example=exs[0], is_target=True)
  assert set(target) == {"answers", "answer_type", "question_id", "positive_ids"}
  scores = task.metric_fns[0]([task.postprocess_fn(b"", example=e, is_target=True) for e in exs],
                              [e["targets_pretokenized"].decode() for e in exs])
  assert scores["vqa_accuracy"] > 80  # the consensus answer agrees with most annotators


def test_paq_task():
  _, exs = _examples("paq_qa_v1")
  for ex in exs:
    assert ex["query_image"] == b"" and ex["retrieve"] == 1
    assert ex["targets_pretokenized"] in ex["memory_text"][0]  # the passage holds the answer
    assert list(ex["positive_ids"])[0].startswith(b"psgs_w100/")


@pytest.mark.parametrize("name,key", [("webqa_inbatch_v1", "qcate"),
                                      ("mmqa_inbatch_v1", "modality")])
def test_fine_tuning_tasks(name, key):
  task, exs = _examples(name, split="validation")
  for ex in exs:
    labels = ex["memory_labels"]
    n_pos = int(labels.sum())
    assert n_pos >= 1 and (labels[:n_pos] == 1).all() and (labels[n_pos:] == 0).all()
    assert ex["query_image"] == b"" and ex["retrieve"] == 1
    assert len(ex["memory_text"]) == len(ex["memory_images"]) == ex["memory_tokens"].shape[0]
    assert len(ex["positive_ids"]) == n_pos
  target = task.postprocess_fn(b"x", example=exs[0], is_target=True)
  assert set(target) == {"answers", key, "question_id", "positive_ids"}
  assert all(isinstance(a, str) for a in target["answers"])
  assert task.postprocess_fn(b"an answer", example=exs[0], is_target=False) == "an answer"
  targets = [task.postprocess_fn(b"", example=e, is_target=True) for e in exs]
  perfect = task.metric_fns[0](targets, [t["answers"][0] for t in targets])
  wrong = task.metric_fns[0](targets, ["zzzz qqqq"] * len(targets))
  main = "accuracy" if name.startswith("webqa") else "all/f1"
  assert perfect[main] > wrong[main]


def test_source_order_is_deterministic_per_question():
  _, a = _examples("webqa_inbatch_v1", split="validation", n=4)
  _, b = _examples("webqa_inbatch_v1", split="validation", n=4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["memory_ids"], y["memory_ids"])


@pytest.mark.parametrize("name", ["webqa_memory_v1", "mmqa_memory_v1"])
def test_memory_corpus_tasks(name):
  _, exs = _examples(name, n=200)
  corpus = "webqa" if name.startswith("webqa") else "mmqa"
  assert len(exs) == helpers.built("memory_corpus", f"{corpus}_px32").info.splits[
      "train"].num_examples
  with_image = sum(len(e["memory_images"][0]) > 0 for e in exs)
  assert 0 < with_image < len(exs)  # images and text snippets
  # Source ids of the fine-tuning task are ids of the corpus.
  corpus_ids = {e["question_id"] for e in exs}
  _, ft = _examples(f"{corpus}_inbatch_v1", n=8)
  assert all(p in corpus_ids for e in ft for p in e["positive_ids"])


def test_cm3_document_tasks():
  helpers.registered(*SOURCES)
  from tasks import cm3_tasks  # pylint: disable=g-import-not-at-top
  from tasks.neighbours import stable_int_ids  # pylint: disable=g-import-not-at-top
  cm3_tasks.register_all(image_config=helpers.IMAGE_CONFIG, data_dir=helpers.data_dir(),
                         vocabulary=helpers.vocabulary())
  lengths = {"text_tokens": 12}
  for name in cm3_tasks.TASK_NAMES:
    ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split="train", shuffle=False,
                                                     num_epochs=1)
    docs = list(ds.take(40).as_numpy_iterator())
    assert docs, name
    for d in docs:
      assert d["doc_id"] == stable_int_ids([d["doc_string_id"].decode()])[0]
      assert d["image_mask"] == int(len(d["image"]) > 0)
      assert 0 < len(d["text_tokens"]) <= 12
      assert d["text_tokens"][-1] == helpers.vocabulary().eos_id
    if name in ("cm3_laion_docs_v1", "cm3_cc_docs_v1", "cm3_coco_docs_v1"):
      assert all(d["image_mask"] == 1 for d in docs)
    assert {int(d["image_first"]) for d in docs} == {0, 1}  # both generation orders


def test_registration_helper_worked_example():
  """The README example: a new image-caption task in a few lines, read by the pipeline."""
  helpers.registered(*SOURCES)
  from tasks import registration  # pylint: disable=g-import-not-at-top
  registration.register_image_text_task(
      "my_captions_v1", tfds_name="murag_cc/px32:1.0.0", tfds_data_dir=helpers.data_dir(),
      caption_key="caption", vocabulary=helpers.vocabulary())
  registration.register_memory_corpus_task(
      "my_memory_v1", "murag_memory_corpus/mmqa_px32:1.0.0", tfds_data_dir=helpers.data_dir(),
      vocabulary=helpers.vocabulary())
  from tasks import pipeline  # pylint: disable=g-import-not-at-top
  cfg = pipeline.DatasetConfig("my_captions_v1", dict(helpers.LENGTHS), "train", batch_size=4)
  batch = next(pipeline.get_dataset_iterator(cfg, feature_converter=helpers.converter()))
  assert (batch["retrieve"] == 0).all() and (batch["query_image_mask"] == 1).all()
  _, mem = _examples("my_memory_v1", n=3)
  assert all(len(m["memory_text"]) == 1 and m["query_text"] == b"" for m in mem)
