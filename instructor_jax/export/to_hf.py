"""Export a training checkpoint or an HF folder as a verified sentence-transformers / INSTRUCTOR folder.

``export_model`` is what ``python -m instructor_jax.convert to-hf`` and the end of training (``training/finish.py``)
call: it loads the source, writes the folder atomically and verifies it before it appears under its name.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

from instructor_jax.export.convert import export_folder, load_checkpoint, load_hf


def eval_results(path: Optional[str]) -> Optional[dict]:
  """Reads an eval output folder (``summary.json`` from ``instructor_jax.eval``) or a ``{task: score}`` JSON file."""
  if not path:
    return None
  if os.path.isdir(path):
    path = os.path.join(path, "summary.json")
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if isinstance(data, Mapping) and "tasks" in data:
    return {t["task"]: {"type": t.get("type", ""), "metric": t.get("metric", ""), "score": t["score"]}
            for t in data["tasks"]}
  return data


def export_model(out: str, *, checkpoint: Optional[str] = None, model: Optional[str] = None, legacy: bool = False,
                 dtype: str = "float32", max_seq_length: Optional[int] = None, name: Optional[str] = None,
                 training_config: Optional[Mapping[str, Any]] = None, eval_results_path: Optional[str] = None,
                 overwrite: bool = False, verify: bool = True) -> str:
  """Exports ``checkpoint`` (an orbax workdir or ``WORKDIR/STEP``) or ``model`` (an HF folder / hub id) to ``out``;
  returns the folder."""
  if (checkpoint is None) == (model is None):
    raise ValueError("export_model needs exactly one of checkpoint= or model=")
  if checkpoint is not None:
    params, hf_config, normalize, tokenizer_dir, seq_len, ckpt_training, step = load_checkpoint(checkpoint)
    training_config = training_config or ckpt_training
    source = f"{checkpoint} (step {step})" if step is not None else checkpoint
  else:
    params, hf_config, normalize, tokenizer_dir, seq_len = load_hf(model)
    source = model
  card = {"name": name or os.path.basename(os.path.abspath(out)), "training_config": training_config,
          "eval_results": eval_results(eval_results_path), "source": source}
  return export_folder(params, hf_config, out, tokenizer_dir=tokenizer_dir, normalize=normalize, legacy=legacy,
                       dtype=dtype, max_seq_length=max_seq_length or seq_len or 512, card=card,
                       overwrite=overwrite, verify=verify)
