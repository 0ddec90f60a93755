"""Serialises the synthetic world in the public formats of MuRAG's datasets (Sec. 4.1).

Each `write_<format>` function hands (relative path, bytes) to `emit` and returns counts. The
byte content is a pure function of the world: JSON with sorted keys, tar members with fixed
mtime / owner / mode, parquet without timestamps, JPEGs from `drawing.encode_jpeg`.

Formats (field names follow the public releases):
  webqa/  WebQA_train_val.json, imgs.tsv + imgs.lineidx, fullwiki_sources.jsonl
  mmqa/   MMQA_{train,dev}.jsonl, MMQA_texts.jsonl, MMQA_images.jsonl, final_dataset_images/
  laion/, cc/  img2dataset webdataset shards: NNNNN.tar (NNNNNNNNN.jpg/.txt/.json),
          NNNNN.parquet, NNNNN_stats.json
  paq/    PAQ.jsonl, PAQ.metadata.jsonl, psgs_w100.tsv
  vqa/    v2_OpenEnded_mscoco_{train,val}2014_questions.json,
          v2_mscoco_{train,val}2014_annotations.json, annotations/captions_{train,val}2014.json,
          {train,val}2014/COCO_{train,val}2014_%012d.jpg
"""
import base64
import hashlib
import io
import json
import re
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.synthetic_world import drawing
from tasks.synthetic_world import questions as qlib
from tasks.synthetic_world import world

WIKI = "https://en.wikipedia.example/wiki/"
IMG_HOST = "https://upload.wikimedia.example/"
IMG2DATASET_COLUMNS = ("url", "caption", "key", "status", "error_message", "width", "height",
                       "original_width", "original_height", "exif", "sha256")


def dumps(obj):
  return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def jsonl(records):
  return "".join(dumps(r) + "\n" for r in records).encode("utf-8")


def find_word(text, word):
  """Character offset of `word` as a whole word in `text` (names may nest in other names)."""
  m = re.search(r"\b" + re.escape(word) + r"\b", text)
  if m is None:
    raise world.WorldError(f"answer {word!r} is not in its source text {text!r}")
  return m.start()


def emblem_jpeg(seed, emblem, size):
  img = drawing.render(emblem, size, world.rng_for(seed, "emblem-cells", emblem.image_id))
  return drawing.encode_jpeg(img)


def snippet_id(seed, realm, fact):
  return world.hex_id(seed, "snippet", realm.name, fact)


def snippet_text(seed, realm, fact):
  variant = world.rng_for(seed, "snippet-variant", realm.name, fact).randrange(2)
  return world.fact_sentence(realm, fact, variant)


def emblem_caption(seed, emblem):
  return world.emblem_caption(emblem, world.rng_for(seed, "caption", emblem.image_id).randrange(4))


# ---------------------------------------------------------------- WebQA
def _img_fact(seed, e):
  return {"image_id": e.image_id, "title": e.title, "caption": emblem_caption(seed, e),
          "url": WIKI + e.title.replace(" ", "_"), "imgUrl": f"{IMG_HOST}{e.image_id}.jpg"}


def _txt_fact(seed, realm, fact):
  return {"snippet_id": snippet_id(seed, realm, fact), "title": realm.name,
          "fact": snippet_text(seed, realm, fact), "url": WIKI + realm.name}


def write_webqa(seed, cfg, realms, emit):
  """WebQA_train_val.json (Q and A quoted as in the release), imgs.tsv/lineidx, full wiki."""
  qs = qlib.webqa_questions(seed, realms, cfg["image_questions_per_emblem"])
  data = {}
  for q in qs:
    data[q.guid] = {
        "Q": f'"{q.question}"', "A": [f'"{q.answer}"'], "Qcate": q.qcate, "Guid": q.guid,
        "split": q.split, "topic": q.topic,
        "img_posFacts": [_img_fact(seed, e) for e in q.pos_images],
        "img_negFacts": [_img_fact(seed, e) for e in q.neg_images],
        "txt_posFacts": [_txt_fact(seed, r, f) for r, f in q.pos_texts],
        "txt_negFacts": [_txt_fact(seed, r, f) for r, f in q.neg_texts],
    }
  emit("webqa/WebQA_train_val.json", dumps(data).encode("utf-8"))
  tsv, lineidx, sources = io.BytesIO(), io.BytesIO(), []
  n_images = n_texts = 0
  for realm in realms:
    for e in realm.emblems:
      lineidx.write(f"{tsv.tell()}\n".encode())
      b64 = base64.b64encode(emblem_jpeg(seed, e, cfg["image_size"])).decode("ascii")
      tsv.write(f"{e.image_id}\t{b64}\n".encode())
      sources.append({"id": str(e.image_id), "type": "image", "title": e.title,
                      "caption": emblem_caption(seed, e), "image_id": e.image_id})
      n_images += 1
    for fact in world.TEXT_FACTS:
      sources.append({"id": snippet_id(seed, realm, fact), "type": "text", "title": realm.name,
                      "fact": snippet_text(seed, realm, fact)})
      n_texts += 1
  emit("webqa/imgs.tsv", tsv.getvalue())
  emit("webqa/imgs.lineidx", lineidx.getvalue())
  emit("webqa/fullwiki_sources.jsonl", jsonl(sources))
  return {"webqa_questions": len(qs), "webqa_images": n_images, "webqa_snippets": n_texts}


# ---------------------------------------------------------------- MultimodalQA
def _mmqa_image_id(seed, e):
  return world.hex_id(seed, "mmqa-image", e.image_id)


def _mmqa_text_id(seed, realm, fact):
  return world.hex_id(seed, "mmqa-text", realm.name, fact)


def write_mmqa(seed, cfg, realms, emit):
  """MMQA question files plus the image and text document collections."""
  texts, images = [], []
  for realm in realms:
    for e in realm.emblems:
      doc = _mmqa_image_id(seed, e)
      images.append({"title": e.title, "url": WIKI + e.title.replace(" ", "_"), "id": doc,
                     "path": f"{doc}.jpg"})
      emit(f"mmqa/final_dataset_images/{doc}.jpg", emblem_jpeg(seed, e, cfg["image_size"]))
    for fact in world.TEXT_FACTS:
      texts.append({"title": realm.name, "url": WIKI + realm.name,
                    "id": _mmqa_text_id(seed, realm, fact),
                    "text": snippet_text(seed, realm, fact)})
  rng = world.rng_for(seed, "mmqa-order")
  by_split = {"train": [], "val": []}
  for q in qlib.mmqa_questions(seed, realms):
    img_ids = [_mmqa_image_id(seed, e) for e in q.pos_images + q.neg_images]
    txt_ids = [_mmqa_text_id(seed, r, f) for r, f in q.pos_texts + q.neg_texts]
    rng.shuffle(img_ids)
    rng.shuffle(txt_ids)
    if q.qcate == "ImageQ":
      gold = _mmqa_image_id(seed, q.pos_images[0])
      answer = {"answer": q.answer, "type": "string", "modality": "image",
                "text_instances": [], "image_instances": [{"doc_id": gold, "doc_part": "image"}]}
      support = [{"doc_id": gold, "doc_part": "image"}]
    else:
      realm, fact = q.pos_texts[0]
      gold = _mmqa_text_id(seed, realm, fact)
      text = snippet_text(seed, realm, fact)
      answer = {"answer": q.answer, "type": "string", "modality": "text", "image_instances": [],
                "text_instances": [{"doc_id": gold, "doc_part": "text", "text": q.answer,
                                    "start_byte": len(text[:find_word(text, q.answer)].encode())}]}
      support = [{"doc_id": gold, "doc_part": "text"}]
    modality = "image" if q.qcate == "ImageQ" else "text"
    by_split[q.split].append({
        "qid": q.guid, "question": q.question, "answers": [answer],
        "metadata": {"type": q.qcate, "modalities": [modality], "image_doc_ids": img_ids,
                     "text_doc_ids": txt_ids, "table_id": "", "intermediate_answers": [],
                     "wiki_entities_in_question": [], "wiki_entities_in_answers": [],
                     "pseudo_language_question": "", "rephrasing_meta": {}},
        "supporting_context": support})
  emit("mmqa/MMQA_train.jsonl", jsonl(by_split["train"]))
  emit("mmqa/MMQA_dev.jsonl", jsonl(by_split["val"]))
  emit("mmqa/MMQA_texts.jsonl", jsonl(texts))
  emit("mmqa/MMQA_images.jsonl", jsonl(images))
  return {"mmqa_train": len(by_split["train"]), "mmqa_dev": len(by_split["val"]),
          "mmqa_images": len(images), "mmqa_texts": len(texts)}


# ---------------------------------------------------------------- img2dataset shards
def _tar_add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = 0
  info.mode = 0o644
  info.uid = info.gid = 0
  info.uname = info.gname = ""
  tar.addfile(info, io.BytesIO(data))


def write_img2dataset(seed, cfg, role, emit):
  """Caption pairs as img2dataset writes them (webdataset tar + parquet + stats per shard)."""
  n, shard_size, size = cfg[role], cfg["shard_size"], cfg["image_size"]
  rng = world.rng_for(seed, role)
  shards = 0
  for shard in range(0, (n + shard_size - 1) // shard_size):
    buf = io.BytesIO()
    rows = {c: [] for c in IMG2DATASET_COLUMNS}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
      for i in range(shard * shard_size, min(n, (shard + 1) * shard_size)):
        key = f"{shard:05d}{i - shard * shard_size:04d}"
        scene = world.random_scene(rng)
        jpeg = drawing.encode_jpeg(drawing.render(scene, size, rng))
        caption = world.scene_caption(scene, role, rng.randrange(2))
        meta = {"url": f"https://{role}.example/{key}.jpg", "caption": caption, "key": key,
                "status": "success", "error_message": None, "width": size, "height": size,
                "original_width": size, "original_height": size, "exif": None,
                "sha256": hashlib.sha256(jpeg).hexdigest()}
        _tar_add(tar, f"{key}.jpg", jpeg)
        _tar_add(tar, f"{key}.txt", caption.encode("utf-8"))
        _tar_add(tar, f"{key}.json", dumps(meta).encode("utf-8"))
        for c in IMG2DATASET_COLUMNS:
          rows[c].append(meta[c])
    emit(f"{role}/{shard:05d}.tar", buf.getvalue())
    schema = pa.schema([(c, pa.int64() if c in ("width", "height", "original_width",
                                                 "original_height") else pa.string())
                        for c in IMG2DATASET_COLUMNS])
    pbuf = io.BytesIO()
    pq.write_table(pa.table(rows, schema=schema), pbuf, compression="snappy")
    emit(f"{role}/{shard:05d}.parquet", pbuf.getvalue())
    count = len(rows["key"])
    stats = {"count": count, "successes": count, "failed_to_download": 0,
             "failed_to_resize": 0, "duration": 0.0, "start_time": 0.0, "end_time": 0.0,
             "status_dict": {"success": count}}
    emit(f"{role}/{shard:05d}_stats.json", dumps(stats).encode("utf-8"))
    shards += 1
  return {f"{role}_pairs": n, f"{role}_shards": shards}


# ---------------------------------------------------------------- PAQ
def write_paq(seed, cfg, names, emit):
  """PAQ question-answer pairs over DPR-style passages about realms of their own."""
  rng = world.rng_for(seed, "paq")
  passages, qa, meta = ["id\ttext\ttitle\n"], [], []
  for pid in range(1, cfg["paq_realms"] + 1):
    realm = world.Realm(name=names.make("realm"), capital=names.make("city"),
                        founded=rng.randint(1100, 1899), ruler=names.make("ruler"),
                        river=names.make("river"), split=None, emblems=())
    sentences = [world.fact_sentence(realm, f, rng.randrange(2)) for f in world.TEXT_FACTS]
    text = " ".join(sentences)
    passages.append(f"{pid}\t{text}\t{realm.name}\n")
    for fact in rng.sample(world.TEXT_FACTS, 4):
      answer = world.fact_value(realm, fact)
      question = world.fact_question(realm, fact)
      start = find_word(text, answer)
      qa.append({"question": question, "answer": [answer]})
      meta.append({"question": question, "subsets": ["L1"], "answer": [answer],
                   "answers": [{"text": answer, "start": start, "end": start + len(answer),
                                "passage_id": str(pid), "score": 1.0}]})
  emit("paq/PAQ.jsonl", jsonl(qa))
  emit("paq/PAQ.metadata.jsonl", jsonl(meta))
  emit("paq/psgs_w100.tsv", "".join(passages).encode("utf-8"))
  return {"paq_questions": len(qa), "paq_passages": len(passages) - 1}


# ---------------------------------------------------------------- VQA v2 + COCO captions
_VQA_KINDS = (
    ("color", "what color are the", "other", lambda s: "What color are the shapes?"),
    ("count", "how many", "number", lambda s: "How many shapes are there?"),
    ("shape", "what shape is the", "other", lambda s: "What shape is shown in the picture?"),
    ("side", "which side is the", "other", lambda s: "On which side is the gray bar?"),
)


def write_vqa(seed, cfg, emit):
  """VQA v2 questions/annotations (10 answers each) and COCO captions, train and val."""
  counts = {}
  for split in ("train", "val"):
    sub = f"{split}2014"
    rng = world.rng_for(seed, "vqa", split)
    base = 100_000 if split == "train" else 500_000
    images, captions, qs, anns = [], [], [], []
    for i in range(cfg[f"vqa_{split}"]):
      image_id = base + i
      scene = world.random_scene(rng)
      name = f"COCO_{sub}_{image_id:012d}.jpg"
      emit(f"vqa/{sub}/{name}", drawing.encode_jpeg(drawing.render(scene, cfg["image_size"], rng)))
      images.append({"id": image_id, "file_name": name, "width": cfg["image_size"],
                     "height": cfg["image_size"], "license": 1, "date_captured": "",
                     "coco_url": "", "flickr_url": ""})
      for j in range(3):
        captions.append({"id": image_id * 10 + j, "image_id": image_id,
                         "caption": world.scene_caption(scene, "coco", j)})
      for j, (attr, qtype, atype, make) in enumerate(rng.sample(_VQA_KINDS, 3)):
        truth = str(getattr(scene, attr))
        values = [str(v) for v in qlib.ATTRIBUTE_VALUES[attr]]
        answers = []
        for k in range(10):
          # Like real annotators, one in twenty answers is wrong.
          ans = truth if rng.random() > 0.05 else rng.choice(values)
          answers.append({"answer": ans, "answer_confidence": "yes", "answer_id": k + 1})
        qid = image_id * 10 + j
        qs.append({"image_id": image_id, "question": make(scene), "question_id": qid})
        anns.append({"question_id": qid, "image_id": image_id, "question_type": qtype,
                     "answer_type": atype, "multiple_choice_answer": truth,
                     "answers": answers})
    info = {"description": "synthetic VQA v2 / COCO stand-in", "version": "2.0", "year": 2017}
    lic = {"name": "synthetic", "url": ""}
    emit(f"vqa/v2_OpenEnded_mscoco_{sub}_questions.json", dumps(
        {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": lic,
         "data_subtype": sub, "questions": qs}).encode())
    emit(f"vqa/v2_mscoco_{sub}_annotations.json", dumps(
        {"info": info, "license": lic, "data_type": "mscoco", "data_subtype": sub,
         "annotations": anns}).encode())
    emit(f"vqa/annotations/captions_{sub}.json", dumps(
        {"info": info, "licenses": [{"id": 1, **lic}], "images": images,
         "annotations": captions}).encode())
    counts[f"vqa_{split}_questions"] = len(qs)
    counts[f"vqa_{split}_images"] = len(images)
  return counts
