"""CLI: python -m tasks.synthetic_world --out_dir=D --size=small|medium|large --seed=N.

Writes the synthetic world (see tasks/synthetic_world/__init__.py), prints progress to stderr,
then re-reads every file with `check_world` (unless --nocheck) and prints the counts as JSON.
"""
import argparse
import json
import sys

from tasks.synthetic_world import check
from tasks.synthetic_world import generate
from tasks.synthetic_world import world


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m tasks.synthetic_world",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", required=True, help="output directory")
  parser.add_argument("--size", default="small", help=f"one of {sorted(world.SIZES)}")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--formats", default=",".join(generate.FORMATS),
                      help=f"comma-separated subset of {','.join(generate.FORMATS)}")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a world made with other arguments in --out_dir")
  parser.add_argument("--nocheck", action="store_true", help="skip the read-back check")
  args = parser.parse_args(argv)
  try:
    generate.generate_world(args.out_dir, args.size, args.seed, args.formats,
                            overwrite=args.overwrite, progress=generate.stderr_progress)
    if not args.nocheck:
      counts = check.check_world(args.out_dir)
      generate.stderr_progress("read-back check passed")
      print(json.dumps(counts, indent=1, sort_keys=True))
  except world.WorldError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
