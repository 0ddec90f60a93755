"""BARTScore fluency (FL) as used by the WebQA leaderboard (MuRAG Sec. 4.2).

WebQA measures fluency with BARTScore (Yuan et al., 2021): the mean per-token
log-likelihood of a text under a BART sequence-to-sequence model conditioned on
another text. For a candidate answer c and references a_1..a_n the leaderboard
uses

  FL(c) = min(1, max_i exp(s(a_i -> c)) / exp(s(a_i -> a_i)))

where s(x -> y) = (1/|y|) sum_t log p(y_t | y_<t, x) over all target tokens
(including BOS/EOS, padding excluded), and both texts first lose every ASCII
punctuation character and redundant whitespace (case is kept). The official
checkpoint is `facebook/bart-large-cnn` with the ParaBank-finetuned `bart.pth`
of the BARTScore release; here any local `transformers` BART directory works,
with optional finetuned weights (a torch state dict) on top.

This module only runs host-side with PyTorch; it never downloads anything.
"""

import functools
import os
import string
from typing import Optional, Sequence

import gin
import numpy as np

_PUNCT_TABLE = str.maketrans(dict.fromkeys(string.punctuation))

ENV_CHECKPOINT = 'MURAG_BARTSCORE_CHECKPOINT'
ENV_WEIGHTS = 'MURAG_BARTSCORE_WEIGHTS'


def strip_for_bart(text: str) -> str:
  """The light normalisation applied before BARTScore (punctuation, spaces)."""
  return ' '.join(text.translate(_PUNCT_TABLE).split())


class BartFluencyScorer:
  """BARTScore-based fluency against references, from a local checkpoint.

  Attributes:
    name: "bartscore:<checkpoint dir name>[+<weights file name>]".
  """

  def __init__(self,
               checkpoint_dir: str,
               finetuned_weights: Optional[str] = None,
               *,
               batch_size: int = 4,
               max_length: int = 1024,
               device: str = 'cpu'):
    """Loads tokenizer and model.

    Args:
      checkpoint_dir: directory with a `transformers` BART model and tokenizer
        (`save_pretrained` layout).
      finetuned_weights: optional torch state dict (e.g. BARTScore's ParaBank
        `bart.pth`) loaded over the checkpoint.
      batch_size: pairs scored per forward pass.
      max_length: truncation length of sources and targets (tokens).
      device: torch device.
    """
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    if not os.path.isdir(checkpoint_dir):
      raise ValueError(
          f'BARTScore checkpoint directory {checkpoint_dir!r} does not exist.')
    self._torch = torch
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint_dir)
    self.model = transformers.BartForConditionalGeneration.from_pretrained(
        checkpoint_dir)
    name = f'bartscore:{os.path.basename(os.path.normpath(checkpoint_dir))}'
    if finetuned_weights:
      if not os.path.isfile(finetuned_weights):
        raise ValueError(
            f'BARTScore weights file {finetuned_weights!r} does not exist.')
      state = torch.load(finetuned_weights, map_location='cpu')
      self.model.load_state_dict(state)
      name += '+' + os.path.basename(finetuned_weights)
    self.model.eval()
    self.model.to(device)
    self.device = device
    self.batch_size = batch_size
    self.max_length = max_length
    self.name = name

  def log_likelihoods(self, sources: Sequence[str],
                      targets: Sequence[str]) -> np.ndarray:
    """s(source -> target): mean per-token log-probability of each target.

    Args:
      sources: N conditioning texts.
      targets: N texts to score.

    Returns:
      [N] float64 array of mean token log-likelihoods.
    """
    torch = self._torch
    # pylint: disable-next=g-import-not-at-top
    from transformers.models.bart import modeling_bart
    if len(sources) != len(targets):
      raise ValueError(f'{len(sources)} sources but {len(targets)} targets.')
    pad_id = self.model.config.pad_token_id
    start_id = self.model.config.decoder_start_token_id
    out = []
    for i in range(0, len(sources), self.batch_size):
      enc = self.tokenizer(list(sources[i:i + self.batch_size]),
                           max_length=self.max_length, truncation=True,
                           padding=True, return_tensors='pt')
      dec = self.tokenizer(list(targets[i:i + self.batch_size]),
                           max_length=self.max_length, truncation=True,
                           padding=True, return_tensors='pt')
      labels = dec['input_ids'].to(self.device)  # [b, T]
      with torch.no_grad():
        logits = self.model(
            input_ids=enc['input_ids'].to(self.device),
            attention_mask=enc['attention_mask'].to(self.device),
            decoder_input_ids=modeling_bart.shift_tokens_right(
                labels, pad_id, start_id),
        ).logits  # [b, T, V]
        logp = torch.log_softmax(logits.float(), dim=-1)
        token_logp = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [b, T]
        keep = (labels != pad_id).float()
        # Divided by the attention-mask length, as BARTScore does.
        length = dec['attention_mask'].sum(dim=1).to(self.device).float()
        mean = (token_logp * keep).sum(dim=1) / length
      out.extend(mean.double().cpu().tolist())
    return np.asarray(out, dtype=np.float64)

  def fluency(self, candidates: Sequence[str],
              references: Sequence[Sequence[str]]) -> np.ndarray:
    """WebQA FL for each candidate against its list of references.

    Args:
      candidates: N candidate answers.
      references: N non-empty lists of reference answers.

    Returns:
      [N] array of FL values in [0, 1].
    """
    if len(candidates) != len(references):
      raise ValueError(
          f'{len(candidates)} candidates but {len(references)} reference '
          'lists.')
    srcs, tgts, owner = [], [], []
    for i, (cand, refs) in enumerate(zip(candidates, references)):
      if not refs:
        raise ValueError(f'Candidate {i} has no reference answers.')
      for ref in refs:
        r, c = strip_for_bart(ref), strip_for_bart(cand)
        srcs += [r, r]  # s(ref -> cand) and the normaliser s(ref -> ref).
        tgts += [c, r]
        owner.append(i)
    ll = self.log_likelihoods(srcs, tgts).reshape(-1, 2)  # [pairs, 2]
    # exp(a) / exp(b) as exp(a - b): tiny likelihoods cannot give 0 / 0.
    ratios = np.exp(ll[:, 0] - ll[:, 1])
    result = np.zeros(len(candidates), dtype=np.float64)
    best = np.full(len(candidates), -np.inf)
    for idx, ratio in zip(owner, ratios):
      best[idx] = max(best[idx], ratio)
    result[:] = np.minimum(1.0, best)
    return result


@functools.lru_cache(maxsize=4)
def _cached_scorer(checkpoint_dir: str,
                   finetuned_weights: Optional[str]) -> BartFluencyScorer:
  return BartFluencyScorer(checkpoint_dir, finetuned_weights)


@gin.configurable
def default_fluency_scorer(
    checkpoint_dir: Optional[str] = None,
    finetuned_weights: Optional[str] = None) -> Optional[BartFluencyScorer]:
  """The scorer used by `webqa_metrics` when none is passed, or None.

  Args:
    checkpoint_dir: local BART directory; defaults to the environment variable
      MURAG_BARTSCORE_CHECKPOINT. Bind in gin as
      `default_fluency_scorer.checkpoint_dir = "/path"`.
    finetuned_weights: optional state dict path (MURAG_BARTSCORE_WEIGHTS).

  Returns:
    A cached `BartFluencyScorer`, or None when no checkpoint is configured
    (WebQA FL and QA are then reported as unavailable).
  """
  checkpoint_dir = checkpoint_dir or os.environ.get(ENV_CHECKPOINT) or None
  finetuned_weights = (finetuned_weights or os.environ.get(ENV_WEIGHTS)
                       or None)
  if not checkpoint_dir:
    return None
  return _cached_scorer(checkpoint_dir, finetuned_weights)
