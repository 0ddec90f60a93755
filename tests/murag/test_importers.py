"""Parity of imported weights with `transformers` (PyTorch) and T5X checkpoint round trips.

Random tiny HF models are saved to safetensors by the test, imported, and our forward pass
must match PyTorch to 1e-4 (float32). The fixtures are chosen to expose real mapping bugs:
heads * head_dim != d_model, inputs longer than relative_attention_max_distance, padded
rows, random (non-identity) norm scales, and both tied (v1.0) and untied (v1.1) output heads.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from murag import model as model_lib  # noqa: E402
from murag import t5 as t5_lib  # noqa: E402
from murag import vit as vit_lib  # noqa: E402
from murag.importers import common  # noqa: E402
from murag.importers import hf  # noqa: E402
from murag.importers import t5x as t5x_import  # noqa: E402

TOL = 1e-4


def _randomize_norms(model):
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name or "layernorm" in name:
        p.uniform_(0.5, 1.5)
      if name.endswith("layernorm_before.bias") or name.endswith("layernorm.bias"):
        p.uniform_(-0.3, 0.3)


def _tokens(rng, batch, length, vocab, pad_rows):
  toks = rng.integers(2, vocab, size=(batch, length)).astype(np.int64)
  for r, keep in pad_rows.items():
    toks[r, keep:] = 0
  return toks


def _hf_t5(tmp_path, *, gated, tied, seed):
  torch.manual_seed(seed)
  cfg = transformers.T5Config(
      vocab_size=67, d_model=24, d_kv=10, num_heads=3, d_ff=40, num_layers=2,
      num_decoder_layers=3, relative_attention_num_buckets=8,
      relative_attention_max_distance=20, dropout_rate=0.0,
      feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=tied,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  _randomize_norms(model)
  path = os.path.join(tmp_path, f"t5_{gated}_{tied}")
  model.save_pretrained(path, safe_serialization=True)
  return model, path


@pytest.mark.parametrize("gated,tied", [(True, False), (True, True), (False, True)],
                         ids=["v1.1-untied", "v1.1-tied", "v1.0"])
def test_t5_matches_transformers(tmp_path, gated, tied):
  model, path = _hf_t5(tmp_path, gated=gated, tied=tied, seed=1)
  if not tied:  # a faithful v1.1 checkpoint keeps its own lm_head
    from safetensors.numpy import load_file
    assert "lm_head.weight" in load_file(os.path.join(path, "model.safetensors"))
  cfg, params = hf.load_hf_t5(path)
  assert cfg.logits_via_embedding == tied
  assert cfg.num_heads * cfg.head_dim != cfg.emb_dim
  rng = np.random.default_rng(0)
  enc = _tokens(rng, 3, 45, 67, {1: 30, 2: 7})  # 45 > max_distance 20; padded rows 1, 2
  dec = _tokens(rng, 3, 26, 67, {})
  dec[:, 0] = 0
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
                decoder_input_ids=torch.tensor(dec), output_hidden_states=True)
  ref_enc = out.encoder_last_hidden_state.numpy()
  ref_logits = out.logits.numpy()

  net = t5_lib.Transformer(cfg)
  variables = {"params": params}
  encoded = jax.jit(lambda v, e: net.apply(v, e, method=net.encode))(
      variables, jnp.asarray(enc, jnp.int32))
  valid = enc > 0
  np.testing.assert_allclose(np.asarray(encoded)[valid], ref_enc[valid], atol=TOL, rtol=0)
  logits = jax.jit(net.apply)(variables, jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32))
  np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=TOL, rtol=0)
  # The imported tree is exactly the tree our module initialises (T5X layout).
  init = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32),
                        jnp.ones((1, 3), jnp.int32))["params"]
  assert jax.tree.map(lambda x: tuple(x.shape), init) == jax.tree.map(np.shape, params)


def test_vit_matches_transformers(tmp_path):
  torch.manual_seed(3)
  cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=24,
                               num_hidden_layers=2, num_attention_heads=3,
                               intermediate_size=40, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
  model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
  _randomize_norms(model)
  with torch.no_grad():
    model.embeddings.cls_token.normal_()
    model.embeddings.position_embeddings.normal_()
  path = os.path.join(tmp_path, "vit")
  model.save_pretrained(path, safe_serialization=True)
  vcfg, params = hf.load_hf_vit(path)
  pixels = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    ref = model(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2))).last_hidden_state
  tokens, pooled = jax.jit(vit_lib.ViT(vcfg).apply)({"params": params}, jnp.asarray(pixels))
  np.testing.assert_allclose(np.asarray(tokens), ref.numpy(), atol=TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(pooled), ref.numpy()[:, 0], atol=TOL, rtol=0)


def test_hf_t5_missing_tensor_is_named(tmp_path):
  _, path = _hf_t5(tmp_path, gated=True, tied=False, seed=2)
  state = hf.read_safetensors(path)
  del state["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
  with open(os.path.join(path, "config.json")) as f:
    cfg = hf.t5_config_from_hf(json.load(f))
  with pytest.raises(KeyError, match="decoder.block.1.layer.2.DenseReluDense.wo.weight"):
    hf.t5_params_from_hf(state, cfg)


def _tiny_murag_config(**kw):
  base = dict(vocab_size=67, emb_dim=24, num_heads=3, head_dim=10, num_encoder_layers=2,
              num_decoder_layers=3, mlp_dim=40, relative_attention_num_buckets=8,
              relative_attention_max_distance=20, image_size=32, vit_patch_size=8,
              vit_width=24, vit_depth=2, vit_mlp_dim=40, vit_num_heads=3)
  base.update(kw)
  return model_lib.MuRAGConfig(**base)


def _zero_params(cfg):
  """MuRAG parameters of the right shapes (zeros; built from jax.eval_shape, no compile)."""
  m = model_lib.MuRAGModel(cfg)
  shapes = jax.eval_shape(m.get_initial_variables, jax.random.PRNGKey(0))["params"]
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_merge_into_murag_and_shape_errors(tmp_path):
  _, path = _hf_t5(tmp_path, gated=True, tied=False, seed=4)
  _, t5_params = hf.load_hf_t5(path)
  params = _zero_params(_tiny_murag_config())
  merged = common.merge_pretrained(params, t5=t5_params, source=path)
  np.testing.assert_array_equal(merged["encoder"]["layers_1"]["mlp"]["wo"]["kernel"],
                                t5_params["encoder"]["layers_1"]["mlp"]["wo"]["kernel"])
  wrong_params = _zero_params(_tiny_murag_config(mlp_dim=48))
  with pytest.raises(ValueError, match="encoder/layers_0/mlp/wi_0/kernel.*shape"):
    common.merge_pretrained(wrong_params, t5=t5_params, source=path)


def _random_t5x_tree(seed=0):
  cfg = t5_lib.T5Config(vocab_size=67, emb_dim=24, num_heads=3, head_dim=10,
                        num_encoder_layers=2, num_decoder_layers=3, mlp_dim=40,
                        relative_attention_num_buckets=8, relative_attention_max_distance=20)
  net = t5_lib.Transformer(cfg)
  params = net.init(jax.random.PRNGKey(seed), jnp.ones((1, 4), jnp.int32),
                    jnp.ones((1, 3), jnp.int32))["params"]
  return jax.tree.map(np.asarray, params)


def test_t5x_legacy_msgpack_tensorstore_roundtrip(tmp_path):
  params = _random_t5x_tree(5)
  ckpt = os.path.join(tmp_path, "checkpoint_1000")
  t5x_import.write_legacy_checkpoint(ckpt, params, inline_max_size=30)
  # Both storage kinds are exercised: zarr directories and arrays inline in the msgpack.
  assert os.path.isdir(os.path.join(ckpt, "target.encoder.layers_0.attention.query.kernel"))
  assert not os.path.exists(os.path.join(ckpt, "target.encoder.encoder_norm.scale"))
  restored = t5x_import.load_t5x_checkpoint(ckpt)
  jax.tree.map(np.testing.assert_array_equal, params, restored)


def test_t5x_orbax_roundtrip(tmp_path):
  import orbax.checkpoint as ocp
  params = _random_t5x_tree(6)
  ckpt = os.path.join(tmp_path, "checkpoint_7")
  state = {"param_states": jax.tree.map(lambda x: np.zeros((1,), np.float32), params),
           "step": np.asarray(7)}
  ocp.PyTreeCheckpointer().save(ckpt, {"target": params, "state": state})
  restored = t5x_import.load_t5x_checkpoint(ckpt)
  jax.tree.map(np.testing.assert_array_equal, params, restored)


def test_t5x_missing_checkpoint_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    t5x_import.load_t5x_checkpoint(os.path.join(tmp_path, "nowhere"))
