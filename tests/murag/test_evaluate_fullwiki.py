"""murag.evaluate_fullwiki configuration and input errors (the end-to-end run on the synthetic
world is tests/murag/test_build_memory.py::test_fullwiki_evaluation_end_to_end)."""
import os

import gin
import pytest

from murag import evaluate_fullwiki
from murag import model as model_lib
from murag import train as train_lib
from tasks import pipeline


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("ds", ["webqa", "mmqa"])
def test_experiment_gin_binds_a_fixed_full_wiki_run(ds):
  train_lib.parse_gin([os.path.join(train_lib.REPO_ROOT, "gin_configs", "experiments",
                                    f"murag_{ds}_eval_fullwiki.gin")], [], [])
  assert gin.query_parameter("MuRAGConfig.retrieval_mode") == "fixed"
  assert gin.query_parameter("%TOP_K") == 4  # MuRAGConfig.top_k and evaluate_fullwiki.k
  assert gin.query_parameter("MuRAGConfig.num_beams") == 2
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == f"{ds}_fixed_v1"
  assert gin.query_parameter("%QUERY_TASK") == f"{ds}_inbatch_v1"
  assert gin.query_parameter("%SPLIT") == "validation"


def test_build_memory_gins_write_train_and_validation_into_the_fixed_tasks_file():
  for ds in ("webqa", "mmqa"):
    gin.clear_config()
    train_lib.parse_gin([os.path.join(train_lib.REPO_ROOT, "gin_configs", "experiments",
                                      f"murag_{ds}_build_memory.gin")], [], [])
    assert gin.query_parameter("build_memory.neighbour_tasks") == [
        (f"{ds}_inbatch_v1", ("train", "validation"), f"{ds}_neighbours.jsonl")]


def _tiny(mode):
  return model_lib.MuRAGModel(model_lib.MuRAGConfig(
      vocab_size=64, emb_dim=8, num_heads=1, head_dim=8, num_encoder_layers=1,
      num_decoder_layers=1, mlp_dim=8, image_size=16, vit_patch_size=8, vit_width=8,
      vit_depth=1, vit_mlp_dim=8, vit_num_heads=1, retrieval_mode=mode))


def test_bad_inputs_are_named(tmp_path):
  cfg = pipeline.DatasetConfig(mixture_or_task_name="webqa_fixed_v1", split="validation")
  kw = dict(checkpoint_path=str(tmp_path), dataset_cfg=cfg, partitioner=None,
            output_dir=str(tmp_path / "out"), query_task="webqa_inbatch_v1")
  with pytest.raises(ValueError, match="retrieval_mode = 'fixed'"):
    evaluate_fullwiki.evaluate_fullwiki(model=_tiny("inbatch"), memory_dir=str(tmp_path), **kw)
  with pytest.raises(FileNotFoundError, match="metadata.json.*murag.build_memory"):
    evaluate_fullwiki.evaluate_fullwiki(model=_tiny("fixed"), memory_dir=str(tmp_path), **kw)


def test_command_line_wires_every_binding(tmp_path):
  """`python -m murag.evaluate_fullwiki` flags + the experiment gin reach evaluate_fullwiki."""
  from tests.murag import murag_fixtures as mf  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/memory/metadata.json"):
    train_lib.main([
        "--gin_file=gin_configs/experiments/murag_webqa_eval_fullwiki.gin",
        f'--gin.CHECKPOINT_PATH="{tmp_path}/ckpt"', f'--gin.MEMORY_DIR="{tmp_path}/memory"',
        f'--gin.INFER_OUTPUT_DIR="{tmp_path}/out"', f'--gin.VOCAB_PATH="{mf.vocab_path()}"'],
        entry=evaluate_fullwiki.evaluate_fullwiki)
  assert gin.query_parameter("%MEMORY_DIR") == f"{tmp_path}/memory"
