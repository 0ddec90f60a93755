"""An interrupted LAION / CC conversion resumes part-way (tasks/builders/resume.py)."""
import io
import os
import signal
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tasks import builders
from tasks.builders import common
from tasks.builders import image_caption
from tasks.builders import resume
from tests.tasks import murag_data_helpers as helpers
from tests.tasks.test_bad_records import _rewrite_tar


class _Interrupted(Exception):
  pass


def _groups(tar_path):
  """key -> [(member name, bytes)] of a webdataset tar, in file order."""
  out = {}
  with tarfile.open(tar_path) as t:
    for m in t.getmembers():
      out.setdefault(os.path.splitext(m.name)[0], []).append((m.name, t.extractfile(m).read()))
  return out


def _write_tar(path, groups):
  with tarfile.open(path, "w") as t:
    for members in groups:
      for name, data in members:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))


def _manual_dir(tmp_path, n_files=4):
  """The world's LAION pairs re-packed as `n_files` shards, one with a corrupt JPEG."""
  src = os.path.join(helpers.world_dir(), "laion")
  groups = []
  for tar in sorted(os.listdir(src)):
    if tar.endswith(".tar"):
      groups += list(_groups(os.path.join(src, tar)).values())
  manual = tmp_path / "laion"
  manual.mkdir()
  per = -(-len(groups) // n_files)
  for i in range(n_files):
    _write_tar(str(manual / f"{i:05d}.tar"), groups[i * per:(i + 1) * per])
  corrupt = groups[per][0][0].split(".")[0]  # first sample of shard 1

  def edit(name, data):
    return b"\xff\xd8\xff\xe0garbage" if name == f"{corrupt}.jpg" else data
  shard1 = str(manual / "00001.tar")
  _rewrite_tar(shard1, shard1 + ".new", edit)
  os.replace(shard1 + ".new", shard1)
  return manual


def _examples(builder):
  return [(ex["id"], ex["int_id"], ex["caption"], ex["url"], ex["image"])
          for ex in tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))]


@pytest.fixture
def counting(monkeypatch):
  """Records the input files that are really converted (decoded, resized, re-encoded)."""
  calls = []
  convert = image_caption._ImageCaptionBuilder._convert_file

  def wrapper(self, path, counter):
    calls.append(os.path.basename(path))
    yield from convert(self, path, counter)
  monkeypatch.setattr(image_caption._ImageCaptionBuilder, "_convert_file", wrapper)
  return calls


def test_interrupted_build_resumes_and_matches(tmp_path, counting):
  manual = _manual_dir(tmp_path)
  names = sorted(os.listdir(manual))
  data_dir = str(tmp_path / "resumed")

  # Run 1: stop in the middle of the third shard (its partial output must not be kept).
  convert = image_caption._ImageCaptionBuilder._convert_file

  def interrupting(self, path, counter):
    for i, item in enumerate(convert(self, path, counter)):
      if os.path.basename(path) == names[2] and i == 5:
        raise _Interrupted()
      yield item
  image_caption._ImageCaptionBuilder._convert_file = interrupting
  try:
    with pytest.raises(_Interrupted):
      builders.build("laion", manual_dir=str(manual), data_dir=data_dir, config="px32")
  finally:
    image_caption._ImageCaptionBuilder._convert_file = convert
  unfinished = builders.BUILDERS["laion"](data_dir=data_dir, config="px32")
  assert not unfinished.is_prepared()  # nothing was published
  cache = unfinished.file_cache()
  done = [n for n in names if cache.load(str(manual / n)) is not None]
  assert done == names[:2]
  assert not [f for f in os.listdir(cache.cache_dir) if ".tmp" in f]  # partial entry removed

  # Run 2 resumes: only the unfinished shards are converted again.
  counting.clear()
  reports = []
  resumed = builders.build("laion", manual_dir=str(manual), data_dir=data_dir, config="px32",
                           on_file_done=reports.append)
  assert counting == names[2:]
  assert [(os.path.basename(r.input_file), r.reused) for r in reports] == [
      (n, i < 2) for i, n in enumerate(names)]
  assert not os.path.exists(resumed.resume_cache_dir)  # dropped after success

  # The same dataset as one uninterrupted build.
  fresh = builders.build("laion", manual_dir=str(manual), data_dir=str(tmp_path / "fresh"),
                         config="px32")
  got, want = _examples(resumed), _examples(fresh)
  assert len(got) == len(want) == fresh.info.splits["train"].num_examples
  for a, b in zip(got, want):
    assert a[:4] == b[:4] and a[4] == b[4]
  assert resumed.bad_records.as_dict() == fresh.bad_records.as_dict() == {
      str(manual / "00001.tar"): {"undecodable_image": 1}}
  assert common.read_bad_record_report(resumed) == common.read_bad_record_report(fresh)
  assert resumed.info.splits["train"].shard_lengths == fresh.info.splits["train"].shard_lengths


def test_changed_input_or_config_is_converted_again(tmp_path, counting):
  manual = _manual_dir(tmp_path, n_files=3)
  names = sorted(os.listdir(manual))
  builder = builders.BUILDERS["laion"](data_dir=str(tmp_path / "d"), config="px32")
  # Fill the cache as an interrupted build would, by converting each file once.
  for n in names:
    list(builder.resumable_examples(str(manual / n), builder._convert_file))
  assert counting == names
  cache = builder.file_cache()
  # Shard 0 keeps its size but changes one byte: the sha256 check catches it.
  data = bytearray((manual / names[0]).read_bytes())
  data[600] ^= 1
  (manual / names[0]).write_bytes(bytes(data))
  # Shard 1's records file is damaged: its recorded size no longer matches.
  records = cache.marker_path(str(manual / names[1])).replace(".done.json", ".records")
  with open(records, "ab") as f:
    f.write(b"x")
  assert cache.load(str(manual / names[0])) is None
  assert cache.load(str(manual / names[1])) is None
  assert cache.load(str(manual / names[2]))["num_ok"] > 0
  # Another resolution has its own fingerprint: nothing is reused.
  other = builders.BUILDERS["laion"](data_dir=str(tmp_path / "d"), config="px64").file_cache()
  assert other.cache_dir != cache.cache_dir
  assert resume.FileCache(cache.cache_dir, other.fingerprint).load(
      str(manual / names[2])) is None

  counting.clear()
  reused = [ex for ex in builder.resumable_examples(str(manual / names[2]),
                                                    builder._convert_file)]
  assert counting == []  # served from the cache
  assert [k for k, _ in reused] == [k for k, _ in builder._convert_file(
      str(manual / names[2]), common.BadRecordCounter())]
  np.testing.assert_array_equal([len(ex["image"]) for _, ex in reused],
                                [len(ex["image"]) for _, ex in builder._convert_file(
                                    str(manual / names[2]), common.BadRecordCounter())])


_KILL_SCRIPT = """
import os, signal, sys
from tasks import builders
from tasks.builders import image_caption
convert = image_caption._ImageCaptionBuilder._convert_file
def killing(self, path, counter):
  for i, item in enumerate(convert(self, path, counter)):
    if os.path.basename(path) == sys.argv[3] and i == 3:
      os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind runs
    yield item
image_caption._ImageCaptionBuilder._convert_file = killing
builders.build("laion", manual_dir=sys.argv[1], data_dir=sys.argv[2], config="px32")
"""


def test_killed_build_resumes(tmp_path, counting):
  """A SIGKILL in the middle of a shard: finished shards are reused, the partial one is not."""
  manual = _manual_dir(tmp_path, n_files=3)
  names = sorted(os.listdir(manual))
  data_dir = str(tmp_path / "killed")
  env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(manual), data_dir, names[1]],
                        env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  builder = builders.BUILDERS["laion"](data_dir=data_dir, config="px32")
  leftovers = [f for f in os.listdir(builder.resume_cache_dir) if ".tmp" in f]
  assert leftovers  # the killed process left its partial records file behind
  counting.clear()
  resumed = builders.build("laion", manual_dir=str(manual), data_dir=data_dir, config="px32")
  assert counting == names[1:]
  fresh = builders.build("laion", manual_dir=str(manual), data_dir=str(tmp_path / "fresh"),
                         config="px32")
  assert _examples(resumed) == _examples(fresh)
  assert resumed.bad_records.as_dict() == fresh.bad_records.as_dict()
