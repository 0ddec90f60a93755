"""Hand-worked tests of CIDEr-D (and a cross-check with pycocoevalcap)."""

import math

import numpy as np
import pytest

from tasks.metrics import captioning


def test_ptb_tokenize():
  assert captioning.ptb_tokenize("A dog's toy, don't you think? It's 3.5 m.") \
      == ['a', 'dog', "'s", 'toy', 'do', "n't", 'you', 'think', 'it', "'s",
          '3.5', 'm']
  assert captioning.ptb_tokenize('') == []


def test_identical_captions_two_images():
  # Every n-gram has df = 1 of I = 2 images, weight log 2: unigram and bigram
  # cosines are 1, tri/4-grams absent -> 10 * mean([1, 1, 0, 0]) = 5.
  out = captioning.cider_d(
      [{'answers': ['a b']}, {'answers': ['c d']}], ['A b.', 'c d'])
  assert out['cider_d'] == pytest.approx(5.0)


def test_clipping_and_length_penalty_hand_worked():
  # Image A: candidate "a a b" vs reference "a b"; image B scores 5.
  # n=1: dot = min(2l, l) l + l l = 2 l^2, norms sqrt5 l, sqrt2 l.
  # n=2: cand {aa, ab}, ref {ab}: dot = l^2, norms sqrt2 l, l.
  # Bigram-count lengths 2 vs 1: penalty exp(-1 / 72).
  a = 10 / 4 * (2 / math.sqrt(10) + 1 / math.sqrt(2)) * math.exp(-1 / 72)
  scores = captioning.cider_d_scores([['a', 'a', 'b'], ['c', 'd']],
                                     [[['a', 'b']], [['c', 'd']]])
  np.testing.assert_allclose(scores, [a, 5.0])
  assert captioning.cider_d_from_strings(
      ['a a b', 'c d'], [['a b'], ['c d']]) == pytest.approx((a + 5) / 2)


def test_edge_cases():
  # One image: idf log(1) = 0, every weight is 0.
  assert captioning.cider_d_from_strings(['a b'], [['a b']]) == 0.0
  # Empty candidate scores 0 without NaN.
  assert captioning.cider_d_from_strings(
      ['', 'c d'], [['a b'], ['c d']]) == pytest.approx(2.5)
  # Multiple references: the similarity is averaged over them.
  two_refs = captioning.cider_d_scores(
      [['a', 'b'], ['c', 'd']], [[['a', 'b'], ['x', 'y']], [['c', 'd']]])
  assert two_refs[0] == pytest.approx(2.5)
  with pytest.raises(ValueError, match='no reference captions'):
    captioning.cider_d_scores([['a']], [[]])


def test_matches_pycocoevalcap_on_random_corpus():
  cider_mod = pytest.importorskip('pycocoevalcap.cider.cider')
  rng = np.random.default_rng(0)
  words = 'a man dog cat sits on the red mat with ball runs park'.split()

  def sentence():
    return ' '.join(rng.choice(words, size=rng.integers(1, 9)))

  gts, res = {}, {}
  for i in range(12):
    gts[i] = [sentence() for _ in range(rng.integers(1, 5))]
    res[i] = [sentence()]
  want, want_each = cider_mod.Cider().compute_score(gts, res)
  got = captioning.cider_d_scores(
      [res[i][0].split() for i in range(12)],
      [[r.split() for r in gts[i]] for i in range(12)])
  np.testing.assert_allclose(got, want_each, rtol=1e-10)
  assert float(np.mean(got)) == pytest.approx(float(want))
