"""WebQA builder (MuRAG §3.4 fine-tuning, §4.2: questions with positive + hard-negative sources).

Input (manual directory = the WebQA release folder):
  WebQA_train_val.json   guid -> {Q, A, Qcate, Guid, split, topic, img_posFacts,
                          img_negFacts [{image_id, title, caption, url}], txt_posFacts,
                          txt_negFacts [{snippet_id, title, fact, url}]}
  imgs.tsv, imgs.lineidx "image_id \\t base64(JPEG)" per line; lineidx = byte offsets.

Each example keeps all its sources, positives first. A question whose positive source is
unusable (missing / undecodable image, empty or over-long text) is skipped; an unusable hard
negative only drops that negative. Both are counted per input file.
"""
import base64
import binascii
import json
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks.builders import common
from tasks.neighbours import stable_int_id

SPLITS = {"train": "train", "val": "validation"}


def strip_quotes(s) -> str:
  """WebQA wraps questions / answers in literal double quotes."""
  if isinstance(s, list):
    s = s[0] if s else ""
  s = str(s if s is not None else "").strip()
  if len(s) >= 2 and s[0] == s[-1] == '"':
    s = s[1:-1].strip()
  return s


class ImageTsv:
  """Random access to `imgs.tsv` through `imgs.lineidx` (image_id -> base64 JPEG)."""

  def __init__(self, tsv_path: str, lineidx_path: Optional[str] = None):
    self.path = tsv_path
    self._f = tf.io.gfile.GFile(tsv_path, "rb")
    self._offsets: Dict[str, int] = {}
    if lineidx_path and tf.io.gfile.exists(lineidx_path):
      with tf.io.gfile.GFile(lineidx_path) as f:
        offsets = [int(x) for x in f.read().split()]
      for off in offsets:
        self._f.seek(off)
        head = self._f.read(64).split(b"\t", 1)[0]
        self._offsets[head.decode("utf-8", "replace").strip()] = off
    else:  # no index: one scan
      off = 0
      for line in self._f:
        self._offsets[line.split(b"\t", 1)[0].decode("utf-8", "replace").strip()] = off
        off += len(line)

  def __contains__(self, image_id) -> bool:
    return str(image_id) in self._offsets

  def get(self, image_id) -> bytes:
    """Returns the decoded image bytes; raises BadRecord when missing / not base64."""
    off = self._offsets.get(str(image_id))
    if off is None:
      raise common.BadRecord("missing_image", f"image_id {image_id} not in {self.path}")
    self._f.seek(off)
    line = self._f.readline().rstrip(b"\r\n")
    parts = line.split(b"\t")
    if len(parts) < 2:
      raise common.BadRecord("undecodable_image", f"image_id {image_id}: no base64 column")
    try:
      return base64.b64decode(parts[-1], validate=False)
    except (binascii.Error, ValueError) as e:
      raise common.BadRecord("undecodable_image", f"image_id {image_id}: {e}") from e


def source_features():
  return tfds.features.Sequence({
      "id": tfds.features.Text(),
      "int_id": np.int32,
      "is_image": np.int32,
      "image": common.bytes_feature(),
      "title": tfds.features.Text(),
      "text": tfds.features.Text(),
      "positive": np.int32,
  })


class MuragWebqa(common.MuRAGBuilder):
  """WebQA questions with their positive and hard-negative image / text sources."""

  name = "murag_webqa"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Get WebQA from https://github.com/WebQnA/WebQA (WebQA_train_val.json, imgs.tsv,
  imgs.lineidx) and put the three files directly in the manual directory
  (~/tensorflow_datasets/downloads/manual/murag_webqa/ or --manual_dir).
  """

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "guid": tfds.features.Text(),
            "question": tfds.features.Text(),
            "answers": tfds.features.Sequence(tfds.features.Text()),
            "qcate": tfds.features.Text(),
            "topic": tfds.features.Text(),
            "sources": source_features(),
        }),
        homepage="https://webqna.github.io/",
    )

  def _split_generators(self, dl_manager):
    qa_path = self.manual_path(dl_manager, "WebQA_train_val.json")
    tsv = self.manual_path(dl_manager, "imgs.tsv")
    lineidx = self.manual_path(dl_manager, "imgs.lineidx", required=False)
    with tf.io.gfile.GFile(qa_path) as f:
      try:
        data = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{qa_path}: not valid JSON ({e})") from e
    images = ImageTsv(tsv, lineidx)
    by_split = {v: [] for v in SPLITS.values()}
    for guid, rec in data.items():
      split = SPLITS.get(str(rec.get("split", "")).strip() if isinstance(rec, dict) else "")
      if split is None:
        if not isinstance(rec, dict):
          self.bad_records.add(qa_path, "malformed_record", "not an object", guid)
        continue  # e.g. the test split, which has no answers
      by_split[split].append((guid, rec))
    return {split: self._generate_examples(qa_path, images, recs)
            for split, recs in by_split.items() if recs}

  def _generate_examples(self, qa_path, images, records):
    n_ok = 0
    for guid, rec in records:
      try:
        ex = self._make_example(qa_path, images, guid, rec)
      except common.BadRecord as e:
        self.bad_records.add(qa_path, e.reason, e.detail, guid)
        continue
      n_ok += 1
      yield guid, ex
    self.bad_records.log_file(qa_path, n_ok)

  def _make_example(self, qa_path, images, guid, rec):
    question = self.text(strip_quotes(rec.get("Q")), "Q", "empty_question")
    answers = [strip_quotes(a) for a in (rec.get("A") or [])]
    answers = [self.text(a, "A", "missing_answer") for a in answers if a]
    if not answers:
      raise common.BadRecord("missing_answer", "'A' is empty")
    sources = []
    for positive, key in ((1, "img_posFacts"), (1, "txt_posFacts"), (0, "img_negFacts"),
                          (0, "txt_negFacts")):
      for fact in rec.get(key) or []:
        try:
          sources.append(self._make_source(images, fact, key.startswith("img"), positive))
        except common.BadRecord as e:
          if positive:
            raise common.BadRecord(e.reason, f"positive source: {e.detail}") from e
          self.bad_records.add(qa_path, e.reason, f"hard negative dropped: {e.detail}", guid)
    if not any(s["positive"] for s in sources):
      raise common.BadRecord("malformed_record", "no positive source")
    return {"guid": str(rec.get("Guid") or guid), "question": question, "answers": answers,
            "qcate": str(rec.get("Qcate") or ""), "topic": str(rec.get("topic") or ""),
            "sources": sources}

  def _make_source(self, images, fact, is_image, positive):
    if not isinstance(fact, dict):
      raise common.BadRecord("malformed_record", f"source is not an object: {fact!r:.80}")
    if is_image:
      raw_id = fact.get("image_id")
      if raw_id is None:
        raise common.BadRecord("malformed_record", "image source without image_id")
      text = self.text(fact.get("caption"), "caption", "missing_caption")
      image = self.image(images.get(raw_id))
    else:
      raw_id = fact.get("snippet_id")
      if raw_id is None:
        raise common.BadRecord("malformed_record", "text source without snippet_id")
      text = self.text(fact.get("fact"), "fact", "malformed_record")
      image = b""
    sid = str(raw_id)
    return {"id": sid, "int_id": stable_int_id(sid), "is_image": int(is_image), "image": image,
            "title": str(fact.get("title") or ""), "text": text, "positive": positive}

