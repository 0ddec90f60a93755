"""A seeded synthetic multimodal world written in the public formats of MuRAG's datasets.

MuRAG (Chen et al. 2022) pretrains on LAION, CC, PAQ and VQA (Sec. 3.3) and is fine-tuned and
evaluated on WebQA and MultimodalQA (Sec. 4). None of these can be downloaded here, so this
package invents a small world in which questions can only be answered by retrieving the right
image or snippet, and writes it in the real file formats so that the same converters serve the
real data. See docs/readme/synthetic_world.md.

Python API:
  generate_world(out_dir, size="small", seed=0, formats_to_write=None, overwrite=False,
                 progress=None) -> manifest dict
  check_world(out_dir) -> dict of counts (raises WorldError on any problem)
CLI:
  python -m tasks.synthetic_world --out_dir=D --size=small|medium|large --seed=N
"""
from tasks.synthetic_world.check import check_world
from tasks.synthetic_world.drawing import analyze_image
from tasks.synthetic_world.generate import FORMATS
from tasks.synthetic_world.generate import MANIFEST
from tasks.synthetic_world.generate import generate_world
from tasks.synthetic_world.world import SIZES
from tasks.synthetic_world.world import WorldError

__all__ = ["FORMATS", "MANIFEST", "SIZES", "WorldError", "analyze_image", "check_world",
           "generate_world"]
