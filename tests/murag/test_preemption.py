"""Preemption: SIGKILL a training process at a random step; the resumed run ends where an
uninterrupted run ends (params within 1e-6), thanks to exact checkpoints of params, optimizer
state, step, rng and the data iterator position."""
import os
import random
import signal
import subprocess

import jax
import numpy as np
import pytest

from murag import checkpoints  # noqa: F401  (imported so a broken module fails here, early)
from tests.murag import toy_model

pytestmark = pytest.mark.slow
TOTAL = 14


def test_sigkill_at_random_step_then_resume_matches_uninterrupted(tmp_path):
  gin_file = toy_model.write_toy_gin(tmp_path / "toy.gin")
  env = toy_model.subprocess_env(8)
  bindings = (f"train.total_steps={TOTAL}", "CheckpointConfig.period=1")
  reference = subprocess.Popen(toy_model.train_command(gin_file, tmp_path / "ref", *bindings),
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
  kill_at = random.Random().randint(3, TOTAL - 3)
  victim = subprocess.Popen(toy_model.train_command(gin_file, tmp_path / "run", *bindings),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  seen = []
  for line in victim.stdout:
    seen.append(line)
    if f"[murag.train] step={kill_at} " in line:
      os.kill(victim.pid, signal.SIGKILL)
      break
  victim.wait(timeout=120)
  assert victim.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
  committed = [int(d) for d in os.listdir(tmp_path / "run/checkpoints") if d.isdigit()]
  assert committed and max(committed) < TOTAL, (kill_at, committed)

  resumed = subprocess.run(toy_model.train_command(gin_file, tmp_path / "run", *bindings),
                           env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
  start = int(resumed.stdout.split("[murag.train] start step=")[1].split()[0])
  assert 0 < start <= kill_at, (start, kill_at)
  ref_out, _ = reference.communicate(timeout=300)
  assert reference.returncode == 0, ref_out[-3000:]

  got = toy_model.read_params(tmp_path / "run", TOTAL)
  want = toy_model.read_params(tmp_path / "ref", TOTAL)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=f"killed at step {kill_at}")
  # The losses logged after the restart are the reference's losses for the same steps.
  ref_losses, new_losses = toy_model.parse_losses(ref_out), toy_model.parse_losses(resumed.stdout)
  for step, loss in new_losses.items():
    assert loss == pytest.approx(ref_losses[step], abs=1e-6), step
