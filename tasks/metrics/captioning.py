"""CIDEr-D for captioning (MuRAG Appendix A: LAION / CC captioning CIDEr).

CIDEr-D (Vedantam et al., 2015) as computed by the COCO caption evaluation
(`pycocoevalcap.cider`), reimplemented:

* Each caption is a list of tokens; n-grams n = 1..4 are counted.
* Document frequency df(g) = number of images whose reference set contains g;
  with I images, the weight of g in a caption is tf(g) * (log I - log max(1,
  df(g))). Vectors are per n; their norm is the Euclidean norm.
* For a candidate c and each reference r of its image, per n:
    sim_n = sum_g min(c_g, r_g) * r_g / (|c_n| |r_n|) * exp(-d^2 / (2 * 6^2))
  (clipped numerator; 0 when a norm is 0, as in the pip release of
  pycocoevalcap, where the original division gave NaN); d is the difference of
  the candidate's and the reference's bigram counts (words - 1), the "length"
  the COCO code uses.
* score(image) = 10 * mean_n(sum_r sim_n) / #refs; CIDEr-D = mean over images.

The idf comes from the evaluated corpus itself, so scores depend on the set of
images scored together (one image alone always scores 0, since log 1 = 0).

Tokenisation: the COCO pipeline uses the Java Stanford PTBTokenizer
(lower-cased) and then drops punctuation tokens. Here `ptb_tokenize` is a
Python approximation: lower-case, split off punctuation and the clitics 's,
n't, 're, 've, 'll, 'd, 'm, drop the punctuation tokens the COCO code drops.
Captions that PTB would tokenise differently (e.g. URLs, emoticons) may get
slightly different scores.
"""

import collections
import math
import re
from typing import Any, Sequence

import numpy as np

from tasks.metrics import normalize

# Punctuation tokens removed after tokenisation by the COCO caption code (PTB
# writes brackets as -LRB- etc. and quotes as `` / '', all of them dropped).
_DROP = frozenset({"''", "'", '``', '`', '-lrb-', '-rrb-', '-lcb-', '-rcb-',
                   '.', '?', '!', ',', ':', '-', '--', '...', ';', '"', '(',
                   ')', '{', '}', '[', ']'})
_CLITIC = re.compile(r"(?i)('s|n't|'re|'ve|'ll|'d|'m)$")
_TOKEN = re.compile(r"\.\.\.|--|\w+(?:[.']\w+)*|\S")


def ptb_tokenize(text: str) -> list[str]:
  """Lower-cased PTB-like tokens of a caption, punctuation tokens dropped."""
  tokens = []
  for tok in _TOKEN.findall(text.lower().replace('’', "'")):
    # "3.5" and "e.g" stay whole; a clitic is split off its word as PTB does.
    m = _CLITIC.search(tok)
    if m and m.start() > 0:
      tokens += [tok[:m.start()], tok[m.start():]]
    else:
      tokens.append(tok)
  return [t for t in tokens if t and t not in _DROP]


def _ngram_counts(tokens: Sequence[str], n: int = 4) -> collections.Counter:
  counts = collections.Counter()
  for k in range(1, n + 1):
    for i in range(len(tokens) - k + 1):
      counts[tuple(tokens[i:i + k])] += 1
  return counts


def cider_d_scores(candidates: Sequence[Sequence[str]],
                   references: Sequence[Sequence[Sequence[str]]],
                   n: int = 4,
                   sigma: float = 6.0) -> np.ndarray:
  """Per-image CIDEr-D from pre-tokenised captions.

  Args:
    candidates: I candidate token lists.
    references: I non-empty lists of reference token lists.
    n: maximum n-gram order.
    sigma: width of the Gaussian length penalty.

  Returns:
    [I] per-image scores (the corpus CIDEr-D is their mean).
  """
  if len(candidates) != len(references):
    raise ValueError(f'{len(candidates)} candidates but {len(references)} '
                     'reference sets.')
  cand_counts = [_ngram_counts(c, n) for c in candidates]
  ref_counts = []
  for i, refs in enumerate(references):
    if not refs:
      raise ValueError(f'Image {i} has no reference captions.')
    ref_counts.append([_ngram_counts(r, n) for r in refs])
  df = collections.Counter()
  for refs in ref_counts:
    df.update(set(g for r in refs for g in r))
  log_num_images = math.log(float(len(ref_counts)))

  def to_vec(counts):
    vec = [dict() for _ in range(n)]
    norm = np.zeros(n)
    for gram, tf in counts.items():
      w = tf * (log_num_images - math.log(max(1.0, df[gram])))
      vec[len(gram) - 1][gram] = w
      norm[len(gram) - 1] += w * w
    bigrams = sum(tf for g, tf in counts.items() if len(g) == 2)
    return vec, np.sqrt(norm), bigrams

  scores = np.zeros(len(candidates))
  for i, (cand, refs) in enumerate(zip(cand_counts, ref_counts)):
    c_vec, c_norm, c_len = to_vec(cand)
    total = np.zeros(n)
    for ref in refs:
      r_vec, r_norm, r_len = to_vec(ref)
      penalty = math.exp(-((c_len - r_len) ** 2) / (2 * sigma ** 2))
      for k in range(n):
        if c_norm[k] == 0 or r_norm[k] == 0:
          continue
        dot = sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0)
                  for g, w in c_vec[k].items())
        total[k] += dot / (c_norm[k] * r_norm[k]) * penalty
    scores[i] = 10.0 * total.mean() / len(refs)
  return scores


def cider_d(targets: Sequence[Any], predictions: Sequence[Any]
            ) -> dict[str, float]:
  """seqio metric: corpus CIDEr-D (unscaled; 1.2 means 1.2, as in the paper).

  Args:
    targets: dicts whose "answers" are the reference captions of the image.
    predictions: caption strings or dicts with "answer".

  Returns:
    {"cider_d": mean per-image score}.
  """
  normalize.check_lengths(targets, predictions, 'cider_d')
  refs = [[ptb_tokenize(r) for r in normalize.target_answers(t, i)]
          for i, t in enumerate(targets)]
  cands = [ptb_tokenize(normalize.prediction_answer(p)) for p in predictions]
  return {'cider_d': float(np.mean(cider_d_scores(cands, refs)))}


def cider_d_from_strings(candidates: Sequence[str],
                         references: Sequence[Sequence[str]]) -> float:
  """Corpus CIDEr-D of raw caption strings (tokenised with `ptb_tokenize`)."""
  return float(np.mean(cider_d_scores(
      [ptb_tokenize(c) for c in candidates],
      [[ptb_tokenize(r) for r in refs] for refs in references])))
