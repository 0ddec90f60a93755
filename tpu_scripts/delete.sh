#!/usr/bin/env bash
# Deletes the TPU VM / pod slice (or its queued resource, node included).
# Idempotent: nothing to do when it does not exist.
#
#   tpu_scripts/delete.sh --zone=us-central2-b [--queued] [--dry-run]
set -euo pipefail
# The libraries are checked by shellcheck on their own.
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  echo "Usage: tpu_scripts/delete.sh [flags]  (deletes TPU_NAME, or QR_NAME with --queued)"
  usage_common
}

parse_flags "common" "$@"
state="$(resource_state)"
if [[ "$(classify_state "$state")" == absent ]]; then
  info "$(resource_label) does not exist; nothing to delete"
else
  delete_resource
fi
