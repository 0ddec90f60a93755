"""The Apache Beam path of the large converters equals the plain generator (DirectRunner).

apache-beam is an optional extra that cannot be installed next to the pinned stack (see
docs/readme/data.md), so these tests are skipped in the main environment. They were run in a
separate environment with apache-beam installed.
"""
import json
import os
import shutil

import numpy as np
import pytest

beam = pytest.importorskip("apache_beam")

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from tasks import builders  # pylint: disable=g-import-not-at-top
from tasks.builders import common  # pylint: disable=g-import-not-at-top
from tasks.builders import image_caption  # pylint: disable=g-import-not-at-top
from tests.tasks import murag_data_helpers as helpers  # pylint: disable=g-import-not-at-top
from tests.tasks.test_bad_records import LONG, _rewrite_tar  # pylint: disable=g-import-not-at-top


def _options():
  return beam.options.pipeline_options.PipelineOptions(
      ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"])


def _examples(builder):
  return list(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False)))


def _assert_same_build(beam_b, plain_b):
  got, want = _examples(beam_b), _examples(plain_b)
  assert len(got) == len(want) == plain_b.info.splits["train"].num_examples > 0
  for a, b in zip(got, want):  # same examples in the same order
    np.testing.assert_equal(a, b)
  assert beam_b.bad_records.as_dict() == plain_b.bad_records.as_dict()
  beam_report = common.read_bad_record_report(beam_b)
  plain_report = common.read_bad_record_report(plain_b)
  assert beam_report["per_file"] == plain_report["per_file"]
  assert beam_report["total"] == plain_report["total"]
  assert not os.path.exists(beam_b.resume_cache_dir)


def _both(source, manual, tmp_path):
  kw = {"manual_dir": str(manual), "config": "px32"}
  on_beam = builders.build(source, data_dir=str(tmp_path / "beam"), use_beam=True,
                           beam_options=_options(), **kw)
  plain = builders.build(source, data_dir=str(tmp_path / "plain"), **kw)
  return on_beam, plain


def test_laion_beam_equals_generator(tmp_path):
  src = os.path.join(helpers.world_dir(), "laion")
  manual = tmp_path / "laion"
  manual.mkdir()
  with_url = {}

  def edit(name, data):
    key, ext = os.path.splitext(name)
    if ext == ".jpg" and key.endswith("3"):
      return b"\xff\xd8garbage"                         # corrupt JPEG
    if ext == ".txt" and key.endswith("5"):
      return None                                       # no caption
    if ext == ".txt" and key.endswith("7") and not with_url:
      with_url[key] = True
      return b"see https://example.com for more"        # paper filter
    return data
  _rewrite_tar(os.path.join(src, "00000.tar"), str(manual / "00000.tar"), edit)
  whole = open(os.path.join(src, "00001.tar"), "rb").read()
  (manual / "00001.tar").write_bytes(whole[:len(whole) * 2 // 3])  # truncated tar
  on_beam, plain = _both("laion", manual, tmp_path)
  counts = plain.bad_records.as_dict()[str(manual / "00000.tar")]
  assert counts["undecodable_image"] >= 1 and counts["missing_caption"] >= 1
  assert counts["filtered_url"] == 1
  assert plain.bad_records.as_dict()[str(manual / "00001.tar")] == {"truncated_file": 1}
  _assert_same_build(on_beam, plain)


def test_paq_beam_equals_generator(tmp_path):
  paq = tmp_path / "paq"
  shutil.copytree(os.path.join(helpers.world_dir(), "paq"), paq)
  lines = (paq / "PAQ.jsonl").read_text().splitlines()
  lines[0] = json.dumps({"question": "  ", "answer": ["x"]})            # empty question
  lines[1] = "{not json"                                                # malformed line
  lines[2] = json.dumps({"question": "who wrote " + LONG, "answer": ["y"]})  # too long
  lines.append(json.dumps({"question": "a question without metadata", "answer": ["z"]}))
  (paq / "PAQ.jsonl").write_text("\n".join(lines) + "\n")
  with open(paq / "PAQ.metadata.jsonl", "a") as f:
    f.write(json.dumps({"question": "x", "answers": []}) + "\n")        # no passage id
  with open(paq / "psgs_w100.tsv", "a") as f:
    f.write("only-two\tcolumns\n")                                       # malformed row
  on_beam, plain = _both("paq", paq, tmp_path)
  assert plain.bad_records.as_dict() == {
      str(paq / "PAQ.jsonl"): {"empty_question": 1, "malformed_record": 1,
                               "text_too_long": 1, "missing_passage": 1},
      str(paq / "PAQ.metadata.jsonl"): {"malformed_record": 1},
      str(paq / "psgs_w100.tsv"): {"malformed_record": 1}}
  _assert_same_build(on_beam, plain)


def test_beam_build_resumes_from_the_cache(tmp_path, monkeypatch):
  """An interrupted build is finished by a Beam build that reuses the converted shards."""
  src = os.path.join(helpers.world_dir(), "laion")
  manual = tmp_path / "laion"
  manual.mkdir()
  for name in ("00000.tar", "00001.tar"):
    shutil.copy(os.path.join(src, name), manual / name)
  calls = []
  convert = image_caption._ImageCaptionBuilder._convert_file

  def counting(self, path, counter):
    calls.append(os.path.basename(path))
    yield from convert(self, path, counter)
  monkeypatch.setattr(image_caption._ImageCaptionBuilder, "_convert_file", counting)

  class Stop(Exception):
    pass

  def stop(report):
    raise Stop(report.input_file)
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(Stop):  # after the first shard is cached
    builders.build("laion", manual_dir=str(manual), data_dir=data_dir, config="px32",
                   on_file_done=stop)
  assert calls == ["00000.tar"]
  calls.clear()
  on_beam = builders.build("laion", manual_dir=str(manual), data_dir=data_dir,
                           config="px32", use_beam=True, beam_options=_options())
  assert calls == ["00001.tar"]  # the DirectRunner (in memory) shares this process
  plain = builders.build("laion", manual_dir=str(manual), data_dir=str(tmp_path / "plain"),
                         config="px32")
  _assert_same_build(on_beam, plain)
