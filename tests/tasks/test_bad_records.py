"""Bad raw records are skipped, counted per input file and reported; the build continues."""
import base64
import io
import json
import os
import shutil
import tarfile

from tasks import builders
from tasks.builders import common
from tests.tasks import murag_data_helpers as helpers

LONG = "word " * 1000  # 5000 characters > max_text_chars (4096)


def _rewrite_tar(src, dst, edit):
  """Copies a webdataset tar, letting edit(name, data) return new bytes or None (drop)."""
  with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
    for m in tin.getmembers():
      data = edit(m.name, tin.extractfile(m).read())
      if data is None:
        continue
      info = tarfile.TarInfo(m.name)
      info.size = len(data)
      tout.addfile(info, io.BytesIO(data))


def test_image_caption_shards(tmp_path):
  src = os.path.join(helpers.world_dir(), "laion")
  manual = tmp_path / "laion"
  manual.mkdir()
  with tarfile.open(os.path.join(src, "00000.tar")) as t:
    keys = sorted({os.path.splitext(n)[0] for n in t.getnames()})
  corrupt, no_caption, too_long = keys[0], keys[1], keys[2]

  def edit(name, data):
    key, ext = os.path.splitext(name)
    if key == corrupt and ext == ".jpg":
      return b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20   # corrupt JPEG
    if key == no_caption and ext == ".txt":
      return None                                        # record without a caption
    if key == too_long and ext == ".txt":
      return LONG.encode()                               # over-long text
    return data
  _rewrite_tar(os.path.join(src, "00000.tar"), str(manual / "00000.tar"), edit)
  whole = open(os.path.join(src, "00001.tar"), "rb").read()
  (manual / "00001.tar").write_bytes(whole[:len(whole) // 2])  # truncated tar

  b = builders.build("laion", manual_dir=str(manual), data_dir=str(tmp_path / "tfds"),
                     config="px32")
  first, second = str(manual / "00000.tar"), str(manual / "00001.tar")
  counts = b.bad_records.as_dict()
  assert counts[first] == {"undecodable_image": 1, "missing_caption": 1, "text_too_long": 1}
  assert counts[second] == {"truncated_file": 1}
  n = b.info.splits["train"].num_examples
  n_first = len(keys) - 3
  assert n_first < n < n_first + 32    # the run continued into the truncated shard
  report = common.read_bad_record_report(b)
  assert report["per_file"] == counts and report["total"] == 4


def test_webqa_questions(tmp_path):
  src = os.path.join(helpers.world_dir(), "webqa")
  manual = tmp_path / "webqa"
  shutil.copytree(src, manual)
  data = json.loads((manual / "WebQA_train_val.json").read_text())
  guids = [g for g, r in data.items() if r["split"] == "train"]
  with_img_pos = [g for g in guids[2:] if data[g]["img_posFacts"]]
  with_img_neg = [g for g in guids[2:] if data[g]["img_negFacts"] and g != with_img_pos[0]]
  data[guids[0]]["Q"] = '""'                                        # empty question
  data[guids[1]]["A"] = ['"' + LONG + '"']                          # over-long answer
  data[with_img_pos[0]]["img_posFacts"][0]["image_id"] = 999999999  # positive image missing
  bad_neg = data[with_img_neg[-1]]["img_negFacts"][0]
  bad_neg["caption"] = ""                                            # negative without caption
  (manual / "WebQA_train_val.json").write_text(json.dumps(data))
  # Corrupt the stored JPEG of one image that is only used as a hard negative elsewhere.
  lines = (manual / "imgs.tsv").read_bytes().split(b"\n")
  image_id, _ = lines[0].split(b"\t")
  lines[0] = image_id + b"\t" + base64.b64encode(b"\xff\xd8garbage")
  (manual / "imgs.tsv").write_bytes(b"\n".join(lines))
  idx = [0]
  for line in lines[:-1]:
    idx.append(idx[-1] + len(line) + 1)
  (manual / "imgs.lineidx").write_text("\n".join(map(str, idx[:len(lines) - 1])) + "\n")

  b = builders.build("webqa", manual_dir=str(manual), data_dir=str(tmp_path / "tfds"),
                     config="px32")
  counts = b.bad_records.as_dict()[str(manual / "WebQA_train_val.json")]
  assert counts["empty_question"] == 1
  assert counts["text_too_long"] == 1
  assert counts["missing_image"] == 1
  assert counts["missing_caption"] >= 1
  assert counts["undecodable_image"] >= 1   # every use of the corrupted image is counted
  n_train = sum(1 for r in data.values() if r["split"] == "train")
  skipped_questions = n_train - b.info.splits["train"].num_examples
  assert skipped_questions >= 3             # empty Q, long A, missing positive image
  assert b.info.splits["validation"].num_examples > 0


def test_paq_and_vqa_records(tmp_path):
  paq = tmp_path / "paq"
  shutil.copytree(os.path.join(helpers.world_dir(), "paq"), paq)
  lines = (paq / "PAQ.jsonl").read_text().splitlines()
  lines[0] = json.dumps({"question": "  ", "answer": ["x"]})     # empty question
  lines[1] = "{not json"                                         # malformed line
  (paq / "PAQ.jsonl").write_text("\n".join(lines) + "\n")
  b = builders.build("paq", manual_dir=str(paq), data_dir=str(tmp_path / "tfds"), config="px32")
  assert b.bad_records.as_dict()[str(paq / "PAQ.jsonl")] == {"empty_question": 1,
                                                            "malformed_record": 1}
  assert b.info.splits["train"].num_examples == len(lines) - 2

  vqa = tmp_path / "vqa"
  shutil.copytree(os.path.join(helpers.world_dir(), "vqa"), vqa)
  img = sorted((vqa / "train2014").iterdir())[0]
  img.write_bytes(img.read_bytes()[:40])                          # truncated JPEG
  b = builders.build("vqa", manual_dir=str(vqa), data_dir=str(tmp_path / "tfds"), config="px32")
  q_file = str(vqa / "v2_OpenEnded_mscoco_train2014_questions.json")
  assert b.bad_records.as_dict()[q_file] == {"undecodable_image": 3}  # its 3 questions
  assert b.info.splits["train"].num_examples == 144 - 3
