"""Train-step time of the demo's model at two query lengths, and proof that the result is equal.

Usage:
  python benchmarks/query_padding.py [--mode=inbatch|fixed|qonly|pretrain]
      [--query_tokens=24,28] [--run_dir=D] [--segments=4] [--steps=8]
      [--gin_file=gin_configs/experiments/murag_demo_reduced.gin]

The query is the last part of the reader input [m_1 ... m_k ; [CLS] ; q], so padding it to
a longer `query_tokens` moves no valid token relative to another and must not change any
result, only the work. This builds the demo's model for `--mode` (batch, memory slots and
other lengths from the gin file), two Trainers that differ only in `query_tokens`, and one
synthetic host batch whose questions are at most `min(query_tokens) - 1` pieces long, padded
to each length. It prints the largest difference between the two models' evaluation metrics
on that batch (same parameters), then alternates `--segments` timed segments of `--steps`
train steps of each (compilation excluded) and prints the per-segment and median
seconds/step and the ratio short / long.

D: a demo run directory past its vocab stage; without it the world and vocab stages run into
a temporary directory first (~15 s).
"""
import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _demo_setup  # noqa: E402
from murag import optimizers  # noqa: E402
from murag import train as train_lib  # noqa: E402
from murag import trainer as trainer_lib  # noqa: E402


def _model(d, mode):
  c = d.cfg
  if mode == "pretrain":
    return d.make_model(), 1, c.pretrain_batch, dict(c.pretrain_lengths)
  if mode == "qonly":
    return d.make_model(question_only=True), 1, c.finetune_batch, dict(c.lengths)
  slots = c.memory_slots if mode == "inbatch" else d.model_config().top_k
  return d.make_model(retrieval_mode=mode), slots, c.finetune_batch, dict(c.lengths)


def _host_batch(shapes, types, max_query, vocab_size, seed=0):
  """Random features of the right shapes; questions of 4..max_query pieces, 0-padded."""
  rng = np.random.default_rng(seed)
  batch = {}
  for k, s in shapes.items():
    if np.issubdtype(types[k], np.integer):
      hi = vocab_size if "tokens" in k else 2
      batch[k] = rng.integers(1, hi, s).astype(types[k])
    else:
      batch[k] = rng.normal(size=s).astype(types[k])
  q = batch["query_tokens"]
  lengths = rng.integers(4, max_query + 1, q.shape[0])
  q[np.arange(q.shape[1])[None, :] >= lengths[:, None]] = 0
  return batch


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--gin_file", default="gin_configs/experiments/murag_demo_reduced.gin")
  ap.add_argument("--run_dir", default=None)
  ap.add_argument("--mode", default="inbatch", choices=["inbatch", "fixed", "qonly", "pretrain"])
  ap.add_argument("--query_tokens", default="24,28")
  ap.add_argument("--segments", type=int, default=4)
  ap.add_argument("--steps", type=int, default=8)
  args = ap.parse_args(argv)
  short, long_ = sorted(int(x) for x in args.query_tokens.split(","))
  d, tmp = _demo_setup.demo_with_vocabulary(args.gin_file, args.run_dir)
  model, slots, batch_size, lengths = _model(d, args.mode)
  conv = train_lib.make_feature_converter(model, None, {"memory_slots": slots})
  runs = {}
  base = None
  for lq in (short, long_):
    shapes, types = train_lib.model_feature_shapes(batch_size, dict(lengths, query_tokens=lq),
                                                   conv)
    if base is None:
      base = _host_batch(shapes, types, short - 1, model.config.vocab_size)
    host = dict(base)
    pad = lq - base["query_tokens"].shape[1]
    host["query_tokens"] = np.pad(base["query_tokens"], ((0, 0), (0, pad)))
    tr = trainer_lib.Trainer(model=model, optimizer=optimizers.adafactor(),
                             partitioner=d.partitioner(), input_shapes=shapes,
                             input_types=types)
    state = tr.init_state(0)
    batch = tr.put_batch(host)
    metrics = jax.device_get(tr.eval_step(state.params, batch))
    t0 = time.perf_counter()
    state, _ = tr.train_step(state, batch)
    jax.block_until_ready(state)
    print(f"query_tokens={lq}: first train step (compilation) {time.perf_counter() - t0:.1f} s",
          flush=True)
    runs[lq] = dict(tr=tr, state=state, batch=batch, metrics=metrics, times=[])
  m_s, m_l = runs[short]["metrics"], runs[long_]["metrics"]
  diff = max(abs(float(np.asarray(m_s[k])) - float(np.asarray(m_l[k]))) for k in m_s)
  print(f"evaluation metrics ({', '.join(sorted(m_s))}): largest difference {diff:.3g} "
        f"(loss {float(np.asarray(m_s['loss'])):.6f} vs {float(np.asarray(m_l['loss'])):.6f})")
  for seg in range(args.segments):
    for lq, r in runs.items():
      t0 = time.perf_counter()
      state = r["state"]
      for _ in range(args.steps):
        state, metrics = r["tr"].train_step(state, r["batch"])
      jax.block_until_ready(metrics)
      r["state"] = state
      r["times"].append((time.perf_counter() - t0) / args.steps)
    print(f"segment {seg}: " + ", ".join(f"query_tokens={lq} {r['times'][-1]:.3f} s/step"
                                         for lq, r in runs.items()), flush=True)
  med = {lq: statistics.median(r["times"]) for lq, r in runs.items()}
  print(f"{args.mode}: median s/step query_tokens={short} {med[short]:.3f}, "
        f"query_tokens={long_} {med[long_]:.3f}, ratio {med[short] / med[long_]:.2f}")
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  main()
