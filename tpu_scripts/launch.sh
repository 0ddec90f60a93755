#!/usr/bin/env bash
# Launches a training job on every worker (--worker=all): `python -m
# murag.train` (or `t5x.train` with --runner=t5x) with the given gin files and
# MODEL_DIR under the bucket. The job is detached on each worker; its log is
# ~/murag_logs/RUN_NAME.log (see logs.sh). Launching a run that is already
# running does nothing unless --restart. A relaunch resumes from the newest
# checkpoint in MODEL_DIR.
#
#   tpu_scripts/launch.sh --zone=us-central2-b --accelerator-type=v4-128 --bucket=gs://B \
#     --gin-file=gin_configs/experiments/murag_laion_pretrain_stage1.gin [--dry-run]
set -euo pipefail
# The libraries are checked by shellcheck on their own.
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib_job.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/launch.sh --gin-file=PATH [--gin-file=PATH ...] [flags]
  --gin-file=PATH        gin file relative to the project root (repeatable)
  --runner=murag|t5x     python -m murag.train (default) or python -m t5x.train
  --module=NAME          another T5X-style binary (e.g. murag.build_memory)
  --run-name=NAME        default: the last gin file's name; names the log and MODEL_DIR
  --model-dir=gs://...   default: BUCKET/murag/RUN_NAME
  --train-steps=N        --gin.TRAIN_STEPS=N
  --batch-size=N         --gin.BATCH_SIZE=N (global; must divide by the host count)
  --init-checkpoint=gs://...   --gin.INIT_CHECKPOINT="..."
  --init-from=gs://RUN_DIR     INIT_CHECKPOINT = newest checkpoint under RUN_DIR
  --memory-dir=gs://...  --gin.MEMORY_DIR="..." (fixed-retrieval stage)
  --export-dir=gs://...  --gin.EXPORT_DIR="..."
  --checkpoint-path=gs://...   --gin.CHECKPOINT_PATH="..." (eval, infer, export)
  --gin-str=NAME=TEXT    a string binding, passed as --gin.NAME="TEXT" (repeatable),
                         e.g. --gin-str=STAGE1_MODEL_DIR=gs://B/murag/murag_laion_pretrain_stage1
  --gin=NAME=VALUE       any other binding, passed as --gin.NAME=VALUE (repeatable)
  --tfds-data-dir=gs://...  --gin.TFDS_DATA_DIR="..." and TFDS_DATA_DIR on the workers
  --extra-flag=FLAG      extra flag for the binary (repeatable)
  --foreground           stay attached and stream the output
  --restart              stop a running job of the same run first
USAGE
  usage_common
}

parse_flags "common job" "$@"
build_job murag.train
launch_job
