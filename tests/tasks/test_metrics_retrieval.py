"""Hand-worked tests of recall@K, hit@K, MRR and selection F1."""

import numpy as np
import pytest

from tasks.metrics import retrieval


def test_set_f1():
  assert retrieval.set_f1(['a', 'b'], ['a']) == pytest.approx(2 / 3)
  assert retrieval.set_f1([], ['a']) == 0.0
  assert retrieval.set_f1(['a'], ['a']) == 1.0


def test_retrieval_metrics_hand_worked():
  targets = [
      {'answers': ['x'], 'positive_ids': ['p1', 'p2']},
      {'answers': ['x'], 'positive_ids': ['q1']},
      {'answers': ['x'], 'positive_ids': []},  # left out of every average
  ]
  preds = [
      # Scores reorder to n1, p2, p1.
      {'answer': 'x', 'retrieved_ids': ['p1', 'n1', 'p2'],
       'retrieved_scores': [0.1, 0.9, 0.5]},
      {'answer': 'x', 'retrieved_ids': ['n2', 'n3']},
      {'answer': 'x', 'retrieved_ids': ['p9']},
  ]
  out = retrieval.retrieval_metrics(targets, preds, ks=(1, 2, 3))
  # Query 1: recall@1 0, @2 1/2, @3 1; first positive at rank 2.
  # Query 2: nothing found.
  assert out['retrieval/recall@1'] == 0.0
  assert out['retrieval/recall@2'] == pytest.approx(25.0)
  assert out['retrieval/recall@3'] == pytest.approx(50.0)
  assert out['retrieval/hit@2'] == pytest.approx(50.0)
  assert out['retrieval/mrr'] == pytest.approx(25.0)
  # F1: {n1, p2, p1} vs {p1, p2} = 0.8; 0.
  assert out['retrieval/f1'] == pytest.approx(40.0)
  assert out['retrieval/num_queries'] == 2.0


def test_errors():
  with pytest.raises(ValueError, match='no "retrieved_ids"'):
    retrieval.retrieval_metrics([{'positive_ids': ['a']}], ['a string'])
  with pytest.raises(ValueError, match='retrieved_scores of shape'):
    retrieval.retrieval_metrics(
        [{'positive_ids': ['a']}],
        [{'retrieved_ids': ['a', 'b'], 'retrieved_scores': [1.0]}])
  with pytest.raises(ValueError, match='no target has positive_ids'):
    retrieval.retrieval_metrics([{'positive_ids': []}],
                                [{'retrieved_ids': ['a']}])


def test_recall_at_k_from_scores():
  scores = np.array([[0.9, 0.1, 0.5],
                     [0.2, 0.3, 0.1],
                     [0.0, 0.0, 0.0]])
  positives = np.array([[False, False, True],
                        [False, True, True],
                        [False, False, False]])
  out = retrieval.recall_at_k_from_scores(scores, positives, ks=(1, 2))
  # Row 0: ranking 0, 2, 1 -> @1 0, @2 1. Row 1: ranking 1, 0, 2 -> @1 1/2,
  # @2 1/2. Row 2 has no positive and is ignored.
  assert out['recall@1'] == pytest.approx(25.0)
  assert out['recall@2'] == pytest.approx(75.0)
