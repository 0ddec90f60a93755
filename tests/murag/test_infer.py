"""murag.infer: predictions JSONL (answer, retrieved ids + scores, targets) and task metrics for
the tiny MuRAG model on a real seqio task, configured by runs/eval.gin + models/murag_tiny.gin."""
import json

import gin
import jax
import numpy as np
import pytest

from murag import checkpoints
from murag import infer
from murag import model as model_lib
from murag import train as train_lib
from tests.murag import murag_fixtures as mf

pytestmark = pytest.mark.slow


def test_infer_writes_predictions_and_metrics(tmp_path):
  gin.clear_config()
  # A params-only checkpoint of the gin-configured tiny model (random weights).
  train_lib.parse_gin(["gin_configs/models/murag_tiny.gin"],
                      [f'default_vocabulary.vocab_path="{mf.vocab_path()}"'], [])
  config = model_lib.MuRAGConfig()
  gin.clear_config()
  model = model_lib.MuRAGModel(config)
  params = model.get_initial_variables(jax.random.PRNGKey(3), {
      "memory_tokens": (1, 3, 12), "decoder_input_tokens": (1, 6)})["params"]
  checkpoints.save_params(str(tmp_path / "bundle" / "params"), params)

  out_dir = tmp_path / "out"
  results = train_lib.main([
      "--gin_file=gin_configs/models/murag_tiny.gin", "--gin_file=gin_configs/runs/eval.gin",
      f'--gin.CHECKPOINT_PATH="{tmp_path / "bundle"}"', f'--gin.INFER_OUTPUT_DIR="{out_dir}"',
      f'--gin.MIXTURE_OR_TASK_NAME="{mf.TASK}"',
      f"--gin.TASK_FEATURE_LENGTHS={json.dumps(mf.TASK_FEATURE_LENGTHS)}",
      "--gin.BATCH_SIZE=8", "--gin.MEMORY_SLOTS=3", f'--gin.VOCAB_PATH="{mf.vocab_path()}"',
      '--gin.infer/tasks.pipeline.DatasetConfig.module="tests.murag.murag_fixtures"'], entry=infer.infer)
  gin.clear_config()
  records = [json.loads(line) for line in open(out_dir / f"{mf.TASK}-predictions.jsonl")]
  # 10 validation examples = one full batch of 8 + a padded batch of 2.
  assert [r["question_id"] for r in records] == [f"validation-{i}" for i in range(10)]
  for r in records:
    assert isinstance(r["answer"], str)
    assert len(r["retrieved_ids"]) == len(r["retrieved_scores"]) == 4  # top-K over B*M items
    assert r["retrieved_scores"] == sorted(r["retrieved_scores"], reverse=True)
    assert r["targets"]["answers"] and r["targets"]["modality"] == "text"
  scores = json.loads(open(out_dir / f"{mf.TASK}-metrics.json").read())
  assert scores == pytest.approx(results[mf.TASK])
  assert 0.0 <= scores["all/f1"] <= 100.0 and scores["count/text"] == 10
  assert 0.0 <= scores["retrieval/recall@1"] <= 100.0
