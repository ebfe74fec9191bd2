"""Hugging Face / sentence-transformers folders <-> Flax parameters, for both backbones (T5 and BERT).

The backbone is ``config.json``'s ``model_type``: ``t5`` -> ``t5.T5Config`` / ``T5Encoder``, ``bert`` ->
``bert.BertConfig`` / ``BertEncoder`` (``config_from_hf``). Layouts read (see ``read_folder``):
- INSTRUCTOR (hkunlp/instructor-*): ``modules.json``, T5 weights and ``config.json`` at the root (module path
  ``""``), ``1_Pooling``, ``2_Dense`` (``linear.weight [out, in]``, no bias), ``3_Normalize``;
- sentence-transformers (gtr-t5-*, all-MiniLM-L6-v2, ...): the Transformer module at the root or in its own folder
  (``0_Transformer``), mean ``Pooling``, an optional ``Dense`` (absent: identity), an optional ``Normalize``;
- a plain T5 / T5EncoderModel / BertModel folder (no ``modules.json``): no Dense (identity), L2-normalised.

Weights: ``model.safetensors`` (read without torch), sharded ``model.safetensors.index.json``, or
``pytorch_model.bin`` (needs torch). Ignored: decoder and LM-head tensors of a full T5 checkpoint; BERT's
``position_ids`` / ``token_type_ids`` buffers and pre-training heads (``cls.*``). BERT's pooler weights are kept
(``BertConfig.pooler`` says whether the checkpoint has them) so exports are complete ``BertModel`` checkpoints. Any
other unknown tensor, a missing tensor or a shape that does not match ``config.json`` is an error naming the tensor.
Names map one to one (``to_flax`` / ``from_flax`` are exact inverses: HF -> Flax -> HF is bit-exact in fp32).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from instructor_jax.core import errors
from instructor_jax.models.bert import BertConfig
from instructor_jax.models.t5 import T5Config

Config = T5Config | BertConfig
BACKBONES = {"t5": T5Config, "bert": BertConfig}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


CheckpointError = errors.CheckpointError  # core/errors.py


def backbone(cfg: Config) -> str:
  """``"t5"`` or ``"bert"``."""
  return "bert" if isinstance(cfg, BertConfig) else "t5"


def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> Config:
  """``T5Config`` or ``BertConfig`` from a parsed ``config.json`` by its ``model_type`` (absent: ``t5``, as the
  T5 configs of old checkpoints' metadata)."""
  kind = hf_config.get("model_type", "t5")
  if kind not in BACKBONES:
    raise CheckpointError(f"model_type {kind!r} is not supported ({', '.join(BACKBONES)})")
  return BACKBONES[kind].from_hf(hf_config, **overrides)


def match_params(cfg: Config, params: Mapping[str, Any]) -> Config:
  """``cfg`` adjusted to what an ``InstructorModel`` params tree holds (BERT: with or without pooler weights)."""
  if isinstance(cfg, BertConfig):
    return dataclasses.replace(cfg, pooler="pooler" in params["encoder"])
  return cfg


def with_overrides(cfg: Config, **overrides) -> Config:
  """``dataclasses.replace(cfg, **overrides)``; ``dropout_rate`` (T5's field, the trainer's override) sets both of
  BERT's dropout probabilities."""
  if isinstance(cfg, BertConfig) and "dropout_rate" in overrides:
    p = float(overrides.pop("dropout_rate"))
    overrides.update(hidden_dropout_prob=p, attention_probs_dropout_prob=p)
  return dataclasses.replace(cfg, **overrides)


@dataclasses.dataclass
class Folder:
  """What a checkpoint folder holds, as numpy arrays in the HF naming."""
  root: str
  config: Config
  hf_config: dict
  model_dir: str                     # folder with config.json, weights and tokenizer files
  state: dict[str, np.ndarray]       # encoder tensors, HF names
  dense: np.ndarray | None           # [out, in] or None (identity)
  normalize: bool
  max_seq_length: int | None         # from sentence_bert_config.json if present
  layout: str                        # "instructor" | "sentence-transformers" | "t5" | "bert"

  @property
  def backbone(self) -> str:
    return backbone(self.config)


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
_BERT_IGNORED = re.compile(r"^(cls\.|embeddings\.position_ids$|embeddings\.token_type_ids$)")


def _strip_prefix(state: dict[str, np.ndarray], model_type: str = "t5") -> dict[str, np.ndarray]:
  """Accepts ``T5EncoderModel`` / ``BertModel`` names, names under ``auto_model.`` / ``0.auto_model.``, full T5
  models and BERT models with heads (``bert.`` prefix, ``cls.*`` heads)."""
  out = {}
  prefixes = ("0.auto_model.", "auto_model.", "transformer.") if model_type == "t5" else (
      "0.auto_model.", "auto_model.", "bert.")
  for k, v in state.items():
    for prefix in prefixes:
      if k.startswith(prefix):
        k = k[len(prefix):]
    out[k] = v
  if model_type == "bert":
    return {k: v for k, v in out.items() if not _BERT_IGNORED.match(k)}
  if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
    out["shared.weight"] = out["encoder.embed_tokens.weight"]
  return {k: v for k, v in out.items() if not _IGNORED.match(k)}


def expected_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
  """HF tensor names and shapes of a T5 / BERT encoder with this config."""
  if isinstance(cfg, BertConfig):
    return _bert_expected_shapes(cfg)
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


def check_state(state: Mapping[str, np.ndarray], cfg: Config, where: str) -> None:
  expected = expected_shapes(cfg)
  unknown = sorted(set(state) - set(expected))
  missing = sorted(set(expected) - set(state))
  if unknown:
    raise CheckpointError(f"{where}: unknown tensor(s) {unknown[:5]} (not part of a {backbone(cfg)} encoder with "
                          "this config)")
  if missing:
    raise CheckpointError(f"{where}: missing tensor(s) {missing[:5]}")
  for k, shape in expected.items():
    if tuple(state[k].shape) != shape:
      raise CheckpointError(f"{where}: tensor {k} has shape {tuple(state[k].shape)}, config.json implies {shape}")


def to_flax(state: Mapping[str, np.ndarray], cfg: Config, dense: np.ndarray | None = None,
            dtype=np.float32) -> dict:
  """HF tensors -> the ``params`` collection of ``embedder.InstructorModel``."""
  if isinstance(cfg, BertConfig):
    return _bert_to_flax(state, cfg, dense, dtype)
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


def from_flax(params: Mapping[str, Any], cfg: Config, dtype=np.float32) -> tuple[dict, np.ndarray | None]:
  """The inverse of ``to_flax``: ``(T5EncoderModel / BertModel state dict, dense [out, in] or None)`` as numpy."""
  if isinstance(cfg, BertConfig):
    return _bert_from_flax(params, cfg, dtype)
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


# BERT: HF ``BertModel`` names <-> ``bert.BertEncoder`` params. Attention kernels are stored per head
# (``[d, heads, d_head]`` / ``[heads, d_head, d]``), biases ``[heads, d_head]`` / ``[d]``; dense kernels ``[in, out]``.
_BERT_LAYER = (  # (HF name under encoder.layer.N., Flax path under layers_N, kind)
    ("attention.self.query", ("attention", "q"), "qkv"), ("attention.self.key", ("attention", "k"), "qkv"),
    ("attention.self.value", ("attention", "v"), "qkv"), ("attention.output.dense", ("attention", "o"), "o"),
    ("attention.output.LayerNorm", ("attention_norm",), "norm"), ("intermediate.dense", ("wi",), "dense"),
    ("output.dense", ("wo",), "dense"), ("output.LayerNorm", ("mlp_norm",), "norm"))


def _bert_expected_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
  d, f = cfg.d_model, cfg.d_ff
  shapes = {"embeddings.word_embeddings.weight": (cfg.vocab_size, d),
            "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, d),
            "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, d),
            "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
  if cfg.pooler:
    shapes.update({"pooler.dense.weight": (d, d), "pooler.dense.bias": (d,)})
  out_in = {"attention.self.query": (d, d), "attention.self.key": (d, d), "attention.self.value": (d, d),
            "attention.output.dense": (d, d), "intermediate.dense": (f, d), "output.dense": (d, f),
            "attention.output.LayerNorm": (d,), "output.LayerNorm": (d,)}
  for i in range(cfg.num_layers):
    for name, shape in out_in.items():
      p = f"encoder.layer.{i}.{name}."
      if len(shape) == 1:
        shapes[p + "weight"] = shapes[p + "bias"] = shape
      else:
        shapes[p + "weight"], shapes[p + "bias"] = shape, shape[:1]
  return shapes


def _bert_to_flax(state, cfg: BertConfig, dense, dtype) -> dict:
  h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  a = lambda x: np.asarray(x, dtype=dtype)
  w = lambda n: a(state[n + ".weight"])
  b = lambda n: a(state[n + ".bias"])
  enc = {"word_embeddings": {"embedding": w("embeddings.word_embeddings")},
         "position_embeddings": {"embedding": w("embeddings.position_embeddings")},
         "token_type_embeddings": {"embedding": w("embeddings.token_type_embeddings")},
         "embeddings_norm": {"scale": w("embeddings.LayerNorm"), "bias": b("embeddings.LayerNorm")}}
  for i in range(cfg.num_layers):
    layer = enc[f"layers_{i}"] = {"attention": {}}
    for name, path, kind in _BERT_LAYER:
      n = f"encoder.layer.{i}.{name}"
      if kind == "qkv":
        leaf = {"kernel": w(n).reshape(h, dk, d).transpose(2, 0, 1), "bias": b(n).reshape(h, dk)}
      elif kind == "o":
        leaf = {"kernel": w(n).T.reshape(h, dk, d), "bias": b(n)}
      elif kind == "dense":
        leaf = {"kernel": w(n).T, "bias": b(n)}
      else:
        leaf = {"scale": w(n), "bias": b(n)}
      (layer["attention"] if path[0] == "attention" else layer)[path[-1]] = leaf
  if cfg.pooler:
    enc["pooler"] = {"kernel": w("pooler.dense").T, "bias": b("pooler.dense")}
  params = {"encoder": enc}
  if dense is not None:
    params["dense"] = {"kernel": a(dense).T}
  return params


def _bert_from_flax(params, cfg: BertConfig, dtype) -> tuple[dict, np.ndarray | None]:
  h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  a = lambda x: np.ascontiguousarray(np.asarray(x, dtype=dtype))
  enc = params["encoder"]
  state = {"embeddings.word_embeddings.weight": a(enc["word_embeddings"]["embedding"]),
           "embeddings.position_embeddings.weight": a(enc["position_embeddings"]["embedding"]),
           "embeddings.token_type_embeddings.weight": a(enc["token_type_embeddings"]["embedding"]),
           "embeddings.LayerNorm.weight": a(enc["embeddings_norm"]["scale"]),
           "embeddings.LayerNorm.bias": a(enc["embeddings_norm"]["bias"])}
  for i in range(cfg.num_layers):
    layer = enc[f"layers_{i}"]
    for name, path, kind in _BERT_LAYER:
      leaf = layer["attention"][path[-1]] if path[0] == "attention" else layer[path[-1]]
      n = f"encoder.layer.{i}.{name}"
      if kind == "qkv":
        state[n + ".weight"] = a(np.asarray(leaf["kernel"]).transpose(1, 2, 0).reshape(h * dk, d))
        state[n + ".bias"] = a(np.asarray(leaf["bias"]).reshape(h * dk))
      elif kind == "o":
        state[n + ".weight"] = a(np.asarray(leaf["kernel"]).reshape(h * dk, d).T)
        state[n + ".bias"] = a(leaf["bias"])
      elif kind == "dense":
        state[n + ".weight"], state[n + ".bias"] = a(np.asarray(leaf["kernel"]).T), a(leaf["bias"])
      else:
        state[n + ".weight"], state[n + ".bias"] = a(leaf["scale"]), a(leaf["bias"])
  if "pooler" in enc:
    state["pooler.dense.weight"] = a(np.asarray(enc["pooler"]["kernel"]).T)
    state["pooler.dense.bias"] = a(enc["pooler"]["bias"])
  dense = a(np.asarray(params["dense"]["kernel"]).T) if "dense" in params else None
  return state, dense


MODULE_TYPES = ("Transformer", "INSTRUCTOR_Transformer", "Pooling", "INSTRUCTOR_Pooling", "Dense", "Normalize")


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
    unknown = sorted(set(by_type) - set(MODULE_TYPES))
    if unknown:
      raise CheckpointError(f"{modules_path}: module type(s) {unknown} are not supported ({', '.join(MODULE_TYPES)})")
    transformer = next((m for t, m in by_type.items() if t.endswith("Transformer")), None)
    if transformer is None:
      raise CheckpointError(f"{modules_path}: no Transformer module")
    model_dir = os.path.join(root, transformer.get("path", ""))
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
    sbert = os.path.join(model_dir, "sentence_bert_config.json")
    if not os.path.exists(sbert):
      sbert = os.path.join(root, "sentence_bert_config.json")
    if os.path.exists(sbert):
      max_seq_length = _read_json(sbert).get("max_seq_length")
  else:
    model_dir, layout = root, None
  cfg_path = os.path.join(model_dir, "config.json")
  if not os.path.exists(cfg_path):
    raise CheckpointError(f"{model_dir}: no config.json")
  hf_config = _read_json(cfg_path)
  kind = hf_config.get("model_type", "t5")
  if kind not in BACKBONES:
    raise CheckpointError(f"{cfg_path}: model_type {kind!r} is not supported ({', '.join(BACKBONES)})")
  try:
    cfg = config_from_hf(hf_config)
  except ValueError as e:
    raise CheckpointError(f"{model_dir}: {e}") from e
  state = _strip_prefix(load_tensors(model_dir), kind)
  if isinstance(cfg, BertConfig):
    cfg = dataclasses.replace(cfg, pooler="pooler.dense.weight" in state or "pooler.dense.bias" in state)
  check_state(state, cfg, where=model_dir)
  if dense is not None and dense.shape[1] != cfg.d_model:
    raise CheckpointError(f"{root}: tensor linear.weight has in_features {dense.shape[1]}, the encoder's hidden "
                          f"size is {cfg.d_model}")
  return Folder(root, cfg, hf_config, model_dir, state, dense, normalize, max_seq_length, layout or kind)
