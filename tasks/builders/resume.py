"""Per-input-file cache that lets a large conversion resume part-way (MuRAG §3.3 data).

LAION-scale pre-training data (§3.3) arrives as thousands of img2dataset shards; converting
one means decoding, resizing and re-encoding every image. TFDS itself only resumes at the
granularity of a whole (dataset, config, version): an interrupted build starts again from
the first shard. This module adds a cache, one entry per input file:

  <cache_dir>/<entry>.records      TFRecord file; each record is one pickled (key, example)
  <cache_dir>/<entry>.done.json    completion marker, written last and atomically

The marker records the input file (path, size, sha256), the builder fingerprint (name,
version, config values, cache format), the records file's size, the number of kept examples
and the skipped-record counts of the file. An entry is reused only if the marker exists and
everything in it still matches; otherwise the file is converted again. Both files are
written under a temporary name and renamed, records first and marker last, so a killed
process never leaves an entry that looks complete (the rename is atomic on a local file
system; on an object store such as GCS it is a copy, but the marker still comes last). The cache lives next to the dataset's version directory
(`<data_dir>/<name>/<config>/<version>.resume_cache/`) and is deleted when the build
succeeds.

The records are pickled because they are this builder's own intermediate output and go
straight back into the TFDS writer; never point a build at a cache directory written by
someone else.
"""
import dataclasses
import hashlib
import json
import os
import pickle
import uuid
from typing import Any, Dict, Iterator, Optional, Tuple

from absl import logging
import tensorflow as tf

CACHE_FORMAT = 1
_HASH_CHUNK = 1 << 22  # 4 MiB


def file_identity(path: str) -> Dict[str, Any]:
  """Size and sha256 of a file (read in chunks; works for any tf.io.gfile path)."""
  digest = hashlib.sha256()
  size = 0
  with tf.io.gfile.GFile(path, "rb") as f:
    while True:
      chunk = f.read(_HASH_CHUNK)
      if not chunk:
        break
      size += len(chunk)
      digest.update(chunk)
  return {"path": path, "size": size, "sha256": digest.hexdigest()}


@dataclasses.dataclass
class FileReport:
  """What one input file gave: sent to the builder's `on_file_done` hook.

  Attributes:
    input_file: path of the raw input file.
    num_ok: examples kept from it.
    bad: reason -> number of skipped records.
    first_bad: reason -> "record-key detail" of the first skipped record.
    reused: True if the examples came from the resume cache (not converted again).
  """
  input_file: str
  num_ok: int
  bad: Dict[str, int]
  first_bad: Dict[str, str]
  reused: bool


class FileCache:
  """Cache of converted examples, one entry per raw input file.

  Args:
    cache_dir: directory of the entries (created on first write).
    fingerprint: JSON-serialisable description of everything besides the input file that
      determines the examples (builder name, version, config values).
  """

  def __init__(self, cache_dir: str, fingerprint: Dict[str, Any]):
    self.cache_dir = cache_dir
    self.fingerprint = dict(fingerprint, cache_format=CACHE_FORMAT)

  def _paths(self, input_path: str) -> Tuple[str, str]:
    tag = hashlib.sha1(os.path.abspath(input_path).encode("utf-8")).hexdigest()[:12]
    base = os.path.join(self.cache_dir, f"{os.path.basename(input_path)}.{tag}")
    return base + ".records", base + ".done.json"

  def marker_path(self, input_path: str) -> str:
    return self._paths(input_path)[1]

  def load(self, input_path: str) -> Optional[Dict[str, Any]]:
    """The completion marker of `input_path` if its entry is complete and still valid."""
    records, marker_path = self._paths(input_path)
    if not tf.io.gfile.exists(marker_path):
      return None
    try:
      with tf.io.gfile.GFile(marker_path) as f:
        marker = json.load(f)
    except (json.JSONDecodeError, OSError) as e:
      logging.warning("resume cache: unreadable marker %s (%s); converting again",
                      marker_path, e)
      return None
    why = None
    if marker.get("fingerprint") != self.fingerprint:
      why = "builder version or config changed"
    elif not tf.io.gfile.exists(records):
      why = "records file missing"
    elif tf.io.gfile.stat(records).length != marker.get("records_size"):
      why = "records file size differs"
    else:
      current = tf.io.gfile.stat(input_path).length
      if current != marker["input"]["size"]:
        why = "input size changed"
      elif file_identity(input_path)["sha256"] != marker["input"]["sha256"]:
        why = "input sha256 changed"
    if why:
      logging.info("resume cache: not reusing %s: %s", input_path, why)
      return None
    return marker

  def iter_records(self, input_path: str) -> Iterator[Tuple[str, dict]]:
    """The cached (key, example) pairs of `input_path`, in their original order."""
    records, _ = self._paths(input_path)
    for raw in tf.data.TFRecordDataset(records).as_numpy_iterator():
      yield pickle.loads(raw)

  def writer(self, input_path: str) -> "EntryWriter":
    return EntryWriter(self, input_path)


class EntryWriter:
  """Writes one cache entry; nothing counts as done until `commit` returns."""

  def __init__(self, cache: FileCache, input_path: str):
    self._cache = cache
    self._input_path = input_path
    self._records, self._marker = cache._paths(input_path)  # pylint: disable=protected-access
    self._tmp = f"{self._records}.tmp{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(cache.cache_dir)
    self._identity = file_identity(input_path)
    self._writer = tf.io.TFRecordWriter(self._tmp)

  def add(self, key: str, example: dict):
    self._writer.write(pickle.dumps((key, example), protocol=pickle.HIGHEST_PROTOCOL))

  def commit(self, num_ok: int, bad: Dict[str, int], first_bad: Dict[str, str]) -> dict:
    """Closes the records, then writes the completion marker (both by atomic rename)."""
    self._writer.close()
    tf.io.gfile.rename(self._tmp, self._records, overwrite=True)
    marker = {"input": self._identity, "fingerprint": self._cache.fingerprint,
              "records_size": tf.io.gfile.stat(self._records).length,
              "num_ok": num_ok, "bad": bad, "first_bad": first_bad}
    tmp = f"{self._marker}.tmp{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(tmp, "w") as f:
      json.dump(marker, f, indent=1)
    tf.io.gfile.rename(tmp, self._marker, overwrite=True)
    return marker

  def abort(self):
    self._writer.close()
    if tf.io.gfile.exists(self._tmp):
      tf.io.gfile.remove(self._tmp)


def read_marker(cache: FileCache, input_path: str) -> Dict[str, Any]:
  """The marker of an entry that must exist (after a finished generation)."""
  path = cache.marker_path(input_path)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"resume cache: no completion marker '{path}' for input "
                            f"'{input_path}' after generation finished")
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
