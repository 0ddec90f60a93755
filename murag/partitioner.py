"""The trainer's partitioner: mesh, logical axis rules and shardings of state and batches.

Implements the data / model parallel layout of T5X (Roberts et al. 2022), on which the MuRAG
paper's models were trained (Section 4.1): a ("data", "model") device mesh over every device
of every host, parameters and optimizer state sharded by the logical axis names each
parameter carries (`params_axes`), and every host feeding only its shard of the global batch.
The rules and the mesh themselves live in `murag/partitioning.py`; this file turns them into
`NamedSharding`s for a model's state.
"""
from typing import Any, Mapping, Optional, Sequence

import gin
import jax
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from murag import partitioning


def _axis_names(entry) -> Optional[tuple]:
  """Logical names from a params_axes entry (flax AxisMetadata, PartitionSpec or tuple)."""
  if entry is None:
    return None
  if hasattr(entry, "names"):
    return tuple(entry.names)
  if isinstance(entry, (PartitionSpec, tuple, list)):
    return tuple(entry)
  return None


def logical_specs_from_params_axes(params, params_axes) -> Any:
  """A tree of logical PartitionSpecs matching `params`.

  Accepts T5X's layout (`params_axes` holding `<name>_axes` AxisMetadata leaves next to where
  the parameter lives) and a plain tree of PartitionSpecs shaped like `params`.

  Args:
    params: the parameter tree (arrays or ShapeDtypeStructs).
    params_axes: the `params_axes` collection returned by `get_initial_variables`.

  Returns:
    A tree of `PartitionSpec` with the structure of `params`.

  Raises:
    ValueError: a parameter has no axis names, or names of the wrong rank.
  """
  flat_params = traverse_util.flatten_dict(_to_dict(params), sep="/")
  flat_axes = traverse_util.flatten_dict(
      _to_dict(params_axes), sep="/",
      is_leaf=lambda _, v: _axis_names(v) is not None and not isinstance(v, Mapping))
  specs = {}
  missing = []
  for name, value in flat_params.items():
    parent, _, leaf = name.rpartition("/")
    key_axes = f"{parent}/{leaf}_axes" if parent else f"{leaf}_axes"
    names = _axis_names(flat_axes.get(key_axes, flat_axes.get(name)))
    if names is None:
      missing.append(name)
      continue
    if len(names) != np.ndim(value):
      raise ValueError(f"parameter '{name}' has shape {tuple(np.shape(value))} but axis names "
                       f"{names} (rank mismatch in params_axes)")
    specs[name] = PartitionSpec(*names)
  if missing:
    raise ValueError(f"Missing axis names in params_axes for parameter(s) {missing[:10]}"
                     f"{' ...' if len(missing) > 10 else ''}; every parameter needs logical "
                     f"axis names (flax.linen.partitioning.param_with_axes)")
  return traverse_util.unflatten_dict(specs, sep="/")


def _to_dict(tree):
  if hasattr(tree, "unfreeze"):
    tree = tree.unfreeze()
  return dict(tree) if isinstance(tree, Mapping) else tree


@gin.configurable
class Partitioner:
  """Mesh + logical axis rules; maps a model's logical specs to shardings.

  Attributes:
    mesh: the ("data", "model") `jax.sharding.Mesh`.
    rules: logical -> mesh axis rules (from `partitioning.standard_logical_axis_rules`).
  """

  def __init__(self, *, num_partitions: int = 1,
               logical_axis_rules: Optional[Sequence[tuple[str, Optional[str]]]] = None,
               devices: Optional[Sequence[jax.Device]] = None):
    """Builds the mesh.

    Args:
      num_partitions: size of the `model` mesh axis (1 = pure data parallelism).
      logical_axis_rules: override of the rules (default: the standard rules).
      devices: defaults to every device of every process.
    """
    self.mesh = partitioning.make_mesh(num_partitions=num_partitions, devices=devices)
    self.rules = (tuple(logical_axis_rules) if logical_axis_rules is not None
                  else partitioning.standard_logical_axis_rules())

  @property
  def data_parallel_size(self) -> int:
    return self.mesh.shape["data"]

  def shardings(self, logical_specs) -> Any:
    """Logical PartitionSpec tree -> NamedSharding tree.

    A logical name repeated within one spec (e.g. a ViT patch kernel ("patch", "patch", ...))
    keeps its first occurrence; later ones become None (replicated), since one mesh axis can
    shard at most one dimension.
    """
    def dedupe(spec):
      seen, names = set(), []
      for name in spec:
        names.append(None if name is not None and name in seen else name)
        seen.add(name)
      return PartitionSpec(*names)

    specs = jax.tree.map(dedupe, logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    return partitioning.logical_to_sharding(specs, self.mesh, self.rules)

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def batch_sharding(self) -> NamedSharding:
    return partitioning.batch_sharding(self.mesh)

  def check_global_batch_size(self, batch_size: int):
    """Raises when the global batch cannot be split over the data axis and the hosts."""
    if batch_size % self.data_parallel_size:
      raise ValueError(f"batch_size={batch_size} is not divisible by the data-parallel mesh "
                       f"size {self.data_parallel_size} (mesh {dict(self.mesh.shape)})")
    if batch_size % jax.process_count():
      raise ValueError(f"batch_size={batch_size} is not divisible by the "
                       f"{jax.process_count()} processes")

  def host_batch_to_global(self, host_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's rows -> global arrays sharded over `data` (rows ordered by process)."""
    sharding = self.batch_sharding()
    out = {}
    for name, value in host_batch.items():
      value = np.asarray(value)
      global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
      out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out

  def abstract_batch(self, input_shapes: Mapping[str, tuple], input_types: Mapping[str, Any]):
    """ShapeDtypeStructs of a global batch with the batch sharding."""
    sharding = self.batch_sharding()
    return {k: jax.ShapeDtypeStruct(tuple(s), np.dtype(input_types[k]), sharding=sharding)
            for k, s in input_shapes.items()}

  def opt_state_shardings(self, tx: optax.GradientTransformation, abstract_params,
                          param_shardings) -> Any:
    """Shardings of `tx`'s state: param-shaped leaves follow their parameter, others replicate.

    Adafactor's factored row / column statistics have reduced shapes; they are tiny (O(rows +
    cols)), so they are replicated rather than given a derived spec.
    """
    abstract_state = jax.eval_shape(tx.init, abstract_params)
    replicated = self.replicated()

    def per_leaf(leaf, param, sharding):
      if hasattr(leaf, "shape") and tuple(leaf.shape) == tuple(param.shape):
        return sharding
      return replicated

    mapped = optax.tree_map_params(
        tx, lambda leaf, param, sharding: per_leaf(leaf, param, sharding), abstract_state,
        abstract_params, param_shardings,
        transform_non_params=lambda _: replicated)
    return mapped, abstract_state
