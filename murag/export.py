r"""Export binary: an inference bundle of a trained MuRAG (paper §3.2 retriever, §3.4 reader).

  python -m murag.export --gin_file=gin_configs/models/murag_tiny.gin \
    --gin_file=gin_configs/runs/export.gin --gin.CHECKPOINT_PATH=\"/tmp/run\" \
    --gin.EXPORT_DIR=\"/tmp/bundle\" --gin.TASK_FEATURE_LENGTHS="{...}"

Bundle layout (`export(...)`):

  params/                    params-only orbax checkpoint (float32, or bf16 with dtype)
  vocab/spm.model            the SentencePiece vocabulary (when the model has one)
  config.gin                 the operative gin configuration
  jax_export/<fn>.bin        `jax.export` serialised functions, called as fn(params, *inputs):
                               query_encoder(params, query_tokens [B, Lq], query_image
                                 [B, H, W, 3] u8, query_image_mask [B]) -> [B, Dr]
                               memory_encoder(params, tokens [N, Lm], images [N, H, W, 3] u8,
                                 image_mask [N]) -> [N, Dr]
                               generate(params, {features of tasks/features.py except
                                 decoder_* and memory_labels}) -> (tokens [B, Lt], scores [B],
                                 retrieved_ids [B, K], retrieved_scores [B, K])
  saved_model/               TF SavedModel (jax2tf) with the same three signatures, the
                             parameters held as tf.Variables (for TF Serving)
  manifest.json              shapes, dtypes, files

The TF trap: jax 0.10 serialises StableHLO 1.15 and wraps `lax.top_k` (used by retrieval and
by beam search) as `vhlo.composite_v2`, which TF 2.20's XlaCallModule (StableHLO 1.12) cannot
deserialise. The SavedModel is therefore serialised for a target StableHLO version TF can read
(`saved_model_stablehlo_version`, default "1.12.0"), which legalises `chlo.top_k` to plain
StableHLO; jax 0.10 exposes no public setting for that version, so `stablehlo_target_version`
swaps the private serialiser hook for the duration of the export and checks that it exists.
"""
import contextlib
import json
import os
import shutil
import sys
from typing import Any, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from murag import checkpoints as checkpoints_lib
from murag import trainer as trainer_lib

if __name__ == "__main__":
  # Run the binary from the package module, so gin registers every configurable once (under
  # murag.export) rather than a second time under __main__.
  import importlib as _importlib  # pylint: disable=g-import-not-at-top
  _mod = _importlib.import_module("murag.export")
  _importlib.import_module("murag.train").main(sys.argv[1:], entry=_mod.export)
  sys.exit(0)



QUERY_FEATURES = ("query_tokens", "query_image", "query_image_mask")
GENERATE_FEATURES = ("query_tokens", "query_image", "query_image_mask", "memory_tokens",
                     "memory_images", "memory_image_mask", "memory_mask", "memory_ids",
                     "memory_scores", "retrieve")
FUNCTIONS = ("query_encoder", "memory_encoder", "generate")


@contextlib.contextmanager
def stablehlo_target_version(version: Optional[str]):
  """Serialises StableHLO for `version` inside the block (None: jax's default)."""
  if version is None:
    yield
    return
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  from jax._src.export import _export  # pylint: disable=g-import-not-at-top
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  if not hasattr(_export, "_module_to_bytecode"):
    raise RuntimeError("this jax version has no jax._src.export._export._module_to_bytecode; "
                       "set export.saved_model_stablehlo_version = None and use a TF whose "
                       "StableHLO matches jax's")
  original = _export._module_to_bytecode  # pylint: disable=protected-access

  def to_bytecode(module):
    return _jax.mlir.serialize_portable_artifact(
        module, version, xla_bridge.get_backend().serialize_with_sdy)

  _export._module_to_bytecode = to_bytecode  # pylint: disable=protected-access
  try:
    yield
  finally:
    _export._module_to_bytecode = original  # pylint: disable=protected-access


def make_functions(model, decode_length: int, num_decodes: Optional[int]):
  """The three exported computations, as pure functions of (params, inputs)."""

  def query_encoder(params, query_tokens, query_image, query_image_mask):
    return model.embed_query(params, {"query_tokens": query_tokens, "query_image": query_image,
                                      "query_image_mask": query_image_mask})

  def memory_encoder(params, tokens, images, image_mask):
    return model.embed_memory(params, tokens, images, image_mask)

  def generate(params, inputs):
    b = inputs["query_tokens"].shape[0]
    batch = dict(inputs)
    zeros_t = jnp.zeros((b, decode_length), jnp.int32)
    batch.update(decoder_input_tokens=zeros_t, decoder_target_tokens=zeros_t,
                 decoder_loss_weights=zeros_t,
                 memory_labels=jnp.zeros(inputs["memory_mask"].shape, jnp.int32))
    kwargs = {} if num_decodes is None else {"num_decodes": num_decodes}
    tokens, aux = model.predict_batch_with_aux(params, batch, **kwargs)
    return tokens, aux["scores"], aux["retrieved_ids"], aux["retrieved_scores"]

  return {"query_encoder": query_encoder, "memory_encoder": memory_encoder,
          "generate": generate}


def example_specs(shapes, types):
  """Abstract inputs of each exported function from the global batch shapes."""
  sds = lambda k: jax.ShapeDtypeStruct(tuple(shapes[k]), np.dtype(types[k]))
  b, m = shapes["memory_tokens"][:2]
  n = b * m
  mem = (jax.ShapeDtypeStruct((n,) + tuple(shapes["memory_tokens"][2:]), np.int32),
         jax.ShapeDtypeStruct((n,) + tuple(shapes["memory_images"][2:]), np.uint8),
         jax.ShapeDtypeStruct((n,), np.int32))
  return {"query_encoder": tuple(sds(k) for k in QUERY_FEATURES),
          "memory_encoder": mem,
          "generate": ({k: sds(k) for k in GENERATE_FEATURES},)}


def _params_to_host(params):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)


def export_bundle(*, model, params, shapes, types, output_dir: str, dtype: Optional[str] = None,
                  num_decodes: Optional[int] = None, saved_model: bool = True,
                  saved_model_stablehlo_version: Optional[str] = "1.12.0",
                  saved_model_platforms: Sequence[str] = ("cpu",), vocab_file=None,
                  gin_config: Optional[str] = None) -> dict:
  """Writes the bundle (see module docstring) and returns the manifest.

  Args:
    model: the model (embed_query, embed_memory, predict_batch_with_aux).
    params: its parameters.
    shapes, types: global feature shapes / dtypes of tasks/features.py fixing the exported
      batch size and lengths.
    output_dir: bundle directory (replaced when it exists).
    dtype: "bfloat16" stores and runs the bundle in bf16 (None keeps float32).
    num_decodes: beam width (None: model default).
    saved_model: also write the TF SavedModel.
    saved_model_stablehlo_version: StableHLO target version of the SavedModel.
    saved_model_platforms: platforms the SavedModel is lowered for.
    vocab_file: SentencePiece model file copied to vocab/.
    gin_config: text written to config.gin (default: the operative config).
  """
  if os.path.exists(output_dir):
    shutil.rmtree(output_dir)
  os.makedirs(os.path.join(output_dir, "jax_export"))
  host_params = _params_to_host(params)
  if dtype is not None:
    host_params = jax.tree.map(
        lambda x: x.astype(jnp.dtype(dtype)) if np.issubdtype(x.dtype, np.floating) else x,
        host_params)
  checkpoints_lib.save_params(os.path.join(output_dir, "params"), host_params)
  with open(os.path.join(output_dir, "config.gin"), "w") as f:
    f.write(gin_config if gin_config is not None else gin.operative_config_str())
  if vocab_file:
    os.makedirs(os.path.join(output_dir, "vocab"))
    with open(vocab_file, "rb") as src, open(os.path.join(output_dir, "vocab", "spm.model"),
                                              "wb") as dst:
      dst.write(src.read())
  fns = make_functions(model, int(shapes["decoder_input_tokens"][1]), num_decodes)
  specs = example_specs(shapes, types)
  params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host_params)
  manifest = {"functions": {}, "dtype": dtype or "float32",
              "shapes": {k: list(v) for k, v in shapes.items()},
              "types": {k: np.dtype(v).name for k, v in types.items()},
              "num_decodes": num_decodes}
  for name in FUNCTIONS:
    exported = jax.export.export(jax.jit(fns[name]))(params_spec, *specs[name])
    path = os.path.join(output_dir, "jax_export", f"{name}.bin")
    with open(path, "wb") as f:
      f.write(exported.serialize())
    manifest["functions"][name] = {"file": os.path.relpath(path, output_dir),
                                   "out_shapes": [list(a.shape) for a in exported.out_avals]}
  if saved_model:
    _write_saved_model(fns, host_params, specs, os.path.join(output_dir, "saved_model"),
                       saved_model_stablehlo_version, tuple(saved_model_platforms))
    manifest["saved_model"] = {"dir": "saved_model",
                               "stablehlo_version": saved_model_stablehlo_version,
                               "platforms": list(saved_model_platforms)}
  with open(os.path.join(output_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def _tf_spec(sds, name):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.TensorSpec(sds.shape, tf.as_dtype(sds.dtype), name=name)


def _write_saved_model(fns, host_params, specs, path, stablehlo_version, platforms):
  """jax2tf SavedModel: parameters as tf.Variables, one signature per exported function."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  module = tf.Module()
  module.params = jax.tree.map(lambda x: tf.Variable(x, trainable=False), host_params)
  with stablehlo_target_version(stablehlo_version):
    conv = {n: jax2tf.convert(fns[n], with_gradient=False,
                              native_serialization_platforms=platforms) for n in FUNCTIONS}

    @tf.function(autograph=False, input_signature=[
        _tf_spec(s, k) for s, k in zip(specs["query_encoder"], QUERY_FEATURES)])
    def query_encoder(query_tokens, query_image, query_image_mask):
      return {"embedding": conv["query_encoder"](module.params, query_tokens, query_image,
                                                 query_image_mask)}

    @tf.function(autograph=False, input_signature=[
        _tf_spec(s, k) for s, k in zip(specs["memory_encoder"],
                                       ("tokens", "images", "image_mask"))])
    def memory_encoder(tokens, images, image_mask):
      return {"embedding": conv["memory_encoder"](module.params, tokens, images, image_mask)}

    gen_specs = specs["generate"][0]

    @tf.function(autograph=False, input_signature=[
        _tf_spec(gen_specs[k], k) for k in GENERATE_FEATURES])
    def generate(*args):
      tokens, scores, ids, rscores = conv["generate"](module.params,
                                                     dict(zip(GENERATE_FEATURES, args)))
      return {"tokens": tokens, "scores": scores, "retrieved_ids": ids,
              "retrieved_scores": rscores}

    module.query_encoder, module.memory_encoder, module.generate = (
        query_encoder, memory_encoder, generate)
    signatures = {"query_encoder": query_encoder.get_concrete_function(),
                  "memory_encoder": memory_encoder.get_concrete_function(),
                  "generate": generate.get_concrete_function(),
                  "serving_default": generate.get_concrete_function()}
    tf.saved_model.save(module, path, signatures=signatures)


def load_bundle(bundle_dir: str):
  """Reloads a bundle with only jax + orbax (no model code).

  Returns:
    (params, {name: callable(*inputs)} with params bound, manifest).
  """
  with open(os.path.join(bundle_dir, "manifest.json")) as f:
    manifest = json.load(f)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.abspath(os.path.join(bundle_dir, "params")))
  fns = {}
  for name, info in manifest["functions"].items():
    with open(os.path.join(bundle_dir, info["file"]), "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    fns[name] = (lambda e: (lambda *args: e.call(params, *args)))(exported)
  return params, fns, manifest


@gin.configurable
def export(*, model: Any, checkpoint_path: str, partitioner: Any, output_dir: str,
           batch_size: int, task_feature_lengths: dict, feature_converter_kwargs=None,
           dtype: Optional[str] = None, num_decodes: Optional[int] = None,
           saved_model: bool = True, saved_model_stablehlo_version: Optional[str] = "1.12.0",
           saved_model_platforms: Sequence[str] = ("cpu",)) -> dict:
  """Loads `checkpoint_path` and writes the bundle (gin entry point of `python -m murag.export`).

  Args:
    model: the model.
    checkpoint_path: MODEL_DIR, step directory or params-only directory.
    partitioner: the Partitioner (parameters are loaded sharded, then gathered to host).
    output_dir: bundle directory.
    batch_size: exported batch size B (N = B * M memory items for memory_encoder).
    task_feature_lengths: {"query_tokens", "memory_tokens", "targets"} lengths.
    feature_converter_kwargs: e.g. {"memory_slots": M}.
    dtype, num_decodes, saved_model, saved_model_stablehlo_version, saved_model_platforms:
      see `export_bundle`.

  Returns:
    The manifest.
  """
  from murag import infer  # pylint: disable=g-import-not-at-top
  from murag import train as train_lib  # pylint: disable=g-import-not-at-top
  from tasks import pipeline  # pylint: disable=g-import-not-at-top
  converter = train_lib.make_feature_converter(model, None, feature_converter_kwargs)
  cfg = pipeline.DatasetConfig(task_feature_lengths=task_feature_lengths, batch_size=batch_size)
  shapes, types = infer._input_shapes(model, cfg, converter)  # pylint: disable=protected-access
  abstract, _, _ = trainer_lib.abstract_params(model, partitioner, shapes, types)
  params = checkpoints_lib.load_params(checkpoint_path, abstract, strict=True)
  vocab = getattr(model, "output_vocabulary", None)
  vocab_file = getattr(vocab, "sentencepiece_model_file", None)
  if vocab_file and "://" in vocab_file:
    vocab_file = None  # a GCS vocabulary is referenced by config.gin instead of copied
  return export_bundle(model=model, params=params, shapes=shapes, types=types,
                       output_dir=output_dir, dtype=dtype, num_decodes=num_decodes,
                       saved_model=saved_model,
                       saved_model_stablehlo_version=saved_model_stablehlo_version,
                       saved_model_platforms=saved_model_platforms, vocab_file=vocab_file)
