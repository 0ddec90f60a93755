"""Shared helpers of the importers: shape-checked merging of parameter subtrees."""
from typing import Any, Mapping, Optional

import numpy as np
from flax import traverse_util


def merge_pretrained(params: Mapping[str, Any], *, t5: Optional[Mapping[str, Any]] = None,
                     vit: Optional[Mapping[str, Any]] = None, source: str = "pretrained"):
  """Returns a copy of MuRAG `params` with T5 and/or ViT parameters replaced.

  Args:
    params: MuRAG parameters (top level: token_embedder, encoder, decoder, img, ...).
    t5: a T5X-layout tree {token_embedder, encoder, decoder}.
    vit: a big_vision-layout ViT tree (placed under `img`).
    source: name of the checkpoint, for error messages.

  Returns:
    New nested dict of numpy/jax arrays.

  Raises:
    ValueError: a parameter is missing from `params` or has another shape.
  """
  flat = dict(traverse_util.flatten_dict(_to_dict(params)))
  updates = {}
  if t5 is not None:
    updates.update(traverse_util.flatten_dict(_to_dict(t5)))
  if vit is not None:
    updates.update({("img",) + k: v for k, v in traverse_util.flatten_dict(_to_dict(vit)).items()})
  for key, value in updates.items():
    name = "/".join(key)
    if key not in flat:
      raise ValueError(f"{source}: parameter '{name}' has no counterpart in the model "
                       f"(check the model size gin file against the checkpoint)")
    if tuple(np.shape(flat[key])) != tuple(np.shape(value)):
      raise ValueError(f"{source}: parameter '{name}' has shape {tuple(np.shape(value))}, "
                       f"the model expects {tuple(np.shape(flat[key]))}")
    flat[key] = np.asarray(value, dtype=np.asarray(flat[key]).dtype)
  return traverse_util.unflatten_dict(flat)


def _to_dict(tree):
  if hasattr(tree, "unfreeze"):
    return tree.unfreeze()
  return dict(tree)
