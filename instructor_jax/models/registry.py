"""The backbones by name: ``BACKBONES = {"t5": t5, "bert": bert}``, picked by ``config.json``'s ``model_type``.

Each backbone module owns its parts: ``Config``, ``Encoder``, the HF weight map (``strip_names``,
``expected_shapes``, ``encoder_to_flax`` / ``encoder_from_flax``), ``max_length`` (its length cap),
``with_overrides``, ``match_params`` / ``match_state`` (config details only the weights tell), ``SHAPE_FIELDS``,
``HF_MODEL_CLASS``, ``LEGACY_INSTRUCTOR`` and ``describe``. Code outside the backbone modules asks this registry
instead of testing config types.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping

from instructor_jax.core import errors
from instructor_jax.models import bert, t5

BACKBONES: dict[str, ModuleType] = {"t5": t5, "bert": bert}
Config = t5.T5Config | bert.BertConfig


def get(model_type: str) -> ModuleType:
  """The backbone module named ``model_type``; a ``CheckpointError`` for any other name."""
  if model_type not in BACKBONES:
    raise errors.CheckpointError(f"model_type {model_type!r} is not supported ({', '.join(BACKBONES)})")
  return BACKBONES[model_type]


def backbone_of(cfg: Any) -> ModuleType:
  """The backbone module of a config instance."""
  for module in BACKBONES.values():
    if type(cfg) is module.Config:
      return module
  raise TypeError(f"not a backbone config: {type(cfg).__name__}")


def name_of(cfg: Any) -> str:
  return backbone_of(cfg).NAME


def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> Config:
  """The backbone config of a parsed ``config.json``, by its ``model_type`` (absent: ``t5``, as the T5 configs of
  old checkpoints' metadata)."""
  return get(hf_config.get("model_type", "t5")).Config.from_hf(hf_config, **overrides)
