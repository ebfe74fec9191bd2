"""Hugging Face / sentence-transformers folders <-> Flax parameters, for both backbones (T5 and BERT).

The backbone is ``config.json``'s ``model_type`` (``t5`` or ``bert``, ``config_from_hf``). ``read_folder`` reads
the INSTRUCTOR, sentence-transformers and plain T5 / BERT layouts (its docstring lists them and the weight files).
Names map one to one (``to_flax`` / ``from_flax`` are exact inverses: HF -> Flax -> HF is bit-exact in fp32).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from instructor_jax.core import errors
from instructor_jax.models import registry

Config = registry.Config
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
CheckpointError = errors.CheckpointError
config_from_hf = registry.config_from_hf


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
    return registry.name_of(self.config)


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


def _strip_prefix(state: dict[str, np.ndarray], model_type: str = "t5") -> dict[str, np.ndarray]:
  """Encoder names from any of the prefixes the backbone's folders use (``strip_names``)."""
  return registry.get(model_type).strip_names(state)


def expected_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
  """HF tensor names and shapes of the encoder with this config."""
  return registry.backbone_of(cfg).expected_shapes(cfg)


def check_state(state: Mapping[str, np.ndarray], cfg: Config, where: str) -> None:
  expected = expected_shapes(cfg)
  unknown = sorted(set(state) - set(expected))
  missing = sorted(set(expected) - set(state))
  if unknown:
    raise CheckpointError(f"{where}: unknown tensor(s) {unknown[:5]} (not part of a {registry.name_of(cfg)} encoder "
                          "with this config)")
  if missing:
    raise CheckpointError(f"{where}: missing tensor(s) {missing[:5]}")
  for k, shape in expected.items():
    if tuple(state[k].shape) != shape:
      raise CheckpointError(f"{where}: tensor {k} has shape {tuple(state[k].shape)}, config.json implies {shape}")


def to_flax(state: Mapping[str, np.ndarray], cfg: Config, dense: np.ndarray | None = None,
            dtype=np.float32) -> dict:
  """HF tensors (+ the Dense ``[out, in]``) -> the ``params`` collection of ``embedder.InstructorModel``."""
  params = {"encoder": registry.backbone_of(cfg).encoder_to_flax(state, cfg, dtype)}
  if dense is not None:
    params["dense"] = {"kernel": np.asarray(dense, dtype=dtype).T}
  return params


def from_flax(params: Mapping[str, Any], cfg: Config, dtype=np.float32) -> tuple[dict, np.ndarray | None]:
  """The inverse of ``to_flax``: ``(encoder state dict in HF names, dense [out, in] or None)`` as numpy."""
  state = registry.backbone_of(cfg).encoder_from_flax(params["encoder"], cfg, dtype)
  dense = None
  if "dense" in params:
    dense = np.ascontiguousarray(np.asarray(np.asarray(params["dense"]["kernel"]).T, dtype=dtype))
  return state, dense


MODULE_TYPES = ("Transformer", "INSTRUCTOR_Transformer", "Pooling", "INSTRUCTOR_Pooling", "Dense", "Normalize")


def _module_type(m: dict) -> str:
  return m.get("type", "").rsplit(".", 1)[-1]


def read_folder(root: str) -> Folder:
  """Reads any supported layout into numpy arrays, validating names and shapes.

  The backbone is ``config.json``'s ``model_type``: ``t5`` -> ``t5.T5Config`` / ``T5Encoder``, ``bert`` ->
  ``bert.BertConfig`` / ``BertEncoder`` (``config_from_hf``). Layouts read:
  - INSTRUCTOR (hkunlp/instructor-*): ``modules.json``, T5 weights and ``config.json`` at the root (module path
    ``""``), ``1_Pooling``, ``2_Dense`` (``linear.weight [out, in]``, no bias), ``3_Normalize``;
  - sentence-transformers (gtr-t5-*, all-MiniLM-L6-v2, ...): the Transformer module at the root or in its own
    folder (``0_Transformer``), mean ``Pooling``, an optional ``Dense`` (absent: identity), an optional
    ``Normalize``;
  - a plain T5 / T5EncoderModel / BertModel folder (no ``modules.json``): no Dense (identity), L2-normalised.

  Weights: ``model.safetensors`` (read without torch), sharded ``model.safetensors.index.json``, or
  ``pytorch_model.bin`` (needs torch). Ignored: decoder and LM-head tensors of a full T5 checkpoint; BERT's
  ``position_ids`` / ``token_type_ids`` buffers and pre-training heads (``cls.*``). BERT's pooler weights are kept
  (``BertConfig.pooler`` says whether the checkpoint has them) so exports are complete ``BertModel`` checkpoints.
  Any other unknown tensor, a missing tensor or a shape that does not match ``config.json`` is an error naming the
  tensor.
  """
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
  try:
    backbone = registry.get(kind)
  except CheckpointError as e:
    raise CheckpointError(f"{cfg_path}: {e}") from None
  try:
    cfg = backbone.Config.from_hf(hf_config)
  except ValueError as e:
    raise CheckpointError(f"{model_dir}: {e}") from e
  state = backbone.strip_names(load_tensors(model_dir))
  cfg = backbone.match_state(cfg, state)
  check_state(state, cfg, where=model_dir)
  if dense is not None and dense.shape[1] != cfg.d_model:
    raise CheckpointError(f"{root}: tensor linear.weight has in_features {dense.shape[1]}, the encoder's hidden "
                          f"size is {cfg.d_model}")
  return Folder(root, cfg, hf_config, model_dir, state, dense, normalize, max_seq_length, layout or kind)
