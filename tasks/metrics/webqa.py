"""WebQA metrics: keyword accuracy, BARTScore fluency, QA and retrieval F1.

Implements the evaluation the MuRAG paper reports for WebQA (Sec. 4.2 and
Table 4: Retr, FL, Accuracy, Overall), following the definitions of the WebQA
leaderboard scorer (WebQA_Baseline `vlp/eval_1022.py`):

* Normalisation: lower-case; punctuation removed except a "." that starts a
  decimal; articles removed (only for multi-word texts); each token that is a
  number word or digit string becomes its integer ("point" is kept); lemmas.
  A one-character text is only lower-cased and number-converted.
* Accuracy per question category (Qcate):
    color / shape / YesNo: bag = normalised tokens in the fixed vocabulary
      (as sets), score = F1 between candidate and keyword bags;
    number: bag = integer tokens, score = F1;
    choose / Others / text: full token bags (with counts), score = recall.
  No overlap gives 0; F1 is 2PR / (P + R + 1e-5), exactly as the scorer.
* FL: BARTScore ratio, see `bartscore.py`; QA = mean(Accuracy x FL).
* Retrieval F1 (Retr): set F1 between the sources the model selected and the
  question's positive sources (`retrieval.set_f1`).

The leaderboard compares against a hidden `Keywords_A` field; a target may
carry it as "keywords". Otherwise the first reference answer is used, as the
WebQA authors recommend for the validation split; the output says how many
targets had annotated keywords.
"""

import collections
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tasks.metrics import bartscore
from tasks.metrics import normalize
from tasks.metrics import retrieval

# Keyword vocabularies of the leaderboard scorer (after normalisation).
COLOR_SET = frozenset(
    'aqua beige black blonde blue bluere bluewhite bronze brown chrome gold '
    'golden gray green grey ivory maroon orange orangebrown orangepurple pink '
    'purple rainbow red redorange rust silver spot tan teal transparent '
    'turquoise violet white yellow yes'.split())
SHAPE_SET = frozenset(
    'arch ball bell bellshaped bow circle circular concave cone conical convex '
    'corkscrew crescent crest cross crosse cube cuboid curl curve cylinder '
    'cylindrical diamond dome domeshape dot flat flower fold fork globe '
    'globular h heart hexagon hook hoop keyhole oval obelisk octagon '
    'octagonal octogon pentagon point pyramid pyramidal rectangle rectangular '
    'ring round rounded semicircle shamrock slope sphere spherical spiral '
    'square star step straight teardrop torus triangle triangular tube wavy '
    'xs'.split())
YESNO_SET = frozenset({'yes', 'no'})
NUMBER = 'number'

# Qcate -> keyword domain; None means the full bag of words.
CATEGORY_DOMAIN = {
    'color': COLOR_SET,
    'shape': SHAPE_SET,
    'YesNo': YESNO_SET,
    'number': NUMBER,
    'choose': None,
    'Others': None,
    'text': None,
}
F1_CATEGORIES = frozenset({'color', 'shape', 'number', 'YesNo'})


def _to_number_token(word: str) -> str:
  if word == 'point':
    return word
  value = normalize.word_to_number(word)
  return word if value is None else str(value)


def _numbers_to_digits(text: str) -> str:
  return ' '.join(_to_number_token(w) for w in text.split())


def _remove_punc(text: str) -> str:
  kept = ''.join(ch for ch in text
                 if ch == '.' or ch not in normalize.PUNCTUATION)
  # A "." survives only when a digit follows it (decimal point).
  return re.sub(r'\.(?!\d)', '', kept)


def normalize_text(text: str,
                   lemmatizer: Optional[normalize.Lemmatizer] = None) -> str:
  """WebQA leaderboard normalisation of an answer or keyword string.

  Args:
    text: raw text.
    lemmatizer: lemmatiser; `normalize.default_lemmatizer()` when None.

  Returns:
    The normalised, space-joined text.
  """
  lemmatizer = lemmatizer or normalize.default_lemmatizer()
  stripped = text.strip()
  if len(stripped) == 1:
    # One character: punctuation and articles are accepted as they are.
    return _numbers_to_digits(text.lower())
  if len(stripped.split()) == 1:
    # One word: an article is accepted as the answer.
    return lemmatizer(_numbers_to_digits(_remove_punc(text.lower())))
  return lemmatizer(_numbers_to_digits(
      normalize.remove_articles(_remove_punc(text.lower()))))


def _integer_tokens(words: Sequence[str]) -> list[str]:
  out = []
  for w in words:
    try:
      out.append(str(int(w)))
    except ValueError:
      pass
  return out


def keyword_scores(candidate: str, keywords: str, qcate: str,
                   lemmatizer: Optional[normalize.Lemmatizer] = None
                   ) -> tuple[float, float, float]:
  """(F1, recall, precision) of one candidate against the keyword answer.

  Args:
    candidate: the model's answer.
    keywords: the keyword answer (or the full reference answer).
    qcate: WebQA question category (a key of CATEGORY_DOMAIN).
    lemmatizer: lemmatiser used by `normalize_text`.

  Returns:
    F1, recall and precision in [0, 1]; all 0 without overlap.
  """
  if qcate not in CATEGORY_DOMAIN:
    raise ValueError(f'Unknown WebQA Qcate {qcate!r}; expected one of '
                     f'{sorted(CATEGORY_DOMAIN)}.')
  domain = CATEGORY_DOMAIN[qcate]
  bow_c = normalize_text(candidate, lemmatizer).split()
  bow_a = normalize_text(keywords, lemmatizer).split()
  if domain == NUMBER:
    bow_c, bow_a = _integer_tokens(bow_c), _integer_tokens(bow_a)
  elif domain is not None:
    bow_c, bow_a = sorted(domain & set(bow_c)), sorted(domain & set(bow_a))
  common = collections.Counter(bow_a) & collections.Counter(bow_c)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0, 0.0, 0.0
  precision = num_same / len(bow_c)
  recall = num_same / len(bow_a)
  f1 = 2 * precision * recall / (precision + recall + 1e-5)
  return f1, recall, precision


def _keyword_text(target: Mapping[str, Any], answers: list[str]) -> str:
  keywords = target.get('keywords')
  if keywords is None:
    return answers[0]
  if isinstance(keywords, bytes):
    keywords = keywords.decode('utf-8')
  if isinstance(keywords, (list, tuple)):
    keywords = ' '.join(
        k.decode('utf-8') if isinstance(k, bytes) else k for k in keywords)
  return keywords


_UNSET = object()


def webqa_metrics(targets: Sequence[Mapping[str, Any]],
                  predictions: Sequence[Any],
                  *,
                  fluency_scorer: Any = _UNSET,
                  lemmatizer: Optional[normalize.Lemmatizer] = None,
                  retrieval_top_k: Optional[int] = None) -> dict[str, float]:
  """seqio metric: WebQA Accuracy, FL, QA (= Acc x FL) and Retr, in percent.

  Args:
    targets: dicts {"answers": [str], "qcate": str, "question_id": str,
      "positive_ids": [str], optional "keywords": str}.
    predictions: answer strings, or dicts {"answer", "retrieved_ids",
      "retrieved_scores"}.
    fluency_scorer: object with `fluency(candidates, references)` and `name`
      (e.g. `bartscore.BartFluencyScorer`); None disables FL. By default
      `bartscore.default_fluency_scorer()` (gin / environment configured).
    lemmatizer: lemmatiser; spaCy `en_core_web_sm` when installed, else the
      documented fallback (`normalize.default_lemmatizer`).
    retrieval_top_k: sources counted as "selected" for Retr (the first K
      retrieved ids); all retrieved ids when None.

  Returns:
    {"accuracy", "keyword_f1", "keyword_recall", "accuracy/<Qcate>",
     "count/<Qcate>", "fluency_available", "keywords_annotated_fraction",
     "setup/lemmatizer:<name>": 1.0, "setup/fluency:<name>": 1.0} and, when a
    fluency scorer is available, "fluency", "qa", "fluency/<Qcate>",
    "qa/<Qcate>"; "retrieval_f1" when predictions carry retrieved_ids and
    targets positive_ids.
  """
  normalize.check_lengths(targets, predictions, 'webqa_metrics')
  lemmatizer = lemmatizer or normalize.default_lemmatizer()
  if fluency_scorer is _UNSET:
    fluency_scorer = bartscore.default_fluency_scorer()

  cats, accs, f1s, recalls, refs, cands = [], [], [], [], [], []
  annotated = 0
  for i, (target, pred) in enumerate(zip(targets, predictions)):
    answers = normalize.target_answers(target, i)
    qcate = target.get('qcate')
    if qcate not in CATEGORY_DOMAIN:
      raise ValueError(
          f'WebQA target {i} (question_id={target.get("question_id")!r}) has '
          f'Qcate {qcate!r}; expected one of {sorted(CATEGORY_DOMAIN)}.')
    annotated += target.get('keywords') is not None
    candidate = normalize.prediction_answer(pred)
    f1, recall, _ = keyword_scores(
        candidate, _keyword_text(target, answers), qcate, lemmatizer)
    cats.append(qcate)
    f1s.append(f1)
    recalls.append(recall)
    accs.append(f1 if qcate in F1_CATEGORIES else recall)
    refs.append(answers)
    cands.append(candidate)

  accs = np.asarray(accs)
  by_cat = collections.defaultdict(list)
  for i, c in enumerate(cats):
    by_cat[c].append(i)

  out = {
      'accuracy': 100.0 * float(accs.mean()),
      'keyword_f1': 100.0 * float(np.mean(f1s)),
      'keyword_recall': 100.0 * float(np.mean(recalls)),
      'keywords_annotated_fraction': annotated / len(targets),
      f'setup/lemmatizer:{lemmatizer.name}': 1.0,
  }
  for cat, idx in sorted(by_cat.items()):
    out[f'accuracy/{cat}'] = 100.0 * float(accs[idx].mean())
    out[f'count/{cat}'] = float(len(idx))

  if fluency_scorer is None:
    out['fluency_available'] = 0.0
    out['setup/fluency:unavailable'] = 1.0
  else:
    fl = np.asarray(fluency_scorer.fluency(cands, refs), dtype=np.float64)
    qa = accs * fl
    out['fluency_available'] = 1.0
    out[f'setup/fluency:{fluency_scorer.name}'] = 1.0
    out['fluency'] = 100.0 * float(fl.mean())
    out['qa'] = 100.0 * float(qa.mean())
    for cat, idx in sorted(by_cat.items()):
      out[f'fluency/{cat}'] = 100.0 * float(fl[idx].mean())
      out[f'qa/{cat}'] = 100.0 * float(qa[idx].mean())

  retr = retrieval.mean_selection_f1(targets, predictions,
                                     top_k=retrieval_top_k)
  if retr is not None:
    out['retrieval_f1'] = retr
  return out
