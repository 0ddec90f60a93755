"""PAQ builder (MuRAG §3.3: text-only (passage, QA) pre-training pairs).

Input (manual directory):
  PAQ.jsonl             {"question", "answer": [str, ...]}
  PAQ.metadata.jsonl    {"question", "answers": [{"text", "passage_id", ...}], ...}
  psgs_w100.tsv         DPR passages "id \\t text \\t title" with a header line

Each question is joined with the passage of its first answer (metadata). The passages and
metadata are held in host memory, which suits the plain generator up to a few million
passages; the 21M-passage DPR dump needs the Beam path (`use_beam=True`), which joins by
key with CoGroupByKey instead.
"""
import csv
import json
import sys

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tasks.builders import common
from tasks.neighbours import stable_int_id

csv.field_size_limit(sys.maxsize)


def passage_string_id(pid) -> str:
  return f"psgs_w100/{pid}"


class MuragPaq(common.MuRAGBuilder):
  """PAQ questions joined with their DPR passage."""

  name = "murag_paq"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = common.resolution_configs()  # no images; kept for a uniform interface
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Get PAQ (https://github.com/facebookresearch/PAQ: PAQ.jsonl, PAQ.metadata.jsonl) and the
  DPR passages psgs_w100.tsv, and put the three files in the manual directory
  (~/tensorflow_datasets/downloads/manual/murag_paq/ or --manual_dir).
  """

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "question": tfds.features.Text(),
            "answers": tfds.features.Sequence(tfds.features.Text()),
            "passage_id": tfds.features.Text(),
            "passage_int_id": np.int32,
            "passage": tfds.features.Text(),
            "passage_title": tfds.features.Text(),
        }),
        homepage="https://github.com/facebookresearch/PAQ",
    )

  def _split_generators(self, dl_manager):
    paths = {k: self.manual_path(dl_manager, f) for k, f in (
        ("qa", "PAQ.jsonl"), ("meta", "PAQ.metadata.jsonl"), ("psg", "psgs_w100.tsv"))}
    return {"train": self._generate_examples(paths)}

  def _read_jsonl(self, path):
    with tf.io.gfile.GFile(path) as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
          self.bad_records.add(path, "malformed_record", str(e), f"line {lineno}")

  def _passages(self, path):
    out = {}
    with tf.io.gfile.GFile(path) as f:
      reader = csv.reader(f, delimiter="\t", quotechar='"')
      for lineno, row in enumerate(reader, 1):
        if lineno == 1 and row and row[0] == "id":
          continue
        if len(row) < 3:
          self.bad_records.add(path, "malformed_record", f"{len(row)} columns", f"line {lineno}")
          continue
        out[row[0]] = (row[1], row[2])
    return out

  def _passage_of(self, paths):
    meta = {}
    for lineno, rec in self._read_jsonl(paths["meta"]):
      try:
        meta.setdefault(rec["question"], str(rec["answers"][0]["passage_id"]))
      except (KeyError, IndexError, TypeError) as e:
        self.bad_records.add(paths["meta"], "malformed_record", f"no passage_id ({e})",
                             f"line {lineno}")
    return meta

  def _generate_examples(self, paths):
    if self._use_beam:
      return self._beam_pipeline(paths)
    passages = self._passages(paths["psg"])
    passage_of = self._passage_of(paths)
    n_ok = 0
    for lineno, rec in self._read_jsonl(paths["qa"]):
      key = f"line {lineno}"
      try:
        ex = self._make_example(rec, passage_of.get(str(rec.get("question", "")).strip())
                                if isinstance(rec, dict) else None, passages, lineno)
      except common.BadRecord as e:
        self.bad_records.add(paths["qa"], e.reason, e.detail, key)
        continue
      n_ok += 1
      yield ex["id"], ex
    self.bad_records.log_file(paths["qa"], n_ok)

  def _make_example(self, rec, pid, passages, lineno):
    if not isinstance(rec, dict):
      raise common.BadRecord("malformed_record", "not an object")
    question = self.text(rec.get("question"), "question", "empty_question")
    answers = rec.get("answer") or rec.get("answers") or []
    answers = [self.text(a, "answer", "missing_answer") for a in answers
               if isinstance(a, str) and a.strip()]
    if not answers:
      raise common.BadRecord("missing_answer", "no answer")
    if pid is None or pid not in passages:
      raise common.BadRecord("missing_passage", f"passage id {pid!r} of '{question[:60]}'")
    text, title = passages[pid]
    text = self.text(text, "passage", "missing_passage")
    sid = passage_string_id(pid)
    return {"id": f"paq/{lineno}", "question": question, "answers": answers,
            "passage_id": sid, "passage_int_id": stable_int_id(sid), "passage": text,
            "passage_title": title or ""}

  def _beam_pipeline(self, paths):
    """Beam: key questions and passages by passage id and join with CoGroupByKey."""
    beam = common.beam
    builder = self

    def read_lines(path):
      with tf.io.gfile.GFile(path) as f:
        for lineno, line in enumerate(f, 1):
          yield lineno, line

    def qa_by_pid(_):
      passage_of = builder._passage_of(paths)
      for lineno, rec in builder._read_jsonl(paths["qa"]):
        q = str(rec.get("question", "")).strip() if isinstance(rec, dict) else ""
        yield passage_of.get(q, ""), (lineno, rec)

    def psg_by_pid(item):
      lineno, line = item
      row = line.rstrip("\n").split("\t")
      if lineno == 1 and row[0] == "id":
        return
      if len(row) >= 3:
        yield row[0], (row[1], row[2])

    def join(kv):
      pid, groups = kv
      passages = {pid: groups["psg"][0]} if groups["psg"] else {}
      for lineno, rec in groups["qa"]:
        try:
          ex = builder._make_example(rec, pid or None, passages, lineno)
        except common.BadRecord as e:
          builder.bad_records.add(paths["qa"], e.reason, e.detail, f"line {lineno}")
          continue
        yield ex["id"], ex

    def pipeline(root):
      qa = root | "QA" >> beam.Create([None]) | beam.FlatMap(qa_by_pid)
      psg = (root | "Psg" >> beam.Create([paths["psg"]]) | beam.FlatMap(read_lines)
             | beam.FlatMap(psg_by_pid))
      return {"qa": qa, "psg": psg} | beam.CoGroupByKey() | beam.FlatMap(join)

    return beam.ptransform_fn(pipeline)()  # pylint: disable=no-value-for-parameter
