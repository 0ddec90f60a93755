"""Shared parts of the MuRAG TFDS builders (data of MuRAG §3.3 pre-training, §3.4 fine-tuning).

Every builder reads raw files the user placed in its manual directory (it never downloads),
decodes each image, resizes it to the builder config's resolution (§4.1: 224 x 224) and
stores it re-encoded as JPEG bytes. A record that cannot be used is skipped, counted under
(input file, reason) and reported; the build continues. Reasons used across builders:

  undecodable_image   image bytes PIL cannot decode (corrupt / truncated JPEG)
  missing_image       the record points at an image that is not there
  missing_caption     image-caption record without (non-empty) text
  empty_question      QA record whose question is empty
  missing_answer      QA record without answers
  text_too_long       a text field longer than the config's `max_text_chars`
  malformed_record    unparsable JSON / TSV line or missing required field
  truncated_file      the input file ends in the middle of a record (e.g. truncated tar)
  missing_passage     PAQ record whose passage id is not in psgs_w100.tsv

The report is logged when each input file is done, kept on the builder
(`builder.bad_records.as_dict()`) and written as `bad_records.json` next to the dataset's
`dataset_info.json`.

Apache Beam is an optional dependency: every apache-beam release caps protobuf, pyarrow or
pillow below the versions pinned in constraints/lock.txt, so it is not installed in the main
environment. The image-caption and PAQ builders take `use_beam=True` to return a Beam
PTransform from `_generate_examples`, so a LAION-scale build runs on a distributed runner;
without it they use the plain generator. Under Beam the workers hold pickled copies of the
builder, so skipped-record counts travel back through files (the resume cache markers, or a
report written by the pipeline) and `_after_generation` merges them into `bad_records`.

Builders whose raw input is many files (LAION, CC) convert them through
`MuRAGBuilder.resumable_examples`, which keeps a per-input-file cache (`resume.py`) so an
interrupted build resumes part-way.
"""
import collections
import dataclasses
import io
import json
import os
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks.builders import resume

try:  # Optional: only needed for distributed builds.
  import apache_beam as beam  # pytype: disable=import-error
except ImportError:  # pragma: no cover - depends on the environment
  beam = None

BAD_RECORDS_FILENAME = "bad_records.json"
BEAM_NAMESPACE = "murag_bad_records"


class BadRecord(Exception):
  """Raised while parsing one record; the record is skipped and counted under `reason`."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


class BadRecordCounter:
  """Counts skipped records per (input file, reason)."""

  def __init__(self):
    self._counts: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    self._examples: Dict[str, Dict[str, str]] = collections.defaultdict(dict)

  def add(self, input_file: str, reason: str, detail: str = "", record_key: str = ""):
    self._counts[input_file][reason] += 1
    self._examples[input_file].setdefault(reason, f"{record_key} {detail}".strip())
    if beam is not None:  # visible in the Beam runner's metrics as well
      beam.metrics.Metrics.counter(BEAM_NAMESPACE, reason).inc()

  def merge(self, input_file: str, bad: Dict[str, int], first_bad: Dict[str, str]):
    """Adds counts computed elsewhere (a cache marker, a Beam worker) for `input_file`."""
    for reason, n in bad.items():
      self._counts[input_file][reason] += int(n)
      if reason in first_bad:
        self._examples[input_file].setdefault(reason, first_bad[reason])

  def file_counts(self, input_file: str) -> Tuple[Dict[str, int], Dict[str, str]]:
    """(reason -> count, reason -> first example) of one input file."""
    return (dict(self._counts.get(input_file, {})), dict(self._examples.get(input_file, {})))

  def records(self) -> List[Tuple[str, str, int, str]]:
    """(input file, reason, count, first example) rows, sorted."""
    return [(f, r, n, self._examples[f].get(r, ""))
            for f, c in sorted(self._counts.items()) for r, n in sorted(c.items())]

  def total(self, reason: Optional[str] = None) -> int:
    return sum(c[reason] if reason else sum(c.values()) for c in self._counts.values())

  def as_dict(self) -> Dict[str, Dict[str, int]]:
    """input file -> reason -> count (files without skipped records are absent)."""
    return {f: dict(c) for f, c in sorted(self._counts.items()) if c}

  def log_file(self, input_file: str, num_ok: int):
    bad = dict(self._counts.get(input_file, {}))
    if bad:
      logging.warning("%s: kept %d records, skipped %s (first of each: %s)", input_file,
                      num_ok, bad, self._examples[input_file])
    else:
      logging.info("%s: kept %d records, skipped none", input_file, num_ok)

  def write(self, path: str):
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
      json.dump({"total": self.total(), "per_file": self.as_dict(),
                 "first_example": {k: v for k, v in self._examples.items() if v}}, f, indent=1)


@dataclasses.dataclass
class MuRAGBuilderConfig(tfds.core.BuilderConfig):
  """Resolution and text limits of a build.

  Attributes:
    image_size: stored images are resized to image_size x image_size.
    jpeg_quality: quality of the re-encoded JPEG.
    max_text_chars: records with a longer text field are skipped (`text_too_long`).
  """
  image_size: int = 224
  jpeg_quality: int = 90
  max_text_chars: int = 4096


def resolution_configs(**extra):
  """The standard configs: px224 (default, the paper's resolution) and small test ones."""
  return [MuRAGBuilderConfig(name=f"px{s}", description=f"images resized to {s}x{s}",
                             image_size=s, **extra) for s in (224, 64, 32)]


def reencode_image(raw: bytes, image_size: int, quality: int = 90) -> bytes:
  """Decodes any PIL-readable image, resizes it to a square and returns JPEG bytes.

  Args:
    raw: encoded image bytes.
    image_size: output height and width.
    quality: JPEG quality.

  Returns:
    JPEG bytes of an RGB image_size x image_size image.

  Raises:
    BadRecord: the bytes are empty or cannot be decoded.
  """
  if not raw:
    raise BadRecord("missing_image", "empty image bytes")
  try:
    with Image.open(io.BytesIO(raw)) as img:
      img.load()  # forces a full decode, so truncated files fail here
      img = img.convert("RGB")
      if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BICUBIC)
      out = io.BytesIO()
      img.save(out, format="JPEG", quality=quality)
      return out.getvalue()
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadRecord("undecodable_image", str(e)) from e


def check_text(text, field: str, max_chars: int, empty_reason: str) -> str:
  """Returns the stripped text or raises BadRecord (empty / too long)."""
  if text is None or not isinstance(text, str) or not text.strip():
    raise BadRecord(empty_reason, f"'{field}' is empty or missing")
  text = text.strip()
  if len(text) > max_chars:
    raise BadRecord("text_too_long", f"'{field}' has {len(text)} > {max_chars} characters")
  return text


def bytes_feature():
  return tfds.features.Tensor(shape=(), dtype=np.object_)


class MuRAGBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base: manual-dir builder with resolution configs and a bad-record report."""

  BUILDER_CONFIGS = resolution_configs()
  DEFAULT_CONFIG_NAME = "px224"

  def __init__(self, *, use_beam: bool = False,
               on_file_done: Optional[Callable[[resume.FileReport], None]] = None,
               **kwargs):
    """Creates the builder.

    Args:
      use_beam: return a Beam PTransform from `_generate_examples` (laion, cc, paq).
      on_file_done: called with a `resume.FileReport` after each input file of a resumable
        builder (progress reporting, tests); under Beam it runs on the workers.
      **kwargs: tfds.core.DatasetBuilder arguments (data_dir, config, file_format, ...).
    """
    if use_beam and beam is None:
      raise ImportError(f"{type(self).__name__}(use_beam=True) needs apache-beam, which is "
                        "not installed (pip install -e .[beam] in an environment with "
                        "protobuf<7, pyarrow<26, pillow<13; see docs/readme/data.md).")
    self._use_beam = use_beam
    self._on_file_done = on_file_done
    self._resumable_inputs: List[str] = []
    self.bad_records = BadRecordCounter()
    super().__init__(**kwargs)
    # TFDS pickles a builder as its constructor arguments (Beam workers re-run __init__).
    self._original_state.update(use_beam=use_beam, on_file_done=on_file_done)
    # Outside the version directory, which TFDS replaces by a temporary one while preparing.
    self.resume_cache_dir = os.fspath(self.data_dir).rstrip("/") + ".resume_cache"

  @property
  def image_size(self) -> int:
    return self.builder_config.image_size

  def manual_path(self, dl_manager, *parts, required=True) -> str:
    path = os.path.join(os.fspath(dl_manager.manual_dir), *parts)
    if required and not tf.io.gfile.exists(path):
      raise FileNotFoundError(
          f"{self.name}: expected '{path}' in the manual directory. "
          f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return path

  def image(self, raw: bytes) -> bytes:
    return reencode_image(raw, self.image_size, self.builder_config.jpeg_quality)

  def text(self, value, field: str, empty_reason: str = "malformed_record") -> str:
    return check_text(value, field, self.builder_config.max_text_chars, empty_reason)

  def file_cache(self) -> resume.FileCache:
    """The per-input-file resume cache of this (builder, config, version)."""
    cfg = self.builder_config
    base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
              if f.name not in base}
    return resume.FileCache(self.resume_cache_dir, {
        "builder": self.name, "version": str(self.version), "config": cfg.name,
        "config_values": values, "pillow": Image.__version__})

  def resumable_examples(self, path: str, convert: Callable[[str, "BadRecordCounter"],
                                                            Iterable[Tuple[str, dict]]]
                         ) -> Iterator[Tuple[str, dict]]:
    """(key, example) of one input file, converted once and cached (see resume.py).

    Args:
      path: the raw input file.
      convert: convert(path, counter) yields the file's (key, example) pairs and counts its
        skipped records in `counter`. It is not called when a valid cache entry exists.

    Yields:
      The same (key, example) pairs in the same order, whether converted or reused.
    """
    cache = self.file_cache()
    marker = cache.load(path)
    reused = marker is not None
    if reused:
      yield from cache.iter_records(path)
    else:
      counter = BadRecordCounter()
      writer = cache.writer(path)
      n_ok = 0
      try:
        for key, ex in convert(path, counter):
          writer.add(key, ex)
          n_ok += 1
          yield key, ex
      except BaseException:  # including GeneratorExit: leave no entry behind
        writer.abort()
        raise
      marker = writer.commit(n_ok, *counter.file_counts(path))
    report = resume.FileReport(path, marker["num_ok"], marker["bad"], marker["first_bad"],
                               reused)
    log = logging.warning if report.bad else logging.info
    log("%s: %s%s, kept %d records, skipped %s", self.name, path,
        " (reused from the resume cache)" if reused else "", report.num_ok,
        report.bad or "none")
    if self._on_file_done is not None:
      self._on_file_done(report)

  def _after_generation(self):
    """Collects the per-file counts of resumable inputs (they may come from Beam workers)."""
    if self._resumable_inputs:
      cache = self.file_cache()
      for path in self._resumable_inputs:
        marker = resume.read_marker(cache, path)
        self.bad_records.merge(path, marker["bad"], marker["first_bad"])

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    self.bad_records = BadRecordCounter()
    self._resumable_inputs = []
    super()._download_and_prepare(dl_manager, download_config)
    self._after_generation()
    # self.data_dir is the (temporary, then renamed) directory of this version.
    self.bad_records.write(os.path.join(self.data_dir, BAD_RECORDS_FILENAME))
    logging.info("%s: bad records %s", self.name, self.bad_records.as_dict())
    if tf.io.gfile.exists(self.resume_cache_dir):  # the build is complete: drop the cache
      tf.io.gfile.rmtree(self.resume_cache_dir)


def read_bad_record_report(builder: tfds.core.DatasetBuilder) -> dict:
  """Reads the `bad_records.json` written when `builder` was prepared."""
  path = os.path.join(builder.data_dir, BAD_RECORDS_FILENAME)
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
