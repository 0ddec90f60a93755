"""Tests of tasks/pipeline.py: determinism, host sharding, exact resumption."""
import collections
import json

import numpy as np
import pytest

from tasks import features
from tasks import pipeline
from tests.tasks import murag_data_helpers as helpers


def _cfg(name="webqa_inbatch_v1", **kw):
  kw.setdefault("batch_size", 4)
  kw.setdefault("seed", 7)
  return pipeline.DatasetConfig(name, dict(helpers.LENGTHS), kw.pop("split", "train"), **kw)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_deterministic_for_a_seed_and_valid_batches():
  helpers.registered("webqa")
  fc = helpers.converter()
  a = _take(pipeline.get_dataset_iterator(_cfg(), feature_converter=fc), 3)
  b = _take(pipeline.get_dataset_iterator(_cfg(), feature_converter=fc), 3)
  assert _same(a, b)
  for batch in a:
    features.validate_batch(batch, fc.model_dims(helpers.LENGTHS), batch_size=4)
  order = lambda seed: [x for x in pipeline.task_dataset(_cfg(seed=seed)).map(
      lambda e: e["question_id"]).take(12).as_numpy_iterator()]
  assert order(7) == order(7) and order(7) != order(8)  # another seed, another order


def test_shards_cover_the_data_exactly_once():
  helpers.registered("webqa")
  total = helpers.built("webqa").info.splits["train"].num_examples
  ids = collections.Counter()
  sizes = []
  for shard in range(3):
    ds = pipeline.task_dataset(_cfg(num_epochs=1), shard_id=shard, num_shards=3)
    got = [x.decode() for x in ds.map(lambda e: e["question_id"]).as_numpy_iterator()]
    sizes.append(len(got))
    ids.update(got)
  assert len(ids) == total and max(ids.values()) == 1  # every example, each once
  assert max(sizes) - min(sizes) <= 1


def test_host_batch_is_global_batch_over_num_shards():
  helpers.registered("webqa")
  cfg = _cfg(batch_size=6, num_epochs=1, drop_remainder=False, shuffle=False)
  it = pipeline.get_dataset_iterator(cfg, shard_id=1, num_shards=3,
                                     feature_converter=helpers.converter())
  sizes = [b["query_tokens"].shape[0] for b in it]
  total = helpers.built("webqa").info.splits["train"].num_examples
  assert sizes[:-1] == [2] * (len(sizes) - 1) and sum(sizes) in (total // 3, total // 3 + 1)


def test_restored_iterator_yields_identical_batches():
  helpers.registered("webqa")
  fc = helpers.converter()
  it = pipeline.get_dataset_iterator(_cfg(), feature_converter=fc)
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
  expected = _take(it, 60)  # crosses an epoch boundary (190 train examples / 4)
  restored = pipeline.get_dataset_iterator(_cfg(), feature_converter=fc)
  restored.set_state(state)
  assert _same(expected, _take(restored, 60))
  assert restored.get_state()["batches_consumed"] == 63


def test_restore_refuses_another_configuration():
  helpers.registered("webqa")
  fc = helpers.converter()
  state = pipeline.get_dataset_iterator(_cfg(), feature_converter=fc).get_state()
  other = pipeline.get_dataset_iterator(_cfg(seed=1), feature_converter=fc)
  with pytest.raises(ValueError, match="seed"):
    other.set_state(state)


def test_bad_configuration_errors():
  helpers.registered("webqa")
  with pytest.raises(ValueError, match="divisible"):
    pipeline.get_dataset_iterator(_cfg(batch_size=5), num_shards=2)
  with pytest.raises(ValueError, match="memory_tokens"):
    pipeline.get_dataset_iterator(pipeline.DatasetConfig(
        "webqa_inbatch_v1", {"query_tokens": 8, "targets": 8}, "train", 4))


def test_autotune_option_reaches_every_pipeline():
  """DatasetConfig.autotune=False switches tf.data autotuning off for the task stream and the
  batched iterator (the demo's and CPU configs' setting); the default keeps it on, and the
  batches are the same either way."""
  helpers.registered("webqa")
  fc = helpers.converter()
  on = pipeline.get_dataset_iterator(_cfg(), feature_converter=fc)
  off = pipeline.get_dataset_iterator(_cfg(autotune=False), feature_converter=fc)
  assert on.dataset.options().autotune.enabled is not False
  assert off.dataset.options().autotune.enabled is False
  assert pipeline.task_dataset(_cfg(autotune=False)).options().autotune.enabled is False
  assert _same(_take(on, 2), _take(off, 2))
