"""Public helpers to register MuRAG seqio tasks in a few lines (MuRAG §3.3 / §3.4 data).

Three kinds of task, all producing the task features that `MuRAGFeatureConverter` reads:

* `register_image_text_task`: (image, caption) pairs, LAION / CC style (§3.3): image +
  "generate caption:" -> caption, memory entry = the caption, retrieve = 0.
* `register_qa_with_sources_task`: a question with positive / hard-negative sources
  (§3.4, WebQA / MMQA style), or any QA source with its own `*_to_murag` preprocessor.
* `register_memory_corpus_task`: one memory item per example (for encoding the global
  memory): the item is memory slot 0, the query is empty.

Example (a new image-caption dataset already converted by a TFDS builder):

    from tasks import registration
    registration.register_image_text_task(
        "my_captions_v1", tfds_name="my_captions/px224:1.0.0", caption_key="alt_text")
"""
import functools
from typing import Callable, Optional, Sequence

import seqio
import tensorflow as tf

from tasks import preprocessors as prep
from tasks.neighbours import stable_int_id_tf

DEFAULT_SHUFFLE_BUFFER = 1000


def _vocabulary(vocabulary=None):
  if vocabulary is not None:
    return vocabulary
  from tasks import vocab  # pylint: disable=g-import-not-at-top
  return vocab.default_vocabulary()


_PASS = seqio.PassThroughVocabulary(size=0)


def output_features(vocabulary=None) -> dict:
  """The MuRAG task output features (all survive seqio's mixture feature filter).

  query_tokens / targets are tokenized by `vocabulary`; memory_tokens has rank 2 [M', Lm'];
  the others are raw (JPEG bytes, labels, ids, scores, retrieve).
  """
  v = _vocabulary(vocabulary)
  F = seqio.Feature  # pylint: disable=invalid-name
  return {
      "query_tokens": F(v, add_eos=True),
      "targets": F(v, add_eos=True),
      "memory_tokens": F(v, add_eos=True, rank=2),
      "query_image": F(_PASS, add_eos=False, dtype=tf.string, rank=0),
      "memory_images": F(_PASS, add_eos=False, dtype=tf.string),
      "memory_labels": F(_PASS, add_eos=False, dtype=tf.int32),
      "memory_ids": F(_PASS, add_eos=False, dtype=tf.int32),
      "memory_scores": F(_PASS, add_eos=False, dtype=tf.float32),
      "retrieve": F(_PASS, add_eos=False, dtype=tf.int32, rank=0),
  }


def _register(name, source, source_preprocessors, vocabulary, metric_fns, postprocess_fn,
              shuffle_buffer_size, extra_preprocessors=()):
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=list(source_preprocessors) + list(extra_preprocessors) + [
          prep.filter_empty_memory,
          prep.tokenize_murag,
          seqio.CacheDatasetPlaceholder(),
          prep.trim_murag,
      ],
      output_features=output_features(vocabulary),
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns),
      shuffle_buffer_size=shuffle_buffer_size,
  )


def tfds_source(tfds_name: str, tfds_data_dir: Optional[str] = None,
                splits: Optional[Sequence[str]] = None) -> seqio.TfdsDataSource:
  """A read-only TfdsDataSource (never triggers a build or a download)."""
  return seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir,
                              splits=splits, read_only=True)


@seqio.map_over_dataset
@tf.autograph.experimental.do_not_convert
def _generic_caption(ex, caption_key, image_key, id_key, prompt, source_name):
  sid = ex[id_key]
  return prep._canonical(  # pylint: disable=protected-access
      query_text=prompt, query_image=ex[image_key], memory_text=[ex[caption_key]],
      memory_images=[""], memory_labels=[1], memory_ids=[stable_int_id_tf(sid)], retrieve=0,
      target=ex[caption_key], answers=[ex[caption_key]], question_id=sid, qcate=source_name,
      positive_ids=[sid])


def register_image_text_task(name: str, tfds_name: str, *, tfds_data_dir: Optional[str] = None,
                             caption_key: str = "caption", image_key: str = "image",
                             id_key: str = "id", prompt: str = prep.CAPTION_PROMPT,
                             splits: Optional[Sequence[str]] = None, vocabulary=None,
                             metric_fns: Sequence[Callable] = (),
                             shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER) -> seqio.Task:
  """Registers an (image, caption) task: image + prompt -> caption, retrieve = 0.

  Args:
    name: task name, with a version suffix (e.g. "my_captions_v1").
    tfds_name: "<builder>/<config>:<version>"; records need `image_key` (JPEG bytes),
      `caption_key` (text) and `id_key` (a unique string id of the pair).
    tfds_data_dir: TFDS data directory (None: the default / seqio override).
    caption_key, image_key, id_key: record field names.
    prompt: query text (the paper's "generate caption:").
    splits: allowed splits (None: all splits of the dataset).
    vocabulary: seqio vocabulary (None: tasks.vocab.default_vocabulary()).
    metric_fns: seqio metric functions (e.g. tasks.metrics.captioning.cider_d).
    shuffle_buffer_size: example shuffle buffer.

  Returns:
    The registered seqio.Task.
  """
  fmt = functools.partial(_generic_caption, caption_key=caption_key, image_key=image_key,
                          id_key=id_key, prompt=prompt, source_name=name)
  return _register(name, tfds_source(tfds_name, tfds_data_dir, splits), [fmt], vocabulary,
                   metric_fns, None, shuffle_buffer_size)


def register_qa_with_sources_task(name: str, tfds_name: str, *,
                                  to_murag: Callable = prep.webqa_to_murag,
                                  tfds_data_dir: Optional[str] = None,
                                  splits: Optional[Sequence[str]] = None, vocabulary=None,
                                  metric_fns: Sequence[Callable] = (),
                                  postprocess_fn: Optional[Callable] = prep.qa_postprocessor,
                                  extra_preprocessors: Sequence[Callable] = (),
                                  shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER
                                  ) -> seqio.Task:
  """Registers a QA task whose memory slots are the example's own sources.

  Args:
    name: task name with a version suffix.
    tfds_name: "<builder>/<config>:<version>". With the default `to_murag`, records need
      guid, question, answers [A], qcate and sources {id, int_id, is_image, image, title,
      text, positive} (the murag_webqa schema); MMQA uses prep.mmqa_to_murag.
    to_murag: record -> canonical example map (see tasks/preprocessors.py).
    tfds_data_dir, splits, vocabulary, metric_fns, shuffle_buffer_size: as above.
    postprocess_fn: turns targets into the metric dict (prep.qa_postprocessor).
    extra_preprocessors: applied to the canonical example before tokenization (e.g. the
      fixed-retrieval join, tasks.neighbours.add_fixed_neighbours).

  Returns:
    The registered seqio.Task.
  """
  return _register(name, tfds_source(tfds_name, tfds_data_dir, splits), [to_murag], vocabulary,
                   metric_fns, postprocess_fn, shuffle_buffer_size, extra_preprocessors)


@seqio.map_over_dataset
@tf.autograph.experimental.do_not_convert
def _memory_item(ex, source_name):
  return prep._canonical(  # pylint: disable=protected-access
      query_text="", query_image="", memory_text=[ex["text"]], memory_images=[ex["image"]],
      memory_labels=[1], memory_ids=[ex["int_id"]], retrieve=0, target="", answers=[""],
      question_id=ex["id"], qcate=source_name, positive_ids=[ex["id"]])


def register_memory_corpus_task(name: str, tfds_name: str, *,
                                tfds_data_dir: Optional[str] = None, vocabulary=None
                                ) -> seqio.Task:
  """Registers a memory corpus: one item (id, text, optional image) per example, in slot 0.

  Records need id (str), int_id (int32, `tasks.neighbours.stable_int_id(id)`), text and
  image (JPEG bytes or b""), as written by the murag_memory_corpus builder. Read it with
  shuffle=False to encode the corpus in order.
  """
  fmt = functools.partial(_memory_item, source_name=name)
  return _register(name, tfds_source(tfds_name, tfds_data_dir), [fmt], vocabulary, (), None,
                   DEFAULT_SHUFFLE_BUFFER)

