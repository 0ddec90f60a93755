"""Questions over the synthetic world in WebQA's categories, with confusable hard negatives.

WebQA (the fine-tuning set of MuRAG, Sec. 4.1) labels each question with a category: color,
shape, number, YesNo, choose, Others (image-based) and text (snippet-based); every question
comes with positive sources and hard negatives. Here:

* the question always contains the realm name, which also appears in the positive source's
  title and caption; the answer (one word or number) appears nowhere but in the positive
  image's pixels or the positive snippet;
* image hard negatives are emblems that differ from the positive in the asked attribute,
  taken first from the same realm (other kinds: same name in the title) and then from the
  same kind in other realms; for choose / YesNo questions an emblem showing the *wrong option*
  is included when one exists;
* text hard negatives state the same fact about other realms (same wording, different value)
  or another fact about the same realm.

Hard negatives come from the question's own split or from distractor realms, so validation
realms never appear in training records.
"""
import dataclasses

from tasks.synthetic_world import world

IMAGE_CATEGORIES = ("color", "shape", "number", "YesNo", "choose", "Others")
ALL_CATEGORIES = IMAGE_CATEGORIES + ("text",)
# Category -> the emblem attribute the answer depends on (YesNo / choose pick one per question).
CATEGORY_ATTRIBUTE = {"color": "color", "shape": "shape", "number": "count", "Others": "side"}
ATTRIBUTE_VALUES = {"color": world.COLORS, "shape": world.SHAPES, "count": world.COUNTS,
                    "side": world.SIDES}
NUM_IMAGE_NEGATIVES = 4
NUM_TEXT_NEGATIVES = 4
NUM_CROSS_NEGATIVES = 2  # snippets for image questions, emblems for text questions


@dataclasses.dataclass
class Question:
  """One question with its sources; `attribute` is the emblem attribute (or text fact) asked."""
  guid: str
  split: str
  qcate: str
  question: str
  answer: str
  topic: str
  attribute: str
  pos_images: list
  neg_images: list
  pos_texts: list  # (realm, fact) pairs
  neg_texts: list


def attribute_question(emblem, attribute):
  """The plain question asking one attribute of an emblem (also used for MMQA ImageQ)."""
  k, n = emblem.kind, emblem.realm
  return {
      "color": f"What color are the shapes on the {k} of {n}?",
      "shape": f"What shape is drawn on the {k} of {n}?",
      "count": f"How many shapes are on the {k} of {n}?",
      "side": f"On which side of the {k} of {n} is the gray bar?",
  }[attribute]


def _yes_no(emblem, attribute, value):
  k, n = emblem.kind, emblem.realm
  return {
      "color": f"Are the shapes on the {k} of {n} {value}?",
      "shape": f"Is the shape on the {k} of {n} a {value}?",
      "count": f"Does the {k} of {n} show {value} shapes?",
  }[attribute]


def _choose(emblem, attribute, a, b):
  k, n = emblem.kind, emblem.realm
  return {
      "color": f"Are the shapes on the {k} of {n} {a} or {b}?",
      "shape": f"Is the shape on the {k} of {n} a {a} or a {b}?",
      "count": f"Does the {k} of {n} show {a} or {b} shapes?",
  }[attribute]


class Pool:
  """The realms a question of one split may draw negatives from, indexed by emblem kind."""

  def __init__(self, realms, split):
    self.realms = [r for r in realms if r.split in (split, None)]
    self.by_name = {r.name: r for r in self.realms}
    self.by_kind = {k: [e for r in self.realms for e in r.emblems if e.kind == k]
                    for k in world.KINDS}


def _pools(realms):
  return {split: Pool(realms, split) for split in ("train", "val")}


def _sample(rng, candidates, accept, k, taken):
  """Up to k distinct candidates passing `accept`, not in `taken`, drawn at random.

  Rejection sampling keeps this O(k) on big worlds; a full scan finishes the job when
  acceptable candidates are rare (small worlds).
  """
  out = []
  for _ in range(20 * k):
    if len(out) == k or not candidates:
      break
    c = rng.choice(candidates)
    if accept(c) and c not in out and c not in taken:
      out.append(c)
  if len(out) < k:
    rest = [c for c in candidates if accept(c) and c not in out and c not in taken]
    rng.shuffle(rest)
    out += rest[:k - len(out)]
  return out


def image_negatives(rng, emblem, attribute, pool, must_value=None):
  """Emblems that differ from `emblem` in `attribute`, most confusable first.

  Args:
    rng: random.Random.
    emblem: the positive emblem.
    attribute: the emblem attribute the question depends on.
    pool: the Pool to draw from.
    must_value: when given, one negative showing this value is included if any exists.

  Returns:
    A list of at most NUM_IMAGE_NEGATIVES emblems.
  """
  true = getattr(emblem, attribute)
  same_realm = [e for e in pool.by_name[emblem.realm].emblems
                if e.kind != emblem.kind and getattr(e, attribute) != true]
  rng.shuffle(same_realm)
  chosen = same_realm[:2]
  same_kind = pool.by_kind[emblem.kind]
  other = lambda e: e.realm != emblem.realm and getattr(e, attribute) != true
  if must_value is not None:
    chosen += _sample(rng, same_kind, lambda e: other(e) and getattr(e, attribute) == must_value,
                      1, chosen)
  chosen += _sample(rng, same_kind, other, NUM_IMAGE_NEGATIVES - len(chosen), chosen)
  return chosen


def text_negatives(rng, realm, fact, pool, count=NUM_TEXT_NEGATIVES):
  """Snippets confusable with (realm, fact): same fact elsewhere, other facts of the realm."""
  value = world.fact_value(realm, fact)
  others = _sample(rng, pool.realms,
                   lambda r: r.name != realm.name and world.fact_value(r, fact) != value,
                   count - 1, [])
  own = [(realm, f) for f in world.TEXT_FACTS if f != fact]
  rng.shuffle(own)
  return [(r, fact) for r in others] + own[:1]


def _balanced_coin(rng, balance, key):
  """A fair coin whose running tally per key never drifts by more than one.

  YesNo answers and the position of the right option in choose questions use it, so that no
  split or question template has a majority answer a question-only model could learn.
  """
  tally = balance.get(key, 0)
  heads = rng.random() < 0.5 if tally == 0 else tally < 0
  balance[key] = tally + (1 if heads else -1)
  return heads


def _other(rng, values, true):
  return rng.choice([v for v in values if v != true])


def image_question(seed, rng, emblem, category, pool, realm, balance):
  """Builds one image-based question of `category` about `emblem`.

  `balance` is the running tally dict of `_balanced_coin`, shared by all questions.
  """
  must = None
  if category in CATEGORY_ATTRIBUTE:
    attribute = CATEGORY_ATTRIBUTE[category]
    text = attribute_question(emblem, attribute)
    answer = str(getattr(emblem, attribute))
  elif category == "YesNo":
    attribute = rng.choice(("color", "shape", "count"))
    true = getattr(emblem, attribute)
    if _balanced_coin(rng, balance, ("YesNo", realm.split, attribute)):
      value, answer = true, "yes"
    else:
      value, answer = _other(rng, ATTRIBUTE_VALUES[attribute], true), "no"
      must = value
    text = _yes_no(emblem, attribute, value)
  elif category == "choose":
    attribute = rng.choice(("color", "shape", "count"))
    true = getattr(emblem, attribute)
    wrong = _other(rng, ATTRIBUTE_VALUES[attribute], true)
    must = wrong
    first = _balanced_coin(rng, balance, ("choose", realm.split, attribute))
    a, b = (true, wrong) if first else (wrong, true)
    text = _choose(emblem, attribute, a, b)
    answer = str(true)
  else:
    raise world.WorldError(f"unknown image question category {category!r}")
  neg_images = image_negatives(rng, emblem, attribute, pool, must)
  facts = list(world.TEXT_FACTS)
  rng.shuffle(facts)
  return Question(
      guid=world.hex_id(seed, "webqa", emblem.image_id, category), split=realm.split,
      qcate=category, question=text, answer=answer, topic=emblem.kind, attribute=attribute,
      pos_images=[emblem], neg_images=neg_images, pos_texts=[],
      neg_texts=[(realm, f) for f in facts[:NUM_CROSS_NEGATIVES]])


def text_question(seed, rng, realm, fact, pool):
  """Builds one text-based question about one fact of `realm`."""
  emblems = list(realm.emblems)
  rng.shuffle(emblems)
  return Question(
      guid=world.hex_id(seed, "webqa", realm.name, fact), split=realm.split, qcate="text",
      question=world.fact_question(realm, fact), answer=world.fact_value(realm, fact),
      topic="realm", attribute=fact, pos_images=[], neg_images=emblems[:NUM_CROSS_NEGATIVES],
      pos_texts=[(realm, fact)], neg_texts=text_negatives(rng, realm, fact, pool))


def webqa_questions(seed, realms, per_emblem):
  """All WebQA questions of the world, in a deterministic order.

  Args:
    seed: world seed.
    realms: from world.build_realms (distractor realms get no questions).
    per_emblem: how many of the six image categories to ask about each emblem.

  Returns:
    A list of Question.
  """
  rng = world.rng_for(seed, "webqa")
  pools = _pools(realms)
  balance = {}
  out = []
  for realm in realms:
    if realm.split is None:
      continue
    pool = pools[realm.split]
    for emblem in realm.emblems:
      for category in rng.sample(IMAGE_CATEGORIES, per_emblem):
        out.append(image_question(seed, rng, emblem, category, pool, realm, balance))
    for fact in world.TEXT_FACTS:
      out.append(text_question(seed, rng, realm, fact, pool))
  return out


def mmqa_questions(seed, realms):
  """MultimodalQA-style single-hop ImageQ / TextQ questions (two of each per realm)."""
  rng = world.rng_for(seed, "mmqa")
  pools = _pools(realms)
  out = []
  for realm in realms:
    if realm.split is None:
      continue
    pool = pools[realm.split]
    for emblem in rng.sample(realm.emblems, 2):
      attribute = rng.choice(tuple(CATEGORY_ATTRIBUTE.values()))
      q = Question(
          guid=world.hex_id(seed, "mmqa", emblem.image_id, attribute), split=realm.split,
          qcate="ImageQ", question=attribute_question(emblem, attribute),
          answer=str(getattr(emblem, attribute)), topic=emblem.kind, attribute=attribute,
          pos_images=[emblem], neg_images=image_negatives(rng, emblem, attribute, pool),
          pos_texts=[], neg_texts=[(realm, rng.choice(world.TEXT_FACTS))])
      out.append(q)
    for fact in rng.sample(world.TEXT_FACTS, 2):
      q = text_question(seed, rng, realm, fact, pool)
      q.guid = world.hex_id(seed, "mmqa", realm.name, fact)
      q.qcate = "TextQ"
      out.append(q)
  return out
