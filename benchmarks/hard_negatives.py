r"""Does in-batch training with mined hard negatives help? (murag/memory/hard_negatives.py)

The paper (§6) names the lack of hard negatives among its limitations; the project mines them
from the global index (`build_memory.hard_negative_tasks`, tasks `*_inbatch_hardneg_v1`). This
script measures the effect on the synthetic world, starting from a finished demo run's in-batch
checkpoint (`finetune_inbatch/`):

  0. build the global index with that checkpoint and mine `--num_negatives` hard negatives
     (top-ranked non-positive sources) for every training question;
  A. continue in-batch fine-tuning for `--steps` steps on `webqa_inbatch_v1` (each question's
     memory = its positives + the world's own negatives);
  B. the same, on `webqa_inbatch_hardneg_v1` (positives + the mined negatives first);
and for A and B: re-encode the corpus, build a fresh index and report full-wiki retrieval of
the validation questions (recall@1 / @4, MRR), plus distractor-setting image-question accuracy
and retrieval F1 (in-batch candidates, the demo's evaluation). Same start, steps, learning rate
and data seed for A and B.

  python -m murag.demo --run_dir=runs/red --gin_file=gin_configs/experiments/murag_demo_reduced.gin
  python benchmarks/hard_negatives.py --run_dir=runs/red --work_dir=/tmp/hardneg [--seed=1]

The run directory is only read: it is copied to `--work_dir` first (its memory/ is replaced
there by the index this script builds).
"""
import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--run_dir", required=True, help="a finished demo run (read only)")
  p.add_argument("--work_dir", required=True, help="scratch copy of the run (replaced)")
  p.add_argument("--gin_file", default="gin_configs/experiments/murag_demo_reduced.gin",
                 help="the demo gin file the run was made with")
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--num_negatives", type=int, default=6)
  p.add_argument("--seed", type=int, default=0, help="data order of the A / B continuations")
  args = p.parse_args()

  src = os.path.abspath(args.run_dir)
  for needed in ("stages/finetune_inbatch.json", "tfds", "world"):
    if not os.path.exists(os.path.join(src, needed)):
      sys.exit(f"error: {src} is not a demo run past finetune_inbatch (no {needed})")
  work = os.path.abspath(args.work_dir)
  shutil.rmtree(work, ignore_errors=True)
  shutil.copytree(src, work, ignore=shutil.ignore_patterns("jax_cache", "eval", "export"))

  from murag import build_memory  # pylint: disable=g-import-not-at-top
  from murag import demo  # pylint: disable=g-import-not-at-top
  from murag import train as train_lib  # pylint: disable=g-import-not-at-top
  from murag.memory import index as index_lib  # pylint: disable=g-import-not-at-top
  train_lib.parse_gin([args.gin_file], [f"DemoConfig.seed={args.seed}"], [demo.REPO_ROOT])
  d = demo.Demo(work, demo.DemoConfig())
  d.register()
  c = d.cfg
  val_key = "webqa_inbatch_v1/validation"

  def index_and_retrieval(checkpoint, out, mine):
    shutil.rmtree(out, ignore_errors=True)
    summary = build_memory.build_memory(
        model=d.make_model(), output_dir=out, checkpoint_path=checkpoint,
        corpus_cfg=d.dataset_cfg("webqa_memory_v1", "train", c.eval_batch, train=False),
        query_cfg=d.dataset_cfg("webqa_inbatch_v1", "train", c.eval_batch, train=False),
        index_config=index_lib.IndexConfig(k=4), k=4,
        neighbour_tasks=[("webqa_inbatch_v1", ("validation",), "val_neighbours.jsonl")],
        hard_negative_tasks=([("webqa_inbatch_v1", "train", "webqa_hard_negatives.jsonl")]
                             if mine else ()),
        num_hard_negatives=args.num_negatives)
    return summary

  def row(retrieval):
    r = retrieval[val_key]
    return {k: round(r[f"retrieval/{k}"], 1) for k in ("recall@1", "recall@4", "mrr")}

  t0 = time.time()
  # The tasks read <run>/memory/webqa_hard_negatives.jsonl.
  start = index_and_retrieval(d.path("finetune_inbatch"), d.memory_dir, mine=True)
  results = {"start (finetune_inbatch)": row(start["retrieval"]),
             "mined": start.get("hard_negatives")}
  print(f"mined hard negatives: {start.get('hard_negatives')} ({time.time() - t0:.0f}s)",
        flush=True)
  for name, task in (("A: own negatives", "webqa_inbatch_v1"),
                     ("B: mined negatives", "webqa_inbatch_hardneg_v1")):
    tag = name[0]
    out = d.path(f"hardneg_{tag}")
    shutil.rmtree(out, ignore_errors=True)
    d.train_stage(f"continuation {tag}", out, task, args.steps, c.finetune_batch,
                  c.memory_slots, d.path("finetune_inbatch"),
                  d.make_model(retrieval_mode="inbatch"))
    summary = index_and_retrieval(out, d.path(f"hardneg_{tag}_memory"), mine=False)
    scores = d.evaluate_task(d.make_model(retrieval_mode="inbatch"), out, "webqa_inbatch_v1",
                             c.memory_slots, f"hardneg_{tag}")
    results[name] = dict(row(summary["retrieval"]),
                         distractor_image_acc=round(demo.image_accuracy(scores), 1),
                         distractor_retrieval_f1=round(scores.get("retrieval_f1", 0.0), 1))
    print(f"{name}: {results[name]}", flush=True)
  with open(os.path.join(work, "hard_negatives.json"), "w") as f:
    json.dump(results, f, indent=1)
  print(f"\nfull-wiki retrieval of the {val_key} questions after +{args.steps} in-batch steps "
        f"(seed {args.seed}); distractor image-question accuracy, eval limited to "
        f"{c.eval_max_examples} questions")
  print("| run | recall@1 | recall@4 | MRR | distractor image acc. | distractor retrieval F1 |")
  print("|---|---|---|---|---|---|")
  s = results["start (finetune_inbatch)"]
  print(f"| start | {s['recall@1']} | {s['recall@4']} | {s['mrr']} | | |")
  for name in ("A: own negatives", "B: mined negatives"):
    r = results[name]
    print(f"| {name} | {r['recall@1']} | {r['recall@4']} | {r['mrr']} | "
          f"{r['distractor_image_acc']} | {r['distractor_retrieval_f1']} |")
  print(f"({time.time() - t0:.0f}s)")


if __name__ == "__main__":
  main()
