"""Hand-worked tests of the WebQA keyword accuracy, QA and retrieval F1."""

import numpy as np
import pytest

from tasks.metrics import normalize
from tasks.metrics import webqa

LEM = normalize.RuleLemmatizer()
PERFECT_F1 = 2 / (2 + 1e-5)  # The scorer's F1 has 1e-5 in its denominator.


class FixedFluency:
  """A pluggable fluency scorer returning preset values (an FL plug-in)."""

  name = 'fixed_values'

  def __init__(self, values):
    self.values = values
    self.calls = []

  def fluency(self, candidates, references):
    self.calls.append((list(candidates), [list(r) for r in references]))
    return np.asarray(self.values[:len(candidates)])


@pytest.mark.parametrize('text,expected', [
    # Multi-word: punctuation, articles, number words, lemmas.
    ('The Two red Balls are on the table.', '2 red ball be on table'),
    ('It is 3.5 meters.', 'it be 3.5 meter'),
    ('one point five', '1 point 5'),
    ('Seven children, 007 dogs!', '7 child 7 dog'),
    # One word: the article is kept, punctuation removed.
    ('The', 'the'),
    ('Five.', '5'),
    # One character: only lower-cased and number-converted.
    ('A', 'a'),
    ('?', '?'),
    ('5', '5'),
    ('', ''),
])
def test_normalize_text(text, expected):
  assert webqa.normalize_text(text, LEM) == expected


def test_word_to_number_quirks():
  assert normalize.word_to_number('twelve') == 12
  assert normalize.word_to_number('Hundred') == 100
  assert normalize.word_to_number('0042') == 42
  assert normalize.word_to_number('point') == 0  # as word2number
  assert normalize.word_to_number('pointy') is None
  assert normalize.word_to_number('²') is None


def test_rule_lemmatizer():
  assert LEM('berries boxes churches horses glass yes series is has') == (
      'berry box church horse glass yes series be have')
  # Colours and shapes must survive (no -ed / -ing stripping).
  assert LEM('red ring rounded torus') == 'red ring rounded torus'


def test_color_f1_hand_worked():
  # Candidate colour bag {red, blue}, keyword bag {red}: P=1/2, R=1.
  f1, recall, precision = webqa.keyword_scores(
      'The car is dark red and blue.', 'red', 'color', LEM)
  assert precision == 0.5 and recall == 1.0
  assert f1 == pytest.approx(2 * 0.5 / (1.5 + 1e-5))


def test_color_synonyms_outside_vocabulary_score_zero():
  # "crimson" is not in the colour vocabulary: nothing to match.
  assert webqa.keyword_scores('It is crimson', 'red', 'color', LEM) == (
      0.0, 0.0, 0.0)
  # Even an exact match scores 0 when the colour is outside the vocabulary.
  assert webqa.keyword_scores('navy', 'navy', 'color', LEM) == (0.0, 0.0, 0.0)


def test_shape_uses_shape_vocabulary_as_sets():
  f1, recall, precision = webqa.keyword_scores(
      'A round, round dome', 'dome', 'shape', LEM)
  # Sets: {round, dome} vs {dome}.
  assert (precision, recall) == (0.5, 1.0)
  assert f1 == pytest.approx(2 * 0.5 / (1.5 + 1e-5))


@pytest.mark.parametrize('candidate,expected_f1', [
    ('Yes, it is.', PERFECT_F1),
    ('YES', PERFECT_F1),
    ('No', 0.0),
    ('Yeah', 0.0),  # Not in the yes/no vocabulary.
    ('Yes and no', 2 * 0.5 / (1.5 + 1e-5)),
])
def test_yesno_variants(candidate, expected_f1):
  f1, _, _ = webqa.keyword_scores(candidate, 'yes', 'YesNo', LEM)
  assert f1 == pytest.approx(expected_f1)


def test_number_words_and_integers():
  f1, _, _ = webqa.keyword_scores('There are five birds.', '5', 'number', LEM)
  assert f1 == pytest.approx(PERFECT_F1)
  # Only integer tokens count; "3.5" is dropped from the bag.
  f1, recall, precision = webqa.keyword_scores('2 or 3 or 3.5', 'three',
                                               'number', LEM)
  assert (precision, recall) == (0.5, 1.0)
  assert webqa.keyword_scores('many birds', '5 birds', 'number', LEM)[0] == 0


def test_text_category_uses_recall():
  # Keywords "eiffel tower be located in paris france" (7 tokens); the
  # candidate "eiffel tower be in paris" shares 5 of them.
  f1, recall, precision = webqa.keyword_scores(
      'The Eiffel Tower is in Paris', 'The Eiffel Tower is located in Paris, '
      'France.', 'text', LEM)
  assert recall == pytest.approx(5 / 7)
  assert precision == 1.0
  out = webqa.webqa_metrics(
      [{'answers': ['The Eiffel Tower is located in Paris, France.'],
        'qcate': 'text', 'question_id': 'q'}],
      ['The Eiffel Tower is in Paris'], fluency_scorer=None, lemmatizer=LEM)
  assert out['accuracy'] == pytest.approx(100 * 5 / 7)
  assert out['keyword_recall'] == pytest.approx(100 * 5 / 7)


def test_empty_prediction_scores_zero():
  for qcate in ['color', 'number', 'YesNo', 'text', 'choose']:
    assert webqa.keyword_scores('', 'red 5 yes', qcate, LEM) == (0.0, 0.0, 0.0)


def _targets():
  return [
      {'answers': ['The ball is red.'], 'qcate': 'color', 'question_id': 'a',
       'positive_ids': ['img1']},
      {'answers': ['Yes, it is.'], 'qcate': 'YesNo', 'question_id': 'b',
       'positive_ids': ['img2', 'txt3']},
      {'answers': ['It was built in Paris.'], 'qcate': 'Others',
       'question_id': 'c', 'positive_ids': ['img4'], 'keywords': 'Paris'},
  ]


def test_webqa_metrics_without_fluency_reports_unavailable():
  preds = ['It is red and blue.', 'No.', 'In Paris, France.']
  out = webqa.webqa_metrics(_targets(), preds, fluency_scorer=None,
                            lemmatizer=LEM)
  color_f1 = 2 * 0.5 / (1.5 + 1e-5)
  # Others uses the annotated keywords "Paris": recall 1.
  assert out['accuracy/color'] == pytest.approx(100 * color_f1)
  assert out['accuracy/YesNo'] == 0.0
  assert out['accuracy/Others'] == pytest.approx(100.0)
  assert out['accuracy'] == pytest.approx(100 * (color_f1 + 0 + 1) / 3)
  assert out['count/color'] == 1.0
  assert out['keywords_annotated_fraction'] == pytest.approx(1 / 3)
  assert out['fluency_available'] == 0.0
  assert out['setup/fluency:unavailable'] == 1.0
  assert out[f'setup/lemmatizer:{LEM.name}'] == 1.0
  assert 'fluency' not in out and 'qa' not in out
  assert 'retrieval_f1' not in out  # String predictions: nothing retrieved.


def test_webqa_metrics_qa_is_mean_of_accuracy_times_fluency():
  preds = ['It is red and blue.', 'Yes', 'Paris']
  scorer = FixedFluency([0.5, 1.0, 0.25])
  out = webqa.webqa_metrics(_targets(), preds, fluency_scorer=scorer,
                            lemmatizer=LEM)
  accs = np.array([2 * 0.5 / (1.5 + 1e-5), PERFECT_F1, 1.0])
  fl = np.array([0.5, 1.0, 0.25])
  assert out['fluency'] == pytest.approx(100 * fl.mean())
  assert out['qa'] == pytest.approx(100 * np.mean(accs * fl))
  assert out['qa/YesNo'] == pytest.approx(100 * PERFECT_F1)
  assert out['fluency_available'] == 1.0
  assert out['setup/fluency:fixed_values'] == 1.0
  # The scorer sees the raw candidates and all reference answers.
  assert scorer.calls[0][0] == preds
  assert scorer.calls[0][1][0] == ['The ball is red.']


def test_webqa_retrieval_f1():
  preds = [
      {'answer': 'red', 'retrieved_ids': ['img1', 'x'],
       'retrieved_scores': [2.0, 1.0]},
      {'answer': 'yes', 'retrieved_ids': ['y', 'txt3'],
       'retrieved_scores': [1.0, 3.0]},
      {'answer': 'Paris', 'retrieved_ids': ['z'], 'retrieved_scores': [1.0]},
  ]
  out = webqa.webqa_metrics(_targets(), preds, fluency_scorer=None,
                            lemmatizer=LEM)
  # F1s: {img1,x} vs {img1} = 2/3; {y,txt3} vs {img2,txt3} = 1/2; 0.
  assert out['retrieval_f1'] == pytest.approx(100 * (2 / 3 + 0.5 + 0) / 3)
  # Top-1 selection uses the score order: img1, txt3, z.
  out1 = webqa.webqa_metrics(_targets(), preds, fluency_scorer=None,
                             lemmatizer=LEM, retrieval_top_k=1)
  assert out1['retrieval_f1'] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_bad_inputs_name_the_record():
  with pytest.raises(ValueError, match="question_id='b'.*Qcate 'colour'"):
    webqa.webqa_metrics(
        [_targets()[0], {'answers': ['x'], 'qcate': 'colour',
                         'question_id': 'b'}],
        ['red', 'red'], fluency_scorer=None, lemmatizer=LEM)
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    webqa.webqa_metrics(_targets()[:2], ['x'], fluency_scorer=None,
                        lemmatizer=LEM)
  with pytest.raises(ValueError, match='empty "answers"'):
    webqa.webqa_metrics([{'answers': [], 'qcate': 'text', 'question_id': 'e'}],
                        ['x'], fluency_scorer=None, lemmatizer=LEM)


def test_default_lemmatizer_is_named():
  lem = normalize.default_lemmatizer()
  try:
    import spacy  # pylint: disable=g-import-not-at-top,unused-import
    spacy.load('en_core_web_sm')
    assert lem.name.startswith('spacy:en_core_web_sm')
  except (ImportError, OSError):
    assert lem.name == normalize.RuleLemmatizer.name


def test_word_to_number_agrees_with_word2number_when_installed():
  w2n = pytest.importorskip('word2number.w2n')
  tokens = ['zero', 'one', 'Seven', 'nineteen', 'ninety', 'hundred',
            'thousand', 'million', 'billion', 'point', '12', '007', '3.5',
            'dog', '', '-', 'one-', '²', 'twelfth', 'eleventy']
  for token in tokens:
    try:
      want = w2n.word_to_num(token)
    except ValueError:
      want = None
    assert normalize.word_to_number(token) == want, token
