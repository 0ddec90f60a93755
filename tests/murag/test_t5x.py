"""gin_configs/t5x/: the same MuRAG model trained by `python -m t5x.train` (skipped without t5x)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from murag import t5x_adapter

HAS_T5X = importlib.util.find_spec("t5x") is not None


def test_adapter_import_does_not_need_t5x():
  if HAS_T5X:
    assert t5x_adapter.t5x_config_dir() is not None
  else:
    with pytest.raises(ImportError, match="t5x is not installed"):
      t5x_adapter.require_t5x()


@pytest.mark.slow
@pytest.mark.t5x
@pytest.mark.skipif(not HAS_T5X, reason="t5x is not importable")
def test_t5x_train_runs_murag_for_a_few_steps(tmp_path):
  from tests.murag import murag_fixtures as mf
  from tests.murag import toy_model
  cmd = [sys.executable, "-m", "t5x.train",
         "--gin_file=gin_configs/t5x/murag_tiny_pretrain.gin",
         f"--gin_search_paths={t5x_adapter.t5x_config_dir()},{os.getcwd()}",
         f'--gin.MODEL_DIR="{tmp_path}"', f'--gin.VOCAB_PATH="{mf.vocab_path()}"',
         f'--gin.MIXTURE_OR_TASK_NAME="{mf.TASK}"',
         '--gin.MIXTURE_OR_TASK_MODULE="tests.murag.murag_fixtures"',
         "--gin.TRAIN_STEPS=4", "--gin.MEMORY_SLOTS=3",
         f"--gin.TASK_FEATURE_LENGTHS={json.dumps(mf.TASK_FEATURE_LENGTHS)}"]
  # t5x builds its CPU mesh as (data=1, model=all devices): one device keeps the tiny
  # model's 2 heads unsplit.
  proc = subprocess.run(cmd, env=toy_model.subprocess_env(1), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  steps = [d for d in os.listdir(tmp_path) if d.startswith("checkpoint_")]
  assert "checkpoint_4" in steps, steps
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(tmp_path / "train"))
  acc.Reload()
  tags = set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
  assert "loss" in tags and "gen_loss" in tags, sorted(tags)
