"""MuRAG feature converter: seqio task features -> the model features of tasks/features.py.

Implements the batch layout of MuRAG pre-training (§3.3) and fine-tuning (§3.4): a query
(text, optional image), M memory slots per example (its caption / passage, or its positive
and hard-negative sources), a `retrieve` flag (M_p = TopK(M_B) for PAQ/VQA/fine-tuning,
M_p = ∅ for LAION/CC) and T5-style decoder features.

Model features (per example; the batch adds a leading B axis). Lq, Lm, Lt come from
`task_feature_lengths` ("query_tokens", "memory_tokens", "targets"); M = `memory_slots`
and H = W = `image_size` are converter settings.

| feature                 | dtype   | shape        | built from                                         |
|-------------------------|---------|--------------|----------------------------------------------------|
| query_tokens            | int32   | [Lq]         | task `query_tokens`, 0-padded                      |
| query_image             | uint8   | [H, W, 3]    | task `query_image` JPEG bytes, decoded + resized   |
| query_image_mask        | int32   | []           | 1 when `query_image` is non-empty                  |
| memory_tokens           | int32   | [M, Lm]      | task `memory_tokens` [M', Lm'], first M slots kept |
| memory_images           | uint8   | [M, H, W, 3] | task `memory_images` [M'] JPEG bytes ('' -> zeros) |
| memory_image_mask       | int32   | [M]          | 1 where the slot's image bytes are non-empty       |
| memory_mask             | int32   | [M]          | 1 for the min(M', M) real slots                    |
| memory_labels           | int32   | [M]          | task `memory_labels` (1 = positive source)         |
| memory_ids              | int32   | [M]          | task `memory_ids` (stable ids), -1 in padding      |
| memory_scores           | float32 | [M]          | task `memory_scores` (0 unless fixed retrieval)    |
| retrieve                | int32   | []           | task `retrieve`                                    |
| decoder_input_tokens    | int32   | [Lt]         | `targets` shifted right, BOS = 0                   |
| decoder_target_tokens   | int32   | [Lt]         | task `targets`, 0-padded                           |
| decoder_loss_weights    | int32   | [Lt]         | 1 on non-padding target positions                  |

Task preprocessors put positive sources before negatives, so truncating to the first M
slots never drops a positive unless an example has more than M positives. Packing is not
supported (every feature has a fixed per-example shape).
"""
from typing import Mapping

import seqio
import tensorflow as tf

from tasks import features as features_lib

FeatureSpec = seqio.FeatureConverter.FeatureSpec

# Task features the converter reads besides the three length-checked ones.
EXTRA_TASK_FEATURES = {
    "query_image": tf.string,
    "memory_images": tf.string,
    "memory_labels": tf.int32,
    "memory_ids": tf.int32,
    "memory_scores": tf.float32,
    "retrieve": tf.int32,
}


def _pad_1d(x, length, pad_value=0):
  """[n] -> [length]: truncates or pads with pad_value."""
  x = x[:length]
  x = tf.pad(x, [[0, length - tf.shape(x)[0]]], constant_values=pad_value)
  return tf.ensure_shape(x, [length])


def decode_image(jpeg: tf.Tensor, image_size: int) -> tf.Tensor:
  """Decodes JPEG bytes to [image_size, image_size, 3] uint8; '' gives zeros.

  Args:
    jpeg: scalar tf.string.
    image_size: output height and width.

  Returns:
    uint8 [H, W, 3].
  """
  def _decode():
    img = tf.io.decode_jpeg(jpeg, channels=3)  # [h, w, 3]
    same = tf.logical_and(tf.equal(tf.shape(img)[0], image_size),
                          tf.equal(tf.shape(img)[1], image_size))
    return tf.cond(
        same, lambda: img,
        lambda: tf.cast(tf.clip_by_value(
            tf.round(tf.image.resize(img, [image_size, image_size], antialias=True)),
            0, 255), tf.uint8))

  img = tf.cond(tf.strings.length(jpeg) > 0, _decode,
                lambda: tf.zeros([image_size, image_size, 3], tf.uint8))
  return tf.ensure_shape(img, [image_size, image_size, 3])


class MuRAGFeatureConverter(seqio.FeatureConverter):
  """Converts MuRAG task features to fixed-shape model features (see module docstring)."""

  TASK_FEATURES = {
      "query_tokens": FeatureSpec(dtype=tf.int32),
      "memory_tokens": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
      "targets": FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      "query_tokens": FeatureSpec(dtype=tf.int32),
      "query_image": FeatureSpec(dtype=tf.uint8, rank=3),
      "query_image_mask": FeatureSpec(dtype=tf.int32, rank=0),
      "memory_tokens": FeatureSpec(dtype=tf.int32, rank=2),
      "memory_images": FeatureSpec(dtype=tf.uint8, rank=4),
      "memory_image_mask": FeatureSpec(dtype=tf.int32),
      "memory_mask": FeatureSpec(dtype=tf.int32),
      "memory_labels": FeatureSpec(dtype=tf.int32),
      "memory_ids": FeatureSpec(dtype=tf.int32),
      "memory_scores": FeatureSpec(dtype=tf.float32),
      "retrieve": FeatureSpec(dtype=tf.int32, rank=0),
      "decoder_input_tokens": FeatureSpec(dtype=tf.int32),
      "decoder_target_tokens": FeatureSpec(dtype=tf.int32),
      "decoder_loss_weights": FeatureSpec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = None

  def __init__(self, pack: bool = False, use_custom_packing_ops: bool = False,
               apply_length_check: bool = True, bos_id: int = 0,
               passthrough_features=None, *, memory_slots: int = 4,
               image_size: int = 224, num_parallel_calls: int = tf.data.AUTOTUNE):
    """Creates the converter.

    Args:
      pack: must be False (MuRAG features have fixed per-example shapes).
      use_custom_packing_ops: unused (seqio signature).
      apply_length_check: seqio length validation of task features.
      bos_id: decoder BOS id (0 for T5).
      passthrough_features: must be None.
      memory_slots: M, memory items per example.
      image_size: H = W of every output image.
      num_parallel_calls: parallelism of the conversion map.
    """
    if pack:
      raise ValueError("MuRAGFeatureConverter does not support packing: set pack=False "
                       "(e.g. gin `DatasetConfig.pack = False` under t5x).")
    if passthrough_features:
      raise ValueError("MuRAGFeatureConverter does not support passthrough_features: "
                       f"got {sorted(passthrough_features)}")
    if memory_slots < 1 or image_size < 1:
      raise ValueError(f"memory_slots and image_size must be >= 1, got {memory_slots}, "
                       f"{image_size}")
    super().__init__(pack=False, use_custom_packing_ops=use_custom_packing_ops,
                     apply_length_check=apply_length_check, bos_id=bos_id)
    self.memory_slots = memory_slots
    self.image_size = image_size
    self._num_parallel_calls = num_parallel_calls
    assert set(self.MODEL_FEATURES) == set(features_lib.MURAG_MODEL_FEATURES)

  def convert_example(self, ex: Mapping[str, tf.Tensor],
                      task_feature_lengths: Mapping[str, int]) -> dict:
    """Converts one (unbatched) example; see the module docstring table."""
    for name, dtype in EXTRA_TASK_FEATURES.items():
      if name not in ex:
        raise ValueError(f"MuRAGFeatureConverter: task feature '{name}' is missing; the task's "
                         f"preprocessors must emit {sorted(EXTRA_TASK_FEATURES)} plus "
                         f"{sorted(self.TASK_FEATURES)} (got {sorted(ex)})")
      if ex[name].dtype != dtype:
        raise ValueError(f"MuRAGFeatureConverter: task feature '{name}' has dtype "
                         f"{ex[name].dtype.name}, expected {dtype.name}")
    lq = task_feature_lengths["query_tokens"]
    lm = task_feature_lengths["memory_tokens"]
    lt = task_feature_lengths["targets"]
    m, s = self.memory_slots, self.image_size

    mem_tok = ex["memory_tokens"][:m, :lm]  # [M', Lm'] -> [<=M, <=Lm]
    n = tf.shape(mem_tok)[0]
    mem_tok = tf.pad(mem_tok, [[0, m - n], [0, lm - tf.shape(mem_tok)[1]]])
    mem_tok = tf.ensure_shape(mem_tok, [m, lm])
    mem_jpeg = _pad_1d(ex["memory_images"], m, "")  # [M] bytes
    mem_images = tf.map_fn(lambda j: decode_image(j, s), mem_jpeg,
                           fn_output_signature=tf.TensorSpec([s, s, 3], tf.uint8))
    mem_images = tf.ensure_shape(mem_images, [m, s, s, 3])  # [M, H, W, 3]

    targets = _pad_1d(ex["targets"], lt)
    dec_in = seqio.utils.make_autoregressive_inputs(targets, bos_id=self.bos_id)
    return {
        "query_tokens": _pad_1d(ex["query_tokens"], lq),
        "query_image": decode_image(ex["query_image"], s),
        "query_image_mask": tf.cast(tf.strings.length(ex["query_image"]) > 0, tf.int32),
        "memory_tokens": mem_tok,
        "memory_images": mem_images,
        "memory_image_mask": tf.cast(tf.strings.length(mem_jpeg) > 0, tf.int32),
        "memory_mask": tf.cast(tf.range(m) < n, tf.int32),
        "memory_labels": _pad_1d(ex["memory_labels"], m),
        "memory_ids": _pad_1d(ex["memory_ids"], m, -1),
        "memory_scores": _pad_1d(ex["memory_scores"], m, 0.0),
        "retrieve": tf.ensure_shape(ex["retrieve"], []),
        "decoder_input_tokens": tf.ensure_shape(dec_in, [lt]),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": tf.cast(targets > 0, tf.int32),
    }

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    if self.memory_slots > task_feature_lengths["memory_tokens"]:
      # seqio trims the rank-2 memory_tokens to its first Lm rows (items) as well.
      raise ValueError(f"memory_slots={self.memory_slots} must be <= task_feature_lengths"
                       f"['memory_tokens']={task_feature_lengths['memory_tokens']}")
    fn = tf.autograph.experimental.do_not_convert(
        lambda ex: self.convert_example(ex, task_feature_lengths))
    return ds.map(fn,
                  num_parallel_calls=self._num_parallel_calls, deterministic=True)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
    """Lengths along each model feature's sequence dim (rank-0 features get 1)."""
    lq = task_feature_lengths["query_tokens"]
    lt = task_feature_lengths["targets"]
    m, s = self.memory_slots, self.image_size
    return {
        "query_tokens": lq, "query_image": s, "query_image_mask": 1,
        "memory_tokens": m, "memory_images": m, "memory_image_mask": m, "memory_mask": m,
        "memory_labels": m, "memory_ids": m, "memory_scores": m, "retrieve": 1,
        "decoder_input_tokens": lt, "decoder_target_tokens": lt, "decoder_loss_weights": lt,
    }

  def model_dims(self, task_feature_lengths: Mapping[str, int]) -> dict:
    """The symbolic sizes of tasks/features.py for `features.validate_batch`."""
    return {"Lq": task_feature_lengths["query_tokens"],
            "Lm": task_feature_lengths["memory_tokens"],
            "Lt": task_feature_lengths["targets"], "M": self.memory_slots,
            "H": self.image_size, "W": self.image_size}
