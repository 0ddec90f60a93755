"""Text normalisation shared by the answer metrics (MuRAG paper, Sec. 4.2).

The official scorers of WebQA and MultimodalQA turn number words into numbers
with the `word2number` package and WebQA lemmatises with spaCy's
`en_core_web_sm`. Neither is a dependency here, so this module provides:

* `word_to_number`: the single-token behaviour of `word2number.w2n.word_to_num`
  (the scorers only ever call it on one whitespace- or hyphen-free token),
  including its quirks ("point" alone is 0; digit strings lose leading zeros).
* Lemmatisers: `SpacyLemmatizer` (used when spaCy and `en_core_web_sm` are
  installed, exactly as the WebQA scorer) and `RuleLemmatizer`, a documented
  deterministic fallback. `default_lemmatizer()` picks one and every metric that
  lemmatises reports which one through its `name`.
* Small helpers to read seqio targets / predictions in the layout of
  docs/readme/metrics.md.
"""

import functools
import re
import string
from typing import Any, Mapping, Optional, Protocol, Sequence

PUNCTUATION = frozenset(string.punctuation)

# Values of the English number words understood by word2number (American
# system). "point" is the decimal separator there.
_NUMBER_WORDS = {
    'zero': 0, 'one': 1, 'two': 2, 'three': 3, 'four': 4, 'five': 5, 'six': 6,
    'seven': 7, 'eight': 8, 'nine': 9, 'ten': 10, 'eleven': 11, 'twelve': 12,
    'thirteen': 13, 'fourteen': 14, 'fifteen': 15, 'sixteen': 16,
    'seventeen': 17, 'eighteen': 18, 'nineteen': 19, 'twenty': 20,
    'thirty': 30, 'forty': 40, 'fifty': 50, 'sixty': 60, 'seventy': 70,
    'eighty': 80, 'ninety': 90, 'hundred': 100, 'thousand': 1000,
    'million': 1000000, 'billion': 1000000000,
}


def word_to_number(token: str) -> Optional[int]:
  """Numeric value of one token as word2number would give it, else None.

  Args:
    token: a single token (no internal whitespace).

  Returns:
    The integer value (digit strings, number words; the lone word "point" is 0,
    as in word2number), or None when word2number would raise ValueError.
  """
  text = token.replace('-', ' ').lower()
  if text.isdigit():
    try:
      return int(text)
    except ValueError:  # e.g. superscript digits: isdigit() but not int().
      return None
  words = [w for w in text.split() if w in _NUMBER_WORDS or w == 'point']
  if len(words) != 1:
    # Several number words never reach here from the scorers (tokens carry no
    # spaces after splitting); refuse rather than guess a compound value.
    return None
  return 0 if words[0] == 'point' else _NUMBER_WORDS[words[0]]


class Lemmatizer(Protocol):
  """Maps normalised text to space-joined lemmas; `name` says which one."""

  name: str

  def __call__(self, text: str) -> str:
    ...


class SpacyLemmatizer:
  """spaCy lemmas, configured as the WebQA scorer (ner/textcat/parser off)."""

  def __init__(self, model: str = 'en_core_web_sm'):
    import spacy  # pylint: disable=g-import-not-at-top
    self._nlp = spacy.load(model, disable=['ner', 'textcat', 'parser'])
    version = self._nlp.meta.get('version', '?')
    self.name = f'spacy:{model}-{version}'

  def __call__(self, text: str) -> str:
    return ' '.join(token.lemma_ for token in self._nlp(text))


# Irregular forms the fallback maps explicitly (word -> lemma). Chosen to cover
# auxiliaries and frequent irregular plurals that appear in WebQA answers.
_IRREGULAR = {
    'is': 'be', 'are': 'be', 'was': 'be', 'were': 'be', 'am': 'be',
    'been': 'be', 'being': 'be', 'has': 'have', 'had': 'have',
    'having': 'have', 'does': 'do', 'did': 'do', 'done': 'do', 'doing': 'do',
    'went': 'go', 'gone': 'go', 'goes': 'go', 'made': 'make', 'said': 'say',
    'took': 'take', 'taken': 'take', 'saw': 'see', 'seen': 'see',
    'got': 'get', 'gotten': 'get', 'came': 'come', 'knew': 'know',
    'known': 'know', 'held': 'hold', 'wore': 'wear', 'worn': 'wear',
    'built': 'build', 'began': 'begin', 'begun': 'begin', 'grew': 'grow',
    'grown': 'grow', 'stood': 'stand', 'sat': 'sit', 'ran': 'run',
    'children': 'child', 'men': 'man', 'women': 'woman', 'people': 'person',
    'feet': 'foot', 'teeth': 'tooth', 'mice': 'mouse', 'geese': 'goose',
    'leaves': 'leaf', 'knives': 'knife', 'wives': 'wife', 'lives': 'life',
    'wolves': 'wolf', 'halves': 'half', 'shelves': 'shelf', 'calves': 'calf',
    'loaves': 'loaf', 'thieves': 'thief', 'scarves': 'scarf',
    'potatoes': 'potato', 'tomatoes': 'tomato', 'heroes': 'hero',
    'echoes': 'echo', 'volcanoes': 'volcano', 'cacti': 'cactus',
    'fungi': 'fungus', 'octopi': 'octopus', 'indices': 'index',
    'matrices': 'matrix', 'vertices': 'vertex', 'axes': 'axis',
    'analyses': 'analysis', 'crises': 'crisis', 'theses': 'thesis',
    'phenomena': 'phenomenon', 'criteria': 'criterion', 'data': 'datum',
    'oxen': 'ox', 'dice': 'die', 'these': 'these', 'those': 'those',
    'us': 'we', 'hers': 'hers',
}

# Words ending in "s" that are not plurals (kept as they are).
_NOT_PLURAL = frozenset({
    'yes', 'this', 'thus', 'plus', 'gas', 'bus', 'as', 'always', 'perhaps',
    'series', 'species', 'news', 'lens', 'canvas', 'atlas', 'iris', 'bias',
    'chaos', 'towards', 'afterwards', 'upstairs', 'downstairs', 'outdoors',
    'indoors', 'overseas', 'means', 'whereas', 'besides', 'sometimes', 'ours',
    'yours', 'theirs', 'christmas', 'texas', 'paris', 'athens', 'wales',
    'mars', 'venus', 'clothes', 'pants', 'jeans', 'scissors', 'glasses',
    'trousers', 'headquarters', 'swiss', 'mathematics', 'physics',
})


class RuleLemmatizer:
  """Deterministic fallback used when spaCy's English model is unavailable.

  What it does, token by token (tokens are whitespace-separated; the WebQA
  normaliser has already lower-cased and removed punctuation):
    1. Digits and tokens with digits are left alone.
    2. A fixed table maps auxiliaries ("is" -> "be", "has" -> "have"), frequent
       irregular verbs and irregular plurals ("children" -> "child").
    3. Regular plurals / third-person "-s": "-ies" -> "-y" (len > 4),
       "-sses"/"-xes"/"-ches"/"-shes"/"-zzes" drop "es", other "-s" words drop
       the "s" unless they end in "ss", "us", "is", "ics", "ous" or are listed
       as non-plurals ("yes", "series", ...), or are 3 letters or shorter.
  What it does not do (spaCy would, using part-of-speech tags): "-ed"/"-ing"
  verb forms, comparatives, and splitting units off numbers ("5km"). Scores may
  therefore differ slightly from the official scorer when predictions and
  references use different inflections of the same verb.
  """

  name = 'fallback:rule_lemmatizer_v1'

  def lemma(self, word: str) -> str:
    """Lemma of one lower-cased token."""
    if not word or any(ch.isdigit() for ch in word):
      return word
    if word in _IRREGULAR:
      return _IRREGULAR[word]
    if len(word) <= 3 or not word.endswith('s') or word in _NOT_PLURAL:
      return word
    if word.endswith(('ss', 'us', 'is', 'ics', 'ous')):
      return word
    if word.endswith('ies') and len(word) > 4:
      return word[:-3] + 'y'
    if word.endswith(('sses', 'xes', 'ches', 'shes', 'zzes')):
      return word[:-2]
    return word[:-1]

  def __call__(self, text: str) -> str:
    return ' '.join(self.lemma(w) for w in text.split())


@functools.lru_cache(maxsize=None)
def default_lemmatizer() -> Lemmatizer:
  """spaCy `en_core_web_sm` when importable and installed, else the fallback."""
  try:
    return SpacyLemmatizer('en_core_web_sm')
  except (ImportError, OSError):
    return RuleLemmatizer()


def remove_articles(text: str) -> str:
  """Replaces the English articles a/an/the (whole words) by spaces."""
  return re.sub(r'\b(a|an|the)\b', ' ', text)


def white_space_fix(text: str) -> str:
  return ' '.join(text.split())


def prediction_answer(prediction: Any) -> str:
  """The answer string of a prediction (str, bytes or {"answer": ...})."""
  if isinstance(prediction, Mapping):
    if 'answer' not in prediction:
      raise ValueError(
          f'Prediction dict has no "answer" key (keys: {sorted(prediction)}).')
    prediction = prediction['answer']
  if isinstance(prediction, bytes):
    prediction = prediction.decode('utf-8')
  if not isinstance(prediction, str):
    raise ValueError(
        f'Prediction answer must be a string, got {type(prediction).__name__}.')
  return prediction


def target_answers(target: Any, index: int) -> list[str]:
  """The non-empty "answers" list of a target dict, with a clear error."""
  if not isinstance(target, Mapping) or 'answers' not in target:
    raise ValueError(
        f'Target {index} must be a dict with an "answers" list, got '
        f'{type(target).__name__}: {str(target)[:200]}')
  answers = target['answers']
  if isinstance(answers, (str, bytes)):
    answers = [answers]
  answers = [a.decode('utf-8') if isinstance(a, bytes) else a
             for a in answers]
  if not answers:
    raise ValueError(
        f'Target {index} (question_id={target.get("question_id")!r}) has an '
        'empty "answers" list.')
  for a in answers:
    if not isinstance(a, str):
      raise ValueError(
          f'Target {index} (question_id={target.get("question_id")!r}): '
          f'answers must be strings, got {type(a).__name__}.')
  return list(answers)


def check_lengths(targets: Sequence[Any], predictions: Sequence[Any],
                  metric: str) -> None:
  if len(targets) != len(predictions):
    raise ValueError(
        f'{metric}: {len(targets)} targets but {len(predictions)} predictions.')
  if not targets:
    raise ValueError(f'{metric}: no examples to score.')
