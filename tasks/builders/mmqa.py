"""MultimodalQA builder (MuRAG §3.4, §4.2: the TextQ / ImageQ subset).

Input (manual directory, the MultimodalQA release layout):
  MMQA_train.jsonl, MMQA_dev.jsonl   questions {qid, question, answers[{answer, ...}],
                                     metadata{type, image_doc_ids, text_doc_ids, ...},
                                     supporting_context[{doc_id, doc_part}]}
  MMQA_texts.jsonl                   {title, url, id, text}
  MMQA_images.jsonl                  {title, url, id, path}
  final_dataset_images/<path>        image files

The paper keeps the questions of type TextQ and ImageQ (tables are out of scope); other
types are filtered (counted as `filtered_type`). The sources of an example are its
metadata image and text documents; positives are the supporting-context documents.
"""
import json
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from tasks.builders import common
from tasks.builders.webqa import source_features
from tasks.neighbours import stable_int_id

SPLITS = {"train": "MMQA_train.jsonl", "validation": "MMQA_dev.jsonl"}
QUESTION_TYPES = ("TextQ", "ImageQ")


def read_jsonl(path, counter=None):
  with tf.io.gfile.GFile(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield lineno, json.loads(line)
      except json.JSONDecodeError as e:
        if counter is None:
          raise ValueError(f"{path}:{lineno}: {e}") from e
        counter.add(path, "malformed_record", str(e), f"line {lineno}")


class MuragMmqa(common.MuRAGBuilder):
  """MultimodalQA TextQ / ImageQ questions with their image and text documents."""

  name = "murag_mmqa"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Get MultimodalQA (https://github.com/allenai/multimodalqa: MMQA_{train,dev}.jsonl,
  MMQA_texts.jsonl, MMQA_images.jsonl, final_dataset_images/) into the manual directory
  (~/tensorflow_datasets/downloads/manual/murag_mmqa/ or --manual_dir).
  """

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "guid": tfds.features.Text(),
            "question": tfds.features.Text(),
            "answers": tfds.features.Sequence(tfds.features.Text()),
            "qtype": tfds.features.Text(),
            "modality": tfds.features.Text(),
            "sources": source_features(),
        }),
        homepage="https://allenai.github.io/multimodalqa/",
    )

  def _split_generators(self, dl_manager):
    texts = {r["id"]: r for _, r in read_jsonl(self.manual_path(dl_manager, "MMQA_texts.jsonl"),
                                               self.bad_records) if "id" in r}
    images = {r["id"]: r for _, r in read_jsonl(
        self.manual_path(dl_manager, "MMQA_images.jsonl"), self.bad_records) if "id" in r}
    image_dir = self.manual_path(dl_manager, "final_dataset_images")
    out = {}
    for split, fname in SPLITS.items():
      path = self.manual_path(dl_manager, fname, required=(split == "train"))
      if tf.io.gfile.exists(path):
        out[split] = self._generate_examples(path, texts, images, image_dir)
    return out

  def _generate_examples(self, path, texts, images, image_dir):
    n_ok = 0
    image_cache = {}
    for lineno, rec in read_jsonl(path, self.bad_records):
      key = str(rec.get("qid", f"line {lineno}")) if isinstance(rec, dict) else f"line {lineno}"
      try:
        ex = self._make_example(rec, texts, images, image_dir, image_cache, path)
      except common.BadRecord as e:
        self.bad_records.add(path, e.reason, e.detail, key)
        continue
      n_ok += 1
      yield key, ex
    self.bad_records.log_file(path, n_ok)

  def _image_bytes(self, doc, image_dir, cache):
    if doc["id"] not in cache:
      p = os.path.join(image_dir, doc.get("path", ""))
      try:
        if not doc.get("path") or not tf.io.gfile.exists(p):
          raise common.BadRecord("missing_image", p)
        with tf.io.gfile.GFile(p, "rb") as f:
          cache[doc["id"]] = self.image(f.read())
      except common.BadRecord as e:
        cache[doc["id"]] = e
    if isinstance(cache[doc["id"]], common.BadRecord):
      raise cache[doc["id"]]
    return cache[doc["id"]]

  def _make_example(self, rec, texts, images, image_dir, cache, path):
    if not isinstance(rec, dict) or "qid" not in rec:
      raise common.BadRecord("malformed_record", "question record without qid")
    meta = rec.get("metadata") or {}
    qtype = str(meta.get("type", ""))
    if qtype not in QUESTION_TYPES:
      raise common.BadRecord("filtered_type", f"type {qtype!r} not in {QUESTION_TYPES}")
    question = self.text(rec.get("question"), "question", "empty_question")
    answers = [str(a.get("answer", "")).strip() for a in rec.get("answers") or []
               if isinstance(a, dict)]
    answers = [self.text(a, "answer", "missing_answer") for a in answers if a]
    if not answers:
      raise common.BadRecord("missing_answer", "no answers")
    gold = {c.get("doc_id") for c in rec.get("supporting_context") or []}
    modality = "image" if qtype == "ImageQ" else "text"
    sources = []
    for is_image, ids, table in ((1, meta.get("image_doc_ids") or [], images),
                                 (0, meta.get("text_doc_ids") or [], texts)):
      for doc_id in ids:
        positive = int(doc_id in gold)
        try:
          doc = table.get(doc_id)
          if doc is None:
            raise common.BadRecord("missing_image" if is_image else "malformed_record",
                                   f"document {doc_id} not in the collection")
          if is_image:
            text = self.text(doc.get("title"), "title", "missing_caption")
            image = self._image_bytes(doc, image_dir, cache)
          else:
            text, image = self.text(doc.get("text"), "text", "malformed_record"), b""
        except common.BadRecord as e:
          if positive:
            raise common.BadRecord(e.reason, f"positive document: {e.detail}") from e
          self.bad_records.add(path, e.reason, f"distractor dropped: {e.detail}", rec["qid"])
          continue  # an unusable distractor only drops itself
        sid = str(doc_id)
        sources.append({"id": sid, "int_id": stable_int_id(sid), "is_image": is_image,
                        "image": image, "title": str(doc.get("title") or ""), "text": text,
                        "positive": positive})
    if not any(s["positive"] for s in sources):
      raise common.BadRecord("malformed_record", "no supporting document among the sources")
    sources.sort(key=lambda s: -s["positive"])  # positives first (stable)
    return {"guid": str(rec["qid"]), "question": question, "answers": answers,
            "qtype": qtype, "modality": modality, "sources": sources}
