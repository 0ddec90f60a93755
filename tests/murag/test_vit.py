"""ViT image tower: big_vision parameter names, token counts, pooling variants, bad input."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murag import vit

CFG = vit.ViTConfig(image_size=16, patch_size=8, width=12, depth=2, mlp_dim=20, num_heads=3)


def _params(cfg, shapes_only=False):
  # Eager init: compiling the random initialisers costs more than running them here.
  fn = vit.ViT(cfg).init
  args = (jax.random.PRNGKey(0), jnp.zeros((1, cfg.image_size, cfg.image_size, 3)))
  return jax.eval_shape(fn, *args) if shapes_only else fn(*args)


def test_big_vision_parameter_names_and_shapes():
  variables = _params(CFG, shapes_only=True)
  flat = {"/".join(k): v.shape for k, v in
          flax.traverse_util.flatten_dict(variables["params"]).items()}
  assert flat["embedding/kernel"] == (8, 8, 3, 12)
  assert flat["pos_embedding"] == (1, 4, 12)
  assert flat["cls"] == (1, 1, 12)
  blk = "Transformer/encoderblock_1"
  assert flat[f"{blk}/MultiHeadDotProductAttention_0/query/kernel"] == (12, 3, 4)
  assert flat[f"{blk}/MultiHeadDotProductAttention_0/query/bias"] == (3, 4)
  assert flat[f"{blk}/MultiHeadDotProductAttention_0/out/kernel"] == (3, 4, 12)
  assert flat[f"{blk}/MlpBlock_0/Dense_0/kernel"] == (12, 20)
  assert flat[f"{blk}/LayerNorm_1/scale"] == (12,)
  assert flat["Transformer/encoder_norm/bias"] == (12,)
  assert len(flax.traverse_util.flatten_dict(variables["params_axes"])) == len(flat)


def test_patch_embedding_equals_strided_convolution():
  variables = _params(CFG)
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), minval=-1, maxval=1)
  kernel = variables["params"]["embedding"]["kernel"]
  conv = jax.lax.conv_general_dilated(images, kernel, (8, 8), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  conv = conv.reshape(2, 4, 12) + variables["params"]["embedding"]["bias"]
  ours = vit._PatchEmbedding(8, 12).apply(  # pylint: disable=protected-access
      {"params": variables["params"]["embedding"]}, images)
  np.testing.assert_allclose(ours, conv, atol=1e-5)


@pytest.mark.parametrize("pool,tokens", [("tok", 5), ("map", 4), ("gap", 4)])
def test_pooling_variants(pool, tokens):
  cfg = vit.ViTConfig(**{**CFG.__dict__, "pool_type": pool})
  variables = _params(cfg)
  out, pooled = vit.ViT(cfg).apply({"params": variables["params"]}, jnp.zeros((2, 16, 16, 3)))
  assert out.shape == (2, tokens, 12) and pooled.shape == (2, 12)
  assert cfg.num_tokens == tokens
  assert ("MAPHead_0" in variables["params"]) == (pool == "map")


def test_wrong_image_size_is_reported():
  variables = _params(CFG, shapes_only=True)
  with pytest.raises(ValueError, match=r"\[N, 16, 16, 3\].*\(1, 32, 32, 3\)"):
    vit.ViT(CFG).apply(variables, jnp.zeros((1, 32, 32, 3)))
