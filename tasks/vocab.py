"""Vocabularies: the public T5 SentencePiece model, or one trained offline from the world.

MuRAG's text side is T5 (Sec. 3.1), whose vocabulary is the public SentencePiece model
`cc_all.32000.100extra` (32000 pieces + 100 sentinel ids = 32100, padded to 32128 in the
embedding). Production gin files point at it. Offline runs cannot download it, so
`build_offline_vocabulary` trains a small SentencePiece model from the synthetic world's text,
deterministically, with T5's special ids (pad 0, eos 1, unk 2, no bos) and BPE merges (see
`train_sentencepiece`); seqio then appends
the 100 `<extra_id_N>` sentinels used by span corruption and CM3 masking.
"""
import functools
import hashlib
import io
import json
import os
import string

import gin
import pyarrow.parquet as pq
import seqio
import sentencepiece as spm

T5_PUBLIC_VOCAB = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
EXTRA_IDS = 100
DEFAULT_OFFLINE_VOCAB_SIZE = 1500
_NAMES = {"t5": T5_PUBLIC_VOCAB, "t5_public": T5_PUBLIC_VOCAB}
# Bumped whenever the trainer options below change, so cached models are rebuilt.
_TRAINER_VERSION = 3
# Longest piece (characters, counting the word-start mark). Short pieces make the world's
# invented names out of syllable-sized pieces shared between names, as a large real
# vocabulary does for unseen proper nouns; without the cap BPE spends its merges on whole
# names, and a name seen only in validation becomes one piece whose embedding never trained.
MAX_PIECE_LENGTH = 4


@functools.lru_cache(maxsize=None)
def get_vocabulary(path_or_name):
  """A seqio.SentencePieceVocabulary with 100 extra ids.

  Args:
    path_or_name: a SentencePiece model path (local or gs://), or "t5" / "t5_public".

  Returns:
    seqio.SentencePieceVocabulary(path, extra_ids=100).

  Raises:
    FileNotFoundError: a local path that does not exist.
  """
  path = _NAMES.get(path_or_name, path_or_name)
  if "://" not in path and not os.path.isfile(path):
    raise FileNotFoundError(
        f"SentencePiece model {path!r} not found (give a path, 'gs://...', or one of "
        f"{sorted(_NAMES)}; build an offline one with tasks.vocab.build_offline_vocabulary)")
  return seqio.SentencePieceVocabulary(path, extra_ids=EXTRA_IDS)


@gin.configurable
def default_vocabulary(vocab_path=None):
  """The vocabulary used when tasks are registered.

  Args:
    vocab_path: from gin (`default_vocabulary.vocab_path = %VOCAB_PATH`); when None the
      environment variable MURAG_VOCAB_PATH is used, and failing that the public T5 model.

  Returns:
    A seqio.SentencePieceVocabulary.
  """
  path = vocab_path or os.environ.get("MURAG_VOCAB_PATH") or T5_PUBLIC_VOCAB
  return get_vocabulary(path)


def _load_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _unquote(s):
  return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


# Text the seqio tasks put in front of queries (tasks.preprocessors.CAPTION_PROMPT).
PROMPT_TEXTS = ("generate caption:",)


def iter_world_text(world_dir):
  """The training-side text of a synthetic world, read back from its files, in a fixed order.

  Like a vocabulary built from a real training set, only training text is read: WebQA train
  records with their sources, MultimodalQA train questions with the texts they cite,
  LAION / CC captions, PAQ, and the VQA / COCO train split. Validation questions, validation
  realms' sources, full-wiki distractors and the VQA val split are left out, so their words
  are spelled with pieces learnt from training text (see `train_sentencepiece`).

  Args:
    world_dir: a directory written by tasks.synthetic_world.generate_world.

  Yields:
    Strings (one sentence or caption each).
  """
  join = functools.partial(os.path.join, world_dir)
  # Fixed prompts the tasks add to queries; without them ':' would be an unknown piece.
  yield from PROMPT_TEXTS
  # Every printable ASCII character, so text outside the training side (a validation name
  # starting with a letter no training name starts with) never maps to <unk>.
  yield " ".join(string.ascii_letters + string.digits + string.punctuation)
  with open(join("world_manifest.json")) as f:
    fmts = json.load(f)["formats"]
  if "webqa" in fmts:
    with open(join("webqa", "WebQA_train_val.json"), encoding="utf-8") as f:
      data = json.load(f)
    for guid in sorted(data):
      r = data[guid]
      if r["split"] != "train":
        continue
      yield _unquote(r["Q"])
      yield from (_unquote(a) for a in r["A"])
      for s in r["img_posFacts"] + r["img_negFacts"] + r["txt_posFacts"] + r["txt_negFacts"]:
        yield s["title"]
        yield s.get("caption") or s.get("fact")
  if "mmqa" in fmts:
    cited = set()
    for r in _load_jsonl(join("mmqa", "MMQA_train.jsonl")):
      yield r["question"]
      yield from (a["answer"] for a in r["answers"])
      cited.update(r["metadata"]["text_doc_ids"])
    for r in _load_jsonl(join("mmqa", "MMQA_texts.jsonl")):
      if r["id"] in cited:
        yield r["text"]
  for role in ("laion", "cc"):
    if role in fmts:
      for name in sorted(os.listdir(join(role))):
        if name.endswith(".parquet"):
          yield from pq.read_table(join(role, name), columns=["caption"])["caption"].to_pylist()
  if "paq" in fmts:
    for r in _load_jsonl(join("paq", "PAQ.jsonl")):
      yield r["question"]
      yield from r["answer"]
    with open(join("paq", "psgs_w100.tsv"), encoding="utf-8") as f:
      next(f)
      for line in f:
        _, text, title = line.rstrip("\n").split("\t")
        yield text
        yield title
  if "vqa" in fmts:
    sub = "train2014"
    with open(join("vqa", f"v2_OpenEnded_mscoco_{sub}_questions.json")) as f:
      yield from (q["question"] for q in json.load(f)["questions"])
    with open(join("vqa", f"v2_mscoco_{sub}_annotations.json")) as f:
      for a in json.load(f)["annotations"]:
        yield from (x["answer"] for x in a["answers"])
    with open(join("vqa", "annotations", f"captions_{sub}.json")) as f:
      yield from (c["caption"] for c in json.load(f)["annotations"])


def train_sentencepiece(sentences, vocab_size=DEFAULT_OFFLINE_VOCAB_SIZE, seed=0,
                        max_piece_length=MAX_PIECE_LENGTH):
  """Trains a SentencePiece model with T5's special ids, deterministically.

  BPE rather than T5's unigram: on a corpus this small, unigram spends its budget on whole
  invented names and spells rarer ones letter by letter, while BPE builds them from frequent
  syllables. Pieces are at most `max_piece_length` characters, so a name is made of
  syllable-sized pieces that other names share (validation realms never occur in training
  text, but their pieces do).

  Args:
    sentences: list of strings (the training corpus, used in this order).
    vocab_size: requested number of pieces (fewer if the corpus cannot support that many).
    seed: seed of SentencePiece's random generator.
    max_piece_length: longest piece in characters (the word-start mark counts as one).

  Returns:
    The serialized model proto (bytes).
  """
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
      model_type="bpe", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
      hard_vocab_limit=False, normalization_rule_name="nmt_nfkc", minloglevel=2,
      max_sentencepiece_length=max_piece_length)
  return model.getvalue()


def build_offline_vocabulary(world_dir, cache_path=None, vocab_size=DEFAULT_OFFLINE_VOCAB_SIZE):
  """Returns the offline vocabulary of a world, training and caching it when needed.

  The model is rebuilt when the cache is missing, or when the world's text, the vocabulary
  size or the trainer options differ from the ones it was built from (recorded in
  `<cache_path>.meta.json`). Writes are atomic.

  Args:
    world_dir: a directory written by tasks.synthetic_world.generate_world.
    cache_path: where to keep the .model file; default <world_dir>/vocab/sentencepiece.model.
    vocab_size: requested number of SentencePiece pieces (before the 100 extra ids).

  Returns:
    A seqio.SentencePieceVocabulary with 100 extra ids.

  Raises:
    FileNotFoundError: world_dir holds no generated world.
  """
  if not os.path.isfile(os.path.join(world_dir, "world_manifest.json")):
    raise FileNotFoundError(f"{world_dir!r} holds no synthetic world (no world_manifest.json); "
                            "run python -m tasks.synthetic_world first")
  cache_path = cache_path or os.path.join(world_dir, "vocab", "sentencepiece.model")
  # Not deduplicated: piece frequencies should follow the text the model will see.
  sentences = [s for s in iter_world_text(world_dir) if s]
  digest = hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()
  meta = {"corpus_sha256": digest, "vocab_size": vocab_size, "trainer_version": _TRAINER_VERSION}
  meta_path = cache_path + ".meta.json"
  cached = None
  if os.path.isfile(cache_path) and os.path.isfile(meta_path):
    with open(meta_path) as f:
      cached = json.load(f)
  if cached != meta:
    proto = train_sentencepiece(sentences, vocab_size)
    os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
    for path, data in ((cache_path, proto),
                       (meta_path, json.dumps(meta, sort_keys=True).encode())):
      tmp = f"{path}.tmp-{os.getpid()}"
      with open(tmp, "wb") as f:
        f.write(data)
      os.replace(tmp, path)
    get_vocabulary.cache_clear()  # a cached object would hold the old model
  return get_vocabulary(cache_path)
