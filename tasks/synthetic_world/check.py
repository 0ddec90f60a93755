"""Re-reads a synthetic world the way each public dataset's readers do, and counts it.

`check_world` is the smoke check of the demo: it verifies the manifest's checksums, parses
every file with the standard tools (json / jsonl, csv for TSV, tarfile, pyarrow.parquet,
base64 + PIL for images), checks cross references (every image or snippet a question points
to exists, every answer offset falls on the answer) and returns counts recomputed from the
files, which must agree with the manifest. Any problem raises WorldError naming the file and
the record.
"""
import base64
import csv
import hashlib
import json
import os
import tarfile

import pyarrow.parquet as pq

from tasks.synthetic_world import drawing
from tasks.synthetic_world import generate
from tasks.synthetic_world import questions as qlib
from tasks.synthetic_world import world

_WEBQA_KEYS = ("Q", "A", "Qcate", "Guid", "split", "topic", "img_posFacts", "img_negFacts",
               "txt_posFacts", "txt_negFacts")


def _fail(path, msg):
  raise world.WorldError(f"{path}: {msg}")


def _load_json(path):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    _fail(path, f"not valid JSON ({e})")


def _load_jsonl(path):
  out = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        _fail(path, f"line {n} is not valid JSON ({e})")
  return out


def _need(path, record, keys, where):
  missing = [k for k in keys if k not in record]
  if missing:
    _fail(path, f"{where} lacks field(s) {missing}")


def _unquote(path, s, where):
  if not (isinstance(s, str) and len(s) >= 2 and s[0] == s[-1] == '"'):
    _fail(path, f"{where}: expected a double-quoted string as in WebQA, got {s!r}")
  return s[1:-1]


def check_webqa(root):
  """WebQA_train_val.json, imgs.tsv / imgs.lineidx and the full-wiki source list."""
  d = os.path.join(root, "webqa")
  tsv_path, idx_path = os.path.join(d, "imgs.tsv"), os.path.join(d, "imgs.lineidx")
  with open(idx_path) as f:
    offsets = [int(x) for x in f.read().split()]
  with open(tsv_path, "rb") as f:
    raw = f.read()
  starts = [0] + [i + 1 for i, b in enumerate(raw) if b == 0x0A][:-1]  # each line's offset
  if offsets != starts:
    _fail(idx_path, f"{len(offsets)} offsets do not match the {len(starts)} line starts of "
          "imgs.tsv")
  images = {}
  for off in offsets:
    parts = raw[off:raw.index(b"\n", off)].split(b"\t")
    if len(parts) != 2:
      _fail(tsv_path, f"line at offset {off} is not 'image_id<TAB>base64'")
    image_id = int(parts[0])
    drawing.decode_jpeg(base64.b64decode(parts[1], validate=True),
                        f"{tsv_path} image_id {image_id}")
    images[image_id] = off
  sources = _load_jsonl(os.path.join(d, "fullwiki_sources.jsonl"))
  snippets = {}
  for s in sources:
    _need(os.path.join(d, "fullwiki_sources.jsonl"), s, ("id", "type", "title"),
          f"source {s.get('id')}")
    if s["type"] == "image":
      if s.get("image_id") not in images:
        _fail(os.path.join(d, "fullwiki_sources.jsonl"), f"image {s['id']} not in imgs.tsv")
    elif s["type"] == "text":
      snippets[s["id"]] = s["fact"]
    else:
      _fail(os.path.join(d, "fullwiki_sources.jsonl"), f"source {s['id']} has type {s['type']!r}")
  path = os.path.join(d, "WebQA_train_val.json")
  data = _load_json(path)
  for guid, r in data.items():
    where = f"question {guid}"
    _need(path, r, _WEBQA_KEYS, where)
    if r["Guid"] != guid or r["split"] not in ("train", "val"):
      _fail(path, f"{where}: Guid {r['Guid']!r} / split {r['split']!r} invalid")
    if r["Qcate"] not in qlib.ALL_CATEGORIES:
      _fail(path, f"{where}: unknown Qcate {r['Qcate']!r}")
    _unquote(path, r["Q"], where)
    answer = _unquote(path, r["A"][0], where)
    for key in ("img_posFacts", "img_negFacts"):
      for fact in r[key]:
        _need(path, fact, ("image_id", "title", "caption"), f"{where} {key}")
        if fact["image_id"] not in images:
          _fail(path, f"{where}: {key} image_id {fact['image_id']} is not in imgs.tsv")
    for key in ("txt_posFacts", "txt_negFacts"):
      for fact in r[key]:
        _need(path, fact, ("snippet_id", "title", "fact"), f"{where} {key}")
        if snippets.get(fact["snippet_id"]) != fact["fact"]:
          _fail(path, f"{where}: {key} snippet {fact['snippet_id']} differs from the full wiki")
    if r["Qcate"] == "text":
      if not r["txt_posFacts"] or answer not in r["txt_posFacts"][0]["fact"]:
        _fail(path, f"{where}: the answer {answer!r} is not in its positive snippet")
    elif not r["img_posFacts"]:
      _fail(path, f"{where}: an image question without a positive image")
  return {"webqa_questions": len(data), "webqa_images": len(images),
          "webqa_snippets": len(snippets)}


def check_mmqa(root):
  d = os.path.join(root, "mmqa")
  images = {}
  for r in _load_jsonl(os.path.join(d, "MMQA_images.jsonl")):
    _need(os.path.join(d, "MMQA_images.jsonl"), r, ("title", "url", "id", "path"),
          f"image {r.get('id')}")
    p = os.path.join(d, "final_dataset_images", r["path"])
    with open(p, "rb") as f:
      drawing.decode_jpeg(f.read(), p)
    images[r["id"]] = r
  texts = {}
  for r in _load_jsonl(os.path.join(d, "MMQA_texts.jsonl")):
    _need(os.path.join(d, "MMQA_texts.jsonl"), r, ("title", "url", "id", "text"),
          f"text {r.get('id')}")
    texts[r["id"]] = r["text"]
  counts = {"mmqa_images": len(images), "mmqa_texts": len(texts)}
  for split in ("train", "dev"):
    path = os.path.join(d, f"MMQA_{split}.jsonl")
    records = _load_jsonl(path)
    for r in records:
      where = f"qid {r.get('qid')}"
      _need(path, r, ("qid", "question", "answers", "metadata", "supporting_context"), where)
      meta = r["metadata"]
      _need(path, meta, ("type", "modalities", "image_doc_ids", "text_doc_ids"), where)
      if any(i not in images for i in meta["image_doc_ids"]) or any(
          t not in texts for t in meta["text_doc_ids"]):
        _fail(path, f"{where}: a candidate document id is not in MMQA_images/MMQA_texts")
      for ans in r["answers"]:
        _need(path, ans, ("answer", "type", "modality", "text_instances", "image_instances"),
              where)
        for inst in ans["text_instances"]:
          raw = texts[inst["doc_id"]].encode("utf-8")
          got = raw[inst["start_byte"]:inst["start_byte"] + len(inst["text"].encode())]
          if got.decode("utf-8") != inst["text"]:
            _fail(path, f"{where}: start_byte does not point at the answer text")
        for inst in ans["image_instances"]:
          if inst["doc_id"] not in images:
            _fail(path, f"{where}: answer image {inst['doc_id']} missing")
    counts[f"mmqa_{split}"] = len(records)
  return counts


def check_img2dataset(root, role):
  """Shards NNNNN.tar / .parquet / _stats.json as img2dataset writes them."""
  d = os.path.join(root, role)
  tars = sorted(f for f in os.listdir(d) if f.endswith(".tar"))
  if not tars:
    _fail(d, "no .tar shard")
  pairs = 0
  for name in tars:
    shard = name[:-4]
    path = os.path.join(d, name)
    samples = {}
    try:
      with tarfile.open(path, mode="r|") as tar:  # streaming, as webdataset readers do
        for m in tar:
          key, ext = m.name.split(".", 1)
          samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    except tarfile.TarError as e:
      _fail(path, f"not a readable tar ({e})")
    table = pq.read_table(os.path.join(d, f"{shard}.parquet")).to_pylist()
    if [r["key"] for r in table] != sorted(samples):
      _fail(path, f"keys differ from {shard}.parquet")
    for row in table:
      s = samples[row["key"]]
      if set(s) != {"jpg", "txt", "json"}:
        _fail(path, f"sample {row['key']} has members {sorted(s)}, not jpg/txt/json")
      if not row["key"].startswith(shard) or len(row["key"]) != 9:
        _fail(path, f"sample key {row['key']!r} is not shard id + 4-digit index")
      meta = json.loads(s["json"])
      if meta != row or s["txt"].decode("utf-8") != row["caption"]:
        _fail(path, f"sample {row['key']}: .json/.txt disagree with the parquet row")
      if hashlib.sha256(s["jpg"]).hexdigest() != row["sha256"]:
        _fail(path, f"sample {row['key']}: sha256 of the .jpg does not match")
      drawing.decode_jpeg(s["jpg"], f"{path}:{row['key']}.jpg")
    stats = _load_json(os.path.join(d, f"{shard}_stats.json"))
    if stats.get("count") != len(table) or stats.get("successes") != len(table):
      _fail(os.path.join(d, f"{shard}_stats.json"), "count/successes disagree with the shard")
    pairs += len(table)
  return {f"{role}_pairs": pairs, f"{role}_shards": len(tars)}


def check_paq(root):
  d = os.path.join(root, "paq")
  path = os.path.join(d, "psgs_w100.tsv")
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f, delimiter="\t"))
  if rows[0] != ["id", "text", "title"]:
    _fail(path, f"header is {rows[0]}, not id/text/title")
  passages = {r[0]: r[1] for r in rows[1:]}
  qa_path, meta_path = os.path.join(d, "PAQ.jsonl"), os.path.join(d, "PAQ.metadata.jsonl")
  qa, meta = _load_jsonl(qa_path), _load_jsonl(meta_path)
  if len(qa) != len(meta):
    _fail(meta_path, f"{len(meta)} lines, but PAQ.jsonl has {len(qa)}")
  for n, (a, m) in enumerate(zip(qa, meta), 1):
    _need(qa_path, a, ("question", "answer"), f"line {n}")
    _need(meta_path, m, ("question", "answers"), f"line {n}")
    if m["question"] != a["question"]:
      _fail(meta_path, f"line {n}: question differs from line {n} of PAQ.jsonl")
    for ans in m["answers"]:
      text = passages.get(ans["passage_id"])
      if text is None or text[ans["start"]:ans["end"]] != ans["text"]:
        _fail(meta_path, f"line {n}: answer span not found in passage {ans['passage_id']}")
  return {"paq_questions": len(qa), "paq_passages": len(passages)}


def check_vqa(root):
  d = os.path.join(root, "vqa")
  counts = {}
  for split in ("train", "val"):
    sub = f"{split}2014"
    qpath = os.path.join(d, f"v2_OpenEnded_mscoco_{sub}_questions.json")
    apath = os.path.join(d, f"v2_mscoco_{sub}_annotations.json")
    qs = _load_json(qpath)["questions"]
    anns = {a["question_id"]: a for a in _load_json(apath)["annotations"]}
    caps = _load_json(os.path.join(d, "annotations", f"captions_{sub}.json"))
    files = {im["id"]: im["file_name"] for im in caps["images"]}
    for im_id, name in files.items():
      p = os.path.join(d, sub, name)
      if name != f"COCO_{sub}_{im_id:012d}.jpg":
        _fail(p, "not named COCO_<split>2014_<12-digit id>.jpg")
      with open(p, "rb") as f:
        drawing.decode_jpeg(f.read(), p)
    for q in qs:
      a = anns.get(q["question_id"])
      if a is None or a["image_id"] != q["image_id"] or len(a["answers"]) != 10:
        _fail(apath, f"question {q['question_id']}: missing annotation or not 10 answers")
      if q["image_id"] not in files:
        _fail(qpath, f"question {q['question_id']}: image {q['image_id']} not in COCO captions")
    if len(anns) != len(qs):
      _fail(apath, "annotations and questions differ in number")
    counts[f"vqa_{split}_questions"] = len(qs)
    counts[f"vqa_{split}_images"] = len(files)
  return counts


def check_world(out_dir):
  """Verifies a generated world and returns its counts (see module docstring).

  Args:
    out_dir: a directory written by generate_world.

  Returns:
    dict name -> count (questions, images, snippets, pairs, shards... per format).

  Raises:
    WorldError: naming the file and record at fault.
  """
  manifest_path = os.path.join(out_dir, generate.MANIFEST)
  if os.path.exists(os.path.join(out_dir, generate.MARKER)):
    _fail(out_dir, "a generation run was interrupted here; re-run the generator to resume")
  if not os.path.exists(manifest_path):
    _fail(out_dir, f"no {generate.MANIFEST}: not a (complete) synthetic world")
  manifest = _load_json(manifest_path)
  for relpath, info in manifest["files"].items():
    p = os.path.join(out_dir, relpath)
    if not os.path.isfile(p):
      _fail(p, "listed in the manifest but missing")
    with open(p, "rb") as f:
      if hashlib.sha256(f.read()).hexdigest() != info["sha256"]:
        _fail(p, "content differs from the manifest's sha256 (modified or truncated)")
  counts = {k: manifest["counts"][k] for k in ("realms", "distractor_realms")}
  readers = {"webqa": check_webqa, "mmqa": check_mmqa, "paq": check_paq, "vqa": check_vqa,
             "laion": lambda r: check_img2dataset(r, "laion"),
             "cc": lambda r: check_img2dataset(r, "cc")}
  for fmt in manifest["formats"]:
    counts.update(readers[fmt](out_dir))
  if counts != manifest["counts"]:
    want = manifest["counts"]
    diff = {k: (counts.get(k), want.get(k))
            for k in sorted(set(counts) | set(want)) if counts.get(k) != want.get(k)}
    _fail(manifest_path, f"counts read back differ from the manifest (read, manifest): {diff}")
  return counts
