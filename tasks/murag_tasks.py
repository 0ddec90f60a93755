"""The MuRAG seqio tasks (MuRAG §3.3 pre-training, §3.4 fine-tuning); registered at import.

| task                | TFDS source                       | query               | memory slots          | retrieve |
|---------------------|-----------------------------------|---------------------|-----------------------|----------|
| laion_caption_v1    | murag_laion/<cfg>                 | image + prompt      | its caption           | 0        |
| cc_caption_v1       | murag_cc/<cfg>                    | image + prompt      | its caption           | 0        |
| vqa_qa_v1           | murag_vqa/<cfg>                   | image + question    | a caption of the image| 1        |
| paq_qa_v1           | murag_paq/<cfg>                   | question            | its passage           | 1        |
| webqa_inbatch_v1    | murag_webqa/<cfg>                 | question            | positives + negatives | 1        |
| mmqa_inbatch_v1     | murag_mmqa/<cfg>                  | question            | positives + negatives | 1        |
| webqa_fixed_v1      | murag_webqa + neighbour file      | question            | global top-K          | 1        |
| mmqa_fixed_v1       | murag_mmqa + neighbour file       | question            | global top-K          | 1        |
| webqa_inbatch_hardneg_v1 | murag_webqa + mined negatives | question            | positives + mined + own negatives | 1 |
| mmqa_inbatch_hardneg_v1  | murag_mmqa + mined negatives  | question            | positives + mined + own negatives | 1 |
| webqa_memory_v1     | murag_memory_corpus/webqa_<cfg>   | (empty)             | one corpus item       | 0        |
| mmqa_memory_v1      | murag_memory_corpus/mmqa_<cfg>    | (empty)             | one corpus item       | 0        |

Evaluation (validation split) uses the same tasks: webqa_* carry
`tasks.metrics.webqa.webqa_metrics`, mmqa_* `tasks.metrics.mmqa.mmqa_metrics`, vqa_qa_v1
`tasks.metrics.vqa.vqa_accuracy`, the caption tasks `tasks.metrics.captioning.cider_d`.
<cfg> is the builder config (image resolution), `px224` unless the environment variable
MURAG_TFDS_CONFIG says otherwise; `register_all(image_config=..., data_dir=...)`
re-registers every task for another config / data directory (tests use px32).
The fixed tasks read `<MURAG_NEIGHBOURS_DIR>/{webqa,mmqa}_neighbours.jsonl`
(tasks/neighbours.py format) when their dataset is first built; the *_inbatch_hardneg_v1
tasks (beyond the paper: in-batch training with hard negatives mined from the global index,
`tasks.neighbours.add_hard_negatives`) read
`<MURAG_NEIGHBOURS_DIR>/{webqa,mmqa}_hard_negatives.jsonl`.
`register_with_neighbours` derives a fixed task reading another neighbour file (full-wiki
evaluation, murag/evaluate_fullwiki.py).
"""
import functools
import os
from typing import Optional

from tasks import neighbours as nb
from tasks import preprocessors as prep
from tasks import registration

VERSION = "1.0.0"
TASK_NAMES = ("laion_caption_v1", "cc_caption_v1", "vqa_qa_v1", "paq_qa_v1", "webqa_inbatch_v1",
              "mmqa_inbatch_v1", "webqa_fixed_v1", "mmqa_fixed_v1", "webqa_memory_v1",
              "mmqa_memory_v1")
HARDNEG_TASK_NAMES = ("webqa_inbatch_hardneg_v1", "mmqa_inbatch_hardneg_v1")


# Metric functions are imported when first called: tasks.metrics pulls in heavier
# dependencies (the BARTScore fluency model) that registration alone must not load.
def webqa_metrics(targets, predictions):
  from tasks.metrics import webqa  # pylint: disable=g-import-not-at-top
  return webqa.webqa_metrics(targets, predictions)


def mmqa_metrics(targets, predictions):
  from tasks.metrics import mmqa  # pylint: disable=g-import-not-at-top
  return mmqa.mmqa_metrics(targets, predictions)


def vqa_accuracy(targets, predictions):
  from tasks.metrics import vqa  # pylint: disable=g-import-not-at-top
  return vqa.vqa_accuracy(targets, predictions)


def cider_d(targets, predictions):
  from tasks.metrics import captioning  # pylint: disable=g-import-not-at-top
  return captioning.cider_d(targets, predictions)


vqa_postprocessor = functools.partial(prep.qa_postprocessor, category_key="answer_type")


def _neighbours_path(dataset: str) -> str:
  root = os.environ.get("MURAG_NEIGHBOURS_DIR", "")
  return os.path.join(root, f"{dataset}_neighbours.jsonl")


def register_all(image_config: Optional[str] = None, data_dir: Optional[str] = None,
                 vocabulary=None, neighbours_dir: Optional[str] = None, top_k: int = 4,
                 shuffle_buffer_size: int = registration.DEFAULT_SHUFFLE_BUFFER):
  """(Re-)registers every MuRAG task.

  Args:
    image_config: builder config name (px224, px64, px32); default $MURAG_TFDS_CONFIG or px224.
    data_dir: TFDS data directory; None uses TFDS's default / seqio's override.
    vocabulary: seqio vocabulary; None uses tasks.vocab.default_vocabulary().
    neighbours_dir: directory of the fixed-retrieval neighbour files
      (default $MURAG_NEIGHBOURS_DIR).
    top_k: neighbours kept per example by the fixed tasks (the paper uses 4).
    shuffle_buffer_size: example shuffle buffer of every task.
  """
  cfg = image_config or os.environ.get("MURAG_TFDS_CONFIG", "px224")
  kw = dict(tfds_data_dir=data_dir, vocabulary=vocabulary,
            shuffle_buffer_size=shuffle_buffer_size)
  name = lambda builder, c=cfg: f"{builder}/{c}:{VERSION}"
  registration._register(  # pylint: disable=protected-access
      "laion_caption_v1", registration.tfds_source(name("murag_laion"), data_dir),
      [functools.partial(prep.caption_to_murag, source_name="laion")], vocabulary, [cider_d],
      prep.qa_postprocessor, shuffle_buffer_size)
  registration._register(  # pylint: disable=protected-access
      "cc_caption_v1", registration.tfds_source(name("murag_cc"), data_dir),
      [functools.partial(prep.caption_to_murag, source_name="cc")], vocabulary, [cider_d],
      prep.qa_postprocessor, shuffle_buffer_size)
  registration.register_qa_with_sources_task(
      "vqa_qa_v1", name("murag_vqa"), to_murag=prep.vqa_to_murag, metric_fns=[vqa_accuracy],
      postprocess_fn=vqa_postprocessor, **kw)
  registration.register_qa_with_sources_task(
      "paq_qa_v1", name("murag_paq"), to_murag=prep.paq_to_murag, **kw)
  registration.register_qa_with_sources_task(
      "webqa_inbatch_v1", name("murag_webqa"), to_murag=prep.webqa_to_murag,
      metric_fns=[webqa_metrics], **kw)
  registration.register_qa_with_sources_task(
      "mmqa_inbatch_v1", name("murag_mmqa"), to_murag=prep.mmqa_to_murag,
      metric_fns=[mmqa_metrics], postprocess_fn=prep.mmqa_postprocessor, **kw)
  for ds, to_murag, metric, post in (
      ("webqa", prep.webqa_to_murag, webqa_metrics, prep.qa_postprocessor),
      ("mmqa", prep.mmqa_to_murag, mmqa_metrics, prep.mmqa_postprocessor)):
    path = (os.path.join(neighbours_dir, f"{ds}_neighbours.jsonl") if neighbours_dir
            else _neighbours_path(ds))
    join = functools.partial(nb.add_fixed_neighbours, neighbours_path=path,
                             corpus_tfds_name=name("murag_memory_corpus", f"{ds}_{cfg}"),
                             corpus_data_dir=data_dir, k=top_k)
    registration.register_qa_with_sources_task(
        f"{ds}_fixed_v1", name(f"murag_{ds}"), to_murag=to_murag, metric_fns=[metric],
        postprocess_fn=post, extra_preprocessors=[join], **kw)
    hn_path = os.path.join(neighbours_dir or os.environ.get("MURAG_NEIGHBOURS_DIR", ""),
                           f"{ds}_hard_negatives.jsonl")
    hardneg = functools.partial(nb.add_hard_negatives, negatives_path=hn_path,
                                corpus_tfds_name=name("murag_memory_corpus", f"{ds}_{cfg}"),
                                corpus_data_dir=data_dir)
    registration.register_qa_with_sources_task(
        f"{ds}_inbatch_hardneg_v1", name(f"murag_{ds}"), to_murag=to_murag,
        metric_fns=[metric], postprocess_fn=post, extra_preprocessors=[hardneg], **kw)
    registration.register_memory_corpus_task(
        f"{ds}_memory_v1", name("murag_memory_corpus", f"{ds}_{cfg}"), tfds_data_dir=data_dir,
        vocabulary=vocabulary)
  from tasks import mixtures  # pylint: disable=g-import-not-at-top
  mixtures.register_mixtures()


def register_with_neighbours(base_task: str, new_task: str, neighbours_path: str,
                             top_k: Optional[int] = None):
  """Registers `new_task`: a copy of the fixed task `base_task` reading another neighbour file.

  Source, preprocessors (data dir, image config, vocabulary), metrics and postprocessor are
  those `base_task` was registered with; only the neighbour join's file (and optionally its
  top-K) change. Used by the full-wiki evaluation to read neighbours it computed itself.

  Args:
    base_task: a registered task with a `tasks.neighbours.add_fixed_neighbours` step
      (webqa_fixed_v1, mmqa_fixed_v1).
    new_task: name of the derived task (replaced if registered).
    neighbours_path: the neighbour file it reads.
    top_k: neighbours kept (None: the base task's).

  Returns:
    The registered seqio.Task.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  task = seqio.get_mixture_or_task(base_task)
  steps, found = [], False
  for p in task.preprocessors:
    if isinstance(p, functools.partial) and p.func is nb.add_fixed_neighbours:
      kw = {"neighbours_path": neighbours_path}
      if top_k is not None:
        kw["k"] = top_k
      p = functools.partial(p, **kw)
      found = True
    steps.append(p)
  if not found:
    raise ValueError(f"task {base_task!r} has no fixed-retrieval neighbour join "
                     "(expected a task like webqa_fixed_v1)")
  if new_task in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(new_task)
  return seqio.TaskRegistry.add(
      new_task, source=task.source, preprocessors=steps, output_features=task.output_features,
      postprocess_fn=task.postprocess_fn, metric_fns=list(task.metric_fns),
      shuffle_buffer_size=task.shuffle_buffer_size)


register_all()
