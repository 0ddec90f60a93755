"""The model-feature contract between the data pipeline and the models.

Every MuRAG batch the feature converter emits, and every batch `MuRAGModel` accepts, has
exactly these features (per example shapes; a batch adds a leading B axis).

Letters: Lq query text length, Lm memory text length, Lt target length, M memory slots per
example (positives + hard negatives for in-batch training, the K neighbours for fixed
retrieval), H, W image height and width (224 by default).

| feature                 | dtype   | shape        | meaning                                                |
|-------------------------|---------|--------------|--------------------------------------------------------|
| query_tokens            | int32   | [Lq]         | question / prompt tokens, EOS-terminated, 0-padded      |
| query_image             | uint8   | [H, W, 3]    | query image (zeros when absent)                         |
| query_image_mask        | int32   | []           | 1 when the query has an image                           |
| memory_tokens           | int32   | [M, Lm]      | text of each memory item (caption, passage, snippet)    |
| memory_images           | uint8   | [M, H, W, 3] | image of each memory item (zeros for text snippets)     |
| memory_image_mask       | int32   | [M]          | 1 when the memory item has an image                     |
| memory_mask             | int32   | [M]          | 1 for a real item, 0 for a padding slot                 |
| memory_labels           | int32   | [M]          | 1 when the item is a positive source for this query     |
| memory_ids              | int32   | [M]          | integer id of the item in its corpus (-1 when unknown)  |
| memory_scores           | float32 | [M]          | retrieval score from the global index (fixed stage)     |
| retrieve                | int32   | []           | 1: generate from TopK(memory) + query; 0: query only   |
| decoder_input_tokens    | int32   | [Lt]         | targets shifted right (T5 style, 0 = BOS)               |
| decoder_target_tokens   | int32   | [Lt]         | answer / caption tokens, EOS-terminated, 0-padded       |
| decoder_loss_weights    | int32   | [Lt]         | 1 on real target positions                              |
"""
import numpy as np

# name -> (dtype, per-example shape with symbolic dims)
MURAG_MODEL_FEATURES = {
    "query_tokens": (np.int32, ("Lq",)),
    "query_image": (np.uint8, ("H", "W", 3)),
    "query_image_mask": (np.int32, ()),
    "memory_tokens": (np.int32, ("M", "Lm")),
    "memory_images": (np.uint8, ("M", "H", "W", 3)),
    "memory_image_mask": (np.int32, ("M",)),
    "memory_mask": (np.int32, ("M",)),
    "memory_labels": (np.int32, ("M",)),
    "memory_ids": (np.int32, ("M",)),
    "memory_scores": (np.float32, ("M",)),
    "retrieve": (np.int32, ()),
    "decoder_input_tokens": (np.int32, ("Lt",)),
    "decoder_target_tokens": (np.int32, ("Lt",)),
    "decoder_loss_weights": (np.int32, ("Lt",)),
}


def resolve_shape(symbolic, dims):
  """Turns a symbolic per-example shape into integers.

  Args:
    symbolic: a tuple such as ("M", "Lm").
    dims: a mapping such as {"M": 8, "Lm": 64, ...}.

  Returns:
    The tuple of ints.
  """
  return tuple(dims[d] if isinstance(d, str) else d for d in symbolic)


def validate_batch(batch, dims, batch_size=None):
  """Checks a batch against the contract and names the feature at fault.

  Args:
    batch: mapping feature name -> array with a leading batch axis.
    dims: the symbolic sizes (Lq, Lm, Lt, M, H, W).
    batch_size: expected leading size, or None to take it from the first feature.

  Raises:
    ValueError: a feature is missing, has the wrong dtype or the wrong shape.
  """
  missing = [k for k in MURAG_MODEL_FEATURES if k not in batch]
  if missing:
    raise ValueError(f"MuRAG batch is missing feature(s) {missing}; expected all of "
                     f"{sorted(MURAG_MODEL_FEATURES)}")
  for name, (dtype, symbolic) in MURAG_MODEL_FEATURES.items():
    value = batch[name]
    expected = resolve_shape(symbolic, dims)
    actual = tuple(value.shape)
    if batch_size is None:
      batch_size = actual[0] if actual else None
    if actual != (batch_size,) + expected:
      raise ValueError(f"feature '{name}': expected shape {(batch_size,) + expected} "
                       f"(B, {', '.join(map(str, symbolic)) or 'scalar'}), got {actual}")
    if np.dtype(value.dtype) != np.dtype(dtype):
      raise ValueError(f"feature '{name}': expected dtype {np.dtype(dtype).name}, "
                       f"got {np.dtype(value.dtype).name}")
