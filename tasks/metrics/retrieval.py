"""Retrieval metrics: recall@K, hit@K, MRR and source-selection F1.

The MuRAG paper reports retrieval quality as RECALL@K over the (in-batch or
global) memory (Appendix A, Figs. 8 and 10) and, for WebQA, as the retrieval F1
("Retr", Table 4) between the sources a system selects and the gold sources.

Definitions (per query, then averaged, in percent):
  recall@K = |top-K retrieved ∩ positives| / |positives|
  hit@K    = 1 if top-K retrieved ∩ positives is non-empty else 0
             (equal to recall@K when a query has one positive, e.g. 1 image)
  MRR      = 1 / rank of the first positive among the retrieved (0 if none)
  F1       = set F1 between the selected ids and the positives.
Queries without positives are left out of every average. When fewer than K
items were retrieved, the top-K is simply what was retrieved.
"""

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from tasks.metrics import normalize


def set_f1(selected: Sequence[str], positives: Sequence[str]) -> float:
  """F1 between two id sets (0 when either is empty)."""
  sel, pos = set(selected), set(positives)
  hit = len(sel & pos)
  if hit == 0:
    return 0.0
  precision, recall = hit / len(sel), hit / len(pos)
  return 2 * precision * recall / (precision + recall)


def _positives(target: Any, index: int) -> list[str]:
  if not isinstance(target, Mapping):
    raise ValueError(f'Target {index} must be a dict, got {type(target)}.')
  pos = target.get('positive_ids') or []
  if isinstance(pos, (str, bytes)):
    pos = [pos]
  return [p.decode('utf-8') if isinstance(p, bytes) else str(p) for p in pos]


def ranked_ids(prediction: Any, index: int) -> list[str]:
  """Retrieved ids of a prediction dict, best first.

  When "retrieved_scores" are present the ids are ordered by descending score
  (stable), otherwise the given order is taken as the ranking.
  """
  if not isinstance(prediction, Mapping) or 'retrieved_ids' not in prediction:
    raise ValueError(
        f'Prediction {index} has no "retrieved_ids" (got '
        f'{type(prediction).__name__}); retrieval metrics need prediction '
        'dicts {"answer", "retrieved_ids", "retrieved_scores"}.')
  ids = [i.decode('utf-8') if isinstance(i, bytes) else str(i)
         for i in prediction['retrieved_ids']]
  scores = prediction.get('retrieved_scores')
  if scores is not None:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(ids),):
      raise ValueError(
          f'Prediction {index}: {len(ids)} retrieved_ids but retrieved_scores '
          f'of shape {scores.shape}.')
    order = np.argsort(-scores, kind='stable')
    ids = [ids[j] for j in order]
  return ids


def mean_selection_f1(targets: Sequence[Any], predictions: Sequence[Any],
                      top_k: Optional[int] = None) -> Optional[float]:
  """Mean set F1 (percent) of the selected sources, or None if not scorable.

  Args:
    targets: dicts with "positive_ids".
    predictions: dicts with "retrieved_ids" (strings give None).
    top_k: the first K ranked ids are the selection; all of them when None.

  Returns:
    The mean F1 over targets with positives, in percent; None when no
    prediction carries retrieved ids or no target has positives.
  """
  has_ids = [isinstance(p, Mapping) and 'retrieved_ids' in p
             for p in predictions]
  if not any(has_ids):
    return None
  if not all(has_ids):
    missing = has_ids.index(False)
    raise ValueError(
        f'Prediction {missing} has no "retrieved_ids" while others do.')
  scores = []
  for i, (t, p) in enumerate(zip(targets, predictions)):
    pos = _positives(t, i)
    if not pos:
      continue
    ids = ranked_ids(p, i)
    scores.append(set_f1(ids if top_k is None else ids[:top_k], pos))
  if not scores:
    return None
  return 100.0 * float(np.mean(scores))


def retrieval_metrics(targets: Sequence[Any], predictions: Sequence[Any],
                      ks: Sequence[int] = (1, 4, 10)) -> dict[str, float]:
  """seqio metric: recall@K, hit@K, MRR and F1 of retrieved ids, in percent.

  Args:
    targets: dicts with "positive_ids" (list of memory ids).
    predictions: dicts with "retrieved_ids" and optional "retrieved_scores".
    ks: cut-offs K.

  Returns:
    {"retrieval/recall@K", "retrieval/hit@K" for each K, "retrieval/mrr",
     "retrieval/f1", "retrieval/num_queries"}.
  """
  normalize.check_lengths(targets, predictions, 'retrieval_metrics')
  recall = {k: [] for k in ks}
  hit = {k: [] for k in ks}
  rr, f1 = [], []
  for i, (t, p) in enumerate(zip(targets, predictions)):
    pos = set(_positives(t, i))
    ids = ranked_ids(p, i)
    if not pos:
      continue
    for k in ks:
      found = len(set(ids[:k]) & pos)
      recall[k].append(found / len(pos))
      hit[k].append(float(found > 0))
    rank = next((r for r, x in enumerate(ids, start=1) if x in pos), None)
    rr.append(0.0 if rank is None else 1.0 / rank)
    f1.append(set_f1(ids, pos))
  if not rr:
    raise ValueError('retrieval_metrics: no target has positive_ids.')
  out = {}
  for k in ks:
    out[f'retrieval/recall@{k}'] = 100.0 * float(np.mean(recall[k]))
    out[f'retrieval/hit@{k}'] = 100.0 * float(np.mean(hit[k]))
  out['retrieval/mrr'] = 100.0 * float(np.mean(rr))
  out['retrieval/f1'] = 100.0 * float(np.mean(f1))
  out['retrieval/num_queries'] = float(len(rr))
  return out


def recall_at_k_from_scores(scores: np.ndarray, positive_mask: np.ndarray,
                            ks: Sequence[int] = (1,)) -> dict[str, float]:
  """recall@K (percent) from a dense score matrix, e.g. in-batch retrieval.

  Args:
    scores: [Q, N] query-memory scores (higher is better).
    positive_mask: [Q, N] bool, True where the memory item is a positive.
    ks: cut-offs K.

  Returns:
    {"recall@K": ...}; queries without positives are left out. Ties are broken
    by the lower memory index.
  """
  scores = np.asarray(scores)
  positive_mask = np.asarray(positive_mask, dtype=bool)
  if scores.ndim != 2 or scores.shape != positive_mask.shape:
    raise ValueError(f'scores {scores.shape} and positive_mask '
                     f'{positive_mask.shape} must be equal [Q, N] shapes.')
  keep = positive_mask.any(axis=1)  # [Q]
  if not keep.any():
    raise ValueError('recall_at_k_from_scores: no query has a positive.')
  order = np.argsort(-scores[keep], axis=1, kind='stable')  # [Q', N]
  ranked_pos = np.take_along_axis(positive_mask[keep], order, axis=1)
  n_pos = ranked_pos.sum(axis=1)  # [Q']
  return {f'recall@{k}': 100.0 * float(
      np.mean(ranked_pos[:, :k].sum(axis=1) / n_pos)) for k in ks}


def with_retrieval_aux(metric_fn: Callable[..., dict[str, float]]
                       ) -> Callable[..., dict[str, float]]:
  """Adapts a (targets, predictions) metric to seqio's predict-with-aux form.

  seqio calls predict-with-aux metrics as fn(targets, predictions, aux_values)
  with aux_values a dict of per-example arrays. The returned function turns
  each prediction into {"answer", "retrieved_ids", "retrieved_scores"} from
  aux_values["retrieved_ids"][i] and aux_values["retrieved_scores"][i] (when
  present) and calls `metric_fn`.

  Args:
    metric_fn: e.g. `webqa.webqa_metrics` or `retrieval_metrics`.

  Returns:
    A function with positional arguments (targets, predictions, aux_values).
  """

  def wrapped(targets, predictions, aux_values):
    if 'retrieved_ids' not in aux_values:
      raise ValueError(f'{metric_fn.__name__}: aux_values has no '
                       f'"retrieved_ids" (keys: {sorted(aux_values)}).')
    ids = aux_values['retrieved_ids']
    scores = aux_values.get('retrieved_scores')
    if len(ids) != len(predictions):
      raise ValueError(f'{metric_fn.__name__}: {len(ids)} retrieved_ids rows '
                       f'for {len(predictions)} predictions.')
    merged = []
    for i, pred in enumerate(predictions):
      item = {'answer': normalize.prediction_answer(pred),
              'retrieved_ids': [x.decode('utf-8') if isinstance(x, bytes)
                                else str(x) for x in np.asarray(ids[i])]}
      if scores is not None:
        item['retrieved_scores'] = np.asarray(scores[i], dtype=np.float64)
      merged.append(item)
    return metric_fn(targets, merged)

  wrapped.__name__ = f'{metric_fn.__name__}_with_retrieval_aux'
  wrapped.__qualname__ = wrapped.__name__
  wrapped.__doc__ = metric_fn.__doc__
  return wrapped
