"""Checkpoints: exact sharded round trip, keep-N, data state, params-only init for fine-tuning."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murag import checkpoints
from murag import optimizers
from murag import partitioner as partitioner_lib
from murag import trainer as trainer_lib
from tests.murag import toy_model

SHAPES = {"inputs": (16, 8), "targets": (16, 8)}
TYPES = {"inputs": np.int32, "targets": np.int32}


def _trainer(vocab=32):
  return trainer_lib.Trainer(model=toy_model.ToyModel(vocab=vocab), optimizer=optimizers.adafactor(),
                             partitioner=partitioner_lib.Partitioner(num_partitions=2),
                             input_shapes=SHAPES, input_types=TYPES)


def _trained_state(trainer, steps=3):
  state = trainer.init_state(0)
  it = toy_model.ToyIterator(toy_model.ToyDatasetConfig(), 0, 1)
  for _ in range(steps):
    state, _ = trainer.train_step(state, trainer.partitioner.host_batch_to_global(next(it)))
  return state, it


def test_round_trip_is_exact_and_resharded(tmp_path):
  trainer = _trainer()
  state, it = _trained_state(trainer)
  ckpt = checkpoints.Checkpointer(str(tmp_path), checkpoints.CheckpointConfig(keep=2))
  for step in (1, 2, 3):
    ckpt.save(step, state.as_dict(), {"index": it.index, "step": step})
  ckpt.wait()
  assert ckpt.all_steps() == [2, 3]
  restored, data_state = ckpt.restore(3, trainer.abstract_state.as_dict())
  ckpt.close()
  assert data_state == {"index": 3, "step": 3}
  for a, b in zip(jax.tree.leaves(state.as_dict()), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Restored straight into the target shardings.
  assert restored["params"]["wi"].sharding == trainer.param_shardings["wi"]
  assert int(restored["step"]) == 3
  # The data position is stored as plain JSON per host.
  data_files = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "checkpoints/3/data")
                for f in fs]
  assert any(json.load(open(f)).get("hosts") == [{"index": 3, "step": 3}]
             for f in data_files if not os.path.basename(f).startswith("_"))


def test_load_params_from_model_dir_and_bf16_bundle(tmp_path):
  trainer = _trainer()
  state, it = _trained_state(trainer)
  ckpt = checkpoints.Checkpointer(str(tmp_path / "run"), checkpoints.CheckpointConfig())
  ckpt.save(3, state.as_dict(), it.get_state())
  ckpt.close()
  fresh = trainer.init_state(1)
  loaded = checkpoints.load_params(str(tmp_path / "run"), trainer.abstract_state.params,
                                   fresh.params)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert loaded["wo"].sharding == trainer.param_shardings["wo"]

  # A params-only bf16 bundle, with one parameter missing: it keeps the fresh init.
  partial = {k: v for k, v in state.params.items() if k != "wo"}
  checkpoints.save_params(str(tmp_path / "bundle/params"), partial, dtype="bfloat16")
  loaded = checkpoints.load_params(str(tmp_path / "bundle"), trainer.abstract_state.params,
                                   fresh.params)
  np.testing.assert_array_equal(np.asarray(loaded["wo"]), np.asarray(fresh.params["wo"]))
  np.testing.assert_allclose(np.asarray(loaded["wi"]), np.asarray(state.params["wi"]),
                             rtol=1e-2, atol=1e-2)
  assert loaded["wi"].dtype == jnp.float32
  with pytest.raises(ValueError, match="lacks parameter.*wo"):
    checkpoints.load_params(str(tmp_path / "bundle"), trainer.abstract_state.params,
                            fresh.params, strict=True)


def test_load_params_shape_mismatch_names_parameter(tmp_path):
  state, _ = _trained_state(_trainer(vocab=32), steps=1)
  checkpoints.save_params(str(tmp_path / "p"), state.params)
  other = _trainer(vocab=48)
  with pytest.raises(ValueError, match="parameter 'embedding' has shape"):
    checkpoints.load_params(str(tmp_path / "p"), other.abstract_state.params)
  with pytest.raises(FileNotFoundError, match="no checkpoint found"):
    checkpoints.load_params(str(tmp_path / "nothing"), other.abstract_state.params)


def test_importer_callable_is_used(tmp_path):
  trainer = _trainer()
  calls = []

  def importer(path, abstract):
    calls.append(path)
    return jax.tree.map(lambda a: np.full(a.shape, 0.5, a.dtype), abstract)

  loaded = checkpoints.load_params("hf://tiny", trainer.abstract_state.params, importer=importer)
  assert calls == ["hf://tiny"]
  assert float(np.asarray(loaded["wi"]).mean()) == 0.5


def test_state_from_params_equals_init_then_replace(tmp_path):
  """The strict fine-tuning init (no model initialiser compiled) builds the same state."""
  trainer = _trainer()
  trained, _ = _trained_state(trainer)
  checkpoints.save_params(str(tmp_path / "p"), trained.params)
  params = checkpoints.load_params(str(tmp_path / "p"), trainer.abstract_state.params,
                                   strict=True)
  direct = trainer.state_from_params(params, seed=7)
  # A second copy: train_step donates its state's buffers.
  params2 = checkpoints.load_params(str(tmp_path / "p"), trainer.abstract_state.params,
                                    strict=True)
  reference = trainer.state_with_params(trainer.init_state(7), params2)
  flat_direct = jax.tree_util.tree_leaves_with_path(direct.as_dict())
  flat_ref = jax.tree_util.tree_leaves_with_path(reference.as_dict())
  assert [p for p, _ in flat_direct] == [p for p, _ in flat_ref]
  for (path, a), (_, b) in zip(flat_direct, flat_ref):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    assert a.sharding == b.sharding, path
  # ... and trains identically (same dropout rng, same optimizer state).
  it = toy_model.ToyIterator(toy_model.ToyDatasetConfig(), 0, 1)
  batch = trainer.partitioner.host_batch_to_global(next(it))
  _, m1 = trainer.train_step(direct, batch)
  _, m2 = trainer.train_step(reference, batch)
  assert float(m1["loss"]) == float(m2["loss"])
