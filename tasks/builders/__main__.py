"""Command line: convert one raw source with its TFDS builder.

  python -m tasks.builders --source=webqa --manual_dir=/data/WebQA \
      --data_dir=~/tensorflow_datasets --config=px224 [--file_format=array_record]
      [--use_beam --beam_pipeline_options=runner=DirectRunner,direct_num_workers=2]

An interrupted laion / cc build resumes from its per-input-file cache when run again.

Prints the split sizes and the skipped-record report (also written as bad_records.json).
"""
import json

from absl import app
from absl import flags

from tasks import builders

_SOURCE = flags.DEFINE_enum("source", None, sorted(builders.BUILDERS), "raw source to convert")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "directory holding the raw files")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write")
_CONFIG = flags.DEFINE_string("config", None, "builder config (px224 default; memory corpus: "
                              "webqa_px224 / mmqa_px224 / generic_px224)")
_FILE_FORMAT = flags.DEFINE_enum("file_format", "tfrecord", ["tfrecord", "array_record"],
                                 "shard format (the seqio tasks read tfrecord)")
_USE_BEAM = flags.DEFINE_bool("use_beam", False, "build with Apache Beam (optional extra)")
_BEAM_OPTIONS = flags.DEFINE_list(
    "beam_pipeline_options", [], "with --use_beam: Beam pipeline options without the leading "
    "dashes, e.g. runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing")


def main(argv):
  del argv
  beam_options = None
  if _BEAM_OPTIONS.value:
    if not _USE_BEAM.value:
      raise app.UsageError("--beam_pipeline_options needs --use_beam")
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
    beam_options = pipeline_options.PipelineOptions([f"--{o}" for o in _BEAM_OPTIONS.value])
  b = builders.build(_SOURCE.value, manual_dir=_MANUAL_DIR.value, data_dir=_DATA_DIR.value,
                     config=_CONFIG.value, file_format=_FILE_FORMAT.value,
                     use_beam=_USE_BEAM.value, beam_options=beam_options)
  print(json.dumps({"dataset": b.info.full_name,
                    "splits": {k: v.num_examples for k, v in b.info.splits.items()},
                    "bad_records": b.bad_records.as_dict()}, indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["source", "manual_dir", "data_dir"])
  app.run(main)
