#!/usr/bin/env bash
# Shows the log of a run: the last lines from every worker (default), a live
# stream from one worker (--follow), or a copy of every worker's log
# (--fetch-dir=DIR, one file per worker).
#
#   tpu_scripts/logs.sh --zone=Z --run-name=murag_laion_pretrain_stage1 [--follow] [--dry-run]
set -euo pipefail
# The libraries are checked by shellcheck on their own.
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/logs.sh (--run-name=NAME | --gin-file=PATH) [flags]
  --lines=N          lines from the end of each worker's log (default 100)
  --follow           stream the log of one worker (--worker=N, default 0)
  --worker=N         worker for --follow
  --fetch-dir=DIR    copy every worker's log to DIR/RUN_NAME.workerI.log
USAGE
  usage_common
}

parse_flags "common logs" "$@"
if [[ -z "$RUN_NAME" ]]; then
  ((${#GIN_FILES[@]})) || die "give --run-name=NAME or the run's --gin-file=PATH"
  RUN_NAME="$(basename "${GIN_FILES[-1]}" .gin)"
fi
[[ "$RUN_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "bad run name '$RUN_NAME'"
is_uint "$LINES" || die "--lines must be a number, got '$LINES'"
log="murag_logs/$RUN_NAME.log"

if [[ -n "$FETCH_DIR" ]]; then
  run mkdir -p "$FETCH_DIR"
  for ((i = 0; i < NUM_WORKERS; i++)); do
    tpu_vm scp "$TPU_NAME:$log" "$FETCH_DIR/$RUN_NAME.worker$i.log" "--worker=$i"
  done
elif [[ "$FOLLOW" == 1 ]]; then
  if ! is_uint "$LOG_WORKER" || ((LOG_WORKER >= NUM_WORKERS)); then
    die "--worker must be a worker index below $NUM_WORKERS, got '$LOG_WORKER'"
  fi
  tpu_ssh "$LOG_WORKER" "tail -n $LINES -F $log"
else
  # Each line is prefixed with the worker's host name.
  tpu_ssh all "tail -n $LINES $log | sed \"s/^/[\$(hostname)] /\""
fi
