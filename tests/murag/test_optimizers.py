"""Optimizer: the paper's constant-LR Adafactor, warm-up / decay schedules, state sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from murag import optimizers
from murag import partitioner as partitioner_lib


def test_constant_is_the_default_and_paper_value():
  f = optimizers.learning_rate_schedule()
  assert [float(f(s)) for s in (0, 10, 10**6)] == pytest.approx([5e-4] * 3)
  assert float(optimizers.adafactor().learning_rate_fn(123)) == pytest.approx(5e-4)


@pytest.mark.parametrize("decay,expected", [
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0]),
    ("linear", [0.0, 0.5, 1.0, 0.55, 0.1]),
    ("cosine", [0.0, 0.5, 1.0, 0.55, 0.1]),
    ("rsqrt", [0.0, 0.5, 1.0, np.sqrt(10 / 20), np.sqrt(10 / 30)]),
])
def test_warmup_then_decay(decay, expected):
  f = optimizers.learning_rate_schedule(base_learning_rate=1.0, warmup_steps=10, decay=decay,
                                        decay_steps=20, final_fraction=0.1)
  got = [float(f(s)) for s in (0, 5, 10, 20, 30)]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_bad_settings_name_the_binding():
  with pytest.raises(ValueError, match="learning_rate_schedule.decay='exp'"):
    optimizers.learning_rate_schedule(decay="exp")
  with pytest.raises(ValueError, match="decay_steps"):
    optimizers.learning_rate_schedule(decay="linear")


def test_adafactor_minimises_a_least_squares_problem():
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
  x_true = jnp.asarray(rng.normal(size=(16,)), jnp.float32)
  b = a @ x_true
  params = {"x": jnp.zeros((16,))}
  tx = optimizers.adafactor(
      learning_rate_fn=optimizers.learning_rate_schedule(base_learning_rate=0.05),
      multiply_by_parameter_scale=False)
  state = tx.init(params)
  loss = lambda p: jnp.mean((a @ p["x"] - b) ** 2)
  first = float(loss(params))

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  for _ in range(300):
    params, state = step(params, state)
  assert float(loss(params)) < 0.01 * first


def test_optimizer_state_follows_parameter_sharding():
  part = partitioner_lib.Partitioner(num_partitions=2)
  abstract = {"big": jax.ShapeDtypeStruct((256, 512), jnp.float32),
              "vec": jax.ShapeDtypeStruct((512,), jnp.float32)}
  specs = {"big": jax.sharding.PartitionSpec("embed", "mlp"),
           "vec": jax.sharding.PartitionSpec("mlp")}
  shardings = part.shardings(specs)
  opt_shardings, abstract_state = part.opt_state_shardings(
      optimizers.adafactor(momentum=0.9), abstract, shardings)
  leaves = jax.tree.leaves(opt_shardings)
  states = jax.tree.leaves(abstract_state)
  assert len(leaves) == len(states)
  # Full-size leaves (momentum of both params, unfactored v of `vec`) follow their parameter;
  # factored row / column statistics are replicated.
  by_shape = {}
  for s, sh in zip(states, leaves):
    by_shape.setdefault(tuple(s.shape), set()).add(sh.spec)
  assert by_shape[(256, 512)] == {jax.sharding.PartitionSpec(None, "model")}
  assert by_shape[(256,)] == {jax.sharding.PartitionSpec()}
  assert jax.sharding.PartitionSpec("model") in by_shape[(512,)]
