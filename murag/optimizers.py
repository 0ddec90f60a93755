"""Optimizer and learning-rate schedules (MuRAG paper, Section 4.1 "Implementation details").

The paper optimises with Adafactor (Shazeer and Stern, 2018) at a constant learning rate:
5e-4 for both pre-training stages, 3e-4 for WebQA / MultimodalQA fine-tuning. Warm-up and
decay are available for other runs but off by default, so the paper's setting is
`adafactor(learning_rate_fn=learning_rate_schedule(base_learning_rate=5e-4))`.
Both functions are gin-configurable; the trainer logs `learning_rate_fn(step)` every period.
"""
from typing import Callable, Optional

import gin
import jax.numpy as jnp
import optax

_DECAYS = ("constant", "linear", "cosine", "rsqrt")


@gin.configurable
def learning_rate_schedule(
    *,
    base_learning_rate: float = 5e-4,
    warmup_steps: int = 0,
    decay: str = "constant",
    decay_steps: Optional[int] = None,
    final_fraction: float = 0.0,
) -> optax.Schedule:
  """A learning rate schedule: optional linear warm-up, then constant or a decay.

  Args:
    base_learning_rate: the peak (and, for "constant", the only) learning rate.
    warmup_steps: steps of linear warm-up from 0 to `base_learning_rate`.
    decay: "constant", "linear" or "cosine" (to `final_fraction * base` over
      `decay_steps` after warm-up), or "rsqrt" (T5's inverse square root after warm-up).
    decay_steps: length of the linear / cosine decay; required for those.
    final_fraction: the fraction of `base_learning_rate` reached at the end of decay.

  Returns:
    An optax schedule `step -> learning rate`.
  """
  if decay not in _DECAYS:
    raise ValueError(f"learning_rate_schedule.decay={decay!r}: expected one of {_DECAYS}")
  if base_learning_rate <= 0:
    raise ValueError(f"learning_rate_schedule.base_learning_rate must be > 0, "
                     f"got {base_learning_rate}")
  if warmup_steps < 0:
    raise ValueError(f"learning_rate_schedule.warmup_steps must be >= 0, got {warmup_steps}")
  if decay in ("linear", "cosine") and not decay_steps:
    raise ValueError(f"learning_rate_schedule.decay={decay!r} needs decay_steps > 0")

  if decay == "constant":
    after = optax.constant_schedule(base_learning_rate)
  elif decay == "linear":
    after = optax.linear_schedule(base_learning_rate, base_learning_rate * final_fraction,
                                  decay_steps)
  elif decay == "cosine":
    after = optax.cosine_decay_schedule(base_learning_rate, decay_steps, alpha=final_fraction)
  else:  # rsqrt: lr * sqrt(max(warmup, 1) / max(step, warmup, 1)), continuous at warm-up end
    start = max(warmup_steps, 1)

    def after(count):
      return base_learning_rate * jnp.sqrt(start / jnp.maximum(count + warmup_steps, start))

  if warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(0.0, base_learning_rate, warmup_steps)
  return optax.join_schedules([warmup, after], [warmup_steps])


@gin.configurable
def adafactor(
    *,
    learning_rate_fn: Optional[Callable[[int], float]] = None,
    decay_rate: float = 0.8,
    clipping_threshold: Optional[float] = 1.0,
    multiply_by_parameter_scale: bool = True,
    momentum: Optional[float] = None,
    weight_decay_rate: Optional[float] = None,
    min_dim_size_to_factor: int = 128,
    factored: bool = True,
    max_grad_norm: Optional[float] = None,
) -> optax.GradientTransformation:
  """Adafactor as used by T5X / the paper, built from optax.

  Args:
    learning_rate_fn: schedule from `learning_rate_schedule` (default: constant 5e-4).
    decay_rate, clipping_threshold, multiply_by_parameter_scale, momentum,
    weight_decay_rate, min_dim_size_to_factor, factored: passed to `optax.adafactor`.
    max_grad_norm: optional global-norm gradient clipping applied first.

  Returns:
    An `optax.GradientTransformation`; the schedule is attached as `.learning_rate_fn`
    so the trainer can log it.
  """
  schedule = learning_rate_fn if learning_rate_fn is not None else learning_rate_schedule()
  tx = optax.adafactor(
      learning_rate=schedule,
      min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
      momentum=momentum,
      weight_decay_rate=weight_decay_rate,
      factored=factored,
  )
  if max_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)
  return with_learning_rate_fn(tx, schedule)


def with_learning_rate_fn(tx: optax.GradientTransformation,
                          schedule: Callable[[int], float]) -> optax.GradientTransformation:
  """Returns `tx` carrying `schedule` as attribute `learning_rate_fn` (for logging)."""
  return _Optimizer(tx.init, tx.update, schedule)


class _Optimizer(optax.GradientTransformation):
  """A GradientTransformation (still a NamedTuple of init/update) that remembers its schedule."""

  def __new__(cls, init, update, learning_rate_fn):
    obj = super().__new__(cls, init, update)
    obj.learning_rate_fn = learning_rate_fn  # NamedTuple subclasses without __slots__ have a dict
    return obj
