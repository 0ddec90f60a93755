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
import os
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

  def _read_jsonl(self, path, counter=None):
    counter = self.bad_records if counter is None else counter
    with tf.io.gfile.GFile(path) as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
          counter.add(path, "malformed_record", str(e), f"line {lineno}")

  def _passages(self, path):
    out = {}
    with tf.io.gfile.GFile(path) as f:
      for lineno, row in enumerate(csv.reader(f, delimiter="\t", quotechar='"'), 1):
        parsed = _passage_row(row, path, f"line {lineno}", self.bad_records)
        if parsed:
          out[parsed[0]] = parsed[1]
    return out

  def _passage_of(self, paths):
    meta = {}
    for lineno, rec in self._read_jsonl(paths["meta"]):
      parsed = _meta_row(rec, paths["meta"], lineno, self.bad_records)
      if parsed:
        meta.setdefault(*parsed)
    return meta

  def _generate_examples(self, paths):
    # Not a generator function itself: under Beam it must *return* the PTransform.
    if self._use_beam:
      return self._beam_pipeline(paths)
    return self._iter_examples(paths)

  def _iter_examples(self, paths):
    """Plain generator: passages and metadata held in host memory."""
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

  @property
  def _beam_report_path(self):
    return os.path.join(self.resume_cache_dir, "beam_bad_records.json")

  def _after_generation(self):
    super()._after_generation()
    if self._use_beam:  # the workers' counts, written by the pipeline's report branch
      with tf.io.gfile.GFile(self._beam_report_path) as f:
        for path, reason, n, first in json.load(f):
          self.bad_records.merge(path, {reason: n}, {reason: first})

  def _beam_pipeline(self, paths):
    """Beam: joins questions -> metadata by question, then -> passages by passage id.

    The same records, ids and skipped-record counts as the plain generator: the QA and
    metadata files are read by one worker each (the ids are their line numbers), the
    passages with ReadFromText (split across workers); both joins are CoGroupByKey. On
    a question with several metadata lines the first one wins, as in the plain generator;
    for a passage id that occurs twice in psgs_w100.tsv (not the case in the DPR release)
    either copy may be kept, while the plain generator keeps the last. A passage field
    with an embedded newline is not supported here (ReadFromText splits on lines). Bad records leave every step on a "bad" output
    and are written as one JSON report that `_after_generation` merges.
    """
    beam = common.beam
    builder = self
    report_path = self._beam_report_path

    def bad_rows(counter):
      for row in counter.records():
        yield beam.pvalue.TaggedOutput("bad", row)

    def read_qa(path):  # -> (question, (lineno, rec))
      counter = common.BadRecordCounter()
      for lineno, rec in builder._read_jsonl(path, counter):
        q = str(rec.get("question", "")).strip() if isinstance(rec, dict) else ""
        yield q, (lineno, rec)
      yield from bad_rows(counter)

    def read_meta(path):  # -> (question, (lineno, passage id))
      counter = common.BadRecordCounter()
      for lineno, rec in builder._read_jsonl(path, counter):
        parsed = _meta_row(rec, path, lineno, counter)
        if parsed:
          yield parsed[0], (lineno, parsed[1])
      yield from bad_rows(counter)

    def parse_passage(line):  # -> (passage id, (text, title))
      counter = common.BadRecordCounter()
      for row in csv.reader([line], delimiter="\t", quotechar='"'):
        parsed = _passage_row(row, paths["psg"], f"line '{line[:40]}'", counter)
        if parsed:
          yield parsed
      yield from bad_rows(counter)

    def by_passage(kv):  # (question, groups) -> (passage id or "", (lineno, rec))
      _, groups = kv
      metas = sorted(groups["meta"])
      pid = metas[0][1] if metas else ""
      for item in groups["qa"]:
        yield pid, item

    def join(kv):
      pid, groups = kv
      found = list(groups["psg"])
      passages = {pid: found[-1]} if found else {}
      counter = common.BadRecordCounter()
      for lineno, rec in groups["qa"]:
        try:
          ex = builder._make_example(rec, (pid or None) if isinstance(rec, dict) else None,
                                     passages, lineno)
        except common.BadRecord as e:
          counter.add(paths["qa"], e.reason, e.detail, f"line {lineno}")
          continue
        yield ex["id"], ex
      yield from bad_rows(counter)

    def write_report(rows):
      merged = common.BadRecordCounter()
      for path, reason, n, first in rows:
        merged.merge(path, {reason: n}, {reason: first})
      tf.io.gfile.makedirs(os.path.dirname(report_path))
      with tf.io.gfile.GFile(report_path, "w") as f:
        json.dump(merged.records(), f)

    def pipeline(root):
      qa = (root | "QAFile" >> beam.Create([paths["qa"]])
            | "ReadQA" >> beam.FlatMap(read_qa).with_outputs("bad", main="ok"))
      meta = (root | "MetaFile" >> beam.Create([paths["meta"]])
              | "ReadMeta" >> beam.FlatMap(read_meta).with_outputs("bad", main="ok"))
      psg = (root | "ReadPassages" >> beam.io.ReadFromText(paths["psg"])
             | "ParsePassages" >> beam.FlatMap(parse_passage).with_outputs("bad", main="ok"))
      qa_pid = ({"qa": qa.ok, "meta": meta.ok} | "JoinMeta" >> beam.CoGroupByKey()
                | "ByPassage" >> beam.FlatMap(by_passage))
      out = ({"qa": qa_pid, "psg": psg.ok} | "JoinPassages" >> beam.CoGroupByKey()
             | "MakeExamples" >> beam.FlatMap(join).with_outputs("bad", main="ok"))
      _ = ((qa.bad, meta.bad, psg.bad, out.bad) | "AllBad" >> beam.Flatten()
           | "CollectBad" >> beam.combiners.ToList()
           | "WriteBadReport" >> beam.Map(write_report))
      return out.ok

    return beam.ptransform_fn(pipeline)()  # pylint: disable=no-value-for-parameter


def _passage_row(row, path, key, counter):
  """(passage id, (text, title)) of a psgs_w100.tsv row; None for the header or a bad row."""
  if row[:1] == ["id"]:
    return None
  if len(row) < 3:
    counter.add(path, "malformed_record", f"{len(row)} columns", key)
    return None
  return row[0], (row[1], row[2])


def _meta_row(rec, path, lineno, counter):
  """(question, passage id of its first answer) of a PAQ.metadata.jsonl record, or None."""
  try:
    question = rec["question"]
    hash(question)
    return question, str(rec["answers"][0]["passage_id"])
  except (KeyError, IndexError, TypeError) as e:
    counter.add(path, "malformed_record", f"no passage_id ({e})", f"line {lineno}")
    return None
