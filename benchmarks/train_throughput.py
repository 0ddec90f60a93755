r"""Trainer overhead: `murag.train.train` vs a bare jitted step on the same model and batches.

  python benchmarks/train_throughput.py [--steps=60] [--warmup=10] [--batch=16]

Both loops run the tiny MuRAG model (gin_configs/models/murag_tiny.gin sizes) with the same
optimizer (Adafactor, constant LR), the same sharding (8 simulated CPU devices, data=4 x model=2)
and the same pre-generated host batches (so input cost is excluded from both). The trainer's
time for N steps is measured as the difference between a (warmup + N)-step run and a
warmup-step run, each in a fresh MODEL_DIR, so compilation and the final checkpoint cancel out.
Prints steps/s of each and the ratio trainer / bare (goal >= 0.95, i.e. overhead <= 5%).
The comparison against t5x's own trainer is not implemented in this script.
"""
import argparse
import os
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from murag import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from murag import model as model_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from murag import optimizers  # pylint: disable=g-import-not-at-top,wrong-import-position
from murag import partitioner as partitioner_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from murag import train as train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from murag import trainer as trainer_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = dict(vocab_size=1664, emb_dim=32, num_heads=2, head_dim=16, num_encoder_layers=2,
            num_decoder_layers=2, mlp_dim=64, image_size=32, vit_patch_size=16, vit_width=32,
            vit_depth=1, vit_mlp_dim=64, vit_num_heads=2)


def make_batches(batch, n=4, lq=16, m=4, lm=16, lt=8, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    b = {
        "query_tokens": rng.integers(2, 1600, (batch, lq)).astype(np.int32),
        "query_image": rng.integers(0, 255, (batch, 32, 32, 3)).astype(np.uint8),
        "query_image_mask": np.ones(batch, np.int32),
        "memory_tokens": rng.integers(2, 1600, (batch, m, lm)).astype(np.int32),
        "memory_images": rng.integers(0, 255, (batch, m, 32, 32, 3)).astype(np.uint8),
        "memory_image_mask": np.ones((batch, m), np.int32),
        "memory_mask": np.ones((batch, m), np.int32),
        "memory_labels": np.eye(m, dtype=np.int32)[np.zeros(batch, int)],
        "memory_ids": np.arange(batch * m, dtype=np.int32).reshape(batch, m),
        "memory_scores": np.zeros((batch, m), np.float32),
        "retrieve": np.ones(batch, np.int32),
        "decoder_input_tokens": rng.integers(2, 1600, (batch, lt)).astype(np.int32),
        "decoder_target_tokens": rng.integers(2, 1600, (batch, lt)).astype(np.int32),
        "decoder_loss_weights": np.ones((batch, lt), np.int32),
    }
    out.append(b)
  return out


class CyclingIterator:
  """In-memory batches with the BatchIterator get_state / set_state contract."""

  def __init__(self, batches):
    self.batches, self.i = batches, 0

  def __iter__(self):
    return self

  def __next__(self):
    b = self.batches[self.i % len(self.batches)]
    self.i += 1
    return b

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = int(state["i"])


def run_trainer(model, batches, steps, partitioner):
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    train_lib.train(
        model=model, train_dataset_cfg=None,
        checkpoint_cfg=checkpoints.CheckpointConfig(period=10**9, keep=1),
        partitioner=partitioner, total_steps=steps, model_dir=d,
        optimizer=optimizers.adafactor(),
        get_dataset_fn=lambda cfg, **kw: CyclingIterator(batches), log_period=10**9)
    return time.perf_counter() - t0


def run_bare(model, batches, warmup, steps, partitioner):
  shapes, types = trainer_lib.shapes_and_types(batches[0])
  trainer = trainer_lib.Trainer(model=model, optimizer=optimizers.adafactor(),
                                partitioner=partitioner, input_shapes=shapes, input_types=types)
  state = trainer.init_state(0)
  step = jax.jit(trainer._train_step_impl, donate_argnums=(0,))  # pylint: disable=protected-access
  it = CyclingIterator(batches)
  with jax.set_mesh(partitioner.mesh):
    for _ in range(warmup):
      state, metrics = step(state, partitioner.host_batch_to_global(next(it)))
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, partitioner.host_batch_to_global(next(it)))
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--warmup", type=int, default=10)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  model = model_lib.MuRAGModel(model_lib.MuRAGConfig(**TINY))
  batches = make_batches(args.batch)
  partitioner = partitioner_lib.Partitioner(num_partitions=2)
  bare, ours = [], []
  for _ in range(args.repeats):
    bare.append(run_bare(model, batches, args.warmup, args.steps, partitioner))
    short = run_trainer(model, batches, args.warmup, partitioner)
    full = run_trainer(model, batches, args.warmup + args.steps, partitioner)
    ours.append(max(full - short, 1e-9))
  bare_sps, ours_sps = args.steps / min(bare), args.steps / min(ours)
  print(f"bare jitted step : {bare_sps:8.2f} steps/s  (best of {args.repeats})")
  print(f"murag trainer    : {ours_sps:8.2f} steps/s  (best of {args.repeats})")
  print(f"ratio trainer/bare = {ours_sps / bare_sps:.3f}  (goal >= 0.95)")


if __name__ == "__main__":
  main()
