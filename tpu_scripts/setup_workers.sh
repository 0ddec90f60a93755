#!/usr/bin/env bash
# Sets up every worker of the TPU (--worker=all): the project (git clone of
# --repo-url at --repo-ref, or an scp'd tarball of this checkout), Python 3.11
# with a virtualenv, the pinned stack (requirements.txt + constraints/lock.txt,
# jax[tpu] at the locked jax version, `pip install -e .`), and t5x with airio and
# jestimator at pinned commits (skip with --no-t5x). Ends by checking the worker
# count and that every worker sees its TPU chips. Safe to run again.
#
#   tpu_scripts/setup_workers.sh --zone=us-central2-b --accelerator-type=v4-128 [--repo-url=URL] [--dry-run]
set -euo pipefail
# The libraries are checked by shellcheck on their own.
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/lib_job.sh"

usage() {
  cat <<'USAGE'
Usage: tpu_scripts/setup_workers.sh [flags]
  --repo-url=URL       clone the project from URL (REPO_URL); default: scp a tarball of this checkout
  --repo-ref=REF       branch, tag or commit to check out (REPO_REF; default main)
  --tarball=PATH       ship this tarball instead of packing the checkout
  --no-t5x             do not install t5x / airio / jestimator (WITH_T5X=0)
  --t5x-commit=SHA     t5x commit (T5X_COMMIT; default pinned in common.sh)
  --remote-dir=NAME    project directory under the workers' home (REMOTE_DIR; default murag)
  --venv-dir=NAME      virtualenv under the workers' home (VENV_DIR; default murag-venv)
  --python=BIN         Python 3.11 interpreter on the workers (REMOTE_PYTHON; default python3.11)
USAGE
  usage_common
}

parse_flags "common setup" "$@"
setup_workers
info "all $NUM_WORKERS worker(s) of $TPU_NAME are set up"
