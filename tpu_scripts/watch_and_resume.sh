#!/usr/bin/env bash
# Keeps a training run going on spot / preemptible / queued capacity. Every
# --poll-seconds it checks the TPU (or queued resource):
#   absent, preempted, terminated, suspended or failed -> delete what is left,
#     create it again, wait for it, set up every worker, launch the run;
#   ready -> asks worker 0 about the run: finished with 0 -> done; still running
#     -> nothing; never started -> launch (after setup when the worker has no
#     virtualenv); exited with an error -> relaunch with --restart, at most
#     --max-failures times in a row;
#   anything else (creating, waiting for resources ...) -> wait.
# Every launch resumes from the newest checkpoint in MODEL_DIR, so the run
# continues where its last checkpoint left it. Takes the flags of
# create.sh, setup_workers.sh and launch.sh. With --dry-run it makes one check
# (answers from DRY_RUN_STATE and DRY_RUN_JOB_STATUS) and prints its commands.
#
#   tpu_scripts/watch_and_resume.sh --zone=Z --accelerator-type=v4-128 --spot --bucket=gs://B \
#     --gin-file=gin_configs/experiments/murag_laion_pretrain_stage1.gin
set -euo pipefail
# The libraries are checked by shellcheck on their own.
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib_job.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/watch_and_resume.sh --gin-file=PATH [flags of create.sh, setup_workers.sh, launch.sh]
  --max-checks=N      stop after N checks (default 0: until the run finishes)
  --max-failures=N    give up after N consecutive failed job exits, or N failed recreations (default 3)
USAGE
  usage_common
}

parse_flags "common setup job watch" "$@"
is_uint "$MAX_CHECKS" || die "--max-checks must be a number, got '$MAX_CHECKS'"
is_uint "$MAX_FAILURES" || die "--max-failures must be a number, got '$MAX_FAILURES'"
build_job murag.train

# Recreates the resource and starts the run on fresh workers.
recover() {
  local state="$1"
  if [[ "$(classify_state "$state")" == recreate ]]; then
    info "$(resource_label) is $state: deleting it"
    delete_resource
  fi
  info "creating $(resource_label)"
  create_resource
  wait_until_ready
  setup_workers
  launch_job
}

setup_and_launch() {
  setup_workers
  launch_job
}

# attempt WHAT CMD...: runs CMD in a subshell that keeps errexit, so that a
# failed step (a stockout, an ssh error) is retried at the next check instead of
# ending the watcher; gives up after MAX_FAILURES failed steps in a row.
step_failures=0
attempt() {
  local what="$1" rc
  shift
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  if ((rc == 0)); then
    step_failures=0
    return 0
  fi
  step_failures=$((step_failures + 1))
  ((step_failures < MAX_FAILURES)) || die "$what failed $step_failures times in a row"
  info "$what failed (exit $rc); trying again at the next check"
}

checks=0
failures=0
while true; do
  checks=$((checks + 1))
  state="$(resource_state)"
  case "$(classify_state "$state")" in
    absent | recreate) attempt "recreating $(resource_label)" recover "$state" ;;
    wait) info "$(resource_label) is $state; waiting" ;;
    ok)
      status="$(job_status)"
      case "$status" in
        0)
          info "run $RUN_NAME finished; its checkpoints are in $MODEL_DIR"
          exit 0
          ;;
        RUNNING) failures=0 ;;
        NOSETUP) attempt "setting up and launching" setup_and_launch ;;
        NONE) attempt "launching" launch_job ;;
        *)
          failures=$((failures + 1))
          ((failures <= MAX_FAILURES)) \
            || die "run $RUN_NAME failed $MAX_FAILURES times in a row (last exit $status); see tpu_scripts/logs.sh --run-name=$RUN_NAME"
          info "run $RUN_NAME exited with $status; relaunching from the last checkpoint ($failures/$MAX_FAILURES)"
          attempt "relaunching" launch_job restart
          ;;
      esac
      ;;
  esac
  if [[ "$DRY_RUN" == 1 ]] || ((MAX_CHECKS > 0 && checks >= MAX_CHECKS)); then
    break
  fi
  sleep "$POLL_SECONDS"
done
