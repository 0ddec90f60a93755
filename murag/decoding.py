"""Greedy and beam-search decoding for the MuRAG reader (paper §4.1: beam size 2).

Both searches drive a `tokens_to_logits(sequences, step, cache) -> (logits, cache)`
callback: `sequences` [N, Lt + 1] is the token buffer (column 0 is the BOS id 0, column
i + 1 receives the token chosen at step i) and the callback returns the next-token logits
[N, V] for position `step`. With a KV cache the callback feeds only column `step`; without
one it reruns the whole decoder on the buffer (causal masking makes the future columns
irrelevant), which is the reference the cache is checked and benchmarked against.

Letters: B batch, W beam width, Lt max decode length, V vocabulary.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp

TokensToLogits = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
_NEG = -1.0e9
_CACHE_LEAVES = ("cached_key", "cached_value")


def greedy_search(tokens_to_logits: TokensToLogits, cache: Any, *, batch_size: int,
                  max_len: int, eos_id: int):
  """Arg-max decoding, stopping early once every row has emitted EOS.

  Args:
    tokens_to_logits: see the module docstring.
    cache: initial decoder cache (any pytree, may be empty).
    batch_size: B.
    max_len: Lt, the number of tokens to produce.
    eos_id: end-of-sequence id; positions after it are 0.

  Returns:
    sequences [B, Lt] int32 and their log-probabilities [B] float32.
  """
  seqs = jnp.zeros((batch_size, max_len + 1), jnp.int32)
  done = jnp.zeros((batch_size,), bool)
  score = jnp.zeros((batch_size,), jnp.float32)

  def cond(state):
    i, _, _, done, _ = state
    return jnp.logical_and(i < max_len, jnp.logical_not(jnp.all(done)))

  def body(state):
    i, seqs, cache, done, score = state
    logits, cache = tokens_to_logits(seqs, i, cache)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, V]
    nxt = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    gained = jnp.take_along_axis(logp, nxt[:, None], axis=-1)[:, 0]
    score = score + jnp.where(done, 0.0, gained)
    nxt = jnp.where(done, 0, nxt)
    seqs = jax.lax.dynamic_update_slice(seqs, nxt[:, None], (0, i + 1))
    return i + 1, seqs, cache, jnp.logical_or(done, nxt == eos_id), score

  _, seqs, _, _, score = jax.lax.while_loop(cond, body, (jnp.array(0), seqs, cache, done,
                                                         score))
  return seqs[:, 1:], score


def _length_penalty(length, alpha: float):
  """T5X/GNMT brevity normalisation ((5 + length) / 6) ** alpha."""
  return ((5.0 + length) / 6.0) ** alpha


def gather_beams(tree: Any, beam_indices, batch_size: int, old_width: int):
  """Reorders the beam axis of every [B * W_old, ...] KV-cache leaf (other leaves kept).

  Args:
    tree: cache pytree; only leaves named cached_key / cached_value are reordered.
    beam_indices: [B, W_new] indices into the old beams.
    batch_size: B.
    old_width: W_old.

  Returns:
    The cache with leaves of leading size B * W_new.
  """
  def gather(path, x):
    name = getattr(path[-1], "key", None)
    if name not in _CACHE_LEAVES:
      return x
    x = x.reshape((batch_size, old_width) + x.shape[1:])
    idx = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
    x = jnp.take_along_axis(x, idx, axis=1)
    return x.reshape((-1,) + x.shape[2:])

  return jax.tree_util.tree_map_with_path(gather, tree)


def beam_search(tokens_to_logits: TokensToLogits, cache: Any, *, batch_size: int,
                beam_size: int, max_len: int, eos_id: int, alpha: float = 0.6):
  """Beam search with length normalisation and early stopping.

  The cache and the callback work on B * W rows (beam-major within each example).

  Args:
    tokens_to_logits: see the module docstring.
    cache: decoder cache for B * W rows.
    batch_size: B.
    beam_size: W.
    max_len: Lt.
    eos_id: end-of-sequence id.
    alpha: length-penalty exponent (0 = plain log-probability).

  Returns:
    sequences [B, W, Lt] sorted best first, and their normalised scores [B, W].
  """
  b, w = batch_size, beam_size
  seqs = jnp.zeros((b, w, max_len + 1), jnp.int32)
  live_logp = jnp.tile(jnp.array([0.0] + [_NEG] * (w - 1), jnp.float32), (b, 1))
  fin_seqs = jnp.zeros((b, w, max_len + 1), jnp.int32)
  fin_scores = jnp.full((b, w), _NEG, jnp.float32)

  def cond(state):
    i, _, live_logp, _, fin_scores, _ = state
    # Best reachable normalised score of a live beam (log-probs only decrease).
    best_live = live_logp[:, 0] / _length_penalty(max_len, alpha)
    worst_fin = jnp.min(fin_scores, axis=1)
    all_done = jnp.all(jnp.logical_and(fin_scores[:, -1] > _NEG / 2, best_live < worst_fin))
    return jnp.logical_and(i < max_len, jnp.logical_not(all_done))

  def body(state):
    i, seqs, live_logp, fin_seqs, fin_scores, cache = state
    logits, cache = tokens_to_logits(seqs.reshape(b * w, -1), i, cache)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1).reshape(b, w, -1)
    vocab = logp.shape[-1]
    cand = (live_logp[:, :, None] + logp).reshape(b, w * vocab)  # [B, W*V]
    top_vals, top_idx = jax.lax.top_k(cand, 2 * w)  # [B, 2W]
    beam_idx, tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    cand_seqs = jnp.take_along_axis(seqs, beam_idx[:, :, None], axis=1)  # [B, 2W, Lt+1]
    cand_seqs = jax.lax.dynamic_update_slice(cand_seqs, tok[:, :, None], (0, 0, i + 1))
    is_eos = tok == eos_id
    # Live beams: best W continuations that did not end.
    live_vals = jnp.where(is_eos, _NEG, top_vals)
    new_live, live_pos = jax.lax.top_k(live_vals, w)  # [B, W]
    new_seqs = jnp.take_along_axis(cand_seqs, live_pos[:, :, None], axis=1)
    cache = gather_beams(cache, jnp.take_along_axis(beam_idx, live_pos, axis=1), b, w)
    # Finished beams: merge the old ones with continuations that just emitted EOS.
    new_fin = jnp.where(is_eos, top_vals / _length_penalty(i + 1.0, alpha), _NEG)
    new_fin = jnp.where(top_vals > _NEG / 2, new_fin, _NEG)
    all_scores = jnp.concatenate([fin_scores, new_fin], axis=1)
    all_seqs = jnp.concatenate([fin_seqs, cand_seqs], axis=1)
    fin_scores, fin_pos = jax.lax.top_k(all_scores, w)
    fin_seqs = jnp.take_along_axis(all_seqs, fin_pos[:, :, None], axis=1)
    return i + 1, new_seqs, new_live, fin_seqs, fin_scores, cache

  state = (jnp.array(0), seqs, live_logp, fin_seqs, fin_scores, cache)
  _, seqs, live_logp, fin_seqs, fin_scores, _ = jax.lax.while_loop(cond, body, state)
  # Rows where fewer than W beams finished are completed with live beams at full length.
  live_scores = jnp.where(live_logp > _NEG / 2, live_logp / _length_penalty(max_len, alpha),
                          _NEG)
  all_scores = jnp.concatenate([fin_scores, live_scores], axis=1)
  all_seqs = jnp.concatenate([fin_seqs, seqs], axis=1)
  scores, pos = jax.lax.top_k(all_scores, w)
  out = jnp.take_along_axis(all_seqs, pos[:, :, None], axis=1)[:, :, 1:]
  return out, scores

