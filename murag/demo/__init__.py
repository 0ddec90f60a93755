r"""The end-to-end MuRAG demo on the synthetic world (paper §3.3, §3.4, §4.2, Table 4 / 5).

  python -m murag.demo --run_dir=runs/demo [--gin_file=...murag_demo_reduced.gin]

A thin orchestrator over the project's components. Every stage is a function; when it
finishes it writes `<run_dir>/stages/<stage>.json` (its summary), so a rerun skips finished
stages (and the trainer itself resumes an interrupted stage from its newest checkpoint).

Stages (all artifacts under run_dir):
  world                tasks.synthetic_world.generate_world          -> world/
  compile_ahead        the MuRAG train steps, compiled ahead         -> jax_cache/
  vocab                tasks.vocab.build_offline_vocabulary          -> world/vocab/
  tfds                 tasks.builders.build (every source)           -> tfds/
  pretrain_stage1      murag.train on murag_pretrain_stage1 (LAION)  -> pretrain_stage1/
  pretrain_stage2      murag.train on murag_pretrain_stage2 (1:1:1)  -> pretrain_stage2/
  finetune_inbatch     murag.train on webqa_inbatch_v1               -> finetune_inbatch/
  baseline             the same model, question only (use_memory=False) -> baseline_qonly/
  evaluate_baseline    murag.infer.predict_and_score, question-only  -> eval/*baseline/
  memory               murag.build_memory: encode + index + neighbours -> memory/
  evaluate_distractor  the in-batch model, each batch's candidates   -> eval/*distractor/
  finetune_fixed       murag.train on webqa_fixed_v1                 -> finetune_fixed/
  evaluate             the full-wiki setting; the table of all three -> eval/murag_fullwiki/
  export               murag.export.export_bundle                    -> export/
  examples             three validation questions with attribution   -> examples.txt
The table (paper Table 4 shape) is printed and written to results.md / results.json.

With DemoConfig.concurrent_stages, the stages that the MuRAG chain (in-batch fine-tuning,
memory, fixed retrieval, full-wiki evaluation) does not read run in a second process beside
it: `compile_ahead` from the start (pre-training's initialiser and train step, then the
fine-tuning stages' train steps, compiled into the run's persistent compilation cache while the
world is generated and before those stages need them),
`baseline` + `evaluate_baseline` from the start of in-batch fine-tuning, `evaluate_distractor`
from the start of the memory stage (CONCURRENT_STAGES).

The question-only baseline is the same network trained and evaluated with
MuRAGConfig.use_memory = False (the reader sees only [CLS]; the question; no memory item is
encoded) and no contrastive loss: "same model, no memory".
"""
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_GIN = os.path.join(REPO_ROOT, "gin_configs", "experiments", "murag_demo_full.gin")
IMAGE_CATEGORIES = ("color", "shape", "number", "Others", "YesNo", "choose")
STAGES = ("world", "compile_ahead", "vocab", "tfds", "pretrain_stage1", "pretrain_stage2",
          "finetune_inbatch", "baseline", "evaluate_baseline", "memory", "evaluate_distractor",
          "finetune_fixed", "evaluate", "export", "examples")
# The stages whose outputs each stage reads.
STAGE_INPUTS = {
    "world": (), "compile_ahead": (), "vocab": ("world",), "tfds": ("vocab",),
    "pretrain_stage1": ("tfds",),
    "pretrain_stage2": ("pretrain_stage1",), "finetune_inbatch": ("pretrain_stage2",),
    "baseline": ("pretrain_stage2",), "evaluate_baseline": ("baseline",),
    "evaluate_distractor": ("finetune_inbatch",), "memory": ("finetune_inbatch",),
    "finetune_fixed": ("memory",),
    "evaluate": ("evaluate_baseline", "evaluate_distractor", "memory", "finetune_fixed"),
    "export": ("finetune_fixed",), "examples": ("evaluate",)}
# With DemoConfig.concurrent_stages: when the main process reaches the key, a child process
# starts the value's unfinished stages (which come after the key in STAGES); the main process
# waits for it only before a stage that reads one of them (or at the end).
CONCURRENT_STAGES = {"world": ("compile_ahead",),
                     "finetune_inbatch": ("baseline", "evaluate_baseline"),
                     "memory": ("evaluate_distractor",)}


@gin.configurable
@dataclasses.dataclass
class DemoConfig:
  """Sizes and schedules of the demo (values in gin_configs/experiments/murag_demo_*.gin)."""
  world_size: str = "medium"
  seed: int = 0
  image_config: str = "px64"
  # SentencePiece pieces requested from the vocab stage. The model's embedding and logits
  # have this + 100 extra ids rows, an upper bound of the trained vocabulary (SentencePiece
  # returns fewer pieces when the corpus cannot support more; T5's 32128 rows hold 32100 ids
  # the same way), so every program is known before the vocabulary exists.
  vocab_size: int = 1500
  lengths: Dict[str, int] = dataclasses.field(
      default_factory=lambda: {"query_tokens": 28, "memory_tokens": 28, "targets": 8})
  # Pre-training targets are whole captions ("a picture of two pink triangles and a gray bar
  # at the bottom", up to ~20 pieces): cutting them at the answers' length would drop the
  # shape and bar words that teach the model to read them from pixels.
  pretrain_lengths: Dict[str, int] = dataclasses.field(
      default_factory=lambda: {"query_tokens": 28, "memory_tokens": 28, "targets": 24})
  learning_rate: float = 3e-3
  # Each training stage decays its learning rate over its own steps ("constant", "linear",
  # "cosine"; murag.optimizers.learning_rate_schedule) down to lr_final_fraction of it.
  lr_decay: str = "cosine"
  lr_final_fraction: float = 0.1
  pretrain1_steps: int = 100
  pretrain2_steps: int = 150
  pretrain_batch: int = 32
  finetune_steps: int = 200
  baseline_steps: int = 200
  finetune_batch: int = 16
  memory_slots: int = 4
  fixed_steps: int = 100
  eval_batch: int = 16
  eval_max_examples: Optional[int] = None
  num_decodes: int = 2
  log_period: int = 10
  # tf.data autotuning of the input pipelines (tasks.pipeline.DatasetConfig.autotune). Off:
  # in this process, deleting an autotuned iterator at the end of a stage at times blocked
  # 25-55 s at 0% CPU, waiting for the sleeping tuning thread (docs/readme/demo.md).
  data_autotune: bool = False
  # Checkpoints written per training stage (evenly spaced, the last at the stage's end); an
  # interrupted stage resumes from its newest one.
  checkpoints_per_stage: int = 2
  export_saved_model: bool = True
  mmqa: bool = True
  # Run the stages the MuRAG chain does not read (compiling its fine-tuning steps ahead,
  # question-only training and evaluation, the distractor evaluation) in a second process
  # beside it (CONCURRENT_STAGES). It overlaps
  # one process's single-threaded tracing, compilation and input start-up with the other's
  # work (docs/readme/demo.md).
  concurrent_stages: bool = True
  # Niceness added to that process: the MuRAG chain is the critical path, the concurrent
  # stages have slack until the full-wiki evaluation reads them.
  concurrent_nice: int = 10


class StageOrderError(ValueError):
  """--stages names a stage whose predecessors have not finished."""


# ------------------------------------------------------------------------------ progress
class Progress:
  """Stage-level progress with an ETA weighted by each stage's configured work."""

  def __init__(self, weights: Dict[str, float]):
    self.weights = weights
    self.done_weight = 0.0   # work of every finished stage (run now or earlier)
    self.real_weight = 0.0   # work of the stages run in this process
    self.spent = 0.0         # their seconds

  def log(self, msg: str):
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)

  def eta(self) -> str:
    if self.real_weight <= 0:
      return "unknown until a stage finishes"
    rate = self.spent / self.real_weight
    return _fmt(rate * (sum(self.weights.values()) - self.done_weight))

  def finish(self, stage: str, seconds: float, skipped: bool):
    self.done_weight += self.weights.get(stage, 0.0)
    if not skipped:
      self.real_weight += self.weights.get(stage, 0.0)
      self.spent += seconds


def _fmt(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 60}m{seconds % 60:02d}s"


def _touch(path: str) -> None:
  with open(path, "w"):
    pass


class ProgressIterator:
  """Wraps a BatchIterator: prints step / total and the stage ETA every `period` batches."""

  def __init__(self, it, stage: str, total: int, period: int, log: Callable[[str], None],
               before_first: Optional[Callable[[], Any]] = None):
    self.it, self.stage, self.total, self.period, self.log = it, stage, total, period, log
    self.t = None
    self.t_step = None
    self.before_first = before_first  # called once, before the first batch is returned

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self.it)
    if self.before_first is not None:
      self.before_first, before_first = None, self.before_first
      before_first()
    step = self.it.get_state()["batches_consumed"]
    now = time.time()
    if self.t is None:
      self.t, self.t_step = now, step
    elif step % self.period == 0 or step == self.total:
      rate = (now - self.t) / max(step - self.t_step, 1)
      self.log(f"  {self.stage}: step {step}/{self.total}, {rate:.2f} s/step, "
               f"stage ETA {_fmt(rate * (self.total - step))}")
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)
    self.t = None


# ------------------------------------------------------------------------------ the demo
class Demo:
  """Runs the stages under one run directory (see the module docstring).

  `argv` (the command line's --gin_file / --gin. arguments) lets `run` start a stage in a
  child `python -m murag.demo` process with the same configuration (concurrent_stages).
  """

  def __init__(self, run_dir: str, cfg: DemoConfig, argv: Optional[List[str]] = None):
    self.run_dir = os.path.abspath(run_dir)
    self.cfg = cfg
    self.argv = argv
    self._children: Dict[str, Any] = {}
    self._ahead_waits: Dict[str, float] = {}  # stage -> seconds waited for compile_ahead
    os.makedirs(os.path.join(self.run_dir, "stages"), exist_ok=True)
    c = cfg
    self.progress = Progress({
        "world": 5, "vocab": 2, "tfds": 30, "compile_ahead": 60,
        "pretrain_stage1": c.pretrain1_steps * 1.0, "pretrain_stage2": c.pretrain2_steps * 1.2,
        "finetune_inbatch": c.finetune_steps * 1.5, "baseline": c.baseline_steps * 0.6,
        "evaluate_baseline": 15, "evaluate_distractor": 20,
        "memory": 20, "finetune_fixed": c.fixed_steps * 1.2, "evaluate": 25,
        "export": 60 if c.export_saved_model else 20, "examples": 1})
    self.log = self.progress.log
    self.world_dir = os.path.join(self.run_dir, "world")
    self.tfds_dir = os.path.join(self.run_dir, "tfds")
    self.memory_dir = os.path.join(self.run_dir, "memory")
    self._registered = False

  # ---------------------------------------------------------------- helpers
  def path(self, *parts) -> str:
    return os.path.join(self.run_dir, *parts)

  def _marker(self, stage: str) -> str:
    return self.path("stages", f"{stage}.json")

  def run_stage(self, stage: str, fn: Callable[[], dict], concurrent: bool = False) -> dict:
    i = STAGES.index(stage) + 1
    if os.path.exists(self._marker(stage)):
      with open(self._marker(stage)) as f:
        summary = json.load(f)
      if concurrent:
        self.log(f"stage {i}/{len(STAGES)} {stage}: DONE in the concurrent process in "
                 f"{_fmt(summary.get('seconds', 0))}")
      else:
        self.log(f"stage {i}/{len(STAGES)} {stage}: DONE earlier, skipped")
      self.progress.finish(stage, 0.0, skipped=True)
      return summary
    self.log(f"stage {i}/{len(STAGES)} {stage}: start (demo ETA {self.progress.eta()})")
    t0, cpu0 = time.time(), time.process_time()
    summary = fn() or {}
    seconds = time.time() - t0
    summary["seconds"] = round(seconds, 1)
    # CPU time of this process's threads (XLA's included): where the two cores went.
    summary["cpu_seconds"] = round(time.process_time() - cpu0, 1)
    tmp = self._marker(stage) + ".tmp"
    with open(tmp, "w") as f:
      json.dump(summary, f, indent=1, sort_keys=True, default=float)
    os.replace(tmp, self._marker(stage))
    self.progress.finish(stage, seconds, skipped=False)
    self.log(f"stage {i}/{len(STAGES)} {stage}: DONE in {_fmt(seconds)} "
             f"(demo ETA {self.progress.eta()})")
    return summary

  @property
  def vocab_path(self) -> str:
    return os.path.join(self.world_dir, "vocab", "sentencepiece.model")

  def vocabulary(self):
    from tasks import vocab  # pylint: disable=g-import-not-at-top
    return vocab.get_vocabulary(self.vocab_path)

  def register(self):
    if self._registered:
      return
    os.environ["MURAG_VOCAB_PATH"] = self.vocab_path
    from tasks import murag_tasks  # pylint: disable=g-import-not-at-top
    murag_tasks.register_all(image_config=self.cfg.image_config, data_dir=self.tfds_dir,
                             vocabulary=self.vocabulary(), neighbours_dir=self.memory_dir,
                             top_k=self.model_config().top_k)
    self._registered = True

  @property
  def model_vocab_size(self) -> int:
    """Embedding / logit rows: DemoConfig.vocab_size pieces + seqio's extra ids."""
    from tasks import vocab  # pylint: disable=g-import-not-at-top
    return self.cfg.vocab_size + vocab.EXTRA_IDS

  def model_config(self, **overrides):
    from murag import model as model_lib  # pylint: disable=g-import-not-at-top
    base = model_lib.MuRAGConfig()
    image_size = int(self.cfg.image_config[2:])
    return dataclasses.replace(base, vocab_size=self.model_vocab_size,
                               image_size=image_size, **overrides)

  def make_model(self, question_only: bool = False, with_vocabulary: bool = True,
                 **overrides):
    """The demo's MuRAGModel; `with_vocabulary=False` (compiling only) does not read the
    vocab stage's output."""
    from murag import model as model_lib  # pylint: disable=g-import-not-at-top
    if question_only:
      overrides.update(use_memory=False, contrastive_weight=0.0)
    return model_lib.MuRAGModel(self.model_config(**overrides),
                                self.vocabulary() if with_vocabulary else None)

  def dataset_cfg(self, task: str, split: str, batch: int, train: bool = True,
                  lengths: Optional[Dict[str, int]] = None):
    from tasks import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.DatasetConfig(mixture_or_task_name=task,
                                  task_feature_lengths=dict(lengths or self.cfg.lengths),
                                  split=split,
                                  batch_size=batch, shuffle=train, seed=self.cfg.seed,
                                  num_epochs=None if train else 1,
                                  drop_remainder=train, autotune=self.cfg.data_autotune)

  def partitioner(self):
    from murag import partitioner as partitioner_lib  # pylint: disable=g-import-not-at-top
    return partitioner_lib.Partitioner(num_partitions=1)

  def train_stage(self, stage: str, model_dir: str, task: str, init: Optional[str]) -> dict:
    """Trains `train_program(stage)` on `task` into model_dir, from checkpoint `init`."""
    from murag import checkpoints  # pylint: disable=g-import-not-at-top
    from murag import train as train_lib  # pylint: disable=g-import-not-at-top
    from tasks import pipeline  # pylint: disable=g-import-not-at-top
    self.register()
    model, steps, batch, memory_slots, lengths = self.train_program(stage)

    def get_dataset(cfg, **kwargs):
      # The first batch goes to the train step: if compile_ahead is still compiling it, wait
      # and load it from the cache rather than compile it a second time beside it.
      return ProgressIterator(pipeline.get_dataset_iterator(cfg, **kwargs), stage, steps,
                              self.cfg.log_period, self.log,
                              lambda: self.await_compile_ahead(stage, "train step"))

    optimizer = self.optimizer(steps)
    period = max(-(-steps // max(self.cfg.checkpoints_per_stage, 1)), 1)
    ckpt_cfg = checkpoints.CheckpointConfig(period=period, keep=1,
                                            async_save=False, init_checkpoint=init,
                                            strict_init=True)
    t0 = time.time()
    self.await_compile_ahead(stage, "initialiser")
    with _CacheHits() as cache:
      step, _ = train_lib.train(
          model=model, train_dataset_cfg=self.dataset_cfg(task, "train", batch, lengths=lengths),
          checkpoint_cfg=ckpt_cfg, partitioner=self.partitioner(), total_steps=steps,
          model_dir=model_dir, random_seed=self.cfg.seed, optimizer=optimizer,
          get_dataset_fn=get_dataset, feature_converter_kwargs={"memory_slots": memory_slots},
          log_period=self.cfg.log_period)
    return {"task": task, "steps": int(step), "batch": batch, "memory_slots": memory_slots,
            "init": init, "train_seconds": round(time.time() - t0, 1),
            "compilation_cache": cache.summary(),
            "compile_ahead_wait_seconds": round(self._ahead_waits.get(stage, 0.0), 1),
            "final_metrics": _last_train_metrics(model_dir)}

  def optimizer(self, steps: int):
    """The Adafactor of a training stage of `steps` steps (its schedule decays over them)."""
    from murag import optimizers  # pylint: disable=g-import-not-at-top
    decay = self.cfg.lr_decay
    return optimizers.adafactor(learning_rate_fn=optimizers.learning_rate_schedule(
        base_learning_rate=self.cfg.learning_rate, decay=decay,
        decay_steps=steps if decay in ("linear", "cosine") else None,
        final_fraction=self.cfg.lr_final_fraction))

  def train_program(self, stage: str, with_vocabulary: bool = True):
    """(model, steps, batch, memory_slots, lengths) of a training stage; `train_stage` and
    `stage_compile_ahead` build the same program from it."""
    c = self.cfg
    v = with_vocabulary
    if stage == "pretrain_stage1":
      # Stage 1 never augments generation (captions: M_p = Ø, retrieve = 0), so the reader
      # needs no room for K retrieved items: top_k = 1 keeps the masked prefix small. top_k
      # is not a parameter; stage 2 restores the same tree with the configured top_k.
      return (self.make_model(top_k=1, with_vocabulary=v), c.pretrain1_steps,
              c.pretrain_batch, 1, c.pretrain_lengths)
    if stage == "pretrain_stage2":
      return (self.make_model(with_vocabulary=v), c.pretrain2_steps, c.pretrain_batch, 1,
              c.pretrain_lengths)
    if stage == "finetune_inbatch":
      return (self.make_model(retrieval_mode="inbatch", with_vocabulary=v), c.finetune_steps,
              c.finetune_batch, c.memory_slots, c.lengths)
    if stage == "finetune_fixed":
      return (self.make_model(retrieval_mode="fixed", with_vocabulary=v), c.fixed_steps,
              c.finetune_batch, self.model_config().top_k, c.lengths)
    if stage == "baseline":
      return (self.make_model(question_only=True, with_vocabulary=v), c.baseline_steps,
              c.finetune_batch, 1, c.lengths)
    raise ValueError(f"{stage!r} is not a training stage")

  def load_params(self, model, model_dir: str, memory_slots: int, batch: int):
    from murag import checkpoints  # pylint: disable=g-import-not-at-top
    from murag import train as train_lib  # pylint: disable=g-import-not-at-top
    from murag import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
    part = self.partitioner()
    conv = train_lib.make_feature_converter(model, None, {"memory_slots": memory_slots})
    shapes, types = train_lib.model_feature_shapes(batch, self.cfg.lengths, conv)
    abstract, shardings, _ = trainer_lib.abstract_params(model, part, shapes, types)
    params = checkpoints.load_params(model_dir, abstract, strict=True)
    return params, shardings, conv, shapes, types, part

  def evaluate_task(self, model, model_dir, task, memory_slots, out_name) -> dict:
    from murag import infer  # pylint: disable=g-import-not-at-top
    self.register()
    params, shardings, conv, _, _, part = self.load_params(model, model_dir, memory_slots,
                                                           self.cfg.eval_batch)
    out_dir = self.path("eval", out_name)
    results = infer.predict_and_score(
        model=model, params=params, param_shardings=shardings,
        dataset_cfg=self.dataset_cfg(task, "validation", self.cfg.eval_batch, train=False),
        partitioner=part, output_dir=out_dir, num_decodes=self.cfg.num_decodes,
        max_examples=self.cfg.eval_max_examples, feature_converter=conv)
    scores = results[task]
    scores["predictions"] = os.path.join(out_dir, f"{task}-predictions.jsonl")
    return scores

  # ---------------------------------------------------------------- stages
  def stage_world(self):
    from tasks.synthetic_world import check  # pylint: disable=g-import-not-at-top
    from tasks.synthetic_world import generate  # pylint: disable=g-import-not-at-top
    generate.generate_world(self.world_dir, self.cfg.world_size, self.cfg.seed,
                            progress=lambda m: self.log(f"  world: {m}"))
    return {"counts": check.check_world(self.world_dir)}

  def stage_vocab(self):
    from tasks import vocab  # pylint: disable=g-import-not-at-top
    v = vocab.build_offline_vocabulary(self.world_dir, vocab_size=self.cfg.vocab_size)
    if v.vocab_size > self.model_vocab_size:
      raise ValueError(f"{self.vocab_path}: {v.vocab_size} ids, more than the model's "
                       f"{self.model_vocab_size} rows (DemoConfig.vocab_size + extra ids)")
    return {"vocab_size": v.vocab_size, "model_vocab_size": self.model_vocab_size,
            "path": self.vocab_path}

  def stage_tfds(self):
    from tasks import builders  # pylint: disable=g-import-not-at-top
    ic = self.cfg.image_config
    sources = [("webqa", "webqa", ic), ("memory_corpus", "webqa", f"webqa_{ic}"),
               ("laion", "laion", ic), ("cc", "cc", ic), ("paq", "paq", ic), ("vqa", "vqa", ic)]
    if self.cfg.mmqa:
      sources += [("mmqa", "mmqa", ic), ("memory_corpus", "mmqa", f"mmqa_{ic}")]
    out = {}
    for source, sub, config in sources:
      self.log(f"  tfds: converting {source}/{config}")
      b = builders.build(source, manual_dir=os.path.join(self.world_dir, sub),
                         data_dir=self.tfds_dir, config=config)
      out[f"{source}/{config}"] = {k: v.num_examples for k, v in b.info.splits.items()}
    return {"splits": out}

  def stage_compile_ahead(self):
    """Compiles the MuRAG chain's train programs into the persistent compilation cache.

    Runs in the concurrent process from the start: pre-training stage 1's initialiser and
    train step (stage 2 runs the same step) while the world, vocabulary and TFDS stages keep
    only one core busy, then the in-batch and fixed-retrieval train steps beside
    pre-training, which leaves part of the two cores idle (single-threaded tracing, input
    start-up, small matrices). The stages then load the compiled programs from `jax_cache/`
    instead of compiling them on the critical path. The programs are those `train_stage`
    builds (same model, optimizer schedule, feature shapes and shardings), lowered for
    abstract inputs; nothing is read or allocated, and no earlier stage's output is needed
    (DemoConfig.vocab_size fixes the vocabulary's rows).
    """
    import jax  # pylint: disable=g-import-not-at-top
    from murag import train as train_lib  # pylint: disable=g-import-not-at-top
    from murag import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
    if not jax.config.jax_compilation_cache_dir:
      return {"skipped": "no persistent compilation cache configured"}
    out = {}
    # Not the baseline: it trains in a concurrent process itself, off the critical path, and
    # compiling its step here as well only competed with that process for the cores.
    stages = [s for s in ("pretrain_stage1", "finetune_inbatch", "finetune_fixed")
              if not os.path.exists(self._marker(s))]
    plan = [(s, p) for s in stages
            for p in (("initialiser",) if s == "pretrain_stage1" else ()) + ("train step",)]
    os.makedirs(self.path("compile_ahead"), exist_ok=True)
    for s, p in plan:  # `await_compile_ahead` waits for these
      _touch(self._ahead_marker(s, p, "planned"))
    for stage in stages:
      model, steps, batch, slots, lengths = self.train_program(stage, with_vocabulary=False)
      conv = train_lib.make_feature_converter(model, None, {"memory_slots": slots})
      shapes, types = train_lib.model_feature_shapes(batch, lengths, conv)
      trainer = trainer_lib.Trainer(model=model, optimizer=self.optimizer(steps),
                                    partitioner=self.partitioner(), input_shapes=shapes,
                                    input_types=types)
      # Stage 1 starts from a fresh state; every later stage restores its parameters.
      programs = [("initialiser", trainer.lower_init_state)] if stage == "pretrain_stage1" else []
      for name, lower in programs + [("train step", trainer.lower_train_step)]:
        t0 = time.time()
        lower().compile()
        _touch(self._ahead_marker(stage, name, "done"))
        out[f"{stage} {name}"] = round(time.time() - t0, 1)
        self.log(f"  compile_ahead: {stage} {name} compiled in {time.time() - t0:.1f}s")
    return {"compile_seconds": out}

  def _ahead_marker(self, stage: str, program: str, state: str) -> str:
    return self.path("compile_ahead", f"{stage}.{program.replace(' ', '_')}.{state}")

  def await_compile_ahead(self, stage: str, program: str) -> float:
    """Waits while a running compile_ahead process still has `program` of `stage` to compile.

    Loading its result from the compilation cache afterwards beats compiling the same
    program a second time beside it (on two cores each compilation would take about as long
    as the wait). Returns the seconds waited: 0 when the program is compiled, was not
    planned, or no compile_ahead process of this run is alive.
    """
    child = self._children.get("compile_ahead")
    if child is None:
      return 0.0
    proc = child[1]
    t0 = time.time()
    logged = False
    while (os.path.exists(self._ahead_marker(stage, program, "planned"))
           and not os.path.exists(self._ahead_marker(stage, program, "done"))
           and proc.poll() is None):
      if not logged:
        self.log(f"  {stage}: waiting for compile_ahead's {program}")
        logged = True
      time.sleep(0.2)
    waited = time.time() - t0 if logged else 0.0
    self._ahead_waits[stage] = self._ahead_waits.get(stage, 0.0) + waited
    if logged:
      self.log(f"  {stage}: {program} compiled ahead (waited {waited:.1f}s)")
    return waited

  def stage_pretrain1(self):
    from tasks import mixtures  # pylint: disable=g-import-not-at-top
    return self.train_stage("pretrain_stage1", self.path("pretrain_stage1"), mixtures.STAGE1,
                            None)

  def stage_pretrain2(self):
    from tasks import mixtures  # pylint: disable=g-import-not-at-top
    return self.train_stage("pretrain_stage2", self.path("pretrain_stage2"), mixtures.STAGE2,
                            self.path("pretrain_stage1"))

  def stage_finetune_inbatch(self):
    return self.train_stage("finetune_inbatch", self.path("finetune_inbatch"),
                            "webqa_inbatch_v1", self.path("pretrain_stage2"))

  def stage_baseline(self):
    return self.train_stage("baseline", self.path("baseline_qonly"), "webqa_inbatch_v1",
                            self.path("pretrain_stage2"))

  def stage_memory(self):
    from murag import build_memory  # pylint: disable=g-import-not-at-top
    from murag.memory import index as index_lib  # pylint: disable=g-import-not-at-top
    self.register()
    k = self.model_config().top_k
    corpus_cfg = self.dataset_cfg("webqa_memory_v1", "train", self.cfg.eval_batch, train=False)
    query_cfg = self.dataset_cfg("webqa_inbatch_v1", "train", self.cfg.eval_batch, train=False)
    summary = build_memory.build_memory(
        model=self.make_model(), output_dir=self.memory_dir, corpus_cfg=corpus_cfg,
        checkpoint_path=self.path("finetune_inbatch"), index_config=index_lib.IndexConfig(),
        neighbour_tasks=[("webqa_inbatch_v1", ("train", "validation"),
                          "webqa_neighbours.jsonl")],
        query_cfg=query_cfg, k=k)
    return dict(summary)

  def stage_finetune_fixed(self):
    return self.train_stage("finetune_fixed", self.path("finetune_fixed"), "webqa_fixed_v1",
                            self.path("finetune_inbatch"))

  def stage_evaluate_baseline(self):
    out = {}
    self.log("  evaluate: question-only baseline")
    model = self.make_model(question_only=True)
    out["baseline"] = self.evaluate_task(model, self.path("baseline_qonly"), "webqa_inbatch_v1",
                                         1, "baseline")
    if self.cfg.mmqa:
      self.log("  evaluate: question-only baseline on MultimodalQA (no MMQA fine-tuning)")
      out["mmqa_baseline"] = self.evaluate_task(model, self.path("baseline_qonly"),
                                                "mmqa_inbatch_v1", 1, "mmqa_baseline")
    return {"evaluations": out}

  def stage_evaluate_distractor(self):
    c = self.cfg
    out = {}
    self.log("  evaluate: MuRAG, distractor setting (in-batch candidates)")
    model = self.make_model(retrieval_mode="inbatch")
    out["murag_distractor"] = self.evaluate_task(model, self.path("finetune_inbatch"),
                                                 "webqa_inbatch_v1", c.memory_slots,
                                                 "murag_distractor")
    if c.mmqa:
      self.log("  evaluate: MuRAG on MultimodalQA (WebQA-trained, no MMQA fine-tuning)")
      out["mmqa_murag_distractor"] = self.evaluate_task(
          model, self.path("finetune_inbatch"), "mmqa_inbatch_v1", c.memory_slots,
          "mmqa_murag_distractor")
    return {"evaluations": out}

  def stage_evaluate(self):
    k = self.model_config().top_k
    out = {}
    for stage in ("evaluate_baseline", "evaluate_distractor"):
      out.update(self._stage_summary(stage)["evaluations"])
    self.log("  evaluate: MuRAG, full-wiki setting (global index, fixed retrieval)")
    out["murag_fullwiki"] = self.evaluate_task(
        self.make_model(retrieval_mode="fixed"), self.path("finetune_fixed"),
        "webqa_fixed_v1", k, "murag_fullwiki")
    memory = self._stage_summary("memory")
    out["fullwiki_index_retrieval"] = memory["retrieval"]["webqa_inbatch_v1/validation"]
    table = results_table(out)
    with open(self.path("results.md"), "w") as f:
      f.write(table + "\n")
    with open(self.path("results.json"), "w") as f:
      json.dump(out, f, indent=1, sort_keys=True, default=float)
    print(table, flush=True)
    return out

  def stage_export(self):
    from murag import export  # pylint: disable=g-import-not-at-top
    model = self.make_model(retrieval_mode="fixed")
    k = self.model_config().top_k
    params, _, _, shapes, types, _ = self.load_params(model, self.path("finetune_fixed"), k, 1)
    manifest = export.export_bundle(model=model, params=params, shapes=shapes, types=types,
                                    output_dir=self.path("export"),
                                    num_decodes=self.cfg.num_decodes,
                                    saved_model=self.cfg.export_saved_model,
                                    vocab_file=self.vocab_path)
    return {"bundle": self.path("export"), "functions": sorted(manifest.get("functions", {}))}

  def stage_examples(self):
    text = example_questions(self.world_dir, self._stage_summary("evaluate"), n=3)
    with open(self.path("examples.txt"), "w") as f:
      f.write(text)
    print(text, flush=True)
    return {"file": self.path("examples.txt")}

  def _stage_summary(self, stage: str) -> dict:
    with open(self._marker(stage)) as f:
      return json.load(f)

  # ---------------------------------------------------------------- concurrent stages
  def start_child(self, stages: List[str]) -> None:
    """Runs `stages` in a child `python -m murag.demo --stages=a,b` process.

    Its progress lines are echoed with a `[a,b]` prefix; `wait_child` joins it.
    """
    import subprocess  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    name = ",".join(stages)
    cmd = [sys.executable, "-m", "murag.demo", f"--run_dir={self.run_dir}",
           f"--stages={name}"] + list(self.argv or [])
    for stage in stages:
      self.log(f"stage {STAGES.index(stage) + 1}/{len(STAGES)} {stage}: started in a "
               f"concurrent process")
    nice = self.cfg.concurrent_nice
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1,
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)
    tail: List[str] = []

    def pump():
      for line in proc.stdout:
        tail.append(line)
        del tail[:-200]
        if line.startswith("[demo") or line.startswith("Traceback") or "Error" in line:
          print(f"[{name}] {line}", end="", flush=True)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    child = (name, proc, thread, tail)
    for stage in stages:
      self._children[stage] = child

  def wait_child(self, stage: str) -> None:
    """Waits for the child process running `stage` (and the others it runs)."""
    name, proc, thread, tail = self._children[stage]
    for s in [s for s, c in self._children.items() if c[0] == name]:
      del self._children[s]
    if proc.poll() is None:
      self.log(f"  waiting for the concurrent process of {name}")
    rc = proc.wait()
    thread.join()
    if rc != 0:
      raise RuntimeError(f"the concurrent process of {name} failed (exit {rc}); its last "
                         f"output:\n" + "".join(tail[-40:]))

  def check_predecessors(self, stages: List[str]) -> None:
    """Raises StageOrderError unless every stage that `stages` read has finished (or is
    among `stages`, which run in the demo's order)."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
      raise StageOrderError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    for stage in stages:
      missing = [d for d in STAGE_INPUTS[stage]
                 if d not in stages and not os.path.exists(self._marker(d))]
      if missing:
        raise StageOrderError(f"stage {stage!r} reads the output of {missing}, which has not "
                              f"run yet in {self.run_dir}; run the demo without --stages, or "
                              f"pass those stages too")

  def run(self, stages: Optional[List[str]] = None) -> dict:
    """Runs every stage (or only `stages`, whose predecessors must be done) in order."""
    fns = {"world": self.stage_world, "vocab": self.stage_vocab, "tfds": self.stage_tfds,
           "compile_ahead": self.stage_compile_ahead,
           "pretrain_stage1": self.stage_pretrain1, "pretrain_stage2": self.stage_pretrain2,
           "finetune_inbatch": self.stage_finetune_inbatch, "baseline": self.stage_baseline,
           "evaluate_baseline": self.stage_evaluate_baseline,
           "evaluate_distractor": self.stage_evaluate_distractor,
           "memory": self.stage_memory, "finetune_fixed": self.stage_finetune_fixed,
           "evaluate": self.stage_evaluate, "export": self.stage_export,
           "examples": self.stage_examples}
    if stages is not None:
      self.check_predecessors(stages)
      # The ETA covers the requested stages only.
      self.progress.weights = {s: w for s, w in self.progress.weights.items() if s in stages}
      for stage in sorted(stages, key=STAGES.index):
        self.run_stage(stage, fns[stage])
      return {}
    t0 = time.time()
    concurrent = self.cfg.concurrent_stages and self.argv is not None
    in_child: List[str] = []  # stages run by a child, not yet waited for

    def join(stage):  # waits for `stage`'s child, then records (logs) its stages
      self.wait_child(stage)
      for s in [s for s in in_child if s not in self._children]:
        in_child.remove(s)
        self.run_stage(s, fns[s], concurrent=True)

    try:
      for stage in STAGES:
        group = [s for s in CONCURRENT_STAGES.get(stage, ())
                 if not os.path.exists(self._marker(s))]
        if concurrent and group:
          self.start_child(group)
          in_child.extend(group)
        if stage in in_child:
          continue
        for needed in STAGE_INPUTS[stage]:
          if needed in in_child:
            join(needed)
        self.run_stage(stage, fns[stage])
      while in_child:
        join(in_child[0])
    finally:
      for _, proc, _, _ in self._children.values():
        proc.kill()
    self.log(f"all stages done in {_fmt(time.time() - t0)}; results in "
             f"{self.path('results.md')}")
    print(open(self.path("results.md")).read(), flush=True)
    return self._stage_summary("evaluate")


class _CacheHits:
  """Counts persistent-compilation-cache hits (and the compile time they saved) in a block."""

  def __enter__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.hits, self.saved = 0, 0.0

    def on_event(event, **_):
      if event == "/jax/compilation_cache/cache_hits":
        self.hits += 1

    def on_duration(event, seconds, **_):
      if event == "/jax/compilation_cache/compile_time_saved_sec":
        self.saved += seconds

    self._listeners = (on_event, on_duration)
    jax.monitoring.register_event_listener(on_event)
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    return self

  def __exit__(self, *exc):
    import jax  # pylint: disable=g-import-not-at-top
    jax.monitoring.unregister_event_listener(self._listeners[0])
    jax.monitoring.unregister_event_duration_listener(self._listeners[1])
    return False

  def summary(self) -> dict:
    return {"hits": self.hits, "compile_seconds_saved": round(self.saved, 1)}


# ------------------------------------------------------------------------------ reporting
def _last_train_metrics(model_dir: str) -> dict:
  """Last logged train/* scalars of a run (TensorBoard events), for the stage summary."""
  import glob  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(glob.glob(os.path.join(model_dir, "train", "events*"))):
    for rec in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(rec.numpy())
      for v in event.summary.value:
        if v.tag.startswith("train/") and v.HasField("tensor"):
          out[v.tag[len("train/"):]] = float(tf.make_ndarray(v.tensor))
  return out


def image_accuracy(scores: dict) -> float:
  """Count-weighted accuracy over the image-based WebQA categories."""
  num = den = 0.0
  for cat in IMAGE_CATEGORIES:
    n = scores.get(f"count/{cat}", 0.0)
    num += n * scores.get(f"accuracy/{cat}", 0.0)
    den += n
  return num / den if den else float("nan")


def _cell(v, fmt="{:.1f}"):
  return "—" if v is None else fmt.format(v)


def results_table(r: dict) -> str:
  """Markdown tables in the shape of the paper's Table 4 (WebQA) and Table 5 (MMQA)."""
  base, dis, full = r["baseline"], r["murag_distractor"], r["murag_fullwiki"]
  fl = all(s.get("fluency_available") for s in (base, dis, full))
  lines = ["WebQA (validation) — accuracy is the WebQA keyword accuracy (%); "
           "Retr = retrieval F1 of the top-K retrieved sources vs. the positive sources (%).",
           "FL / Overall: " + ("BARTScore fluency available" if fl else
                               "unavailable (no local BART scorer, see tasks/metrics/bartscore.py)"),
           "",
           "| setting | model | Retr | FL | Accuracy | Overall | image-question acc. | "
           "color | shape | number | text |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for setting, name, s, retr in (("distractor", "question-only", base, None),
                                 ("distractor", "MuRAG", dis, dis.get("retrieval_f1")),
                                 ("full-wiki", "question-only", base, None),
                                 ("full-wiki", "MuRAG", full, full.get("retrieval_f1"))):
    lines.append(
        f"| {setting} | {name} | {_cell(retr)} | {_cell(s.get('fluency'))} | "
        f"{_cell(s['accuracy'])} | {_cell(s.get('qa'))} | {_cell(image_accuracy(s))} | "
        f"{_cell(s.get('accuracy/color'))} | {_cell(s.get('accuracy/shape'))} | "
        f"{_cell(s.get('accuracy/number'))} | {_cell(s.get('accuracy/text'))} |")
  idx = r.get("fullwiki_index_retrieval") or {}
  if idx:
    lines += ["", "Full-wiki global-index retrieval (validation questions): " +
              ", ".join(f"{k} {v:.3f}" for k, v in sorted(idx.items())
                        if isinstance(v, (int, float)))]
  if "mmqa_murag_distractor" in r:
    lines += ["", "MultimodalQA (dev, image + text questions; models trained on WebQA only, "
              "distractor setting)", "",
              "| model | EM | F1 | image EM | text EM |", "|---|---|---|---|---|"]
    for name, key in (("question-only", "mmqa_baseline"), ("MuRAG", "mmqa_murag_distractor")):
      s = r[key]
      lines.append(f"| {name} | {_cell(s.get('all/em'))} | {_cell(s.get('all/f1'))} | "
                   f"{_cell(s.get('image/em'))} | {_cell(s.get('text/em'))} |")
  return "\n".join(lines)


def example_questions(world_dir: str, evaluation: dict, n: int = 3) -> str:
  """Three validation image questions answered in the full-wiki setting, with attribution."""
  from tasks import neighbours  # pylint: disable=g-import-not-at-top
  sources = {}
  with open(os.path.join(world_dir, "webqa", "fullwiki_sources.jsonl")) as f:
    for line in f:
      d = json.loads(line)
      sources[d["id"]] = d
  id_map = neighbours.IdMap(sources)
  with open(os.path.join(world_dir, "webqa", "WebQA_train_val.json")) as f:
    questions = json.load(f)
  preds = [json.loads(line) for line in open(evaluation["murag_fullwiki"]["predictions"])]
  picked: List[dict] = []
  for cat in ("color", "shape", "number"):
    for p in preds:
      if p["targets"]["qcate"] == cat:
        picked.append(p)
        break
  out = ["Example questions (full-wiki: retrieved from the global index of "
         f"{len(sources)} sources, answered by the fixed-retrieval model):"]
  for p in picked[:n]:
    q = questions[p["question_id"]]
    out.append(f"\nQ [{q['Qcate']}]: {q['Q']}   gold: {q['A'][0]}")
    for rid, score in zip(p["retrieved_ids"], p["retrieved_scores"]):
      sid = rid if rid in sources else (id_map.to_string([int(rid)])[0]
                                        if rid.lstrip("-").isdigit() else rid)
      src = sources.get(sid, {})
      text = src.get("caption") or src.get("fact") or "?"
      pos = " (positive)" if sid in p["targets"]["positive_ids"] else ""
      out.append(f"   {score:8.3f}  {src.get('type', '?'):5s} {sid:>34s}  "
                 f"{src.get('title', '')}: {text}{pos}")
    out.append(f"A: {p['answer']}")
  return "\n".join(out) + "\n"


def main(argv=None) -> int:
  """`python -m murag.demo --run_dir=D [--gin_file=F ...] [--gin.KEY=VALUE ...] [--stages=a,b]`.

  --stages runs only the named stages (their predecessors must have run), e.g. to redo the
  evaluation: delete `stages/evaluate.json` and pass --stages=evaluate,export,examples.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  run_dir, files, bindings, stages, gin_args = None, [], [], None, []
  for arg in argv:
    if arg.startswith("--run_dir="):
      run_dir = arg.split("=", 1)[1]
    elif arg.startswith("--gin_file="):
      files.append(arg.split("=", 1)[1])
      gin_args.append(arg)
    elif arg.startswith("--gin."):
      bindings.append(arg[len("--gin."):])
      gin_args.append(arg)
    elif arg.startswith("--stages="):
      stages = [s for s in arg.split("=", 1)[1].split(",") if s]
    else:
      print(f"error: unknown argument {arg!r}; expected --run_dir=, --gin_file=, "
            f"--gin.KEY=VALUE, --stages=", file=sys.stderr)
      return 2
  if not run_dir:
    print("error: --run_dir is required", file=sys.stderr)
    return 2
  if stages is not None:
    try:  # unknown names and unfinished inputs, before anything is imported or configured
      Demo(run_dir, DemoConfig()).check_predecessors(stages)
    except StageOrderError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import jax  # pylint: disable=g-import-not-at-top
  # Stages with identical programs (e.g. the two pre-training stages) and reruns reuse
  # compiled executables instead of recompiling (minutes on 2 cores).
  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(os.path.abspath(run_dir), "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  # jax's default also enables a GPU autotuning cache under the cache directory, whose path
  # then becomes part of every cache key: entries would only ever match in the directory
  # that wrote them. Nothing here is autotuned, so keys are kept location-independent.
  jax.config.update("jax_persistent_cache_enable_xla_caches", "")
  from murag import train as train_lib  # pylint: disable=g-import-not-at-top
  import murag.model  # pylint: disable=g-import-not-at-top,unused-import
  train_lib.parse_gin(files or [DEFAULT_GIN], bindings, [REPO_ROOT])
  demo = Demo(run_dir, DemoConfig(), argv=gin_args)
  demo.run(stages)
  return 0

