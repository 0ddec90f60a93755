"""MultimodalQA exact match and F1, by answer modality (MuRAG Sec. 4.2).

The MuRAG paper evaluates the TextQ/ImageQ subset of MultimodalQA with EM and
F1 (Table 5). The definitions follow the MultimodalQA `baselines/evaluate.py`
(itself derived from the DROP evaluation):

* Normalisation of an answer span: split on spaces and hyphens; per token
  lower-case, drop punctuation unless the token parses as a float, turn floats
  and number words into `str(float(value))` ("two" -> "2.0", the lone word
  "point" -> "0.0" as word2number gives), drop articles; join non-empty tokens.
* An answer is a list of spans (list answers). EM = 1 when the sets of
  normalised spans are equal and the lists have equal length.
* F1: each span is a bag (set) of tokens; gold and predicted spans are aligned
  one-to-one by maximising the summed bag F1 (Hungarian algorithm,
  `scipy.optimize.linear_sum_assignment`); a pair scores 0 unless it shares a
  number whenever the gold bag has numbers; the per-question F1 is the mean
  over max(#gold, #pred) slots, rounded to 2 decimals.
* Scores are the maximum over reference answers, averaged, times 100, for All
  questions and per answer modality ("text", "image", "table").
"""

import re
import string
from typing import Any, Mapping, Sequence, Union

import numpy as np
from scipy import optimize

from tasks.metrics import normalize

# Separator between items when a list answer is written as one string; the
# task's targets must use the same one.
LIST_ANSWER_SEPARATOR = '; '

_PUNCT = frozenset(string.punctuation)


def _is_float(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _normalize_token(token: str) -> str:
  token = token.lower()
  if not _is_float(token):
    token = ''.join(ch for ch in token if ch not in _PUNCT)
  if _is_float(token):
    token = str(float(token))
  else:
    value = normalize.word_to_number(token)
    if value is not None:
      token = str(float(value))
  return normalize.white_space_fix(normalize.remove_articles(token))


def normalize_answer(text: str) -> str:
  """DROP/MultimodalQA normalisation of one answer span."""
  parts = [_normalize_token(t) for t in re.split(' |-', text)]
  return ' '.join(p for p in parts if p.strip()).strip()


def _bags(answer: Union[str, Sequence[str]]) -> tuple[list[str], list[set]]:
  spans = [answer] if isinstance(answer, str) else list(answer)
  normalized = [normalize_answer(s) for s in spans]
  return normalized, [set(n.split()) for n in normalized]


def _bag_f1(pred: set, gold: set) -> float:
  inter = len(gold & pred)
  precision = inter / len(pred) if pred else 1.0
  recall = inter / len(gold) if gold else 1.0
  if precision == 0.0 and recall == 0.0:
    return 0.0
  return 2 * precision * recall / (precision + recall)


def _numbers_compatible(gold: set, pred: set) -> bool:
  gold_numbers = {w for w in gold if _is_float(w)}
  pred_numbers = {w for w in pred if _is_float(w)}
  return not gold_numbers or bool(gold_numbers & pred_numbers)


def list_em(predicted: Union[str, Sequence[str]],
            gold: Union[str, Sequence[str]]) -> float:
  """1.0 when the normalised span sets and list lengths agree."""
  pred_spans, _ = _bags(predicted)
  gold_spans, _ = _bags(gold)
  same = set(pred_spans) == set(gold_spans) and len(pred_spans) == len(
      gold_spans)
  return 1.0 if same else 0.0


def list_f1(predicted: Union[str, Sequence[str]],
            gold: Union[str, Sequence[str]]) -> float:
  """F1 of list answers under the optimal one-to-one span alignment."""
  _, pred_bags = _bags(predicted)
  _, gold_bags = _bags(gold)
  scores = np.zeros([len(gold_bags), len(pred_bags)])  # [G, P]
  for g, gold_bag in enumerate(gold_bags):
    for p, pred_bag in enumerate(pred_bags):
      if _numbers_compatible(gold_bag, pred_bag):
        scores[g, p] = _bag_f1(pred_bag, gold_bag)
  rows, cols = optimize.linear_sum_assignment(-scores)
  slot_scores = np.zeros([max(len(gold_bags), len(pred_bags))])
  for r, c in zip(rows, cols):
    slot_scores[r] = max(slot_scores[r], scores[r, c])
  return round(float(np.mean(slot_scores)), 2)


def split_prediction(prediction: Any,
                     separator: str = LIST_ANSWER_SEPARATOR) -> list[str]:
  """The predicted list answer: a given list, or a string split on separator."""
  if isinstance(prediction, Mapping):
    prediction = prediction.get('answer', prediction)
  if isinstance(prediction, (list, tuple)):
    return [normalize.prediction_answer(p) for p in prediction]
  text = normalize.prediction_answer(prediction)
  if not separator.strip() or separator.strip() not in text:
    return [text]
  return [s.strip() for s in text.split(separator.strip())]


def _references(target: Mapping[str, Any], index: int) -> list[list[str]]:
  """Reference answers; each reference is a list of answer items.

  "answers" is one reference (its items, as MultimodalQA has a single gold
  answer per question); a list of lists gives several references.
  """
  if not isinstance(target, Mapping) or 'answers' not in target:
    raise ValueError(f'MMQA target {index} must be a dict with "answers".')
  answers = target['answers']
  if answers and all(isinstance(a, (list, tuple)) for a in answers):
    refs = [[normalize.prediction_answer(x) for x in a] for a in answers]
  else:
    refs = [normalize.target_answers(target, index)]
  if not refs or any(not r for r in refs):
    raise ValueError(f'MMQA target {index} (question_id='
                     f'{target.get("question_id")!r}) has an empty answer.')
  return refs


def mmqa_metrics(targets: Sequence[Mapping[str, Any]],
                 predictions: Sequence[Any],
                 *,
                 separator: str = LIST_ANSWER_SEPARATOR) -> dict[str, float]:
  """seqio metric: MultimodalQA EM/F1 (percent) for All and per modality.

  Args:
    targets: dicts {"answers": [str] (items of the gold list answer) or
      [[str]] (several references), "modality": "text"|"image"|"table",
      "question_id": str}.
    predictions: strings (list items joined by `separator`), lists of strings,
      or dicts with "answer".
    separator: list-answer separator inside a predicted string.

  Returns:
    {"all/em", "all/f1", "<modality>/em", "<modality>/f1",
     "count/<modality>"} for the modalities present.
  """
  normalize.check_lengths(targets, predictions, 'mmqa_metrics')
  per_modality: dict[str, list[tuple[float, float]]] = {}
  everything = []
  for i, (target, pred) in enumerate(zip(targets, predictions)):
    refs = _references(target, i)
    modality = target.get('modality')
    if not isinstance(modality, str) or not modality:
      raise ValueError(f'MMQA target {i} (question_id='
                       f'{target.get("question_id")!r}) has no "modality".')
    pred_list = split_prediction(pred, separator)
    em = max(list_em(pred_list, r) for r in refs)
    f1 = max(list_f1(pred_list, r) for r in refs)
    everything.append((em, f1))
    per_modality.setdefault(modality.lower(), []).append((em, f1))
  out = {}
  for name, rows in [('all', everything)] + sorted(per_modality.items()):
    arr = np.asarray(rows)  # [n, 2]
    out[f'{name}/em'] = 100.0 * float(arr[:, 0].mean())
    out[f'{name}/f1'] = 100.0 * float(arr[:, 1].mean())
    if name != 'all':
      out[f'count/{name}'] = float(len(rows))
  return out
