"""T5X checkpoints -> T5X parameter tree (host-side; used to initialise MuRAG, paper §4.1).

Two layouts are read:
- orbax (what current T5X writes): a PyTree checkpoint restoring as
  {"target": params, "state": optimizer state}; plain orbax restores it.
- legacy (the public T5 / T5.1.1 checkpoints, e.g. `t5_1_1_base/checkpoint_1000000`): a
  msgpack file `checkpoint` holding {"version", "optimizer": {"target": ..., "state": ...}}
  whose large leaves are tensorstore specs ({"driver": "zarr", "kvstore": {...}, ...}) naming
  a zarr directory beside it (`target.encoder.layers_0.attention.query.kernel`), and whose
  small leaves are arrays stored inline. Relative paths resolve against the checkpoint
  directory; GCS specs (`"path"` at top level) are read from the local copy the same way.
"""
import os
from typing import Any, Mapping

import numpy as np
from flax import serialization
from flax import traverse_util


def _is_ts_spec(x) -> bool:
  return isinstance(x, dict) and "driver" in x and "kvstore" in x


def _read_ts(ckpt_dir: str, spec: Mapping[str, Any], name: str) -> np.ndarray:
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  rel = spec["kvstore"].get("path") or spec.get("path")
  if not rel:
    raise ValueError(f"{ckpt_dir}/checkpoint: tensorstore spec of '{name}' has no path")
  full = rel if os.path.isabs(rel) else os.path.join(ckpt_dir, rel)
  if not os.path.isdir(full):
    raise FileNotFoundError(f"{ckpt_dir}: array '{name}' is stored in '{rel}', which is missing")
  driver = spec.get("driver", "zarr")
  if driver == "cast":  # written with a save dtype: read the base array
    return _read_ts(ckpt_dir, spec["base"], name)
  arr = ts.open({"driver": driver, "kvstore": {"driver": "file", "path": full}},
                open=True).result().read().result()
  return np.asarray(arr)


def _load_legacy(ckpt_dir: str) -> dict:
  with open(os.path.join(ckpt_dir, "checkpoint"), "rb") as f:
    contents = serialization.msgpack_restore(f.read())
  if "optimizer" not in contents or "target" not in contents["optimizer"]:
    raise ValueError(f"{ckpt_dir}/checkpoint: not a T5X checkpoint (no optimizer/target)")
  target = contents["optimizer"]["target"]
  flat = traverse_util.flatten_dict(target, is_leaf=lambda _, v: _is_ts_spec(v))
  out = {}
  for key, value in flat.items():
    name = "/".join(key)
    arr = _read_ts(ckpt_dir, value, name) if _is_ts_spec(value) else np.asarray(value)
    out[key] = arr.astype(np.float32) if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16" \
        else arr
  return traverse_util.unflatten_dict(out)


def _load_orbax(ckpt_dir: str) -> dict:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  restored = ocp.PyTreeCheckpointer().restore(os.path.abspath(ckpt_dir))
  if "target" not in restored:
    raise ValueError(f"{ckpt_dir}: orbax checkpoint without a 'target' entry (found "
                     f"{sorted(restored)[:5]}); not a T5X train state")
  return _to_numpy(restored["target"])


def _to_numpy(tree):
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def load_t5x_checkpoint(ckpt_dir: str) -> dict:
  """Parameters ("target") of a T5X checkpoint directory, as nested numpy dicts.

  Args:
    ckpt_dir: a `checkpoint_<step>` directory (legacy or orbax layout).

  Returns:
    The parameter tree (for T5: token_embedder, encoder, decoder).
  """
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"T5X checkpoint directory {ckpt_dir} does not exist")
  legacy = os.path.join(ckpt_dir, "checkpoint")
  if os.path.isfile(legacy):
    with open(legacy, "rb") as f:
      head = f.read(1)
    if head and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):  # msgpack map
      return _load_legacy(ckpt_dir)
  return _load_orbax(ckpt_dir)


def write_legacy_checkpoint(ckpt_dir: str, params: Mapping[str, Any], *,
                            inline_max_size: int = 0, state: Any = None) -> None:
  """Writes `params` in T5X's legacy msgpack + tensorstore (zarr) layout.

  Arrays with more than `inline_max_size` elements go to zarr directories named by their
  dotted path, the rest are inlined in the msgpack, as T5X does for unpartitioned arrays.
  Used by tests and to hand weights to tools that only read the legacy layout.
  """
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  os.makedirs(ckpt_dir, exist_ok=True)
  flat = traverse_util.flatten_dict(_to_numpy(params))
  written = {}
  for key, arr in flat.items():
    arr = np.asarray(arr)
    if arr.size <= inline_max_size:
      written[key] = arr
      continue
    rel = "target." + ".".join(key)
    spec = {"driver": "zarr", "dtype": arr.dtype.name,
            "kvstore": {"driver": "file", "path": rel},
            "metadata": {"compressor": {"id": "gzip"}, "shape": list(arr.shape),
                         "chunks": list(arr.shape)}}
    full = dict(spec, kvstore={"driver": "file", "path": os.path.join(ckpt_dir, rel)})
    t = ts.open(full, create=True, delete_existing=True).result()
    t.write(arr).result()
    written[key] = spec
  target = traverse_util.unflatten_dict(written)
  payload = {"version": 3, "optimizer": {"target": target, "state": state or {"step": 0}}}
  with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(payload))
