"""Memory corpus builder: the global multimodal memory M of MuRAG §3.4 (fixed retrieval).

One record per memory item: id (string), int_id (`tasks.neighbours.stable_int_id(id)`, the
`memory_ids` value in batches), text, image (JPEG bytes, b"" for text items), title, source.
Configs choose the raw collection and the image resolution:

  webqa_px{224,64,32}    WebQA full-wiki sources: fullwiki_sources.jsonl + imgs.tsv/lineidx
                         ({"id", "type": image|text, "title", "caption"|"fact", "image_id"?})
  mmqa_px{224,64,32}     MultimodalQA MMQA_texts.jsonl + MMQA_images.jsonl + images
  generic_px{224,64,32}  any corpus: *.memory.jsonl lines {"id", "text"?, "image_path"?,
                         "title"?, "source"?} with image paths relative to the manual dir

Ids are the collections' own ids (WebQA image_id / snippet_id, MMQA doc id), so they match
the `id` of the sources in murag_webqa / murag_mmqa and the neighbour files.
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks.builders import common
from tasks.builders.mmqa import read_jsonl
from tasks.builders.webqa import ImageTsv
from tasks.neighbours import stable_int_id


@dataclasses.dataclass
class MemoryCorpusConfig(common.MuRAGBuilderConfig):
  corpus: str = "generic"


def _configs():
  return [MemoryCorpusConfig(name=f"{c}_px{s}", description=f"{c} corpus at {s}px",
                             image_size=s, corpus=c)
          for c in ("webqa", "mmqa", "generic") for s in (224, 64, 32)]


class MuragMemoryCorpus(common.MuRAGBuilder):
  """Memory items (id, optional image, optional text, source) for the global index."""

  name = "murag_memory_corpus"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = _configs()
  DEFAULT_CONFIG_NAME = "webqa_px224"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  webqa_*: the WebQA folder (fullwiki_sources.jsonl, imgs.tsv, imgs.lineidx);
  mmqa_*: the MultimodalQA folder (MMQA_texts.jsonl, MMQA_images.jsonl,
  final_dataset_images/); generic_*: a folder with *.memory.jsonl files and the images they
  reference. Pass it as --manual_dir.
  """

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "int_id": np.int32,
            "image": common.bytes_feature(),
            "text": tfds.features.Text(),
            "title": tfds.features.Text(),
            "source": tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    corpus = self.builder_config.corpus
    if corpus == "webqa":
      gen = self._webqa(self.manual_path(dl_manager, "fullwiki_sources.jsonl"),
                        ImageTsv(self.manual_path(dl_manager, "imgs.tsv"),
                                 self.manual_path(dl_manager, "imgs.lineidx", required=False)))
    elif corpus == "mmqa":
      gen = self._mmqa(self.manual_path(dl_manager, "MMQA_texts.jsonl"),
                       self.manual_path(dl_manager, "MMQA_images.jsonl"),
                       self.manual_path(dl_manager, "final_dataset_images"))
    else:
      root = os.fspath(dl_manager.manual_dir)
      files = sorted(tf.io.gfile.glob(os.path.join(root, "*.memory.jsonl")))
      if not files:
        raise FileNotFoundError(f"{self.name}: no *.memory.jsonl in '{root}'. "
                                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      gen = self._generic(files, root)
    return {"train": self._generate_examples(gen)}

  def _generate_examples(self, gen):
    seen = set()
    for path, key, item in gen:
      if isinstance(item, common.BadRecord):
        self.bad_records.add(path, item.reason, item.detail, key)
        continue
      if item["id"] in seen:
        self.bad_records.add(path, "duplicate_id", "", item["id"])
        continue
      seen.add(item["id"])
      yield item["id"], item

  def _item(self, sid, text, image, title, source):
    return {"id": sid, "int_id": stable_int_id(sid), "image": image, "text": text,
            "title": title or "", "source": source}

  def _guard(self, path, key, fn):
    try:
      return fn()
    except common.BadRecord as e:
      return e
    except (KeyError, TypeError, ValueError) as e:
      return common.BadRecord("malformed_record", str(e))

  def _webqa(self, path, images):
    def make(rec):
      sid = str(rec["id"])
      if rec.get("type") == "image":
        text = self.text(rec.get("caption"), "caption", "missing_caption")
        return self._item(sid, text, self.image(images.get(rec.get("image_id", sid))),
                          rec.get("title"), "webqa_image")
      return self._item(sid, self.text(rec.get("fact"), "fact", "malformed_record"), b"",
                        rec.get("title"), "webqa_text")
    for lineno, rec in read_jsonl(path, self.bad_records):
      yield path, f"line {lineno}", self._guard(path, lineno, lambda r=rec: make(r))

  def _mmqa(self, texts_path, images_path, image_dir):
    for lineno, rec in read_jsonl(texts_path, self.bad_records):
      yield texts_path, f"line {lineno}", self._guard(texts_path, lineno, lambda r=rec: self._item(
          str(r["id"]), self.text(r.get("text"), "text", "malformed_record"), b"",
          r.get("title"), "mmqa_text"))

    def image_item(r):
      p = os.path.join(image_dir, r.get("path") or "")
      if not r.get("path") or not tf.io.gfile.exists(p):
        raise common.BadRecord("missing_image", p)
      with tf.io.gfile.GFile(p, "rb") as f:
        raw = f.read()
      return self._item(str(r["id"]), self.text(r.get("title"), "title", "missing_caption"),
                        self.image(raw), r.get("title"), "mmqa_image")
    for lineno, rec in read_jsonl(images_path, self.bad_records):
      yield images_path, f"line {lineno}", self._guard(images_path, lineno,
                                                       lambda r=rec: image_item(r))

  def _generic(self, files, root):
    def make(r, path):
      text = r.get("text") or ""
      if text:
        text = self.text(text, "text", "malformed_record")
      image = b""
      if r.get("image_path"):
        p = os.path.join(root, r["image_path"])
        if not tf.io.gfile.exists(p):
          raise common.BadRecord("missing_image", p)
        with tf.io.gfile.GFile(p, "rb") as f:
          image = self.image(f.read())
      if not text and not image:
        raise common.BadRecord("malformed_record", "item has neither text nor image")
      return self._item(str(r["id"]), text, image, r.get("title"),
                        r.get("source") or os.path.basename(path))
    for path in files:
      for lineno, rec in read_jsonl(path, self.bad_records):
        yield path, f"line {lineno}", self._guard(path, lineno, lambda r=rec, p=path: make(r, p))
