#!/usr/bin/env bash
# Runs one job on a TPU worker; launch.sh calls it on every worker over ssh.
#
#   remote_run.sh --run=NAME [--workdir=murag] [--venv=murag-venv] [--env=K=V]...
#                 [--foreground] [--restart] -- COMMAND [ARGS...]
#
# Directories are relative to $HOME. The job's output goes to
# ~/murag_logs/NAME.log, its pid to NAME.pid and, when it ends, its exit code to
# NAME.exit (watch_and_resume.sh reads that file). Without --foreground the job
# is detached so the ssh session can return. A job of the same name that is
# still running is left alone, unless --restart asks to stop it first.
set -euo pipefail

run_name=""
workdir="murag"
venv="murag-venv"
foreground=0
restart=0
envs=()
while (($#)); do
  case "$1" in
    --run=*) run_name="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --venv=*) venv="${1#*=}" ;;
    --env=*) envs+=("${1#*=}") ;;
    --foreground) foreground=1 ;;
    --restart) restart=1 ;;
    --detached-child) foreground=2 ;;
    --) shift; break ;;
    *) echo "remote_run.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
(($#)) || { echo "remote_run.sh: no command after --" >&2; exit 2; }
[[ "$run_name" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "remote_run.sh: bad --run '$run_name'" >&2; exit 2; }

log_dir="$HOME/murag_logs"
mkdir -p "$log_dir"
log="$log_dir/$run_name.log"
pid_file="$log_dir/$run_name.pid"
exit_file="$log_dir/$run_name.exit"

if [[ "$foreground" != 2 ]]; then
  if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    if [[ "$restart" == 1 ]]; then
      old="$(cat "$pid_file")"
      echo "remote_run.sh: stopping the running job $run_name (pid $old)" >&2
      kill -- "-$old" 2>/dev/null || kill "$old" 2>/dev/null || true
      for _ in $(seq 150); do kill -0 "$old" 2>/dev/null || break; sleep 0.2; done
    else
      echo "remote_run.sh: job $run_name is already running (pid $(cat "$pid_file")); not starting it again" >&2
      exit 0
    fi
  fi
  rm -f "$exit_file"
fi

if [[ "$foreground" == 0 ]]; then
  # Detach: a new session, so the job outlives ssh and can be stopped as a group.
  args=("--run=$run_name" "--workdir=$workdir" "--venv=$venv" --detached-child)
  for e in "${envs[@]}"; do args+=("--env=$e"); done
  setsid nohup bash "$0" "${args[@]}" -- "$@" >/dev/null 2>&1 </dev/null &
  echo "remote_run.sh: started $run_name on $(hostname); log $log" >&2
  exit 0
fi

echo "$$" >"$pid_file"
cd "$HOME/$workdir"
# shellcheck source=/dev/null
source "$HOME/$venv/bin/activate"
for e in "${envs[@]}"; do export "${e?}"; done
status=0
if [[ "$foreground" == 1 ]]; then
  "$@" 2>&1 | tee -a "$log" || status=$?
else
  "$@" >>"$log" 2>&1 || status=$?
fi
echo "$status" >"$exit_file"
exit "$status"
