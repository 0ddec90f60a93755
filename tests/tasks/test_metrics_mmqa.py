"""Hand-worked tests of the MultimodalQA EM / F1 (DROP-style)."""

import pytest

from tasks.metrics import mmqa


@pytest.mark.parametrize('text,expected', [
    ('The Beatles', 'beatles'),
    ('Two', '2.0'),
    ('1,000', '1000.0'),
    ('3', '3.0'),
    ('3.50', '3.5'),
    ('twenty-one Pilots', '20.0 1.0 pilots'),  # hyphens split tokens
    ('point', '0.0'),  # word2number gives 0 for the lone word "point"
    ('U.S.A.!', 'usa'),
    ('', ''),
])
def test_normalize_answer(text, expected):
  assert mmqa.normalize_answer(text) == expected


def test_list_em():
  assert mmqa.list_em(['Paris', 'London'], ['london', 'paris.']) == 1.0
  assert mmqa.list_em(['Paris'], ['Paris', 'London']) == 0.0
  # Same set but different list lengths.
  assert mmqa.list_em(['Paris', 'paris'], ['Paris']) == 0.0
  assert mmqa.list_em('two', '2') == 1.0


def test_list_f1_one_to_one_alignment():
  # gold "boston" <-> "boston" (1.0); gold "new york" <-> "new york city"
  # (P=2/3, R=1, F1=0.8); mean 0.9.
  assert mmqa.list_f1(['New York City', 'Boston'],
                      ['Boston', 'New York']) == 0.9
  # One gold item, three predicted: max(#gold, #pred) = 3 slots -> 1/3.
  assert mmqa.list_f1(['alpha', 'beta', 'gamma'], ['alpha']) == 0.33
  # A single prediction cannot match two gold items twice.
  assert mmqa.list_f1(['red'], ['red', 'red']) == 0.5


def test_numbers_must_match():
  # "apples" overlaps but the gold number 6 is missing: 0.
  assert mmqa.list_f1(['5 apples'], ['6 apples']) == 0.0
  assert mmqa.list_f1(['six apples'], ['6 apples']) == 1.0


def test_empty_prediction():
  assert mmqa.list_f1([''], ['Paris']) == 0.0
  assert mmqa.list_em([''], ['Paris']) == 0.0


def test_split_prediction():
  assert mmqa.split_prediction('Paris; London') == ['Paris', 'London']
  assert mmqa.split_prediction({'answer': 'Paris'}) == ['Paris']
  assert mmqa.split_prediction(['a', 'b']) == ['a', 'b']


def test_mmqa_metrics_by_modality():
  targets = [
      {'answers': ['Paris'], 'modality': 'text', 'question_id': 't1'},
      {'answers': ['Boston', 'New York'], 'modality': 'text',
       'question_id': 't2'},
      {'answers': ['red'], 'modality': 'image', 'question_id': 'i1'},
      # Two references: the best one counts.
      {'answers': [['blue'], ['navy blue']], 'modality': 'image',
       'question_id': 'i2'},
  ]
  preds = ['paris', 'New York City; Boston', 'It is blue',
           {'answer': 'Navy blue.', 'retrieved_ids': []}]
  out = mmqa.mmqa_metrics(targets, preds)
  # EM: 1, 0, 0, 1. F1: 1, 0.9, 0 ("it is blue" vs "red"), 1.
  assert out['text/em'] == pytest.approx(50.0)
  assert out['text/f1'] == pytest.approx(95.0)
  assert out['image/em'] == pytest.approx(50.0)
  assert out['image/f1'] == pytest.approx(50.0)
  assert out['all/em'] == pytest.approx(50.0)
  assert out['all/f1'] == pytest.approx(100 * 2.9 / 4)
  assert out['count/text'] == 2.0 and out['count/image'] == 2.0


def test_partial_f1_in_image_question():
  out = mmqa.mmqa_metrics(
      [{'answers': ['dark blue'], 'modality': 'image', 'question_id': 'q'}],
      ['blue'])
  # P=1, R=1/2 -> F1=2/3, rounded to 0.67 per question as evaluate.py does.
  assert out['image/f1'] == pytest.approx(67.0)


def test_bad_inputs():
  with pytest.raises(ValueError, match="question_id='q'.*modality"):
    mmqa.mmqa_metrics([{'answers': ['x'], 'question_id': 'q'}], ['x'])
  with pytest.raises(ValueError, match='1 targets but 2 predictions'):
    mmqa.mmqa_metrics([{'answers': ['x'], 'modality': 'text'}], ['x', 'y'])
