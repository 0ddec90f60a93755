"""T5 encoder and decoder (T5.1.1 and original T5), with T5X's example-network parameter tree.

MuRAG paper §3.1 / §4.1: the backbone encoder f_θ and the decoder g_θ are initialised from
T5 (T5-base in the paper). The parameter names and shapes here are those of T5X's
`examples/t5/network.py`, so public T5X checkpoints load without renaming:

  token_embedder/embedding                         [V, D]        (vocab, embed)
  encoder/relpos_bias/rel_embedding                [H, buckets]  (heads, relpos_buckets)
  encoder/layers_i/pre_attention_layer_norm/scale  [D]           (embed,)
  encoder/layers_i/attention/{query,key,value}/kernel [D, H*Dh]  (embed, joined_kv)
  encoder/layers_i/attention/out/kernel            [H*Dh, D]     (joined_kv, embed)
  encoder/layers_i/mlp/{wi | wi_0, wi_1}/kernel    [D, F]        (embed, mlp)
  encoder/layers_i/mlp/wo/kernel                   [F, D]        (mlp, embed)
  encoder/encoder_norm/scale, decoder/decoder_norm/scale
  decoder/layers_i/{self_attention, encoder_decoder_attention}/..., pre_self_attention_layer_norm,
  pre_cross_attention_layer_norm, pre_mlp_layer_norm;
  decoder/logits_dense/kernel [D, V] (embed, vocab)

As in T5, attention logits are not divided by sqrt(Dh): the scaling is folded into the query
initialiser. Every parameter is declared with `param_with_axes`, so `init` also returns T5X's
`params_axes` collection.

Letters: B batch, L length (Lk key length), D embed, H heads, Dh head dim, F mlp, V vocab.
"""
import dataclasses
import functools
import operator
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning

param_with_axes = nn_partitioning.param_with_axes
_constraint = nn.with_logical_constraint
Initializer = Callable[..., jax.Array]
_NEG_INF = -1e10


@dataclasses.dataclass(frozen=True)
class T5Config:
  """T5 hyperparameters. Defaults are T5.1.1-small; `mlp_activations=("relu",)` with
  `logits_via_embedding=True` gives the original T5 (v1.0)."""
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  mlp_dim: int = 1024
  mlp_activations: Sequence[str] = ("gelu", "linear")
  dropout_rate: float = 0.0
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name == "linear":
    return lambda x: x
  if name == "gelu":  # T5.1.1 / HF "gelu_new": tanh approximation.
    return functools.partial(jax.nn.gelu, approximate=True)
  if name == "gelu_exact":
    return functools.partial(jax.nn.gelu, approximate=False)
  if name == "relu":
    return jax.nn.relu
  raise ValueError(f"T5Config.mlp_activations: unknown activation {name!r} "
                   "(known: linear, gelu, gelu_exact, relu)")


class LayerNorm(nn.Module):
  """T5 RMS layer norm (no mean subtraction, no bias), computed in float32."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = param_with_axes("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32,
                            axes=("embed",))
    x32 = jnp.asarray(x, jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.epsilon)
    return jnp.asarray(y * scale, self.dtype)


class DenseGeneral(nn.Module):
  """Bias-free linear map stored as a 2-D kernel (T5X layout), viewed as N-D when applied."""
  features: Any
  axis: Any = -1
  kernel_axes: tuple = ()
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = tuple(self.features) if isinstance(self.features, (tuple, list)) else (
        self.features,)
    axis = tuple(self.axis) if isinstance(self.axis, (tuple, list)) else (self.axis,)
    axis = tuple(a % x.ndim for a in axis)
    in_shape = tuple(x.shape[a] for a in axis)
    kernel = param_with_axes("kernel", self.kernel_init,
                             (int(np.prod(in_shape)), int(np.prod(features))), jnp.float32,
                             axes=self.kernel_axes)
    kernel = jnp.reshape(jnp.asarray(kernel, self.dtype), in_shape + features)
    x = jnp.asarray(x, self.dtype)
    return jax.lax.dot_general(x, kernel, ((axis, tuple(range(len(axis)))), ((), ())))


class Embed(nn.Module):
  """Token embedding table; `attend` gives the tied output logits."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = param_with_axes("embedding", nn.initializers.normal(stddev=1.0),
                                     (self.num_embeddings, self.features), jnp.float32,
                                     axes=("vocab", "embed"))

  def __call__(self, tokens):
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"Embed: token ids must be integers, got {tokens.dtype}")
    out = jnp.take(jnp.asarray(self.embedding, self.dtype), tokens, axis=0)
    return out

  def attend(self, query):
    return jnp.dot(query, jnp.asarray(self.embedding, jnp.float32).T)


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int):
  """T5 bucketing of (key - query) positions (same arithmetic as Mesh TF / HF)."""
  ret = 0
  n = relative_position
  if bidirectional:
    num_buckets //= 2
    ret = (n > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(-n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  safe_n = jnp.maximum(n, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(safe_n / max_exact) / np.log(max_distance / max_exact) *
                       (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return ret + jnp.where(is_small, n, large)


class RelativePositionBiases(nn.Module):
  """Per-head attention bias from bucketed relative positions; [1, H, Lq, Lk]."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q_positions, k_positions, bidirectional: bool):
    table = param_with_axes("rel_embedding",
                            nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                            (self.num_heads, self.num_buckets), jnp.float32,
                            axes=("heads", "relpos_buckets"))
    rel = k_positions[None, :] - q_positions[:, None]  # [Lq, Lk]
    buckets = relative_position_bucket(rel, bidirectional, self.num_buckets, self.max_distance)
    bias = jnp.take(jnp.asarray(table, self.dtype), buckets, axis=1)  # [H, Lq, Lk]
    return bias[None]


def dot_product_attention(query, key, value, bias):
  """softmax(q·k + bias)·v in float32 logits; q [B, Lq, H, Dh], k/v [B, Lk, H, Dh]."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


class MultiHeadAttention(nn.Module):
  """T5 multi-head attention with an optional autoregressive KV cache.

  With `decode=True` the first call (no cache yet) creates the cache for the full
  length of its input and runs normally; later calls feed one position at a time.
  For cross-attention (`cross=True`) the projected encoder keys/values are cached once.
  """
  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  cross: bool = False

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask_bias, *, decode=False, deterministic=True):
    init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    depth_scaling = np.sqrt(self.head_dim).astype(np.float32)
    proj = functools.partial(DenseGeneral, features=(self.num_heads, self.head_dim),
                             kernel_axes=("embed", "joined_kv"), dtype=self.dtype)
    query = proj(kernel_init=lambda *a: init(*a) / depth_scaling, name="query")(inputs_q)
    query = _constraint(query, ("batch", "length", "heads", "kv"))
    key_proj = proj(kernel_init=init, name="key")
    value_proj = proj(kernel_init=init, name="value")
    if decode and self.cross:
      initialized = self.has_variable("cache", "cached_key")
      if initialized:
        key = self.get_variable("cache", "cached_key")
        value = self.get_variable("cache", "cached_value")
      else:
        key, value = key_proj(inputs_kv), value_proj(inputs_kv)
        self.put_variable("cache", "cached_key", key)
        self.put_variable("cache", "cached_value", value)
    else:
      key, value = key_proj(inputs_kv), value_proj(inputs_kv)
      if decode:
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape,
                                     value.dtype)
        cache_index = self.variable("cache", "cache_index",
                                    lambda: jnp.array(0, dtype=jnp.int32))
        if initialized:
          idx = cache_index.value
          # [B, 1, H, Dh] written into [B, Lmax, H, Dh] at position idx.
          key = jax.lax.dynamic_update_slice(cached_key.value, key, (0, idx, 0, 0))
          value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, idx, 0, 0))
          cached_key.value, cached_value.value = key, value
          cache_index.value = idx + 1
    key = _constraint(key, ("batch", "length", "heads", "kv"))
    value = _constraint(value, ("batch", "length", "heads", "kv"))
    x = dot_product_attention(query, key, value, mask_bias)
    if not deterministic and self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate)(x, deterministic=False)
    return DenseGeneral(features=inputs_q.shape[-1], axis=(-2, -1), kernel_init=init,
                        kernel_axes=("joined_kv", "embed"), dtype=self.dtype, name="out")(x)


class MlpBlock(nn.Module):
  """Feed-forward block: `wi` (one activation) or gated `wi_0`, `wi_1`, then `wo`."""
  mlp_dim: int
  activations: Sequence[str]
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic=True):
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    hs = []
    for i, act in enumerate(self.activations):
      name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      h = DenseGeneral(self.mlp_dim, kernel_axes=("embed", "mlp"), kernel_init=init,
                       dtype=self.dtype, name=name)(x)
      hs.append(_activation(act)(h))
    h = functools.reduce(operator.mul, hs)
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    h = _constraint(h, ("batch", "length", "mlp"))
    return DenseGeneral(x.shape[-1], kernel_axes=("mlp", "embed"), kernel_init=init,
                        dtype=self.dtype, name="wo")(h)


def _padding_bias(q_mask, k_mask, dtype=jnp.float32):
  """[B, Lq], [B, Lk] validity -> additive bias [B, 1, Lq, Lk]."""
  ok = jnp.logical_and(q_mask[:, None, :, None] > 0, k_mask[:, None, None, :] > 0)
  return jnp.where(ok, 0.0, _NEG_INF).astype(dtype)


class EncoderLayer(nn.Module):
  config: T5Config
  relative_embedding: nn.Module

  @nn.compact
  def __call__(self, x, mask_bias, positions, deterministic=True):
    cfg = self.config
    drop = lambda y: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
        y, deterministic=deterministic)
    bias = mask_bias + self.relative_embedding(positions, positions, True)
    y = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_attention_layer_norm")(x)
    y = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dtype, cfg.dropout_rate,
                           name="attention")(y, y, bias, deterministic=deterministic)
    x = x + drop(y)
    y = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_mlp_layer_norm")(x)
    y = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dtype, cfg.dropout_rate,
                 name="mlp")(y, deterministic)
    x = x + drop(y)
    return _constraint(x, ("batch", "length", "embed"))


class Encoder(nn.Module):
  """Bidirectional T5 encoder over already-embedded inputs (text and image tokens)."""
  config: T5Config

  @nn.compact
  def __call__(self, embedded, mask, deterministic=True):
    """Args: embedded [B, L, D]; mask [B, L] (1 = valid). Returns [B, L, D]."""
    cfg = self.config
    rel = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                 cfg.relative_attention_max_distance, cfg.num_heads,
                                 cfg.dtype, name="relpos_bias")
    positions = jnp.arange(embedded.shape[1])
    mask_bias = _padding_bias(mask, mask, cfg.dtype)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
        embedded.astype(cfg.dtype), deterministic=deterministic)
    x = _constraint(x, ("batch", "length", "embed"))
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, rel, name=f"layers_{i}")(x, mask_bias, positions, deterministic)
    x = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name="encoder_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class DecoderLayer(nn.Module):
  config: T5Config
  relative_embedding: nn.Module

  @nn.compact
  def __call__(self, y, encoded, self_bias, cross_bias, deterministic=True, decode=False):
    cfg = self.config
    drop = lambda z: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
        z, deterministic=deterministic)
    z = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_self_attention_layer_norm")(y)
    z = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dtype, cfg.dropout_rate,
                           name="self_attention")(z, z, self_bias, decode=decode,
                                                  deterministic=deterministic)
    y = y + drop(z)
    z = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_cross_attention_layer_norm")(y)
    z = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dtype, cfg.dropout_rate,
                           cross=True, name="encoder_decoder_attention")(
                               z, encoded, cross_bias, decode=decode,
                               deterministic=deterministic)
    y = y + drop(z)
    z = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_mlp_layer_norm")(y)
    z = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dtype, cfg.dropout_rate,
                 name="mlp")(z, deterministic)
    y = y + drop(z)
    return _constraint(y, ("batch", "length", "embed"))


class Decoder(nn.Module):
  """Causal T5 decoder with cross-attention and optional KV cache.

  In decode mode the first call (with the full [B, Lmax] dummy input) creates the
  cache; every later call takes one token [B, 1] and advances the cached position.
  """
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded, encoder_mask, decoder_input_tokens, decoder_mask=None,
               deterministic=True, decode=False):
    """Args:
      encoded: [B, Lk, D] encoder output.
      encoder_mask: [B, Lk] 1 for valid encoder positions.
      decoder_input_tokens: [B, L] (or [B, 1] while stepping a cache).
      decoder_mask: [B, L] validity of decoder positions (training), or None.
    Returns: logits [B, L, V] in float32.
    """
    cfg = self.config
    rel = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                 cfg.relative_attention_max_distance, cfg.num_heads,
                                 cfg.dtype, name="relpos_bias")
    length = decoder_input_tokens.shape[1]
    stepping = False
    if decode:
      stepping = self.has_variable("cache", "position")
      pos_var = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      if stepping:
        max_len = self.get_variable("cache", "max_length").shape[0]
        q_pos = pos_var.value[None]  # [1]
        k_pos = jnp.arange(max_len)
        pos_var.value = pos_var.value + 1
        causal = (k_pos[None, :] <= q_pos[:, None])[None, None]  # [1, 1, 1, Lmax]
      else:
        self.variable("cache", "max_length", lambda: jnp.zeros((length,), jnp.int8))
    if not stepping:
      q_pos = k_pos = jnp.arange(length)
      causal = (k_pos[None, :] <= q_pos[:, None])[None, None]  # [1, 1, L, L]
    self_bias = jnp.where(causal, 0.0, _NEG_INF).astype(cfg.dtype)
    if decoder_mask is not None and not decode:
      self_bias = self_bias + _padding_bias(decoder_mask, decoder_mask, cfg.dtype)
    self_bias = self_bias + rel(q_pos, k_pos, False)
    q_valid = jnp.ones(decoder_input_tokens.shape, jnp.int32)
    cross_bias = _padding_bias(q_valid, encoder_mask, cfg.dtype)

    y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32)).astype(cfg.dtype)
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    for i in range(cfg.num_decoder_layers):
      y = DecoderLayer(cfg, rel, name=f"layers_{i}")(y, encoded, self_bias, cross_bias,
                                                     deterministic, decode)
    y = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name="decoder_norm")(y)
    y = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y.astype(jnp.float32)) / np.sqrt(y.shape[-1])
    else:
      logits = DenseGeneral(cfg.vocab_size, kernel_axes=("embed", "vocab"),
                            kernel_init=nn.initializers.variance_scaling(
                                1.0, "fan_in", "truncated_normal"),
                            dtype=jnp.float32, name="logits_dense")(y)
    return _constraint(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
  """Plain T5 encoder-decoder on token ids (used for T5 checkpoints and parity tests)."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.dtype)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens, deterministic=True):
    mask = (encoder_input_tokens > 0).astype(jnp.int32)
    return self.encoder(self.token_embedder(encoder_input_tokens), mask, deterministic)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_mask=None,
             deterministic=True, decode=False):
    mask = (encoder_input_tokens > 0).astype(jnp.int32)
    return self.decoder(encoded, mask, decoder_input_tokens, decoder_mask, deterministic,
                        decode)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_mask=None,
               deterministic=True):
    encoded = self.encode(encoder_input_tokens, deterministic)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_mask,
                       deterministic)
