"""RA-CM3 document tasks over the MuRAG sources (shared pipeline; RA-CM3 explainer, §2-3).

RA-CM3 treats every (image, text) pair of the corpus as a multimodal *document*; a frozen
CLIP retriever finds k = 2 documents per input document, which are prepended as
"[ret1] [SEP] [ret2] [SEP] [doc]" to a CM3 decoder. These tasks emit one document per
example, with the ids that the retriever's index and the neighbour files use:

| feature        | dtype  | shape  | meaning                                                    |
|----------------|--------|--------|------------------------------------------------------------|
| text_tokens    | int32  | [<=Lt] | the document's text, EOS-terminated                        |
| image          | string | []     | JPEG bytes at the builder resolution ('' for text-only)    |
| image_mask     | int32  | []     | 1 when the document has an image                           |
| image_first    | int32  | []     | 1: image then text (caption -> image generation order is 0)|
| doc_id         | int32  | []     | stable id (tasks.neighbours.stable_int_id of doc_string_id) |
| doc_string_id  | string | []     | the source's own id (attribution / neighbour files)        |

`image_first` is a deterministic function of the id (half of the documents each way), so
the decoder learns both captioning (image -> text) and text-to-image orders. Turning images
into VQ tokens and prepending the retrieved documents is the RA-CM3 model's feature
converter (ra_cm3/), not part of these tasks.

Registered at import: cm3_laion_docs_v1, cm3_cc_docs_v1, cm3_coco_docs_v1 (VQA images with
their first COCO caption; read from murag_vqa, which has one record per question, so an image
appears once per question about it, with the same doc_id), cm3_webqa_docs_v1 and cm3_mmqa_docs_v1 (the memory corpora).
"""
import functools
import os
from typing import Optional

import seqio
import tensorflow as tf

from tasks import registration
from tasks.neighbours import stable_int_id_tf

VERSION = "1.0.0"
TASK_NAMES = ("cm3_laion_docs_v1", "cm3_cc_docs_v1", "cm3_coco_docs_v1", "cm3_webqa_docs_v1",
              "cm3_mmqa_docs_v1")


def output_features(vocabulary=None) -> dict:
  v = registration._vocabulary(vocabulary)  # pylint: disable=protected-access
  passthrough = seqio.PassThroughVocabulary(size=0)
  F = seqio.Feature  # pylint: disable=invalid-name
  return {
      "text_tokens": F(v, add_eos=True),
      "image": F(passthrough, add_eos=False, dtype=tf.string, rank=0),
      "image_mask": F(passthrough, add_eos=False, dtype=tf.int32, rank=0),
      "image_first": F(passthrough, add_eos=False, dtype=tf.int32, rank=0),
      "doc_id": F(passthrough, add_eos=False, dtype=tf.int32, rank=0),
  }


@seqio.map_over_dataset
@tf.autograph.experimental.do_not_convert
def to_document(ex, id_key, text_key, image_key):
  """Any record with a string id, a text and JPEG bytes -> one CM3 document."""
  sid = ex[id_key]
  text = ex[text_key]
  if text.shape.rank:  # e.g. VQA "captions": take the first
    text = text[0]
  image = ex[image_key] if image_key else tf.constant("")
  return {
      "text": text, "image": image,
      "image_mask": tf.cast(tf.strings.length(image) > 0, tf.int32),
      "image_first": tf.cast(stable_int_id_tf(sid) % 2, tf.int32),
      "doc_id": stable_int_id_tf(sid), "doc_string_id": sid,
  }


@tf.autograph.experimental.do_not_convert
def tokenize_text(dataset, output_features):
  vocab = output_features["text_tokens"].vocabulary

  def fn(ex):
    out = dict(ex)
    ids = tf.cast(vocab.encode_tf(ex["text"]), tf.int32)
    out["text_tokens"] = tf.concat([ids, [vocab.eos_id]], 0)
    return out
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


@tf.autograph.experimental.do_not_convert
def trim_text(dataset, output_features, sequence_length=None):
  if not sequence_length or not sequence_length.get("text_tokens"):
    return dataset
  n = sequence_length["text_tokens"]
  eos = output_features["text_tokens"].vocabulary.eos_id

  def fn(ex):
    t = ex["text_tokens"]
    out = dict(ex)
    out["text_tokens"] = tf.cond(tf.shape(t)[0] > n,
                                 lambda: tf.concat([t[:n - 1], [eos]], 0), lambda: t)
    return out
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def register_cm3_document_task(name: str, tfds_name: str, *, id_key: str = "id",
                               text_key: str = "caption", image_key: Optional[str] = "image",
                               tfds_data_dir: Optional[str] = None, vocabulary=None,
                               shuffle_buffer_size: int = registration.DEFAULT_SHUFFLE_BUFFER):
  """Registers a document task over any TFDS dataset with an id, a text and an image."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=registration.tfds_source(tfds_name, tfds_data_dir),
      preprocessors=[functools.partial(to_document, id_key=id_key, text_key=text_key,
                                       image_key=image_key),
                     tokenize_text, seqio.CacheDatasetPlaceholder(), trim_text],
      output_features=output_features(vocabulary), shuffle_buffer_size=shuffle_buffer_size)


def register_all(image_config: Optional[str] = None, data_dir: Optional[str] = None,
                 vocabulary=None):
  """(Re-)registers the RA-CM3 document tasks (same config conventions as murag_tasks)."""
  cfg = image_config or os.environ.get("MURAG_TFDS_CONFIG", "px224")
  kw = dict(tfds_data_dir=data_dir, vocabulary=vocabulary)
  register_cm3_document_task("cm3_laion_docs_v1", f"murag_laion/{cfg}:{VERSION}", **kw)
  register_cm3_document_task("cm3_cc_docs_v1", f"murag_cc/{cfg}:{VERSION}", **kw)
  register_cm3_document_task("cm3_coco_docs_v1", f"murag_vqa/{cfg}:{VERSION}",
                             id_key="caption_id", text_key="captions", **kw)
  for corpus in ("webqa", "mmqa"):
    register_cm3_document_task(f"cm3_{corpus}_docs_v1",
                               f"murag_memory_corpus/{corpus}_{cfg}:{VERSION}",
                               text_key="text", **kw)


register_all()
