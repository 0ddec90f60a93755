"""Evaluation metrics (seqio metric-function style), see docs/readme/metrics.md.

Submodules: webqa, mmqa, vqa, captioning, retrieval, generation, bartscore,
normalize. They are host-side (numpy/scipy; PyTorch only inside the optional
BARTScore and CLIP adapters) and import no model code.
"""
