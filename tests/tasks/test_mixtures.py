"""Pre-training mixtures: LAION alone, then CC : PAQ : VQA = 1 : 1 : 1 (MuRAG §3.3, §4.1)."""
import collections
import json

import numpy as np

from tasks import mixtures
from tasks import pipeline
from tests.tasks import murag_data_helpers as helpers

N = 900


def _source(ex):
  """Identifies the task of a mixture example from the paper's per-source semantics."""
  if ex["retrieve"] == 0:
    return "cc_caption_v1"            # caption data: no retrieval augmentation
  if len(ex["query_image"]) == 0:
    return "paq_qa_v1"                # text-only question
  return "vqa_qa_v1"                  # image + question


def _cfg(name, **kw):
  return pipeline.DatasetConfig(name, dict(helpers.LENGTHS), "train", batch_size=6, seed=11,
                                **kw)


def test_stage2_rates_within_tolerance():
  helpers.registered("cc", "paq", "vqa")
  ds = pipeline.task_dataset(_cfg(mixtures.STAGE2)).take(N)
  counts = collections.Counter(_source(ex) for ex in ds.as_numpy_iterator())
  assert set(counts) == set(mixtures.STAGE2_RATES)
  sd = np.sqrt(N * (1 / 3) * (2 / 3))  # binomial standard deviation, ~14
  for name, c in counts.items():
    assert abs(c - N / 3) < 4 * sd, counts
  # Sizes are unequal (64 CC pairs, 120 PAQ, 144 VQA), yet each source gets a third:
  # the smaller sources are repeated rather than under-sampled.
  assert counts["cc_caption_v1"] > 64


def test_stage1_is_laion_only():
  helpers.registered("laion")
  ds = pipeline.task_dataset(_cfg(mixtures.STAGE1)).take(100)
  exs = list(ds.as_numpy_iterator())
  assert all(ex["retrieve"] == 0 and len(ex["query_image"]) > 0 for ex in exs)


def test_mixture_iterator_restores_exactly():
  helpers.registered("cc", "paq", "vqa")
  fc = helpers.converter()
  it = pipeline.get_dataset_iterator(_cfg(mixtures.STAGE2), feature_converter=fc)
  for _ in range(4):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(5)]
  restored = pipeline.get_dataset_iterator(_cfg(mixtures.STAGE2), feature_converter=fc)
  restored.set_state(state)
  for a in expected:
    b = next(restored)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Mixed batches carry both retrieve = 0 (CC) and retrieve = 1 (PAQ / VQA) rows.
  assert set(np.concatenate([b["retrieve"] for b in expected])) == {0, 1}
