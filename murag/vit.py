"""Vision Transformer image tower with big_vision parameter names.

MuRAG paper §3.1 / §4.1: images are resized to 224x224, cut into 16x16 patches and encoded
by a ViT (ViT-L/16 in the paper) into a sequence of visual embeddings e_I [Li, Dv], later
projected to the T5 width. Parameter tree (big_vision `models/vit.py`):

  embedding/{kernel [P, P, 3, Dv], bias}     patch projection (a strided conv)
  pos_embedding [1, N, Dv]                   learned, added to the N patch tokens only
  cls [1, 1, Dv]                             when pool_type == "tok" (prepended after posemb)
  Transformer/encoderblock_i/LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out},
  LayerNorm_1, MlpBlock_0/{Dense_0, Dense_1}; Transformer/encoder_norm
  MAPHead_0/... when pool_type == "map"

Letters: N images, P patch size, Np patches, Dv ViT width, H heads, Dh head dim, F mlp.
"""
import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning

param_with_axes = nn_partitioning.param_with_axes


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """ViT hyperparameters; defaults are ViT-L/16 at 224 px."""
  image_size: int = 224
  patch_size: int = 16
  width: int = 1024
  depth: int = 24
  mlp_dim: int = 4096
  num_heads: int = 16
  pool_type: str = "tok"  # "tok" (class token), "map" (attention pooling), "gap"
  layer_norm_epsilon: float = 1e-6  # flax default; Hugging Face ViT uses 1e-12
  gelu_approximate: bool = True  # big_vision uses tanh-GELU; Hugging Face "gelu" is exact
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_tokens(self) -> int:
    """Tokens the tower outputs per image (patches, plus the class token for "tok")."""
    return self.num_patches + (1 if self.pool_type == "tok" else 0)


class LayerNorm(nn.Module):
  epsilon: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = param_with_axes("scale", nn.initializers.ones, (d,), jnp.float32, axes=("embed",))
    bias = param_with_axes("bias", nn.initializers.zeros, (d,), jnp.float32, axes=("embed",))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)


class Dense(nn.Module):
  """Dense layer with bias and logical axes (flax `nn.Dense` parameter names)."""
  features: int
  axes: tuple
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = param_with_axes("kernel", nn.initializers.xavier_uniform(),
                        (x.shape[-1], self.features), jnp.float32, axes=self.axes)
    b = param_with_axes("bias", nn.initializers.normal(1e-6), (self.features,), jnp.float32,
                        axes=self.axes[-1:])
    return jnp.dot(x.astype(self.dtype), k.astype(self.dtype)) + b.astype(self.dtype)


class _HeadsProjection(nn.Module):
  """[.., D] -> [.., H, Dh] with flax MHA's `kernel` [D, H, Dh] and `bias` [H, Dh]."""
  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    k = param_with_axes("kernel", init, (x.shape[-1], self.num_heads, self.head_dim),
                        jnp.float32, axes=("embed", "heads", "kv"))
    b = param_with_axes("bias", nn.initializers.zeros, (self.num_heads, self.head_dim),
                        jnp.float32, axes=("heads", "kv"))
    return jnp.einsum("bld,dhk->blhk", x.astype(self.dtype), k.astype(self.dtype)) + b


class _OutProjection(nn.Module):
  """[.., H, Dh] -> [.., D] with `kernel` [H, Dh, D] and `bias` [D]."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
    k = param_with_axes("kernel", init, (x.shape[-2], x.shape[-1], self.features),
                        jnp.float32, axes=("heads", "kv", "embed"))
    b = param_with_axes("bias", nn.initializers.zeros, (self.features,), jnp.float32,
                        axes=("embed",))
    return jnp.einsum("bqhk,hkd->bqd", x, k.astype(self.dtype)) + b


class MultiHeadDotProductAttention(nn.Module):
  """Scaled dot-product attention with flax's MHA parameter names and shapes."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs_q, inputs_kv):
    d = inputs_q.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"ViTConfig: width {d} is not divisible by num_heads {self.num_heads}")
    dh = d // self.num_heads
    proj = functools.partial(_HeadsProjection, self.num_heads, dh, self.dtype)
    q = proj(name="query")(inputs_q) / np.sqrt(dh).astype(np.float32)
    k = proj(name="key")(inputs_kv)
    v = proj(name="value")(inputs_kv)
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32)
    w = jax.nn.softmax(logits, -1).astype(self.dtype)
    x = jnp.einsum("bhqs,bshk->bqhk", w, v)  # [N, Lq, H, Dh]
    return _OutProjection(d, self.dtype, name="out")(x)


class _PatchEmbedding(nn.Module):
  """Non-overlapping P x P patches -> Dv; big_vision's conv `embedding` parameters."""
  patch_size: int
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    kernel = param_with_axes("kernel", nn.initializers.lecun_normal(), (p, p, 3, self.width),
                             jnp.float32, axes=("patch", None, None, "embed"))
    bias = param_with_axes("bias", nn.initializers.zeros, (self.width,), jnp.float32,
                           axes=("embed",))
    n, s = images.shape[0], images.shape[1]
    g = s // p
    # [N, S, S, 3] -> [N, g, g, P, P, 3] -> [N, g*g, P*P*3]: a strided conv as one matmul.
    x = images.astype(self.dtype).reshape(n, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, g * g, p * p * 3)
    return jnp.dot(x, kernel.astype(self.dtype).reshape(p * p * 3, self.width)) + bias


class MlpBlock(nn.Module):
  mlp_dim: int
  gelu_approximate: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    h = Dense(self.mlp_dim, ("embed", "mlp"), self.dtype, name="Dense_0")(x)
    h = jax.nn.gelu(h, approximate=self.gelu_approximate)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    return Dense(d, ("mlp", "embed"), self.dtype, name="Dense_1")(h)


class Encoder1DBlock(nn.Module):
  config: ViTConfig

  @nn.compact
  def __call__(self, x, deterministic=True):
    cfg = self.config
    y = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name="LayerNorm_0")(x)
    y = MultiHeadDotProductAttention(cfg.num_heads, cfg.dtype,
                                     name="MultiHeadDotProductAttention_0")(y, y)
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic)
    x = x + y
    y = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name="LayerNorm_1")(x)
    y = MlpBlock(cfg.mlp_dim, cfg.gelu_approximate, cfg.dtype, name="MlpBlock_0")(y)
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic)
    return nn.with_logical_constraint(x + y, ("batch", "length", "embed"))


class Transformer(nn.Module):
  config: ViTConfig

  @nn.compact
  def __call__(self, x, deterministic=True):
    for i in range(self.config.depth):
      x = Encoder1DBlock(self.config, name=f"encoderblock_{i}")(x, deterministic)
    return LayerNorm(self.config.layer_norm_epsilon, self.config.dtype, name="encoder_norm")(x)


class MAPHead(nn.Module):
  """Multi-head attention pooling (big_vision's MAPHead)."""
  config: ViTConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    probe = param_with_axes("probe", nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]),
                            jnp.float32, axes=(None, None, "embed"))
    probe = jnp.tile(probe.astype(cfg.dtype), [x.shape[0], 1, 1])
    y = MultiHeadDotProductAttention(cfg.num_heads, cfg.dtype,
                                     name="MultiHeadDotProductAttention_0")(probe, x)
    z = LayerNorm(cfg.layer_norm_epsilon, cfg.dtype, name="LayerNorm_0")(y)
    y = y + MlpBlock(cfg.mlp_dim, cfg.gelu_approximate, cfg.dtype, name="MlpBlock_0")(z)
    return y[:, 0]


class ViT(nn.Module):
  """Image tower: float images in [-1, 1] -> (tokens [N, Np(+1), Dv], pooled [N, Dv])."""
  config: ViTConfig

  @nn.compact
  def __call__(self, images, deterministic=True):
    """Args:
      images: [N, S, S, 3] float, already normalised to [-1, 1].
    Returns:
      tokens: [N, num_tokens, Dv] (class token first for pool_type "tok").
      pooled: [N, Dv].
    """
    cfg = self.config
    if images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
      raise ValueError(f"ViT: expected images of shape [N, {cfg.image_size}, "
                       f"{cfg.image_size}, 3], got {tuple(images.shape)}")
    n = images.shape[0]
    g = cfg.image_size // cfg.patch_size
    x = _PatchEmbedding(cfg.patch_size, cfg.width, cfg.dtype, name="embedding")(images)
    posemb = param_with_axes("pos_embedding",
                             nn.initializers.normal(stddev=1 / np.sqrt(cfg.width)),
                             (1, g * g, cfg.width), jnp.float32, axes=(None, "length", "embed"))
    x = x + posemb.astype(cfg.dtype)
    if cfg.pool_type == "tok":
      cls = param_with_axes("cls", nn.initializers.zeros, (1, 1, cfg.width), jnp.float32,
                            axes=(None, None, "embed"))
      x = jnp.concatenate([jnp.tile(cls.astype(cfg.dtype), [n, 1, 1]), x], axis=1)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic)
    x = Transformer(cfg, name="Transformer")(x, deterministic)
    if cfg.pool_type == "tok":
      pooled = x[:, 0]
    elif cfg.pool_type == "map":
      pooled = MAPHead(cfg, name="MAPHead_0")(x)
    elif cfg.pool_type == "gap":
      pooled = jnp.mean(x, axis=1)
    else:
      raise ValueError(f"ViTConfig.pool_type: unknown {cfg.pool_type!r} (tok, map, gap)")
    return x, pooled


def normalize_images(images_uint8):
  """uint8 [..., H, W, 3] in [0, 255] -> float32 in [-1, 1] (big_vision / HF ViT convention)."""
  return images_uint8.astype(jnp.float32) / 127.5 - 1.0
