"""LAION and Conceptual Captions builders (MuRAG §3.3 pre-training: (image, caption) pairs).

Input: the img2dataset output of either source, in the manual directory:

  {00000..}.tar       webdataset shards: per sample <key>.jpg, <key>.txt (caption),
                      <key>.json (url, width, height, ...)
  {00000..}.parquet   per-shard metadata (key, url, caption, status, ...); with
                      img2dataset `output_format=parquet` it also holds a `jpg` column,
                      and such parquet-only shards are read directly.

LAION gets the paper's filters (§3.3): captions containing an http(s) URL and images wider or
taller than 1000 px are dropped (counted as `filtered_url` / `filtered_size`; not errors).
"""
import json
import os
import re
import tarfile
from typing import Iterator, List, Tuple

import numpy as np
import pyarrow.parquet as pq
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks.builders import common
from tasks.neighbours import stable_int_id

_URL_RE = re.compile(r"https?://|www\.", re.IGNORECASE)
_MAX_SIDE = 1000


def _split_key(member_name: str) -> Tuple[str, str]:
  base = os.path.basename(member_name)
  key, _, ext = base.partition(".")
  return key, ext.lower()


def iter_webdataset_tar(path: str) -> Iterator[Tuple[str, dict]]:
  """Yields (key, {ext: bytes}) groups of a webdataset tar.

  Raises:
    common.BadRecord("truncated_file"): the tar ends mid-member; groups read before the
      damaged one have been yielded already.
  """
  group_key, group = None, {}
  try:
    with tf.io.gfile.GFile(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        key, ext = _split_key(member.name)
        data = tar.extractfile(member).read()
        if len(data) != member.size:
          raise tarfile.ReadError(f"member {member.name} truncated")
        if key != group_key and group_key is not None:
          yield group_key, group
          group = {}
        group_key = key
        group[ext] = data
      end = tar.offset
      # A complete tar ends with two zero blocks; stream mode silently stops at a file that
      # was cut at a member boundary, so check the end-of-archive marker explicitly.
      f.seek(end)
      marker = f.read(2 * tarfile.BLOCKSIZE)
      if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
        raise tarfile.ReadError(f"no end-of-archive marker at byte {end} (file cut short)")
  except (tarfile.ReadError, EOFError, OSError) as e:
    raise common.BadRecord("truncated_file", f"{path}: {e}") from e
  if group_key is not None:
    yield group_key, group


class _ImageCaptionBuilder(common.MuRAGBuilder, skip_registration=True):
  """Shared reader for img2dataset image-caption shards."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  APPLY_PAPER_FILTERS = False

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "int_id": np.int32,
            "image": common.bytes_feature(),
            "caption": tfds.features.Text(),
            "url": tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage="https://github.com/rom1504/img2dataset",
    )

  def _input_files(self, dl_manager) -> List[str]:
    root = os.fspath(dl_manager.manual_dir)
    tars = sorted(tf.io.gfile.glob(os.path.join(root, "*.tar")))
    tar_stems = {os.path.splitext(t)[0] for t in tars}
    parquet_only = [p for p in sorted(tf.io.gfile.glob(os.path.join(root, "*.parquet")))
                    if os.path.splitext(p)[0] not in tar_stems]
    files = tars + parquet_only
    if not files:
      raise FileNotFoundError(f"{self.name}: no *.tar or *.parquet shards in manual dir "
                              f"'{root}'. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return files

  def _split_generators(self, dl_manager):
    files = self._input_files(dl_manager)
    self._resumable_inputs = list(files)  # their counts are collected from the cache markers
    return {"train": self._generate_examples(files)}

  def _generate_examples(self, files):
    if self._use_beam:
      beam = common.beam
      return (beam.Create(files)
              | "SpreadShards" >> beam.Reshuffle()
              | "ConvertShards" >> beam.FlatMap(self._examples_of_file))
    return self._iter_files(files)

  def _iter_files(self, files):
    for path in files:
      yield from self._examples_of_file(path)

  def _examples_of_file(self, path: str):
    """All (key, example) of one shard, converted once and then reused from the cache."""
    return self.resumable_examples(path, self._convert_file)

  def _convert_file(self, path: str, counter: common.BadRecordCounter):
    """Decodes one shard; bad records are counted in `counter`, not raised."""
    shard = os.path.splitext(os.path.basename(path))[0]
    try:
      for key, raw in self._raw_records(path):
        try:
          ex = self._make_example(shard, key, raw)
        except common.BadRecord as e:
          counter.add(path, e.reason, e.detail, key)
          continue
        yield ex["id"], ex
    except common.BadRecord as e:  # the file itself is damaged: keep what was read
      counter.add(path, e.reason, e.detail)

  def _raw_records(self, path: str):
    if path.endswith(".tar"):
      yield from iter_webdataset_tar(path)
      return
    table = pq.read_table(path)
    cols = set(table.column_names)
    if "jpg" not in cols:
      raise common.BadRecord("malformed_record", f"{path}: parquet shard without a tar "
                             "next to it must have a 'jpg' column (img2dataset parquet output)")
    for row in table.to_pylist():
      if row.get("status", "success") != "success":
        continue
      meta = {k: v for k, v in row.items() if k not in ("jpg", "caption")}
      yield str(row.get("key") or len(meta)), {
          "jpg": row.get("jpg") or b"",
          "txt": (row.get("caption") or "").encode("utf-8"),
          "json": json.dumps(meta, default=str).encode("utf-8")}

  def _make_example(self, shard: str, key: str, raw: dict) -> dict:
    img = raw.get("jpg") or raw.get("jpeg") or raw.get("png") or raw.get("webp")
    if img is None:
      raise common.BadRecord("missing_image", f"sample {key} has no image member")
    if "txt" not in raw:
      raise common.BadRecord("missing_caption", f"sample {key} has no .txt member")
    try:
      caption = raw["txt"].decode("utf-8")
      meta = json.loads(raw["json"].decode("utf-8")) if raw.get("json") else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise common.BadRecord("malformed_record", f"sample {key}: {e}") from e
    caption = self.text(caption, "caption", "missing_caption")
    if self.APPLY_PAPER_FILTERS:
      if _URL_RE.search(caption):
        raise common.BadRecord("filtered_url", f"sample {key}: caption contains a URL")
      w = meta.get("original_width") or meta.get("width") or 0
      h = meta.get("original_height") or meta.get("height") or 0
      if max(int(w or 0), int(h or 0)) > _MAX_SIDE:
        raise common.BadRecord("filtered_size", f"sample {key}: {w}x{h} > {_MAX_SIDE}")
    string_id = f"{self.name}/{shard}/{key}"
    return {"id": string_id, "int_id": stable_int_id(string_id), "image": self.image(img),
            "caption": caption, "url": str(meta.get("url") or "")}


class MuragLaion(_ImageCaptionBuilder):
  """LAION image / alt-text pairs, with the paper's URL and >1000 px filters."""

  name = "murag_laion"
  APPLY_PAPER_FILTERS = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download LAION with img2dataset (output_format=webdataset, or parquet) and place the
  shards {00000..}.tar (+ .parquet / _stats.json) directly in the manual directory,
  e.g. ~/tensorflow_datasets/downloads/manual/murag_laion/ or pass
  --manual_dir to `python -m tasks.builders`.
  """


class MuragCc(_ImageCaptionBuilder):
  """Conceptual Captions (3M + 12M) image / alt-text pairs."""

  name = "murag_cc"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download CC3M / CC12M with img2dataset (output_format=webdataset, or parquet) and place
  the shards {00000..}.tar (+ .parquet) directly in the manual directory
  (~/tensorflow_datasets/downloads/manual/murag_cc/ or --manual_dir).
  """
