"""The synthetic world: determinism, real-format parsing, answerability and difficulty."""
import base64
import collections
import csv
import hashlib
import io
import json
import os
import re
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks import synthetic_world as sw
from tasks.synthetic_world import formats
from tasks.synthetic_world import world


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("medium"))
  sw.generate_world(out, "medium", seed=11)
  return out


def _tree(root):
  """relative path -> sha256 of every file under root."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      p = os.path.join(dirpath, name)
      with open(p, "rb") as f:
        out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _webqa(root):
  with open(os.path.join(root, "webqa", "WebQA_train_val.json")) as f:
    return json.load(f)


def _images(root):
  """image_id -> PIL image, read through imgs.lineidx the way WebQA loaders do."""
  out = {}
  with open(os.path.join(root, "webqa", "imgs.lineidx")) as f:
    offsets = [int(x) for x in f]
  with open(os.path.join(root, "webqa", "imgs.tsv")) as f:
    for off in offsets:
      f.seek(off)
      image_id, b64 = f.readline().strip().split("\t")
      out[int(image_id)] = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
  return out


def test_same_seed_gives_byte_identical_files(tmp_path):
  a, b, c = (str(tmp_path / n) for n in "abc")
  sw.generate_world(a, "small", seed=5)
  sw.generate_world(b, "small", seed=5)
  sw.generate_world(c, "small", seed=6)
  ta, tb, tc = _tree(a), _tree(b), _tree(c)
  assert len(ta) > 100
  assert ta == tb
  assert ta["webqa/WebQA_train_val.json"] != tc["webqa/WebQA_train_val.json"]
  assert ta["laion/00000.tar"] != tc["laion/00000.tar"]


def test_check_world_counts_and_category_coverage(medium):
  counts = sw.check_world(medium)
  assert 1000 <= counts["webqa_questions"] <= 2500
  assert counts["laion_pairs"] + counts["cc_pairs"] >= 3000
  assert counts["paq_questions"] >= 1000 and counts["vqa_train_questions"] >= 1000
  assert counts["mmqa_train"] > 0 and counts["mmqa_dev"] > 0
  cats = collections.Counter((r["Qcate"], r["split"]) for r in _webqa(medium).values())
  for cat in ("color", "shape", "number", "YesNo", "choose", "Others", "text"):
    assert cats[(cat, "train")] >= 100 and cats[(cat, "val")] >= 20, cat


def test_files_parse_like_the_real_readers(medium):
  # WebQA: quoted Q/A, fields of the release; every fact's image is in imgs.tsv.
  data = _webqa(medium)
  images = _images(medium)
  for guid, r in data.items():
    assert r["Guid"] == guid and r["Q"].startswith('"') and r["A"][0].endswith('"')
    for f in r["img_posFacts"] + r["img_negFacts"]:
      assert {"image_id", "title", "caption", "url", "imgUrl"} <= set(f)
      assert images[f["image_id"]].size == (64, 64)
    for f in r["txt_posFacts"] + r["txt_negFacts"]:
      assert {"snippet_id", "title", "fact", "url"} <= set(f)
  with open(os.path.join(medium, "webqa", "fullwiki_sources.jsonl")) as f:
    sources = [json.loads(line) for line in f]
  assert {s["type"] for s in sources} == {"image", "text"}
  assert sum(s["type"] == "image" for s in sources) == len(images)
  # img2dataset: 9-digit keys, jpg/txt/json triplets, parquet with img2dataset's columns.
  for role in ("laion", "cc"):
    with tarfile.open(os.path.join(medium, role, "00000.tar")) as tar:
      members = tar.getmembers()
      assert all(re.fullmatch(r"00000\d{4}\.(jpg|txt|json)", m.name) for m in members)
      assert all(m.mtime == 0 and m.uid == 0 for m in members)
      meta = json.loads(tar.extractfile("000000000.json").read())
      caption = tar.extractfile("000000000.txt").read().decode()
      Image.open(tar.extractfile("000000000.jpg")).load()
    table = pq.read_table(os.path.join(medium, role, "00000.parquet"))
    assert set(formats.IMG2DATASET_COLUMNS) == set(table.column_names)
    assert table.num_rows == len(members) // 3
    assert meta["caption"] == caption == table["caption"][0].as_py()
    with open(os.path.join(medium, role, "00000_stats.json")) as f:
      assert json.load(f)["successes"] == table.num_rows
  # MMQA: candidate ids resolve, image files open.
  with open(os.path.join(medium, "mmqa", "MMQA_images.jsonl")) as f:
    mm_images = {r["id"]: r["path"] for r in map(json.loads, f)}
  with open(os.path.join(medium, "mmqa", "MMQA_dev.jsonl")) as f:
    dev = [json.loads(line) for line in f]
  assert {r["metadata"]["type"] for r in dev} == {"ImageQ", "TextQ"}
  for r in dev:
    for doc in r["metadata"]["image_doc_ids"]:
      Image.open(os.path.join(medium, "mmqa", "final_dataset_images", mm_images[doc])).load()
  # PAQ: answers at their offsets in the DPR passages TSV.
  with open(os.path.join(medium, "paq", "psgs_w100.tsv"), newline="") as f:
    rows = list(csv.reader(f, delimiter="\t"))
  assert rows[0] == ["id", "text", "title"]
  passages = {r[0]: r[1] for r in rows[1:]}
  with open(os.path.join(medium, "paq", "PAQ.metadata.jsonl")) as f:
    for m in map(json.loads, f):
      a = m["answers"][0]
      assert passages[a["passage_id"]][a["start"]:a["end"]] == a["text"] == m["answer"][0]
  # VQA v2: ten answers per question, majority = multiple_choice_answer; COCO file names.
  with open(os.path.join(medium, "vqa", "v2_mscoco_val2014_annotations.json")) as f:
    anns = json.load(f)["annotations"]
  for a in anns:
    votes = collections.Counter(x["answer"] for x in a["answers"])
    assert len(a["answers"]) == 10 and votes.most_common(1)[0][0] == a["multiple_choice_answer"]
  name = "COCO_val2014_%012d.jpg" % anns[0]["image_id"]
  Image.open(os.path.join(medium, "vqa", "val2014", name)).load()


def _asked(question):
  """The attribute values named in a question (realm names contain no attribute word)."""
  words = re.findall(r"[a-z0-9]+", question.lower())
  values = [w for w in words if w in world.COLORS or w in world.SHAPES or w in "1234"]
  return values


def _attribute_of(value):
  if value in world.COLORS:
    return "color"
  if value in world.SHAPES:
    return "shape"
  return "count"


def test_answers_are_visible_only_in_the_positive_source(medium):
  images = _images(medium)
  seen = {}
  checked = collections.Counter()
  for r in _webqa(medium).values():
    q, a, cat = r["Q"].strip('"'), r["A"][0].strip('"'), r["Qcate"]
    names = re.findall(r"\b[A-Z][a-z]+\b", q)[1:]  # the first word is the question word
    assert len(names) == 1, q
    realm = names[0]
    words_of = lambda s: set(re.findall(r"[a-z0-9]+", s.lower()))
    if cat == "text":
      pos = r["txt_posFacts"][0]
      assert pos["title"] == realm and re.search(rf"\b{a}\b", pos["fact"]), (q, a, pos)
      for neg in r["txt_negFacts"]:
        assert not re.search(rf"\b{a}\b", neg["fact"]), (q, a, neg)
      checked[cat] += 1
      continue
    pos = r["img_posFacts"][0]
    assert realm in pos["title"] and realm in pos["caption"] and realm in q
    for fact in r["img_posFacts"] + r["img_negFacts"]:
      # Titles and captions never reveal an image attribute.
      assert not words_of(fact["title"] + " " + fact["caption"]) & world.ATTRIBUTE_WORDS
    ids = [f["image_id"] for f in r["img_posFacts"] + r["img_negFacts"]]
    for i in ids:
      if i not in seen:
        seen[i] = sw.analyze_image(images[i])
    truth, negs = seen[ids[0]], [seen[i] for i in ids[1:]]
    attr = {"color": "color", "shape": "shape", "number": "count", "Others": "side"}.get(cat)
    if attr:
      assert str(truth[attr]) == a, (q, a, truth)
    else:
      values = _asked(q)
      attr = _attribute_of(values[0])
      if cat == "YesNo":
        assert len(values) == 1 and a == ("yes" if str(truth[attr]) == values[0] else "no")
      else:
        assert len(values) == 2 and a == str(truth[attr]) and a in values
    assert len(negs) >= 3
    for n in negs:  # hard negatives differ in the asked attribute
      assert n[attr] != truth[attr], (q, n, truth)
    checked[cat] += 1
  assert min(checked.values()) >= 100 and len(checked) == 7


def test_question_only_majority_baseline_is_low(medium):
  data = list(_webqa(medium).values())

  def template(r):
    q = r["Q"].strip('"')
    return re.sub(r"\b(flag|shield|seal)\b", "KIND", re.sub(r"\b[A-Z][a-z]+\b", "NAME", q))

  per_cat = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
  for r in data:
    if r["split"] == "train":
      per_cat[r["Qcate"]][template(r)][r["A"][0]] += 1
      per_cat[r["Qcate"]]["*"][r["A"][0]] += 1
  limits = {"color": 0.35, "shape": 0.45, "number": 0.45, "Others": 0.45, "YesNo": 0.65,
            "choose": 0.65, "text": 0.05}
  for cat, limit in limits.items():
    val = [r for r in data if r["split"] == "val" and r["Qcate"] == cat]
    for key in ("template", "global"):
      right = 0
      for r in val:
        counter = per_cat[cat].get(template(r)) if key == "template" else None
        counter = counter or per_cat[cat]["*"]
        right += counter.most_common(1)[0][0] == r["A"][0]
      assert right / len(val) <= limit, (cat, key, right / len(val))
  # choose: always picking the first (or second) option is at chance too.
  choose = [r for r in data if r["Qcate"] == "choose"]
  first = sum(_asked(r["Q"])[0] == r["A"][0].strip('"') for r in choose) / len(choose)
  assert 0.35 <= first <= 0.65


def test_validation_realms_never_appear_in_training_records(medium):
  data = _webqa(medium).values()
  titles = {"train": set(), "val": set()}
  for r in data:
    for f in r["img_posFacts"] + r["img_negFacts"] + r["txt_posFacts"] + r["txt_negFacts"]:
      titles[r["split"]].add(f["title"].split(" ")[-1])
  val_pos = {f["title"].split(" ")[-1] for r in data if r["split"] == "val"
             for f in r["img_posFacts"] + r["txt_posFacts"]}
  assert val_pos and not val_pos & titles["train"]


def test_bad_inputs_give_clear_errors(tmp_path):
  with pytest.raises(sw.WorldError, match="unknown world size 'huge'"):
    sw.generate_world(str(tmp_path / "a"), "huge", 0)
  with pytest.raises(sw.WorldError, match=r"unknown output format\(s\) \['coco'\]"):
    sw.generate_world(str(tmp_path / "a"), "small", 0, formats_to_write="webqa,coco")
  with pytest.raises(sw.WorldError, match="seed must be an integer"):
    sw.generate_world(str(tmp_path / "a"), "small", "7")
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(sw.WorldError, match="cannot create output directory"):
    sw.generate_world(str(blocker / "sub"), "small", 0)
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(sw.WorldError, match="not empty and holds no synthetic world"):
    sw.generate_world(str(foreign), "small", 0)
  with pytest.raises(sw.WorldError, match="no world_manifest.json"):
    sw.check_world(str(foreign))


def test_other_arguments_refused_then_overwrite_removes_stale_files(tmp_path):
  out = str(tmp_path / "w")
  sw.generate_world(out, "small", 1)
  with pytest.raises(sw.WorldError, match="already holds a synthetic world"):
    sw.generate_world(out, "small", 2)
  manifest = sw.generate_world(out, "small", 2, formats_to_write=["webqa"], overwrite=True)
  assert set(_tree(out)) == set(manifest["files"]) | {sw.MANIFEST}
  assert sw.check_world(out)["webqa_questions"] > 0


def test_check_world_detects_damage(tmp_path):
  out = str(tmp_path / "w")
  sw.generate_world(out, "small", 3, formats_to_write="laion,paq")
  tar_path = os.path.join(out, "laion", "00000.tar")
  with open(tar_path, "r+b") as f:
    f.truncate(1000)
  with pytest.raises(sw.WorldError, match=r"laion/00000.tar: content differs"):
    sw.check_world(out)
  # A damaged file whose checksum was also updated is still caught by the tar reader.
  manifest_path = os.path.join(out, sw.MANIFEST)
  with open(manifest_path) as f:
    manifest = json.load(f)
  with open(tar_path, "rb") as f:
    manifest["files"]["laion/00000.tar"]["sha256"] = hashlib.sha256(f.read()).hexdigest()
  with open(manifest_path, "w") as f:
    json.dump(manifest, f)
  with pytest.raises(sw.WorldError, match="00000.tar"):
    sw.check_world(out)


def test_interrupted_run_resumes_to_identical_output(tmp_path, monkeypatch):
  ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
  sw.generate_world(ref, "small", 9)
  from tasks.synthetic_world import generate
  real_commit = generate.AtomicWriter._commit
  calls = []

  def dying_commit(self, tmp, path):
    calls.append(path)
    if len(calls) == 30:
      raise KeyboardInterrupt("simulated kill during a write")
    real_commit(self, tmp, path)

  monkeypatch.setattr(generate.AtomicWriter, "_commit", dying_commit)
  with pytest.raises(KeyboardInterrupt):
    sw.generate_world(out, "small", 9)
  monkeypatch.setattr(generate.AtomicWriter, "_commit", real_commit)
  partial, reference = _tree(out), _tree(ref)
  leftovers = [p for p in partial if p.endswith(generate.TMP_TAG)]
  assert len(leftovers) == 1  # the file being written when killed, never under its final name
  for rel, digest in partial.items():
    if rel not in leftovers and rel != generate.MARKER:
      assert reference[rel] == digest, rel  # no half-written final file
  with pytest.raises(sw.WorldError, match="interrupted"):
    sw.check_world(out)
  with pytest.raises(sw.WorldError, match="already holds a synthetic world"):
    sw.generate_world(out, "small", 10)
  messages = []
  manifest = sw.generate_world(out, "small", 9, progress=messages.append)
  assert any("resuming" in m for m in messages)
  assert any("29 already up to date" in m for m in messages)
  assert _tree(out) == reference
  assert sw.check_world(out) == manifest["counts"]


def test_cli_writes_reports_progress_and_fails_clearly(tmp_path, capsys):
  import subprocess
  import sys
  from tasks.synthetic_world import __main__ as cli
  out = str(tmp_path / "cli")
  ok = subprocess.run([sys.executable, "-m", "tasks.synthetic_world", f"--out_dir={out}",
                       "--size=small", "--seed=4"], capture_output=True, text=True, timeout=120)
  assert ok.returncode == 0, ok.stderr
  assert "[6/6] vqa" in ok.stderr and "read-back check passed" in ok.stderr
  assert json.loads(ok.stdout) == sw.check_world(out)
  assert cli.main([f"--out_dir={tmp_path / 'x'}", "--size=tiny"]) == 2
  assert "unknown world size 'tiny'" in capsys.readouterr().err


def test_overwrite_after_an_interrupted_other_world_leaves_no_stale_files(tmp_path, monkeypatch):
  from tasks.synthetic_world import generate
  out = str(tmp_path / "w")
  real_commit = generate.AtomicWriter._commit
  calls = []

  def dying_commit(self, tmp, path):
    calls.append(path)
    if len(calls) == 40:
      raise KeyboardInterrupt("simulated kill")
    real_commit(self, tmp, path)

  monkeypatch.setattr(generate.AtomicWriter, "_commit", dying_commit)
  with pytest.raises(KeyboardInterrupt):
    sw.generate_world(out, "small", 1, formats_to_write="mmqa,laion")
  monkeypatch.setattr(generate.AtomicWriter, "_commit", real_commit)
  manifest = sw.generate_world(out, "small", 2, formats_to_write="laion", overwrite=True)
  assert set(_tree(out)) == set(manifest["files"]) | {sw.MANIFEST}
