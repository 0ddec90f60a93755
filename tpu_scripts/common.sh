#!/usr/bin/env bash
# The globals below are read by the scripts that source this file.
# shellcheck disable=SC2034
# Shared library of the Cloud TPU scripts: configuration, flag parsing, dry-run
# execution, worker counts and the TPU resource life cycle (describe / create /
# delete / wait). Sourced by every script in tpu_scripts/; it runs nothing itself.
#
# Configuration comes from flags or from the environment (flags win):
#   PROJECT, ZONE, ACCELERATOR_TYPE (v4-8, v4-128, v5litepod-8, v5p-16, v6e-8 ...),
#   RUNTIME_VERSION (default derived from the accelerator generation), BUCKET,
#   TPU_NAME, QR_NAME (queued resource id, default "$TPU_NAME-qr"),
#   SPOT=1 / PREEMPTIBLE=1 / QUEUED=1 / DRY_RUN=1.
#
# In --dry-run mode every command is printed on its own line, shell-quoted so it
# can be pasted, and nothing runs. Lookups (describe, ls) are printed too; their
# answer is then taken from DRY_RUN_STATE (default: the resource does not exist).

# ---------------------------------------------------------------------------
# Defaults (the environment may set any of these before the script starts).
PROJECT="${PROJECT:-}"
ZONE="${ZONE:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
BUCKET="${BUCKET:-}"
TPU_NAME="${TPU_NAME:-murag-tpu}"
QR_NAME="${QR_NAME:-}"
SPOT="${SPOT:-0}"
PREEMPTIBLE="${PREEMPTIBLE:-0}"
QUEUED="${QUEUED:-0}"
DRY_RUN="${DRY_RUN:-0}"
DRY_RUN_STATE="${DRY_RUN_STATE:-}"
DRY_RUN_JOB_STATUS="${DRY_RUN_JOB_STATUS:-NONE}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-7200}"
POLL_SECONDS="${POLL_SECONDS:-60}"

# Project source on the workers: a git clone of REPO_URL at REPO_REF, or (when
# REPO_URL is empty) a tarball of this checkout copied with scp.
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-main}"
TARBALL="${TARBALL:-}"
# Home-relative directories on every worker (ssh sessions start in $HOME).
REMOTE_DIR="${REMOTE_DIR:-murag}"
VENV_DIR="${VENV_DIR:-murag-venv}"
REMOTE_PYTHON="${REMOTE_PYTHON:-python3.11}"
# t5x is not on the package registry: it is cloned at a pinned commit, together
# with the two libraries DESIGN.md ("Running under t5x") found it needs from
# their public repositories. Installed with --no-deps so the pinned stack stays.
WITH_T5X="${WITH_T5X:-1}"
T5X_REPO="${T5X_REPO:-https://github.com/google-research/t5x}"
T5X_COMMIT="${T5X_COMMIT:-cc342d419ec3e3e9c4bf1df33c82330cafdc1e16}"
AIRIO_REPO="${AIRIO_REPO:-https://github.com/google/airio}"
AIRIO_COMMIT="${AIRIO_COMMIT:-69897df7d9a427b947a9f7bb4164c7782b43e601}"
JESTIMATOR_REPO="${JESTIMATOR_REPO:-https://github.com/google-research/jestimator}"
JESTIMATOR_COMMIT="${JESTIMATOR_COMMIT:-326824a477feef6d92e6f44175000907a72899ca}"
# Registry packages t5x / airio import that the project's own stack lacks.
T5X_EXTRA_PACKAGES="${T5X_EXTRA_PACKAGES:-tensorflow-serving-api==2.20.0 grain==0.2.12 fiddle jaxtyping cached-property chex}"

# Job settings (launch.sh, build_memory.sh, export.sh, watch_and_resume.sh).
RUNNER="${RUNNER:-murag}"
MODULE="${MODULE:-}"
RUN_NAME="${RUN_NAME:-}"
MODEL_DIR="${MODEL_DIR:-}"
TRAIN_STEPS="${TRAIN_STEPS:-}"
BATCH_SIZE="${BATCH_SIZE:-}"
INIT_CHECKPOINT="${INIT_CHECKPOINT:-}"
INIT_FROM="${INIT_FROM:-}"
CHECKPOINT_PATH="${CHECKPOINT_PATH:-}"
MEMORY_DIR="${MEMORY_DIR:-}"
EXPORT_DIR="${EXPORT_DIR:-}"
TFDS_DATA_DIR="${TFDS_DATA_DIR:-}"
FOREGROUND=0
RESTART=0
GIN_FILES=()
GIN_BINDINGS=()
GIN_STR_BINDINGS=()
EXTRA_FLAGS=()
# logs.sh
FOLLOW=0
LINES=100
FETCH_DIR=""
# watch_and_resume.sh
MAX_CHECKS="${MAX_CHECKS:-0}"
MAX_FAILURES="${MAX_FAILURES:-3}"
LOG_WORKER=0

SCRIPT_NAME="$(basename "$0")"
TPU_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_ROOT="${MURAG_PROJECT_ROOT:-$(dirname "$TPU_SCRIPTS_DIR")}"

# ---------------------------------------------------------------------------
# Messages, quoting and execution.

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 2
}

info() {
  printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2
}

# Prints one argument so that a POSIX shell reads it back unchanged.
shell_quote() {
  local s="$1"
  if [[ -n "$s" && "$s" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# Prints all arguments shell-quoted and separated by single spaces.
quote_all() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(shell_quote "$arg")"
  done
  printf '%s' "$out"
}

# Runs a command, or prints it (one line) in dry-run mode.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%s\n' "$(quote_all "$@")"
  else
    info "+ $(quote_all "$@")"
    "$@"
  fi
}

# lookup DRY_ANSWER CMD...: runs a lookup command and prints its standard output
# (empty when it fails). In dry-run mode the command is printed on the script's
# stdout (not into the captured answer) and DRY_ANSWER is the answer.
lookup() {
  local answer="$1"
  shift
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%s\n' "$(quote_all "$@")" >&3
    printf '%s' "$answer"
  else
    "$@" || true
  fi
}
# File descriptor 3 is the terminal's stdout, so lookups inside $( ) still print.
exec 3>&1

# ---------------------------------------------------------------------------
# Flags. Every script passes the flag groups it accepts to parse_flags.

usage_common() {
  cat <<'EOF'
Common flags (or environment variables):
  --project=ID            GCP project (PROJECT; default: gcloud's configured project)
  --zone=ZONE             zone of the TPU (ZONE; required)
  --accelerator-type=T    v4-8, v4-128, v5litepod-8, v5litepod-16, v5p-8, v6e-8 ... (ACCELERATOR_TYPE)
  --runtime-version=V     TPU software version (RUNTIME_VERSION; default by generation)
  --bucket=gs://B         bucket for checkpoints, memory and exports (BUCKET)
  --tpu-name=NAME         TPU VM / node id (TPU_NAME; default murag-tpu)
  --qr-name=NAME          queued resource id (QR_NAME; default TPU_NAME-qr)
  --spot | --preemptible  spot or preemptible capacity (SPOT=1 / PREEMPTIBLE=1)
  --queued                request through queued resources (QUEUED=1)
  --dry-run               print every command, one per line, run nothing (DRY_RUN=1)
  --wait-timeout=SECONDS  how long to wait for READY / ACTIVE (WAIT_TIMEOUT; default 7200)
  --poll-seconds=SECONDS  interval between state checks (POLL_SECONDS; default 60)
EOF
}

# Group of each flag; value flags end in "=".
declare -A FLAG_GROUP=(
  [project=]=common [zone=]=common [accelerator-type=]=common
  [runtime-version=]=common [bucket=]=common [tpu-name=]=common [qr-name=]=common
  [spot]=common [preemptible]=common [queued]=common [dry-run]=common
  [wait-timeout=]=common [poll-seconds=]=common
  [repo-url=]=setup [repo-ref=]=setup [tarball=]=setup [no-t5x]=setup
  [remote-dir=]=setup [venv-dir=]=setup [python=]=setup [t5x-commit=]=setup
  [gin-file=]="job logs" [runner=]=job [module=]=job [run-name=]="job logs" [model-dir=]=job
  [gin=]=job [gin-str=]=job [checkpoint-path=]=job [train-steps=]=job [batch-size=]=job [init-checkpoint=]=job
  [init-from=]=job [memory-dir=]=job [export-dir=]=job [tfds-data-dir=]=job
  [extra-flag=]=job [foreground]=job [restart]=job
  [follow]=logs [lines=]=logs [fetch-dir=]=logs [worker=]=logs
  [max-checks=]=watch [max-failures=]=watch
)

set_flag() {
  local name="$1" value="$2"
  case "$name" in
    project) PROJECT="$value" ;;
    zone) ZONE="$value" ;;
    accelerator-type) ACCELERATOR_TYPE="$value" ;;
    runtime-version) RUNTIME_VERSION="$value" ;;
    bucket) BUCKET="$value" ;;
    tpu-name) TPU_NAME="$value" ;;
    qr-name) QR_NAME="$value" ;;
    spot) SPOT=1 ;;
    preemptible) PREEMPTIBLE=1 ;;
    queued) QUEUED=1 ;;
    dry-run) DRY_RUN=1 ;;
    wait-timeout) WAIT_TIMEOUT="$value" ;;
    poll-seconds) POLL_SECONDS="$value" ;;
    repo-url) REPO_URL="$value" ;;
    repo-ref) REPO_REF="$value" ;;
    tarball) TARBALL="$value" ;;
    no-t5x) WITH_T5X=0 ;;
    remote-dir) REMOTE_DIR="$value" ;;
    venv-dir) VENV_DIR="$value" ;;
    python) REMOTE_PYTHON="$value" ;;
    t5x-commit) T5X_COMMIT="$value" ;;
    gin-file) GIN_FILES+=("$value") ;;
    runner) RUNNER="$value" ;;
    module) MODULE="$value" ;;
    run-name) RUN_NAME="$value" ;;
    model-dir) MODEL_DIR="$value" ;;
    gin) GIN_BINDINGS+=("$value") ;;
    gin-str) GIN_STR_BINDINGS+=("$value") ;;
    checkpoint-path) CHECKPOINT_PATH="$value" ;;
    train-steps) TRAIN_STEPS="$value" ;;
    batch-size) BATCH_SIZE="$value" ;;
    init-checkpoint) INIT_CHECKPOINT="$value" ;;
    init-from) INIT_FROM="$value" ;;
    memory-dir) MEMORY_DIR="$value" ;;
    export-dir) EXPORT_DIR="$value" ;;
    tfds-data-dir) TFDS_DATA_DIR="$value" ;;
    extra-flag) EXTRA_FLAGS+=("$value") ;;
    foreground) FOREGROUND=1 ;;
    restart) RESTART=1 ;;
    follow) FOLLOW=1 ;;
    lines) LINES="$value" ;;
    fetch-dir) FETCH_DIR="$value" ;;
    worker) LOG_WORKER="$value" ;;
    max-checks) MAX_CHECKS="$value" ;;
    max-failures) MAX_FAILURES="$value" ;;
    *) die "internal: unhandled flag --$name" ;;
  esac
}

# True when one of the flag's groups is among the script's ACCEPTED_GROUPS.
group_accepted() {
  local g
  for g in $1; do
    [[ " $ACCEPTED_GROUPS " == *" $g "* ]] && return 0
  done
  return 1
}

# parse_flags GROUPS "$@": fills the globals above from the flags of the given
# groups (a space-separated list); --help prints the script's usage and exits.
parse_flags() {
  local arg name value group
  ACCEPTED_GROUPS="$1"
  shift
  while (($#)); do
    arg="$1"
    shift
    case "$arg" in
      -h | --help)
        usage
        exit 0
        ;;
      --*=*)
        name="${arg%%=*}"
        name="${name#--}"
        value="${arg#*=}"
        [[ -n "${FLAG_GROUP[$name=]:-}" ]] || die "unknown flag --$name (see --help)"
        group="${FLAG_GROUP[$name=]}"
        ;;
      --*)
        name="${arg#--}"
        if [[ -n "${FLAG_GROUP[$name]:-}" ]]; then
          group="${FLAG_GROUP[$name]}"
          value=""
        elif [[ -n "${FLAG_GROUP[$name=]:-}" ]]; then
          group="${FLAG_GROUP[$name=]}"
          (($#)) || die "flag --$name needs a value"
          value="$1"
          shift
        else
          die "unknown flag --$name (see --help)"
        fi
        ;;
      *) die "unexpected argument '$arg' (flags look like --name=value; see --help)" ;;
    esac
    group_accepted "$group" || die "flag --$name is not used by $SCRIPT_NAME"
    set_flag "$name" "$value"
  done
  finalize_common
}

# Worker (host VM) count of an accelerator type.
#   v2, v3, v4, v5p: the suffix counts TensorCores, 2 per chip and 4 chips per
#     host, so one host per 8 (v4-8 -> 1, v4-128 -> 16, v5p-16 -> 2).
#   v5litepod (v5e), v6e: the suffix counts chips; slices of up to 8 chips are a
#     single VM, larger slices use 4-chip VMs (v5litepod-16 -> 4, -256 -> 64).
workers_for() {
  local type="$1" gen n
  [[ "$type" =~ ^(v2|v3|v4|v5p|v5litepod|v6e)-([0-9]+)$ ]] \
    || die "unknown accelerator type '$type' (expected e.g. v4-8, v4-128, v5litepod-8, v5p-16, v6e-8)"
  gen="${BASH_REMATCH[1]}"
  n="${BASH_REMATCH[2]}"
  case "$gen" in
    v2 | v3 | v4 | v5p)
      ((n >= 8 && n % 8 == 0)) || die "accelerator type '$type': $gen sizes are multiples of 8 TensorCores"
      echo $((n / 8))
      ;;
    v5litepod | v6e)
      if ((n == 1 || n == 4 || n == 8)); then
        echo 1
      elif ((n > 8 && n % 4 == 0)); then
        echo $((n / 4))
      else
        die "accelerator type '$type': $gen sizes are 1, 4, 8 or a multiple of 4 above 8 chips"
      fi
      ;;
  esac
}

# Default TPU software version for JAX, by generation.
default_runtime_for() {
  case "$1" in
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "no default runtime version for '$1'; pass --runtime-version" ;;
  esac
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

finalize_common() {
  [[ -n "$ZONE" ]] || die "ZONE is not set: pass --zone=ZONE or export ZONE"
  NUM_WORKERS="$(workers_for "$ACCELERATOR_TYPE")"
  [[ -n "$RUNTIME_VERSION" ]] || RUNTIME_VERSION="$(default_runtime_for "$ACCELERATOR_TYPE")"
  [[ -n "$QR_NAME" ]] || QR_NAME="${TPU_NAME}-qr"
  [[ "$TPU_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "TPU name '$TPU_NAME' must be lowercase letters, digits and dashes, starting with a letter"
  if [[ "$SPOT" == 1 && "$PREEMPTIBLE" == 1 ]]; then
    die "--spot and --preemptible are exclusive"
  fi
  if [[ "$QUEUED" == 1 && "$PREEMPTIBLE" == 1 ]]; then
    die "queued resources take --spot, not --preemptible"
  fi
  if [[ -n "$BUCKET" ]]; then
    [[ "$BUCKET" == gs://* ]] || BUCKET="gs://$BUCKET"
    BUCKET="${BUCKET%/}"
  fi
  is_uint "$WAIT_TIMEOUT" || die "--wait-timeout must be a number of seconds, got '$WAIT_TIMEOUT'"
  is_uint "$POLL_SECONDS" || die "--poll-seconds must be a number of seconds, got '$POLL_SECONDS'"
  local d
  for d in "$REMOTE_DIR" "$VENV_DIR"; do
    [[ "$d" =~ ^[A-Za-z0-9._-]+$ && "$d" != . && "$d" != .. ]] \
      || die "remote directory '$d' must be one plain name under the workers' home directory"
  done
  info "$ACCELERATOR_TYPE: $NUM_WORKERS worker(s), runtime $RUNTIME_VERSION, zone $ZONE"
}

# ---------------------------------------------------------------------------
# gcloud wrappers.

project_flag() {
  if [[ -n "$PROJECT" ]]; then
    printf '%s' "--project=$PROJECT"
  fi
}

# gcloud compute tpus tpu-vm SUBCOMMAND ARGS... (zone and project appended).
tpu_vm() {
  local p
  p="$(project_flag)"
  run gcloud compute tpus tpu-vm "$@" "--zone=$ZONE" ${p:+"$p"}
}

# Runs REMOTE_COMMAND on the given worker ("all" or an index).
tpu_ssh() {
  local worker="$1" remote="$2"
  tpu_vm ssh "$TPU_NAME" "--worker=$worker" "--command=$remote"
}

# describe_state DRY_ANSWER CMD...: the state printed by a describe command;
# ABSENT when gcloud reports that the resource does not exist, UNKNOWN when the
# lookup itself fails (network, auth: the caller waits and asks again).
describe_state() {
  local answer="$1" out err rc=0
  shift
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%s\n' "$(quote_all "$@")" >&3
    printf '%s' "${answer:-ABSENT}"
    return 0
  fi
  err="$(mktemp)"
  out="$("$@" 2>"$err")" || rc=$?
  if ((rc == 0)); then
    printf '%s' "${out:-UNKNOWN}"
  elif grep -qiE 'not[ _]?found|does not exist' "$err"; then
    printf 'ABSENT'
  else
    info "lookup failed ($(quote_all "$@")): $(head -c 400 "$err")"
    printf 'UNKNOWN'
  fi
  rm -f "$err"
}

# State of the TPU VM (READY, CREATING, PREEMPTED, ...), ABSENT or UNKNOWN.
tpu_state() {
  local p
  p="$(project_flag)"
  describe_state "$DRY_RUN_STATE" gcloud compute tpus tpu-vm describe "$TPU_NAME" "--zone=$ZONE" ${p:+"$p"} '--format=value(state)'
}

# State of the queued resource (ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED, ...), ABSENT or UNKNOWN.
qr_state() {
  local p
  p="$(project_flag)"
  describe_state "$DRY_RUN_STATE" gcloud compute tpus queued-resources describe "$QR_NAME" "--zone=$ZONE" ${p:+"$p"} '--format=value(state.state)'
}

capacity_flags() {
  if [[ "$SPOT" == 1 ]]; then
    echo "--spot"
  elif [[ "$PREEMPTIBLE" == 1 ]]; then
    echo "--preemptible"
  fi
}

create_tpu_vm() {
  local cap
  cap="$(capacity_flags)"
  tpu_vm create "$TPU_NAME" "--accelerator-type=$ACCELERATOR_TYPE" \
    "--version=$RUNTIME_VERSION" ${cap:+"$cap"}
}

create_queued_resource() {
  local p cap
  p="$(project_flag)"
  cap="$(capacity_flags)"
  run gcloud compute tpus queued-resources create "$QR_NAME" "--node-id=$TPU_NAME" \
    "--zone=$ZONE" ${p:+"$p"} "--accelerator-type=$ACCELERATOR_TYPE" \
    "--runtime-version=$RUNTIME_VERSION" ${cap:+"$cap"}
}

delete_tpu_vm() {
  tpu_vm delete "$TPU_NAME" --quiet
}

delete_queued_resource() {
  local p
  p="$(project_flag)"
  # --force deletes the node of the queued resource first.
  run gcloud compute tpus queued-resources delete "$QR_NAME" "--zone=$ZONE" ${p:+"$p"} --force --quiet
}

# Classifies a state of the TPU VM or the queued resource.
#   ok: usable; wait: on its way (or the lookup failed); recreate: preempted or
#   broken; absent: none.
classify_state() {
  case "$1" in
    READY | ACTIVE) echo ok ;;
    ABSENT) echo absent ;;
    PREEMPTED | TERMINATED | SUSPENDING | SUSPENDED | FAILED) echo recreate ;;
    *) echo wait ;;
  esac
}

resource_state() {
  if [[ "$QUEUED" == 1 ]]; then qr_state; else tpu_state; fi
}

create_resource() {
  if [[ "$QUEUED" == 1 ]]; then create_queued_resource; else create_tpu_vm; fi
}

delete_resource() {
  if [[ "$QUEUED" == 1 ]]; then delete_queued_resource; else delete_tpu_vm; fi
}

# Waits until the resource is usable; fails on timeout or when it breaks.
wait_until_ready() {
  local start state kind
  start="$SECONDS"
  while true; do
    state="$(resource_state)"
    [[ "$DRY_RUN" == 1 ]] && return 0
    kind="$(classify_state "$state")"
    case "$kind" in
      ok) return 0 ;;
      recreate | absent) die "$(resource_label) is $state while waiting for it to become ready" ;;
    esac
    ((SECONDS - start < WAIT_TIMEOUT)) || die "$(resource_label) still $state after ${WAIT_TIMEOUT}s"
    info "$(resource_label) is $state; checking again in ${POLL_SECONDS}s"
    sleep "$POLL_SECONDS"
  done
}

resource_label() {
  if [[ "$QUEUED" == 1 ]]; then
    printf 'queued resource %s' "$QR_NAME"
  else
    printf 'TPU VM %s' "$TPU_NAME"
  fi
}

# Idempotent: creates the resource unless it exists; a preempted or failed one
# is deleted and created again. Returns once it is ready.
ensure_resource() {
  local state kind start="$SECONDS"
  state="$(resource_state)"
  # A failed lookup says nothing about the resource: ask again before deciding.
  while [[ "$state" == UNKNOWN ]] && ((SECONDS - start < WAIT_TIMEOUT)); do
    sleep "$POLL_SECONDS"
    state="$(resource_state)"
  done
  [[ "$state" != UNKNOWN ]] || die "could not look up $(resource_label) for ${WAIT_TIMEOUT}s"
  kind="$(classify_state "$state")"
  case "$kind" in
    ok | wait) info "$(resource_label) exists ($state); not creating it" ;;
    absent) create_resource ;;
    recreate)
      info "$(resource_label) is $state; deleting and creating it again"
      delete_resource
      create_resource
      ;;
  esac
  wait_until_ready
}
