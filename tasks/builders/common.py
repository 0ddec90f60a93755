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

Apache Beam is an optional dependency (not installed in this environment; its protobuf pin
conflicts with the stack). The image-caption and PAQ builders take `use_beam=True` to return
a Beam PTransform from `_generate_examples`, so a LAION-scale build runs on a distributed
runner; without it they use the plain generator.
"""
import collections
import dataclasses
import io
import json
import os
from typing import Dict, Optional

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds

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

  def __init__(self, *, use_beam: bool = False, **kwargs):
    if use_beam and beam is None:
      raise ImportError(f"{type(self).__name__}(use_beam=True) needs apache-beam, which is "
                        "not installed (pip install apache-beam; needs protobuf<7).")
    self._use_beam = use_beam
    self.bad_records = BadRecordCounter()
    super().__init__(**kwargs)

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

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    self.bad_records = BadRecordCounter()
    super()._download_and_prepare(dl_manager, download_config)
    # self.data_dir is the (temporary, then renamed) directory of this version.
    self.bad_records.write(os.path.join(self.data_dir, BAD_RECORDS_FILENAME))
    logging.info("%s: bad records %s", self.name, self.bad_records.as_dict())


def read_bad_record_report(builder: tfds.core.DatasetBuilder) -> dict:
  """Reads the `bad_records.json` written when `builder` was prepared."""
  path = os.path.join(builder.data_dir, BAD_RECORDS_FILENAME)
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
