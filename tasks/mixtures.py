"""MuRAG pre-training mixtures (MuRAG §3.3, §4.1).

Stage 1 trains on LAION alone (1M steps in the paper); stage 2 continues on
CC : PAQ : VQA sampled 1 : 1 : 1 (200K steps). "Fixed mixture sampling ratios" balance the
very unequal dataset sizes: each example of a stage-2 batch comes from CC, PAQ or VQA with
probability 1/3 regardless of their sizes. Registered when `tasks.murag_tasks` is imported.
"""
import seqio

STAGE1 = "murag_pretrain_stage1"
STAGE2 = "murag_pretrain_stage2"
STAGE2_RATES = {"cc_caption_v1": 1.0, "paq_qa_v1": 1.0, "vqa_qa_v1": 1.0}


def register_mixtures():
  """(Re-)registers the two pre-training mixtures over the current task registrations."""
  for name, tasks in ((STAGE1, [("laion_caption_v1", 1.0)]),
                      (STAGE2, list(STAGE2_RATES.items()))):
    if name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, tasks)
