"""Importers of pretrained weights into MuRAG's parameter tree (paper §4.1: T5 + ViT init).

`hf`: Hugging Face safetensors (T5 v1.0 / v1.1, ViT). `t5x`: T5X checkpoints (orbax layout
and the legacy msgpack + tensorstore layout). `merge_pretrained` places the imported trees
into a freshly initialised MuRAG parameter tree, checking every shape.
"""
from murag.importers.common import merge_pretrained  # noqa: F401
