"""seqio preprocessors turning TFDS records into MuRAG task features (MuRAG §3.3, §3.4).

Each source-specific `*_to_murag` map produces the same string-level example:

  query_text [] str, query_image [] JPEG bytes ('' = no image), memory_text [M'] str,
  memory_images [M'] JPEG bytes, memory_labels / memory_ids [M'] int32, memory_scores [M']
  float32, retrieve [] int32, targets_pretokenized [] str, plus evaluation fields
  answers [A] str, question_id [] str, qcate [] str (WebQA category / MMQA modality /
  source name), positive_ids [P] str.

following the paper:
  * LAION / CC (§3.3): image + "generate caption:" -> caption; the memory entry is the
    caption itself (text only), retrieve = 0 (M_p = ∅, to avoid copying the target).
  * VQA (§3.3): image + question -> answer; memory entry = a COCO caption of the image
    (text only); retrieve = 1.
  * PAQ (§3.3): empty image + question -> answer; memory entry = the passage; retrieve = 1.
  * WebQA / MMQA (§3.4): text question -> answer; memory = the example's positive and
    hard-negative sources (image + caption, or text snippet with an empty image),
    positives first, each group shuffled deterministically by the question id; retrieve = 1.

`tokenize_murag` then tokenizes query / memory / targets (EOS kept after trimming).
"""
import functools
from typing import Mapping, Optional

import seqio
import tensorflow as tf

CAPTION_PROMPT = "generate caption:"


def _canonical(*, query_text, query_image, memory_text, memory_images, memory_labels,
               memory_ids, memory_scores=None, retrieve, target, answers, question_id,
               qcate, positive_ids):
  n = tf.shape(memory_text)[0]
  if memory_scores is None:
    memory_scores = tf.zeros([n], tf.float32)
  return {
      "query_text": tf.reshape(tf.convert_to_tensor(query_text, tf.string), []),
      "query_image": tf.reshape(tf.convert_to_tensor(query_image, tf.string), []),
      "memory_text": tf.reshape(tf.convert_to_tensor(memory_text, tf.string), [-1]),
      "memory_images": tf.reshape(tf.convert_to_tensor(memory_images, tf.string), [-1]),
      "memory_labels": tf.reshape(tf.cast(memory_labels, tf.int32), [-1]),
      "memory_ids": tf.reshape(tf.cast(memory_ids, tf.int32), [-1]),
      "memory_scores": tf.reshape(tf.cast(memory_scores, tf.float32), [-1]),
      "retrieve": tf.constant(retrieve, tf.int32) if isinstance(retrieve, int) else retrieve,
      "targets_pretokenized": tf.reshape(tf.convert_to_tensor(target, tf.string), []),
      "answers": tf.reshape(tf.convert_to_tensor(answers, tf.string), [-1]),
      "question_id": tf.reshape(tf.convert_to_tensor(question_id, tf.string), []),
      "qcate": tf.reshape(tf.convert_to_tensor(qcate, tf.string), []),
      "positive_ids": tf.reshape(tf.convert_to_tensor(positive_ids, tf.string), [-1]),
  }


@seqio.map_over_dataset
@tf.autograph.experimental.do_not_convert
def caption_to_murag(ex, source_name="caption"):
  """LAION / CC record {id, int_id, image, caption} -> canonical example (retrieve = 0)."""
  return _canonical(
      query_text=CAPTION_PROMPT, query_image=ex["image"], memory_text=[ex["caption"]],
      memory_images=[""], memory_labels=[1], memory_ids=[ex["int_id"]], retrieve=0,
      target=ex["caption"], answers=[ex["caption"]], question_id=ex["id"], qcate=source_name,
      positive_ids=[ex["id"]])


@seqio.map_over_dataset
@tf.autograph.experimental.do_not_convert
def vqa_to_murag(ex):
  """VQA record -> image + question, memory = the image's first COCO caption."""
  return _canonical(
      query_text=ex["question"], query_image=ex["image"], memory_text=ex["captions"][:1],
      memory_images=[""], memory_labels=[1], memory_ids=[ex["caption_int_id"]], retrieve=1,
      target=ex["answer"], answers=ex["answers"], question_id=ex["question_id"],
      qcate=ex["answer_type"], positive_ids=[ex["caption_id"]])


@seqio.map_over_dataset
@tf.autograph.experimental.do_not_convert
def paq_to_murag(ex):
  """PAQ record -> text question (empty image), memory = its passage."""
  return _canonical(
      query_text=ex["question"], query_image="", memory_text=[ex["passage"]],
      memory_images=[""], memory_labels=[1], memory_ids=[ex["passage_int_id"]], retrieve=1,
      target=ex["answers"][0], answers=ex["answers"], question_id=ex["id"], qcate="paq",
      positive_ids=[ex["passage_id"]])


def _question_seed(question_id):
  h = tf.strings.to_hash_bucket_fast(question_id, 2**31 - 1)
  return tf.stack([h, tf.constant(20221020, tf.int64)])


def order_sources(positive, question_id):
  """Indices putting positives first; each group shuffled by a seed from the question id.

  Args:
    positive: int32 [S] 1 for positive sources.
    question_id: scalar string.

  Returns:
    int32 [S] permutation.
  """
  seed = _question_seed(question_id)
  pos = tf.cast(tf.where(positive > 0)[:, 0], tf.int32)
  neg = tf.cast(tf.where(positive <= 0)[:, 0], tf.int32)
  pos = tf.random.experimental.stateless_shuffle(pos, seed=seed)
  neg = tf.random.experimental.stateless_shuffle(neg, seed=seed + 1)
  return tf.concat([pos, neg], 0)


def _sources_to_memory(ex, use_title_for_images=False):
  s = ex["sources"]
  order = order_sources(s["positive"], ex["guid"])
  g = lambda k: tf.gather(s[k], order)
  text = g("text")
  if use_title_for_images:  # MMQA images only have a title
    text = tf.where(tf.equal(g("is_image"), 1), g("title"), text)
  positive = g("positive")
  pos_ids = tf.boolean_mask(s["id"], s["positive"] > 0)
  return dict(memory_text=text, memory_images=g("image"), memory_labels=positive,
              memory_ids=g("int_id")), pos_ids


@seqio.map_over_dataset
@tf.autograph.experimental.do_not_convert
def webqa_to_murag(ex):
  """WebQA record -> text question, memory = positive + hard-negative sources."""
  mem, pos_ids = _sources_to_memory(ex)
  return _canonical(query_text=ex["question"], query_image="", retrieve=1,
                    target=ex["answers"][0], answers=ex["answers"], question_id=ex["guid"],
                    qcate=ex["qcate"], positive_ids=pos_ids, **mem)


@seqio.map_over_dataset
@tf.autograph.experimental.do_not_convert
def mmqa_to_murag(ex):
  """MMQA record -> text question, memory = its image / text documents."""
  mem, pos_ids = _sources_to_memory(ex, use_title_for_images=True)
  return _canonical(query_text=ex["question"], query_image="", retrieve=1,
                    target=ex["answers"][0], answers=ex["answers"], question_id=ex["guid"],
                    qcate=ex["modality"], positive_ids=pos_ids, **mem)


def _encode_with_eos(vocab, text):
  ids = vocab.encode_tf(text)  # [n] or ragged [M', n]
  if isinstance(ids, tf.RaggedTensor):
    eos = tf.fill([ids.nrows(), 1], tf.cast(vocab.eos_id, tf.int32))
    return tf.concat([tf.cast(ids, tf.int32), eos], axis=1).to_tensor()  # [M', n_max]
  return tf.concat([tf.cast(ids, tf.int32), [vocab.eos_id]], 0)


def tokenize_murag(dataset: tf.data.Dataset,
                   output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Adds query_tokens [n], memory_tokens [M', n_max] (0-padded) and targets [n], EOS-ended.

  Runs before the cache placeholder (no lengths yet); `trim_murag` trims afterwards.
  """
  vocab = output_features["targets"].vocabulary

  def fn(ex):
    out = dict(ex)
    out["query_tokens"] = _encode_with_eos(vocab, ex["query_text"])
    mem = _encode_with_eos(vocab, ex["memory_text"])
    out["memory_tokens"] = tf.reshape(mem, [tf.shape(ex["memory_text"])[0], -1])
    out["targets"] = _encode_with_eos(vocab, ex["targets_pretokenized"])
    return out

  return dataset.map(tf.autograph.experimental.do_not_convert(fn), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _trim_keep_eos(tokens, length, eos_id):
  """Trims the last axis to `length`; a row that was cut ends with EOS again."""
  n = tf.reduce_sum(tf.cast(tokens != 0, tf.int32), axis=-1, keepdims=True)  # [..., 1]
  cut = tokens[..., :length]
  col = tf.range(tf.shape(cut)[-1])
  put_eos = tf.logical_and(n > length, tf.equal(col, length - 1))
  return tf.where(put_eos, tf.cast(eos_id, tokens.dtype), cut)


def trim_murag(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
               sequence_length: Optional[Mapping[str, int]] = None) -> tf.data.Dataset:
  """Trims query / memory / target tokens to the task feature lengths, keeping the EOS."""
  if not sequence_length:
    return dataset
  eos = output_features["targets"].vocabulary.eos_id

  def fn(ex):
    out = dict(ex)
    for key in ("query_tokens", "memory_tokens", "targets"):
      if sequence_length.get(key):
        out[key] = _trim_keep_eos(ex[key], sequence_length[key], eos)
    return out

  return dataset.map(tf.autograph.experimental.do_not_convert(fn), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def filter_empty_memory(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Drops examples without any memory item (nothing to retrieve from)."""
  return dataset.filter(lambda ex: tf.shape(ex["memory_text"])[0] > 0)


# --------------------------------------------------------------------------- postprocessing
def _to_str(x) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if hasattr(x, "item") and not isinstance(x, str):
    return _to_str(x.item())
  return str(x)


def qa_postprocessor(output, example=None, is_target=False, category_key="qcate"):
  """seqio postprocess_fn: predictions stay strings; targets become the metric dict.

  Returns, for is_target=True:
    {"answers": [str], category_key: str, "question_id": str, "positive_ids": [str]}
    (category_key is "qcate" for WebQA, "modality" for MMQA).
  """
  if not is_target:
    return _to_str(output) if isinstance(output, (bytes, str)) else output
  if example is None:
    raise ValueError("qa_postprocessor(is_target=True) needs the example")
  return {
      "answers": [_to_str(a) for a in example["answers"]],
      category_key: _to_str(example["qcate"]),
      "question_id": _to_str(example["question_id"]),
      "positive_ids": [_to_str(p) for p in example["positive_ids"]],
  }


mmqa_postprocessor = functools.partial(qa_postprocessor, category_key="modality")
