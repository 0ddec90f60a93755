"""The TFDS builders convert every raw format of the synthetic world."""
import io
import json
import os

import numpy as np
from PIL import Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tarfile
import tensorflow_datasets as tfds

from tasks import builders
from tasks.neighbours import stable_int_ids
from tests.tasks import murag_data_helpers as helpers


def _counts():
  with open(os.path.join(helpers.world_dir(), "world_manifest.json")) as f:
    return json.load(f)["counts"]


def _split_sizes(b):
  return {k: v.num_examples for k, v in b.info.splits.items()}


def _check_image(jpeg, size=32):
  img = np.asarray(Image.open(io.BytesIO(jpeg)))
  assert img.shape == (size, size, 3) and img.dtype == np.uint8


def test_every_source_converts_with_the_expected_sizes():
  c = _counts()
  val_webqa = helpers.built("webqa")
  assert sum(_split_sizes(val_webqa).values()) == c["webqa_questions"]
  assert _split_sizes(helpers.built("laion")) == {"train": c["laion_pairs"]}
  assert _split_sizes(helpers.built("cc")) == {"train": c["cc_pairs"]}
  assert _split_sizes(helpers.built("paq")) == {"train": c["paq_questions"]}
  assert _split_sizes(helpers.built("vqa")) == {"train": c["vqa_train_questions"],
                                                "validation": c["vqa_val_questions"]}
  assert _split_sizes(helpers.built("mmqa")) == {"train": c["mmqa_train"],
                                                 "validation": c["mmqa_dev"]}
  assert _split_sizes(helpers.built("memory_corpus", "webqa_px32")) == {
      "train": c["webqa_images"] + c["webqa_snippets"]}
  assert _split_sizes(helpers.built("memory_corpus", "mmqa_px32")) == {
      "train": c["mmqa_images"] + c["mmqa_texts"]}
  for source in ("webqa", "laion", "cc", "paq", "vqa", "mmqa"):
    assert helpers.built(source).bad_records.as_dict() == {}


def test_records_have_resized_jpegs_and_stable_ids():
  laion = next(iter(tfds.as_numpy(helpers.built("laion").as_dataset(split="train"))))
  _check_image(laion["image"])
  assert laion["int_id"] == stable_int_ids([laion["id"].decode()])[0]
  vqa = next(iter(tfds.as_numpy(helpers.built("vqa").as_dataset(split="validation"))))
  _check_image(vqa["image"])
  assert len(vqa["answers"]) == 10 and len(vqa["captions"]) >= 1
  for ex in tfds.as_numpy(helpers.built("webqa").as_dataset(split="validation").take(5)):
    s = ex["sources"]
    np.testing.assert_array_equal(s["int_id"], stable_int_ids([i.decode() for i in s["id"]]))
    for img, is_image in zip(s["image"], s["is_image"]):
      if is_image:
        _check_image(img)
      else:
        assert img == b""
    assert s["positive"][0] == 1  # positives first
  mem = list(tfds.as_numpy(helpers.built("memory_corpus", "mmqa_px32").as_dataset(split="train")))
  assert {m["source"].decode() for m in mem} == {"mmqa_text", "mmqa_image"}


def test_parquet_only_shards_and_array_record(tmp_path):
  """img2dataset `output_format=parquet` shards (images inside) and ArrayRecord output."""
  manual = tmp_path / "cc"
  manual.mkdir()
  rows = {"key": [], "caption": [], "url": [], "status": [], "jpg": []}
  with tarfile.open(os.path.join(helpers.world_dir(), "cc", "00000.tar")) as t:
    members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
  keys = sorted({os.path.splitext(n)[0] for n in members})[:10]
  for k in keys:
    rows["key"].append(k)
    rows["caption"].append(members[f"{k}.txt"].decode())
    rows["url"].append(f"https://cc.example/{k}.jpg")
    rows["status"].append("success" if k != keys[-1] else "failed_to_download")
    rows["jpg"].append(members[f"{k}.jpg"] if k != keys[-1] else None)
  pq.write_table(pa.table(rows), str(manual / "00000.parquet"))
  b = builders.build("cc", manual_dir=str(manual), data_dir=str(tmp_path / "tfds"),
                     config="px32", file_format="array_record")
  assert b.info.splits["train"].num_examples == 9  # the failed download is not a record
  source = b.as_data_source(split="train")          # random access (ArrayRecord)
  assert len(source) == 9
  _check_image(source[4]["image"])
  assert source[4]["caption"].decode() in rows["caption"]


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="WebQA_train_val.json"):
    builders.build("webqa", manual_dir=str(tmp_path), data_dir=str(tmp_path / "tfds"),
                   config="px32")
  with pytest.raises(FileNotFoundError, match="no \\*.tar or \\*.parquet"):
    builders.build("laion", manual_dir=str(tmp_path), data_dir=str(tmp_path / "tfds"),
                   config="px32")
  with pytest.raises(ValueError, match="unknown source"):
    builders.build("imagenet", manual_dir=str(tmp_path), data_dir=str(tmp_path))
  if builders.common.beam is None:
    with pytest.raises(ImportError, match="apache-beam"):
      builders.build("laion", manual_dir=str(tmp_path), data_dir=str(tmp_path),
                     config="px32", use_beam=True)
