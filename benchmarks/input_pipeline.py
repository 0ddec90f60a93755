"""Input-pipeline throughput vs. the train step's consumption (issue: data pipeline).

Goal: the pipeline is never the bottleneck — it must produce examples at least 3x as fast as
a small-model MuRAG train step consumes them on the same machine.

Steps (all in this process):
1. writes a synthetic world, converts it with the TFDS builders at 224 px (the paper's
   resolution, §4.1) and registers the tasks on it;
2. measures examples/s of `tasks.pipeline.get_dataset_iterator` at the base feature lengths
   (224 px images, 32-token queries, M = 4 memory items of 64 tokens, 32-token targets) for
   WebQA in-batch fine-tuning (5 images per example) and the stage-2 mixture CC:PAQ:VQA;
3. measures one train step of the `--model` size (gin_configs/models/murag_<model>.gin; the
   trainer's `Trainer.train_step`) on batches from the same pipeline, and prints
   pipeline examples/s divided by train-step examples/s.

Usage:
  python benchmarks/input_pipeline.py                       # small model, batch 8
  python benchmarks/input_pipeline.py --model=tiny --train_batch=8
  python benchmarks/input_pipeline.py --model=none          # pipeline only
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BASE_LENGTHS = {"query_tokens": 32, "memory_tokens": 64, "targets": 32}


def prepare(work_dir, world_size):
  """World -> TFDS (px224) -> registered tasks. Returns the vocabulary path."""
  from tasks import builders  # pylint: disable=g-import-not-at-top
  from tasks import murag_tasks  # pylint: disable=g-import-not-at-top
  from tasks import vocab  # pylint: disable=g-import-not-at-top
  from tasks.synthetic_world import generate  # pylint: disable=g-import-not-at-top
  world = os.path.join(work_dir, "world")
  generate.generate_world(world, size=world_size, seed=0)
  v = vocab.build_offline_vocabulary(world)
  data_dir = os.path.join(work_dir, "tfds")
  t = time.time()
  for source in ("webqa", "cc", "paq", "vqa"):
    builders.build(source, manual_dir=os.path.join(world, source), data_dir=data_dir,
                   config="px224")
  print(f"converted webqa/cc/paq/vqa at 224 px in {time.time() - t:.1f}s")
  murag_tasks.register_all(image_config="px224", data_dir=data_dir, vocabulary=v)
  return os.path.join(world, "vocab", "sentencepiece.model")


def pipeline_rate(name, batch_size, batches, memory_slots=4, image_size=224):
  """Examples/s of the full pipeline (read, tokenize, decode + resize, convert, batch)."""
  from tasks import feature_converters  # pylint: disable=g-import-not-at-top
  from tasks import pipeline  # pylint: disable=g-import-not-at-top
  fc = feature_converters.MuRAGFeatureConverter(memory_slots=memory_slots,
                                                image_size=image_size)
  cfg = pipeline.DatasetConfig(name, dict(BASE_LENGTHS), "train", batch_size=batch_size, seed=0)
  it = pipeline.get_dataset_iterator(cfg, feature_converter=fc)
  for _ in range(3):  # build, fill shuffle buffers, warm up
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch_size / (time.perf_counter() - t), it


def train_step_rate(model_size, vocab_path, train_batch, steps):
  """Examples/s consumed by Trainer.train_step of the given model size (after compiling)."""
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from murag import model as model_lib  # pylint: disable=g-import-not-at-top
  from murag import optimizers  # pylint: disable=g-import-not-at-top
  from murag import partitioner as partitioner_lib  # pylint: disable=g-import-not-at-top
  from murag import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from tasks import feature_converters  # pylint: disable=g-import-not-at-top
  from tasks import pipeline  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [os.path.join(root, "gin_configs", "models", f"murag_{model_size}.gin")],
      [f"default_vocabulary.vocab_path = '{vocab_path}'"])
  model = model_lib.MuRAGModel()
  fc = feature_converters.MuRAGFeatureConverter(memory_slots=4,
                                                image_size=model.config.image_size)
  cfg = pipeline.DatasetConfig("murag_pretrain_stage2", dict(BASE_LENGTHS), "train",
                               batch_size=train_batch, seed=0)
  it = pipeline.get_dataset_iterator(cfg, feature_converter=fc)
  batches = [next(it) for _ in range(steps + 1)]
  shapes, types = trainer_lib.shapes_and_types(batches[0], jax.process_count())
  partitioner = partitioner_lib.Partitioner()
  trainer = trainer_lib.Trainer(model=model, optimizer=optimizers.adafactor(),
                                partitioner=partitioner, input_shapes=shapes,
                                input_types=types)
  t = time.perf_counter()
  state = trainer.init_state(0)
  state, metrics = trainer.train_step(state, partitioner.host_batch_to_global(batches[0]))
  jax.block_until_ready(metrics)  # compile + first step
  print(f"train step murag_{model_size}: init + compile + first step "
        f"{time.perf_counter() - t:.1f}s", flush=True)
  t = time.perf_counter()
  for b in batches[1:]:
    state, metrics = trainer.train_step(state, partitioner.host_batch_to_global(b))
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t) / steps
  return train_batch / step_s, step_s


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--world_size", default="small", choices=["small", "medium", "large"])
  p.add_argument("--batch_size", type=int, default=32, help="pipeline benchmark batch")
  p.add_argument("--batches", type=int, default=20, help="timed pipeline batches")
  p.add_argument("--model", default="small", help="tiny|small|base|large|none")
  p.add_argument("--train_batch", type=int, default=8)
  p.add_argument("--train_steps", type=int, default=3)
  p.add_argument("--work_dir", default=None, help="default: a temporary directory")
  args = p.parse_args()
  work = args.work_dir or tempfile.mkdtemp(prefix="murag_input_bench_")
  try:
    vocab_path = prepare(work, args.world_size)
    rates = {}
    for name in ("webqa_inbatch_v1", "murag_pretrain_stage2"):
      rates[name], _ = pipeline_rate(name, args.batch_size, args.batches)
      print(f"pipeline {name:24s} {rates[name]:8.1f} examples/s  (batch {args.batch_size}, "
            f"224 px, Lq=32, M=4 x Lm=64, Lt=32)", flush=True)
    if args.model != "none":
      train_rate, step_s = train_step_rate(args.model, vocab_path, args.train_batch,
                                           args.train_steps)
      print(f"train step murag_{args.model}: {step_s:.2f} s/step at batch {args.train_batch} "
            f"= {train_rate:.2f} examples/s")
      for name, r in rates.items():
        ratio = r / train_rate
        print(f"ratio pipeline/train_step [{name}]: {ratio:.1f}x "
              f"({'meets' if ratio >= 3 else 'MISSES'} the >= 3x goal)")
  finally:
    if not args.work_dir:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
