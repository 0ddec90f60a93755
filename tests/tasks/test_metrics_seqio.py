"""The metric functions have the signatures seqio sorts metrics by."""

import numpy as np
import pytest

from tasks.metrics import captioning
from tasks.metrics import generation
from tasks.metrics import mmqa
from tasks.metrics import normalize
from tasks.metrics import retrieval
from tasks.metrics import vqa
from tasks.metrics import webqa

seqio = pytest.importorskip('seqio')
tf = pytest.importorskip('tensorflow')


def _dataset_fn(split, shuffle_files, seed=None):
  del split, shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({'inputs': ['q'], 'targets': ['a']})


def test_seqio_task_sorts_the_metric_functions():
  webqa_aux = retrieval.with_retrieval_aux(webqa.webqa_metrics)
  vocab = seqio.ByteVocabulary()
  task = seqio.Task(
      'metrics_signature_test_v1',
      source=seqio.FunctionDataSource(_dataset_fn, splits=['validation']),
      output_features={'inputs': seqio.Feature(vocab),
                       'targets': seqio.Feature(vocab)},
      metric_fns=[webqa.webqa_metrics, mmqa.mmqa_metrics, vqa.vqa_accuracy,
                  captioning.cider_d, retrieval.retrieval_metrics,
                  generation.fid, generation.clip_score,
                  generation.perplexity, webqa_aux])
  assert task.predict_metric_fns == [
      webqa.webqa_metrics, mmqa.mmqa_metrics, vqa.vqa_accuracy,
      captioning.cider_d, retrieval.retrieval_metrics, generation.fid,
      generation.clip_score]
  assert task.score_metric_fns == [generation.perplexity]
  assert task.predict_with_aux_metric_fns == [webqa_aux]


def test_with_retrieval_aux_merges_ids_and_scores():
  targets = [{'answers': ['red'], 'qcate': 'color', 'question_id': 'a',
              'positive_ids': ['m1']},
             {'answers': ['yes'], 'qcate': 'YesNo', 'question_id': 'b',
              'positive_ids': ['m3']}]
  aux = {'retrieved_ids': np.array([[b'm2', b'm1'], [b'm3', b'm4']]),
         'retrieved_scores': np.array([[1.0, 2.0], [5.0, 1.0]])}
  fn = retrieval.with_retrieval_aux(retrieval.retrieval_metrics)
  out = fn(targets, ['red', 'yes'], aux)
  # Scores put m1 first for query a; m3 first for query b.
  assert out['retrieval/recall@1'] == 100.0
  wq = retrieval.with_retrieval_aux(webqa.webqa_metrics)
  out = wq(targets, ['red', 'yes'], aux)
  assert out['retrieval_f1'] == pytest.approx(100 * 2 / 3)
  assert out['accuracy'] == pytest.approx(100 * 2 / (2 + 1e-5))
  assert out[f'setup/lemmatizer:{normalize.default_lemmatizer().name}'] == 1.0
  with pytest.raises(ValueError, match='no "retrieved_ids"'):
    fn(targets, ['red', 'yes'], {'scores': [0, 0]})
