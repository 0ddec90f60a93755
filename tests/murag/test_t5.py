"""T5 modules: T5X parameter tree and axes, relative buckets, KV-cache decoding."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murag import t5

CFG = t5.T5Config(vocab_size=40, emb_dim=16, num_heads=2, head_dim=6, num_encoder_layers=2,
                  num_decoder_layers=2, mlp_dim=24, relative_attention_num_buckets=8,
                  relative_attention_max_distance=12)


def _init(cfg, shapes_only=False):
  net = t5.Transformer(cfg)
  args = (jax.random.PRNGKey(0), jnp.ones((2, 5), jnp.int32), jnp.ones((2, 4), jnp.int32))
  if shapes_only:
    return net, jax.eval_shape(net.init, *args)
  return net, net.init(*args)  # eager: compiling the initialisers is slower


@pytest.mark.parametrize("v11", [True, False], ids=["t5.1.1", "t5.1.0"])
def test_parameter_tree_is_t5x_example_network(v11):
  cfg = CFG if v11 else t5.T5Config(**{**CFG.__dict__, "mlp_activations": ("relu",),
                                       "logits_via_embedding": True})
  _, variables = _init(cfg, shapes_only=True)
  flat = {"/".join(k): v.shape for k, v in
          flax.traverse_util.flatten_dict(variables["params"]).items()}
  mlp = {"wi_0", "wi_1", "wo"} if v11 else {"wi", "wo"}
  expected = {"token_embedder/embedding": (40, 16),
              "encoder/relpos_bias/rel_embedding": (2, 8),
              "decoder/relpos_bias/rel_embedding": (2, 8),
              "encoder/encoder_norm/scale": (16,), "decoder/decoder_norm/scale": (16,)}
  for i in range(2):
    e, d = f"encoder/layers_{i}", f"decoder/layers_{i}"
    expected[f"{e}/pre_attention_layer_norm/scale"] = (16,)
    expected[f"{e}/pre_mlp_layer_norm/scale"] = (16,)
    for n in ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm",
              "pre_mlp_layer_norm"):
      expected[f"{d}/{n}/scale"] = (16,)
    for prefix in (f"{e}/attention", f"{d}/self_attention", f"{d}/encoder_decoder_attention"):
      for n in ("query", "key", "value"):
        expected[f"{prefix}/{n}/kernel"] = (16, 12)  # heads*head_dim = 12 != d_model = 16
      expected[f"{prefix}/out/kernel"] = (12, 16)
    for layer in (e, d):
      for n in mlp:
        expected[f"{layer}/mlp/{n}/kernel"] = (24, 16) if n == "wo" else (16, 24)
  if v11:
    expected["decoder/logits_dense/kernel"] = (16, 40)
  assert flat == expected
  axes = {"/".join(k): v.names for k, v in
          flax.traverse_util.flatten_dict(variables["params_axes"]).items()}
  assert axes["encoder/layers_0/attention/query/kernel_axes"] == ("embed", "joined_kv")
  assert axes["decoder/layers_1/mlp/wo/kernel_axes"] == ("mlp", "embed")
  assert axes["token_embedder/embedding_axes"] == ("vocab", "embed")
  assert axes["encoder/relpos_bias/rel_embedding_axes"] == ("heads", "relpos_buckets")
  assert len(axes) == len(flat)


def test_relative_position_buckets_match_transformers():
  torch = pytest.importorskip("torch")
  from transformers.models.t5.modeling_t5 import T5Attention
  rel = np.arange(-300, 300)
  for bidirectional in (True, False):
    for buckets, dist in ((32, 128), (8, 12)):
      ours = np.asarray(t5.relative_position_bucket(jnp.asarray(rel), bidirectional, buckets,
                                                    dist))
      ref = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional, buckets,
                                                  dist).numpy()
      np.testing.assert_array_equal(ours, ref)


def test_cached_decoding_matches_full_decoder():
  net, variables = _init(CFG)
  params = variables["params"]
  rng = np.random.default_rng(0)
  enc_tokens = jnp.asarray(rng.integers(1, 40, (2, 9)), jnp.int32).at[1, 6:].set(0)
  dec_tokens = jnp.asarray(rng.integers(1, 40, (2, 7)), jnp.int32).at[:, 0].set(0)
  encoded = jax.jit(lambda v, e: net.apply(v, e, method=net.encode))(variables, enc_tokens)
  full = jax.jit(lambda v, e, t, d: net.apply(v, e, t, d, method=net.decode))(
      variables, encoded, enc_tokens, dec_tokens)

  @jax.jit
  def step(params, cache, token):
    return net.apply({"params": params, "cache": cache}, encoded, enc_tokens, token,
                     decode=True, method=net.decode, mutable=["cache"])

  _, cache = jax.jit(lambda p: net.apply({"params": p}, encoded, enc_tokens,
                                         jnp.zeros_like(dec_tokens), decode=True,
                                         method=net.decode, mutable=["cache"]))(params)
  cache = cache["cache"]
  for i in range(dec_tokens.shape[1]):
    logits, mut = step(params, cache, dec_tokens[:, i:i + 1])
    cache = mut["cache"]
    np.testing.assert_allclose(logits[:, 0], full[:, i], atol=1e-5, rtol=0)


def test_unknown_activation_is_named():
  with pytest.raises(ValueError, match="mlp_activations.*swish"):
    _init(t5.T5Config(**{**CFG.__dict__, "mlp_activations": ("swish",)}), shapes_only=True)
