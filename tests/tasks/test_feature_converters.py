"""Tests of tasks/feature_converters.py (MuRAG model-feature contract)."""
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tasks import features
from tasks.feature_converters import MuRAGFeatureConverter
from tests.tasks import murag_data_helpers as helpers

LENGTHS = {"query_tokens": 6, "memory_tokens": 5, "targets": 4}


def _jpeg(value, size=20):
  buf = io.BytesIO()
  Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, "JPEG", quality=95)
  return buf.getvalue()


def _example(n_mem=2, query_image=True):
  return {
      "query_tokens": np.array([5, 6, 1], np.int32),
      "query_image": _jpeg(100) if query_image else b"",
      "memory_tokens": np.array([[3, 4, 1], [7, 1, 0], [8, 9, 1]][:n_mem], np.int32),
      "memory_images": np.array([_jpeg(50), b"", _jpeg(200)][:n_mem], object),
      "memory_labels": np.array([1, 0, 0][:n_mem], np.int32),
      "memory_ids": np.array([11, 12, 13][:n_mem], np.int32),
      "memory_scores": np.array([0.5, 0.25, 0.1][:n_mem], np.float32),
      "retrieve": np.int32(1),
      "targets": np.array([9, 8, 1], np.int32),
  }


def _dataset(examples):
  spec = {
      "query_tokens": tf.TensorSpec([None], tf.int32), "query_image": tf.TensorSpec([], tf.string),
      "memory_tokens": tf.TensorSpec([None, None], tf.int32),
      "memory_images": tf.TensorSpec([None], tf.string),
      "memory_labels": tf.TensorSpec([None], tf.int32),
      "memory_ids": tf.TensorSpec([None], tf.int32),
      "memory_scores": tf.TensorSpec([None], tf.float32),
      "retrieve": tf.TensorSpec([], tf.int32), "targets": tf.TensorSpec([None], tf.int32)}
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)


def test_values_and_static_shapes():
  fc = MuRAGFeatureConverter(memory_slots=3, image_size=8)
  ds = fc(_dataset([_example(2), _example(3, query_image=False)]), LENGTHS).batch(2)
  for name, spec in ds.element_spec.items():
    assert spec.shape[1:].is_fully_defined(), name
  b = next(iter(ds.as_numpy_iterator()))
  features.validate_batch(b, fc.model_dims(LENGTHS), batch_size=2)
  np.testing.assert_array_equal(b["query_tokens"][0], [5, 6, 1, 0, 0, 0])
  np.testing.assert_array_equal(b["memory_tokens"][0], [[3, 4, 1, 0, 0], [7, 1, 0, 0, 0],
                                                         [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(b["memory_mask"], [[1, 1, 0], [1, 1, 1]])
  np.testing.assert_array_equal(b["memory_image_mask"], [[1, 0, 0], [1, 0, 1]])
  np.testing.assert_array_equal(b["memory_ids"][0], [11, 12, -1])
  np.testing.assert_allclose(b["memory_scores"][0], [0.5, 0.25, 0.0])
  np.testing.assert_array_equal(b["query_image_mask"], [1, 0])
  assert abs(int(b["query_image"][0].mean()) - 100) <= 3  # decoded + resized 20 -> 8 px
  assert b["query_image"][1].max() == 0                    # no image -> zeros
  assert b["memory_images"][0, 1].max() == 0
  assert abs(int(b["memory_images"][1, 2].mean()) - 200) <= 3
  np.testing.assert_array_equal(b["decoder_target_tokens"][0], [9, 8, 1, 0])
  np.testing.assert_array_equal(b["decoder_input_tokens"][0], [0, 9, 8, 1])
  np.testing.assert_array_equal(b["decoder_loss_weights"][0], [1, 1, 1, 0])
  np.testing.assert_array_equal(b["retrieve"], [1, 1])


def test_truncates_memory_to_slots_keeping_first():
  fc = MuRAGFeatureConverter(memory_slots=2, image_size=4)
  b = next(iter(fc(_dataset([_example(3)]), LENGTHS).batch(1).as_numpy_iterator()))
  np.testing.assert_array_equal(b["memory_ids"], [[11, 12]])
  np.testing.assert_array_equal(b["memory_labels"], [[1, 0]])
  assert fc.get_model_feature_lengths(LENGTHS)["memory_images"] == 2


def test_rejects_packing_and_bad_settings():
  with pytest.raises(ValueError, match="packing"):
    MuRAGFeatureConverter(pack=True)
  with pytest.raises(ValueError, match="memory_slots"):
    MuRAGFeatureConverter(memory_slots=0)
  fc = MuRAGFeatureConverter(memory_slots=8, image_size=4)
  with pytest.raises(ValueError, match="memory_slots=8"):
    fc(_dataset([_example()]), LENGTHS)


def test_missing_task_feature_is_named():
  ex = _example()
  del ex["retrieve"]
  ds = tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in ex.items()})
  with pytest.raises(ValueError, match="'retrieve' is missing"):
    MuRAGFeatureConverter(memory_slots=2, image_size=4)(ds, LENGTHS)


def test_real_task_batches_match_contract():
  helpers.registered("webqa")
  import seqio  # pylint: disable=g-import-not-at-top
  fc = helpers.converter(memory_slots=4, image_size=32)
  task = seqio.get_mixture_or_task("webqa_inbatch_v1")
  ds = task.get_dataset(helpers.LENGTHS, split="validation", shuffle=False, num_epochs=1)
  out = fc(ds, helpers.LENGTHS).batch(4, drop_remainder=True)
  b = next(iter(out.as_numpy_iterator()))
  features.validate_batch(b, fc.model_dims(helpers.LENGTHS), batch_size=4)
  # Every WebQA example has a positive source in slot 0, and text sources have no image.
  assert (b["memory_labels"][:, 0] == 1).all()
  assert ((b["memory_image_mask"] == 0) | (b["memory_images"].reshape(4, 4, -1).max(-1) > 0)).all()
  assert (b["retrieve"] == 1).all() and (b["query_image_mask"] == 0).all()
  eos = helpers.vocabulary().eos_id
  assert ((b["query_tokens"] == eos).sum(1) == 1).all()
