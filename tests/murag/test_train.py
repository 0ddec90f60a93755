"""Trainer end to end on a tiny real model: decreasing loss, checkpoint, resume, NaN stop."""
import glob
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murag import checkpoints
from murag import optimizers
from murag import partitioner as partitioner_lib
from murag import train as train_lib
from tests.murag import toy_model


def _run(model_dir, total_steps, *, model=None, data_fn=toy_model.toy_dataset_fn, period=4,
         log_period=2, lr=0.05, num_partitions=2, **kw):
  opt = optimizers.adafactor(
      learning_rate_fn=optimizers.learning_rate_schedule(base_learning_rate=lr))
  return train_lib.train(
      model=model or toy_model.ToyModel(), train_dataset_cfg=toy_model.ToyDatasetConfig(),
      checkpoint_cfg=checkpoints.CheckpointConfig(period=period, keep=2),
      partitioner=partitioner_lib.Partitioner(num_partitions=num_partitions),
      total_steps=total_steps, model_dir=str(model_dir), get_dataset_fn=data_fn,
      log_period=log_period, optimizer=opt, **kw)


def _losses(capsys):
  out = capsys.readouterr().out
  return [float(line.split("loss=")[1].split()[0]) for line in out.splitlines()
          if "[murag.train] step=" in line]


def test_train_loss_decreases_checkpoints_and_resumes_exactly(tmp_path, capsys):
  step, state = _run(tmp_path / "a", 12)
  losses = _losses(capsys)
  assert step == 12 and len(losses) == 6
  assert losses[-1] < 0.7 * losses[0], losses
  # keep=2: only the two newest of steps 4, 8, 12 remain.
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(str(tmp_path / "a/checkpoints/*"))
                 if os.path.basename(p).isdigit())
  assert steps == [8, 12]
  # Restart: resumes at 12 (params, opt state, rng, data position) and continues to 20.
  step, resumed = _run(tmp_path / "a", 20)
  out_losses = _losses(capsys)
  assert step == 20 and len(out_losses) == 4
  assert out_losses[-1] < losses[0]
  # An uninterrupted 20-step run ends with the same parameters.
  _, straight = _run(tmp_path / "b", 20)
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
  # Parameters are sharded by their logical axes: wi is (embed, mlp) -> (None, model).
  assert straight.params["wi"].sharding.spec == jax.sharding.PartitionSpec(None, "model")


def test_metrics_written_to_tensorboard(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  seen = []
  _run(tmp_path, 4, train_eval_dataset_cfg=toy_model.ToyDatasetConfig(seed=1), eval_period=4,
       eval_steps=2, step_callback=lambda step, state: seen.append((step, int(state.step))),
       log_grad_norm=True)
  # step_callback runs once per step, after the step, with the state of that step.
  assert seen == [(1, 1), (2, 2), (3, 3), (4, 4)], seen
  acc = event_accumulator.EventAccumulator(str(tmp_path / "train"))
  acc.Reload()
  tags = set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
  for tag in ("train/loss", "train/accuracy", "train/learning_rate", "train/grad_norm",
              "timing/steps_per_sec",
              "timing/examples_per_sec", "timing/eta_seconds", "timing/input_wait_seconds",
              "eval/loss", "eval/accuracy"):
    assert tag in tags, (tag, sorted(tags))
  config = (tmp_path / "config.gin").read_text()
  assert "learning_rate_schedule.decay = 'constant'" in config


class _PoisonIterator(toy_model.ToyIterator):
  """Batches from index 6 on carry poison=1, which the model turns into a NaN loss."""

  def __next__(self):
    index = self.index
    batch = super().__next__()
    batch["poison"] = np.full([batch["inputs"].shape[0]], int(index >= 6), np.int32)
    return batch


class _PoisonModel(toy_model.ToyModel):

  def loss_fn(self, params, batch, dropout_rng):
    loss, metrics = super().loss_fn(params, batch, dropout_rng)
    return jnp.where(jnp.any(batch["poison"] > 0), jnp.nan, loss), metrics


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  def data_fn(cfg, *, shard_id, num_shards, feature_converter=None):
    return _PoisonIterator(cfg, shard_id, num_shards)

  with pytest.raises(train_lib.NonFiniteLossError, match=r"step 7.*last good checkpoint is "
                                                          r"step 4"):
    _run(tmp_path, 12, model=_PoisonModel(), data_fn=data_fn, period=4, log_period=1)
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(str(tmp_path / "checkpoints/*"))
                 if os.path.basename(p).isdigit())
  assert steps == [4]


def test_bad_gin_binding_fails_before_compute_naming_it(tmp_path):
  gin.clear_config()
  cfg = tmp_path / "toy.gin"
  cfg.write_text("import tests.murag.toy_model\n"
                 "train.model = @ToyModel()\n")
  with pytest.raises(Exception, match="train.not_an_argument"):
    train_lib.main([f"--gin_file={cfg}", "--gin.train.not_an_argument=3"],
                   entry=lambda: pytest.fail("compute started"))
  gin.clear_config()
  with pytest.raises(Exception, match="no_such_file.gin"):
    train_lib.main(["--gin_file=no_such_file.gin"], entry=lambda: pytest.fail("ran"))
  gin.clear_config()


def test_split_gin_args_t5x_style():
  files, bindings, paths, rest = train_lib.split_gin_args(
      ["--gin_file=a.gin", "--gin_file", "b.gin", '--gin.MODEL_DIR="/x"',
       "--gin_search_paths=p,q", "--gin_bindings=train.total_steps=3", "--other"])
  assert files == ["a.gin", "b.gin"]
  assert bindings == ['MODEL_DIR="/x"', "train.total_steps=3"]
  assert paths == ["p", "q"] and rest == ["--other"]


def test_train_step_lowers_with_abstract_inputs():
  trainer = train_lib.trainer_lib.Trainer(
      model=toy_model.ToyModel(vocab=4096, embed=1024, mlp=4096),
      optimizer=optimizers.adafactor(),
      partitioner=partitioner_lib.Partitioner(num_partitions=4),
      input_shapes={"inputs": (64, 128), "targets": (64, 128)},
      input_types={"inputs": np.int32, "targets": np.int32})
  lowered = trainer.lower_train_step()
  assert "stablehlo" in lowered.as_text()[:100000] or "func" in lowered.as_text()[:1000]
  assert trainer.abstract_state.params["wi"].shape == (1024, 4096)


def _murag_args(model_dir, steps, *extra):
  from tests.murag import murag_fixtures as mf
  lengths = json.dumps(mf.TASK_FEATURE_LENGTHS)
  args = ["--gin_file=gin_configs/experiments/murag_tiny_cpu_finetune_inbatch.gin",
          f'--gin.MODEL_DIR="{model_dir}"', f'--gin.VOCAB_PATH="{mf.vocab_path()}"',
          f'--gin.MIXTURE_OR_TASK_NAME="{mf.TASK}"', f"--gin.TASK_FEATURE_LENGTHS={lengths}",
          f"--gin.TRAIN_STEPS={steps}", "--gin.MEMORY_SLOTS=3", "--gin.CHECKPOINT_PERIOD=3",
          "--gin.EVAL_PERIOD=6", "--gin.LEARNING_RATE=0.01", "--gin.train.log_period=2",
          "--gin.evaluate_with_inference.max_examples=8"]
  for scope in ("train", "train_eval", "infer_eval"):
    args.append(f'--gin.{scope}/tasks.pipeline.DatasetConfig.module="tests.murag.murag_fixtures"')
  return args + list(extra)


@pytest.mark.slow
def test_real_murag_tiny_gin_run_trains_evaluates_and_resumes(tmp_path, capsys):
  """The tiny MuRAG model on a real seqio task through tasks.pipeline, configured by the tiny
  CPU experiment gin: loss falls, eval + beam-2 inference metrics are written, resume works."""
  gin.clear_config()
  step, state = train_lib.main(_murag_args(tmp_path, 6))
  gin.clear_config()
  losses = _losses(capsys)
  assert step == 6 and len(losses) == 3
  assert losses[-1] < losses[0], losses
  metrics_file = tmp_path / "infer_eval" / "6" / "murag_test_color_qa_v1-metrics.json"
  scores = json.loads(metrics_file.read_text())
  assert {"all/em", "all/f1", "retrieval/recall@1"} <= set(scores)
  preds = [json.loads(line) for line in
           (tmp_path / "infer_eval/6/murag_test_color_qa_v1-predictions.jsonl").open()]
  assert len(preds) == 8
  assert all(len(p["retrieved_ids"]) == 4 and len(p["retrieved_scores"]) == 4 for p in preds)  # top-K 4
  # Positive sources come back under their string ids.
  assert any(i.startswith("validation-fact-") for p in preds for i in p["retrieved_ids"])
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(tmp_path / "train"))
  acc.Reload()
  tags = set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
  assert {"eval/loss", "infer_eval/murag_test_color_qa_v1/all/f1"} <= tags, sorted(tags)

  step, resumed = train_lib.main(_murag_args(tmp_path, 8, "--gin.EVAL_PERIOD=0"))
  gin.clear_config()
  out = capsys.readouterr().out
  assert "start step=6" in out and step == 8
  assert int(resumed.step) == 8
