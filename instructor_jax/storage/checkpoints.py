"""Checkpoints: an orbax ``CheckpointManager`` over the workdir (``Checkpointer``) and the params-only API.

Read first: checkpoints are orbax step folders directly under the workdir (``WORKDIR/<step>/{params,train,data,meta}``,
beside ``tokenizer/``, ``metrics.jsonl``, ``tensorboard/``); the workdir is a local folder or a ``gs://`` path
(orbax / tensorstore write there directly). A step is restored only once complete, so a run killed mid-save loses
at most that save; on ``gs://`` only unfinished *step* folders are cleaned up (``manager``). Other stages
(conversion, export) use ``restore_params`` / ``save_params``.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from instructor_jax.storage import files, paths
from instructor_jax.storage.checksums import checksums, host_checksums, verify  # noqa: F401 (API)
from instructor_jax.core import errors

ITEMS = ("params", "train", "data", "meta")
TOKENIZER_SUBDIR = "tokenizer"
TOKENIZER_FILES = ("spiece.model", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def _abs(path: str) -> str:
  return paths.check(path, "checkpoint path")


CheckpointError = errors.CheckpointError  # core/errors.py


class _ReadOnlyNotes(logging.Filter):
  """orbax warns on every read-only manager ("Given directory is read only", "setting save_interval_steps=0"):
  reading is all we asked for, so those two notes are not shown."""

  def filter(self, record):
    msg = record.getMessage()
    return not ("read only" in msg or "read_only=True" in msg)


logging.getLogger("absl").addFilter(_ReadOnlyNotes())


def manager(workdir: str, max_to_keep: int | None = 3, async_save: bool = True, read_only: bool = False
            ) -> ocp.CheckpointManager:
  """The orbax manager of ``workdir``; ``max_to_keep`` old steps are kept.

  Saves are asynchronous (orbax copies device arrays to host, then writes in a background thread). Locally a step
  folder is written under a temporary name and renamed when complete, so a run killed mid-save leaves a temporary
  folder that is never restored (and is cleaned up on the next start). On ``gs://`` (no rename) a step is complete
  once its ``commit_success.txt`` is written; the unfinished step folders are removed by
  ``remove_unfinished_steps``, never the workdir's other folders.
  """
  remote = paths.is_gcs(workdir)
  if remote and not read_only:
    remove_unfinished_steps(workdir)
  # On gs:// orbax takes every sub-folder without its commit marker for an unfinished step, and would delete
  # WORKDIR/tokenizer, tensorboard, eval and export: there we remove only unfinished *step* folders ourselves.
  # A read-only manager is one process's (evaluation, export, ``finish`` on process 0 of a multi-host run): it must
  # not wait in barriers for the other processes, which are not reading.
  solo = {} if not read_only or jax.process_count() == 1 else dict(
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          primary_host=jax.process_index(), active_processes={jax.process_index()},
          barrier_sync_key_prefix=f"read-only-{jax.process_index()}"))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, cleanup_tmp_directories=not (read_only or remote),
      enable_async_checkpointing=async_save, read_only=read_only, **solo)
  handlers = dict(params=ocp.StandardCheckpointHandler(), train=ocp.StandardCheckpointHandler(),
                  data=ocp.JsonCheckpointHandler(), meta=ocp.JsonCheckpointHandler())
  return ocp.CheckpointManager(_abs(workdir), item_handlers=handlers, options=options)


def remove_unfinished_steps(workdir: str) -> list[str]:
  """gs://: the step folders a killed save left without ``commit_success.txt`` (process 0); returns them."""
  removed = []
  if jax.process_index() == 0 and paths.isdir(workdir):
    for name in paths.listdir(workdir):
      step_dir = paths.join(workdir, name)
      if name.isdigit() and not paths.exists(paths.join(step_dir, files.COMMIT)):
        paths.rmtree(step_dir)
        removed.append(step_dir)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("instructor_jax: unfinished steps removed")
  return removed


def copy_tokenizer(src_dir: str, workdir: str) -> str:
  """Copies the tokenizer files of ``src_dir`` into ``WORKDIR/tokenizer`` (process 0 only); returns the folder."""
  dst = paths.join(_abs(workdir), TOKENIZER_SUBDIR)
  src_dir = paths.local_copy(_abs(src_dir))
  if jax.process_index() == 0 and src_dir != dst:
    paths.makedirs(dst)
    found = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(src_dir, f))]
    if not found:
      raise FileNotFoundError(f"{src_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    for f in found:
      with open(os.path.join(src_dir, f), "rb") as fh:
        data = fh.read()
      out = paths.join(dst, f)
      if paths.exists(out) and paths.read_bytes(out) == data:
        continue  # nothing to write (a read-only finished workdir stays untouched)
      files.write_bytes(out, data)
  return dst


def tokenizer_files(folder: str) -> list[str]:
  return [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(folder, f))]


def _reason(e: BaseException) -> str:
  """One line for an exception from orbax / tensorstore (their messages run to dozens of lines)."""
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _all_agree(ok: bool) -> bool:
  """True only if ``ok`` on every process (a restore is collective, so all hosts must take the same step)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray([ok], np.int32))))


class Checkpointer:
  """Saves / restores the full training state of one workdir, with content checksums.

  Layout of a workdir (orbax step folders directly under it; local or ``gs://``)::

    WORKDIR/
      <step>/params/      parameters (fp32; {'model': InstructorModel params, ['log_temperature']})
      <step>/train/       optimizer state, base RNG key, step counter (absent in params-only checkpoints)
      <step>/data/        data-iterator state (JSON: {'step', 'stream'})
      <step>/meta/        JSON: model meta (backbone + HF config, out_features, normalize, pad_id, tokenizer) + training
                          config
      tokenizer/          the tokenizer files (copied once, so a workdir is self-contained)
      metrics.jsonl, tensorboard/

  ``save`` stores ``checksums`` of the params and train-state arrays in the step's meta. ``restore_latest``
  tries the steps newest first: a step that cannot be read (a truncated or missing file, a deleted item) or whose
  restored arrays fail their checksums is reported with its path and moved aside to ``WORKDIR/<step>.corrupt``
  (kept, never deleted, and no longer a step for orbax or the keep-K rule), and the newest intact step is used.
  """

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.workdir = _abs(workdir)
    self.max_to_keep, self.async_save = max_to_keep, async_save
    self.mgr = manager(self.workdir, max_to_keep=max_to_keep, async_save=async_save)

  def latest_step(self) -> int | None:
    return self.mgr.latest_step()

  def save(self, step: int, params, train, data_state: dict, meta: dict, force: bool = True) -> bool:
    meta = dict(meta, checksums=checksums({"params": params, "train": train}))
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train),
        data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta))
    with self._writing(step):
      return self.mgr.save(step, args=args, force=force)

  @contextlib.contextmanager
  def _writing(self, step=None):
    """A save that fails for the disk (full, quota, read-only, permissions) becomes one line naming the workdir;
    the steps already on disk are intact (orbax writes a step to a temporary folder and renames it when done)."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 -- orbax wraps the OSError of its writer threads
      cause = _os_error(e)
      if cause is None:
        raise
      what = f"step {step}" if step is not None else "a checkpoint"
      hint = " (the disk is full: free space on it" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else " ("
      raise CheckpointError(f"cannot save {what} to {self.workdir}: {cause.strerror or cause}{hint}then rerun "
                            f"the same command to resume from the newest checkpoint, {self.latest_step()})") from e

  def restore(self, step: int, abstract_params, abstract_train):
    """Restores and verifies ``(params, train, data_state, meta)`` of ``step`` onto the shardings of the abstract
    trees; raises ``CheckpointError`` with one line when the step cannot be used."""
    where = paths.join(self.workdir, str(step))
    try:
      items = self.mgr.item_metadata(step)
      if items.get("train") is None and items.get("params") is not None and items.get("meta") is not None:
        raise ValueError(f"{where} is a params-only checkpoint; pass it as --config.model.init_checkpoint instead "
                         f"of resuming into it")
      out = self.mgr.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params), train=ocp.args.StandardRestore(abstract_train),
          data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    except ValueError as e:
      if "params-only" in str(e):
        raise
      raise CheckpointError(f"{where}: cannot be read ({_reason(e)})") from None
    except Exception as e:  # tensorstore / orbax / JSON errors of a damaged step
      raise CheckpointError(f"{where}: cannot be read ({_reason(e)})") from None
    if out.meta is None or out.data is None:
      raise CheckpointError(f"{where}: incomplete (no {'meta' if out.meta is None else 'data'} item)")
    verify(where, out.meta.get("checksums"), checksums({"params": out.params, "train": out.train}))
    return out.params, out.train, out.data, out.meta

  def newest_meta(self) -> dict | None:
    """The meta item of the newest step that has a readable one (what a resume compares its config with)."""
    return _newest_meta(self.mgr)

  def restore_latest(self, abstract_params, abstract_train, log=print):
    """``(step, (params, train, data_state, meta))`` of the newest intact step, or ``(None, None)`` when there is no
    step; damaged steps are reported and moved aside. Raises ``CheckpointError`` when steps exist but none is
    intact."""
    steps = sorted(self.mgr.all_steps(), reverse=True)
    damaged = []
    for step in steps:
      try:
        got, err = self.restore(step, abstract_params, abstract_train), None
      except CheckpointError as e:
        got, err = None, str(e)
      if not _all_agree(err is None):
        err = err or f"{self.workdir}/{step}: cannot be read on another process"
        damaged.append(step)
        log(f"{err}; skipping it")
        continue
      if damaged:
        self._move_aside(damaged, log)
        log(f"resuming from step {step}, the newest intact checkpoint")
      return step, got
    if steps:
      raise CheckpointError(f"{self.workdir}: none of the checkpoints {steps} is intact (see above); move them "
                            f"away to start over")
    return None, None

  def _move_aside(self, steps, log):
    """Renames damaged step folders to ``<step>.corrupt`` (process 0; on gs:// a copy then delete, objects have
    no rename), then reloads the manager's step list."""
    self.mgr.wait_until_finished()
    if jax.process_index() == 0:
      for step in steps:
        src = paths.join(self.workdir, str(step))
        dst = src + ".corrupt"
        n = 1
        while paths.exists(dst):
          dst, n = f"{src}.corrupt{n}", n + 1
        paths.rename(src, dst)
        log(f"moved {src} to {dst} (kept for inspection; it is no longer a checkpoint)")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("instructor_jax: damaged steps moved aside")
    self.mgr.reload()

  def wait(self):
    with self._writing():
      self.mgr.wait_until_finished()

  def close(self):
    with self._writing():
      self.mgr.wait_until_finished()
    self.mgr.close()


def _os_error(e: BaseException) -> OSError | None:
  """The OSError of the disk behind ``e`` (itself, its cause or context), or None."""
  seen = 0
  while e is not None and seen < 10:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
      return e
    if "No space left on device" in str(e):
      return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    e, seen = e.__cause__ or e.__context__, seen + 1
  return None


def is_checkpoint(path: str) -> bool:
  """A training workdir (step folders, no ``config.json`` / ``modules.json``) or one of its step folders."""
  if not paths.isdir(path):
    return False
  names = paths.listdir(path)
  if "config.json" in names or "modules.json" in names:
    return False
  return any(n.isdigit() and paths.isdir(paths.join(path, n)) for n in names) or (
      "params" in names and ("meta" in names or "_CHECKPOINT_METADATA" in names))


def latest_step(workdir: str) -> int | None:
  """The newest complete step of ``workdir`` (read only; None when there is none or no such folder)."""
  if not paths.isdir(workdir):
    return None
  mgr = manager(workdir, max_to_keep=None, async_save=False, read_only=True)
  try:
    return mgr.latest_step()
  finally:
    mgr.close()


def _newest_meta(mgr) -> dict | None:
  """The meta item (plus its ``step``) of the newest step of ``mgr`` that has a readable one; None if none."""
  for step in sorted(mgr.all_steps(), reverse=True):
    try:
      meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception:  # noqa: BLE001 -- a damaged step (restore_latest reports it): the next older one
      continue
    if meta is not None:
      return dict(meta, step=int(step))
  return None


def newest_meta(workdir: str) -> dict | None:
  """The meta item of ``workdir``'s newest step with a readable one (read only, no arrays); None if none."""
  if not paths.isdir(workdir):
    return None
  mgr = manager(workdir, max_to_keep=None, async_save=False, read_only=True)
  try:
    return _newest_meta(mgr)
  finally:
    mgr.close()


def _split_path(path: str) -> tuple[str, int | None]:
  path = _abs(path).rstrip("/")
  base = paths.basename(path)
  if base.isdigit() and paths.isdir(paths.join(path, "params")):
    return paths.dirname(path), int(base)
  return path, None


def _restore_params_step(mgr, workdir: str, step: int):
  where = paths.join(workdir, str(step))
  try:
    meta_item = mgr.item_metadata(step)
    tree_meta = meta_item["params"]
    if tree_meta is None:
      raise CheckpointError(f"{where}: no params in this checkpoint")
    one = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])  # host copy, any topology
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=one), tree_meta,
                          is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    out = mgr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f"{where}: cannot be read ({_reason(e)})") from None
  if out.meta is None:
    raise CheckpointError(f"{where}: incomplete (no meta item)")
  params = jax.tree.map(np.asarray, dict(out.params))
  verify(where, out.meta.get("checksums"), host_checksums({"params": params}))
  return params, dict(out.meta)


def restore_params(path: str, log=None) -> tuple[dict, dict]:
  """``(params, meta)`` from a workdir (its newest intact step) or ``WORKDIR/STEP`` (that step, or an error);
  params as numpy arrays, verified against the stored checksums.

  ``params`` is the ``InstructorModel`` tree (``{'encoder': ..., 'dense': ...}``); a learnable temperature, if
  any, is in ``meta['log_temperature']``. Skipped damaged steps are reported through ``log`` (default: stderr) and
  listed in ``meta['skipped_steps']``. Reads only: works on a read-only workdir.

  ``meta`` has ``backbone`` (``"t5"`` | ``"bert"``), ``model_config`` (the encoder's HF ``config.json`` dict; its
  ``model_type`` names the backbone too), ``out_features``, ``normalize``, ``pad_id``, ``max_seq_length``,
  ``tokenizer_dir`` (absolute; a local copy for a ``gs://`` workdir), ``tokenizer_files``, ``step`` and, for
  training checkpoints, ``config``. T5 checkpoints also carry the same dict as ``t5_config``, the only key
  checkpoints written before the BERT backbone have; ``model_config(meta)`` reads either, so old checkpoints
  restore unchanged.
  """
  import sys
  log = log or (lambda m: print(m, file=sys.stderr, flush=True))
  workdir, step = _split_path(path)
  if not paths.isdir(workdir):
    raise FileNotFoundError(f"{workdir}: no such checkpoint folder")
  mgr = manager(workdir, max_to_keep=None, async_save=False, read_only=True)
  skipped = []
  try:
    if step is not None:
      params, meta = _restore_params_step(mgr, workdir, step)
    else:
      steps = sorted(mgr.all_steps(), reverse=True)
      if not steps:
        raise FileNotFoundError(f"{workdir}: no complete checkpoint found")
      for step in steps:
        try:
          params, meta = _restore_params_step(mgr, workdir, step)
          break
        except CheckpointError as e:
          log(f"{e}; skipping it")
          skipped.append(step)
      else:
        raise CheckpointError(f"{workdir}: none of the checkpoints {steps} is intact (see above)")
      if skipped:
        log(f"using {workdir}/{step}, the newest intact checkpoint")
  finally:
    mgr.close()
  meta["step"] = int(step)
  meta["skipped_steps"] = skipped
  if any(meta.get(k) for k in ("model_config", "t5_config", "hf_config")):  # old checkpoints: only t5_config
    meta.update(backbone_meta(model_config(meta)))
  tok = meta.get("tokenizer_dir", TOKENIZER_SUBDIR)
  tok = tok if (os.path.isabs(tok) or paths.is_gcs(tok)) else paths.join(workdir, tok)
  meta["tokenizer_dir"] = paths.local_copy(tok)  # transformers reads local folders: a gs:// one is cached here
  meta["tokenizer_files"] = tokenizer_files(meta["tokenizer_dir"])
  meta.pop("checksums", None)
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


def save_params(workdir: str, params: dict, meta: dict, step: int = 0, max_to_keep: int | None = None) -> str:
  """Writes ``params`` (an ``InstructorModel`` tree) and ``meta`` as a params-only checkpoint of ``workdir``.

  ``meta`` needs the encoder's HF config (``model_config``, or ``t5_config`` as before), ``out_features``,
  ``normalize`` and ``tokenizer_dir`` (a folder with the tokenizer files, copied into ``WORKDIR/tokenizer``);
  ``pad_id`` (0) and ``max_seq_length`` are optional. ``backbone`` / ``model_config`` (and ``t5_config`` for T5)
  are written from that config. Returns the step folder. Training can start from it
  (``--config.model.init_checkpoint=WORKDIR``) and ``restore_params`` reads it. ``max_to_keep``: older steps of
  ``workdir`` beyond that many are deleted once this one is complete (None: all kept).
  """
  for key in ("out_features", "normalize", "tokenizer_dir"):
    if key not in meta:
      raise ValueError(f"save_params: meta needs {key!r}")
  meta = {**meta, **backbone_meta(model_config(meta))}
  workdir = _abs(workdir)
  paths.makedirs(workdir)
  copy_tokenizer(meta["tokenizer_dir"], workdir)
  m = {k: v for k, v in meta.items() if k not in ("step", "tokenizer_files", "log_temperature")}
  m["tokenizer_dir"] = TOKENIZER_SUBDIR
  m.setdefault("pad_id", 0)
  m = json.loads(json.dumps(m, default=_json_default))
  tree = {"model": jax.tree.map(np.asarray, params)}
  m["checksums"] = host_checksums({"params": tree})
  mgr = manager(workdir, max_to_keep=max_to_keep, async_save=False)
  try:
    mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(m)),
             force=True)
    mgr.wait_until_finished()
  finally:
    mgr.close()
  return paths.join(workdir, str(step))


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)
