"""Hugging Face / sentence-transformers folders <-> Flax parameters.

Layouts read (see ``read_folder``):
- INSTRUCTOR (hkunlp/instructor-*): ``modules.json``, T5 weights and ``config.json`` at the root (module path
  ``""``), ``1_Pooling``, ``2_Dense`` (``linear.weight [out, in]``, no bias), ``3_Normalize``;
- GTR (sentence-transformers/gtr-t5-*): the same modules, the Transformer module in its own folder or at the root;
- a plain T5 / T5EncoderModel folder (no ``modules.json``): no Dense (identity), L2-normalised.

Weights: ``model.safetensors`` (read without torch), sharded ``model.safetensors.index.json``, or
``pytorch_model.bin`` (needs torch). Decoder and LM-head tensors of a full T5 checkpoint are ignored; any other
unknown tensor, a missing tensor or a shape that does not match ``config.json`` is an error naming the tensor.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from instructor_jax.t5 import T5Config

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be read as a T5 / INSTRUCTOR model."""


@dataclasses.dataclass
class Folder:
  """What a checkpoint folder holds, as numpy arrays in the HF naming."""
  root: str
  t5_config: T5Config
  hf_config: dict
  t5_dir: str                        # folder with config.json, weights and tokenizer files
  state: dict[str, np.ndarray]       # T5 encoder tensors, HF names
  dense: np.ndarray | None           # [out, in] or None (identity)
  normalize: bool
  max_seq_length: int | None         # from sentence_bert_config.json if present
  layout: str                        # "instructor" | "sentence-transformers" | "t5"


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e


def load_tensors(folder: str, stem: str = "model") -> dict[str, np.ndarray]:
  """Loads ``{stem}.safetensors`` (no torch needed) or ``pytorch_model.bin`` (torch), sharded or not."""
  st = os.path.join(folder, f"{stem}.safetensors")
  st_index = os.path.join(folder, f"{stem}.safetensors.index.json")
  pt_name = "pytorch_model" if stem == "model" else stem
  pt = os.path.join(folder, f"{pt_name}.bin")
  pt_index = os.path.join(folder, f"{pt_name}.bin.index.json")
  if os.path.exists(st):
    return _load_safetensors(st)
  if os.path.exists(st_index):
    files = sorted(set(_read_json(st_index)["weight_map"].values()))
    out = {}
    for name in files:
      out.update(_load_safetensors(os.path.join(folder, name)))
    return out
  if os.path.exists(pt) or os.path.exists(pt_index):
    files = [pt] if os.path.exists(pt) else [
        os.path.join(folder, n) for n in sorted(set(_read_json(pt_index)["weight_map"].values()))]
    out = {}
    for path in files:
      out.update(_load_torch(path))
    return out
  raise CheckpointError(f"{folder}: no weights found (looked for {stem}.safetensors, {pt_name}.bin and their "
                        f"sharded index files)")


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open
  out = {}
  try:
    with safe_open(path, framework="numpy") as f:
      for k in f.keys():
        out[k] = f.get_tensor(k)
  except TypeError:  # bf16 tensors cannot be read as numpy by safetensors: go through flax's reader
    from safetensors.flax import load_file
    out = {k: np.asarray(v) for k, v in load_file(path).items()}
  except Exception as e:
    raise CheckpointError(f"{path}: cannot read safetensors file: {e}") from e
  return out


def _load_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:  # pragma: no cover
    raise CheckpointError(f"{path}: reading pytorch_model.bin needs torch (pip install torch)") from e
  sd = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in sd.items()}


_IGNORED = re.compile(r"^(decoder\.|lm_head\.|encoder\.embed_tokens\.weight$)")


def _strip_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Accepts ``T5EncoderModel`` names, names under ``auto_model.`` / ``0.auto_model.`` and full T5 models."""
  out = {}
  for k, v in state.items():
    for prefix in ("0.auto_model.", "auto_model.", "transformer."):
      if k.startswith(prefix):
        k = k[len(prefix):]
    out[k] = v
  if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
    out["shared.weight"] = out["encoder.embed_tokens.weight"]
  return {k: v for k, v in out.items() if not _IGNORED.match(k)}


def expected_shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
  """HF tensor names and shapes of a T5 encoder with this config."""
  inner = cfg.num_heads * cfg.d_kv
  shapes = {"shared.weight": (cfg.vocab_size, cfg.d_model), "encoder.final_layer_norm.weight": (cfg.d_model,),
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
                (cfg.relative_attention_num_buckets, cfg.num_heads)}
  for i in range(cfg.num_layers):
    p = f"encoder.block.{i}."
    for n in "qkv":
      shapes[p + f"layer.0.SelfAttention.{n}.weight"] = (inner, cfg.d_model)
    shapes[p + "layer.0.SelfAttention.o.weight"] = (cfg.d_model, inner)
    shapes[p + "layer.0.layer_norm.weight"] = (cfg.d_model,)
    shapes[p + "layer.1.layer_norm.weight"] = (cfg.d_model,)
    wis = ("wi_0", "wi_1") if cfg.gated else ("wi",)
    for n in wis:
      shapes[p + f"layer.1.DenseReluDense.{n}.weight"] = (cfg.d_ff, cfg.d_model)
    shapes[p + "layer.1.DenseReluDense.wo.weight"] = (cfg.d_model, cfg.d_ff)
  return shapes


def check_state(state: Mapping[str, np.ndarray], cfg: T5Config, where: str) -> None:
  expected = expected_shapes(cfg)
  unknown = sorted(set(state) - set(expected))
  missing = sorted(set(expected) - set(state))
  if unknown:
    raise CheckpointError(f"{where}: unknown tensor(s) {unknown[:5]} (not part of a T5 encoder with this config)")
  if missing:
    raise CheckpointError(f"{where}: missing tensor(s) {missing[:5]}")
  for k, shape in expected.items():
    if tuple(state[k].shape) != shape:
      raise CheckpointError(f"{where}: tensor {k} has shape {tuple(state[k].shape)}, config.json implies {shape}")


def to_flax(state: Mapping[str, np.ndarray], cfg: T5Config, dense: np.ndarray | None = None,
            dtype=np.float32) -> dict:
  """HF tensors -> the ``params`` collection of ``embedder.InstructorModel``."""
  h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  a = lambda x: np.asarray(x, dtype=dtype)
  enc = {"token_embedder": {"embedding": a(state["shared.weight"])},
         "relative_attention_bias": a(state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]),
         "final_norm": {"scale": a(state["encoder.final_layer_norm.weight"])}}
  for i in range(cfg.num_layers):
    p = f"encoder.block.{i}.layer."
    att = {n: {"kernel": a(state[p + f"0.SelfAttention.{n}.weight"]).reshape(h, dk, d).transpose(2, 0, 1)}
           for n in "qkv"}
    att["o"] = {"kernel": a(state[p + "0.SelfAttention.o.weight"]).T.reshape(h, dk, d)}
    wis = ("wi_0", "wi_1") if cfg.gated else ("wi",)
    mlp = {n: {"kernel": a(state[p + f"1.DenseReluDense.{n}.weight"]).T} for n in wis + ("wo",)}
    enc[f"layers_{i}"] = {"attention": att, "mlp": mlp,
                          "attention_norm": {"scale": a(state[p + "0.layer_norm.weight"])},
                          "mlp_norm": {"scale": a(state[p + "1.layer_norm.weight"])}}
  params = {"encoder": enc}
  if dense is not None:
    params["dense"] = {"kernel": a(dense).T}
  return params


def from_flax(params: Mapping[str, Any], cfg: T5Config, dtype=np.float32) -> tuple[dict, np.ndarray | None]:
  """The inverse of ``to_flax``: ``(T5EncoderModel state dict, dense [out, in] or None)`` as numpy."""
  h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  a = lambda x: np.ascontiguousarray(np.asarray(x, dtype=dtype))
  enc = params["encoder"]
  state = {"shared.weight": a(enc["token_embedder"]["embedding"]),
           "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": a(enc["relative_attention_bias"]),
           "encoder.final_layer_norm.weight": a(enc["final_norm"]["scale"])}
  for i in range(cfg.num_layers):
    layer, p = enc[f"layers_{i}"], f"encoder.block.{i}.layer."
    for n in "qkv":
      state[p + f"0.SelfAttention.{n}.weight"] = a(
          np.asarray(layer["attention"][n]["kernel"]).transpose(1, 2, 0).reshape(h * dk, d))
    state[p + "0.SelfAttention.o.weight"] = a(np.asarray(layer["attention"]["o"]["kernel"]).reshape(h * dk, d).T)
    for n, w in layer["mlp"].items():
      state[p + f"1.DenseReluDense.{n}.weight"] = a(np.asarray(w["kernel"]).T)
    state[p + "0.layer_norm.weight"] = a(layer["attention_norm"]["scale"])
    state[p + "1.layer_norm.weight"] = a(layer["mlp_norm"]["scale"])
  dense = a(np.asarray(params["dense"]["kernel"]).T) if "dense" in params else None
  return state, dense


def _module_type(m: dict) -> str:
  return m.get("type", "").rsplit(".", 1)[-1]


def read_folder(root: str) -> Folder:
  """Reads any supported layout (module docstring) into numpy arrays, validating names and shapes."""
  root = os.fspath(root)
  modules_path = os.path.join(root, "modules.json")
  dense = None
  normalize = True
  max_seq_length = None
  if os.path.exists(modules_path):
    modules = _read_json(modules_path)
    if not isinstance(modules, list):
      raise CheckpointError(f"{modules_path}: expected a list of modules")
    by_type = {}
    for m in modules:
      by_type.setdefault(_module_type(m), m)
    transformer = next((m for t, m in by_type.items() if t.endswith("Transformer")), None)
    if transformer is None:
      raise CheckpointError(f"{modules_path}: no Transformer module")
    t5_dir = os.path.join(root, transformer.get("path", ""))
    layout = "instructor" if "INSTRUCTOR" in transformer.get("type", "") else "sentence-transformers"
    pooling = by_type.get("Pooling") or by_type.get("INSTRUCTOR_Pooling")
    if pooling is not None:
      pcfg_path = os.path.join(root, pooling["path"], "config.json")
      if os.path.exists(pcfg_path):
        pcfg = _read_json(pcfg_path)
        mode = pcfg.get("pooling_mode") or ("mean" if pcfg.get("pooling_mode_mean_tokens") else None)
        if mode not in ("mean", "mean_tokens"):
          raise CheckpointError(f"{pcfg_path}: only mean pooling is supported, found {pcfg}")
    if "Dense" in by_type:
      ddir = os.path.join(root, by_type["Dense"]["path"])
      dcfg = _read_json(os.path.join(ddir, "config.json"))
      act = dcfg.get("activation_function", "torch.nn.modules.linear.Identity")
      if not act.endswith("Identity"):
        raise CheckpointError(f"{ddir}/config.json: activation {act!r} is not supported (Identity only)")
      if dcfg.get("bias", False):
        raise CheckpointError(f"{ddir}/config.json: a Dense layer with bias is not supported (INSTRUCTOR has none)")
      tensors = load_tensors(ddir)
      if "linear.weight" not in tensors or set(tensors) - {"linear.weight"}:
        raise CheckpointError(f"{ddir}: expected exactly one tensor 'linear.weight', found {sorted(tensors)}")
      dense = tensors["linear.weight"]
      want = (dcfg["out_features"], dcfg["in_features"])
      if tuple(dense.shape) != want:
        raise CheckpointError(f"{ddir}: tensor linear.weight has shape {tuple(dense.shape)}, config says {want}")
    normalize = "Normalize" in by_type
    sbert = os.path.join(t5_dir, "sentence_bert_config.json")
    if not os.path.exists(sbert):
      sbert = os.path.join(root, "sentence_bert_config.json")
    if os.path.exists(sbert):
      max_seq_length = _read_json(sbert).get("max_seq_length")
  else:
    t5_dir, layout = root, "t5"
  cfg_path = os.path.join(t5_dir, "config.json")
  if not os.path.exists(cfg_path):
    raise CheckpointError(f"{t5_dir}: no config.json")
  hf_config = _read_json(cfg_path)
  if hf_config.get("model_type", "t5") != "t5":
    raise CheckpointError(f"{cfg_path}: model_type {hf_config.get('model_type')!r} is not t5")
  t5_cfg = T5Config.from_hf(hf_config)
  state = _strip_prefix(load_tensors(t5_dir))
  check_state(state, t5_cfg, where=t5_dir)
  if dense is not None and dense.shape[1] != t5_cfg.d_model:
    raise CheckpointError(f"{root}: tensor linear.weight has in_features {dense.shape[1]}, d_model is "
                          f"{t5_cfg.d_model}")
  return Folder(root, t5_cfg, hf_config, t5_dir, state, dense, normalize, max_seq_length, layout)
