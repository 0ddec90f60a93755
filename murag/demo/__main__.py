"""`python -m murag.demo --run_dir=D`: runs the end-to-end demo (see murag/demo/__init__.py).

A separate __main__ so that the gin configurables are registered once, under murag.demo.
"""
import sys

from murag import demo

if __name__ == "__main__":
  sys.exit(demo.main())
