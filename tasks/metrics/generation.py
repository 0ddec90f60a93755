"""RA-CM3 generation metrics: FID, CLIPScore and perplexity.

RA-CM3 (Yasunaga et al., 2022) reports image generation quality as FID on
MS-COCO (15.7 with retrieval vs 29.5 without), caption quality with CLIPScore,
and text perplexity. Definitions:

* FID (Heusel et al., 2017): with feature means mu_1, mu_2 and covariances
  S_1, S_2 of real and generated images,
      FID = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2}).
  The matrix square root is `scipy.linalg.sqrtm`, handled as in the reference
  implementations (TTUR / pytorch-fid): if the product is singular (rank
  below D, or scipy warns) or the root is not finite (the only trigger in the
  references, whose older scipy failed there), eps = 1e-6 is added to both
  diagonals and
  the root recomputed; a complex root whose diagonal has an imaginary part
  above 1e-3 is an error, otherwise its real part is used.
  Features come from a pluggable extractor; the standard one (Inception-v3
  pool3) is NOT provided here because its weights cannot be downloaded, so
  values from other extractors are not comparable to published FIDs. The
  extractor's name is part of the output.
* CLIPScore (Hessel et al., 2021): 2.5 * max(cos(E_image, E_text), 0) per
  image-text pair, averaged (unscaled, in [0, 2.5]); the encoder is pluggable
  and named in the output.
* Perplexity: exp(- sum of target log-likelihoods / number of target tokens),
  a seqio score metric over per-example summed log-likelihoods.
"""

import functools
import os
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

import gin
import numpy as np
from scipy import linalg

from tasks.metrics import normalize

CLIP_SCORE_W = 2.5
ENV_CLIP_CHECKPOINT = 'MURAG_CLIP_CHECKPOINT'


# ----------------------------------------------------------------------------
# FID.
# ----------------------------------------------------------------------------


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and covariance [D, D] (unbiased, rows = samples) of features."""
  features = np.asarray(features, dtype=np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError('FID needs a [N >= 2, D] feature matrix, got shape '
                     f'{features.shape}.')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm(matrix: np.ndarray) -> tuple[np.ndarray, bool]:
  """sqrtm and whether scipy flagged the matrix as singular."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', linalg.LinAlgWarning)
    root = linalg.sqrtm(matrix)
  singular = any(issubclass(w.category, linalg.LinAlgWarning)
                 for w in caught)
  return np.asarray(root), singular


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6
                     ) -> tuple[float, bool]:
  """Fréchet distance between two Gaussians.

  Args:
    mu1: [D] mean of the first set.
    sigma1: [D, D] covariance of the first set.
    mu2: [D] mean of the second set.
    sigma2: [D, D] covariance of the second set.
    eps: diagonal offset used when the covariance product is singular.

  Returns:
    (distance, whether the eps offset was needed).

  Raises:
    ValueError: on shape mismatch or a significant imaginary component.
  """
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'FID statistics differ in shape: mu {mu1.shape} vs '
                     f'{mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}.')
  diff = mu1 - mu2
  product = sigma1.dot(sigma2)  # [D, D]
  covmean, flagged = _sqrtm(product)
  singular = flagged or np.linalg.matrix_rank(product) < product.shape[0]
  regularized = False
  if singular or not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean, _ = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    regularized = True
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError('FID: matrix square root has a significant imaginary '
                       f'component ({np.max(np.abs(covmean.imag)):.3g}).')
    covmean = covmean.real
  distance = (diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2)
              - 2.0 * np.trace(covmean))
  return float(distance), regularized


def fid_from_features(real: np.ndarray, generated: np.ndarray) -> float:
  """FID between two [N, D] feature sets."""
  d, _ = frechet_distance(*feature_statistics(real),
                          *feature_statistics(generated))
  return d


def _item_array(item: Any, keys: Sequence[str], what: str, index: int):
  if isinstance(item, Mapping):
    for k in keys:
      if k in item:
        return np.asarray(item[k])
    raise ValueError(f'{what} {index}: dict without any of {list(keys)}.')
  return np.asarray(item)


def _features(items: Sequence[Any], what: str,
              get_extractor: Callable[[], Any]) -> tuple[np.ndarray, bool]:
  """[N, D] features of items that are feature vectors or images."""
  arrays = [_item_array(x, ('features', 'image'), what, i)
            for i, x in enumerate(items)]
  ndims = {a.ndim for a in arrays}
  if ndims == {1}:
    return np.stack(arrays).astype(np.float64), False
  if ndims == {3}:
    extractor = get_extractor()
    if extractor is None:
      raise ValueError(
          f'FID: {what} are images but no feature extractor is configured; '
          'pass feature_extractor= or bind '
          'default_clip_encoder.checkpoint_dir.')
    return np.asarray(extractor(np.stack(arrays)), dtype=np.float64), True
  raise ValueError(f'FID: {what} must all be feature vectors [D] or images '
                   f'[H, W, C]; got ranks {sorted(ndims)}.')


def fid(targets: Sequence[Any], predictions: Sequence[Any], *,
        feature_extractor: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        extractor_name: Optional[str] = None) -> dict[str, float]:
  """seqio metric: FID between target (real) and predicted (generated) images.

  Args:
    targets: real images [H, W, C] or feature vectors [D] (or dicts with
      "image" / "features").
    predictions: generated images or feature vectors, same convention.
    feature_extractor: callable [N, H, W, C] -> [N, D]; when None and the items
      are images, the image tower of `default_clip_encoder()` is used if one is
      configured.
    extractor_name: name reported in the output (default: the extractor's
      `name` attribute or its function name).

  Returns:
    {"fid", "fid_eps_regularized" (1.0 if the eps offset was needed),
     "setup/fid_features:<extractor name or 'given'>": 1.0}.
  """
  if not targets or not predictions:
    raise ValueError('fid: needs real and generated items.')
  chosen = {}

  def get_extractor():
    if 'fn' not in chosen:
      fn, name = feature_extractor, extractor_name
      if fn is None:
        encoder = default_clip_encoder()
        if encoder is not None:
          fn, name = encoder.encode_images, name or encoder.name
      chosen['fn'] = fn
      chosen['name'] = name or getattr(fn, 'name',
                                       getattr(fn, '__name__', 'unnamed'))
    return chosen['fn']

  real, used_r = _features(targets, 'targets', get_extractor)
  gen, used_g = _features(predictions, 'predictions', get_extractor)
  if used_r != used_g:
    raise ValueError('fid: targets and predictions must both be images or '
                     'both be feature vectors.')
  d, regularized = frechet_distance(*feature_statistics(real),
                                    *feature_statistics(gen))
  name = chosen['name'] if used_r else 'given'
  return {'fid': d, 'fid_eps_regularized': float(regularized),
          f'setup/fid_features:{name}': 1.0}


# ----------------------------------------------------------------------------
# CLIPScore.
# ----------------------------------------------------------------------------


def clip_score_from_embeddings(image_embeddings: np.ndarray,
                               text_embeddings: np.ndarray,
                               w: float = CLIP_SCORE_W) -> np.ndarray:
  """Per-pair CLIPScore w * max(cos, 0) of [N, D] image and text embeddings."""
  img = np.asarray(image_embeddings, dtype=np.float64)
  txt = np.asarray(text_embeddings, dtype=np.float64)
  if img.shape != txt.shape or img.ndim != 2:
    raise ValueError(f'CLIPScore needs equal [N, D] embeddings, got {img.shape}'
                     f' and {txt.shape}.')
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  cos = np.sum(img * txt, axis=1)  # [N]
  return w * np.maximum(cos, 0.0)


class HFClipEncoder:
  """Image/text embeddings from a local `transformers` CLIP checkpoint.

  Images are preprocessed by the checkpoint's image processor when it has one
  (preprocessor_config.json), otherwise by the standard CLIP preprocessing
  (shortest-edge resize, centre crop to the model's image size, CLIP mean/std).
  """

  def __init__(self, checkpoint_dir: str, device: str = 'cpu'):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    if not os.path.isdir(checkpoint_dir):
      raise ValueError(
          f'CLIP checkpoint directory {checkpoint_dir!r} does not exist.')
    self._torch = torch
    self.model = transformers.CLIPModel.from_pretrained(checkpoint_dir).eval()
    self.model.to(device)
    self.device = device
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint_dir)
    if os.path.exists(os.path.join(checkpoint_dir, 'preprocessor_config.json')):
      self.image_processor = transformers.AutoImageProcessor.from_pretrained(
          checkpoint_dir)
    else:
      size = self.model.config.vision_config.image_size
      self.image_processor = transformers.CLIPImageProcessor(
          size={'shortest_edge': size},
          crop_size={'height': size, 'width': size})
    self.name = f'clip:{os.path.basename(os.path.normpath(checkpoint_dir))}'

  def encode_images(self, images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 (or float in [0, 1]) images -> [N, D] embeddings."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
      images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
    pixels = self.image_processor(images=list(images), return_tensors='pt')
    with self._torch.no_grad():
      out = self.model.get_image_features(
          pixel_values=pixels['pixel_values'].to(self.device))
    return out.double().cpu().numpy()

  def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
    """N texts -> [N, D] embeddings."""
    tok = self.tokenizer(list(texts), padding=True, truncation=True,
                         max_length=self.model.config.text_config
                         .max_position_embeddings, return_tensors='pt')
    with self._torch.no_grad():
      out = self.model.get_text_features(
          input_ids=tok['input_ids'].to(self.device),
          attention_mask=tok['attention_mask'].to(self.device))
    return out.double().cpu().numpy()


@functools.lru_cache(maxsize=4)
def _cached_clip(checkpoint_dir: str) -> HFClipEncoder:
  return HFClipEncoder(checkpoint_dir)


@gin.configurable
def default_clip_encoder(
    checkpoint_dir: Optional[str] = None) -> Optional[HFClipEncoder]:
  """CLIP encoder from gin or MURAG_CLIP_CHECKPOINT, else None."""
  checkpoint_dir = checkpoint_dir or os.environ.get(ENV_CLIP_CHECKPOINT)
  return _cached_clip(checkpoint_dir) if checkpoint_dir else None


def _pair(target: Any, prediction: Any, index: int) -> tuple[np.ndarray, str]:
  """(image, text) of one example: whichever side is text is the caption."""
  pred = prediction
  if isinstance(prediction, Mapping):
    pred = prediction['image'] if 'image' in prediction else prediction.get(
        'answer')
  if isinstance(pred, (str, bytes)):
    text = normalize.prediction_answer(pred)
    image = _item_array(target, ('image',), 'target', index)
  else:
    if pred is None:
      raise ValueError(f'CLIPScore prediction {index}: dict without "image" '
                       'or "answer".')
    image = np.asarray(pred)
    if isinstance(target, Mapping) and 'caption' in target:
      text = normalize.prediction_answer(target['caption'])
    else:
      text = normalize.target_answers(target, index)[0]
  if image.ndim != 3:
    raise ValueError(f'CLIPScore example {index}: image must be [H, W, C], '
                     f'got shape {image.shape}.')
  return image, text


def clip_score(targets: Sequence[Any], predictions: Sequence[Any], *,
               encoder: Any = None) -> dict[str, float]:
  """seqio metric: mean CLIPScore of image-text pairs.

  Captioning: predictions are captions, targets dicts with "image".
  Text-to-image: predictions are images (or {"image": ...}), targets dicts with
  "caption" (or "answers").

  Args:
    targets: see above.
    predictions: see above.
    encoder: object with `encode_images`, `encode_texts` and `name` (e.g.
      `HFClipEncoder`); `default_clip_encoder()` when None.

  Returns:
    {"clip_score": mean of 2.5 * max(cos, 0), "clip_score_w": 2.5,
     "setup/clip_encoder:<name>": 1.0}.
  """
  normalize.check_lengths(targets, predictions, 'clip_score')
  encoder = encoder or default_clip_encoder()
  if encoder is None:
    raise ValueError('clip_score: no CLIP encoder; pass encoder= or bind '
                     'default_clip_encoder.checkpoint_dir (or set '
                     f'{ENV_CLIP_CHECKPOINT}).')
  pairs = [_pair(t, p, i) for i, (t, p) in enumerate(zip(targets, predictions))]
  img = encoder.encode_images(np.stack([p[0] for p in pairs]))
  txt = encoder.encode_texts([p[1] for p in pairs])
  scores = clip_score_from_embeddings(img, txt)
  return {'clip_score': float(scores.mean()), 'clip_score_w': CLIP_SCORE_W,
          f'setup/clip_encoder:{encoder.name}': 1.0}


# ----------------------------------------------------------------------------
# Perplexity.
# ----------------------------------------------------------------------------


def _num_tokens(target: Any, index: int, vocabulary: Any) -> int:
  if isinstance(target, (int, np.integer)):
    return int(target)
  if isinstance(target, Mapping) and 'num_tokens' in target:
    return int(target['num_tokens'])
  if isinstance(target, (str, bytes)):
    if vocabulary is None:
      raise ValueError(
          f'perplexity: target {index} is text; pass vocabulary= to count its '
          'tokens or give {"num_tokens": n} targets.')
    text = target.decode('utf-8') if isinstance(target, bytes) else target
    return len(vocabulary.encode(text)) + 1  # + EOS, which is scored too.
  ids = np.asarray(target)
  if ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer):
    return int(np.count_nonzero(ids))  # 0 is padding in seqio vocabularies.
  raise ValueError(f'perplexity: cannot count tokens of target {index} '
                   f'({type(target).__name__}).')


def perplexity(targets: Sequence[Any], scores: Sequence[float], *,
               vocabulary: Any = None) -> dict[str, float]:
  """seqio score metric: corpus perplexity of the targets.

  Args:
    targets: per example, the number of scored target tokens: an int, a dict
      {"num_tokens": n}, a sequence of token ids (non-zero ids counted), or the
      text (with `vocabulary`; EOS counted).
    scores: per example, the summed log-likelihood of its target tokens (what
      `score_batch` returns).
    vocabulary: seqio vocabulary used to count tokens of text targets.

  Returns:
    {"perplexity", "nll_per_token", "num_tokens"}.
  """
  normalize.check_lengths(targets, scores, 'perplexity')
  counts = np.asarray([_num_tokens(t, i, vocabulary)
                       for i, t in enumerate(targets)], dtype=np.float64)
  total = float(counts.sum())
  if total <= 0:
    raise ValueError('perplexity: targets contain no tokens.')
  nll = -float(np.sum(np.asarray(scores, dtype=np.float64))) / total
  return {'perplexity': float(np.exp(nll)), 'nll_per_token': nll,
          'num_tokens': total}
