"""A tiny real Flax model with T5X's BaseModel interface, and a resumable data iterator.

Used by the trainer tests (and their subprocesses) where the full MuRAG model would be too slow:
a 2-layer per-token MLP classifier learning `target = (3 * input + 1) mod V`. The loss is a real
cross-entropy whose value falls with training; parameters carry logical axis names.

Shapes: B batch, L length, D embed, F mlp, V vocab.
"""
import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning


class _Net(nn.Module):
  vocab: int = 32
  embed: int = 16
  mlp: int = 32
  dropout: float = 0.1

  @nn.compact
  def __call__(self, tokens, train=False):
    init = nn.initializers.normal(0.3)
    emb = nn_partitioning.param_with_axes("embedding", init, (self.vocab, self.embed),
                                          jnp.float32, axes=("vocab", "embed"))
    wi = nn_partitioning.param_with_axes("wi", init, (self.embed, self.mlp), jnp.float32,
                                         axes=("embed", "mlp"))
    wo = nn_partitioning.param_with_axes("wo", init, (self.mlp, self.vocab), jnp.float32,
                                         axes=("mlp", "vocab"))
    x = emb[tokens]                                   # [B, L, D]
    h = nn.relu(jnp.einsum("bld,df->blf", x, wi))     # [B, L, F]
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return jnp.einsum("blf,fv->blv", h, wo)           # [B, L, V]


@gin.configurable
class ToyModel:
  """BaseModel-style wrapper: loss_fn, eval_fn, predict_batch_with_aux, score_batch."""
  FEATURE_CONVERTER_CLS = None

  def __init__(self, vocab: int = 32, embed: int = 16, mlp: int = 32, dropout: float = 0.1):
    self.vocab = vocab
    self.module = _Net(vocab=vocab, embed=embed, mlp=mlp, dropout=dropout)

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    del input_types
    tokens = jnp.zeros(input_shapes["inputs"], jnp.int32)
    variables = self.module.init({"params": rng, "dropout": rng}, tokens)
    return {"params": variables["params"], "params_axes": variables["params_axes"]}

  def _xent(self, params, batch, rng):
    logits = self.module.apply({"params": params}, batch["inputs"], train=rng is not None,
                               rngs={"dropout": rng} if rng is not None else None)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]  # [B, L]
    return nll, logits

  def loss_fn(self, params, batch, dropout_rng):
    nll, logits = self._xent(params, batch, dropout_rng)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["targets"])
    return jnp.mean(nll), {"accuracy": accuracy}

  def eval_fn(self, params, batch):
    return self.loss_fn(params, batch, None)

  def score_batch(self, params, batch, return_intermediates=False):
    del return_intermediates
    nll, _ = self._xent(params, batch, None)
    return -jnp.sum(nll, axis=-1)

  def predict_batch_with_aux(self, params, batch, rng=None, decoder_params=None,
                             return_all_decodes=False, num_decodes=1):
    del rng, decoder_params, return_all_decodes, num_decodes
    _, logits = self._xent(params, batch, None)
    return jnp.argmax(logits, -1), {"scores": jnp.max(jax.nn.log_softmax(logits), -1).sum(-1)}


@gin.configurable
@dataclasses.dataclass
class ToyDatasetConfig:
  batch_size: int = 16       # global
  length: int = 8
  vocab: int = 32
  seed: int = 0


class ToyIterator:
  """Batch i (global) is a pure function of (seed, i); a host yields its contiguous rows."""

  def __init__(self, cfg: ToyDatasetConfig, shard_id: int, num_shards: int):
    if cfg.batch_size % num_shards:
      raise ValueError(f"batch_size {cfg.batch_size} not divisible by {num_shards} shards")
    self.cfg, self.shard_id, self.num_shards = cfg, shard_id, num_shards
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self):
    cfg = self.cfg
    rng = np.random.default_rng([cfg.seed, self.index])
    inputs = rng.integers(0, cfg.vocab, size=(cfg.batch_size, cfg.length), dtype=np.int32)
    rows = cfg.batch_size // self.num_shards
    inputs = inputs[self.shard_id * rows:(self.shard_id + 1) * rows]
    self.index += 1
    return {"inputs": inputs, "targets": ((3 * inputs + 1) % cfg.vocab).astype(np.int32)}

  def get_state(self):
    return {"index": self.index}

  def set_state(self, state):
    self.index = int(state["index"])


@gin.configurable
def toy_dataset_fn(cfg, *, shard_id, num_shards, feature_converter=None):
  del feature_converter
  return ToyIterator(cfg, shard_id, num_shards)


# --- helpers for the subprocess tests (`python -m murag.train` on this model) -------------------
TOY_GIN = """
import tests.murag.toy_model
import murag.checkpoints
import murag.optimizers
import murag.partitioner
import murag.train
train.model = @ToyModel()
train.train_dataset_cfg = @ToyDatasetConfig()
train.get_dataset_fn = @toy_dataset_fn
train.checkpoint_cfg = @CheckpointConfig()
train.partitioner = @Partitioner()
train.optimizer = @adafactor()
train.model_dir = %MODEL_DIR
train.log_period = 1
Partitioner.num_partitions = 2
adafactor.learning_rate_fn = @learning_rate_schedule()
learning_rate_schedule.base_learning_rate = 0.05
"""


def write_toy_gin(path) -> str:
  with open(path, "w") as f:
    f.write(TOY_GIN)
  return str(path)


def subprocess_env(num_devices: int) -> dict:
  import os  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ)
  env.update(PYTHONPATH=repo, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
  return env


def train_command(gin_file, model_dir, *bindings) -> list:
  import sys  # pylint: disable=g-import-not-at-top
  return [sys.executable, "-m", "murag.train", f"--gin_file={gin_file}",
          f'--gin.MODEL_DIR="{model_dir}"'] + [f"--gin.{b}" for b in bindings]


def parse_losses(text: str) -> dict:
  """{step: loss} from the trainer's console lines."""
  out = {}
  for line in text.splitlines():
    if "[murag.train] step=" in line:
      step = int(line.split("step=")[1].split()[0])
      out[step] = float(line.split("loss=")[1].split()[0])
  return out


def read_params(model_dir, step):
  """Parameters of checkpoint `step` as numpy (any process count / sharding)."""
  import os  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.abspath(str(model_dir)), "checkpoints", str(step), "state")
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(path, args=ocp.args.PyTreeRestore(item=tree, restore_args=args))["params"]
