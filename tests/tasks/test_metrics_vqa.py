"""Hand-worked tests of the official VQA accuracy."""

import pytest

from tasks.metrics import vqa


def test_normalisation_steps():
  assert vqa.process_punctuation('yes.') == 'yes'
  assert vqa.process_punctuation('3.5') == '3.5'
  assert vqa.process_punctuation('1,000') == '1000'  # digit,digit comma
  assert vqa.process_punctuation('red,blue') == 'red blue'
  assert vqa.process_punctuation('red, blue') == 'red blue'
  assert vqa.normalize_answer('The Two dogs') == '2 dogs'
  assert vqa.normalize_answer('None') == '0'
  assert vqa.normalize_answer('dont') == "don't"
  assert vqa.normalize_answer('an apple!') == 'apple'


def test_leave_one_out_hand_worked():
  answers = ['2'] * 2 + ['3'] * 8
  # Leaving out a "2" (2 subsets) leaves 1 match -> 1/3; leaving out a "3"
  # (8 subsets) leaves 2 matches -> 2/3. Mean = (2/3 + 16/3) / 10 = 0.6.
  assert vqa.question_accuracy('two', answers) == pytest.approx(0.6)
  assert vqa.question_accuracy('3', answers) == pytest.approx(1.0)
  assert vqa.question_accuracy('4', answers) == 0.0


def test_three_matches_give_partial_credit_when_one_is_left_out():
  answers = ["don't"] * 3 + ['no'] * 7
  # Prediction "dont" -> "don't". Leaving out a "don't": 2 matches -> 2/3
  # (3 subsets); otherwise 3 matches -> 1 (7 subsets). Mean 0.9.
  assert vqa.question_accuracy('dont', answers) == pytest.approx(0.9)


def test_unanimous_answers_are_compared_exactly():
  # Official quirk: no normalisation when all annotators agree.
  assert vqa.question_accuracy('two', ['2'] * 10) == 0.0
  assert vqa.question_accuracy('2 ', ['2'] * 10) == 1.0  # only stripped
  assert vqa.question_accuracy('two', ['2'] * 10, always_normalize=True) == 1.0


@pytest.mark.parametrize('pred,expected', [
    ('Yes', 1.0), ('yes.', 1.0), ('YES!', 1.0), ('yeah', 0.0), ('no', 0.3),
    ('', 0.0),
])
def test_yes_no_variants_and_punctuation(pred, expected):
  # 9 "yes" + 1 "no": any "yes" prediction keeps >= 8 matches. "no" has one
  # match in the 9 subsets that keep it (1/3 each) and none otherwise: 0.3.
  assert vqa.question_accuracy(pred, ['yes'] * 9 + ['no']) == pytest.approx(
      expected)


def test_articles_and_comma_numbers():
  assert vqa.question_accuracy('a dog', ['dog'] * 5 + ['cat'] * 5) == 1.0
  assert vqa.question_accuracy('1,000', ['1000'] * 5 + ['100'] * 5) == 1.0


def test_vqa_accuracy_aggregates_in_percent():
  targets = [
      {'answers': ['2'] * 2 + ['3'] * 8, 'answer_type': 'number',
       'question_id': '1'},
      {'answers': ['yes'] * 9 + ['no'], 'answer_type': 'yes/no',
       'question_id': '2'},
  ]
  out = vqa.vqa_accuracy(targets, ['two', {'answer': 'Yes'}])
  assert out['vqa_accuracy'] == pytest.approx(80.0)
  assert out['vqa_accuracy/number'] == pytest.approx(60.0)
  assert out['vqa_accuracy/yes/no'] == pytest.approx(100.0)


def test_bad_inputs():
  with pytest.raises(ValueError, match='"answers"'):
    vqa.vqa_accuracy(['yes'], ['yes'])
  with pytest.raises(ValueError, match='must be a string'):
    vqa.vqa_accuracy([{'answers': ['yes']}], [3])
