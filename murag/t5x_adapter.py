"""Runs MuRAG under `python -m t5x.train` (the paper's models were trained with T5X, §4.1).

t5x is not on the package registry and is imported lazily: importing this module never needs
it; calling `t5x_model` does (an ImportError then says how to install it). What t5x needs from a
model (DESIGN.md "Running under t5x"): a `t5x.models.BaseModel` subclass with `loss_fn`,
`eval_fn`, `predict_batch_with_aux`, `score_batch`, `get_initial_variables` (with `params_axes`
for every parameter), metrics as clu `Metric`s, `FEATURE_CONVERTER_CLS(pack=...)`, and a t5x
OptimizerDef (t5x's Adafactor, see `t5x_adafactor`). `t5x_model` builds that wrapper
around `murag.model.MuRAGModel` without changing it; gin_configs/t5x/ uses it.
"""
import functools
from typing import Any, Optional

import jax.numpy as jnp

# Imported eagerly: gin registers its configurables at import, before the config is locked.
from murag import model as _model_lib  # pylint: disable=unused-import
from murag import partitioning

_INSTALL_HINT = ("t5x is not installed (it is not on the package registry). Install it and its "
                 "non-registry dependencies from their public repositories, e.g. "
                 "`pip install --no-deps git+https://github.com/google-research/t5x "
                 "git+https://github.com/google/airio "
                 "git+https://github.com/google-research/jestimator` plus `pip install "
                 "cached_property fiddle jaxtyping chex grain==0.2.12` (docs/readme/training.md).")


def require_t5x():
  """Imports and returns the `t5x` package, or raises ImportError with install hints."""
  try:
    import t5x  # pylint: disable=g-import-not-at-top
    import t5x.models  # pylint: disable=g-import-not-at-top,unused-import
    import t5x.optimizers  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(f"{_INSTALL_HINT} (import error: {e})") from e
  return t5x


def t5x_adafactor(**kwargs):
  """T5X's own Adafactor (`t5x.adafactor.Adafactor`), decay 0.8, as the paper's T5X setup.

  t5x's `wrap_optax_optimizer` cannot carry optax's Adafactor (its OptaxWrapper has no
  partition rule for `optax.FactoredState`), so under t5x the optimizer is t5x's Adafactor and
  the learning rate comes from t5x's trainer (`utils.create_learning_rate_scheduler`).
  """
  require_t5x()
  from t5x import adafactor  # pylint: disable=g-import-not-at-top
  kwargs.setdefault("decay_rate", 0.8)
  kwargs.setdefault("step_offset", 0)
  if "logical_factor_rules" not in kwargs:
    # T5X's rules plus this project's extra logical axis names (murag/partitioning.py):
    # dimensions named only by this project (patch, length, ...) or unnamed are not factored.
    rules = dict(adafactor.standard_logical_factor_rules())
    for name in tuple(partitioning.LOGICAL_AXES) + (None,):
      rules.setdefault(name, adafactor.FactorDim.NONE)
    kwargs["logical_factor_rules"] = rules
  return adafactor.Adafactor(**kwargs)


@functools.lru_cache(maxsize=None)
def _converter_cls(memory_slots: int, image_size: int):
  """MuRAGFeatureConverter with fixed M and H=W, constructible as t5x does: cls(pack=...)."""
  from tasks import feature_converters  # pylint: disable=g-import-not-at-top

  class Converter(feature_converters.MuRAGFeatureConverter):

    def __init__(self, pack: bool = False, use_custom_packing_ops: bool = False, **kwargs):
      kwargs.setdefault("memory_slots", memory_slots)
      kwargs.setdefault("image_size", image_size)
      super().__init__(pack=pack, use_custom_packing_ops=use_custom_packing_ops, **kwargs)

  Converter.__name__ = f"MuRAGFeatureConverter_M{memory_slots}_px{image_size}"
  return Converter


@functools.lru_cache(maxsize=None)
def _adapter_cls():
  t5x = require_t5x()
  from clu import metrics as clu_metrics  # pylint: disable=g-import-not-at-top

  def as_clu(metrics):
    return {k: clu_metrics.Average.from_model_output(jnp.asarray(v, jnp.float32))
            for k, v in metrics.items()}

  class T5XMuRAGModel(t5x.models.BaseModel):
    """t5x BaseModel delegating to a `MuRAGModel` (metrics become clu Averages)."""

    def __init__(self, murag_model, optimizer_def, memory_slots: int):
      super().__init__(optimizer_def=optimizer_def)
      self.murag = murag_model
      self.FEATURE_CONVERTER_CLS = _converter_cls(memory_slots,  # pylint: disable=invalid-name
                                                  murag_model.config.image_size)

    @property
    def input_vocabulary(self):
      return self.murag.input_vocabulary

    @property
    def output_vocabulary(self):
      return self.murag.output_vocabulary

    def loss_fn(self, params, batch, dropout_rng):
      loss, metrics = self.murag.loss_fn(params, batch, dropout_rng)
      return loss, as_clu(metrics)

    def eval_fn(self, params, batch):
      loss, metrics = self.murag.eval_fn(params, batch)
      return loss, as_clu(metrics)

    def predict_batch_with_aux(self, params, batch, rng=None, decoder_params=None,
                               return_all_decodes=False, num_decodes=None, **kwargs):
      return self.murag.predict_batch_with_aux(
          params, batch, rng=rng, decoder_params=decoder_params,
          return_all_decodes=return_all_decodes, num_decodes=num_decodes, **kwargs)

    def score_batch(self, params, batch, return_intermediates=False):
      return self.murag.score_batch(params, batch, return_intermediates=return_intermediates)

    def get_initial_variables(self, rng, input_shapes, input_types=None):
      return self.murag.get_initial_variables(rng, input_shapes, input_types)

  return T5XMuRAGModel


def t5x_model(*, config: Any, vocabulary: Any = None, optimizer_def: Any = None,
              memory_slots: int = 4) -> Any:
  """A t5x BaseModel running MuRAG (gin: `MODEL = @t5x_adapter.t5x_model()`).

  Args:
    config: a `murag.model.MuRAGConfig`.
    vocabulary: the seqio vocabulary.
    optimizer_def: a t5x OptimizerDef (default: `t5x_adafactor()`; the constant learning rate
      is t5x's trainer setting).
    memory_slots: M of the feature converter.

  Returns:
    An instance of a `t5x.models.BaseModel` subclass.
  """
  optimizer_def = optimizer_def if optimizer_def is not None else t5x_adafactor()
  murag_model = _model_lib.MuRAGModel(config, vocabulary=vocabulary)
  return _adapter_cls()(murag_model, optimizer_def, memory_slots)


def t5x_config_dir() -> Optional[str]:
  """t5x's own gin directory (for --gin_search_paths), or None without t5x."""
  try:
    t5x = require_t5x()
  except ImportError:
    return None
  import os  # pylint: disable=g-import-not-at-top
  return os.path.dirname(os.path.dirname(os.path.abspath(t5x.__file__)))
