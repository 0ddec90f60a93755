"""The MuRAG train step on a (data=4, model=2) mesh equals the single-device step.

The contrastive loss is a softmax over the GLOBAL in-batch memory: when the batch is
sharded over `data`, every query must still see the memory items of the other shards.
"""
import jax
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from murag import partitioner
from murag import partitioning
from tests.murag import test_model


def _loss_and_grad_norm(model):
  def fn(params, batch):
    (loss, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch,
                                                                            None)
    gnorm = jax.numpy.sqrt(sum(jax.numpy.sum(g * g) for g in jax.tree.leaves(grads)))
    return loss, metrics, gnorm
  return fn


@pytest.mark.slow
def test_sharded_train_step_equals_single_device():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated devices"
  model, variables = test_model.tiny_setup()
  params = variables["params"]
  batch = test_model.make_batch(seed=11, B=8, M=2)
  fn = _loss_and_grad_norm(model)

  one = jax.devices()[:1]
  single = jax.jit(fn)(jax.device_put(params, one[0]), jax.device_put(batch, one[0]))

  mesh = partitioning.make_mesh(num_partitions=2)
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  rules = partitioning.standard_logical_axis_rules()
  specs = partitioner.logical_specs_from_params_axes(params, variables["params_axes"])
  param_shardings = partitioning.logical_to_sharding(specs, mesh, rules)
  batch_sharding = partitioning.batch_sharding(mesh)
  sharded_params = jax.device_put(params, param_shardings)
  sharded_batch = jax.device_put(batch, batch_sharding)
  # Parameters really are split over `model` (e.g. the MLP and attention kernels).
  wi = sharded_params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert wi.sharding.spec == PartitionSpec(None, "model")
  assert len({str(s.index) for s in wi.addressable_shards}) == 2
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    step = jax.jit(fn, in_shardings=(param_shardings, batch_sharding))
    sharded = step(sharded_params, sharded_batch)
  # A per-shard memory would change con_loss and the retrieval metrics, so equality with
  # the unsharded step shows the contrastive softmax spans every data shard.
  for name in ("loss", "gen_loss", "con_loss", "retrieval_acc@1", "token_accuracy"):
    np.testing.assert_allclose(sharded[1][name], single[1][name], atol=1e-5, rtol=0,
                               err_msg=name)
  np.testing.assert_allclose(sharded[0], single[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(sharded[2], single[2], rtol=1e-4)
  assert isinstance(sharded[0].sharding, NamedSharding)
