"""Tests of FID, CLIPScore and perplexity."""

import numpy as np
import pytest
from scipy import linalg

from tasks.metrics import generation


def _direct_fid(x, y):
  """FID written out directly with numpy/scipy, as a reference."""
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  root = linalg.sqrtm(s1 @ s2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
               - 2 * np.trace(root))


def test_fid_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(0).normal(size=(300, 8))
  assert abs(generation.fid_from_features(x, x)) < 1e-8


def test_fid_agrees_with_direct_scipy_computation():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(200, 6))
  y = rng.normal(loc=0.3, scale=1.5, size=(150, 6)) @ rng.normal(size=(6, 6))
  got = generation.fid_from_features(x, y)
  assert got == pytest.approx(_direct_fid(x, y), rel=1e-9)
  assert got > 1.0


def test_fid_hand_worked():
  # 1-D: means 1 and 2, unbiased variances 2 and 2: 1 + 2 + 2 - 2*2 = 1.
  assert generation.fid_from_features(
      np.array([[0.0], [2.0]]), np.array([[1.0], [3.0]])) == pytest.approx(1.0)
  # Diagonal: |d|^2 = 2, traces 5 and 13, sqrt(S1 S2) = diag(2, 6): 2+18-16.
  d, regularized = generation.frechet_distance(
      np.zeros(2), np.diag([1.0, 4.0]), np.ones(2), np.diag([4.0, 9.0]))
  assert d == pytest.approx(4.0)
  assert not regularized


def test_fid_singular_product_gets_eps_on_the_diagonal():
  # 3 samples in 5 dimensions: rank-deficient covariances.
  x = np.random.default_rng(2).normal(size=(3, 5))
  mu, sigma = generation.feature_statistics(x)
  d, regularized = generation.frechet_distance(mu, sigma, mu, sigma)
  assert regularized
  # sqrt((S + eps)(S + eps)) = S + eps I, so the distance is -2 * 5 * eps.
  assert d == pytest.approx(-2 * 5 * 1e-6, abs=1e-9)


def test_fid_significant_imaginary_component_is_an_error():
  with pytest.raises(ValueError, match='imaginary component'):
    generation.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]),
                                np.zeros(2), np.eye(2))


def channel_stats(images):
  """A tiny image feature extractor: per-channel means and std-devs."""
  images = np.asarray(images, dtype=np.float64)
  return np.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))],
                        axis=1)


def test_fid_metric_with_pluggable_extractor(monkeypatch):
  monkeypatch.delenv(generation.ENV_CLIP_CHECKPOINT, raising=False)
  rng = np.random.default_rng(3)
  real = list(rng.uniform(size=(20, 8, 8, 3)))
  fake = list(rng.uniform(size=(20, 8, 8, 3)) ** 2)
  out = generation.fid(real, fake, feature_extractor=channel_stats)
  assert out['fid'] == pytest.approx(_direct_fid(channel_stats(real),
                                                 channel_stats(fake)))
  assert out['setup/fid_features:channel_stats'] == 1.0
  same = generation.fid(real, [{'image': r} for r in real],
                        feature_extractor=channel_stats)
  assert abs(same['fid']) < 1e-8
  feats = generation.fid(list(channel_stats(real)), list(channel_stats(fake)))
  assert feats['fid'] == pytest.approx(out['fid'])
  assert feats['setup/fid_features:given'] == 1.0
  with pytest.raises(ValueError, match='no feature extractor'):
    generation.fid(real, fake)


def test_clip_score_from_embeddings_hand_worked():
  img = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
  txt = np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, 5.0]])
  np.testing.assert_allclose(generation.clip_score_from_embeddings(img, txt),
                             [2.5 / np.sqrt(2), 0.0, 2.5])


def test_perplexity():
  out = generation.perplexity([{'num_tokens': 2}, 3], [-2.0, -3.0])
  assert out['perplexity'] == pytest.approx(np.e)
  assert out['num_tokens'] == 5.0
  # Token ids: non-zero ids count (0 is padding).
  out = generation.perplexity([np.array([5, 6, 1, 0, 0])], [-3 * np.log(4)])
  assert out['perplexity'] == pytest.approx(4.0)
  seqio = pytest.importorskip('seqio')
  vocab = seqio.ByteVocabulary()
  # "abc" is 3 byte tokens + EOS = 4 tokens.
  out = generation.perplexity(['abc'], [-4 * np.log(2)], vocabulary=vocab)
  assert out['perplexity'] == pytest.approx(2.0)
  with pytest.raises(ValueError, match='pass vocabulary'):
    generation.perplexity(['abc'], [-1.0])


# ---------------------------------------------------------------------------
# CLIPScore with a random tiny transformers CLIP saved locally.
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_clip(tmp_path_factory):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  tokenizers = pytest.importorskip('tokenizers')
  path = str(tmp_path_factory.mktemp('tiny_clip'))
  words = 'a red ball blue dog cat on the grass photo of'.split()
  vocab = {t: i for i, t in enumerate(['<pad>', '<unk>', '<s>', '</s>'] +
                                      words)}
  tok = tokenizers.Tokenizer(
      tokenizers.models.WordLevel(vocab, unk_token='<unk>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single='<s> $A </s>', special_tokens=[('<s>', 2), ('</s>', 3)])
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token='<s>', eos_token='</s>',
      pad_token='<pad>', unk_token='<unk>')
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=len(vocab), hidden_size=16,
                       intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=16,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3),
      vision_config=dict(image_size=16, patch_size=8, hidden_size=16,
                         intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2),
      projection_dim=8)
  torch.manual_seed(0)
  model = transformers.CLIPModel(config).eval()
  model.save_pretrained(path)
  fast.save_pretrained(path)
  return path, model, fast


def test_hf_clip_encoder_matches_direct_model_calls(tiny_clip):
  import torch  # pylint: disable=g-import-not-at-top
  path, model, tok = tiny_clip
  enc = generation.HFClipEncoder(path)
  assert enc.name == 'clip:' + path.rstrip('/').split('/')[-1]
  texts = ['a red ball', 'the dog on the grass']
  ids = tok(texts, padding=True, return_tensors='pt')
  with torch.no_grad():
    want_txt = model.get_text_features(
        input_ids=ids['input_ids'],
        attention_mask=ids['attention_mask']).numpy()
  np.testing.assert_allclose(enc.encode_texts(texts), want_txt, atol=1e-6)
  images = np.random.default_rng(0).integers(
      0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
  mean = np.array([0.48145466, 0.4578275, 0.40821073])
  std = np.array([0.26862954, 0.26130258, 0.27577711])
  pixels = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2)
  with torch.no_grad():
    want_img = model.get_image_features(
        pixel_values=torch.tensor(pixels, dtype=torch.float32)).numpy()
  np.testing.assert_allclose(enc.encode_images(images), want_img, atol=1e-4)


def test_clip_score_metric_both_directions(tiny_clip):
  path, _, _ = tiny_clip
  enc = generation.HFClipEncoder(path)
  rng = np.random.default_rng(1)
  images = list(rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8))
  captions = ['a red ball', 'a photo of a cat', 'blue grass']
  want = generation.clip_score_from_embeddings(
      enc.encode_images(np.stack(images)), enc.encode_texts(captions)).mean()
  # Captioning: predicted captions, target images.
  out = generation.clip_score([{'image': im} for im in images], captions,
                              encoder=enc)
  assert out['clip_score'] == pytest.approx(want)
  assert out['clip_score_w'] == 2.5
  assert out[f'setup/clip_encoder:{enc.name}'] == 1.0
  # Text-to-image: predicted images, target captions.
  out2 = generation.clip_score([{'caption': c} for c in captions],
                               [{'image': im} for im in images], encoder=enc)
  assert out2['clip_score'] == pytest.approx(want)
  assert 0.0 <= out['clip_score'] <= 2.5


def test_clip_score_needs_an_encoder(monkeypatch):
  monkeypatch.delenv(generation.ENV_CLIP_CHECKPOINT, raising=False)
  with pytest.raises(ValueError, match='no CLIP encoder'):
    generation.clip_score([{'image': np.zeros((4, 4, 3))}], ['x'])
