"""The synthetic knowledge world: realms, their emblems (image facts) and text facts.

MuRAG (Chen et al. 2022, Sec. 4.1 and Table 1) is evaluated on WebQA and MultimodalQA, where a
question can only be answered after retrieving the right image or text snippet. This module
builds a small invented world with that property:

* A *realm* has an invented name and four text facts (capital, founding year, first ruler,
  river). The facts live only in text snippets.
* Each realm owns one *emblem* per kind (flag, shield, seal). An emblem is drawn by code: N
  copies (1-4) of one shape in one colour on a white ground, with a gray bar along one side.
  Colour, shape, count and bar side are visible only in the image; its title and caption name
  the realm and the kind but never an attribute.
* *Scenes* are unnamed drawings with descriptive captions (the LAION / CC / VQA roles), so
  pretraining can teach a model to read attributes from pixels.

Everything is derived from `random.Random` streams seeded by strings, so the world is a pure
function of (size, seed).
"""
import dataclasses
import hashlib
import random

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink")
SHAPES = ("circle", "square", "triangle", "cross")
COUNTS = (1, 2, 3, 4)
SIDES = ("top", "bottom", "left", "right")
KINDS = ("flag", "shield", "seal")
TEXT_FACTS = ("capital", "founded", "ruler", "river")
# Every word that names an image attribute; captions and titles must contain none of them.
ATTRIBUTE_WORDS = frozenset(COLORS + SHAPES + SIDES + tuple(str(c) for c in COUNTS) +
                            ("one", "two", "three", "four", "gray", "grey", "bar"))
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}

# Per size: realms with questions, distractor realms (sources only), realms for PAQ,
# caption pairs for the LAION and CC roles, VQA images per split, shard size, image questions
# per emblem (out of the six image categories).
SIZES = {
    "small": dict(realms=12, distractor_realms=3, paq_realms=30, laion=96, cc=64,
                  vqa_train=48, vqa_val=24, shard_size=64, image_questions_per_emblem=5,
                  image_size=64),
    "medium": dict(realms=96, distractor_realms=24, paq_realms=500, laion=3000, cc=2000,
                   vqa_train=800, vqa_val=200, shard_size=1000, image_questions_per_emblem=5,
                   image_size=64),
    "large": dict(realms=960, distractor_realms=240, paq_realms=5000, laion=30000, cc=20000,
                  vqa_train=8000, vqa_val=2000, shard_size=10000, image_questions_per_emblem=5,
                  image_size=64),
}
VAL_FRACTION = 0.2

# A small syllable inventory keeps invented names few SentencePiece pieces long.
_ONSETS = ("b", "d", "k", "l", "m", "n", "r", "s", "t", "v", "z", "th")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l")
_NAME_ENDINGS = {
    "realm": ("ia", "or", "and", "eth", "ara", "un"),
    "city": ("mor", "ford", "holm", "wick", "dal", "ton"),
    "ruler": ("ric", "wen", "mund", "is", "ald", "eth"),
    "river": ("a", "ul", "ine", "ey", "ode", "ash"),
}


class WorldError(ValueError):
  """Bad arguments to the world generator or a malformed world on disk."""


@dataclasses.dataclass(frozen=True)
class Emblem:
  """An image fact: the emblem of one kind owned by one realm."""
  realm: str
  kind: str
  color: str
  shape: str
  count: int
  side: str
  image_id: int

  @property
  def title(self):
    return f"{self.kind.capitalize()} of {self.realm}"


@dataclasses.dataclass(frozen=True)
class Realm:
  """An entity with text facts; `split` is train / val, or None for distractor realms."""
  name: str
  capital: str
  founded: int
  ruler: str
  river: str
  split: str | None
  emblems: tuple


@dataclasses.dataclass(frozen=True)
class Scene:
  """An unnamed drawing used for caption pairs (LAION / CC roles) and VQA."""
  color: str
  shape: str
  count: int
  side: str


def rng_for(seed, *parts):
  """An independent deterministic random stream for one part of the world."""
  return random.Random("/".join([str(seed)] + [str(p) for p in parts]))


def hex_id(seed, *parts):
  """A deterministic 32-hex-digit id (the style of WebQA snippet ids and MMQA doc ids)."""
  return hashlib.md5("/".join([str(seed)] + [str(p) for p in parts]).encode()).hexdigest()


class NameMaker:
  """Invents unique pronounceable names that contain no attribute word."""

  def __init__(self, rng):
    self._rng = rng
    self._used = set()

  def make(self, style):
    for _ in range(1000):
      syllables = [self._rng.choice(_ONSETS) + self._rng.choice(_VOWELS) +
                   self._rng.choice(_CODAS) for _ in range(self._rng.randint(1, 2))]
      name = ("".join(syllables) + self._rng.choice(_NAME_ENDINGS[style])).capitalize()
      low = name.lower()
      if low in self._used or any(w in low for w in ATTRIBUTE_WORDS if len(w) > 2):
        continue
      self._used.add(low)
      return name
    raise WorldError(f"could not invent a new {style} name after 1000 tries")


def size_config(size):
  """Returns the settings of a named size, or raises WorldError naming the choices."""
  if size not in SIZES:
    raise WorldError(f"unknown world size {size!r}; choose one of {sorted(SIZES)}")
  return dict(SIZES[size])


def build_realms(seed, cfg, names):
  """Creates the question realms (split train/val) followed by the distractor realms.

  Args:
    seed: world seed.
    cfg: a size config from `size_config`.
    names: the world's NameMaker (shared so that every name is unique).

  Returns:
    A list of Realm.
  """
  rng = rng_for(seed, "realms")
  n_q, n_d = cfg["realms"], cfg["distractor_realms"]
  n_val = max(1, round(n_q * VAL_FRACTION))
  splits = ["val"] * n_val + ["train"] * (n_q - n_val)
  rng.shuffle(splits)
  splits += [None] * n_d
  realms = []
  image_id = 30_000_000
  for split in splits:
    name = names.make("realm")
    emblems = []
    for kind in KINDS:
      emblems.append(Emblem(realm=name, kind=kind, color=rng.choice(COLORS),
                            shape=rng.choice(SHAPES), count=rng.choice(COUNTS),
                            side=rng.choice(SIDES), image_id=image_id))
      image_id += 1
    realms.append(Realm(name=name, capital=names.make("city"), founded=rng.randint(1100, 1899),
                        ruler=names.make("ruler"), river=names.make("river"), split=split,
                        emblems=tuple(emblems)))
  return realms


def random_scene(rng):
  return Scene(color=rng.choice(COLORS), shape=rng.choice(SHAPES), count=rng.choice(COUNTS),
               side=rng.choice(SIDES))


def plural(shape, count):
  if count == 1:
    return shape
  return shape + ("es" if shape == "cross" else "s")


def fact_value(realm, fact):
  """The answer string of one text fact of a realm."""
  return str(getattr(realm, fact))


def fact_sentence(realm, fact, variant=0):
  """The text snippet that states one fact (and only that fact)."""
  n, v = realm.name, fact_value(realm, fact)
  templates = {
      "capital": (f"The capital of {n} is {v}, a market town on the old road.",
                  f"{v} has been the capital of {n} for centuries."),
      "founded": (f"{n} was founded in {v} by settlers from the coast.",
                  f"Chronicles record that {n} was founded in the year {v}."),
      "ruler": (f"The first ruler of {n} was {v}, who built its walls.",
                f"{v} was remembered as the first ruler of {n}."),
      "river": (f"The river {v} flows through {n} and feeds its fields.",
                f"Farmers in {n} draw water from the river {v}."),
  }
  options = templates[fact]
  return options[variant % len(options)]


def fact_question(realm, fact):
  n = realm.name
  return {
      "capital": f"What is the capital of {n}?",
      "founded": f"In which year was {n} founded?",
      "ruler": f"Who was the first ruler of {n}?",
      "river": f"Which river flows through {n}?",
  }[fact]


def emblem_caption(emblem, variant):
  """A caption that names the realm and the kind but no visible attribute."""
  k, n = emblem.kind, emblem.realm
  options = (f"The {k} of {n}, as shown in an old chronicle.",
             f"A drawing of the {k} of {n}.",
             f"The official {k} of the realm of {n}.",
             f"{n} {k}, archive copy.")
  return options[variant % len(options)]


def scene_caption(scene, style, variant):
  """A descriptive caption of a scene; LAION-style and CC-style wordings differ."""
  shapes = plural(scene.shape, scene.count)
  num = NUMBER_WORDS[scene.count] if variant % 2 else str(scene.count)
  if style == "laion":
    return f"{num} {scene.color} {shapes} with a gray bar on the {scene.side}"
  if style == "cc":
    return f"a picture of {num} {scene.color} {shapes} and a gray bar at the {scene.side}"
  # COCO-style captions: full sentences.
  options = (f"A white picture with {num} {scene.color} {shapes}.",
             f"There is a gray bar on the {scene.side} side of the picture.",
             f"The picture shows {scene.color} {shapes} on a white background.")
  return options[variant % len(options)]
