"""Memory ids and precomputed top-K neighbour records (MuRAG §3.4, fixed retrieval).

After in-batch training, every cross-modal item of the corpus is encoded and indexed;
the fixed-retrieval stage then trains L_gen on the global TopK(M | x_q) while the
stored encodings stay frozen. This module owns the two data contracts of that stage:

1. **Memory ids.** Every memory item has a string id (WebQA `image_id` / `snippet_id`,
   MMQA doc id, DPR passage id, ...) and a stable int32 id used inside batches
   (`memory_ids` in tasks/features.py):

       int_id = Fingerprint64(utf8(string_id)) % (2**31 - 1)

   i.e. `tf.strings.to_hash_bucket_fast(string_id, 2**31 - 1)` (FarmHash fingerprint, stable
   across platforms and TF versions). The same formula runs inside tf.data graphs (that TF
   op) and on the host (pyfarmhash's `fingerprint64`, the same FarmHash function without an
   eager TF call per id: TFDS conversion computes one per source), and is independent of
   dataset order, so an item gets the same id in every builder, task and index. `IdMap`
   inverts it for attribution (ids -> strings).

2. **Neighbour records.** One JSON line per query example:

       {"example_id": str, "neighbour_ids": [str, ...K], "neighbour_scores": [float, ...K]}

   best first. `NeighbourTable` loads such a file (or arrays produced by the global
   memory) and `join_neighbours` joins it with the memory corpus items so the fixed
   tasks can put the K neighbours into the M memory slots.
"""
import dataclasses
import json
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import farmhash
import numpy as np
import tensorflow as tf

INT_ID_MODULUS = 2**31 - 1


def stable_int_ids(string_ids: Sequence[str]) -> np.ndarray:
  """Returns the stable int32 ids [N] of N memory items (see module docstring)."""
  for s in string_ids:
    if not isinstance(s, str) or not s:
      raise ValueError(f"memory item id must be a non-empty string, got {s!r}")
  return np.array([farmhash.fingerprint64(s) % INT_ID_MODULUS for s in string_ids], np.int32)


def stable_int_id(string_id: str) -> int:
  """Returns the stable int32 id of one memory item."""
  return int(stable_int_ids([string_id])[0])


def stable_int_id_tf(string_id: tf.Tensor) -> tf.Tensor:
  """The same id inside a tf.data graph: string tensor -> int32 tensor of the same shape."""
  return tf.cast(tf.strings.to_hash_bucket_fast(string_id, INT_ID_MODULUS), tf.int32)


class IdMap:
  """Bidirectional map between stable int ids and string ids of memory items."""

  def __init__(self, string_ids: Iterable[str] = ()):
    self._to_str: Dict[int, str] = {}
    string_ids = list(string_ids)
    for s, i in zip(string_ids, stable_int_ids(string_ids)):
      self._add(s, int(i))

  def add(self, string_id: str) -> int:
    """Adds one item; raises on an int-id collision between two different strings."""
    return self._add(string_id, stable_int_id(string_id))

  def _add(self, string_id: str, i: int) -> int:
    prev = self._to_str.get(i)
    if prev is not None and prev != string_id:
      raise ValueError(f"memory id collision: '{prev}' and '{string_id}' both map to {i}")
    self._to_str[i] = string_id
    return i

  def to_string(self, int_ids: Sequence[int]) -> List[str]:
    """Maps int ids to strings; -1 (padding) and unknown ids map to ''."""
    return [self._to_str.get(int(i), "") for i in np.asarray(int_ids).reshape(-1)]

  def __len__(self):
    return len(self._to_str)

  def __contains__(self, int_id):
    return int(int_id) in self._to_str

  def save(self, path: str):
    """Writes one string id per line (the int ids are recomputed on load)."""
    with open(path, "w") as f:
      for s in sorted(self._to_str.values()):
        f.write(s + "\n")

  @classmethod
  def load(cls, path: str) -> "IdMap":
    with open(path) as f:
      return cls(line.rstrip("\n") for line in f if line.strip())


@dataclasses.dataclass(frozen=True)
class NeighbourRecord:
  """Precomputed top-K neighbours of one query example, best first."""
  example_id: str
  neighbour_ids: List[str]
  neighbour_scores: List[float]

  def __post_init__(self):
    if len(self.neighbour_ids) != len(self.neighbour_scores):
      raise ValueError(f"neighbour record '{self.example_id}': {len(self.neighbour_ids)} ids "
                       f"but {len(self.neighbour_scores)} scores")


class NeighbourTable:
  """All neighbour records of one split, keyed by example id."""

  def __init__(self, records: Iterable[NeighbourRecord]):
    self._records: Dict[str, NeighbourRecord] = {}
    for r in records:
      self._records[r.example_id] = r

  @classmethod
  def from_jsonl(cls, path: str) -> "NeighbourTable":
    """Reads a neighbour file; a malformed line raises an error naming file and line."""
    records = []
    with open(path) as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          d = json.loads(line)
          records.append(NeighbourRecord(str(d["example_id"]), [str(x) for x in d["neighbour_ids"]],
                                         [float(x) for x in d["neighbour_scores"]]))
        except (KeyError, ValueError, TypeError) as e:
          raise ValueError(f"{path}:{lineno}: bad neighbour record ({e})") from e
    return cls(records)

  @classmethod
  def from_arrays(cls, example_ids: Sequence[str], neighbour_ids, scores) -> "NeighbourTable":
    """Builds a table from arrays: ids [N, K] of strings, scores [N, K] floats."""
    scores = np.asarray(scores, np.float32)
    return cls(NeighbourRecord(str(e), [str(x) for x in ids], [float(s) for s in sc])
               for e, ids, sc in zip(example_ids, neighbour_ids, scores))

  def write_jsonl(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      for r in self._records.values():
        f.write(json.dumps(dataclasses.asdict(r)) + "\n")

  def get(self, example_id: str) -> Optional[NeighbourRecord]:
    return self._records.get(example_id)

  def __len__(self):
    return len(self._records)

  def __iter__(self):
    return iter(self._records.values())


def join_neighbours(table: NeighbourTable, corpus: Mapping[str, Mapping[str, object]],
                    example_ids: Sequence[str], k: int) -> Dict[str, Dict[str, object]]:
  """Joins neighbour records with memory items.

  Args:
    table: neighbour records.
    corpus: string id -> memory item {"text": str, "image": bytes (b"" if none)}.
    example_ids: the query examples to join.
    k: number of neighbours kept per example.

  Returns:
    example id -> {"memory_text": [k'] str, "memory_image": [k'] bytes, "memory_ids": [k'] int,
    "memory_scores": [k'] float, "memory_string_ids": [k'] str}, k' <= k.

  Raises:
    KeyError: an example has no record, or a neighbour id is not in the corpus.
  """
  out = {}
  for ex in example_ids:
    rec = table.get(ex)
    if rec is None:
      raise KeyError(f"no neighbour record for example '{ex}'")
    ids = rec.neighbour_ids[:k]
    missing = [i for i in ids if i not in corpus]
    if missing:
      raise KeyError(f"example '{ex}': neighbour id(s) {missing[:5]} not in the memory corpus")
    out[ex] = {
        "memory_text": [str(corpus[i]["text"]) for i in ids],
        "memory_image": [bytes(corpus[i].get("image", b"") or b"") for i in ids],
        "memory_ids": [int(x) for x in stable_int_ids(ids)],
        "memory_scores": [float(s) for s in rec.neighbour_scores[:k]],
        "memory_string_ids": list(ids),
    }
  return out


def load_corpus_items(tfds_name: str, data_dir: Optional[str], wanted: Optional[set] = None,
                      split: str = "train") -> Dict[str, Dict[str, object]]:
  """Reads memory items {id: {"text", "image"}} from a murag_memory_corpus TFDS dataset.

  Args:
    tfds_name: e.g. "murag_memory_corpus/webqa_px224:1.0.0".
    data_dir: TFDS data directory.
    wanted: keep only these string ids (None: all).
    split: corpus split.

  Returns:
    string id -> {"text": str, "image": bytes}.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tasks import builders  # pylint: disable=g-import-not-at-top,unused-import
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  out = {}
  for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    sid = ex["id"].decode("utf-8")
    if wanted is None or sid in wanted:
      out[sid] = {"text": ex["text"].decode("utf-8"), "image": bytes(ex["image"])}
  return out


class _JoinedTable:
  """A neighbour file joined with the memory corpus, as tf constants (host memory).

  Attributes: example_ids [N] str; rows [N, K] row into the item table (-1 pad);
  scores [N, K]; counts [N]; item_text / item_image / item_sid [I] tf.string;
  item_int [I] tf.int32; lookup: question id -> row in [0, N) or -1.
  """

  def __init__(self, path: str, corpus_tfds_name: str, corpus_data_dir: Optional[str],
               k: Optional[int]):
    table = NeighbourTable.from_jsonl(path)
    if not len(table):
      raise ValueError(f"{path}: no records")
    if k is None:
      k = max([len(r.neighbour_ids) for r in table] or [1])
    wanted = {i for r in table for i in r.neighbour_ids[:k]}
    corpus = load_corpus_items(corpus_tfds_name, corpus_data_dir, wanted)
    self.example_ids = [r.example_id for r in table]
    joined = join_neighbours(table, corpus, self.example_ids, k)
    items = sorted(wanted)
    item_row = {s: i for i, s in enumerate(items)}
    n = len(self.example_ids)
    rows = np.full([n, k], -1, np.int32)  # [N, K] row into the item table
    scores = np.zeros([n, k], np.float32)
    counts = np.zeros([n], np.int32)
    for e, ex_id in enumerate(self.example_ids):
      j = joined[ex_id]
      c = len(j["memory_string_ids"])
      counts[e] = c
      rows[e, :c] = [item_row[s] for s in j["memory_string_ids"]]
      scores[e, :c] = j["memory_scores"]
    self.item_text = tf.constant([corpus[s]["text"] for s in items] or [""], tf.string)
    self.item_image = tf.constant([corpus[s]["image"] for s in items] or [b""], tf.string)
    self.item_sid = tf.constant(items or [""], tf.string)
    self.item_int = tf.constant(stable_int_ids(items) if items else [0], tf.int32)
    self.lookup = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(self.example_ids or [""], tf.string),
                                            tf.range(max(n, 1), dtype=tf.int64)),
        default_value=-1)
    self.rows, self.scores, self.counts = (tf.constant(rows), tf.constant(scores),
                                           tf.constant(counts))


def add_hard_negatives(dataset, negatives_path: str, corpus_tfds_name: str,
                       corpus_data_dir: Optional[str] = None,
                       num_negatives: Optional[int] = None):
  """seqio preprocessor: refreshes in-batch negatives with mined hard negatives.

  Beyond the paper (its limitations name the lack of hard-negative mining): the file
  (neighbour-file format, written by murag.build_memory's `hard_negative_tasks`, see
  murag/memory/hard_negatives.py) lists per question id the top-ranked items of the global
  index that are not its positives. Each canonical in-batch example's memory becomes

    its positives (unchanged, first) + the mined items (best first, label 0, their index
    scores) + its own source negatives that are not among the mined items,

  so the feature converter's first M slots hold the positives and the hardest negatives.
  An example without a record fails with an error naming the file.

  Args:
    dataset: canonical examples (tasks/preprocessors.py), e.g. of webqa_to_murag.
    negatives_path: the mined-negatives JSONL file.
    corpus_tfds_name, corpus_data_dir: the memory corpus (texts and images of the items).
    num_negatives: mined items kept per example (None: all in the file).

  Returns:
    The joined dataset.
  """
  if not os.path.isfile(negatives_path):
    raise FileNotFoundError(
        f"hard-negative file '{negatives_path}' not found: mine it with murag.build_memory "
        "(build_memory.hard_negative_tasks) or set MURAG_NEIGHBOURS_DIR")
  t = _JoinedTable(negatives_path, corpus_tfds_name, corpus_data_dir, num_negatives)

  def fn(ex):
    e = t.lookup.lookup(ex["question_id"])
    tf.debugging.assert_non_negative(
        e, message=f"an example has no hard-negative record in {negatives_path}")
    r = t.rows[e][:t.counts[e]]  # [N'] rows of the mined items
    mined_int = tf.gather(t.item_int, r)
    pos = ex["memory_labels"] > 0  # [M']
    dup = tf.reduce_any(tf.equal(ex["memory_ids"][:, None], mined_int[None, :]), axis=1)
    rest = tf.logical_and(tf.logical_not(pos), tf.logical_not(dup))
    out = dict(ex)
    for key, mined in (("memory_text", tf.gather(t.item_text, r)),
                       ("memory_images", tf.gather(t.item_image, r)),
                       ("memory_ids", mined_int),
                       ("memory_scores", t.scores[e][:t.counts[e]]),
                       ("memory_labels", tf.zeros_like(mined_int))):
      v = ex[key]
      out[key] = tf.concat([tf.boolean_mask(v, pos), tf.cast(mined, v.dtype),
                            tf.boolean_mask(v, rest)], 0)
    return out

  return dataset.map(tf.autograph.experimental.do_not_convert(fn),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def add_fixed_neighbours(dataset, neighbours_path: str, corpus_tfds_name: str,
                         corpus_data_dir: Optional[str] = None, k: int = 4):
  """seqio preprocessor: replaces each example's memory by its precomputed top-K neighbours.

  Works on the canonical examples of tasks/preprocessors.py (keyed by `question_id`):
  memory_text / memory_images / memory_ids / memory_scores become the K neighbours (best
  first) joined with the memory corpus; memory_labels marks neighbours that are among the
  example's `positive_ids`. Only the items referenced by the neighbour file are held in host
  memory. An example without a neighbour record fails with an error naming it.

  Args:
    dataset: canonical examples.
    neighbours_path: JSONL neighbour file (see module docstring).
    corpus_tfds_name: memory corpus TFDS name.
    corpus_data_dir: its data directory.
    k: neighbours kept.

  Returns:
    The joined dataset.
  """
  if not os.path.isfile(neighbours_path):
    raise FileNotFoundError(
        f"fixed-retrieval neighbour file '{neighbours_path}' not found: build it with the "
        "global memory (murag.build_memory) or set MURAG_NEIGHBOURS_DIR")
  table = NeighbourTable.from_jsonl(neighbours_path)
  wanted = {i for r in table for i in r.neighbour_ids[:k]}
  corpus = load_corpus_items(corpus_tfds_name, corpus_data_dir, wanted)
  example_ids = [r.example_id for r in table]
  joined = join_neighbours(table, corpus, example_ids, k)
  items = sorted(wanted)
  item_row = {s: i for i, s in enumerate(items)}
  n = len(example_ids)
  rows = np.full([n, k], -1, np.int32)  # [N, K] row into the item table
  scores = np.zeros([n, k], np.float32)
  counts = np.zeros([n], np.int32)
  for e, ex_id in enumerate(example_ids):
    j = joined[ex_id]
    c = len(j["memory_string_ids"])
    counts[e] = c
    rows[e, :c] = [item_row[s] for s in j["memory_string_ids"]]
    scores[e, :c] = j["memory_scores"]
  item_text = tf.constant([corpus[s]["text"] for s in items] or [""], tf.string)
  item_image = tf.constant([corpus[s]["image"] for s in items] or [b""], tf.string)
  item_sid = tf.constant(items or [""], tf.string)
  item_int = tf.constant(stable_int_ids(items) if items else [0], tf.int32)
  lookup = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(example_ids, tf.string),
                                          tf.range(n, dtype=tf.int64)), default_value=-1)
  rows_t, scores_t, counts_t = tf.constant(rows), tf.constant(scores), tf.constant(counts)

  def fn(ex):
    e = lookup.lookup(ex["question_id"])
    tf.debugging.assert_non_negative(
        e, message=f"an example has no neighbour record in {neighbours_path}")
    c = counts_t[e]
    r = rows_t[e][:c]  # [K']
    sid = tf.gather(item_sid, r)
    is_pos = tf.reduce_any(tf.equal(sid[:, None], ex["positive_ids"][None, :]), axis=1)
    out = dict(ex)
    out.update(memory_text=tf.gather(item_text, r), memory_images=tf.gather(item_image, r),
               memory_ids=tf.gather(item_int, r), memory_scores=scores_t[e][:c],
               memory_labels=tf.cast(is_pos, tf.int32))
    return out

  return dataset.map(tf.autograph.experimental.do_not_convert(fn), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
