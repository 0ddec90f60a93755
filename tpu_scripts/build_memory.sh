#!/usr/bin/env bash
# Builds the global memory on the TPU (--worker=all): `python -m
# murag.build_memory` encodes the corpus with a fine-tuned checkpoint
# (--checkpoint-path, bound to CHECKPOINT_PATH: a MODEL_DIR, a step directory or
# a bundle) and writes the embeddings, the ScaNN index and the neighbour files
# to MEMORY_DIR, which the fixed-retrieval stage then reads.
#
#   tpu_scripts/build_memory.sh --zone=Z --accelerator-type=v4-8 --bucket=gs://B \
#     --checkpoint-path=gs://B/murag/murag_webqa_finetune_inbatch [--dry-run]
set -euo pipefail
# The libraries are checked by shellcheck on their own.
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib_job.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/build_memory.sh --checkpoint-path=gs://RUN_DIR [flags]
  --gin-file=PATH      default gin_configs/experiments/murag_webqa_build_memory.gin
  --memory-dir=gs://   default BUCKET/murag/memory/RUN_NAME
  (and every launch.sh flag)
USAGE
  usage_common
}

parse_flags "common job" "$@"
((${#GIN_FILES[@]})) || GIN_FILES=(gin_configs/experiments/murag_webqa_build_memory.gin)
[[ -n "$CHECKPOINT_PATH" ]] \
  || die "build_memory needs the fine-tuned model: --checkpoint-path=gs://BUCKET/murag/RUN (its MODEL_DIR)"
if [[ -z "$MEMORY_DIR" ]]; then
  [[ -n "$BUCKET" ]] || die "set --bucket=gs://B (or BUCKET) or --memory-dir=gs://..."
  [[ -n "$RUN_NAME" ]] || RUN_NAME="$(basename "${GIN_FILES[-1]}" .gin)"
  MEMORY_DIR="$BUCKET/murag/memory/$RUN_NAME"
fi
build_job murag.build_memory
launch_job
info "memory for the fixed-retrieval stage: --memory-dir=$MEMORY_DIR"
