"""The MuRAG backbone: multimodal encoder f_θ and text decoder g_θ (paper §3.1, §3.2).

For every input (a query or a memory item) the ViT encodes its image into visual tokens
e_I [Li, Dv], projected to the T5 width D (1024 -> 768 in the paper, §4.1), and the T5
token embedder maps its text to e_T [Lt, D]. The two are concatenated in input order
(image first, then text), a learned [CLS] vector is prepended, and the sequence runs through
the bidirectional T5 encoder. The encoder output at [CLS] (optionally projected and
L2-normalised) is the dense retrieval embedding f_θ(·)[CLS]. The reader input
[m_1 … m_k ; q] is the concatenation of the token sequences of the retrieved items and the
query, with the [CLS] vector placed just before the query's tokens; the T5 decoder g_θ
cross-attends to its encoding.

A text-only item carries a zero image with image_mask 0: its image tokens are masked out
of attention (the paper's footnote in §3.4 sets the image to a zero array).

Parameter tree (top level): the T5X T5 tree (`token_embedder`, `encoder`, `decoder`), the
big_vision ViT under `img`, `img_projection/{kernel, bias}`, `cls_embedding` and, when
configured, `retrieval_projection/kernel`.

Letters: N items, S image side, Li image tokens, L text length, T = Li + L, D T5 width,
Dv ViT width, Dr retrieval embedding width.
"""
import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning

from murag import t5
from murag import vit

param_with_axes = nn_partitioning.param_with_axes


class MuRAGNetwork(nn.Module):
  """f_θ and g_θ with shared parameters; `model.MuRAGModel` composes its methods.

  Attributes:
    t5_config: `t5.T5Config` of the text transformer.
    vit_config: `vit.ViTConfig` of the image tower.
    retrieval_proj_dim: width of an extra linear map on the [CLS] vector (0 = none).
    normalize_retrieval: L2-normalise the retrieval embedding.
  """
  t5_config: t5.T5Config
  vit_config: vit.ViTConfig
  retrieval_proj_dim: int = 0
  normalize_retrieval: bool = False

  def setup(self):
    tc = self.t5_config
    self.token_embedder = t5.Embed(tc.vocab_size, tc.emb_dim, tc.dtype)
    self.encoder = t5.Encoder(tc)
    self.decoder = t5.Decoder(tc, self.token_embedder)
    self.img = vit.ViT(self.vit_config)
    # ViT width -> T5 width; the input side is laid out like an mlp dimension.
    self.img_projection = vit.Dense(tc.emb_dim, ("mlp", "embed"), tc.dtype)
    self.cls_embedding = param_with_axes("cls_embedding", nn.initializers.normal(1.0),
                                         (tc.emb_dim,), jnp.float32, axes=("embed",))
    if self.retrieval_proj_dim:
      self.retrieval_projection = t5.DenseGeneral(self.retrieval_proj_dim,
                                                  kernel_axes=("embed", "mlp"),
                                                  dtype=jnp.float32)

  def embed_items(self, tokens, images, image_mask, deterministic=True):
    """Token sequence of image-text items, before the encoder.

    Args:
      tokens: [N, L] int32 text ids, 0-padded.
      images: [N, S, S, 3] uint8 images (zeros when absent).
      image_mask: [N] 1 when the item has an image.
      deterministic: disable dropout.

    Returns:
      seq: [N, Li + L, D] image tokens then text embeddings.
      mask: [N, Li + L] int32 validity.
    """
    img_tokens, _ = self.img(vit.normalize_images(images), deterministic)  # [N, Li, Dv]
    img_tokens = self.img_projection(img_tokens)  # [N, Li, D]
    txt = self.token_embedder(tokens.astype(jnp.int32))  # [N, L, D]
    seq = jnp.concatenate([img_tokens.astype(txt.dtype), txt], axis=1)
    img_valid = jnp.broadcast_to((image_mask > 0)[:, None], img_tokens.shape[:2])
    mask = jnp.concatenate([img_valid, tokens > 0], axis=1).astype(jnp.int32)
    seq = nn.with_logical_constraint(seq, ("batch", "length", "embed"))
    return seq, mask

  def encode(self, seq, mask, deterministic=True, prefix=None, prefix_mask=None):
    """Runs f_θ on an embedded sequence with [CLS] prepended.

    Args:
      seq: [N, T, D]; mask: [N, T].
      deterministic: disable dropout.
      prefix: optional [N, P, D] placed before [CLS] (the retrieved items of the reader
        input [m_1 … m_k ; q]); keeping [CLS] next to q makes a fully masked prefix give
        exactly the query-only encoding (T5 positions are relative).
      prefix_mask: [N, P] validity of `prefix`.

    Returns:
      encoded: [N, P + 1 + T, D]; full_mask: [N, P + 1 + T]; retrieval embedding [N, Dr]
      (from the [CLS] position).
    """
    n = seq.shape[0]
    cls = jnp.broadcast_to(self.cls_embedding.astype(seq.dtype), (n, 1, seq.shape[-1]))
    parts, masks = [cls, seq], [jnp.ones((n, 1), mask.dtype), mask]
    p = 0
    if prefix is not None:
      p = prefix.shape[1]
      parts.insert(0, prefix.astype(seq.dtype))
      masks.insert(0, prefix_mask.astype(mask.dtype))
    x = jnp.concatenate(parts, axis=1)
    full_mask = jnp.concatenate(masks, axis=1)
    encoded = self.encoder(x, full_mask, deterministic)
    return encoded, full_mask, self._pool(encoded[:, p])

  def _pool(self, cls_vec):
    r = cls_vec.astype(jnp.float32)
    if self.retrieval_proj_dim:
      r = self.retrieval_projection(r)
    if self.normalize_retrieval:
      r = r * jax.lax.rsqrt(jnp.sum(jnp.square(r), -1, keepdims=True) + 1e-12)
    return r

  def embed_and_encode(self, tokens, images, image_mask, deterministic=True):
    """f_θ(item)[CLS] for image-text items: [N, L], [N, S, S, 3], [N] -> [N, Dr]."""
    seq, mask = self.embed_items(tokens, images, image_mask, deterministic)
    return self.encode(seq, mask, deterministic)[2]

  def decode(self, encoded, encoder_mask, decoder_input_tokens, deterministic=True,
             decode=False):
    """g_θ: logits [B, Lt, V] given the encoding [B, Lk, D] and its mask [B, Lk]."""
    return self.decoder(encoded, encoder_mask, decoder_input_tokens, None, deterministic,
                        decode)

  def __call__(self, tokens, images, image_mask, decoder_input_tokens, deterministic=True):
    """Touches every parameter (used by `init`): encodes items and decodes from them."""
    seq, mask = self.embed_items(tokens, images, image_mask, deterministic)
    encoded, full_mask, emb = self.encode(seq, mask, deterministic)
    return self.decode(encoded, full_mask, decoder_input_tokens, deterministic), emb
