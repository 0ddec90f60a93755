"""VQA v2 + COCO captions builder (MuRAG §3.3: (image, caption, QA) triples).

Input (manual directory, the VQA v2 / COCO 2014 layout):
  v2_OpenEnded_mscoco_{train,val}2014_questions.json   {"questions": [{image_id, question, question_id}]}
  v2_mscoco_{train,val}2014_annotations.json           {"annotations": [{question_id, answers[10],
                                                         multiple_choice_answer, answer_type, ...}]}
  annotations/captions_{train,val}2014.json            COCO captions {"images", "annotations"}
  {train,val}2014/COCO_{train,val}2014_%012d.jpg        images

Each question becomes one example holding its image, the 10 annotator answers, the
consensus answer (target) and the COCO captions of the image (the memory entry).
"""
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks.builders import common
from tasks.neighbours import stable_int_id

SPLITS = {"train": "train2014", "validation": "val2014"}


def caption_string_id(image_id) -> str:
  return f"coco_caption/{image_id}"


class MuragVqa(common.MuRAGBuilder):
  """VQA v2 questions with their COCO image and captions."""

  name = "murag_vqa"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Get VQA v2 (https://visualqa.org: questions + annotations JSON) and COCO 2014 (images
  train2014/, val2014/, annotations/captions_*2014.json) and place them in the manual
  directory keeping those names (~/tensorflow_datasets/downloads/manual/murag_vqa/).
  """

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "question_id": tfds.features.Text(),
            "image_id": np.int64,
            "image": common.bytes_feature(),
            "question": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "answers": tfds.features.Sequence(tfds.features.Text()),
            "answer_type": tfds.features.Text(),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "caption_id": tfds.features.Text(),
            "caption_int_id": np.int32,
        }),
        homepage="https://visualqa.org/",
    )

  def _split_generators(self, dl_manager):
    out = {}
    for split, sub in SPLITS.items():
      q = self.manual_path(dl_manager, f"v2_OpenEnded_mscoco_{sub}_questions.json",
                           required=(split == "train"))
      if tf.io.gfile.exists(q):
        out[split] = self._generate_examples(
            q, self.manual_path(dl_manager, f"v2_mscoco_{sub}_annotations.json"),
            self.manual_path(dl_manager, "annotations", f"captions_{sub}.json"),
            self.manual_path(dl_manager, sub), sub)
    return out

  def _load_json(self, path, key):
    with tf.io.gfile.GFile(path) as f:
      try:
        return json.load(f)[key]
      except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{path}: not a VQA/COCO file with '{key}' ({e})") from e

  def _generate_examples(self, q_path, ann_path, cap_path, image_dir, sub):
    questions = self._load_json(q_path, "questions")
    anns = {a.get("question_id"): a for a in self._load_json(ann_path, "annotations")}
    captions = {}
    for c in self._load_json(cap_path, "annotations"):
      captions.setdefault(c.get("image_id"), []).append(c)
    cache = (None, None)  # (image_id, jpeg) — questions are grouped by image below
    n_ok = 0
    for q in sorted(questions, key=lambda q: (q.get("image_id", 0), q.get("question_id", 0))):
      key = str(q.get("question_id"))
      try:
        image_id = q["image_id"]
        if cache[0] != image_id:
          path = os.path.join(image_dir, f"COCO_{sub}_{int(image_id):012d}.jpg")
          if not tf.io.gfile.exists(path):
            cache = (image_id, common.BadRecord("missing_image", path))
          else:
            with tf.io.gfile.GFile(path, "rb") as f:
              try:
                cache = (image_id, self.image(f.read()))
              except common.BadRecord as e:
                cache = (image_id, e)
        if isinstance(cache[1], common.BadRecord):
          raise cache[1]
        ex = self._make_example(q, anns.get(q.get("question_id")),
                                captions.get(image_id, []), cache[1])
      except common.BadRecord as e:
        self.bad_records.add(q_path, e.reason, e.detail, key)
        continue
      except (KeyError, TypeError, ValueError) as e:
        self.bad_records.add(q_path, "malformed_record", str(e), key)
        continue
      n_ok += 1
      yield key, ex
    self.bad_records.log_file(q_path, n_ok)

  def _make_example(self, q, ann, caps, jpeg):
    question = self.text(q.get("question"), "question", "empty_question")
    if ann is None:
      raise common.BadRecord("missing_answer", "no annotation for the question")
    answers = [str(a.get("answer", "")).strip() for a in ann.get("answers") or []]
    answers = [a for a in answers if a]
    answer = str(ann.get("multiple_choice_answer") or "").strip()
    if not answers or not answer:
      raise common.BadRecord("missing_answer", "empty answers")
    texts = []
    for c in sorted(caps, key=lambda c: c.get("id", 0)):
      try:
        texts.append(self.text(c.get("caption"), "caption", "missing_caption"))
      except common.BadRecord:
        continue
    if not texts:
      raise common.BadRecord("missing_caption", f"image {q['image_id']} has no caption")
    cid = caption_string_id(q["image_id"])
    return {"question_id": str(q["question_id"]), "image_id": int(q["image_id"]),
            "image": jpeg, "question": question, "answer": answer, "answers": answers,
            "answer_type": str(ann.get("answer_type") or ""), "captions": texts,
            "caption_id": cid, "caption_int_id": stable_int_id(cid)}
