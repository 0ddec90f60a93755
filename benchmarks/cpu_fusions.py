"""Train-step compile time, step time and numerics under XLA CPU library-fusion options.

Usage:
  python benchmarks/cpu_fusions.py [--run_dir=D] [--programs=pretrain_stage1,finetune_inbatch]
      [--variants='{"reduce": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}']
      [--compiles=2] [--rounds=6] [--steps=5]
      [--gin_file=gin_configs/experiments/murag_demo_reduced.gin]

D: a demo run directory that has passed the vocab stage; without it the demo's world and
vocab stages run into a temporary directory first (~15 s).

For each of the demo's training programs (the stages' (model, optimizer schedule, batch,
memory slots, lengths), `Demo.train_program`), the train step is compiled with XLA's
defaults and with each variant's `xla_cpu_experimental_ynn_fusion_type` (which ops XLA hands
to YNNPACK as fused library calls: dots only by default; `trainer.CPU_STEP_COMPILER_OPTIONS`
is what the project uses). Compile time: each variant `compiles` times, alternating, each in
a fresh process (a process that compiled a program before compiles it again faster, even with
its caches cleared). Step time: the variants' steps run from one initial state on one random
batch in alternation, `rounds` x `steps` steps each, in this process. Prints median compile
and step seconds, their ratios to the defaults, and the largest difference between the train
states after all those steps (0 = bit-identical training).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _demo_setup  # noqa: E402
from murag import train as train_lib  # noqa: E402
from murag import trainer as trainer_lib  # noqa: E402

OPTION = "xla_cpu_experimental_ynn_fusion_type"


def random_batch(shapes, types, vocab_size, seed=0):
  rng = np.random.default_rng(seed)
  batch = {}
  for k, shape in shapes.items():
    dtype = np.dtype(types[k])
    if k.endswith("tokens"):
      batch[k] = rng.integers(0, vocab_size, shape).astype(dtype)
    elif dtype == np.uint8:
      batch[k] = rng.integers(0, 256, shape).astype(dtype)
    elif np.issubdtype(dtype, np.integer):
      batch[k] = rng.integers(0, 2, shape).astype(dtype)
    else:
      batch[k] = rng.normal(size=shape).astype(dtype)
  return batch


def build_trainer(d, program):
  """The stage's Trainer, its jitted steps without the project's CPU step options."""
  trainer_lib.step_compiler_options = lambda: None
  model, steps, batch, slots, lengths = d.train_program(program)
  conv = train_lib.make_feature_converter(model, None, {"memory_slots": slots})
  shapes, types = train_lib.model_feature_shapes(batch, lengths, conv)
  tr = trainer_lib.Trainer(model=model, optimizer=d.optimizer(steps),
                           partitioner=d.partitioner(), input_shapes=shapes, input_types=types)
  return tr, batch, slots, shapes, types


def compile_once(d, program, options):
  """Compile seconds of `program`'s train step in this (fresh) process."""
  tr = build_trainer(d, program)[0]
  lowered = tr.lower_train_step()
  jax.jit(lambda x: x + 1)(1.0).block_until_ready()  # backend start-up is not compilation
  t0 = time.perf_counter()
  lowered.compile(compiler_options=options or {})
  return time.perf_counter() - t0


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--gin_file", default="gin_configs/experiments/murag_demo_reduced.gin")
  ap.add_argument("--run_dir", default=None)
  ap.add_argument("--programs", default="pretrain_stage1,finetune_inbatch,finetune_fixed,"
                                        "baseline")
  ap.add_argument("--variants", default=json.dumps(
      {"dot+reduce": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}))
  ap.add_argument("--compiles", type=int, default=2)
  ap.add_argument("--rounds", type=int, default=6)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--compile_only", default=None, help=argparse.SUPPRESS)  # program:variant
  args = ap.parse_args(argv)
  if jax.default_backend() != "cpu":
    sys.exit("this benchmark measures XLA:CPU options; the default backend is "
             f"{jax.default_backend()}")
  jax.config.update("jax_enable_compilation_cache", False)
  variants = {"defaults": None}
  variants.update({k: {OPTION: v} for k, v in json.loads(args.variants).items()})
  if args.compile_only:
    program, variant = args.compile_only.split(":")
    d, _ = _demo_setup.demo_with_vocabulary(args.gin_file, args.run_dir)
    print(f"COMPILE_SECONDS {compile_once(d, program, variants[variant]):.3f}")
    return
  d, tmp = _demo_setup.demo_with_vocabulary(args.gin_file, args.run_dir)
  run_dir = args.run_dir or d.run_dir
  print(f"variants ({OPTION}): " + ", ".join(f"{k} = {(v or {}).get(OPTION, 'XLA default')}"
                                             for k, v in variants.items()))
  for program in args.programs.split(","):
    compile_s = {k: [] for k in variants}
    for _ in range(args.compiles):
      for name in variants:
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), f"--gin_file={args.gin_file}",
             f"--run_dir={run_dir}", f"--variants={args.variants}",
             f"--compile_only={program}:{name}"], capture_output=True, text=True, check=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("COMPILE_SECONDS")][-1]
        compile_s[name].append(float(line.split()[1]))
    tr, batch, slots, shapes, types = build_trainer(d, program)
    lowered = tr.lower_train_step()
    compiled = {name: lowered.compile(compiler_options=options or {})
                for name, options in variants.items()}
    batch_arrays = tr.put_batch(random_batch(shapes, types, d.model_vocab_size))
    states = {name: tr.init_state(0) for name in variants}
    step_s = {k: [] for k in variants}
    with jax.set_mesh(tr.partitioner.mesh):
      for name in variants:  # warm-up
        states[name], m = compiled[name](states[name], batch_arrays)
        jax.block_until_ready(m)
      for _ in range(args.rounds):
        for name in variants:
          t0 = time.perf_counter()
          for _ in range(args.steps):
            states[name], m = compiled[name](states[name], batch_arrays)
          jax.block_until_ready(m)
          step_s[name].append((time.perf_counter() - t0) / args.steps)
    ref_c, ref_s = statistics.median(compile_s["defaults"]), statistics.median(step_s["defaults"])
    ref_params = jax.device_get(states["defaults"].params)
    print(f"\n{program} (batch {batch}, {slots} memory slot(s)), "
          f"{1 + args.rounds * args.steps} steps per variant")
    for name in variants:
      c, s = statistics.median(compile_s[name]), statistics.median(step_s[name])
      diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
          jax.tree.leaves(jax.device_get(states[name].params)), jax.tree.leaves(ref_params)))
      print(f"  {name:12s} compile {c:6.1f} s ({c / ref_c:4.2f}x)   step {s:6.3f} s "
            f"({s / ref_s:4.2f}x)   max |param - defaults| {diff:.3g}")
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  main()
