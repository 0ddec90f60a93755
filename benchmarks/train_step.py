"""MuRAG train-step model-FLOPs utilisation and KV-cache decoding speed-up.

Usage:
  python benchmarks/train_step.py --size=small [--batch=4 --memory_slots=1 --top_k=2 ...]

MFU: analytic matmul FLOPs of one training step (forward + backward = 3 x forward; token
embedding look-ups excluded, logits matmul included) divided by the measured step time,
relative to the FLOP/s of a plain jitted float32 matmul measured in the same process.
Decoding: tokens/s of greedy decoding of 64 tokens with the KV cache vs re-running the
decoder on the whole prefix at every step (EOS disabled so both produce all 64 tokens).
"""
import argparse
import dataclasses
import os
import sys
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from murag import model as model_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FORMULA = """matmul FLOPs (2*m*n*k each), per sequence of length T:
  T5 encoder layer: 2*T*D*3*H*Dh + 2*T*H*Dh*D + 4*T*T*H*Dh + 2*T*D*F*n_wi + 2*T*F*D
  T5 decoder layer (Lt, enc length Tk): self-attn as above with T=Lt
     + cross: 2*Lt*D*H*Dh + 4*Tk*D*H*Dh + 4*Lt*Tk*H*Dh + 2*Lt*H*Dh*D + MLP; logits 2*Lt*D*V
  ViT per image (Np patches, Ti tokens): 2*Np*P*P*3*Wv + per layer 8*Ti*Wv^2 + 4*Ti^2*Wv
     + 4*Ti*Wv*Fv; projection 2*Ti*Wv*D
  step = ViT(B + B*M images) + enc(B x Tq) + enc(B*M x Tm) + enc(B x Tr) + dec(B, Lt, Tr)
         + scores 2*B*(B*M)*D;  train step = 3 x forward"""


def _enc_flops(cfg, t, n_layers):
  hd = cfg.num_heads * cfg.head_dim
  n_wi = len(cfg.mlp_activations)
  per = (2 * t * cfg.emb_dim * 3 * hd + 2 * t * hd * cfg.emb_dim + 4 * t * t * hd +
         2 * t * cfg.emb_dim * cfg.mlp_dim * n_wi + 2 * t * cfg.mlp_dim * cfg.emb_dim)
  return n_layers * per


def _dec_flops(cfg, lt, tk):
  hd = cfg.num_heads * cfg.head_dim
  d = cfg.emb_dim
  self_part = _enc_flops(cfg, lt, 1)
  cross = 2 * lt * d * hd + 4 * tk * d * hd + 4 * lt * tk * hd + 2 * lt * hd * d
  return cfg.num_decoder_layers * (self_part + cross) + 2 * lt * d * cfg.vocab_size


def _vit_flops(cfg):
  v = cfg.vit_config()
  ti, np_ = v.num_tokens, v.num_patches
  per = 8 * ti * v.width ** 2 + 4 * ti * ti * v.width + 4 * ti * v.width * v.mlp_dim
  return (2 * np_ * v.patch_size ** 2 * 3 * v.width + v.depth * per +
          2 * ti * v.width * cfg.emb_dim)


def train_step_flops(cfg, b, m, lq, lm, lt):
  li = cfg.vit_config().num_tokens
  k = min(cfg.top_k, b * m)
  tq, tm = 1 + li + lq, 1 + li + lm
  tr = k * (li + lm) + tq
  fwd = ((b + b * m) * _vit_flops(cfg) + b * _enc_flops(cfg, tq, cfg.num_encoder_layers) +
         b * m * _enc_flops(cfg, tm, cfg.num_encoder_layers) +
         b * _enc_flops(cfg, tr, cfg.num_encoder_layers) + b * _dec_flops(cfg, lt, tr) +
         2 * b * b * m * cfg.emb_dim)
  return 3 * fwd, tr


def make_batch(cfg, b, m, lq, lm, lt, seed=0):
  rng = np.random.default_rng(seed)
  s = cfg.image_size
  tgt = rng.integers(3, cfg.vocab_size, (b, lt)).astype(np.int32)
  return {
      "query_tokens": rng.integers(3, cfg.vocab_size, (b, lq)).astype(np.int32),
      "query_image": rng.integers(0, 256, (b, s, s, 3)).astype(np.uint8),
      "query_image_mask": np.ones((b,), np.int32),
      "memory_tokens": rng.integers(3, cfg.vocab_size, (b, m, lm)).astype(np.int32),
      "memory_images": rng.integers(0, 256, (b, m, s, s, 3)).astype(np.uint8),
      "memory_image_mask": np.ones((b, m), np.int32),
      "memory_mask": np.ones((b, m), np.int32),
      "memory_labels": np.ones((b, m), np.int32),
      "memory_ids": np.arange(b * m, dtype=np.int32).reshape(b, m),
      "memory_scores": np.zeros((b, m), np.float32),
      "retrieve": np.ones((b,), np.int32),
      "decoder_input_tokens": np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], 1),
      "decoder_target_tokens": tgt,
      "decoder_loss_weights": np.ones((b, lt), np.int32),
  }


def _time(fn, repeats):
  fn()  # compile / warm up
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_flops_per_s(n=2048, repeats=5):
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  return 2 * n ** 3 / _time(lambda: f(a, b).block_until_ready(), repeats)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", default="small", choices=["tiny", "small", "base", "large"])
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--memory_slots", type=int, default=1)
  p.add_argument("--top_k", type=int, default=2)
  p.add_argument("--lq", type=int, default=32)
  p.add_argument("--lm", type=int, default=32)
  p.add_argument("--lt", type=int, default=16)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--decode_batch", type=int, default=4)
  p.add_argument("--decode_tokens", type=int, default=64)
  p.add_argument("--skip_train", action="store_true")
  args = p.parse_args(argv)

  gin.parse_config_file(os.path.join(ROOT, "gin_configs", "models", f"murag_{args.size}.gin"))
  cfg = dataclasses.replace(model_lib.MuRAGConfig(), top_k=args.top_k, dropout_rate=0.0)
  gin.clear_config()
  model = model_lib.MuRAGModel(cfg)
  params = model.get_initial_variables(jax.random.PRNGKey(0))["params"]
  print(f"size={args.size} params={model_lib.count_params(params) / 1e6:.1f}M "
        f"devices={jax.device_count()} ({jax.devices()[0].platform})")
  peak = matmul_flops_per_s()
  print(f"reference: jitted 2048^3 float32 matmul = {peak / 1e9:.1f} GFLOP/s")

  if not args.skip_train:
    b, m = args.batch, args.memory_slots
    batch = make_batch(cfg, b, m, args.lq, args.lm, args.lt)
    flops, tr = train_step_flops(cfg, b, m, args.lq, args.lm, args.lt)
    opt = optax.adafactor(5e-4)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
      grads, metrics = jax.grad(model.loss_fn, has_aux=True)(params, batch, None)
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state, metrics["loss"]

    holder = [params, state]

    def run():
      holder[0], holder[1], loss = step(holder[0], holder[1])
      loss.block_until_ready()

    secs = _time(run, args.steps)
    achieved = flops / secs
    print(FORMULA)
    print(f"train step: B={b} M={m} K={min(cfg.top_k, b * m)} Lq={args.lq} Lm={args.lm} "
          f"Lt={args.lt} reader length={tr}; model FLOPs/step={flops / 1e9:.1f} G; "
          f"best step {secs:.3f} s -> {achieved / 1e9:.1f} GFLOP/s")
    # The machine may be shared: take the faster of the references before and after.
    peak = max(peak, matmul_flops_per_s())
    print(f"reference re-measured after the step: best {peak / 1e9:.1f} GFLOP/s")
    print(f"MFU (vs same-run matmul) = {achieved / peak:.3f}")

  # Decoding: KV cache vs full recompute, EOS disabled.
  dec_model = model_lib.MuRAGModel(dataclasses.replace(cfg, eos_id=-1))
  lk = 1 + cfg.vit_config().num_tokens + args.lq
  enc = jax.random.normal(jax.random.PRNGKey(3), (args.decode_batch, lk, cfg.emb_dim))
  enc_mask = jnp.ones((args.decode_batch, lk), jnp.int32)
  n = args.decode_tokens
  results = {}
  for use_cache in (True, False):
    f = jax.jit(lambda p, e, mk, c=use_cache: dec_model.decode_from_encoding(
        p, e, mk, max_len=n, num_decodes=1, use_cache=c)[0])
    secs = _time(lambda: f(params, enc, enc_mask).block_until_ready(), 2)
    results[use_cache] = args.decode_batch * n / secs
    print(f"greedy decode {n} tokens, batch {args.decode_batch}, cache={use_cache}: "
          f"{results[use_cache]:.1f} tokens/s")
  print(f"KV-cache speed-up = {results[True] / results[False]:.2f}x")


if __name__ == "__main__":
  main()
