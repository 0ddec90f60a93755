"""The commands of docs/readme/tpu.md ("Training on Cloud TPU") run as written, in dry-run mode."""
import re
import shlex
import subprocess

import pytest

from tests.tpu_scripts.helpers import GIN_FILES, REPO, make_project_root, script_env

DOC = REPO / "docs" / "readme" / "tpu.md"


def _bash_blocks() -> list:
  return re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)


def _doc_commands() -> tuple:
  """(export lines, tpu_scripts command lines) of the bash blocks, in order."""
  exports, cmds = [], []
  for block in _bash_blocks():
    for line in block.splitlines():
      line = line.strip()
      if line.startswith("export "):
        exports.append(line)
      elif line.startswith("tpu_scripts/"):
        cmds.append(line)
      elif line:
        raise AssertionError(f"unexpected line in a bash block of {DOC.name}: {line}")
  return exports, cmds


def test_readme_walks_through_every_stage():
  _, cmds = _doc_commands()
  text = "\n".join(cmds)
  order = ["murag_laion_pretrain_stage1", "murag_ccpaqvqa_pretrain_stage2",
           "murag_webqa_finetune_inbatch.gin", "build_memory.sh", "murag_webqa_finetune_fixed.gin",
           "export.sh", "delete.sh"]
  positions = [text.index(word) for word in order]
  assert positions == sorted(positions)


def test_readme_commands_run_in_dry_run_mode(tmp_path):
  exports, cmds = _doc_commands()
  env = script_env(make_project_root(tmp_path / "project"))
  for name in ("PROJECT", "ZONE"):
    env.pop(name)
  script = ["set -euo pipefail", *exports]
  script += [f"echo '>>> {i}'; {cmd} --dry-run" for i, cmd in enumerate(cmds)]
  proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  outputs = re.split(r">>> \d+\n", proc.stdout)[1:]
  assert len(outputs) == len(cmds)
  for cmd, out in zip(cmds, outputs):
    lines = [shlex.split(line) for line in out.splitlines()]
    assert lines, f"no command printed for: {cmd}"
    for words in lines:
      if words[:3] == ["gcloud", "compute", "tpus"]:
        assert "--zone=us-central2-b" in words and "--project=my-project" in words, words
    launches = [w for w in lines if "--worker=all" in w and any("remote_run.sh" in a for a in w)]
    if "launch.sh" in cmd or "build_memory.sh" in cmd or "export.sh" in cmd:
      assert len(launches) == 1, cmd
      command = next(w for w in launches[0] if w.startswith("--command="))[len("--command="):]
      job = shlex.split(command)
      assert any(w.startswith('--gin.MODEL_DIR="gs://my-murag-bucket/murag/') for w in job), job
      assert "--jax_distributed_auto" in job or "t5x.train" in job  # 16 hosts


def test_readme_gin_files_are_known_to_the_tests():
  """Every gin file the doc names is one the dry-run tests place in their project tree."""
  named = set(re.findall(r"gin_configs/[\w/]+\.gin", DOC.read_text()))
  assert named and named <= set(GIN_FILES), named - set(GIN_FILES)


def _pending(gin_file: str) -> bool:
  """True for a gin file whose area has written nothing it could be checked against yet."""
  if gin_file.startswith("gin_configs/models/"):
    return not any((REPO / "gin_configs" / "models").glob("*.gin"))
  if gin_file.endswith("_build_memory.gin"):
    return not (REPO / "murag" / "build_memory.py").exists()
  if gin_file.startswith("gin_configs/t5x/"):
    return not any((REPO / "gin_configs" / "t5x").glob("*.gin"))
  return False


def test_readme_gin_files_exist_in_the_repository():
  """The gin files named by the doc and the scripts' defaults exist (once their area wrote any)."""
  named = sorted(set(re.findall(r"gin_configs/[\w/]+\.gin", DOC.read_text())))
  named += ["gin_configs/experiments/murag_webqa_build_memory.gin",
            "gin_configs/models/murag_base.gin", "gin_configs/runs/export.gin"]  # script defaults
  checked = [g for g in named if not _pending(g)]
  if not checked:
    pytest.skip("no gin file written yet by the trainer / model / memory areas")
  missing = [g for g in checked if not (REPO / g).is_file()]
  assert not missing, f"gin files named by docs/readme/tpu.md or the scripts' defaults are missing: {missing}"
