"""Helpers for the tpu_scripts tests: run a script, parse the commands it prints."""
import os
import pathlib
import shlex
import shutil
import subprocess
from typing import Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tpu_scripts"

# Gin files the scripts are pointed at in these tests (written empty into a
# temporary project root, so the tests do not depend on the trainer area's files).
GIN_FILES = (
    "gin_configs/experiments/murag_laion_pretrain_stage1.gin",
    "gin_configs/experiments/murag_ccpaqvqa_pretrain_stage2.gin",
    "gin_configs/experiments/murag_webqa_finetune_inbatch.gin",
    "gin_configs/experiments/murag_webqa_build_memory.gin",
    "gin_configs/experiments/murag_webqa_finetune_fixed.gin",
    "gin_configs/t5x/murag_webqa_finetune_inbatch.gin",
    "gin_configs/models/murag_base.gin",
    "gin_configs/runs/export.gin",
)

# Configuration variables of the scripts, removed from the inherited environment.
_CONFIG_VARS = (
    "PROJECT", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "BUCKET", "TPU_NAME", "QR_NAME",
    "SPOT", "PREEMPTIBLE", "QUEUED", "DRY_RUN", "DRY_RUN_STATE", "DRY_RUN_JOB_STATUS",
    "REPO_URL", "REPO_REF", "TARBALL", "REMOTE_DIR", "VENV_DIR", "WITH_T5X", "RUNNER", "MODULE",
    "RUN_NAME", "MODEL_DIR", "TRAIN_STEPS", "BATCH_SIZE", "INIT_CHECKPOINT", "INIT_FROM",
    "MEMORY_DIR", "EXPORT_DIR", "TFDS_DATA_DIR", "MAX_CHECKS", "MAX_FAILURES", "POLL_SECONDS",
    "WAIT_TIMEOUT",
)


def make_project_root(root: pathlib.Path) -> pathlib.Path:
  """A minimal project tree: the lock file and empty gin files."""
  (root / "constraints").mkdir(parents=True)
  shutil.copy(REPO / "constraints" / "lock.txt", root / "constraints" / "lock.txt")
  for gin_file in GIN_FILES:
    path = root / gin_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# test placeholder\n")
  return root


def script_env(project_root: pathlib.Path, **overrides: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in _CONFIG_VARS}
  env.update(MURAG_PROJECT_ROOT=str(project_root), PROJECT="my-proj", ZONE="us-central2-b")
  env.update(overrides)
  return env


def run_script(name: str, args: Sequence[str], env: dict, *, check: bool = True,
               dry_run: bool = True) -> subprocess.CompletedProcess:
  cmd = ["bash", str(SCRIPTS / name), *args] + (["--dry-run"] if dry_run else [])
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
  if check and proc.returncode != 0:
    raise AssertionError(f"{name} {args} exited {proc.returncode}:\n{proc.stderr}")
  return proc


def commands(proc: subprocess.CompletedProcess) -> list:
  """The printed commands, each split into its arguments as a shell would."""
  return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def flag(cmd: Sequence[str], name: str) -> Optional[str]:
  """Value of --name=VALUE in cmd (None when absent)."""
  prefix = f"--{name}="
  values = [a[len(prefix):] for a in cmd if a.startswith(prefix)]
  assert len(values) <= 1, f"--{name} given twice in {cmd}"
  return values[0] if values else None


def remote(cmd: Sequence[str]) -> str:
  """The remote command of a `gcloud ... ssh --command=...` line."""
  value = flag(cmd, "command")
  assert value is not None, f"not an ssh command: {cmd}"
  return value


def is_gcloud(cmd: Sequence[str], *words: str) -> bool:
  return list(cmd[:len(words) + 1]) == ["gcloud", *words]
