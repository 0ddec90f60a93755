r"""Training throughput: our trainer vs a bare jitted step, and vs t5x's own trainer.

  python benchmarks/train_throughput.py [--steps=20] [--segments=8] [--batch=16] [--no_t5x]

Issue #5 goals: `murag.train.train` runs at >= 0.95x the steps/s of a bare jitted train step
(trainer overhead <= 5%), and at >= 1.0x the steps/s of t5x's trainer when t5x is importable.

What runs (one process, 8 simulated CPU devices, mesh data=4 x model=2):

* model: the tiny MuRAG (`TINY` below, the sizes of gin_configs/models/murag_tiny.gin), global
  batch `--batch`, 4 memory slots, 32x32 images; the same 4 pre-generated host batches cycled
  by every loop (so input cost is the same, near zero, for all three).
* optimizer: the same optax transformation object everywhere,
  `murag.optimizers.adafactor()` (factored Adafactor, decay 0.8, clipping 1.0, constant LR
  5e-4); t5x runs it through its `OptaxWrapper` (see `_register_factored_state_rule`).
* "ours": `murag.train.train(...)` itself, the full loop: data iterator `next`, host batch to
  global sharded batch, the jitted step (donated state), per-step metric bookkeeping,
  one metrics write (NaN check + device_get + TensorBoard + console) every `--log_period`
  steps (default: once per segment), checkpoint-period checks (`--checkpoint_period`,
  default 1000: no save falls inside the timed segments) and the data-iterator wrapping;
  `train`'s defaults otherwise (no `grad_norm` metric, as in t5x).
* "bare": the same compiled program (`Trainer._train_step`: same shardings, donation) driven
  by a minimal loop: `state, metrics = step(state, jax.device_put(batch, sharding))`.
* "t5x" (only when t5x is importable): `t5x.trainer.Trainer.train(batch_iter, N)` on the same
  model through `murag/t5x_adapter.py`, t5x's partitioner (a `PjitPartitioner` using our
  mesh and logical axis rules), t5x's train state from `t5x.utils.TrainStateInitializer`,
  t5x's per-step clu-metric merging and its metrics summary (TensorBoard) once per call.
  This is t5x's inner train loop; `t5x.train.train`'s outer loop (checkpoints, evals between
  epochs) is not timed, so t5x gets no per-epoch cost here while ours pays its own loop.

Timing: warmup (compilation + the first `--steps` steps) is excluded for every loop. Our
trainer runs once for `(segments + 1) * steps + 1` steps; a `step_callback` blocks on the
state at every segment boundary, records our segment time, then runs one bare segment and
one t5x segment of `--steps` steps each (blocking before and after) before our clock restarts.
The three loops therefore alternate segment by segment under the same machine load. Per
segment it prints each loop's steps/s and the ratios; the summary uses total time over all
segments (and the median of the per-segment ratios, less sensitive to load spikes), and each
loop's main-thread CPU time per step (`time.thread_time`: the host work of the loop itself,
dispatch included, plus any CPU the thread spends spinning while it waits for the devices;
XLA computes in its own threads) and the process CPU time of all threads per step
(`time.process_time`, XLA's threads included): the work per step of each loop, whatever
share of the cores the scheduler gave it. Both are less sensitive to other processes' load
than wall time, but not insensitive (waiting threads may spin; background threads of one
loop that outlive its segment are charged to the next segment).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.sharding import PartitionSpec  # pylint: disable=g-import-not-at-top,wrong-import-position

from murag import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from murag import model as model_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from murag import optimizers  # pylint: disable=g-import-not-at-top,wrong-import-position
from murag import partitioner as partitioner_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from murag import t5x_adapter  # pylint: disable=g-import-not-at-top,wrong-import-position
from murag import train as train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from murag import trainer as trainer_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = dict(vocab_size=1664, emb_dim=32, num_heads=2, head_dim=16, num_encoder_layers=2,
            num_decoder_layers=2, mlp_dim=64, image_size=32, vit_patch_size=16, vit_width=32,
            vit_depth=1, vit_mlp_dim=64, vit_num_heads=2)
MEMORY_SLOTS = 4


def make_batches(batch, n=4, lq=16, m=MEMORY_SLOTS, lm=16, lt=8, seed=0):
  """`n` random host batches with every MuRAG model feature (tasks/features.py)."""
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


class BareLoop:
  """The trainer's compiled step (same shardings, donation) in a minimal Python loop."""

  def __init__(self, model, optimizer, partitioner, batches):
    shapes, types = trainer_lib.shapes_and_types(batches[0])
    self.trainer = trainer_lib.Trainer(model=model, optimizer=optimizer,
                                       partitioner=partitioner, input_shapes=shapes,
                                       input_types=types)
    self.state = self.trainer.init_state(0)
    self.sharding = partitioner.batch_sharding()
    self.mesh = partitioner.mesh
    self.batches = batches
    self.i = 0

  def run(self, steps: int) -> tuple[float, float]:
    """Runs `steps` steps; returns (wall time, main-thread CPU time), blocking around them."""
    step_fn = self.trainer._train_step  # pylint: disable=protected-access
    state, metrics = self.state, None
    jax.block_until_ready(state)
    t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
    with jax.set_mesh(self.mesh):
      for _ in range(steps):
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        state, metrics = step_fn(state, jax.device_put(batch, self.sharding))
    jax.block_until_ready((state, metrics))
    self.state = state
    return (time.perf_counter() - t0, time.thread_time() - c0, time.process_time() - p0)


def _register_factored_state_rule(t5x_optimizers):
  """Lets t5x's OptaxWrapper partition optax's Adafactor state like our trainer does.

  t5x's `OptaxStatePartitionRules` has no rule for `optax.FactoredState` (its docstring asks
  users to add rules for further states). Same layout as `Partitioner.opt_state_shardings`:
  `v` leaves of parameter shape follow their parameter's logical axes; the factored row /
  column statistics and the (1,)-shaped placeholders are replicated.
  """
  import optax  # pylint: disable=g-import-not-at-top
  rules = t5x_optimizers.OptaxStatePartitionRules._RULES  # pylint: disable=protected-access
  if optax.FactoredState in rules:
    return

  def is_spec(x):
    return x is None or isinstance(x, PartitionSpec)

  def rule(state, params_axes):
    def follow(axes, v):
      return axes if axes is not None and np.ndim(v) == len(axes) else None
    return optax.FactoredState(
        count=None,
        v_row=jax.tree.map(lambda _, v: None, params_axes, state.v_row, is_leaf=is_spec),
        v_col=jax.tree.map(lambda _, v: None, params_axes, state.v_col, is_leaf=is_spec),
        v=jax.tree.map(follow, params_axes, state.v, is_leaf=is_spec))

  rules[optax.FactoredState] = rule


class T5XLoop:
  """t5x's own Trainer (t5x.trainer.Trainer.train) on the same model, optimizer and mesh."""

  def __init__(self, optimizer, partitioner, batches, summary_dir):
    from t5x import optimizers as t5x_optimizers  # pylint: disable=g-import-not-at-top
    from t5x import partitioning as t5x_partitioning  # pylint: disable=g-import-not-at-top
    from t5x import trainer as t5x_trainer  # pylint: disable=g-import-not-at-top
    from t5x import utils as t5x_utils  # pylint: disable=g-import-not-at-top
    _register_factored_state_rule(t5x_optimizers)
    mesh = partitioner.mesh

    class FixedMeshPartitioner(t5x_partitioning.PjitPartitioner):
      """t5x's PjitPartitioner on our (data=4, model=2) mesh (t5x's CPU default is 1 x 8)."""

      @property
      def mesh(self):
        return mesh

    self.partitioner = FixedMeshPartitioner(num_partitions=mesh.shape["model"],
                                            logical_axis_rules=partitioner.rules)
    self.model = t5x_adapter.t5x_model(config=model_lib.MuRAGConfig(**TINY),
                                       optimizer_def=t5x_optimizers.OptaxWrapper(optimizer),
                                       memory_slots=MEMORY_SLOTS)
    shapes = {k: v.shape for k, v in batches[0].items()}
    types = {k: v.dtype for k, v in batches[0].items()}
    init = t5x_utils.TrainStateInitializer(
        optimizer_def=self.model.optimizer_def, init_fn=self.model.get_initial_variables,
        input_shapes=shapes, input_types=types, partitioner=self.partitioner)
    self.trainer = t5x_trainer.Trainer(
        model=self.model, train_state=init.from_scratch(jax.random.PRNGKey(0)),
        partitioner=self.partitioner, eval_names=[], summary_dir=summary_dir,
        train_state_axes=init.train_state_axes, rng=jax.random.PRNGKey(1),
        learning_rate_fn=optimizer.learning_rate_fn, num_microbatches=None)
    self.iterator = CyclingIterator(batches)

  def run(self, steps: int) -> tuple[float, float]:
    """`steps` steps of t5x's loop incl. its metrics summary; (wall, main-thread CPU) time."""
    jax.block_until_ready(self.trainer.train_state)
    t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
    summary = self.trainer.train(self.iterator, steps)
    summary.result()  # t5x computes and writes the metrics summary in a thread
    jax.block_until_ready(self.trainer.train_state)
    return (time.perf_counter() - t0, time.thread_time() - c0, time.process_time() - p0)

  def close(self):
    self.trainer.close()


def t5x_available() -> bool:
  try:
    t5x_adapter.require_t5x()
    import t5x.trainer  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError as e:
    print(f"t5x is not importable ({str(e)[:120]}...): skipping the t5x comparison.")
    return False


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=20, help="steps per timed segment")
  parser.add_argument("--segments", type=int, default=8, help="timed segments per loop")
  parser.add_argument("--batch", type=int, default=16, help="global batch size")
  parser.add_argument("--log_period", type=int, default=0,
                      help="our trainer's log period (default: --steps, one log per segment)")
  parser.add_argument("--checkpoint_period", type=int, default=1000)
  parser.add_argument("--no_t5x", action="store_true", help="skip the t5x comparison")
  args = parser.parse_args()
  steps, segments = args.steps, args.segments
  log_period = args.log_period or steps

  model = model_lib.MuRAGModel(model_lib.MuRAGConfig(**TINY))
  optimizer = optimizers.adafactor()
  batches = make_batches(args.batch)
  partitioner = partitioner_lib.Partitioner(num_partitions=2)
  print(f"devices={jax.device_count()} mesh={dict(partitioner.mesh.shape)} "
        f"batch={args.batch} segments={segments} x {steps} steps, log_period={log_period}, "
        f"checkpoint_period={args.checkpoint_period}, load average "
        f"{os.getloadavg()[0]:.2f}", flush=True)

  tmp = tempfile.TemporaryDirectory()
  bare = BareLoop(model, optimizer, partitioner, batches)
  bare.run(steps)  # warmup: compilation + one segment
  t5x = None
  if not args.no_t5x and t5x_available():
    t5x = T5XLoop(optimizer, partitioner, batches, os.path.join(tmp.name, "t5x"))
    t5x.run(steps)  # warmup

  times = {"ours": [], "bare": [], "t5x": []}
  cpu = {"ours": [], "bare": [], "t5x": []}  # main-thread CPU seconds per segment
  work = {"ours": [], "bare": [], "t5x": []}  # CPU seconds of all threads per segment
  clock = {}

  def on_step(step, state):
    if step % steps:
      return
    jax.block_until_ready(state)
    now, now_cpu, now_work = time.perf_counter(), time.thread_time(), time.process_time()
    if step > steps:  # the first segment (compilation) is warmup
      times["ours"].append(now - clock["start"])
      cpu["ours"].append(now_cpu - clock["cpu"])
      work["ours"].append(now_work - clock["work"])
      for name, loop in (("bare", bare), ("t5x", t5x)):
        if loop is not None:
          wall, used, total_cpu = loop.run(steps)
          times[name].append(wall)
          cpu[name].append(used)
          work[name].append(total_cpu)
      k = len(times["ours"]) - 1
      line = (f"segment {k}: ours {steps / times['ours'][k]:6.2f}  bare "
              f"{steps / times['bare'][k]:6.2f}")
      if t5x is not None:
        line += f"  t5x {steps / times['t5x'][k]:6.2f}"
      line += f" steps/s  ours/bare {times['bare'][k] / times['ours'][k]:.3f}"
      if t5x is not None:
        line += f"  ours/t5x {times['t5x'][k] / times['ours'][k]:.3f}"
      print(line + f"  (load {os.getloadavg()[0]:.2f})", flush=True)
    clock["start"], clock["cpu"] = time.perf_counter(), time.thread_time()
    clock["work"] = time.process_time()

  train_lib.train(
      model=model, train_dataset_cfg=None,
      checkpoint_cfg=checkpoints.CheckpointConfig(period=args.checkpoint_period, keep=1),
      partitioner=partitioner, total_steps=(segments + 1) * steps + 1,
      model_dir=os.path.join(tmp.name, "ours"), optimizer=optimizer,
      get_dataset_fn=lambda cfg, **kw: CyclingIterator(batches), log_period=log_period,
      step_callback=on_step)
  if t5x is not None:
    t5x.close()
  tmp.cleanup()

  total = {k: sum(v) for k, v in times.items() if v}
  n = steps * segments
  print(f"bare jitted step : {n / total['bare']:7.2f} steps/s")
  print(f"murag trainer    : {n / total['ours']:7.2f} steps/s")
  ratio = total["bare"] / total["ours"]
  med = statistics.median(b / o for b, o in zip(times["bare"], times["ours"]))
  print(f"ratio trainer/bare = {ratio:.3f} (median of segments {med:.3f}; goal >= 0.95)")
  if "t5x" in total:
    print(f"t5x trainer      : {n / total['t5x']:7.2f} steps/s")
    ratio = total["t5x"] / total["ours"]
    med = statistics.median(t / o for t, o in zip(times["t5x"], times["ours"]))
    print(f"ratio ours/t5x = {ratio:.3f} (median of segments {med:.3f}; goal >= 1.0)")
  # Host work of each loop in the main Python thread (dispatch, batch placement, bookkeeping,
  # spinning while waiting; XLA computes in its own threads).
  print("main-thread CPU ms/step: " + ", ".join(
      f"{k} {1e3 * sum(v) / n:.2f}" for k, v in cpu.items() if v))
  # CPU time of every thread of the process (XLA's included) per step: the work each loop
  # costs, whatever share of the cores the scheduler gave it. Background threads of a loop
  # that outlive its segment are charged to the next segment (ours follows t5x).
  print("process CPU ms/step (all threads): " + ", ".join(
      f"{k} {1e3 * sum(v) / n:.1f}" for k, v in work.items() if v))
  print(f"work ratio bare/ours = {sum(work['bare']) / sum(work['ours']):.3f}" + (
      f", t5x/ours = {sum(work['t5x']) / sum(work['ours']):.3f}" if work["t5x"] else ""))
  print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
