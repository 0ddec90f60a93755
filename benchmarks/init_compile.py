"""Compile time of the parameter initialiser: XLA defaults vs `trainer.run_once_compiler_options`.

Usage:
  python benchmarks/init_compile.py [--run_dir=D] [--repeats=2]
                                    [--gin_file=gin_configs/experiments/murag_demo_reduced.gin]

D: a demo run directory that has passed the vocab stage; without it the demo's world and
vocab stages run into a temporary directory first (~15 s).

Builds the demo's pre-training Trainer (the program `Trainer.init_state` compiles at the start
of pre-training stage 1), then lowers and compiles its initialiser alternately with XLA's
default options and with the run-once options, `repeats` times each, in this process (the
in-memory caches are cleared before each compilation, the persistent cache is off). Prints
compile and run seconds of each, the ratio of the medians, and the largest difference between
the two initial train states.
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


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--gin_file", default="gin_configs/experiments/murag_demo_reduced.gin")
  ap.add_argument("--run_dir", default=None)
  ap.add_argument("--repeats", type=int, default=2)
  args = ap.parse_args(argv)
  jax.config.update("jax_enable_compilation_cache", False)
  d, tmp = _demo_setup.demo_with_vocabulary(args.gin_file, args.run_dir)
  model = d.make_model(top_k=1)
  conv = train_lib.make_feature_converter(model, None, {"memory_slots": 1})
  shapes, types = train_lib.model_feature_shapes(d.cfg.pretrain_batch, d.cfg.pretrain_lengths,
                                                 conv)
  tr = trainer_lib.Trainer(model=model, optimizer=optimizers.adafactor(),
                           partitioner=d.partitioner(), input_shapes=shapes, input_types=types)

  def init(rng):
    variables = tr._init_variables(rng)  # pylint: disable=protected-access
    params = trainer_lib._unfreeze(variables["params"])  # pylint: disable=protected-access
    return trainer_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                                  opt_state=tr.optimizer.init(params),
                                  rng=jax.random.fold_in(rng, 1))

  variants = {"xla defaults": None, "run-once options": trainer_lib.run_once_compiler_options()}
  times = {name: {"compile": [], "run": []} for name in variants}
  states = {}
  for _ in range(args.repeats):
    for name, options in variants.items():
      jax.clear_caches()  # a real compilation every time
      with jax.set_mesh(tr.partitioner.mesh):
        lowered = jax.jit(init, out_shardings=tr.state_shardings,
                          compiler_options=options).lower(jax.random.PRNGKey(0))
        t0 = time.perf_counter()
        compiled = lowered.compile()
        t1 = time.perf_counter()
        states[name] = jax.block_until_ready(compiled(jax.random.PRNGKey(0)))
        t2 = time.perf_counter()
      times[name]["compile"].append(t1 - t0)
      times[name]["run"].append(t2 - t1)
      print(f"{name:18s} compile {t1 - t0:6.2f} s   run {t2 - t1:5.2f} s", flush=True)
  med = {n: statistics.median(t["compile"]) for n, t in times.items()}
  print(f"options: {variants['run-once options']}")
  default, once = med["xla defaults"], med["run-once options"]
  print(f"median compile: defaults {default:.2f} s, run-once {once:.2f} s, "
        f"ratio {once / default:.2f}")
  a, b = (jax.tree.leaves(states[n]) for n in variants)
  diff = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(a, b))
  print(f"largest difference between the two initial states: {diff:.3g}")
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  main()
