"""Writing an export's files: ``write_folder`` lays out one sentence-transformers / INSTRUCTOR folder.

Read first: ``write_folder`` writes into an existing empty folder and neither verifies nor renames; the atomic,
verified export is ``to_hf.export_folder``. Two layouts: sentence-transformers >= 3 (default) and ``legacy=True``,
the hkunlp/instructor-* layout (T5 only; see ``write_folder``).
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Mapping

import numpy as np

from instructor_jax.core import errors
from instructor_jax.models import hf, registry
from instructor_jax.storage import files

TOKENIZER_FILES = ("spiece.model", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
DTYPES = ("float32", "float16", "bfloat16")
# config_sentence_transformers.json: the Matryoshka dimensions the model was trained with (ours; sentence-transformers
# ignores the key and reads only a default "truncate_dim", which we do not set).
MATRYOSHKA_KEY = "matryoshka_dims"


def as_config(config: registry.Config | Mapping[str, Any], params: Mapping[str, Any] | None = None
              ) -> tuple[registry.Config, dict]:
  """Accepts a backbone config or a parsed HF ``config.json``; returns both forms (the HF dict as the backbone's
  ``HF_MODEL_CLASS``). With ``params``, the config is matched to them (BERT: pooler or not)."""
  if isinstance(config, Mapping):
    hf_cfg = dict(config)
    cfg = hf.config_from_hf(hf_cfg)
  else:
    cfg, hf_cfg = config, config.to_hf()
  backbone = registry.backbone_of(cfg)
  if params is not None:
    cfg = backbone.match_params(cfg, params)
  base = cfg.to_hf()
  # Keep the source's extra fields (e.g. task_specific_params), but the shape fields must be ours.
  hf_cfg = {k: v for k, v in hf_cfg.items() if not k.startswith("_") and k not in ("transformers_version",)}
  hf_cfg.update({k: v for k, v in base.items() if k in backbone.SHAPE_FIELDS})
  for k, v in base.items():
    hf_cfg.setdefault(k, v)
  hf_cfg["architectures"] = base["architectures"]
  return cfg, hf_cfg


def _json(path: str, obj: Any) -> None:
  files.write_json(path, obj, ensure_ascii=False)


def _save_tensors(tensors: Mapping[str, np.ndarray], path: str, dtype: str, fmt: str = "safetensors") -> None:
  import torch
  tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
  sd = {k: torch.from_numpy(np.array(v, np.float32, copy=True)).to(tdtype).contiguous()
        for k, v in tensors.items()}
  if fmt == "safetensors":
    from safetensors.torch import save_file
    save_file(sd, path, metadata={"format": "pt"})
  else:
    torch.save(sd, path)


def _copy_tokenizer(tokenizer_dir: str, out: str) -> None:
  found = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(tokenizer_dir, f))]
  if "tokenizer.json" not in found and "spiece.model" not in found:
    raise errors.ExportError(f"{tokenizer_dir}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})")
  for f in found:
    shutil.copyfile(os.path.join(tokenizer_dir, f), os.path.join(out, f))


def _versions() -> dict:
  out = {}
  for name in ("sentence_transformers", "transformers", "torch"):
    try:
      out[name if name != "torch" else "pytorch"] = __import__(name).__version__
    except Exception:  # pragma: no cover
      pass
  return out


def write_folder(out: str, state: Mapping[str, np.ndarray], dense: np.ndarray | None, hf_config: dict,
                 tokenizer_dir: str, *, normalize: bool = True, legacy: bool = False, dtype: str = "float32",
                 max_seq_length: int = 512, card: str | None = None, matryoshka_dims=()) -> None:
  """Writes the files of one layout into an existing empty folder ``out`` (no verification, no renaming).

  - default, **sentence-transformers >= 3**: ``config.json`` (``T5EncoderModel`` / ``BertModel``),
    ``model.safetensors``, tokenizer files, ``modules.json`` (Transformer at path ``""``),
    ``sentence_bert_config.json``, ``config_sentence_transformers.json``, ``1_Pooling/config.json`` (mean,
    ``"include_prompt": false``), ``2_Dense`` (``linear.weight [out, in]``, no bias; only if the model has one),
    ``N_Normalize`` and a ``README.md`` model card.
  - ``legacy=True`` (T5 only): the hkunlp/instructor-* layout for InstructorEmbedding 1.0.1 on sentence-transformers
    2.2.2: ``INSTRUCTOR_Transformer`` at path ``""``, a ``1_Pooling`` config *without* ``include_prompt``,
    ``2_Dense/pytorch_model.bin`` and a ``sentence_bert_config.json`` with only ``max_seq_length`` /
    ``do_lower_case``.
  """
  if dtype not in DTYPES:
    raise errors.ExportError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  d_model = int(hf.config_from_hf(hf_config).d_model)
  cfg = dict(hf_config, torch_dtype=dtype)
  _json(os.path.join(out, "config.json"), cfg)
  _save_tensors(state, os.path.join(out, "model.safetensors"), dtype)
  _copy_tokenizer(tokenizer_dir, out)
  _json(os.path.join(out, "sentence_bert_config.json"), {"max_seq_length": int(max_seq_length), "do_lower_case": False})
  modules = [{"idx": 0, "name": "0", "path": "",
              "type": "InstructorEmbedding.INSTRUCTOR_Transformer" if legacy
              else "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
  pooling = {"word_embedding_dimension": d_model, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
             "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
  if not legacy:
    pooling.update({"pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False,
                    "include_prompt": False})
  os.makedirs(os.path.join(out, "1_Pooling"))
  _json(os.path.join(out, "1_Pooling", "config.json"), pooling)
  if dense is not None:
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    ddir = os.path.join(out, "2_Dense")
    os.makedirs(ddir)
    _json(os.path.join(ddir, "config.json"), {"in_features": int(dense.shape[1]), "out_features": int(dense.shape[0]),
                                              "bias": False,
                                              "activation_function": "torch.nn.modules.linear.Identity"})
    # sentence-transformers 2.2.2 reads only pytorch_model.bin; newer versions prefer model.safetensors.
    if legacy:
      _save_tensors({"linear.weight": dense}, os.path.join(ddir, "pytorch_model.bin"), dtype, fmt="bin")
    else:
      _save_tensors({"linear.weight": dense}, os.path.join(ddir, "model.safetensors"), dtype)
  if normalize:
    n = len(modules)
    modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"})
    os.makedirs(os.path.join(out, f"{n}_Normalize"))
  _json(os.path.join(out, "modules.json"), modules)
  if legacy:
    st_cfg = {"__version__": {"sentence_transformers": "2.2.2", "transformers": "4.20.0", "pytorch": "1.7.0"}}
  else:
    st_cfg = {"__version__": _versions(), "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    if matryoshka_dims:
      st_cfg[MATRYOSHKA_KEY] = [int(d) for d in matryoshka_dims]
  _json(os.path.join(out, "config_sentence_transformers.json"), st_cfg)
  if card is not None:
    files.write_text(os.path.join(out, "README.md"), card)


