"""VQA accuracy with the official answer normalisation (MuRAG Appendix A).

MuRAG reports VQA accuracy on the VQA v2 validation split during mixture
pre-training. The definition follows the official `vqaEval.py` (VQA v2.0
release, after its "Fixed processing answers bug" change):

* Prediction and each annotator answer: newlines/tabs become spaces, then strip.
* Only when the annotators disagree (more than one distinct answer) are the
  prediction and the annotator answers normalised: punctuation handling (a mark
  next to a space, or any mark when the text has a digit,digit comma, is
  deleted; otherwise replaced by a space; a "." not followed by a digit is
  deleted), lower-casing, number words zero..ten (and "none") to digits,
  removal of articles, and the contraction table below (apostrophe-less forms
  to their spelled forms). When all annotators agree the comparison is exact.
* Accuracy of a question = mean over the leave-one-annotator-out subsets of
  min(1, #matching remaining annotators / 3); 10 subsets for VQA's 10 answers.

`always_normalize=True` normalises even unanimous answers (a common, more
lenient variant); the default is the official behaviour.
"""

import re
from typing import Any, Mapping, Sequence

import numpy as np

from tasks.metrics import normalize

# Contraction table of the official scorer, as "written_form canonical_form"
# pairs. Keys with capitals never match (text is lower-cased first); they are
# kept so the table equals the official one.
_CONTRACTION_PAIRS = """
'ow'sat 'ow's'at  'ows'at 'ow's'at  I'dve I'd've  Id've I'd've  Im I'm
Ive I've  aint ain't  arent aren't  cant can't  couldn'tve couldn't've
couldnt couldn't  couldnt've couldn't've  couldve could've  didnt didn't
doesnt doesn't  dont don't  hadn'tve hadn't've  hadnt hadn't
hadnt've hadn't've  hasnt hasn't  havent haven't  he'dve he'd've  hed he'd
hed've he'd've  hes he's  howd how'd  howll how'll  hows how's  isnt isn't
it'dve it'd've  itd it'd  itd've it'd've  itll it'll  let's let's
maam ma'am  mightn'tve mightn't've  mightnt mightn't  mightnt've mightn't've
mightve might've  mustnt mustn't  mustve must've  neednt needn't
notve not've  oclock o'clock  oughtnt oughtn't  ow's'at 'ow's'at
shant shan't  she'dve she'd've  she's she's  shed've she'd've
shouldn'tve shouldn't've  shouldnt shouldn't  shouldnt've shouldn't've
shouldve should've  somebody'd somebodyd  somebody'dve somebody'd've
somebodyd've somebody'd've  somebodyll somebody'll  somebodys somebody's
someone'dve someone'd've  someoned someone'd  someoned've someone'd've
someonell someone'll  someones someone's  something'dve something'd've
somethingd something'd  somethingd've something'd've
somethingll something'll  thats that's  there'dve there'd've  thered there'd
thered've there'd've  therere there're  theres there's  they'dve they'd've
theyd they'd  theyd've they'd've  theyll they'll  theyre they're
theyve they've  twas 'twas  wasnt wasn't  we'dve we'd've  wed've we'd've
werent weren't  weve we've  whatll what'll  whatre what're  whats what's
whatve what've  whens when's  whered where'd  wheres where's
whereve where've  who'dve who'd've  whod who'd  whod've who'd've
wholl who'll  whos who's  whove who've  whyll why'll  whyre why're
whys why's  wont won't  wouldn'tve wouldn't've  wouldnt wouldn't
wouldnt've wouldn't've  wouldve would've  y'all'dve y'all'd've
y'alld've y'all'd've  y'allll y'all'll  yall y'all  yall'd've y'all'd've
yall'll y'all'll  you'dve you'd've  youd you'd  youd've you'd've
youll you'll  youre you're  youve you've
"""
CONTRACTIONS = dict(
    zip(_CONTRACTION_PAIRS.split()[0::2], _CONTRACTION_PAIRS.split()[1::2]))

NUMBER_WORDS = {
    'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3',
    'four': '4', 'five': '5', 'six': '6', 'seven': '7', 'eight': '8',
    'nine': '9', 'ten': '10',
}
ARTICLES = frozenset({'a', 'an', 'the'})
PUNCT = (';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-',
         '>', '<', '@', '`', ',', '?', '!')
_DIGIT_COMMA_DIGIT = re.compile(r'(\d)(,)(\d)')
# The official pattern also carries a no-op "(?!<=\d)" look-ahead.
_PERIOD_NOT_DECIMAL = re.compile(r'\.(?!\d)')


def process_punctuation(text: str) -> str:
  """Official punctuation handling of an answer."""
  out = text
  comma_number = _DIGIT_COMMA_DIGIT.search(text) is not None
  for p in PUNCT:
    if p + ' ' in text or ' ' + p in text or comma_number:
      out = out.replace(p, '')
    else:
      out = out.replace(p, ' ')
  return _PERIOD_NOT_DECIMAL.sub('', out)


def process_digit_article(text: str) -> str:
  """Lower-case, number words to digits, drop articles, expand contractions."""
  words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  words = [w for w in words if w not in ARTICLES]
  return ' '.join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
  """Full official normalisation (punctuation, then digits/articles)."""
  return process_digit_article(process_punctuation(text))


def _clean(text: str) -> str:
  return text.replace('\n', ' ').replace('\t', ' ').strip()


def question_accuracy(prediction: str, annotator_answers: Sequence[str],
                      always_normalize: bool = False) -> float:
  """Official VQA accuracy of one prediction, in [0, 1].

  Args:
    prediction: the predicted answer.
    annotator_answers: the annotators' answers (10 in VQA v2).
    always_normalize: normalise even when all annotators agree.

  Returns:
    The mean of min(1, matches / 3) over the leave-one-out annotator subsets.
  """
  gts = [_clean(a) for a in annotator_answers]
  pred = _clean(prediction)
  if always_normalize or len(set(gts)) > 1:
    gts = [normalize_answer(a) for a in gts]
    pred = normalize_answer(pred)
  accs = []
  for left_out in range(len(gts)):
    matches = sum(1 for j, a in enumerate(gts) if j != left_out and a == pred)
    accs.append(min(1.0, matches / 3.0))
  return float(np.mean(accs))


def vqa_accuracy(targets: Sequence[Mapping[str, Any]],
                 predictions: Sequence[Any],
                 *,
                 always_normalize: bool = False) -> dict[str, float]:
  """seqio metric: VQA accuracy in percent, overall and per answer type.

  Args:
    targets: dicts {"answers": the annotators' answers (10 for VQA v2),
      optional "answer_type": str, "question_id": str}.
    predictions: answer strings or dicts with "answer".
    always_normalize: see `question_accuracy`.

  Returns:
    {"vqa_accuracy"} plus {"vqa_accuracy/<answer_type>"} when targets carry
    answer types.
  """
  normalize.check_lengths(targets, predictions, 'vqa_accuracy')
  scores, by_type = [], {}
  for i, (target, pred) in enumerate(zip(targets, predictions)):
    answers = normalize.target_answers(target, i)
    acc = question_accuracy(normalize.prediction_answer(pred), answers,
                            always_normalize)
    scores.append(acc)
    if target.get('answer_type'):
      by_type.setdefault(str(target['answer_type']), []).append(acc)
  out = {'vqa_accuracy': 100.0 * float(np.mean(scores))}
  for name, accs in sorted(by_type.items()):
    out[f'vqa_accuracy/{name}'] = 100.0 * float(np.mean(accs))
  return out
