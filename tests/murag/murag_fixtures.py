"""A small real seqio QA task for the trainer / infer tests, registered when imported.

"what color is the <object>?" -> "<color>", with the example's memory = its positive fact
("the <object> is <color>", with a solid-colour JPEG) followed by two hard negatives (facts about
other objects). It goes through the project's own MuRAG preprocessors (tokenize / trim), output
features, MMQA postprocessor and metric, and `tasks.pipeline` / `MuRAGFeatureConverter`, so the
trainer sees exactly the features of tasks/features.py. The SentencePiece vocabulary is trained
deterministically on the task's text (tasks.vocab.train_sentencepiece) and cached in /tmp.
"""
import functools
import hashlib
import os
import tempfile

import numpy as np
import seqio
import tensorflow as tf

from tasks import preprocessors as prep
from tasks import registration
from tasks import vocab as vocab_lib

TASK = "murag_test_color_qa_v1"
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
OBJECTS = ("cat", "car", "ball", "house", "boat", "tree", "lamp", "chair", "kite", "shoe",
           "cup", "book", "hat", "door", "bird", "fish")
RGB = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20),
       "yellow": (230, 230, 20), "purple": (140, 20, 160), "orange": (240, 140, 10),
       "white": (250, 250, 250), "black": (5, 5, 5)}
SPLITS = {"train": 64, "validation": 10}
TASK_FEATURE_LENGTHS = {"query_tokens": 12, "memory_tokens": 12, "targets": 6}


def _color(obj_index: int, split: str) -> str:
  shift = 0 if split == "train" else 3
  return COLORS[(obj_index * 5 + shift) % len(COLORS)]


def _examples(split: str):
  n = SPLITS[split]
  for i in range(n):
    o = i % len(OBJECTS)
    obj, color = OBJECTS[o], _color(o, split)
    negs = [(o + 5) % len(OBJECTS), (o + 11) % len(OBJECTS)]
    facts = [f"the {obj} is {color}"] + [
        f"the {OBJECTS[j]} is {_color(j, split)}" for j in negs]
    ids = [f"{split}-fact-{o}"] + [f"{split}-fact-{j}" for j in negs]
    yield dict(qid=f"{split}-{i}", question=f"what color is the {obj}?", answer=color,
               facts=facts, ids=ids, colors=[color] + [_color(j, split) for j in negs])


def _jpeg(color: str) -> bytes:
  img = np.broadcast_to(np.asarray(RGB[color], np.uint8), (32, 32, 3))
  return tf.io.encode_jpeg(np.ascontiguousarray(img)).numpy()


def _dataset_fn(split: str, shuffle_files: bool = False, seed=None):
  del shuffle_files, seed
  from tasks import neighbours  # pylint: disable=g-import-not-at-top
  rows = list(_examples(split))

  def gen():
    for r in rows:
      yield {
          "query_text": r["question"], "query_image": b"",
          "memory_text": np.asarray(r["facts"], object),
          "memory_images": np.asarray([_jpeg(c) for c in r["colors"]], object),
          "memory_labels": np.asarray([1, 0, 0], np.int32),
          "memory_ids": neighbours.stable_int_ids(r["ids"]),
          "memory_scores": np.zeros([3], np.float32),
          "retrieve": np.int32(1), "targets_pretokenized": r["answer"],
          "answers": np.asarray([r["answer"]], object), "question_id": r["qid"],
          "qcate": "text", "positive_ids": np.asarray(r["ids"][:1], object),
      }

  s = tf.TensorSpec
  spec = {"query_text": s([], tf.string), "query_image": s([], tf.string),
          "memory_text": s([None], tf.string), "memory_images": s([None], tf.string),
          "memory_labels": s([None], tf.int32), "memory_ids": s([None], tf.int32),
          "memory_scores": s([None], tf.float32), "retrieve": s([], tf.int32),
          "targets_pretokenized": s([], tf.string), "answers": s([None], tf.string),
          "question_id": s([], tf.string), "qcate": s([], tf.string),
          "positive_ids": s([None], tf.string)}
  return tf.data.Dataset.from_generator(gen, output_signature=spec)


def _corpus():
  lines = []
  for split in SPLITS:
    for r in _examples(split):
      lines += [r["question"], r["answer"]] + r["facts"]
  return lines


@functools.lru_cache(maxsize=None)
def vocab_path() -> str:
  """Path of the task's SentencePiece model (trained once, cached by content)."""
  corpus = _corpus()
  digest = hashlib.sha256("\n".join(corpus).encode()).hexdigest()[:12]
  path = os.path.join(tempfile.gettempdir(), f"murag_test_color_qa_{digest}.model")
  if not os.path.exists(path):
    proto = vocab_lib.train_sentencepiece(corpus, vocab_size=80)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(proto)
    os.replace(tmp, path)
  return path


def register():
  vocabulary = vocab_lib.get_vocabulary(vocab_path())
  if TASK in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(TASK)
  seqio.TaskRegistry.add(
      TASK,
      source=seqio.FunctionDataSource(_dataset_fn, splits=tuple(SPLITS)),
      preprocessors=[prep.filter_empty_memory, prep.tokenize_murag,
                     seqio.CacheDatasetPlaceholder(), prep.trim_murag],
      output_features=registration.output_features(vocabulary),
      postprocess_fn=prep.mmqa_postprocessor,
      metric_fns=[_mmqa_metrics],
      shuffle_buffer_size=64)


def _mmqa_metrics(targets, predictions):
  from tasks.metrics import mmqa  # pylint: disable=g-import-not-at-top
  from tasks.metrics import retrieval  # pylint: disable=g-import-not-at-top
  out = dict(mmqa.mmqa_metrics(targets, predictions))
  out.update(retrieval.retrieval_metrics(targets, predictions))
  return out


register()
