"""Shared fixtures for the data-pipeline tests: a small synthetic world, converted once.

The world is written by `tasks.synthetic_world` and converted with the same TFDS builders
users run (`tasks.builders.build`), at 32 px. Everything is cached per test process.
"""
import atexit
import functools
import os
import shutil
import tempfile

ROOT = None
IMAGE_CONFIG = "px32"
SHUFFLE_BUFFER = 64  # small worlds: keeps the first batch fast
LENGTHS = {"query_tokens": 16, "memory_tokens": 24, "targets": 12}


def _root():
  global ROOT
  if ROOT is None:
    ROOT = tempfile.mkdtemp(prefix="murag_data_test_")
    atexit.register(shutil.rmtree, ROOT, True)
  return ROOT


@functools.lru_cache(maxsize=None)
def world_dir(size="small", seed=0):
  from tasks.synthetic_world import generate  # pylint: disable=g-import-not-at-top
  out = os.path.join(_root(), f"world_{size}_{seed}")
  generate.generate_world(out, size=size, seed=seed)
  return out


@functools.lru_cache(maxsize=None)
def vocabulary():
  from tasks import vocab  # pylint: disable=g-import-not-at-top
  return vocab.build_offline_vocabulary(world_dir())


def data_dir():
  return os.path.join(_root(), "tfds")


@functools.lru_cache(maxsize=None)
def built(source, config=IMAGE_CONFIG):
  """Builds one source of the world (cached) and returns the prepared builder."""
  from tasks import builders  # pylint: disable=g-import-not-at-top
  sub = {"memory_corpus": config.split("_")[0]}.get(source, source)
  return builders.build(source, manual_dir=os.path.join(world_dir(), sub),
                        data_dir=data_dir(), config=config)


@functools.lru_cache(maxsize=None)
def registered(*sources):
  """Builds `sources` and registers all MuRAG tasks on this data dir (px32, offline vocab)."""
  for s in sources:
    if s == "memory_corpus":
      built("memory_corpus", f"webqa_{IMAGE_CONFIG}")
      built("memory_corpus", f"mmqa_{IMAGE_CONFIG}")
    else:
      built(s)
  from tasks import murag_tasks  # pylint: disable=g-import-not-at-top
  murag_tasks.register_all(image_config=IMAGE_CONFIG, data_dir=data_dir(),
                           vocabulary=vocabulary(), shuffle_buffer_size=SHUFFLE_BUFFER)
  return data_dir()


def converter(memory_slots=4, image_size=32):
  from tasks.feature_converters import MuRAGFeatureConverter  # pylint: disable=g-import-not-at-top
  return MuRAGFeatureConverter(memory_slots=memory_slots, image_size=image_size)
