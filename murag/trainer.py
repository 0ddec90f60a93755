"""Train state and the sharded, jitted train / eval steps for any T5X-BaseModel-style model.

Implements the optimisation loop of the MuRAG paper (Section 4.1: Adafactor, constant learning
rate, large batches on a TPU pod with T5X) for any model exposing T5X's `BaseModel` interface
(`loss_fn`, `eval_fn`, `get_initial_variables` with `params_axes`), so MuRAG and RA-CM3 share it.

Sharding: parameters follow their logical axis names through the partitioner's rules,
optimizer statistics follow their parameter, the batch is split over the `data` mesh axis.
Randomness: the dropout key of step s is `fold_in(state.rng, s)`, so a resumed run draws exactly
the keys an uninterrupted run would have drawn.
"""
import dataclasses
from typing import Any, Dict, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from murag import partitioner as partitioner_lib


@struct.dataclass
class TrainState:
  """Everything a checkpoint must hold to continue training bit-exactly."""
  step: jax.Array        # int32 []
  params: Any
  opt_state: Any
  rng: jax.Array         # uint32 [2], the run's base key

  def as_dict(self) -> dict:
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state,
            "rng": self.rng}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "TrainState":
    return cls(step=d["step"], params=d["params"], opt_state=d["opt_state"], rng=d["rng"])


def _unfreeze(tree):
  if hasattr(tree, "unfreeze"):
    return tree.unfreeze()
  if isinstance(tree, Mapping):
    return {k: _unfreeze(v) for k, v in tree.items()}
  return tree


def scalar_metrics(metrics: Mapping[str, Any]) -> dict:
  """Model metrics (arrays or clu Metric objects) -> scalar arrays, traceable under jit."""
  out = {}
  for name, value in dict(metrics or {}).items():
    if hasattr(value, "compute"):
      value = value.compute()
    value = jnp.asarray(value)
    if value.ndim:
      value = jnp.mean(value)
    out[name] = value.astype(jnp.float32)
  return out


def run_once_compiler_options() -> Optional[Dict[str, Any]]:
  """XLA options for programs that run once per stage (initialisers, optimizer init).

  On CPU, XLA's backend optimisation level 0 compiles the demo model's parameter initialiser
  in 0.59x the time of the default level (6.7 s vs 11.3 s, benchmarks/init_compile.py); the
  program, which runs once, takes ~0.2 s longer. Other backends keep their defaults.
  """
  if jax.default_backend() == "cpu":
    return {"xla_backend_optimization_level": 0}
  return None


# Operations XLA:CPU hands to YNNPACK as fused library calls in the train and eval steps:
# reductions besides the dots (its default). benchmarks/cpu_fusions.py, the demo's four
# train steps: steps 0.75-0.86x, compilation as long (fresh processes), parameters after
# 31 steps bit-identical for three of them and within 2.7e-05 for fixed retrieval.
CPU_STEP_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def step_compiler_options() -> Optional[Dict[str, Any]]:
  """XLA options of the train / eval steps: CPU_STEP_COMPILER_OPTIONS on CPU, else defaults."""
  if jax.default_backend() == "cpu":
    return dict(CPU_STEP_COMPILER_OPTIONS)
  return None


@dataclasses.dataclass
class Trainer:
  """Builds the sharded train state and compiles the train / eval steps.

  Attributes:
    model: a BaseModel-style model.
    optimizer: an optax GradientTransformation (optionally with `.learning_rate_fn`).
    partitioner: a `murag.partitioner.Partitioner`.
    input_shapes: global-batch shapes of every model feature.
    input_types: dtypes of every model feature.
    log_grad_norm: also return the global gradient norm as metric `grad_norm`. Off by default,
      like t5x (which reports no gradient norm unless a WeightMetricsComputer is set): on a
      sharded model it adds a cross-device reduction over every gradient to each step,
      measured at about 4% of the tiny MuRAG's step time on 8 CPU devices.
  """
  model: Any
  optimizer: optax.GradientTransformation
  partitioner: partitioner_lib.Partitioner
  input_shapes: Mapping[str, tuple]
  input_types: Mapping[str, Any]
  log_grad_norm: bool = False

  def __post_init__(self):
    self.partitioner.check_global_batch_size(int(next(iter(self.input_shapes.values()))[0]))
    init_rng = jax.random.PRNGKey(0)
    abstract_vars = jax.eval_shape(self._init_variables, init_rng)
    self.params_axes = abstract_vars.get("params_axes")
    if self.params_axes is None:
      raise ValueError(f"{type(self.model).__name__}.get_initial_variables returned no "
                       f"'params_axes' collection; every parameter needs logical axis names")
    abstract_params = _unfreeze(abstract_vars["params"])
    self.logical_param_specs = partitioner_lib.logical_specs_from_params_axes(
        abstract_params, self.params_axes)
    self.param_shardings = self.partitioner.shardings(self.logical_param_specs)
    opt_shardings, abstract_opt = self.partitioner.opt_state_shardings(
        self.optimizer, abstract_params, self.param_shardings)
    replicated = self.partitioner.replicated()
    self.state_shardings = TrainState(step=replicated, params=self.param_shardings,
                                      opt_state=opt_shardings, rng=replicated)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                          opt_state=abstract_opt,
                          rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_shardings)
    self.learning_rate_fn = getattr(self.optimizer, "learning_rate_fn", None)
    batch_sharding = self.partitioner.batch_sharding()
    self._batch_sharding = batch_sharding
    self._train_step = jax.jit(self._train_step_impl,
                               in_shardings=(self.state_shardings, batch_sharding),
                               out_shardings=(self.state_shardings, replicated),
                               donate_argnums=(0,), compiler_options=step_compiler_options())
    self._eval_step = jax.jit(self._eval_step_impl,
                              in_shardings=(self.param_shardings, batch_sharding),
                              out_shardings=replicated, compiler_options=step_compiler_options())

  # --- state -------------------------------------------------------------------------------
  def _init_variables(self, rng):
    return self.model.get_initial_variables(rng, dict(self.input_shapes),
                                            dict(self.input_types))

  def _init_state_fn(self):
    def init(rng):
      params = _unfreeze(self._init_variables(rng)["params"])
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.optimizer.init(params),
                        rng=jax.random.fold_in(rng, 1))

    return jax.jit(init, out_shardings=self.state_shardings,
                   compiler_options=run_once_compiler_options())

  def init_state(self, seed: int) -> TrainState:
    """A freshly initialised, sharded train state (parameters from `seed`)."""
    with jax.set_mesh(self.partitioner.mesh):
      # The key is placed replicated explicitly so that `lower_init_state` lowers the same
      # program (an input's sharding is part of it) without a concrete key.
      key = jax.device_put(jax.random.PRNGKey(seed), self.state_shardings.rng)
      return self._init_state_fn()(key)

  def lower_init_state(self):
    """Lowers `init_state`'s program for an abstract seed key (nothing is allocated)."""
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=self.state_shardings.rng)
    with jax.set_mesh(self.partitioner.mesh):
      return self._init_state_fn().lower(key)

  def state_from_params(self, params, seed: int) -> TrainState:
    """A step-0 train state around given (sharded) parameters, without initialising a model.

    Equal to `state_with_params(init_state(seed), params)` but compiles only the optimizer's
    init: the full parameter initialiser (a trace of the whole model, ~10 s of XLA compilation
    on a 2-core CPU for the tiny MuRAG) is skipped. Used by `train` when every parameter comes
    from an init checkpoint.
    """
    opt_init = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state,
                       compiler_options=run_once_compiler_options())
    replicated = self.state_shardings.rng
    with jax.set_mesh(self.partitioner.mesh):
      rng = jax.device_put(jax.random.fold_in(jax.random.PRNGKey(seed), 1), replicated)
      step = jax.device_put(jnp.zeros((), jnp.int32), self.state_shardings.step)
      return TrainState(step=step, params=params, opt_state=opt_init(params), rng=rng)

  def state_with_params(self, state: TrainState, params) -> TrainState:
    """`state` with new parameters and a matching fresh optimizer state (fine-tuning init)."""
    opt_init = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state,
                       compiler_options=run_once_compiler_options())
    with jax.set_mesh(self.partitioner.mesh):
      return state.replace(params=params, opt_state=opt_init(params))

  # --- steps -------------------------------------------------------------------------------
  def _train_step_impl(self, state: TrainState, batch):
    dropout_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      loss, metrics = self.model.loss_fn(params, batch, dropout_rng)
      return loss, metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = scalar_metrics(metrics)
    out["loss"] = loss.astype(jnp.float32)
    if self.log_grad_norm:
      out["grad_norm"] = optax.global_norm(grads).astype(jnp.float32)
    if self.learning_rate_fn is not None:
      out["learning_rate"] = jnp.asarray(self.learning_rate_fn(state.step), jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, out

  def _eval_step_impl(self, params, batch):
    loss, metrics = self.model.eval_fn(params, batch)
    out = scalar_metrics(metrics)
    out["loss"] = jnp.asarray(loss, jnp.float32)
    return out

  def put_batch(self, host_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's rows -> the global batch, sharded over `data`.

    One process: a single batched `jax.device_put` of the whole feature dict. Several
    processes: `partitioner.host_batch_to_global` (each host contributes its rows).
    """
    if jax.process_count() == 1:
      return jax.device_put(dict(host_batch), self._batch_sharding)
    return self.partitioner.host_batch_to_global(host_batch)

  def train_step(self, state: TrainState, batch: Mapping[str, jax.Array]):
    """One optimizer step on a global (sharded) batch. Donates `state`.

    Returns:
      (new state, dict of scalar metrics: loss, learning_rate, model metrics, and
      grad_norm when `log_grad_norm`).
    """
    with jax.set_mesh(self.partitioner.mesh):
      return self._train_step(state, batch)

  def eval_step(self, params, batch: Mapping[str, jax.Array]) -> dict:
    with jax.set_mesh(self.partitioner.mesh):
      return self._eval_step(params, batch)

  def lower_train_step(self):
    """Lowers the train step for abstract inputs only (no parameter is allocated)."""
    abstract_batch = self.partitioner.abstract_batch(self.input_shapes, self.input_types)
    with jax.set_mesh(self.partitioner.mesh):
      return self._train_step.lower(self.abstract_state, abstract_batch)


def first_non_finite(losses: list) -> Optional[int]:
  """Index of the first non-finite entry of a list of scalar device arrays, or None."""
  if not losses:
    return None
  values = np.asarray(jax.device_get(jnp.stack(losses)))
  bad = np.flatnonzero(~np.isfinite(values))
  return int(bad[0]) if bad.size else None


def shapes_and_types(batch: Mapping[str, np.ndarray], num_hosts: int = 1):
  """Global input shapes / types from one host's batch."""
  shapes = {k: (np.shape(v)[0] * num_hosts,) + tuple(np.shape(v)[1:]) for k, v in batch.items()}
  types = {k: np.asarray(v).dtype for k, v in batch.items()}
  return shapes, types


def abstract_params(model, partitioner: partitioner_lib.Partitioner,
                    input_shapes: Mapping[str, tuple], input_types: Mapping[str, Any]):
  """ShapeDtypeStructs (with shardings) of `model`'s parameters; nothing is allocated.

  Returns:
    (abstract params tree, NamedSharding tree, logical PartitionSpec tree).
  """
  variables = jax.eval_shape(
      lambda rng: model.get_initial_variables(rng, dict(input_shapes), dict(input_types)),
      jax.random.PRNGKey(0))
  params = _unfreeze(variables["params"])
  specs = partitioner_lib.logical_specs_from_params_axes(params, variables["params_axes"])
  shardings = partitioner.shardings(specs)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          params, shardings)
  return abstract, shardings, specs
