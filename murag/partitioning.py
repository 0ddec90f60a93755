"""Logical-to-mesh partitioning shared by every model, the trainer and the memory builder.

One vocabulary of logical axis names is used on every parameter and key activation of both
models: batch, length, embed, mlp, heads, kv, joined_kv, vocab, relpos_buckets, patch,
memory, topk. `standard_logical_axis_rules` maps them onto the two mesh axes `data` and
`model` (T5X's 1-D model parallelism); gin can replace or extend the rules.
"""
from typing import Optional, Sequence

import gin
import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "joined_kv", "vocab",
                "relpos_buckets", "patch", "memory", "topk")
MESH_AXES = ("data", "model")


@gin.configurable
def standard_logical_axis_rules(
    *,
    shard_embed: bool = False,
    additional_rules: Optional[Sequence[tuple[str, Optional[str]]]] = None,
) -> tuple[tuple[str, Optional[str]], ...]:
  """Rules from logical axis names to mesh axes.

  Args:
    shard_embed: also shard the embed dimension over `model` (2-D sharding for very
      wide models; off by default as in T5X).
    additional_rules: rules placed first, so they override the defaults (gin-settable).

  Returns:
    A tuple of (logical_name, mesh_axis_or_None) pairs for `nn.logical_axis_rules`.
  """
  rules = [
      ("batch", "data"),
      ("memory", "data"),  # the in-batch memory is built per data shard, then gathered
      ("vocab", "model"),
      ("mlp", "model"),
      ("heads", "model"),
      ("joined_kv", "model"),
      ("kv", None),
      ("embed", "model" if shard_embed else None),
      ("length", None),
      ("relpos_buckets", None),
      ("patch", None),
      ("topk", None),
  ]
  extra = list(additional_rules or [])
  unknown = [r for r in extra if r[0] not in LOGICAL_AXES]
  if unknown:
    raise ValueError(f"standard_logical_axis_rules.additional_rules: unknown logical axis "
                     f"name(s) {[r[0] for r in unknown]}; known: {LOGICAL_AXES}")
  return tuple(extra + rules)


@gin.configurable
def make_mesh(*, num_partitions: int = 1, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A (data, model) mesh over all devices of all hosts.

  Args:
    num_partitions: size of the `model` axis; the `data` axis takes the rest.
    devices: defaults to `jax.devices()` (every device of every process).

  Returns:
    A `jax.sharding.Mesh` with axes ("data", "model").
  """
  devices = list(devices if devices is not None else jax.devices())
  if num_partitions < 1 or len(devices) % num_partitions:
    raise ValueError(f"make_mesh.num_partitions={num_partitions} does not divide the "
                     f"{len(devices)} available devices")
  grid = np.asarray(devices).reshape(len(devices) // num_partitions, num_partitions)
  return Mesh(grid, MESH_AXES)


def logical_to_sharding(logical_spec_tree, mesh: Mesh, rules) -> object:
  """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
  mesh_specs = nn.logical_to_mesh(logical_spec_tree, rules)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), mesh_specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of an input batch: leading axis over `data`, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec("data"))
