r"""Encodes a memory corpus and builds the global MIPS index (paper §3.4, §4.2).

After in-batch fine-tuning, MuRAG "encode[s] all available cross-modal pairs, and
index[es] these encodings for fast MIPS retrieval"; the fixed-retrieval stage
and full-wiki evaluation then search that global memory. This binary:

1. encodes every item of a memory corpus task (`webqa_memory_v1`,
   `mmqa_memory_v1`: one item in memory slot 0) with a checkpoint's backbone
   (`MuRAGModel.embed_memory`, the [CLS] retrieval embedding), the batch
   sharded over the devices of the `data` mesh axis, each host reading its
   own shard of the corpus;
2. writes embedding shards atomically (`embeddings/h{host}-s{shard}.npy`,
   `.ids.npy`, then a `.json` marker with checksums and the data iterator
   position); a restarted run verifies and skips finished shards and resumes
   the iterator exactly, so the embeddings equal an uninterrupted run's;
3. writes `metadata.json` (string ids, counts, dim, the fingerprint of
   checkpoint + corpus) and builds a `MemoryIndex` over the memory-mapped
   shards (`index/`);
4. optionally writes fixed-retrieval neighbour files (tasks/neighbours.py
   format) for query tasks, and reports full-wiki retrieval metrics. Several
   (task, split) entries may share one file (the fixed tasks read one file per
   dataset for every split); it is written once, atomically;
5. optionally (beyond the paper) mines hard negatives: per training question
   the top-ranked index items that are not its positives
   (murag/memory/hard_negatives.py), for the *_inbatch_hardneg_v1 tasks.

  python -m murag.build_memory --gin_file=gin_configs/experiments/... \
      --gin.build_memory.output_dir=\"/tmp/memory\"

Shape letters: B batch (per host), Lm memory text length, H/W image size,
D retrieval embedding size, K neighbours.
"""
import hashlib
import json
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import gin
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow as tf

from murag import partitioning
from murag.memory import index as index_lib
from tasks import neighbours as nb
from tasks import pipeline

EMB_DIR = "embeddings"


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def _atomic_save(path: str, array: np.ndarray) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    np.save(f, array)
  os.replace(tmp, path)


def _atomic_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def params_fingerprint(params) -> str:
  """sha256 of a parameter tree (host copies of every leaf, by path)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return index_lib.digest_arrays(
      {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})


def _shard_paths(output_dir: str, host: int, shard: int) -> Tuple[str, str, str]:
  base = os.path.join(output_dir, EMB_DIR, f"h{host:03d}-s{shard:05d}")
  return base + ".npy", base + ".ids.npy", base + ".json"


def _finished_shards(output_dir: str, host: int) -> List[dict]:
  """Markers of this host's consecutive finished shards (verified)."""
  done = []
  while True:
    emb, ids, marker = _shard_paths(output_dir, host, len(done))
    if not os.path.exists(marker):
      return done
    with open(marker) as f:
      info = json.load(f)
    for path, key in ((emb, "sha256"), (ids, "ids_sha256")):
      if not os.path.exists(path) or _sha256(path) != info[key]:
        raise index_lib.IndexCorruptedError(
            f"{path}: missing or sha256 differs from {marker}; delete the shard "
            "files to re-encode them")
    done.append(info)


def _embed_fn(model, mesh):
  """Jitted [B, Lm], [B, H, W, 3], [B] -> [B, D], batch over the data axis."""
  data = partitioning.batch_sharding(mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  @jax.jit
  def fn(params, tokens, images, image_mask):
    return model.embed_memory(params, tokens, images, image_mask)

  def run(params, batch: Dict[str, np.ndarray]) -> np.ndarray:
    args = [jax.make_array_from_process_local_data(data, np.ascontiguousarray(a))
            for a in (batch["memory_tokens"][:, 0], batch["memory_images"][:, 0],
                      batch["memory_image_mask"][:, 0])]
    out = fn(jax.device_put(params, replicated), *args)
    return np.asarray(multihost_utils.global_array_to_host_local_array(
        out, mesh, jax.sharding.PartitionSpec("data")), np.float32)

  return run


def _pad_batch(batch: Dict[str, np.ndarray], rows: int) -> Dict[str, np.ndarray]:
  n = len(batch["memory_ids"])
  if n == rows:
    return batch
  return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


def corpus_string_ids(task_name: str, split: str = "train") -> List[str]:
  """String ids of a memory corpus task's items (its TFDS `id` feature)."""
  import seqio  # pylint: disable=g-import-not-at-top
  source = seqio.get_mixture_or_task(task_name).source
  ds = source.get_dataset(split=split, shuffle=False).map(lambda ex: ex["id"])
  return [s.decode("utf-8") for s in ds.as_numpy_iterator()]


@gin.configurable(denylist=["params"])
def encode_corpus(*, model, params, corpus_cfg: pipeline.DatasetConfig,
                  output_dir: str, batches_per_shard: int = 64,
                  memory_slots: int = 1, image_size: Optional[int] = None,
                  mesh=None, max_shards: Optional[int] = None) -> dict:
  """Encodes this host's part of a memory corpus into resumable shards.

  Args:
    model: a MuRAGModel.
    params: its parameters.
    corpus_cfg: the memory corpus task (read once, in order: shuffle and
      repetition are turned off here).
    output_dir: where `embeddings/` goes.
    batches_per_shard: batches per embedding shard (the resume granularity).
    memory_slots: M of the feature converter (items sit in slot 0).
    image_size: H = W; default the model's.
    mesh: device mesh; default `partitioning.make_mesh()`.
    max_shards: stop after this many shards in this call (None: all).

  Returns:
    {"items": encoded on this host so far, "shards": ..., "complete": bool}.
  """
  host, num_hosts = jax.process_index(), jax.process_count()
  mesh = mesh or partitioning.make_mesh()
  cfg = pipeline.DatasetConfig(**{**vars(corpus_cfg), "shuffle": False,
                                  "num_epochs": 1, "drop_remainder": False})
  converter = model.FEATURE_CONVERTER_CLS(
      memory_slots=memory_slots,
      image_size=image_size or model.config.image_size)
  it = pipeline.get_dataset_iterator(cfg, shard_id=host, num_shards=num_hosts,
                                     feature_converter=converter)
  os.makedirs(os.path.join(output_dir, EMB_DIR), exist_ok=True)
  done = _finished_shards(output_dir, host)
  if done:
    it.set_state(done[-1]["iterator_state"])
    if done[-1]["last"]:
      return {"items": sum(d["items"] for d in done), "shards": len(done),
              "complete": True}
  items = sum(d["items"] for d in done)
  logging.info("host %d: %d shards (%d items) already encoded", host, len(done),
               items)
  embed = _embed_fn(model, mesh)
  rows = it.per_host_batch
  t0, new_items, shard, written = time.time(), 0, len(done), 0
  exhausted = False
  while not exhausted and (max_shards is None or written < max_shards):
    embs, ids = [], []
    for _ in range(batches_per_shard):
      try:
        batch = next(it)
      except StopIteration:
        exhausted = True
        break
      valid = batch["memory_mask"][:, 0] > 0  # [B]; padding rows of a last batch
      emb = embed(params, _pad_batch(batch, rows))[:len(valid)]  # [B, D]
      embs.append(emb[valid])
      ids.append(batch["memory_ids"][valid, 0].astype(np.int32))
    if not embs and shard > 0:
      # The previous shard ended exactly at the end: mark it as the last one.
      _, _, marker = _shard_paths(output_dir, host, shard - 1)
      with open(marker) as f:
        info = json.load(f)
      _atomic_json(marker, {**info, "last": True})
      break
    emb_path, ids_path, marker = _shard_paths(output_dir, host, shard)
    dim = embs[0].shape[1] if embs else 0
    emb = np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)
    _atomic_save(emb_path, emb)
    _atomic_save(ids_path, np.concatenate(ids) if ids else np.zeros(0, np.int32))
    _atomic_json(marker, {"items": len(emb), "sha256": _sha256(emb_path),
                          "ids_sha256": _sha256(ids_path),
                          "iterator_state": it.get_state(), "last": exhausted})
    shard, written = shard + 1, written + 1
    items += len(emb)
    new_items += len(emb)
    rate = new_items / max(time.time() - t0, 1e-9)
    total = _expected_items(cfg)
    eta = ("?" if total is None else
           f"{max(0, total // num_hosts - items) / max(rate, 1e-9):.0f}s")
    logging.info("host %d: shard %d written, %d items, %.1f items/s, ETA %s",
                 host, shard - 1, items, rate, eta)
  return {"items": items, "shards": shard, "complete": exhausted}


def _expected_items(cfg: pipeline.DatasetConfig) -> Optional[int]:
  try:
    import seqio  # pylint: disable=g-import-not-at-top
    return seqio.get_mixture_or_task(cfg.mixture_or_task_name).num_input_examples(
        cfg.split)
  except Exception:  # pylint: disable=broad-except
    return None  # progress is still reported, without an ETA


def load_embeddings(output_dir: str) -> Tuple[List[np.ndarray], np.ndarray]:
  """Memory-mapped embedding shards of every host, and their int ids [N]."""
  names = sorted(n for n in os.listdir(os.path.join(output_dir, EMB_DIR))
                 if n.endswith(".json"))
  hosts = sorted({n.split("-")[0] for n in names})
  shards, ids = [], []
  for h in hosts:
    infos = _finished_shards(output_dir, int(h[1:]))
    if not infos or not infos[-1]["last"]:
      raise ValueError(f"{os.path.join(output_dir, EMB_DIR)}: host {h} has not "
                       "finished encoding (rerun build_memory to resume)")
    for s in range(len(infos)):
      emb, idp, _ = _shard_paths(output_dir, int(h[1:]), s)
      shards.append(np.load(emb, mmap_mode="r"))
      ids.append(np.load(idp))
  return [s for s in shards if len(s)], np.concatenate(ids)


def string_ids_for(int_ids: np.ndarray, corpus_ids: Sequence[str]) -> List[str]:
  """Maps stable int ids back to the corpus' string ids."""
  id_map = nb.IdMap(corpus_ids)
  out = id_map.to_string(int_ids)
  missing = [int(i) for i, s in zip(int_ids, out) if not s]
  if missing:
    raise ValueError(f"memory ids {missing[:5]} are not ids of the corpus")
  return out


def embed_queries(*, model, params, query_cfg: pipeline.DatasetConfig,
                  memory_slots: int = 1, image_size: Optional[int] = None
                  ) -> Tuple[List[str], np.ndarray, List[List[str]]]:
  """Retrieval embeddings of every example of a query task, in dataset order.

  Args:
    model: a MuRAGModel; params: its parameters.
    query_cfg: the query task (e.g. webqa_inbatch_v1, split train/validation);
      read once, unshuffled.
    memory_slots, image_size: feature converter settings (only the query features are
      read: 1 slot spares the converter the candidates' images).

  Returns:
    (question ids [Q], query embeddings [Q, D] float32, positive ids [Q][P]).
  """
  cfg = pipeline.DatasetConfig(**{**vars(query_cfg), "shuffle": False,
                                  "num_epochs": 1, "drop_remainder": False})
  converter = model.FEATURE_CONVERTER_CLS(
      memory_slots=memory_slots,
      image_size=image_size or model.config.image_size)
  raw = pipeline.task_dataset(cfg)
  b = cfg.batch_size
  meta = raw.map(lambda ex: {"id": ex["question_id"],
                             "pos": ex["positive_ids"]}).padded_batch(b)
  feats = converter(raw, dict(cfg.task_feature_lengths)).batch(b)
  embed = jax.jit(model.embed_query)
  example_ids, embs, positives = [], [], []
  for m, batch in tf.data.Dataset.zip((meta, feats)).as_numpy_iterator():
    rows = len(m["id"])  # the last batch is padded: one compiled shape for the whole task
    embs.append(np.asarray(embed(params, _pad_batch(batch, b)), np.float32)[:rows])  # [B, D]
    example_ids += [s.decode("utf-8") for s in m["id"]]
    positives += [[p.decode("utf-8") for p in row if p] for row in m["pos"]]
  if not embs:
    raise ValueError(f"query task {cfg.mixture_or_task_name!r} split "
                     f"{cfg.split!r} has no examples")
  return example_ids, np.concatenate(embs), positives


def search_neighbours(*, model, params, index, query_cfg: pipeline.DatasetConfig,
                      k: int = 4, memory_slots: int = 1,
                      image_size: Optional[int] = None):
  """Top-k global neighbours of every example of a query task.

  Returns:
    (nb.NeighbourTable, full-wiki retrieval metrics of its lists (recall@K,
    MRR, F1; `tasks.metrics.retrieval`)).
  """
  from tasks.metrics import retrieval  # pylint: disable=g-import-not-at-top
  example_ids, q, positives = embed_queries(
      model=model, params=params, query_cfg=query_cfg,
      memory_slots=memory_slots, image_size=image_size)
  ids, scores = index.search(q, k)  # [Q, k] best first
  table = nb.NeighbourTable.from_arrays(example_ids, ids, scores)
  targets = [{"positive_ids": p} for p in positives]
  preds = [{"retrieved_ids": list(map(str, r)),
            "retrieved_scores": list(map(float, s))} for r, s in zip(ids, scores)]
  return table, retrieval.retrieval_metrics(targets, preds, ks=sorted({1, k}))


def write_table(tables: Sequence[nb.NeighbourTable], out_path: str,
                labels: Sequence[str] = ()) -> int:
  """Writes several neighbour tables into one JSONL file, atomically.

  Args:
    tables: the tables (e.g. one per split).
    out_path: the file (tasks/neighbours.py format), replaced in one rename.
    labels: names of the tables for error messages.

  Returns:
    The number of records written.

  Raises:
    ValueError: an example id occurs in two tables.
  """
  seen: Dict[str, str] = {}
  records = []
  for i, table in enumerate(tables):
    label = labels[i] if i < len(labels) else str(i)
    for rec in table:
      if rec.example_id in seen:
        raise ValueError(f"{out_path}: example id {rec.example_id!r} occurs in "
                         f"both {seen[rec.example_id]} and {label}")
      seen[rec.example_id] = label
      records.append(rec)
  tmp = out_path + ".tmp"
  nb.NeighbourTable(records).write_jsonl(tmp)
  os.replace(tmp, out_path)
  return len(records)


@gin.configurable(denylist=["params", "index"])
def write_neighbours(*, model, params, index, query_cfg: pipeline.DatasetConfig,
                     out_path: str, k: int = 4, memory_slots: int = 1,
                     image_size: Optional[int] = None) -> Dict[str, float]:
  """Top-k global neighbours of every example of a query task -> JSONL.

  Args:
    model: a MuRAGModel; params: its parameters.
    index: a MemoryIndex / ShardedIndex over the corpus (string ids).
    query_cfg: the query task (e.g. webqa_inbatch_v1, split train/validation).
    out_path: tasks/neighbours.py JSONL file written (atomically).
    k: neighbours per example.
    memory_slots, image_size: feature converter settings.

  Returns:
    Full-wiki retrieval metrics (recall@K, MRR, F1) of the written lists.
  """
  table, metrics = search_neighbours(
      model=model, params=params, index=index, query_cfg=query_cfg, k=k,
      memory_slots=memory_slots, image_size=image_size)
  write_table([table], out_path)
  return metrics


def neighbour_groups(entries: Sequence[Tuple[str, Any, str]],
                     binding: str = "build_memory.neighbour_tasks"
                     ) -> Dict[str, List[Tuple[str, str]]]:
  """Groups (task, split or splits, file name) entries by output file.

  Several entries may name the same file, and an entry may give a tuple of
  splits: all their records go into that one file (what the fixed tasks read
  for every split).

  Returns:
    file name -> [(task, split), ...] in the given order.
  """
  groups: Dict[str, List[Tuple[str, str]]] = {}
  for i, entry in enumerate(entries):
    if not isinstance(entry, (tuple, list)) or len(entry) != 3:
      raise ValueError(f"{binding}[{i}] = {entry!r}: expected (task name, split "
                       "or tuple of splits, output file name)")
    task, splits, name = entry
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits or not all(isinstance(s, str) and s for s in splits):
      raise ValueError(f"{binding}[{i}] = {entry!r}: bad split(s)")
    for split in splits:
      if (task, split) in groups.setdefault(name, []):
        raise ValueError(f"{binding}[{i}]: ({task!r}, {split!r}) is listed twice "
                         f"for {name!r}")
      groups[name].append((task, split))
  return groups


def load_model_params(model, lengths: Mapping[str, int],
                      checkpoint_path: Optional[str], random_seed: int = 0):
  """Parameters of `model` from an orbax checkpoint (or a fresh init if None)."""
  from murag import checkpoints  # pylint: disable=g-import-not-at-top
  shapes = {"memory_tokens": (1, 1, lengths["memory_tokens"]),
            "decoder_input_tokens": (1, lengths["targets"])}
  init = lambda rng: model.get_initial_variables(rng, shapes)["params"]
  if not checkpoint_path:
    return init(jax.random.PRNGKey(random_seed))
  # Shapes only: running the initialiser would compile the whole model for nothing.
  abstract = jax.eval_shape(init, jax.random.PRNGKey(random_seed))
  return checkpoints.load_params(checkpoint_path, abstract, strict=True)


@gin.configurable
def build_memory(*, model, output_dir: str, corpus_cfg: pipeline.DatasetConfig,
                 checkpoint_path: Optional[str] = None, random_seed: int = 0,
                 index_config: Optional[index_lib.IndexConfig] = None,
                 neighbour_tasks: Sequence[Tuple[str, Any, str]] = (),
                 query_cfg: Optional[pipeline.DatasetConfig] = None,
                 k: int = 4, batches_per_shard: int = 64,
                 hard_negative_tasks: Sequence[Tuple[str, Any, str]] = (),
                 num_hard_negatives: int = 8) -> dict:
  """Encode the corpus, build the index, write neighbour files (see module doc).

  Args:
    model: a MuRAGModel (gin).
    output_dir: output directory.
    corpus_cfg: the memory corpus task.
    checkpoint_path: orbax checkpoint (MODEL_DIR / step dir / params dir);
      None uses freshly initialised parameters (smoke tests only).
    random_seed: init seed when no checkpoint is given.
    index_config: MemoryIndex settings (default: gin's IndexConfig()).
    neighbour_tasks: (task name, split or tuple of splits, output file name)
      entries. Entries naming the same file are written into it together
      (one atomic write), e.g. [("webqa_inbatch_v1", ("train", "validation"),
      "webqa_neighbours.jsonl")] gives the fixed tasks neighbours for both
      splits.
    query_cfg: DatasetConfig template for those tasks (lengths, batch size).
    k: neighbours per query.
    batches_per_shard: embedding shard size in batches (resume granularity).
    hard_negative_tasks: entries like `neighbour_tasks`; for their questions
      the top-ranked items that are not positives are written
      (murag/memory/hard_negatives.py; read by the *_inbatch_hardneg_v1 tasks).
    num_hard_negatives: mined negatives per question.

  Returns:
    A summary dict: counts, fingerprint; for each neighbour file its retrieval
    metrics (recall@K, MRR, F1; for a file with several (task, split) entries
    a dict keyed "task/split"); "retrieval": {"task/split": metrics} for every
    entry; "hard_negatives": {file: records written}.
  """
  groups = neighbour_groups(neighbour_tasks)
  hard_groups = neighbour_groups(hard_negative_tasks,
                                 "build_memory.hard_negative_tasks")
  if (groups or hard_groups) and query_cfg is None:
    raise ValueError("build_memory.neighbour_tasks / hard_negative_tasks need "
                     "build_memory.query_cfg")
  params = load_model_params(model, dict(corpus_cfg.task_feature_lengths),
                             checkpoint_path, random_seed)
  ckpt_digest = params_fingerprint(params)
  summary = encode_corpus(model=model, params=params, corpus_cfg=corpus_cfg,
                          output_dir=output_dir,
                          batches_per_shard=batches_per_shard)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("build_memory:encoded")
  if jax.process_index() != 0:
    return summary
  shards, int_ids = load_embeddings(output_dir)
  str_ids = string_ids_for(int_ids, corpus_string_ids(
      corpus_cfg.mixture_or_task_name, corpus_cfg.split))
  fingerprint = index_lib.make_fingerprint(ckpt_digest, str_ids)
  _atomic_json(os.path.join(output_dir, "metadata.json"), {
      "corpus": corpus_cfg.mixture_or_task_name, "split": corpus_cfg.split,
      "items": len(str_ids), "dim": int(shards[0].shape[1]),
      "checkpoint": checkpoint_path, "checkpoint_digest": ckpt_digest,
      "fingerprint": fingerprint, "ids": str_ids})
  index = index_lib.MemoryIndex.build(shards, str_ids, fingerprint=fingerprint,
                                      config=index_config)
  index.save(os.path.join(output_dir, "index"))
  summary.update(fingerprint=fingerprint, index_kind=index.kind,
                 items=len(str_ids), retrieval={})

  def task_cfg(task, split):
    return pipeline.DatasetConfig(**{**vars(query_cfg),
                                     "mixture_or_task_name": task,
                                     "split": split})

  for name, entries in groups.items():
    tables, per_entry = [], {}
    for task, split in entries:
      table, metrics = search_neighbours(model=model, params=params, index=index,
                                         query_cfg=task_cfg(task, split), k=k)
      tables.append(table)
      per_entry[f"{task}/{split}"] = metrics
      logging.info("%s %s/%s: %d records, %s", name, task, split, len(table),
                   metrics)
    write_table(tables, os.path.join(output_dir, name), list(per_entry))
    summary["retrieval"].update(per_entry)
    summary[name] = (next(iter(per_entry.values())) if len(per_entry) == 1
                     else per_entry)
  if hard_groups:
    from murag.memory import hard_negatives  # pylint: disable=g-import-not-at-top
    summary["hard_negatives"] = {}
    for name, entries in hard_groups.items():
      all_ex, all_ids, all_scores = [], [], []
      for task, split in entries:
        ex_ids, q, positives = embed_queries(model=model, params=params,
                                             query_cfg=task_cfg(task, split))
        ids, scores = hard_negatives.mine(index, q, positives, num_hard_negatives)
        all_ex += ex_ids
        all_ids += ids
        all_scores += scores
      summary["hard_negatives"][name] = hard_negatives.write_jsonl(
          os.path.join(output_dir, name), all_ex, all_ids, all_scores)
  _atomic_json(os.path.join(output_dir, "summary.json"), summary)
  return summary


def main(argv: Sequence[str]):
  from murag import train  # pylint: disable=g-import-not-at-top
  return train.main(argv, entry=build_memory)


if __name__ == "__main__":
  main(sys.argv[1:])
