"""MuRAGModel: losses against hand computations, retrieval, input validation, sizes, overfit."""
import functools
import os

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from murag import model as model_lib
from murag import partitioner
from murag import partitioning

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(vocab_size=48, emb_dim=16, num_heads=2, head_dim=8, num_encoder_layers=1,
            num_decoder_layers=1, mlp_dim=32, relative_attention_num_buckets=8,
            relative_attention_max_distance=16, image_size=16, vit_patch_size=8, vit_width=16,
            vit_depth=1, vit_mlp_dim=32, vit_num_heads=2, top_k=2)
DIMS = dict(B=4, M=2, Lq=5, Lm=4, Lt=6)


def make_batch(seed=0, B=4, M=2, Lq=5, Lm=4, Lt=6, S=16, vocab=48, retrieve=1):
  """A random batch that satisfies tasks/features.py; slot 0 of each example is positive."""
  rng = np.random.default_rng(seed)
  tgt = rng.integers(3, vocab, (B, Lt)).astype(np.int32)
  tgt[:, -1] = 1
  tgt[0, 3:] = 0  # a padded target row
  tgt[0, 2] = 1
  mem_mask = np.ones((B, M), np.int32)
  mem_mask[-1, -1] = 0  # one padding slot
  q_tok = rng.integers(3, vocab, (B, Lq)).astype(np.int32)
  q_tok[1, 3:] = 0
  return {
      "query_tokens": q_tok,
      "query_image": rng.integers(0, 256, (B, S, S, 3)).astype(np.uint8),
      "query_image_mask": np.array([1, 0] * (B // 2), np.int32),
      "memory_tokens": rng.integers(3, vocab, (B, M, Lm)).astype(np.int32),
      "memory_images": rng.integers(0, 256, (B, M, S, S, 3)).astype(np.uint8),
      "memory_image_mask": rng.integers(0, 2, (B, M)).astype(np.int32),
      "memory_mask": mem_mask,
      "memory_labels": np.tile(np.array([1] + [0] * (M - 1), np.int32), (B, 1)),
      "memory_ids": np.arange(B * M, dtype=np.int32).reshape(B, M),
      "memory_scores": rng.normal(size=(B, M)).astype(np.float32),
      "retrieve": np.full((B,), retrieve, np.int32),
      "decoder_input_tokens": np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], 1),
      "decoder_target_tokens": tgt,
      "decoder_loss_weights": (tgt > 0).astype(np.int32),
  }


@functools.lru_cache(maxsize=None)
def tiny_setup():
  """One tiny model and its initial variables, shared by the test modules (compile once)."""
  model = model_lib.MuRAGModel(model_lib.MuRAGConfig(**TINY))
  return model, model.get_initial_variables(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def tiny():
  model, variables = tiny_setup()
  return model, variables["params"]


def test_params_axes_cover_every_parameter():
  _, variables = tiny_setup()
  params = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]))
  specs = flax.traverse_util.flatten_dict(flax.core.unfreeze(
      partitioner.logical_specs_from_params_axes(variables["params"],
                                                 variables["params_axes"])))
  assert set(params) == set(specs)
  for key, value in params.items():
    assert len(specs[key]) == value.ndim, (key, specs[key], value.shape)
    assert all(a is None or a in partitioning.LOGICAL_AXES for a in specs[key]), specs[key]


def test_loss_parts_match_hand_computation(tiny):
  model, params = tiny
  batch = make_batch()
  loss, metrics = jax.jit(model.loss_fn)(params, batch, None)
  np.testing.assert_allclose(loss, metrics["gen_loss"] + metrics["con_loss"], rtol=1e-6)
  # L_con from the public embedding functions, in numpy.
  n = DIMS["B"] * DIMS["M"]
  q = np.asarray(jax.jit(model.embed_query)(params, batch))
  m = np.asarray(jax.jit(model.embed_memory)(params, batch["memory_tokens"].reshape(n, -1),
                                             batch["memory_images"].reshape(n, 16, 16, 3),
                                             batch["memory_image_mask"].reshape(n)))
  s = q @ m.T
  s[:, batch["memory_mask"].reshape(n) == 0] = -np.inf
  logp = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(
      1, keepdims=True)
  own = np.arange(DIMS["B"]) * DIMS["M"]  # slot 0 is the positive
  np.testing.assert_allclose(metrics["con_loss"], -logp[np.arange(4), own].mean(), rtol=2e-5)
  top1 = np.argmax(s, 1) == own
  np.testing.assert_allclose(metrics["retrieval_acc@1"], top1.mean())
  assert 0.0 <= metrics["token_accuracy"] <= 1.0
  assert metrics["num_target_tokens"] == batch["decoder_loss_weights"].sum()


def test_retrieve_zero_is_query_only(tiny):
  """retrieve=0 must equal generating from the query encoding alone (§3.3, M_p = Ø)."""
  model, params = tiny
  batch = make_batch(retrieve=0)
  _, metrics = jax.jit(model.loss_fn)(params, batch, None)
  mod = model.module

  @jax.jit
  def query_only_logits(params, batch):
    seq, mask = mod.apply({"params": params}, batch["query_tokens"], batch["query_image"],
                          batch["query_image_mask"], method=mod.embed_items)
    enc, emask, _ = mod.apply({"params": params}, seq, mask, method=mod.encode)
    return mod.apply({"params": params}, enc, emask, batch["decoder_input_tokens"],
                     method=mod.decode)

  logits = query_only_logits(params, batch)
  tok, _ = model_lib.cross_entropy_with_logits(logits, batch["decoder_target_tokens"],
                                               batch["decoder_loss_weights"])
  ref = float(jnp.sum(tok) / batch["decoder_loss_weights"].sum())
  np.testing.assert_allclose(metrics["gen_loss"], ref, rtol=1e-5)


def test_question_only_config_equals_retrieve_zero_without_contrastive_loss(tiny):
  """use_memory=False (the baseline's fast path) is the same function as retrieve=0 with
  contrastive_weight=0: equal loss, equal gradients, equal answers, no retrieved ids."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  model, params = tiny
  masked = model_lib.MuRAGModel(dataclasses.replace(model.config, contrastive_weight=0.0))
  qonly = model_lib.MuRAGModel(dataclasses.replace(model.config, contrastive_weight=0.0,
                                                   use_memory=False))
  batch = make_batch(retrieve=0)

  def grad(m):
    return jax.jit(jax.value_and_grad(lambda p: m.loss_fn(p, batch, None)[0]))(params)

  (ref_loss, ref_g), (loss, g) = grad(masked), grad(qonly)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  flat_ref = flax.traverse_util.flatten_dict(flax.core.unfreeze(ref_g))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(g))
  assert set(flat) == set(flat_ref)
  for key in flat:
    np.testing.assert_allclose(flat[key], flat_ref[key], rtol=2e-4, atol=1e-6, err_msg=key)
  assert np.abs(flat[("decoder", "logits_dense", "kernel")]).max() > 0  # not all-zero
  _, metrics = jax.jit(qonly.loss_fn)(params, batch, None)
  assert "con_loss" not in metrics and set(metrics) >= {"loss", "gen_loss", "token_accuracy"}
  tokens_ref, _ = jax.jit(masked.predict_batch_with_aux)(params, batch)
  tokens, aux = jax.jit(qonly.predict_batch_with_aux)(params, batch)
  np.testing.assert_array_equal(tokens, tokens_ref)
  assert aux["retrieved_ids"].shape == (DIMS["B"], TINY["top_k"])
  assert (np.asarray(aux["retrieved_ids"]) == -1).all()
  with pytest.raises(ValueError, match="contrastive_weight"):
    model_lib.MuRAGConfig(**TINY, use_memory=False)


def test_reader_input_puts_the_best_item_next_to_the_query():
  """L_gen reads [m_K … m_1 ; [CLS] q]: items in reverse rank order before the query."""
  model = model_lib.MuRAGModel(model_lib.MuRAGConfig(**dict(TINY, retrieval_mode="fixed")))
  params = model.get_initial_variables(jax.random.PRNGKey(1))["params"]
  batch = make_batch(seed=3)
  _, metrics = jax.jit(model.loss_fn)(params, batch, None)
  mod = model.module
  k = min(model.config.top_k, DIMS["M"])
  order = np.argsort(-np.where(batch["memory_mask"] > 0, batch["memory_scores"], -1e9), 1)

  def gen_loss(rank_order):
    def apply(*args, method):
      return mod.apply({"params": params}, *args, method=method)
    n = DIMS["B"] * DIMS["M"]
    m_seq, m_mask = apply(batch["memory_tokens"].reshape(n, -1),
                          batch["memory_images"].reshape(n, 16, 16, 3),
                          batch["memory_image_mask"].reshape(n), method=mod.embed_items)
    idx = order[:, :k][:, rank_order] + (np.arange(DIMS["B"]) * DIMS["M"])[:, None]
    valid = np.take_along_axis(batch["memory_mask"], order[:, :k][:, rank_order], 1)
    prefix = jnp.take(m_seq, idx, axis=0).reshape(DIMS["B"], -1, m_seq.shape[-1])
    pmask = (jnp.take(m_mask, idx, axis=0) * valid[:, :, None]).reshape(DIMS["B"], -1)
    q_seq, q_mask = apply(batch["query_tokens"], batch["query_image"],
                          batch["query_image_mask"], method=mod.embed_items)
    enc, emask, _ = mod.apply({"params": params}, q_seq, q_mask, True, prefix, pmask,
                              method=mod.encode)
    logits = apply(enc, emask, batch["decoder_input_tokens"], method=mod.decode)
    tok, _ = model_lib.cross_entropy_with_logits(logits, batch["decoder_target_tokens"],
                                                 batch["decoder_loss_weights"])
    return float(jnp.sum(tok) / batch["decoder_loss_weights"].sum())

  reverse, forward = gen_loss(np.arange(k)[::-1]), gen_loss(np.arange(k))
  np.testing.assert_allclose(metrics["gen_loss"], reverse, rtol=1e-5)
  assert abs(reverse - forward) > 1e-4  # the layout is observable


def test_fixed_mode_uses_own_slots_by_score():
  model = model_lib.MuRAGModel(model_lib.MuRAGConfig(**dict(TINY, retrieval_mode="fixed")))
  params = model.get_initial_variables(jax.random.PRNGKey(1))["params"]
  batch = make_batch(seed=3)
  _, aux = jax.jit(lambda p, b: model.predict_batch_with_aux(p, b, num_decodes=1))(
      params, batch)
  order = np.argsort(-np.where(batch["memory_mask"] > 0, batch["memory_scores"], -1e9), 1)
  expect = np.take_along_axis(batch["memory_ids"], order[:, :2], 1)
  expect[-1, 1] = -1  # the padding slot is never retrieved
  np.testing.assert_array_equal(aux["retrieved_ids"], expect)


@pytest.mark.parametrize("name,shape", [("memory_mask", None), ("memory_images", (4, 2, 8, 8, 3))])
def test_bad_batches_name_the_feature(tiny, name, shape):
  model, params = tiny
  batch = make_batch()
  if shape is None:
    del batch[name]
    with pytest.raises(ValueError, match=name):
      model.loss_fn(params, batch, None)
  else:
    batch[name] = np.zeros(shape, np.uint8)
    with pytest.raises(ValueError, match=rf"'{name}'.*\(4, 2, 16, 16, 3\).*\(4, 2, 8, 8, 3\)"):
      model.loss_fn(params, batch, None)


def test_label_smoothing_and_z_loss():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 7)), jnp.float32)
  targets = jnp.asarray([[1, 2, 3], [4, 5, 0]])
  weights = jnp.asarray([[1, 1, 1], [1, 1, 0]])
  plain, z = model_lib.cross_entropy_with_logits(logits, targets, weights)
  ref = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(plain, ref * weights, rtol=1e-6)
  assert float(jnp.sum(z)) == 0.0
  _, z2 = model_lib.cross_entropy_with_logits(logits, targets, weights, z_loss=1e-2)
  np.testing.assert_allclose(z2, 1e-2 * jax.nn.logsumexp(logits, -1) ** 2 * weights, rtol=1e-6)
  # A one-hot-perfect prediction has zero smoothed loss only at the smoothed target itself.
  ls = 0.1
  soft = jax.nn.one_hot(targets, 7) * (1 - ls - ls / 6) + ls / 6
  smoothed, _ = model_lib.cross_entropy_with_logits(jnp.log(soft), targets, weights, ls)
  np.testing.assert_allclose(smoothed, 0.0, atol=1e-5)


def _gin_config(name):
  gin.clear_config()
  gin.parse_config_file(os.path.join(ROOT, "gin_configs", "models", f"murag_{name}.gin"))
  cfg = model_lib.MuRAGConfig()
  gin.clear_config()
  return cfg


def test_model_gin_files_parse_and_base_has_527m_params():
  counts = {}
  for name in ("tiny", "small", "base", "large"):
    cfg = _gin_config(name)
    m = model_lib.MuRAGModel(cfg)
    shapes = jax.eval_shape(m.get_initial_variables, jax.random.PRNGKey(0))
    counts[name] = model_lib.count_params(shapes["params"])
  assert abs(counts["base"] - 527e6) / 527e6 < 0.01, counts
  assert counts["tiny"] < counts["small"] < counts["base"] < counts["large"]


@pytest.mark.slow
def test_overfits_a_small_batch():
  cfg = model_lib.MuRAGConfig(**dict(TINY, emb_dim=32, mlp_dim=64, normalize_retrieval=True,
                                     contrastive_scale=10.0))
  model = model_lib.MuRAGModel(cfg)
  params = model.get_initial_variables(jax.random.PRNGKey(2))["params"]
  batch = make_batch(seed=5)
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    (_, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, None)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, metrics

  first = None
  for _ in range(150):
    params, state, metrics = step(params, state)
    first = first or {k: float(v) for k, v in metrics.items()}
  assert float(metrics["retrieval_acc@1"]) == 1.0
  assert float(metrics["gen_loss"]) < 0.05 < first["gen_loss"]
  assert float(metrics["token_accuracy"]) == 1.0
  tokens, aux = jax.jit(model.predict_batch_with_aux)(params, batch)
  for row, tgt in zip(np.asarray(tokens), batch["decoder_target_tokens"]):
    np.testing.assert_array_equal(row, tgt)
  np.testing.assert_array_equal(aux["retrieved_ids"][:, 0], batch["memory_ids"][:, 0])
