"""The scripts' own logic run for real (not dry-run).

gcloud is not installed here and no TPU can be reached, so a stand-in `gcloud`
executable placed first on PATH records every call and answers the lookups
(describe, ssh status check, storage ls) from scripted files. What runs is the
real control flow of the scripts: waiting, recreating after preemption, setup,
relaunching after a failure, and picking the newest checkpoint. remote_run.sh,
the part that runs on the workers, is executed locally in a temporary HOME.
"""
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.tpu_scripts.helpers import SCRIPTS, make_project_root, script_env

STAGE1 = "gin_configs/experiments/murag_laion_pretrain_stage1.gin"

_FAKE_GCLOUD = r"""#!/usr/bin/env bash
set -euo pipefail
d="$FAKE_GCLOUD_DIR"
{ printf 'gcloud'; printf ' %q' "$@"; printf '\n'; } >>"$d/calls.log"
pop() {
  [[ -s "$d/$1" ]] || { echo "fake gcloud: no scripted answer left in $1 for: $*" >&2; exit 9; }
  head -n 1 "$d/$1"
  sed -i 1d "$d/$1"
}
# `failures` lists subcommands (create, delete ...) whose next call fails.
if [[ -s "$d/failures" && "$(head -n 1 "$d/failures")" == "$4" ]]; then
  sed -i 1d "$d/failures"
  echo "ERROR: (gcloud.compute.tpus.$3.$4) There is no more capacity in the zone" >&2
  exit 1
fi
state() {
  local s
  s="$(pop states)"
  case "$s" in
    ABSENT) echo "ERROR: (gcloud) NOT_FOUND: Resource 'x' was not found" >&2; exit 1 ;;
    FAIL) echo "ERROR: (gcloud) There was a problem refreshing your current auth tokens" >&2; exit 1 ;;
    *) echo "$s" ;;
  esac
}
case "$*" in
  *"tpu-vm describe"*"value(state)"*) state ;;
  *"queued-resources describe"*) state ;;
  *"networkEndpoints"*) cat "$d/endpoints" ;;
  *"tpu-vm ssh"*"--worker=0"*"NOSETUP"*) pop statuses ;;
  *"storage ls"*) cat "$d/listing" ;;
esac
"""


@pytest.fixture
def fake(tmp_path):
  """A PATH with the stand-in gcloud, and the environment to run the scripts with."""
  bin_dir, state_dir = tmp_path / "bin", tmp_path / "gcloud"
  bin_dir.mkdir()
  state_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(_FAKE_GCLOUD)
  gcloud.chmod(0o755)
  for name in ("states", "statuses", "listing", "failures", "calls.log"):
    (state_dir / name).write_text("")
  (state_dir / "endpoints").write_text("10.0.0.1\n")
  env = script_env(make_project_root(tmp_path / "project"),
                   PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                   FAKE_GCLOUD_DIR=str(state_dir), TMPDIR=str(tmp_path), POLL_SECONDS="0")
  return state_dir, env


def _script(state_dir, name, lines):
  (state_dir / name).write_text("".join(f"{line}\n" for line in lines))


def _calls(state_dir):
  return [shlex.split(line) for line in (state_dir / "calls.log").read_text().splitlines()]


def _run(name, args, env):
  return subprocess.run(["bash", str(SCRIPTS / name), *args], env=env, capture_output=True,
                        text=True, timeout=60)


def _command(call):
  """The remote command of an ssh call, split into words."""
  return shlex.split(next(a for a in call if a.startswith("--command="))[len("--command="):])


def _short(call):
  if call[4] == "ssh":
    return "ssh:" + _command(call)[0]
  return call[4]


def test_create_waits_until_ready(fake):
  state_dir, env = fake
  _script(state_dir, "states", ["ABSENT", "CREATING", "READY"])
  proc = _run("create.sh", ["--accelerator-type=v4-8", "--spot"], env)
  assert proc.returncode == 0, proc.stderr
  assert [c[4] for c in _calls(state_dir)] == ["describe", "create", "describe", "describe"]
  assert "CREATING" in proc.stderr


def test_create_fails_when_the_resource_breaks_while_waiting(fake):
  state_dir, env = fake
  _script(state_dir, "states", ["ABSENT", "FAILED"])
  proc = _run("create.sh", ["--queued", "--spot"], env)
  assert proc.returncode != 0 and "FAILED while waiting" in proc.stderr


def test_watch_recreates_after_preemption_and_stops_when_done(fake):
  state_dir, env = fake
  (state_dir / "endpoints").write_text("10.0.0.1;10.0.0.2\n")
  # check 1: running; check 2: preempted -> recreate (one wait), setup, launch; check 3: done.
  _script(state_dir, "states", ["READY", "PREEMPTED", "READY", "READY"])
  _script(state_dir, "statuses", ["RUNNING", "0"])
  proc = _run("watch_and_resume.sh", ["--accelerator-type=v4-16", "--spot", "--bucket=gs://b",
                                      f"--gin-file={STAGE1}"], env)
  assert proc.returncode == 0, proc.stderr
  calls = _calls(state_dir)
  assert [_short(c) for c in calls] == [
      "describe", "ssh:if",                                   # check 1
      "describe", "delete", "create", "describe",             # check 2: recreate
      "scp", "ssh:rm", "ssh:(command", "ssh:murag-venv/bin/pip", "ssh:([",  # setup
      "describe", "ssh:cd",                                   # slice check
      "ssh:bash",                                             # launch
      "describe", "ssh:if",                                   # check 3: finished
  ]
  create = calls[4]
  assert "--spot" in create and "--accelerator-type=v4-16" in create
  assert "--worker=all" in calls[13]
  launch = _command(calls[13])
  assert '--gin.MODEL_DIR="gs://b/murag/murag_laion_pretrain_stage1"' in launch
  assert "--restart" not in launch
  # The project tarball really was packed for the scp.
  tarball = pathlib.Path(calls[6][5])
  listing = subprocess.run(["tar", "-tzf", str(tarball)], capture_output=True, text=True).stdout
  assert f"./{STAGE1}" in listing.splitlines()
  assert "finished" in proc.stderr


def test_setup_refuses_a_slice_with_the_wrong_worker_count(fake):
  state_dir, env = fake
  proc = _run("setup_workers.sh", ["--accelerator-type=v4-16", "--no-t5x"], env)
  assert proc.returncode != 0
  assert "has 1 worker(s) but v4-16 needs 2" in proc.stderr


def test_create_asks_again_when_a_lookup_fails(fake):
  state_dir, env = fake
  _script(state_dir, "states", ["FAIL", "ABSENT", "READY"])
  proc = _run("create.sh", [], env)
  assert proc.returncode == 0, proc.stderr
  assert [c[4] for c in _calls(state_dir)] == ["describe", "describe", "create", "describe"]
  assert "auth tokens" in proc.stderr


def test_watch_retries_a_failed_recreation_at_the_next_check(fake):
  state_dir, env = fake
  _script(state_dir, "states", ["PREEMPTED", "ABSENT", "READY", "READY"])
  _script(state_dir, "statuses", ["0"])
  _script(state_dir, "failures", ["create"])
  proc = _run("watch_and_resume.sh", ["--spot", "--bucket=gs://b", "--no-t5x",
                                      f"--gin-file={STAGE1}"], env)
  assert proc.returncode == 0, proc.stderr
  assert "no more capacity" in proc.stderr and "trying again at the next check" in proc.stderr
  assert [_short(c) for c in _calls(state_dir)] == [
      "describe", "delete", "create",                          # check 1: create fails
      "describe", "create", "describe", "scp", "ssh:rm", "ssh:(command",
      "ssh:murag-venv/bin/pip", "describe", "ssh:cd", "ssh:bash",  # check 2: recreated
      "describe", "ssh:if"]                                    # check 3: finished


def test_watch_gives_up_after_repeated_failed_recreations(fake):
  state_dir, env = fake
  _script(state_dir, "states", ["ABSENT", "ABSENT"])
  _script(state_dir, "failures", ["create", "create"])
  proc = _run("watch_and_resume.sh", ["--bucket=gs://b", f"--gin-file={STAGE1}",
                                      "--max-failures=2"], env)
  assert proc.returncode != 0 and "failed 2 times in a row" in proc.stderr


def test_watch_relaunches_a_failed_job_then_gives_up(fake):
  state_dir, env = fake
  _script(state_dir, "states", ["READY"] * 3)
  _script(state_dir, "statuses", ["1", "137", "1"])
  proc = _run("watch_and_resume.sh", ["--bucket=gs://b", f"--gin-file={STAGE1}",
                                      "--max-failures=2"], env)
  assert proc.returncode != 0 and "failed 2 times in a row" in proc.stderr
  launches = [c for c in _calls(state_dir) if _short(c) == "ssh:bash"]
  assert len(launches) == 2 and all("--restart" in _command(c) for c in launches)


def test_watch_sets_up_workers_that_have_no_virtualenv(fake):
  state_dir, env = fake
  _script(state_dir, "states", ["READY", "READY"])
  _script(state_dir, "statuses", ["NOSETUP"])
  proc = _run("watch_and_resume.sh", ["--bucket=gs://b", f"--gin-file={STAGE1}", "--no-t5x",
                                      "--max-checks=1"], env)
  assert proc.returncode == 0, proc.stderr
  assert [_short(c) for c in _calls(state_dir)] == [
      "describe", "ssh:if", "scp", "ssh:rm", "ssh:(command", "ssh:murag-venv/bin/pip",
      "describe", "ssh:cd", "ssh:bash"]


@pytest.mark.parametrize("entries,expected", [
    (["checkpoint_900/", "checkpoint_1000/", "events.out.tfevents.1", "config.gin"],
     "gs://b/murag/s1/checkpoint_1000"),
    (["200/", "1000/", "30/", "tmp/"], "gs://b/murag/s1/1000"),
])
def test_init_from_uses_the_newest_checkpoint(fake, entries, expected):
  state_dir, env = fake
  _script(state_dir, "listing", ["gs://b/murag/s1/"] + [f"gs://b/murag/s1/{e}" for e in entries])
  proc = _run("launch.sh", ["--bucket=gs://b", f"--gin-file={STAGE1}",
                            "--init-from=gs://b/murag/s1"], env)
  assert proc.returncode == 0, proc.stderr
  launch = _calls(state_dir)[-1]
  assert f'--gin.INIT_CHECKPOINT="{expected}"' in _command(launch)


def test_init_from_without_checkpoints_is_an_error(fake):
  state_dir, env = fake
  _script(state_dir, "listing", ["gs://b/murag/s1/events.out.tfevents.1"])
  proc = _run("launch.sh", ["--bucket=gs://b", f"--gin-file={STAGE1}",
                            "--init-from=gs://b/murag/s1"], env)
  assert proc.returncode != 0 and "no checkpoint" in proc.stderr and "gs://b/murag/s1" in proc.stderr


# remote_run.sh, run locally in a temporary HOME.


@pytest.fixture
def worker_home(tmp_path):
  home = tmp_path / "home"
  (home / "murag").mkdir(parents=True)
  (home / "murag-venv" / "bin").mkdir(parents=True)
  (home / "murag-venv" / "bin" / "activate").write_text("export IN_VENV=yes\n")
  env = {k: v for k, v in os.environ.items() if k not in ("IN_VENV",)}
  env["HOME"] = str(home)
  return home, env


def _remote_run(env, *args):
  return subprocess.run(["bash", str(SCRIPTS / "remote_run.sh"), *args], env=env,
                        capture_output=True, text=True, timeout=30)


def _wait_for(path: pathlib.Path, seconds: float = 15.0):
  deadline = time.monotonic() + seconds
  while not path.exists():
    assert time.monotonic() < deadline, f"{path} did not appear"
    time.sleep(0.05)


def test_remote_run_foreground_records_log_and_exit_code(worker_home):
  home, env = worker_home
  proc = _remote_run(env, "--run=job1", "--env=GREETING=hello", "--foreground", "--",
                     "bash", "-c", 'echo "$GREETING from $PWD venv=$IN_VENV"; exit 3')
  assert proc.returncode == 3
  expected = f"hello from {home}/murag venv=yes"
  assert expected in proc.stdout
  assert expected in (home / "murag_logs" / "job1.log").read_text()
  assert (home / "murag_logs" / "job1.exit").read_text().strip() == "3"


def test_remote_run_detaches_skips_duplicates_and_restarts(worker_home):
  home, env = worker_home
  logs = home / "murag_logs"
  started = []
  try:
    proc = _remote_run(env, "--run=long", "--", "bash", "-c", "echo started; sleep 60")
    assert proc.returncode == 0
    _wait_for(logs / "long.pid")
    first = int((logs / "long.pid").read_text())
    started.append(first)
    os.kill(first, 0)  # alive
    again = _remote_run(env, "--run=long", "--", "bash", "-c", "echo second")
    assert again.returncode == 0 and "already running" in again.stderr
    assert int((logs / "long.pid").read_text()) == first
    restart = _remote_run(env, "--run=long", "--restart", "--", "bash", "-c", "echo third; exit 0")
    assert restart.returncode == 0 and "stopping the running job" in restart.stderr
    _wait_for(logs / "long.exit")
    assert (logs / "long.exit").read_text().strip() == "0"
    with pytest.raises(ProcessLookupError):
      os.kill(first, 0)
    log = (logs / "long.log").read_text()
    assert "started" in log and "third" in log and "second" not in log
  finally:
    for pid in started:  # only the process group this test started
      try:
        os.killpg(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


def test_remote_run_rejects_bad_arguments(worker_home):
  _, env = worker_home
  assert _remote_run(env, "--run=x").returncode == 2
  assert _remote_run(env, "--run=a b", "--", "true").returncode == 2
  assert _remote_run(env, "--bogus", "--", "true").returncode == 2


def test_launch_command_runs_on_a_worker_with_the_gin_quoting_intact(tmp_path, worker_home):
  """The remote command of launch.sh, executed by bash as a worker's ssh would."""
  home, worker_env = worker_home
  project = make_project_root(tmp_path / "project")
  env = script_env(project)
  # The worker: this repository's remote_run.sh, and a stand-in binary that prints its argv.
  (home / "murag" / "tpu_scripts").mkdir()
  (home / "murag" / "tpu_scripts" / "remote_run.sh").write_text(
      (SCRIPTS / "remote_run.sh").read_text())
  (home / "murag" / "fakebin.py").write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
  venv_bin = home / "murag-venv" / "bin"
  (venv_bin / "python").symlink_to(sys.executable)
  (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"\n')
  proc = subprocess.run(
      ["bash", str(SCRIPTS / "launch.sh"), "--accelerator-type=v4-128", "--bucket=gs://b",
       f"--gin-file={STAGE1}", "--module=fakebin", "--foreground", "--batch-size=64",
       "--init-checkpoint=gs://b/murag/with space's", "--gin=LABEL='x y'", "--dry-run"],
      env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  (ssh,) = [shlex.split(line) for line in proc.stdout.splitlines()]
  command = next(a for a in ssh if a.startswith("--command="))[len("--command="):]
  ran = subprocess.run(["bash", "-c", command], cwd=home, env=worker_env, capture_output=True,
                       text=True, timeout=60)
  assert ran.returncode == 0, ran.stderr
  argv = json.loads(ran.stdout.strip().splitlines()[-1])
  assert argv == [
      f"--gin_file={STAGE1}", '--gin.MODEL_DIR="gs://b/murag/murag_laion_pretrain_stage1"',
      "--gin.BATCH_SIZE=64", '--gin.INIT_CHECKPOINT="gs://b/murag/with space\'s"',
      "--gin.LABEL='x y'", "--gin_search_paths=.", "--jax_distributed_auto"]
  assert (home / "murag_logs" / "murag_laion_pretrain_stage1.exit").read_text().strip() == "0"


@pytest.mark.parametrize("script,args", [
    ("setup_workers.sh", ["--accelerator-type=v4-128"]),
    ("setup_workers.sh", ["--repo-url=https://example.com/a b.git", "--repo-ref=v1"]),
    ("logs.sh", ["--run-name=r"]),
    ("watch_and_resume.sh", ["--gin-file=" + STAGE1, "--bucket=gs://b"]),
])
def test_every_remote_command_is_valid_bash(fake, script, args):
  _, env = fake
  env = dict(env, DRY_RUN_STATE="READY", DRY_RUN_JOB_STATUS="NOSETUP")
  proc = _run(script, args + ["--dry-run"], env)
  assert proc.returncode == 0, proc.stderr
  remotes = [a[len("--command="):] for line in proc.stdout.splitlines()
             for a in shlex.split(line) if a.startswith("--command=")]
  assert remotes
  for command in remotes:
    check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert check.returncode == 0, (command, check.stderr)
