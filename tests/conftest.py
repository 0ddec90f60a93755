"""Test-wide settings. Runs before any test module imports jax."""
import os

import pytest

# Eight simulated CPU devices so sharding is exercised; must be set before jax is imported.
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow must not grab all host memory or print a wall of logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Offline: nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# Starts the reduced end-to-end demo in the background and runs its test last (why: the comment
# above start_reduced_demo in tests/murag/test_demo.py).
_DEMO_TEST = "test_reduced_demo_murag_beats_question_only_on_image_questions"
_demo_module = None


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected
def pytest_collection_modifyitems(session, config, items):
  global _demo_module
  del session
  demo = [item for item in items if item.name == _DEMO_TEST]
  if not demo or config.getoption("collectonly"):
    return
  items[:] = [item for item in items if item.name != _DEMO_TEST] + demo
  _demo_module = demo[0].module
  _demo_module.start_reduced_demo(nice=19)


def pytest_unconfigure(config):
  del config
  if _demo_module is not None:
    _demo_module.stop_reduced_demo()
