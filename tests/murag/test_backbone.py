"""Backbone f_θ: input order, masking of absent images, [CLS] pooling, reader prefix."""
import jax
import jax.numpy as jnp
import numpy as np

from tests.murag import test_model


def _apply(method, *args, **static):
  model, variables = test_model.tiny_setup()
  mod = model.module
  return jax.jit(lambda p, *a: mod.apply({"params": p}, *a, method=method, **static))(
      variables["params"], *args)


def test_embed_items_order_and_masks():
  model, _ = test_model.tiny_setup()
  mod = model.module
  tokens = jnp.asarray([[5, 6, 0], [7, 0, 0]], jnp.int32)
  images = jnp.zeros((2, 16, 16, 3), jnp.uint8)
  seq, mask = _apply(mod.embed_items, tokens, images, jnp.asarray([1, 0]))
  li = model.config.vit_config().num_tokens  # 4 patches + class token
  assert seq.shape == (2, li + 3, 16)
  # Image tokens first (masked when image_mask = 0), then the text in order.
  np.testing.assert_array_equal(mask, [[1] * li + [1, 1, 0], [0] * li + [1, 0, 0]])
  emb = test_model.tiny_setup()[1]["params"]["token_embedder"]["embedding"]
  np.testing.assert_allclose(seq[0, li:li + 2], emb[jnp.asarray([5, 6])], atol=1e-6)


def test_text_only_items_ignore_their_zero_image_slot():
  model, _ = test_model.tiny_setup()
  mod = model.module
  tokens = jnp.asarray([[5, 6, 9]] * 2, jnp.int32)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (2, 16, 16, 3)), jnp.uint8)
  no_img = jnp.zeros((2,), jnp.int32)
  with_img = jnp.ones((2,), jnp.int32)
  a = _apply(mod.embed_and_encode, tokens, images, no_img)
  b = _apply(mod.embed_and_encode, tokens, jnp.zeros_like(images), no_img)
  np.testing.assert_allclose(a, b, atol=1e-5)  # masked image content is irrelevant
  c = _apply(mod.embed_and_encode, tokens, images, with_img)
  assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-3  # a real image changes f_θ
  # Image-only input (no text) also works.
  d = _apply(mod.embed_and_encode, jnp.zeros_like(tokens), images, with_img)
  assert np.all(np.isfinite(d))


def test_fully_masked_prefix_leaves_query_encoding_unchanged():
  model, _ = test_model.tiny_setup()
  mod = model.module
  tokens = jnp.asarray([[5, 6, 9, 0]], jnp.int32)
  images = jnp.zeros((1, 16, 16, 3), jnp.uint8)
  seq, mask = _apply(mod.embed_items, tokens, images, jnp.asarray([0]))
  plain = _apply(mod.encode, seq, mask)
  prefix = jnp.asarray(np.random.default_rng(1).normal(size=(1, 7, 16)), jnp.float32)
  masked = _apply(mod.encode, seq, mask, prefix=prefix,
                  prefix_mask=jnp.zeros((1, 7), jnp.int32))
  valid = np.asarray(plain[1]) > 0  # padded positions carry no meaning
  np.testing.assert_allclose(np.asarray(masked[0][:, 7:])[valid], np.asarray(plain[0])[valid],
                             atol=1e-5)
  np.testing.assert_allclose(masked[2], plain[2], atol=1e-5)  # [CLS] retrieval embedding
  shown = _apply(mod.encode, seq, mask, prefix=prefix,
                 prefix_mask=jnp.ones((1, 7), jnp.int32))
  assert np.abs(np.asarray(shown[2]) - np.asarray(plain[2])).max() > 1e-4
