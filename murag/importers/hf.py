"""Hugging Face safetensors -> T5X T5 tree and big_vision ViT tree (host-side, numpy only).

MuRAG §4.1 initialises the backbone from T5 and ViT. Supported checkpoints:
- T5 v1.0 (`feed_forward_proj="relu"`, tied embeddings, decoder output scaled by D^-1/2)
  and T5 v1.1 (`"gated-gelu"`, separate `lm_head.weight`), tied or untied.
- ViT (`ViTModel` / `ViTForImageClassification`, prefix `vit.`): the class token's position
  embedding is folded into `cls`, as big_vision does for old checkpoints.

torch Linear weights are [out, in]; T5X/flax kernels are [in, out].
"""
import json
import os
from typing import Any, Mapping, Tuple

import numpy as np

from murag import t5 as t5_lib
from murag import vit as vit_lib

_ACT = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact", "relu": "relu",
        "gelu_fast": "gelu"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint directory or file (handles sharded *.index.json)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
      with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
      out = {}
      for name in files:
        out.update(load_file(os.path.join(path, name)))
      return out
    path = os.path.join(path, "model.safetensors")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no safetensors checkpoint at {path}")
  return {k: np.asarray(v, np.float32) if v.dtype != np.float32 and v.dtype.kind == "f" else v
          for k, v in load_file(path).items()}


def _read_config(path: str) -> dict:
  cfg_path = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{cfg_path}: config.json of the Hugging Face checkpoint is missing")
  with open(cfg_path) as f:
    return json.load(f)


def t5_config_from_hf(hf: Mapping[str, Any]) -> t5_lib.T5Config:
  """T5Config equivalent of a Hugging Face T5 config.json dict."""
  proj = hf.get("feed_forward_proj", "relu")
  gated = proj.startswith("gated-")
  act = proj[len("gated-"):] if gated else proj
  if proj == "gated-gelu":  # transformers maps this legacy name to the tanh approximation
    act = "gelu_new"
  if act not in _ACT:
    raise ValueError(f"config.json feed_forward_proj={proj!r}: unsupported activation")
  acts = (_ACT[act], "linear") if gated else (_ACT[act],)
  return t5_lib.T5Config(
      vocab_size=hf["vocab_size"], emb_dim=hf["d_model"], num_heads=hf["num_heads"],
      head_dim=hf["d_kv"], num_encoder_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
      mlp_dim=hf["d_ff"], mlp_activations=acts, dropout_rate=0.0,
      logits_via_embedding=bool(hf.get("tie_word_embeddings", True)),
      relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
      layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6))


def t5_params_from_hf(state: Mapping[str, np.ndarray], cfg: t5_lib.T5Config) -> dict:
  """Maps HF T5 tensor names to the T5X tree {token_embedder, encoder, decoder}."""
  used = set()

  def get(name):
    if name not in state:
      raise KeyError(f"Hugging Face T5 checkpoint lacks tensor '{name}'")
    used.add(name)
    return np.asarray(state[name], np.float32)

  def lin(name):  # torch [out, in] -> [in, out]
    return get(name).T

  emb_name = next((n for n in ("shared.weight", "encoder.embed_tokens.weight",
                               "decoder.embed_tokens.weight") if n in state), "shared.weight")
  for n in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
    if n in state:
      used.add(n)

  def mlp(prefix):
    if len(cfg.mlp_activations) == 1:
      out = {"wi": {"kernel": lin(f"{prefix}.wi.weight")}}
    else:
      out = {f"wi_{i}": {"kernel": lin(f"{prefix}.wi_{i}.weight")}
             for i in range(len(cfg.mlp_activations))}
    out["wo"] = {"kernel": lin(f"{prefix}.wo.weight")}
    return out

  def attn(prefix):
    return {new: {"kernel": lin(f"{prefix}.{old}.weight")}
            for old, new in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))}

  enc = {"relpos_bias": {"rel_embedding": get(
      "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight").T},
         "encoder_norm": {"scale": get("encoder.final_layer_norm.weight")}}
  for i in range(cfg.num_encoder_layers):
    p = f"encoder.block.{i}.layer"
    enc[f"layers_{i}"] = {
        "pre_attention_layer_norm": {"scale": get(f"{p}.0.layer_norm.weight")},
        "attention": attn(f"{p}.0.SelfAttention"),
        "pre_mlp_layer_norm": {"scale": get(f"{p}.1.layer_norm.weight")},
        "mlp": mlp(f"{p}.1.DenseReluDense"),
    }
  dec = {"relpos_bias": {"rel_embedding": get(
      "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight").T},
         "decoder_norm": {"scale": get("decoder.final_layer_norm.weight")}}
  for i in range(cfg.num_decoder_layers):
    p = f"decoder.block.{i}.layer"
    dec[f"layers_{i}"] = {
        "pre_self_attention_layer_norm": {"scale": get(f"{p}.0.layer_norm.weight")},
        "self_attention": attn(f"{p}.0.SelfAttention"),
        "pre_cross_attention_layer_norm": {"scale": get(f"{p}.1.layer_norm.weight")},
        "encoder_decoder_attention": attn(f"{p}.1.EncDecAttention"),
        "pre_mlp_layer_norm": {"scale": get(f"{p}.2.layer_norm.weight")},
        "mlp": mlp(f"{p}.2.DenseReluDense"),
    }
  if not cfg.logits_via_embedding:
    dec["logits_dense"] = {"kernel": lin("lm_head.weight")}
  elif "lm_head.weight" in state:
    used.add("lm_head.weight")
  leftover = sorted(set(state) - used - {emb_name})
  if leftover:
    raise ValueError(f"Hugging Face T5 checkpoint has tensors the T5 config does not use: "
                     f"{leftover[:5]} (layer counts or tie_word_embeddings disagree?)")
  return {"token_embedder": {"embedding": get(emb_name)}, "encoder": enc, "decoder": dec}


def load_hf_t5(path: str) -> Tuple[t5_lib.T5Config, dict]:
  """Reads config.json + safetensors of a HF T5 checkpoint -> (T5Config, T5X params)."""
  cfg = t5_config_from_hf(_read_config(path))
  return cfg, t5_params_from_hf(read_safetensors(path), cfg)


def vit_config_from_hf(hf: Mapping[str, Any]) -> vit_lib.ViTConfig:
  """ViTConfig equivalent of a HF ViT config.json (class-token pooling)."""
  act = hf.get("hidden_act", "gelu")
  if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
    raise ValueError(f"config.json hidden_act={act!r}: unsupported for ViT import")
  if not hf.get("qkv_bias", True):
    raise ValueError("config.json qkv_bias=false: big_vision ViT always has q/k/v biases")
  return vit_lib.ViTConfig(
      image_size=hf["image_size"], patch_size=hf["patch_size"], width=hf["hidden_size"],
      depth=hf["num_hidden_layers"], mlp_dim=hf["intermediate_size"],
      num_heads=hf["num_attention_heads"], pool_type="tok",
      layer_norm_epsilon=hf.get("layer_norm_eps", 1e-12), gelu_approximate=(act != "gelu"))


def vit_params_from_hf(state: Mapping[str, np.ndarray], cfg: vit_lib.ViTConfig) -> dict:
  """Maps HF ViT tensor names to big_vision names (pool_type "tok")."""
  prefix = "vit." if any(k.startswith("vit.") for k in state) else ""

  def get(name):
    full = prefix + name
    if full not in state:
      raise KeyError(f"Hugging Face ViT checkpoint lacks tensor '{full}'")
    return np.asarray(state[full], np.float32)

  w, h = cfg.width, cfg.num_heads
  dh = w // h
  pos = get("embeddings.position_embeddings")  # [1, 1 + Np, W]
  conv = get("embeddings.patch_embeddings.projection.weight")  # [W, 3, P, P]
  params = {
      "embedding": {"kernel": conv.transpose(2, 3, 1, 0),  # -> [P, P, 3, W]
                    "bias": get("embeddings.patch_embeddings.projection.bias")},
      "pos_embedding": pos[:, 1:],
      "cls": get("embeddings.cls_token") + pos[:, :1],
      "Transformer": {"encoder_norm": {"scale": get("layernorm.weight"),
                                       "bias": get("layernorm.bias")}},
  }

  def ln(name):
    return {"scale": get(f"{name}.weight"), "bias": get(f"{name}.bias")}

  for i in range(cfg.depth):
    p = f"encoder.layer.{i}"
    att = {}
    for n in ("query", "key", "value"):
      att[n] = {"kernel": get(f"{p}.attention.attention.{n}.weight").T.reshape(w, h, dh),
                "bias": get(f"{p}.attention.attention.{n}.bias").reshape(h, dh)}
    att["out"] = {"kernel": get(f"{p}.attention.output.dense.weight").T.reshape(h, dh, w),
                  "bias": get(f"{p}.attention.output.dense.bias")}
    params["Transformer"][f"encoderblock_{i}"] = {
        "LayerNorm_0": ln(f"{p}.layernorm_before"),
        "MultiHeadDotProductAttention_0": att,
        "LayerNorm_1": ln(f"{p}.layernorm_after"),
        "MlpBlock_0": {
            "Dense_0": {"kernel": get(f"{p}.intermediate.dense.weight").T,
                        "bias": get(f"{p}.intermediate.dense.bias")},
            "Dense_1": {"kernel": get(f"{p}.output.dense.weight").T,
                        "bias": get(f"{p}.output.dense.bias")}},
    }
  return params


def load_hf_vit(path: str) -> Tuple[vit_lib.ViTConfig, dict]:
  """Reads config.json + safetensors of a HF ViT checkpoint -> (ViTConfig, big_vision params)."""
  cfg = vit_config_from_hf(_read_config(path))
  return cfg, vit_params_from_hf(read_safetensors(path), cfg)
