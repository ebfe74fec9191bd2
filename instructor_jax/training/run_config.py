"""The run's config: checked at start (one line per bad key) and compared with the checkpoint's on resume.

``validate(config)`` raises ``ConfigError("--config.KEY: ...")`` for the first bad value, before anything is built or
written. Read first: on resume, ``resume_changes`` refuses a change that alters the run (model, data, loss, optimiser,
seed, batch...) unless it is named in ``--config.resume_allow_changes=KEY[,KEY...]``; the ``OPERATIONAL`` keys
(logging, checkpoint cadence, mesh, remat, evaluation, export, the data's location) may change freely.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

from instructor_jax.storage import paths
from instructor_jax.core import errors

OPERATIONAL = ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "async_checkpoints", "mesh_shape",
               "compilation_cache_dir", "compile_devices", "logical_axis_rules", "grad_cache_chunk", "grad_cache_fsdp",
               "peak_flops_per_device", "debug_nan_step", "resume_allow_changes", "model.remat", "model.attention",
               "model.init_from", "model.init_checkpoint", "eval", "export", "data.medi_path", "data.tfds_data_dir",
               "data.strict", "data.skip_invalid", "data.max_invalid_fraction", "data.source", "data.prepared",
               "data.mixture_or_task", "data.seqio_modules", "data.seqio_split")  # data content: fingerprinted
DATA_KEY = "data"   # in resume_allow_changes: accept a change of the data's content (task names and sizes)


ConfigError = errors.ConfigError  # core/errors.py


def flatten(tree: Any, prefix: str = "") -> dict:
  """``{'a.b': value}`` of a nested dict / ConfigDict (JSON-normalised: tuples become lists)."""
  if hasattr(tree, "to_json_best_effort"):
    tree = json.loads(tree.to_json_best_effort())
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      key = f"{prefix}.{k}" if prefix else str(k)
      if isinstance(v, Mapping) and v:
        out.update(flatten(v, key))
      else:
        out[key] = json.loads(json.dumps(v, default=str))
  return out


def _operational(key: str) -> bool:
  return any(key == k or key.startswith(k + ".") for k in OPERATIONAL)


def allowed_changes(config) -> set:
  raw = str(config.resume_allow_changes or "")
  return {k.strip() for k in raw.split(",") if k.strip()}


def resume_changes(stored: Mapping[str, Any] | None, config) -> tuple[dict, dict]:
  """``(accepted, refused)``: ``{key: (old, new)}`` of the run-altering keys that differ, split by
  ``resume_allow_changes``; ``num_train_steps`` growing is always accepted.

  Run-altering: the model, the data and its lengths, packing, the loss, the optimiser and schedule, the seed, the
  batch. *Operational* keys (``OPERATIONAL``: logging and checkpoint cadence, the mesh and gradient-caching layout,
  remat and the attention kernel, evaluation and export, the data's location) may change freely: mesh, chunking and
  remat change float rounding and dropout masks, not what is trained. When ``num_train_steps`` grows, the schedule
  (warmup ratio, linear decay to 0) is recomputed for the new total, so from the resume step on the learning rate
  follows the longer schedule (it jumps back up when the decay was already under way); shrinking it must be allowed
  by name. Accepted changes are recorded in the checkpoint meta as ``config_history`` (step, key, old, new).
  """
  if not stored:
    return {}, {}
  old, new = flatten(stored), flatten(config)
  allowed = allowed_changes(config)
  accepted, refused = {}, {}
  for key in sorted(set(old) & set(new)):  # a key only one side has was added or renamed (data_source)
    a, b = old[key], new[key]
    if a == b or _operational(key):
      continue
    grows = key == "num_train_steps" and isinstance(a, int) and isinstance(b, int) and b > a
    (accepted if grows or key in allowed else refused)[key] = (a, b)
  return accepted, refused


def refusal(workdir: str, refused: Mapping[str, tuple]) -> str:
  changes = "; ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
  return (f"{workdir} was trained with another config ({changes}). Resume with the old values, use a new "
          f"--workdir, or accept the change with --config.resume_allow_changes={','.join(refused)}")


def _show(v) -> str:
  s = json.dumps(v) if not isinstance(v, str) else v
  return s if len(s) <= 60 else s[:57] + "..."


def history_entry(step: int, accepted: Mapping[str, tuple]) -> dict:
  return {"step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "changes": {k: [a, b] for k, (a, b) in accepted.items()}}


# ----------------------------------------------------------------------------------------------------------------
# Validation at start
# ----------------------------------------------------------------------------------------------------------------
def _get(config, key: str, default=None):
  node = config
  for part in key.split("."):
    if node is None or not hasattr(node, "get"):
      return default
    node = node.get(part, None)
  return default if node is None else node


def _number(config, key, low=None, high=None, integer=False, low_open=False, high_open=False, optional=False):
  v = _get(config, key)
  if v is None:
    if optional:
      return
    raise ConfigError(f"--config.{key}: missing")
  if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
    raise ConfigError(f"--config.{key}: expected {'an integer' if integer else 'a number'}, got {v!r}")
  if not math.isfinite(v):
    raise ConfigError(f"--config.{key}: must be finite, got {v}")
  if low is not None and (v <= low if low_open else v < low):
    raise ConfigError(f"--config.{key}: must be {'>' if low_open else '>='} {low}, got {v}")
  if high is not None and (v >= high if high_open else v > high):
    raise ConfigError(f"--config.{key}: must be {'<' if high_open else '<='} {high}, got {v}")


def _choice(config, key, choices, optional=False):
  v = _get(config, key)
  if v is None and optional:
    return
  if v not in choices:
    raise ConfigError(f"--config.{key}: must be one of {', '.join(map(str, choices))}; got {v!r}")


def _known_width(config) -> int | None:
  """The embedding size when the config alone says it (``out_features``, or a random init's width); else None
  (``init_from`` / ``init_checkpoint``: ``trainer.setup`` checks once the model is built)."""
  if _get(config, "model.out_features") is not None:
    return _get(config, "model.out_features")
  if _get(config, "model.init_from", "") or _get(config, "model.init_checkpoint", ""):
    return None
  fields = _get(config, "model.bert" if _get(config, "model.backbone") == "bert" else "model.t5")
  width = (fields or {}).get("hidden_size" if _get(config, "model.backbone") == "bert" else "d_model")
  return width if isinstance(width, int) else None


def check_matryoshka(config, width: int | None = None) -> None:
  """``loss.matryoshka_dims``: distinct positive integers, each at most the embedding size ``width`` (when known);
  ``loss.matryoshka_weights``: empty or one positive number per dimension."""
  dims, weights = _get(config, "loss.matryoshka_dims", ()), _get(config, "loss.matryoshka_weights", ())
  key = "--config.loss.matryoshka_dims"
  if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
    raise ConfigError(f"{key}: expected a tuple of integers such as (768,512,256,128), got {dims!r}")
  if any(d < 1 for d in dims):
    raise ConfigError(f"{key}: every dimension must be >= 1, got {tuple(dims)}")
  if len(set(dims)) != len(dims):
    raise ConfigError(f"{key}: dimensions must be distinct, got {tuple(dims)}")
  if width is not None and dims and max(dims) > width:
    raise ConfigError(f"{key}: {max(dims)} is larger than the model's embedding size {width} (out_features, or "
                      f"d_model without a Dense head), got {tuple(dims)}")
  if not isinstance(weights, (list, tuple)) or not all(
      isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0 for w in weights):
    raise ConfigError(f"--config.loss.matryoshka_weights: expected positive numbers, got {weights!r}")
  if weights and len(weights) != len(dims):
    raise ConfigError(f"--config.loss.matryoshka_weights: {len(weights)} weight(s) for {len(dims)} dimension(s) of "
                      f"{key} {tuple(dims)}; give one per dimension or none (1 each)")


def validate(config) -> None:
  """Checks every key the trainer reads (type, range, choice, a missing data file); raises ``ConfigError`` naming the
  first bad one."""
  from instructor_jax.training import losses
  from instructor_jax.data import sampling
  for key in ("num_train_steps", "global_batch_size", "log_every_steps", "checkpoint_every_steps",
              "keep_checkpoints"):
    _number(config, key, low=1, integer=True)
  _number(config, "seed", integer=True)
  _number(config, "grad_cache_chunk", low=0, integer=True, optional=True)
  _choice(config, "grad_cache_fsdp", ("per_chunk", "once"), optional=True)
  _number(config, "peak_flops_per_device", low=0, optional=True)
  shape = _get(config, "mesh_shape")
  if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(
      isinstance(s, int) and (s >= 1 or s == -1) for s in shape) and list(shape).count(-1) <= 1):
    raise ConfigError(f"--config.mesh_shape: expected (data, fsdp, tensor) sizes >= 1 with at most one -1, got "
                      f"{shape!r}")
  _choice(config, "model.dtype", ("float32", "bfloat16", "float16"), optional=True)
  _choice(config, "model.param_dtype", ("float32", "bfloat16"), optional=True)
  _choice(config, "model.remat", ("none", "full", "dots"), optional=True)
  _choice(config, "model.attention", ("xla", "cudnn"), optional=True)
  _choice(config, "model.backbone", ("t5", "bert"), optional=True)
  _number(config, "model.dropout_rate", low=0, high=1, high_open=True, optional=True)
  _number(config, "model.out_features", low=1, integer=True, optional=True)
  _choice(config, "loss.variant", losses.VARIANTS)
  _number(config, "loss.temperature", low=0, low_open=True)
  check_matryoshka(config, _known_width(config))
  _number(config, "optim.learning_rate", low=0, low_open=True)
  _number(config, "optim.warmup_ratio", low=0, high=1, optional=True)
  _number(config, "optim.warmup_steps", low=0, integer=True, optional=True)
  _number(config, "optim.weight_decay", low=0, optional=True)
  _number(config, "optim.grad_clip_norm", low=0, optional=True)
  for key in ("optim.b1", "optim.b2"):
    _number(config, key, low=0, high=1, high_open=True, optional=True)
  _number(config, "optim.eps", low=0, low_open=True, optional=True)
  _choice(config, "optim.schedule", ("linear", "constant"), optional=True)
  for key in ("data.max_query_length", "data.max_doc_length"):
    _number(config, key, low=2, integer=True)
  _number(config, "data.num_negatives", low=0, integer=True)
  _choice(config, "data.sampling", sampling.SAMPLING, optional=True)
  _number(config, "data.temperature", low=0, low_open=True, optional=True)
  if _get(config, "data.small_tasks", "drop") != "drop":
    raise ConfigError(f"--config.data.small_tasks: only 'drop' (got {_get(config, 'data.small_tasks')!r}): a task "
                      f"smaller than the global batch cannot fill a batch without repeating a record, which makes a "
                      f"positive its own negative; such tasks are dropped and counted")
  _number(config, "data.max_invalid_fraction", low=0, high=1, optional=True)
  _number(config, "data.pack_length", low=0, integer=True, optional=True)
  _number(config, "data.pack_max_segments", low=0, integer=True, optional=True)
  _number(config, "data.pack_buckets_per_octave", low=1, integer=True, optional=True)
  _choice(config, "data.source", ("file", "prepared", "seqio", "synthetic"))
  source = _get(config, "data.source")
  if source == "prepared":
    folder = _get(config, "data.prepared", "")
    if not folder:
      raise ConfigError("--config.data.prepared: empty (a folder written by `python -m instructor_jax.data prepare`)")
    if not paths.isdir(paths.check(folder, "--config.data.prepared")):
      raise ConfigError(f"--config.data.prepared: no such folder: {folder}")
  elif source == "seqio":
    if not _get(config, "data.mixture_or_task", ""):
      raise ConfigError("--config.data.mixture_or_task: empty (a registered seqio Task or Mixture, e.g. medi)")
  elif source == "file":
    tfds_dir, path = _get(config, "data.tfds_data_dir", ""), _get(config, "data.medi_path", "")
    if tfds_dir:
      if not os.path.isdir(tfds_dir):
        raise ConfigError(f"--config.data.tfds_data_dir: no such folder: {tfds_dir}")
    elif not path:
      raise ConfigError("--config.data.medi_path: empty (a MEDI .json / .jsonl file or a prepared folder, or set "
                        "--config.data.tfds_data_dir)")
    elif not paths.exists(paths.check(path, "--config.data.medi_path")):
      raise ConfigError(f"--config.data.medi_path: no such file: {path}")
  _check_eval(config)
  keys = set(flatten(config))
  for key in allowed_changes(config):
    if key != DATA_KEY and key not in keys and not any(k.startswith(key + ".") for k in keys):
      raise ConfigError(f"--config.resume_allow_changes: {key!r} is not a config key (nor {DATA_KEY!r})")


def _check_eval(config) -> None:
  """``eval.*`` and ``export.from_best``: evaluation during training needs a suite, keeping the best needs both."""
  _number(config, "eval.every_steps", low=0, integer=True, optional=True)
  _number(config, "eval.max_examples", low=0, integer=True, optional=True)
  every, data_dir = int(_get(config, "eval.every_steps", 0) or 0), _get(config, "eval.data_dir", "")
  if every and not data_dir:
    raise ConfigError(f"--config.eval.every_steps={every}: needs --config.eval.data_dir (local task folder(s) to "
                      f"evaluate during training)")
  if data_dir and not paths.isdir(paths.check(data_dir, "--config.eval.data_dir")):
    raise ConfigError(f"--config.eval.data_dir: no such folder: {data_dir}")
  best = _get(config, "eval.keep_best", "") or ""
  if best and not every:
    raise ConfigError(f"--config.eval.keep_best={best!r}: needs --config.eval.every_steps > 0 (the scores it keeps "
                      f"the best of)")
  if _get(config, "export.from_best", False) and not best:
    raise ConfigError("--config.export.from_best: needs --config.eval.keep_best=METRIC (e.g. eval/average)")
