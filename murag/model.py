"""MuRAGModel: joint contrastive + generative training over an in-batch or fixed memory.

Paper §3.2–3.4. The backbone f_θ encodes the query q and every memory item m; retrieval is
maximum inner product between their [CLS] embeddings. Loss L = w_gen·L_gen + w_con·L_con:

- L_con: for each query, a softmax over all valid items of the GLOBAL in-batch memory M_B
  (all B·M items of the batch; written on global arrays, so under jit with the batch sharded
  over `data` the contraction spans every device). Positives are the query's own items with
  memory_labels = 1, plus any item elsewhere in the batch carrying the same non-negative
  memory_id. With several positives the loss is -log Σ_pos softmax (the probability mass on
  the positive set); queries without a positive are left out of L_con.
- L_gen: cross-entropy of the target given the encoding of [m_1 … m_k ; q] (laid out with
  the best item m_1 nearest the query, see `_retrieve_and_encode`). For
  retrieve = 1 the m_i are TopK(M_B | q) by inner product ("inbatch" mode), or the example's
  own M slots ranked by memory_scores ("fixed" mode, §3.4: the neighbours come from the
  global index and their [CLS] encodings get stop_gradient). retrieve = 0 masks the memory
  part out (caption tasks, §3.3: M_p = Ø). The retrieved items' token sequences are
  gathered from the already computed item embeddings, so gradients reach both encoders.

Letters: B batch (global), M memory slots, N = B·M, K top-k, Lq/Lm/Lt lengths, D width.
"""
import dataclasses
from typing import Any, Mapping, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.core import meta

from murag import backbone
from murag import decoding
from murag import t5
from murag import vit
from tasks import features as features_lib

_NEG = -1.0e9


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MuRAGConfig:
  """Every MuRAG hyperparameter (sizes live in gin_configs/models/murag_*.gin)."""
  # T5 text transformer (defaults: T5.1.1-base widths).
  vocab_size: int = 32128
  emb_dim: int = 768
  num_heads: int = 12
  head_dim: int = 64
  num_encoder_layers: int = 12
  num_decoder_layers: int = 12
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ("gelu", "linear")
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  # ViT image tower (defaults: ViT-L/16 at 224 px).
  image_size: int = 224
  vit_patch_size: int = 16
  vit_width: int = 1024
  vit_depth: int = 24
  vit_mlp_dim: int = 4096
  vit_num_heads: int = 16
  vit_pool_type: str = "tok"
  vit_layer_norm_epsilon: float = 1e-6
  vit_gelu_approximate: bool = True
  vit_dropout_rate: float = 0.0
  # Retrieval and losses.
  retrieval_mode: str = "inbatch"  # or "fixed"
  top_k: int = 4
  retrieval_proj_dim: int = 0
  normalize_retrieval: bool = False
  contrastive_scale: float = 1.0  # logits = scale * <q, m>  (1 / temperature)
  contrastive_weight: float = 1.0
  generation_weight: float = 1.0
  # False: the question-only baseline ("same model, no memory"). The reader encodes
  # [CLS]; q alone, memory features are ignored and never encoded, and there is no
  # contrastive loss. Same parameters, and the same function as retrieve = 0 with
  # contrastive_weight = 0, without the memory side's compute.
  use_memory: bool = True
  z_loss: float = 0.0
  label_smoothing: float = 0.0
  # Decoding.
  num_beams: int = 2
  length_penalty_alpha: float = 0.6
  eos_id: int = 1
  dtype: str = "float32"

  def t5_config(self) -> t5.T5Config:
    return t5.T5Config(
        vocab_size=self.vocab_size, emb_dim=self.emb_dim, num_heads=self.num_heads,
        head_dim=self.head_dim, num_encoder_layers=self.num_encoder_layers,
        num_decoder_layers=self.num_decoder_layers, mlp_dim=self.mlp_dim,
        mlp_activations=tuple(self.mlp_activations), dropout_rate=self.dropout_rate,
        logits_via_embedding=self.logits_via_embedding,
        relative_attention_num_buckets=self.relative_attention_num_buckets,
        relative_attention_max_distance=self.relative_attention_max_distance,
        dtype=jnp.dtype(self.dtype))

  def vit_config(self) -> vit.ViTConfig:
    return vit.ViTConfig(
        image_size=self.image_size, patch_size=self.vit_patch_size, width=self.vit_width,
        depth=self.vit_depth, mlp_dim=self.vit_mlp_dim, num_heads=self.vit_num_heads,
        pool_type=self.vit_pool_type, layer_norm_epsilon=self.vit_layer_norm_epsilon,
        gelu_approximate=self.vit_gelu_approximate, dropout_rate=self.vit_dropout_rate,
        dtype=jnp.dtype(self.dtype))

  def __post_init__(self):
    if self.retrieval_mode not in ("inbatch", "fixed"):
      raise ValueError(f"MuRAGConfig.retrieval_mode must be 'inbatch' or 'fixed', got "
                       f"{self.retrieval_mode!r}")
    if self.image_size % self.vit_patch_size:
      raise ValueError(f"MuRAGConfig.image_size={self.image_size} is not a multiple of "
                       f"vit_patch_size={self.vit_patch_size}")
    if not self.use_memory and self.contrastive_weight:
      raise ValueError("MuRAGConfig.use_memory=False (question-only) has no contrastive "
                       "loss; set MuRAGConfig.contrastive_weight = 0")
    if self.top_k < 1 or self.num_beams < 1:
      raise ValueError("MuRAGConfig.top_k and MuRAGConfig.num_beams must be >= 1")


def cross_entropy_with_logits(logits, targets, weights, label_smoothing=0.0, z_loss=0.0):
  """Token cross-entropy with T5X-style label smoothing and z-loss.

  Args:
    logits: [B, L, V]; targets: [B, L] int; weights: [B, L].
  Returns:
    per-token loss [B, L] (weighted), per-token z-loss part [B, L] (weighted).
  """
  vocab = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  # Entropy of the smoothed target, so that a perfect prediction has zero loss.
  norm = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))
  soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
  lse = jax.nn.logsumexp(logits, axis=-1)
  loss = lse - jnp.sum(soft * logits, axis=-1) - norm
  zl = z_loss * jnp.square(lse)
  w = weights.astype(jnp.float32)
  return (loss + zl) * w, zl * w


@gin.configurable
class MuRAGModel:
  """T5X-style model wrapper around `backbone.MuRAGNetwork` (see the module docstring).

  Args:
    config: a `MuRAGConfig`.
    vocabulary: the seqio vocabulary (kept for the trainer / inference; may be None).
    optimizer_def: optimizer for T5X's trainer (kept as `self.optimizer_def`).
  """

  def __init__(self, config: MuRAGConfig, vocabulary: Any = None, optimizer_def: Any = None):
    if not isinstance(config, MuRAGConfig):
      raise TypeError(f"MuRAGModel.config must be a MuRAGConfig, got {type(config).__name__}")
    vocab_size = getattr(vocabulary, "vocab_size", None)
    if vocab_size is not None and vocab_size > config.vocab_size:
      raise ValueError(f"MuRAGConfig.vocab_size={config.vocab_size} is smaller than the "
                       f"vocabulary's {vocab_size} ids")
    self.config = config
    self.vocabulary = vocabulary
    self.optimizer_def = optimizer_def
    self.module = backbone.MuRAGNetwork(config.t5_config(), config.vit_config(),
                                        config.retrieval_proj_dim, config.normalize_retrieval)

  # T5X names the converter class on the model; imported lazily (tasks owns it).
  @property
  def FEATURE_CONVERTER_CLS(self):  # pylint: disable=invalid-name
    from tasks import feature_converters  # pylint: disable=g-import-not-at-top
    return feature_converters.MuRAGFeatureConverter

  @property
  def input_vocabulary(self):
    return self.vocabulary

  @property
  def output_vocabulary(self):
    return self.vocabulary

  # ---------------------------------------------------------------- validation
  def validate_batch(self, batch: Mapping[str, Any]) -> None:
    """Raises ValueError naming the feature when `batch` breaks tasks/features.py."""
    for name, ndim in (("query_tokens", 2), ("memory_tokens", 3),
                       ("decoder_target_tokens", 2)):
      if name not in batch:
        features_lib.validate_batch(batch, {})  # reports every missing feature
      if len(batch[name].shape) != ndim:
        raise ValueError(f"feature '{name}': expected a rank-{ndim} array, got shape "
                         f"{tuple(batch[name].shape)}")
    b, lq = batch["query_tokens"].shape
    _, m, lm = batch["memory_tokens"].shape
    dims = {"Lq": lq, "M": m, "Lm": lm, "Lt": batch["decoder_target_tokens"].shape[1],
            "H": self.config.image_size, "W": self.config.image_size}
    features_lib.validate_batch(batch, dims, batch_size=b)

  # ---------------------------------------------------------------- init
  def get_initial_variables(self, rng, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                            input_types: Optional[Mapping[str, Any]] = None):
    """Parameters and their logical axes.

    Args:
      rng: PRNG key.
      input_shapes: feature -> shape with batch axis (only the lengths are used).
      input_types: ignored (dtypes follow tasks/features.py).

    Returns:
      {"params": ..., "params_axes": ...} (T5X's `params_axes` with `<name>_axes` entries).
    """
    del input_types
    shapes = dict(input_shapes or {})
    lm = shapes.get("memory_tokens", (1, 1, 8))[-1]
    lt = shapes.get("decoder_input_tokens", (1, 8))[-1]
    s = self.config.image_size
    if getattr(self, "_jit_init", None) is None:
      self._jit_init = jax.jit(self.module.init)
    variables = self._jit_init({"params": rng}, jnp.ones((1, lm), jnp.int32),
                     jnp.zeros((1, s, s, 3), jnp.uint8), jnp.ones((1,), jnp.int32),
                     jnp.ones((1, lt), jnp.int32))
    return {"params": variables["params"], "params_axes": variables["params_axes"]}

  # ---------------------------------------------------------------- pieces
  def _apply(self, params, *args, method, rng=None, **kwargs):
    rngs = {"dropout": rng} if rng is not None else None
    return self.module.apply({"params": params}, *args, method=method, rngs=rngs, **kwargs)

  def embed_query(self, params, batch, rng=None):
    """f_θ(q)[CLS]: [B, Dr] from query_tokens, query_image, query_image_mask."""
    return self._apply(params, batch["query_tokens"], batch["query_image"],
                       batch["query_image_mask"], rng is None, rng=rng,
                       method=self.module.embed_and_encode)

  def embed_memory(self, params, tokens, images, image_mask, rng=None):
    """f_θ(m)[CLS]: tokens [N, Lm], images [N, H, W, 3] uint8, image_mask [N] -> [N, Dr]."""
    return self._apply(params, tokens, images, image_mask, rng is None, rng=rng,
                       method=self.module.embed_and_encode)

  def _rng(self, rng, i):
    return None if rng is None else jax.random.fold_in(rng, i)

  def _question_only_encode(self, params, batch, rng):
    """use_memory=False: the reader input is [CLS]; q (the same encoding as a fully masked
    memory prefix, see backbone.MuRAGNetwork.encode); no item is encoded or retrieved."""
    det = rng is None
    b = batch["query_tokens"].shape[0]
    k = self.config.top_k
    q_seq, q_mask = self._apply(params, batch["query_tokens"], batch["query_image"],
                                batch["query_image_mask"], det, rng=self._rng(rng, 0),
                                method=self.module.embed_items)
    encoded, enc_mask, q_emb = self._apply(params, q_seq, q_mask, det, rng=self._rng(rng, 4),
                                           method=self.module.encode)
    return dict(q_emb=q_emb, encoded=encoded, enc_mask=enc_mask,
                retrieved_ids=jnp.full((b, k), -1, jnp.int32),
                retrieved_scores=jnp.zeros((b, k), jnp.float32))

  def _retrieve_and_encode(self, params, batch, rng):
    """Shared by loss, scoring and prediction: retrieval + reader encoding."""
    cfg = self.config
    if not cfg.use_memory:
      return self._question_only_encode(params, batch, rng)
    det = rng is None
    b, m, lm = batch["memory_tokens"].shape
    n = b * m
    q_seq, q_mask = self._apply(params, batch["query_tokens"], batch["query_image"],
                                batch["query_image_mask"], det, rng=self._rng(rng, 0),
                                method=self.module.embed_items)
    _, _, q_emb = self._apply(params, q_seq, q_mask, det, rng=self._rng(rng, 1),
                              method=self.module.encode)  # [B, Dr]
    # The global in-batch memory: [B, M, ...] -> [N, ...].
    m_seq, m_mask = self._apply(
        params, batch["memory_tokens"].reshape(n, lm),
        batch["memory_images"].reshape((n,) + batch["memory_images"].shape[2:]),
        batch["memory_image_mask"].reshape(n), det, rng=self._rng(rng, 2),
        method=self.module.embed_items)  # [N, Tm, D]
    m_seq = nn.with_logical_constraint(m_seq, ("memory", "length", "embed"))
    _, _, m_emb = self._apply(params, m_seq, m_mask, det, rng=self._rng(rng, 3),
                              method=self.module.encode)  # [N, Dr]
    if cfg.retrieval_mode == "fixed":
      m_emb = jax.lax.stop_gradient(m_emb)
    valid = batch["memory_mask"].reshape(n) > 0
    scores = jnp.einsum("bd,nd->bn", q_emb, m_emb)  # [B, N] over the whole global batch
    masked = jnp.where(valid[None, :], scores, _NEG)

    if cfg.retrieval_mode == "inbatch":
      k = min(cfg.top_k, n)
      top_scores, top_idx = jax.lax.top_k(masked, k)  # [B, K] indices into N
    else:
      k = min(cfg.top_k, m)
      own = jnp.where(batch["memory_mask"] > 0, batch["memory_scores"], _NEG)  # [B, M]
      _, slot = jax.lax.top_k(own, k)
      top_idx = slot + (jnp.arange(b) * m)[:, None]
      top_scores = jnp.take_along_axis(batch["memory_scores"], slot, axis=1)
    top_valid = jnp.take(valid, top_idx) & (batch["retrieve"][:, None] > 0)  # [B, K]
    flat_ids = batch["memory_ids"].reshape(n)
    retrieved_ids = jnp.where(top_valid, jnp.take(flat_ids, top_idx), -1)
    retrieved_scores = jnp.where(top_valid, top_scores, 0.0)

    # Reader input [m_1 … m_k ; q]: gather the items' token sequences, laid out from the
    # K-th to the best item so that m_1 sits next to [CLS]; q. T5's relative position
    # buckets are finest near the query and merge every distance beyond
    # relative_attention_max_distance, where m_1 would otherwise land (K * Tm > 128 already
    # for 4 items of 36 tokens) and could not be told from m_2 by position.
    t_m = m_seq.shape[1]
    order = top_idx[:, ::-1]  # [B, K] worst .. best
    r_mem = jnp.take(m_seq, order, axis=0).reshape(b, k * t_m, -1)  # [B, K*Tm, D]
    r_mem_mask = (jnp.take(m_mask, order, axis=0) * top_valid[:, ::-1, None]).reshape(b, -1)
    encoded, enc_mask, _ = self._apply(params, q_seq, q_mask, det, r_mem,
                                       r_mem_mask.astype(q_mask.dtype), rng=self._rng(rng, 4),
                                       method=self.module.encode)
    return dict(q_emb=q_emb, m_emb=m_emb, scores=scores, masked=masked, valid=valid,
                top_idx=top_idx, encoded=encoded, enc_mask=enc_mask,
                retrieved_ids=retrieved_ids, retrieved_scores=retrieved_scores)

  def _positives(self, batch):
    """[B, N] bool: item j is a positive for query b (own labels, or same memory id)."""
    b, m = batch["memory_mask"].shape
    own = (batch["memory_labels"] > 0) & (batch["memory_mask"] > 0)  # [B, M]
    eye = jnp.eye(b, dtype=bool)[:, :, None] & own[None, :, :]  # [B, B, M]
    pos = eye.reshape(b, b * m)
    ids = batch["memory_ids"]
    pos_ids = jnp.where(own & (ids >= 0), ids, -2)  # [B, M]
    flat = jnp.where(batch["memory_mask"].reshape(-1) > 0, ids.reshape(-1), -3)  # [N]
    same = jnp.any(pos_ids[:, :, None] == flat[None, None, :], axis=1)  # [B, N]
    return pos | same

  # ---------------------------------------------------------------- losses
  def _loss_and_metrics(self, params, batch, rng):
    cfg = self.config
    self.validate_batch(batch)
    r = self._retrieve_and_encode(params, batch, rng)
    logits = self._apply(params, r["encoded"], r["enc_mask"], batch["decoder_input_tokens"],
                         rng is None, rng=self._rng(rng, 5), method=self.module.decode)
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    tok_loss, tok_z = cross_entropy_with_logits(logits, targets, weights,
                                                cfg.label_smoothing, cfg.z_loss)
    n_tok = jnp.maximum(jnp.sum(weights), 1.0)
    l_gen = jnp.sum(tok_loss) / n_tok
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
    metrics = {
        "gen_loss": l_gen,
        "z_loss": jnp.sum(tok_z) / n_tok,
        "token_accuracy": jnp.sum(correct) / n_tok,
        "num_target_tokens": jnp.sum(weights),
    }
    if not cfg.use_memory:
      loss = cfg.generation_weight * l_gen
      return loss, {"loss": loss, **metrics}, logits

    # L_con over the global in-batch memory.
    logits_con = cfg.contrastive_scale * r["masked"]
    logits_con = jnp.where(r["valid"][None, :], logits_con, _NEG)
    logp = jax.nn.log_softmax(logits_con, axis=-1)  # [B, N]
    pos = self._positives(batch) & r["valid"][None, :]
    has_pos = jnp.any(pos, axis=-1)
    per_q = -jax.nn.logsumexp(jnp.where(pos, logp, _NEG), axis=-1)
    n_q = jnp.maximum(jnp.sum(has_pos), 1)
    l_con = jnp.sum(jnp.where(has_pos, per_q, 0.0)) / n_q
    k = min(cfg.top_k, logp.shape[1])
    _, top_any = jax.lax.top_k(logits_con, k)
    hit = jnp.take_along_axis(pos, top_any, axis=1)  # [B, K]
    acc1 = jnp.sum(jnp.where(has_pos, hit[:, 0], False)) / n_q
    acck = jnp.sum(jnp.where(has_pos, jnp.any(hit, -1), False)) / n_q

    loss = cfg.generation_weight * l_gen + cfg.contrastive_weight * l_con
    metrics.update({
        "loss": loss,
        "con_loss": l_con,
        "retrieval_acc@1": acc1,
        f"retrieval_acc@{k}": acck,
        "num_queries_with_positive": jnp.sum(has_pos).astype(jnp.float32),
    })
    return loss, metrics, logits

  def loss_fn(self, params, batch, dropout_rng):
    """(loss, metrics) for a training step; dropout is on when `dropout_rng` is given.

    Returns:
      loss: scalar; metrics: dict of scalars (loss, gen_loss, con_loss, z_loss,
      retrieval_acc@1, retrieval_acc@K, token_accuracy, counts).
    """
    loss, metrics, _ = self._loss_and_metrics(params, batch, dropout_rng)
    return loss, metrics

  def eval_fn(self, params, batch):
    """Deterministic (loss, metrics) on an evaluation batch."""
    return self.loss_fn(params, batch, None)

  def score_batch(self, params, batch, return_intermediates=False):
    """Log-likelihood of the targets given the retrieval-augmented input: [B]."""
    self.validate_batch(batch)
    r = self._retrieve_and_encode(params, batch, None)
    logits = self._apply(params, r["encoded"], r["enc_mask"], batch["decoder_input_tokens"],
                         True, method=self.module.decode)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    tok = jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    scores = jnp.sum(tok * batch["decoder_loss_weights"], axis=-1)
    if return_intermediates:
      return scores, {"retrieved_ids": r["retrieved_ids"],
                      "retrieved_scores": r["retrieved_scores"]}
    return scores

  # ---------------------------------------------------------------- decoding
  def _tokens_to_logits(self, params, encoded, enc_mask, use_cache):
    def fn(seqs, step, cache):
      if use_cache:
        tok = jax.lax.dynamic_slice_in_dim(seqs, step, 1, axis=1)  # [N, 1]
        logits, mut = self.module.apply({"params": params, "cache": cache}, encoded, enc_mask,
                                        tok, True, True, method=self.module.decode,
                                        mutable=["cache"])
        return logits[:, 0], mut["cache"]
      logits = self._apply(params, encoded, enc_mask, seqs[:, :-1], True,
                           method=self.module.decode)  # [N, Lt, V]
      return jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False), cache
    return fn

  def _init_cache(self, params, encoded, enc_mask, max_len):
    _, mut = self.module.apply({"params": params}, encoded, enc_mask,
                               jnp.zeros((encoded.shape[0], max_len), jnp.int32), True, True,
                               method=self.module.decode, mutable=["cache"])
    return mut["cache"]

  def decode_from_encoding(self, params, encoded, enc_mask, *, max_len, num_decodes=1,
                           use_cache=True):
    """Greedy (num_decodes=1) or beam search from a reader encoding [B, Lk, D].

    Returns:
      tokens [B, W, Lt] best first and scores [B, W] (W = num_decodes).
    """
    b = encoded.shape[0]
    w = num_decodes
    if w > 1:
      encoded = jnp.repeat(encoded, w, axis=0)  # [B*W, Lk, D], beam-major per example
      enc_mask = jnp.repeat(enc_mask, w, axis=0)
    cache = self._init_cache(params, encoded, enc_mask, max_len) if use_cache else {}
    fn = self._tokens_to_logits(params, encoded, enc_mask, use_cache)
    if w == 1:
      seqs, scores = decoding.greedy_search(fn, cache, batch_size=b, max_len=max_len,
                                            eos_id=self.config.eos_id)
      return seqs[:, None], scores[:, None]
    return decoding.beam_search(fn, cache, batch_size=b, beam_size=w, max_len=max_len,
                                eos_id=self.config.eos_id,
                                alpha=self.config.length_penalty_alpha)

  def predict_batch_with_aux(self, params, batch, rng=None, decoder_params=None,
                             return_all_decodes=False, num_decodes=None, use_cache=True):
    """Answers with attribution.

    Args:
      params: model parameters.
      batch: features of tasks/features.py (decoder_input_tokens sets the max length).
      rng: unused (decoding is deterministic).
      decoder_params: may hold {"num_decodes": W, "max_decode_length": L}.
      return_all_decodes: return every beam [B, W, Lt] instead of the best [B, Lt].
      num_decodes: beam width (default config.num_beams; 1 = greedy).
      use_cache: use the KV cache (False reruns the decoder each step; for checks).

    Returns:
      tokens [B, Lt] (or [B, W, Lt]) and aux {"scores", "retrieved_ids" [B, K],
      "retrieved_scores" [B, K]}.
    """
    del rng
    decoder_params = dict(decoder_params or {})
    w = num_decodes or decoder_params.get("num_decodes") or self.config.num_beams
    self.validate_batch(batch)
    max_len = decoder_params.get("max_decode_length", batch["decoder_input_tokens"].shape[1])
    r = self._retrieve_and_encode(params, batch, None)
    seqs, scores = self.decode_from_encoding(params, r["encoded"], r["enc_mask"],
                                             max_len=max_len, num_decodes=w,
                                             use_cache=use_cache)
    if not return_all_decodes:
      seqs, scores = seqs[:, 0], scores[:, 0]
    return seqs, {"scores": scores, "retrieved_ids": r["retrieved_ids"],
                  "retrieved_scores": r["retrieved_scores"]}

  def predict_batch(self, params, batch, rng=None, **kwargs):
    return self.predict_batch_with_aux(params, batch, rng, **kwargs)[0]


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def unbox(tree):
  """Strips flax partitioning boxes if present."""
  return meta.unbox(tree)
