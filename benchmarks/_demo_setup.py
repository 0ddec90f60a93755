"""Shared by the benchmarks that build the demo's models: a `murag.demo.Demo` with a vocabulary."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from murag import demo  # noqa: E402
from murag import train as train_lib  # noqa: E402


def demo_with_vocabulary(gin_file: str, run_dir=None, bindings=()):
  """Parses `gin_file` (+ bindings) and returns (Demo, TemporaryDirectory or None).

  With `run_dir` (a demo run that has passed the vocab stage) its vocabulary is used;
  otherwise the demo's world and vocab stages run into a temporary directory (~15 s), which
  the caller cleans up.
  """
  train_lib.parse_gin([gin_file], list(bindings), [demo.REPO_ROOT])
  if run_dir is not None:
    return demo.Demo(run_dir, demo.DemoConfig()), None
  tmp = tempfile.TemporaryDirectory()
  d = demo.Demo(tmp.name, demo.DemoConfig())
  d.stage_world()
  d.stage_vocab()
  return d, tmp
