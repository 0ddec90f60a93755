#!/usr/bin/env bash
# Creates the Cloud TPU VM (single host) or pod slice, directly or through a
# queued resource, and waits until it is ready. Idempotent: an existing healthy
# resource is kept; a preempted or failed one is deleted and created again.
#
#   tpu_scripts/create.sh --zone=us-central2-b --accelerator-type=v4-128 --spot [--queued] [--dry-run]
set -euo pipefail
# The libraries are checked by shellcheck on their own.
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/create.sh [flags]
Creates TPU_NAME (or the queued resource QR_NAME with node TPU_NAME) unless it exists,
then waits until it is READY / ACTIVE.
USAGE
  usage_common
}

parse_flags "common" "$@"
ensure_resource
info "$(resource_label) is ready with $NUM_WORKERS worker(s)"
