#!/usr/bin/env bash
# Exports a trained model for inference on the TPU (--worker=all):
# `python -m murag.export` with the model gin and runs/export.gin, reading
# CHECKPOINT_PATH (a MODEL_DIR, a step directory or a bundle) and writing the
# inference bundle to EXPORT_DIR. TASK_FEATURE_LENGTHS defaults to the WebQA
# fine-tuning lengths; override it with --gin=TASK_FEATURE_LENGTHS=...
#
#   tpu_scripts/export.sh --zone=Z --accelerator-type=v4-8 --bucket=gs://B \
#     --checkpoint-path=gs://B/murag/murag_webqa_finetune_fixed [--dry-run]
set -euo pipefail
# The libraries are checked by shellcheck on their own.
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib_job.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/export.sh --checkpoint-path=gs://RUN_DIR [flags]
  --gin-file=PATH      default gin_configs/models/murag_base.gin + gin_configs/runs/export.gin
  --export-dir=gs://   default BUCKET/murag/export/<name of the checkpoint's run>
  (and every launch.sh flag)
USAGE
  usage_common
}

parse_flags "common job" "$@"
((${#GIN_FILES[@]})) || GIN_FILES=(gin_configs/models/murag_base.gin gin_configs/runs/export.gin)
[[ -n "$CHECKPOINT_PATH" ]] \
  || die "export needs a trained model: --checkpoint-path=gs://BUCKET/murag/RUN (its MODEL_DIR)"
# Named after the exported run: .../murag_webqa_finetune_fixed -> export_murag_webqa_finetune_fixed.
source_name="$(basename "$CHECKPOINT_PATH")"
[[ -n "$RUN_NAME" ]] || RUN_NAME="export_$source_name"
if [[ -z "$EXPORT_DIR" ]]; then
  [[ -n "$BUCKET" ]] || die "set --bucket=gs://B (or BUCKET) or --export-dir=gs://..."
  EXPORT_DIR="$BUCKET/murag/export/$source_name"
fi
# First, so that a --gin=TASK_FEATURE_LENGTHS=... of the user comes later and wins.
GIN_BINDINGS=('TASK_FEATURE_LENGTHS={"query_tokens": 64, "memory_tokens": 128, "targets": 32}' "${GIN_BINDINGS[@]}")
build_job murag.export
launch_job
info "export goes to $EXPORT_DIR"
