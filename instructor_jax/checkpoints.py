"""Checkpoints: an orbax ``CheckpointManager`` over the workdir, SIGTERM handling, and the params-only API.

Layout of a workdir (checkpoints are orbax step folders directly under it)::

    WORKDIR/
      <step>/params/      parameters (fp32; {'model': InstructorModel params, ['log_temperature']})
      <step>/train/       optimizer state, base RNG key, step counter (absent in params-only checkpoints)
      <step>/data/        data-iterator state (JSON: {'step', 'stream'})
      <step>/meta/        JSON: model meta (backbone + HF config, out_features, normalize, pad_id, tokenizer) + training
                          config
      tokenizer/          the tokenizer files (copied once, so a workdir is self-contained)
      metrics.jsonl, tensorboard/

Saves are asynchronous (orbax copies device arrays to host, then writes in a background thread); a step folder
is written under a temporary name and renamed when complete, so a run killed mid-save leaves a temporary folder
that is never restored (and is cleaned up on the next start). ``max_to_keep`` old steps are kept.

Public API for other stages (conversion / export):

- ``restore_params(path) -> (params, meta)``: ``path`` is a workdir (latest step) or ``WORKDIR/STEP``;
  ``params`` is the host (numpy) ``InstructorModel`` params tree ``{'encoder': ..., 'dense': ...}``; ``meta`` has
  ``backbone`` (``"t5"`` | ``"bert"``), ``model_config`` (the encoder's HF ``config.json`` dict; its ``model_type``
  names the backbone too), ``out_features``, ``normalize``, ``pad_id``, ``max_seq_length``, ``tokenizer_dir``
  (absolute), ``tokenizer_files``, ``step`` and, for training checkpoints, ``config``. T5 checkpoints also carry the
  same dict as ``t5_config``, the only key checkpoints written before the BERT backbone have; ``model_config(meta)``
  reads either, so old checkpoints restore unchanged.
- ``save_params(workdir, params, meta, step=0)``: writes a params-only checkpoint that training can start from
  (``--config.model.init_checkpoint=WORKDIR``) and ``restore_params`` reads.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("params", "train", "data", "meta")
TOKENIZER_SUBDIR = "tokenizer"
TOKENIZER_FILES = ("spiece.model", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def _abs(path: str) -> str:
  return os.path.abspath(os.fspath(path))


def manager(workdir: str, max_to_keep: int | None = 3, async_save: bool = True, read_only: bool = False
            ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=async_save, read_only=read_only)
  handlers = dict(params=ocp.StandardCheckpointHandler(), train=ocp.StandardCheckpointHandler(),
                  data=ocp.JsonCheckpointHandler(), meta=ocp.JsonCheckpointHandler())
  return ocp.CheckpointManager(_abs(workdir), item_handlers=handlers, options=options)


def copy_tokenizer(src_dir: str, workdir: str) -> str:
  """Copies the tokenizer files of ``src_dir`` into ``WORKDIR/tokenizer`` (process 0 only); returns the folder."""
  dst = os.path.join(_abs(workdir), TOKENIZER_SUBDIR)
  if jax.process_index() == 0 and _abs(src_dir) != dst:
    os.makedirs(dst, exist_ok=True)
    found = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(src_dir, f))]
    if not found:
      raise FileNotFoundError(f"{src_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    for f in found:
      tmp = os.path.join(dst, f + ".tmp")
      shutil.copyfile(os.path.join(src_dir, f), tmp)
      os.replace(tmp, os.path.join(dst, f))
  return dst


def tokenizer_files(folder: str) -> list[str]:
  return [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(folder, f))]


class Checkpointer:
  """Saves / restores the full training state of one workdir."""

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.workdir = _abs(workdir)
    self.mgr = manager(self.workdir, max_to_keep=max_to_keep, async_save=async_save)

  def latest_step(self) -> int | None:
    return self.mgr.latest_step()

  def save(self, step: int, params, train, data_state: dict, meta: dict, force: bool = True) -> bool:
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train),
        data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta))
    return self.mgr.save(step, args=args, force=force)

  def restore(self, step: int, abstract_params, abstract_train):
    """Restores ``(params, train, data_state, meta)`` of ``step`` onto the shardings of the abstract trees."""
    items = self.mgr.item_metadata(step)
    if items.get("train") is None:
      raise ValueError(f"{self.workdir}/{step} is a params-only checkpoint; pass it as "
                       f"--config.model.init_checkpoint instead of resuming into it")
    out = self.mgr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params), train=ocp.args.StandardRestore(abstract_train),
        data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return out.params, out.train, out.data, out.meta

  def wait(self):
    self.mgr.wait_until_finished()

  def close(self):
    self.mgr.wait_until_finished()
    self.mgr.close()


def _split_path(path: str) -> tuple[str, int | None]:
  path = _abs(path).rstrip("/")
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, "params")):
    return os.path.dirname(path), int(base)
  return path, None


def restore_params(path: str) -> tuple[dict, dict]:
  """``(params, meta)`` from a workdir (latest complete step) or ``WORKDIR/STEP``; params as numpy arrays.

  ``params`` is the ``InstructorModel`` tree (``{'encoder': ..., 'dense': ...}``); a learnable temperature, if
  any, is in ``meta['log_temperature']``.
  """
  workdir, step = _split_path(path)
  mgr = manager(workdir, max_to_keep=None, async_save=False, read_only=True)
  try:
    if step is None:
      step = mgr.latest_step()
      if step is None:
        raise FileNotFoundError(f"{workdir}: no complete checkpoint found")
    meta_item = mgr.item_metadata(step)
    tree_meta = meta_item["params"]
    if tree_meta is None:
      raise FileNotFoundError(f"{workdir}/{step}: no params in this checkpoint")
    one = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])  # host copy, any topology
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=one), tree_meta,
                          is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    out = mgr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  finally:
    mgr.close()
  params = jax.tree.map(np.asarray, dict(out.params))
  meta = dict(out.meta)
  meta["step"] = int(step)
  if any(meta.get(k) for k in ("model_config", "t5_config", "hf_config")):  # old checkpoints: only t5_config
    meta.update(backbone_meta(model_config(meta)))
  tok = meta.get("tokenizer_dir", TOKENIZER_SUBDIR)
  meta["tokenizer_dir"] = tok if os.path.isabs(tok) else os.path.join(workdir, tok)
  meta["tokenizer_files"] = tokenizer_files(meta["tokenizer_dir"])
  model = params.pop("model", None)
  if model is None:  # a tree saved without the trainer's wrapper
    return params, meta
  if "log_temperature" in params:
    meta["log_temperature"] = float(params["log_temperature"])
  return model, meta


def model_config(meta: dict) -> dict:
  """The encoder's HF ``config.json`` dict from checkpoint meta: ``model_config``, or ``t5_config`` (checkpoints
  written before the BERT backbone), or ``hf_config``."""
  for key in ("model_config", "t5_config", "hf_config"):
    if meta.get(key):
      return dict(meta[key])
  raise ValueError(f"checkpoint meta has no model config (model_config / t5_config); keys: {sorted(meta)}")


def backbone_meta(hf_config: dict) -> dict:
  """The meta keys naming the encoder: ``backbone``, ``model_config`` and, for T5, the legacy ``t5_config``."""
  hf_config = dict(hf_config)
  kind = hf_config.setdefault("model_type", "t5")
  out = {"backbone": kind, "model_config": hf_config}
  if kind == "t5":
    out["t5_config"] = hf_config
  return out


def save_params(workdir: str, params: dict, meta: dict, step: int = 0) -> str:
  """Writes ``params`` (an ``InstructorModel`` tree) and ``meta`` as a params-only checkpoint of ``workdir``.

  ``meta`` needs the encoder's HF config (``model_config``, or ``t5_config`` as before), ``out_features``,
  ``normalize`` and ``tokenizer_dir`` (a folder with the tokenizer files, copied into ``WORKDIR/tokenizer``);
  ``pad_id`` (0) and ``max_seq_length`` are optional. ``backbone`` / ``model_config`` (and ``t5_config`` for T5)
  are written from that config. Returns the step folder.
  """
  for key in ("out_features", "normalize", "tokenizer_dir"):
    if key not in meta:
      raise ValueError(f"save_params: meta needs {key!r}")
  meta = {**meta, **backbone_meta(model_config(meta))}
  workdir = _abs(workdir)
  os.makedirs(workdir, exist_ok=True)
  copy_tokenizer(meta["tokenizer_dir"], workdir)
  m = {k: v for k, v in meta.items() if k not in ("step", "tokenizer_files", "log_temperature")}
  m["tokenizer_dir"] = TOKENIZER_SUBDIR
  m.setdefault("pad_id", 0)
  m = json.loads(json.dumps(m, default=_json_default))
  tree = {"model": jax.tree.map(np.asarray, params)}
  mgr = manager(workdir, max_to_keep=None, async_save=False)
  try:
    mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(m)),
             force=True)
    mgr.wait_until_finished()
  finally:
    mgr.close()
  return os.path.join(workdir, str(step))


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


class PreemptionGuard:
  """Turns SIGTERM (TPU maintenance, SLURM preemption, ``kill``) into a flag the training loop polls.

  The loop then saves a checkpoint of the current step and exits 0. With several processes the flag is
  all-reduced each step (``any``), so every host stops after the same step and the save is collective.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self._flag = threading.Event()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for s in signals:
        self._previous[s] = signal.signal(s, self._handle)

  def _handle(self, signum, frame):
    self._flag.set()

  def should_stop(self) -> bool:
    local = self._flag.is_set()
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray([local], np.int32))
    return bool(np.any(flags))

  def restore_handlers(self):
    for s, h in self._previous.items():
      signal.signal(s, h)
