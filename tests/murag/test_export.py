"""Export bundle: jax.export functions reload in a fresh process; the TF SavedModel runs in TF."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from murag import export
from murag import model as model_lib
from tasks import features as features_lib

pytestmark = pytest.mark.slow

TINY = dict(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=1,
            num_decoder_layers=1, mlp_dim=32, image_size=16, vit_patch_size=8, vit_width=16,
            vit_depth=1, vit_mlp_dim=32, vit_num_heads=2, top_k=2, num_beams=2)
DIMS = {"Lq": 6, "Lm": 5, "Lt": 4, "M": 3, "H": 16, "W": 16}
B = 4


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "query_tokens": rng.integers(2, 64, (B, 6)).astype(np.int32),
      "query_image": rng.integers(0, 255, (B, 16, 16, 3)).astype(np.uint8),
      "query_image_mask": np.array([1, 0, 1, 1], np.int32),
      "memory_tokens": rng.integers(2, 64, (B, 3, 5)).astype(np.int32),
      "memory_images": rng.integers(0, 255, (B, 3, 16, 16, 3)).astype(np.uint8),
      "memory_image_mask": rng.integers(0, 2, (B, 3)).astype(np.int32),
      "memory_mask": np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], np.int32),
      "memory_ids": np.arange(12, dtype=np.int32).reshape(B, 3),
      "memory_scores": np.zeros((B, 3), np.float32),
      "retrieve": np.ones(B, np.int32),
  }


_RELOAD = r"""
import json, sys
import numpy as np
from murag import export
import tensorflow as tf
bundle, inputs_path, out_path = sys.argv[1:4]
inputs = dict(np.load(inputs_path))
_, fns, manifest = export.load_bundle(bundle)
q = [inputs[k] for k in export.QUERY_FEATURES]
n = inputs["memory_tokens"].shape[0] * inputs["memory_tokens"].shape[1]
mem = (inputs["memory_tokens"].reshape(n, -1), inputs["memory_images"].reshape((n,) + inputs["memory_images"].shape[2:]),
       inputs["memory_image_mask"].reshape(n))
gen = {k: inputs[k] for k in export.GENERATE_FEATURES}
res = {"q": np.asarray(fns["query_encoder"](*q)), "m": np.asarray(fns["memory_encoder"](*mem))}
for name, v in zip(("tokens", "scores", "ids", "rscores"), fns["generate"](gen)):
  res["g_" + name] = np.asarray(v)
sm = tf.saved_model.load(bundle + "/saved_model")
res["tf_q"] = sm.signatures["query_encoder"](**dict(zip(export.QUERY_FEATURES, q)))["embedding"].numpy()
res["tf_m"] = sm.signatures["memory_encoder"](tokens=mem[0], images=mem[1], image_mask=mem[2])["embedding"].numpy()
out = sm.signatures["generate"](**gen)
for name, key in (("tokens", "tokens"), ("scores", "scores"), ("ids", "retrieved_ids"), ("rscores", "retrieved_scores")):
  res["tf_g_" + name] = out[key].numpy()
np.savez(out_path, **res)
"""


def test_export_round_trip_fresh_process_and_tf(tmp_path):
  model = model_lib.MuRAGModel(model_lib.MuRAGConfig(**TINY))
  shapes = {k: (B,) + features_lib.resolve_shape(s, DIMS)
            for k, (_, s) in features_lib.MURAG_MODEL_FEATURES.items()}
  types = {k: np.dtype(d) for k, (d, _) in features_lib.MURAG_MODEL_FEATURES.items()}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes, types)["params"]
  bundle = str(tmp_path / "bundle")
  vocab = tmp_path / "spm.model"
  vocab.write_bytes(b"not a real model, copied verbatim")
  manifest = export.export_bundle(model=model, params=params, shapes=shapes, types=types,
                                  output_dir=bundle, vocab_file=str(vocab),
                                  gin_config="MuRAGConfig.emb_dim = 16\n")
  for rel in ("params", "config.gin", "vocab/spm.model", "saved_model/saved_model.pb",
              "jax_export/query_encoder.bin", "jax_export/memory_encoder.bin",
              "jax_export/generate.bin", "manifest.json"):
    assert os.path.exists(os.path.join(bundle, rel)), rel
  assert manifest["saved_model"]["stablehlo_version"] == "1.12.0"

  # Reference outputs straight from the model, in this process.
  inputs = _inputs()
  n = B * 3
  ref_q = np.asarray(model.embed_query(params, inputs))
  ref_m = np.asarray(model.embed_memory(params, inputs["memory_tokens"].reshape(n, 5),
                                        inputs["memory_images"].reshape(n, 16, 16, 3),
                                        inputs["memory_image_mask"].reshape(n)))
  fns = export.make_functions(model, 4, None)
  ref_g = [np.asarray(x) for x in jax.jit(fns["generate"])(params, inputs)]

  np.savez(tmp_path / "inputs.npz", **inputs)
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  proc = subprocess.run([sys.executable, "-c", _RELOAD, bundle, str(tmp_path / "inputs.npz"),
                         str(tmp_path / "out.npz")], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = np.load(tmp_path / "out.npz")
  for prefix in ("", "tf_"):  # the jax.export reload, then TensorFlow
    np.testing.assert_allclose(out[prefix + "q"], ref_q, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out[prefix + "m"], ref_m, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out[prefix + "g_tokens"], ref_g[0])
    np.testing.assert_allclose(out[prefix + "g_scores"], ref_g[1], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out[prefix + "g_ids"], ref_g[2])
    np.testing.assert_allclose(out[prefix + "g_rscores"], ref_g[3], atol=1e-5, rtol=0)
  # Retrieval really ran: ids come from the valid memory slots of the whole batch.
  valid_ids = set(inputs["memory_ids"][inputs["memory_mask"] > 0].tolist())
  assert set(ref_g[2].ravel().tolist()) <= valid_ids


def test_bf16_bundle_and_tf_trap_is_real(tmp_path):
  """bf16 params are stored as bf16; without the StableHLO target TF 2.20 cannot run top_k."""
  import tensorflow as tf
  from jax.experimental import jax2tf
  model = model_lib.MuRAGModel(model_lib.MuRAGConfig(**TINY))
  shapes = {k: (B,) + features_lib.resolve_shape(s, DIMS)
            for k, (_, s) in features_lib.MURAG_MODEL_FEATURES.items()}
  types = {k: np.dtype(d) for k, (d, _) in features_lib.MURAG_MODEL_FEATURES.items()}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes, types)["params"]
  export.export_bundle(model=model, params=params, shapes=shapes, types=types,
                       output_dir=str(tmp_path / "b16"), dtype="bfloat16", saved_model=False)
  loaded, fns, manifest = export.load_bundle(str(tmp_path / "b16"))
  assert manifest["dtype"] == "bfloat16"
  assert {str(x.dtype) for x in jax.tree.leaves(loaded)} == {"bfloat16"}
  emb = fns["query_encoder"](*[_inputs()[k] for k in export.QUERY_FEATURES])
  assert np.isfinite(np.asarray(emb, np.float32)).all()

  def top2(x):
    return jax.lax.top_k(x, 2)

  def save_and_run(version, path):
    with export.stablehlo_target_version(version):
      m = tf.Module()
      m.f = tf.function(jax2tf.convert(top2, with_gradient=False), autograph=False,
                        input_signature=[tf.TensorSpec([2, 5], tf.float32)])
      tf.saved_model.save(m, path)
    return tf.saved_model.load(path).f(tf.constant(np.arange(10, dtype=np.float32).reshape(2, 5)))

  vals, idx = save_and_run("1.12.0", str(tmp_path / "ok"))
  np.testing.assert_array_equal(idx.numpy(), [[4, 3], [4, 3]])
  with pytest.raises(Exception, match="composite|deserialize"):
    save_and_run(None, str(tmp_path / "trap"))
