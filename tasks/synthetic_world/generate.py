"""Writes the synthetic world to disk: atomic files, a manifest, resumable runs.

Every file is written to a temporary name in its directory and renamed into place, so an
interrupted run never leaves a half-written file under a final name. A marker
(`.world_in_progress.json`) records (seed, size, formats) while a run is under way; the
manifest (`world_manifest.json`, with the sha256 of every file) is written last. Re-running
with the same arguments resumes: files whose content already matches are kept, the rest are
rewritten, and stray temporary files are removed. Different arguments on a directory that
already holds (part of) a world are refused unless `overwrite=True`; files of the old world that
the new one lacks (anything under the format directories) are then removed.
"""
import hashlib
import json
import os
import sys
import time

from tasks.synthetic_world import formats
from tasks.synthetic_world import world

FORMATS = ("webqa", "mmqa", "laion", "cc", "paq", "vqa")
MANIFEST = "world_manifest.json"
MARKER = ".world_in_progress.json"
TMP_TAG = ".tmp-synthetic-world"
GENERATOR_VERSION = 1


class AtomicWriter:
  """Writes files atomically under `root` and records their checksums."""

  def __init__(self, root):
    self.root = root
    self.files = {}  # relative path -> {"sha256", "bytes"}
    self.kept = 0
    self.written = 0

  def _commit(self, tmp, path):
    os.replace(tmp, path)

  def __call__(self, relpath, data):
    if relpath in self.files:
      raise world.WorldError(f"generator bug: {relpath} written twice")
    path = os.path.join(self.root, relpath)
    digest = hashlib.sha256(data).hexdigest()
    self.files[relpath] = {"sha256": digest, "bytes": len(data)}
    if os.path.isfile(path) and os.path.getsize(path) == len(data):
      with open(path, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() == digest:
          self.kept += 1
          return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}{TMP_TAG}"
    with open(tmp, "wb") as f:
      f.write(data)
    self._commit(tmp, path)
    self.written += 1


def write_json_atomic(path, obj):
  tmp = path + TMP_TAG
  with open(tmp, "w") as f:
    json.dump(obj, f, sort_keys=True, indent=1)
    f.write("\n")
  os.replace(tmp, path)


def _check_out_dir(out_dir):
  """Creates out_dir if needed and proves it is writable; raises WorldError otherwise."""
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise world.WorldError(f"cannot create output directory {out_dir!r}: {e}") from e
  probe = os.path.join(out_dir, ".write_probe" + TMP_TAG)
  try:
    with open(probe, "wb") as f:
      f.write(b"ok")
    os.remove(probe)
  except OSError as e:
    raise world.WorldError(f"output directory {out_dir!r} is not writable: {e}") from e


def _remove_temporaries(out_dir):
  removed = 0
  for dirpath, _, files in os.walk(out_dir):
    for name in files:
      if name.endswith(TMP_TAG):
        os.remove(os.path.join(dirpath, name))
        removed += 1
  return removed


def _stale_files(out_dir, candidates, keep):
  """Files under the format directories (or listed in an old manifest) not in `keep`."""
  found = set(candidates)
  for fmt in FORMATS:
    for dirpath, _, files in os.walk(os.path.join(out_dir, fmt)):
      found.update(os.path.relpath(os.path.join(dirpath, f), out_dir) for f in files)
  return sorted(p for p in found - keep if os.path.isfile(os.path.join(out_dir, p)))


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise world.WorldError(f"{path}: unreadable ({e}); delete the directory or pass "
                           "overwrite=True / --overwrite") from e


def _parse_formats(fmts):
  if fmts is None:
    return list(FORMATS)
  if isinstance(fmts, str):
    fmts = [f for f in fmts.split(",") if f]
  unknown = [f for f in fmts if f not in FORMATS]
  if unknown or not fmts:
    raise world.WorldError(f"unknown output format(s) {unknown or fmts}; choose from {FORMATS}")
  return [f for f in FORMATS if f in fmts]


def generate_world(out_dir, size="small", seed=0, formats_to_write=None, overwrite=False,
                   progress=None):
  """Generates (or resumes, or verifies) a synthetic world in `out_dir`.

  Args:
    out_dir: output directory (created if missing).
    size: "small", "medium" or "large" (see world.SIZES).
    seed: integer seed; the same (size, seed, formats) always gives byte-identical files.
    formats_to_write: None for all, or a list / comma-separated string out of FORMATS.
    overwrite: allow replacing a world made with other arguments.
    progress: callable taking a message string (e.g. print), or None for silence.

  Returns:
    The manifest dict: seed, size, formats, counts and {relpath: {sha256, bytes}}.

  Raises:
    WorldError: unknown size or format, unwritable directory, or a directory that holds a
      world (or other files) made with different arguments.
  """
  if not isinstance(seed, int) or isinstance(seed, bool):
    raise world.WorldError(f"seed must be an integer, got {seed!r}")
  cfg = world.size_config(size)
  fmts = _parse_formats(formats_to_write)
  say = progress or (lambda msg: None)
  _check_out_dir(out_dir)
  params = {"seed": seed, "size": size, "formats": fmts, "generator_version": GENERATOR_VERSION}
  manifest_path = os.path.join(out_dir, MANIFEST)
  marker_path = os.path.join(out_dir, MARKER)
  old_files = {}
  for path in (manifest_path, marker_path):
    if os.path.exists(path):
      old = _read_json(path)
      if {k: old.get(k) for k in params} != params and not overwrite:
        raise world.WorldError(
            f"{out_dir!r} already holds a synthetic world made with "
            f"{ {k: old.get(k) for k in params} }, not {params}; use another out_dir or "
            "overwrite=True (--overwrite)")
      old_files.update(old.get("files", {}))
  entries = [e for e in os.listdir(out_dir) if e not in (MANIFEST, MARKER)]
  if entries and not old_files and not os.path.exists(marker_path) and not overwrite:
    raise world.WorldError(f"{out_dir!r} is not empty and holds no synthetic world "
                           f"(found {sorted(entries)[:5]}); use an empty directory")
  if os.path.exists(marker_path):
    say(f"resuming an interrupted run in {out_dir}")
  stray = _remove_temporaries(out_dir)
  if stray:
    say(f"removed {stray} temporary file(s) left by an interrupted run")
  write_json_atomic(marker_path, params)

  start = time.time()
  writer = AtomicWriter(out_dir)
  names = world.NameMaker(world.rng_for(seed, "names"))
  realms = world.build_realms(seed, cfg, names)
  counts = {"realms": sum(r.split is not None for r in realms),
            "distractor_realms": sum(r.split is None for r in realms)}
  steps = {
      "webqa": lambda: formats.write_webqa(seed, cfg, realms, writer),
      "mmqa": lambda: formats.write_mmqa(seed, cfg, realms, writer),
      "laion": lambda: formats.write_img2dataset(seed, cfg, "laion", writer),
      "cc": lambda: formats.write_img2dataset(seed, cfg, "cc", writer),
      # PAQ invents its own realms after the main ones so the names never collide.
      "paq": lambda: formats.write_paq(seed, cfg, names, writer),
      "vqa": lambda: formats.write_vqa(seed, cfg, writer),
  }
  for i, fmt in enumerate(fmts):
    t = time.time()
    got = steps[fmt]()
    counts.update(got)
    say(f"[{i + 1}/{len(fmts)}] {fmt}: " + ", ".join(f"{k}={v}" for k, v in got.items()) +
        f" ({time.time() - t:.1f}s)")
  stale = _stale_files(out_dir, set(old_files) | set(writer.files), set(writer.files))
  for relpath in stale:
    os.remove(os.path.join(out_dir, relpath))  # from a replaced or interrupted other world
  if stale:
    say(f"removed {len(stale)} file(s) of an earlier world that this one does not have")
  manifest = dict(params, counts=counts, files=dict(sorted(writer.files.items())))
  write_json_atomic(manifest_path, manifest)
  os.remove(marker_path)
  say(f"world written to {out_dir}: {len(writer.files)} files ({writer.written} written, "
      f"{writer.kept} already up to date) in {time.time() - start:.1f}s")
  return manifest


def stderr_progress(msg):
  print(f"[synthetic_world] {msg}", file=sys.stderr, flush=True)
