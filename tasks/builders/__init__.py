"""TFDS builders for the MuRAG data sources (MuRAG §3.3 pre-training, §3.4 fine-tuning).

Importing this package registers the builders with TFDS:

| TFDS name            | raw input (manual dir)                                   | splits            |
|----------------------|----------------------------------------------------------|-------------------|
| murag_laion          | img2dataset webdataset tars (+ parquet)                  | train             |
| murag_cc             | img2dataset webdataset tars (+ parquet)                  | train             |
| murag_paq            | PAQ.jsonl, PAQ.metadata.jsonl, psgs_w100.tsv             | train             |
| murag_vqa            | VQA v2 questions/annotations, COCO captions + images     | train, validation |
| murag_webqa          | WebQA_train_val.json, imgs.tsv, imgs.lineidx             | train, validation |
| murag_mmqa           | MMQA_{train,dev}.jsonl, MMQA_{texts,images}.jsonl, images | train, validation |
| murag_memory_corpus  | WebQA full-wiki / MMQA documents / generic memory.jsonl  | train             |

Every builder has the configs px224 (default), px64 and px32 (the stored image resolution).
"""
import os
from typing import Optional

import tensorflow_datasets as tfds

from tasks.builders import common
from tasks.builders.image_caption import MuragCc, MuragLaion
from tasks.builders.memory_corpus import MuragMemoryCorpus
from tasks.builders.mmqa import MuragMmqa
from tasks.builders.paq import MuragPaq
from tasks.builders.vqa import MuragVqa
from tasks.builders.webqa import MuragWebqa

BUILDERS = {
    "laion": MuragLaion,
    "cc": MuragCc,
    "paq": MuragPaq,
    "vqa": MuragVqa,
    "webqa": MuragWebqa,
    "mmqa": MuragMmqa,
    "memory_corpus": MuragMemoryCorpus,
}

def build(source: str, *, manual_dir: str, data_dir: str, config: Optional[str] = None,
          file_format: str = "tfrecord", use_beam: bool = False,
          beam_options=None, beam_runner=None,
          on_file_done=None) -> tfds.core.DatasetBuilder:
  """Converts one raw source into TFDS shards and returns the prepared builder.

  Args:
    source: a key of BUILDERS ("webqa", "laion", ...) or a TFDS name ("murag_webqa").
    manual_dir: directory holding the raw files of this source.
    data_dir: TFDS data directory to write to.
    config: builder config name (px224 default; for the memory corpus e.g. webqa_px224).
    file_format: "tfrecord" (read by the seqio tasks) or "array_record" (random access).
    use_beam: build with Apache Beam (optional dependency; laion, cc and paq).
    beam_options: apache_beam PipelineOptions for use_beam (e.g. the runner's flags).
    beam_runner: an apache_beam runner for use_beam (default: Beam's DirectRunner).
    on_file_done: called with a `resume.FileReport` after each input file of the
      resumable sources (laion, cc); under Beam it runs on the workers.

  Returns:
    The prepared tfds builder; its `bad_records` holds the skipped-record counts.
  """
  key = source[len("murag_"):] if source.startswith("murag_") else source
  if key not in BUILDERS:
    raise ValueError(f"unknown source '{source}'; choose one of {sorted(BUILDERS)}")
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"manual_dir '{manual_dir}' for source '{source}' does not exist")
  kwargs = {"data_dir": data_dir, "file_format": file_format}
  if config:
    kwargs["config"] = config
  if use_beam:
    kwargs["use_beam"] = True
  if on_file_done is not None:
    kwargs["on_file_done"] = on_file_done
  builder = BUILDERS[key](**kwargs)
  dl_config = tfds.download.DownloadConfig(manual_dir=manual_dir, beam_options=beam_options,
                                           beam_runner=beam_runner)
  builder.download_and_prepare(download_config=dl_config)
  return builder
