#!/usr/bin/env bash
# Worker setup and job launch, shared by setup_workers.sh, launch.sh,
# build_memory.sh, export.sh and watch_and_resume.sh. Sourced after common.sh.
#
# Jobs run the project's T5X-style binaries on every worker at once
# (`--worker=all`), as multi-host JAX needs: python -m murag.train (or
# t5x.train, murag.build_memory, murag.export) --gin_file=...
# --gin.MODEL_DIR=\"gs://...\". Training resumes from the newest checkpoint in
# MODEL_DIR by itself (t5x.train and murag.train both restore from MODEL_DIR
# first), so a relaunch after preemption needs the same command only.

# ---------------------------------------------------------------------------
# Setup.

# Pins of the Python stack read from the local checkout (the workers get the
# same files).
lock_version() {
  local pkg="$1" line
  line="$(grep -i -E "^${pkg}==" "$PROJECT_ROOT/constraints/lock.txt" || true)"
  [[ -n "$line" ]] || die "$PROJECT_ROOT/constraints/lock.txt has no pin for $pkg"
  printf '%s' "${line#*==}"
}

# Copies the project to every worker: git clone/fetch of REPO_URL at REPO_REF,
# or a tarball of this checkout (without .git, .venv and run outputs) by scp.
ship_project() {
  local r="$REMOTE_DIR"
  if [[ -n "$REPO_URL" ]]; then
    local url ref
    url="$(shell_quote "$REPO_URL")"
    ref="$(shell_quote "$REPO_REF")"
    tpu_ssh all "if [ -d $r/.git ]; then git -C $r fetch --quiet origin $ref; else git clone --quiet $url $r && git -C $r fetch --quiet origin $ref; fi && git -C $r checkout --quiet --detach FETCH_HEAD"
  else
    local tb="$TARBALL"
    if [[ -z "$tb" ]]; then
      tb="${TMPDIR:-/tmp}/${REMOTE_DIR}-src-${TPU_NAME}.tar.gz"
      run tar -czf "$tb" --exclude=./.git --exclude=./.venv --exclude=./runs \
        --exclude=__pycache__ -C "$PROJECT_ROOT" .
    elif [[ "$DRY_RUN" != 1 && ! -f "$tb" ]]; then
      die "tarball '$tb' does not exist"
    fi
    tpu_vm scp "$tb" "$TPU_NAME:$REMOTE_DIR-src.tar.gz" --worker=all
    # Unpacked into a fresh directory, so files deleted locally do not linger.
    tpu_ssh all "rm -rf $r.new && mkdir -p $r.new && tar -xzf $r-src.tar.gz -C $r.new && rm -rf $r && mv $r.new $r && rm -f $r-src.tar.gz"
  fi
}

# Python 3.11 and a virtualenv on every worker (the TPU images ship 3.10).
setup_python() {
  local py="$REMOTE_PYTHON" v="$VENV_DIR"
  [[ "$py" =~ ^[A-Za-z0-9._/-]+$ ]] || die "bad --python '$py'"
  tpu_ssh all "(command -v $py >/dev/null || (sudo apt-get update -q && sudo apt-get install -y -q software-properties-common && sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get update -q && sudo apt-get install -y -q $py $py-venv $py-dev)) && ([ -x $v/bin/python ] || $py -m venv $v)"
}

# The project's pinned stack, jax with the TPU runtime, and the project itself.
install_stack() {
  local v="$VENV_DIR" r="$REMOTE_DIR" jax
  jax="$(lock_version jax)"
  tpu_ssh all "$v/bin/pip install -q --upgrade pip && $v/bin/pip install -q -r $r/requirements.txt -c $r/constraints/lock.txt && $v/bin/pip install -q 'jax[tpu]==$jax' -c $r/constraints/lock.txt && $v/bin/pip install -q --no-deps --no-build-isolation -e $r"
}

# t5x and the two libraries it needs from their public repositories, each at a
# pinned commit, installed without dependencies so the pinned stack is kept.
install_t5x() {
  local v="$VENV_DIR" r="$REMOTE_DIR" name url commit parts=()
  local -a repos=(
    "t5x $T5X_REPO $T5X_COMMIT"
    "airio $AIRIO_REPO $AIRIO_COMMIT"
    "jestimator $JESTIMATOR_REPO $JESTIMATOR_COMMIT"
  )
  local spec
  for spec in "${repos[@]}"; do
    read -r name url commit <<<"$spec"
    [[ "$commit" =~ ^[0-9a-f]{7,40}$ ]] || die "$name commit '$commit' is not a git commit id"
    url="$(shell_quote "$url")"
    parts+=("([ -d $name/.git ] || git clone --quiet $url $name) && git -C $name fetch --quiet origin $commit && git -C $name checkout --quiet --detach $commit")
  done
  local joined
  joined="$(printf '%s && ' "${parts[@]}")"
  tpu_ssh all "${joined}$v/bin/pip install -q --no-deps -e t5x -e airio -e jestimator && $v/bin/pip install -q $T5X_EXTRA_PACKAGES -c $r/constraints/lock.txt"
}

# Checks the slice: the expected number of workers, then every worker sees its TPU.
verify_workers() {
  local p ips count
  p="$(project_flag)"
  ips="$(lookup "" gcloud compute tpus tpu-vm describe "$TPU_NAME" "--zone=$ZONE" ${p:+"$p"} '--format=value(networkEndpoints[].ipAddress)')"
  if [[ "$DRY_RUN" != 1 ]]; then
    count="$(tr ';, ' '\n' <<<"$ips" | grep -c . || true)"
    [[ "$count" == "$NUM_WORKERS" ]] \
      || die "$TPU_NAME has $count worker(s) but $ACCELERATOR_TYPE needs $NUM_WORKERS"
  fi
  local check='import jax; print("worker", jax.process_index(), "of", jax.process_count(), "sees", jax.local_device_count(), "of", jax.device_count(), "TPU devices")'
  if [[ "$WITH_T5X" == 1 ]]; then
    check+="; import t5x, airio, jestimator"
  fi
  tpu_ssh all "cd $REMOTE_DIR && ../$VENV_DIR/bin/python -c $(shell_quote "$check")"
}

setup_workers() {
  ship_project
  setup_python
  install_stack
  if [[ "$WITH_T5X" == 1 ]]; then
    install_t5x
  fi
  verify_workers
}

# ---------------------------------------------------------------------------
# Jobs.

# gs:// path check for a flag value.
require_gs() {
  local what="$1" value="$2"
  [[ "$value" == gs://?* ]] || die "$what must be a gs:// path on multi-host TPU (every worker writes it), got '$value'"
}

# Newest checkpoint under a run directory (checkpoint_N of t5x or N of orbax).
latest_checkpoint_in() {
  local dir="${1%/}" listing best="" best_step=-1 path base step
  require_gs "--init-from" "$dir"
  listing="$(lookup "" gcloud storage ls "$dir/")"
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%s' "$dir/LATEST_CHECKPOINT"
    return 0
  fi
  while read -r path; do
    base="${path%/}"
    base="${base##*/}"
    step="${base#checkpoint_}"
    if is_uint "$step" && ((10#$step > best_step)); then
      best_step=$((10#$step))
      best="${path%/}"
    fi
  done <<<"$listing"
  [[ -n "$best" ]] || die "no checkpoint (checkpoint_N or N directory) under $dir"
  printf '%s' "$best"
}

# Fills JOB_ARGS (the python command) and RUN_NAME / MODEL_DIR from the flags.
# $1: default module for the murag runner (murag.train, murag.build_memory ...).
build_job() {
  local default_module="$1" gin_file binding
  ((${#GIN_FILES[@]})) || die "no --gin-file given"
  for gin_file in "${GIN_FILES[@]}"; do
    [[ "$gin_file" == *.gin ]] || die "--gin-file '$gin_file' is not a .gin file"
    [[ -f "$PROJECT_ROOT/$gin_file" ]] \
      || die "gin file '$gin_file' not found under $PROJECT_ROOT (paths are relative to the project root)"
  done
  case "$RUNNER" in
    murag) MODULE="${MODULE:-$default_module}" ;;
    t5x) MODULE="${MODULE:-t5x.train}" ;;
    *) die "--runner must be murag or t5x, got '$RUNNER'" ;;
  esac
  [[ "$MODULE" =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || die "bad --module '$MODULE'"
  if [[ -z "$RUN_NAME" ]]; then
    RUN_NAME="$(basename "${GIN_FILES[-1]}" .gin)"
  fi
  [[ "$RUN_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "run name '$RUN_NAME' may hold letters, digits, '.', '_' and '-' only"
  if [[ -z "$MODEL_DIR" ]]; then
    [[ -n "$BUCKET" ]] || die "set --bucket=gs://B (or BUCKET) or --model-dir=gs://..."
    MODEL_DIR="$BUCKET/murag/$RUN_NAME"
  fi
  require_gs "MODEL_DIR" "$MODEL_DIR"
  if [[ -n "$INIT_FROM" ]]; then
    [[ -z "$INIT_CHECKPOINT" ]] || die "--init-from and --init-checkpoint are exclusive"
    INIT_CHECKPOINT="$(latest_checkpoint_in "$INIT_FROM")"
  fi
  [[ -z "$INIT_CHECKPOINT" ]] || require_gs "--init-checkpoint" "$INIT_CHECKPOINT"
  [[ -z "$CHECKPOINT_PATH" ]] || require_gs "--checkpoint-path" "$CHECKPOINT_PATH"
  [[ -z "$MEMORY_DIR" ]] || require_gs "--memory-dir" "$MEMORY_DIR"
  [[ -z "$EXPORT_DIR" ]] || require_gs "--export-dir" "$EXPORT_DIR"
  [[ -z "$TFDS_DATA_DIR" ]] || require_gs "--tfds-data-dir" "$TFDS_DATA_DIR"
  if [[ -n "$TRAIN_STEPS" ]]; then
    is_uint "$TRAIN_STEPS" || die "--train-steps must be a positive integer, got '$TRAIN_STEPS'"
  fi
  if [[ -n "$BATCH_SIZE" ]]; then
    if ! is_uint "$BATCH_SIZE" || ((BATCH_SIZE == 0)); then
      die "--batch-size must be a positive integer, got '$BATCH_SIZE'"
    fi
    # Each host reads BATCH_SIZE / hosts rows (tasks/pipeline.py).
    ((BATCH_SIZE % NUM_WORKERS == 0)) \
      || die "--batch-size=$BATCH_SIZE is not divisible by the $NUM_WORKERS hosts of $ACCELERATOR_TYPE"
  fi

  JOB_ARGS=(python -m "$MODULE")
  for gin_file in "${GIN_FILES[@]}"; do
    JOB_ARGS+=("--gin_file=$gin_file")
  done
  JOB_ARGS+=("--gin.MODEL_DIR=\"$MODEL_DIR\"")
  [[ -z "$TRAIN_STEPS" ]] || JOB_ARGS+=("--gin.TRAIN_STEPS=$TRAIN_STEPS")
  [[ -z "$BATCH_SIZE" ]] || JOB_ARGS+=("--gin.BATCH_SIZE=$BATCH_SIZE")
  [[ -z "$INIT_CHECKPOINT" ]] || JOB_ARGS+=("--gin.INIT_CHECKPOINT=\"$INIT_CHECKPOINT\"")
  [[ -z "$CHECKPOINT_PATH" ]] || JOB_ARGS+=("--gin.CHECKPOINT_PATH=\"$CHECKPOINT_PATH\"")
  [[ -z "$MEMORY_DIR" ]] || JOB_ARGS+=("--gin.MEMORY_DIR=\"$MEMORY_DIR\"")
  [[ -z "$EXPORT_DIR" ]] || JOB_ARGS+=("--gin.EXPORT_DIR=\"$EXPORT_DIR\"")
  [[ -z "$TFDS_DATA_DIR" ]] || JOB_ARGS+=("--gin.TFDS_DATA_DIR=\"$TFDS_DATA_DIR\"")
  for binding in "${GIN_STR_BINDINGS[@]}"; do
    [[ "$binding" =~ ^[A-Za-z_][A-Za-z0-9_./@]*=[^\"]+$ ]] \
      || die "--gin-str '$binding' must look like NAME=TEXT without double quotes (e.g. --gin-str=STAGE1_MODEL_DIR=gs://b/run)"
    JOB_ARGS+=("--gin.${binding%%=*}=\"${binding#*=}\"")
  done
  for binding in "${GIN_BINDINGS[@]}"; do
    [[ "$binding" =~ ^[A-Za-z_][A-Za-z0-9_./@]*=.+$ ]] \
      || die "--gin '$binding' must look like NAME=VALUE (e.g. --gin=TRAIN_STEPS=1000)"
    JOB_ARGS+=("--gin.$binding")
  done
  # The project root is the working directory on the workers; t5x adds its own
  # repository to the search path for its `include 't5x/configs/...'` lines.
  JOB_ARGS+=("--gin_search_paths=.")
  if [[ "$RUNNER" == t5x ]]; then
    JOB_ARGS+=(--alsologtostderr)
  elif ((NUM_WORKERS > 1)); then
    # murag binaries call jax.distributed.initialize() (Cloud TPU auto-detection).
    JOB_ARGS+=(--jax_distributed_auto)
  fi
  JOB_ARGS+=("${EXTRA_FLAGS[@]}")
}

# Remote command that starts the job on a worker through remote_run.sh.
job_remote_command() {
  local mode="${1:-}" args=()
  args=("--run=$RUN_NAME" "--workdir=$REMOTE_DIR" "--venv=$VENV_DIR")
  [[ -z "$TFDS_DATA_DIR" ]] || args+=("--env=TFDS_DATA_DIR=$TFDS_DATA_DIR")
  [[ "$FOREGROUND" != 1 ]] || args+=(--foreground)
  [[ "$RESTART" != 1 && "$mode" != restart ]] || args+=(--restart)
  printf 'bash %s/tpu_scripts/remote_run.sh %s -- %s' "$REMOTE_DIR" "$(quote_all "${args[@]}")" "$(quote_all "${JOB_ARGS[@]}")"
}

# Starts the job on all workers (JOB_ARGS must be built).
launch_job() {
  info "run $RUN_NAME: MODEL_DIR=$MODEL_DIR on $NUM_WORKERS worker(s); logs: ~/murag_logs/$RUN_NAME.log on each worker"
  tpu_ssh all "$(job_remote_command "${1:-}")"
}

# Job status on worker 0: its exit code, RUNNING, NONE (never started) or
# NOSETUP (the worker has no virtualenv yet).
job_status() {
  local p out l="murag_logs/$RUN_NAME"
  p="$(project_flag)"
  out="$(lookup "$DRY_RUN_JOB_STATUS" gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=0 \
    "--command=if [ ! -x $VENV_DIR/bin/python ]; then echo NOSETUP; elif [ -f $l.exit ]; then cat $l.exit; elif [ -f $l.pid ] && kill -0 \$(cat $l.pid) 2>/dev/null; then echo RUNNING; else echo NONE; fi" \
    "--zone=$ZONE" ${p:+"$p"})"
  out="$(tr -d '[:space:]' <<<"$out")"
  printf '%s' "${out:-NONE}"
}
