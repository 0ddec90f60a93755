"""Multi-host: 2 processes x 4 simulated CPU devices (jax.distributed on localhost) train exactly
like 1 process x 8 devices: same per-step losses and final parameters."""
import socket
import subprocess

import jax
import numpy as np
import pytest

from tests.murag import toy_model

pytestmark = [pytest.mark.slow, pytest.mark.multihost]
STEPS = 6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  gin_file = toy_model.write_toy_gin(tmp_path / "toy.gin")
  bindings = (f"train.total_steps={STEPS}", "CheckpointConfig.period=3")
  port = _free_port()
  procs = [subprocess.Popen(
      toy_model.train_command(gin_file, tmp_path / "multi", *bindings) + [
          f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      env=toy_model.subprocess_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  single = subprocess.run(toy_model.train_command(gin_file, tmp_path / "single", *bindings),
                          env=toy_model.subprocess_env(8), capture_output=True, text=True,
                          timeout=300)
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert single.returncode == 0, single.stderr[-3000:]
  assert "mesh={'data': 4, 'model': 2}" in outs[0]
  want = toy_model.parse_losses(single.stdout)
  assert sorted(want) == list(range(1, STEPS + 1))
  for out in outs:
    got = toy_model.parse_losses(out)
    assert sorted(got) == sorted(want)
    for step in want:
      assert got[step] == pytest.approx(want[step], abs=1e-6), (step, got, want)
  assert want[STEPS] < want[1]
  for a, b in zip(jax.tree.leaves(toy_model.read_params(tmp_path / "multi", STEPS)),
                  jax.tree.leaves(toy_model.read_params(tmp_path / "single", STEPS))):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
