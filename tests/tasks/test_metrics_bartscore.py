"""BARTScore fluency with a random tiny BART saved locally (no downloads)."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
tokenizers = pytest.importorskip('tokenizers')

from tasks.metrics import bartscore  # pylint: disable=g-import-not-at-top
from tasks.metrics import normalize  # pylint: disable=g-import-not-at-top
from tasks.metrics import webqa  # pylint: disable=g-import-not-at-top

WORDS = ('the ball is red blue yes no it a dog cat in paris france built was '
         'and tower eiffel').split()


def _save_tiny_bart(path, seed):
  specials = ['<s>', '<pad>', '</s>', '<unk>']
  vocab = {t: i for i, t in enumerate(specials + WORDS)}
  tok = tokenizers.Tokenizer(
      tokenizers.models.WordLevel(vocab, unk_token='<unk>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single='<s> $A </s>', special_tokens=[('<s>', 0), ('</s>', 2)])
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token='<s>', pad_token='<pad>',
      eos_token='</s>', unk_token='<unk>')
  config = transformers.BartConfig(
      vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
      encoder_attention_heads=2, decoder_attention_heads=2,
      encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
      pad_token_id=1, bos_token_id=0, eos_token_id=2,
      decoder_start_token_id=2, forced_eos_token_id=2)
  torch.manual_seed(seed)
  model = transformers.BartForConditionalGeneration(config).eval()
  model.save_pretrained(path)
  fast.save_pretrained(path)
  return model, fast


@pytest.fixture(scope='module')
def tiny_bart(tmp_path_factory):
  path = tmp_path_factory.mktemp('tiny_bart')
  model, tok = _save_tiny_bart(str(path), seed=0)
  return str(path), model, tok


def _direct_log_likelihood(model, tok, src, tgt):
  """Unbatched, unpadded mean token log-likelihood computed from scratch."""
  src_ids = tok([src], return_tensors='pt')['input_ids']
  tgt_ids = tok([tgt], return_tensors='pt')['input_ids']  # [1, T]
  dec_in = torch.cat([torch.tensor([[2]]), tgt_ids[:, :-1]], dim=1)
  with torch.no_grad():
    logits = model(input_ids=src_ids, decoder_input_ids=dec_in).logits
  logp = torch.log_softmax(logits, -1)[0, torch.arange(tgt_ids.shape[1]),
                                       tgt_ids[0]]
  return float(logp.mean())


def test_log_likelihoods_match_unbatched_computation(tiny_bart):
  path, model, tok = tiny_bart
  scorer = bartscore.BartFluencyScorer(path, batch_size=3)
  srcs = ['the ball is red', 'yes', 'the eiffel tower is in paris france', 'no']
  tgts = ['red', 'it is a dog and a cat', 'paris', 'yes it is']
  got = scorer.log_likelihoods(srcs, tgts)  # padded batches of 3 and 1
  want = [_direct_log_likelihood(model, tok, s, t) for s, t in zip(srcs, tgts)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fluency_definition(tiny_bart):
  path, _, _ = tiny_bart
  scorer = bartscore.BartFluencyScorer(path)
  refs = ['The ball is red.', 'It is red!']
  cand = 'the ball is blue'
  fl = scorer.fluency([cand, refs[0], ''], [refs, refs, refs])
  # A reference scored against itself is exactly the normaliser: FL = 1.
  assert fl[1] == 1.0
  stripped = [bartscore.strip_for_bart(r) for r in refs]
  assert stripped == ['The ball is red', 'It is red']
  ll = scorer.log_likelihoods(stripped + stripped, [cand, cand] + stripped)
  want = min(1.0, max(np.exp(ll[0] - ll[2]), np.exp(ll[1] - ll[3])))
  assert fl[0] == pytest.approx(want, rel=1e-9)
  assert np.all((fl >= 0) & (fl <= 1))


def test_finetuned_weights_are_loaded(tiny_bart, tmp_path):
  path, _, _ = tiny_bart
  other_dir = tmp_path / 'other'
  other_model, _ = _save_tiny_bart(str(other_dir), seed=1)
  weights = tmp_path / 'bart.pth'
  torch.save(other_model.state_dict(), str(weights))
  scorer = bartscore.BartFluencyScorer(path, finetuned_weights=str(weights))
  assert scorer.name.endswith('+bart.pth')
  reference = bartscore.BartFluencyScorer(str(other_dir))
  base = bartscore.BartFluencyScorer(path)
  args = (['the ball is red'], ['it is red'])
  np.testing.assert_allclose(scorer.log_likelihoods(*args),
                             reference.log_likelihoods(*args), rtol=1e-6)
  assert not np.allclose(scorer.log_likelihoods(*args),
                         base.log_likelihoods(*args))


def test_webqa_metrics_with_bart_checkpoint(tiny_bart, monkeypatch):
  path, _, _ = tiny_bart
  monkeypatch.setenv(bartscore.ENV_CHECKPOINT, path)
  monkeypatch.delenv(bartscore.ENV_WEIGHTS, raising=False)
  scorer = bartscore.default_fluency_scorer()
  assert scorer is not None and scorer.name == 'bartscore:' + (
      path.rstrip('/').split('/')[-1])
  targets = [{'answers': ['The ball is red.'], 'qcate': 'color',
              'question_id': 'q1'},
             {'answers': ['Yes, it is.'], 'qcate': 'YesNo',
              'question_id': 'q2'}]
  preds = ['The ball is red.', 'no']
  lem = normalize.RuleLemmatizer()
  out = webqa.webqa_metrics(targets, preds, lemmatizer=lem)  # default scorer
  fl = scorer.fluency(preds, [t['answers'] for t in targets])
  assert fl[0] == 1.0
  acc = np.array([2 / (2 + 1e-5), 0.0])
  assert out['fluency'] == pytest.approx(100 * fl.mean())
  assert out['qa'] == pytest.approx(100 * np.mean(acc * fl))
  assert out[f'setup/fluency:{scorer.name}'] == 1.0
  monkeypatch.delenv(bartscore.ENV_CHECKPOINT)
  assert bartscore.default_fluency_scorer() is None


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    bartscore.BartFluencyScorer(str(tmp_path / 'nope'))
