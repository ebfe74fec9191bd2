"""Atomic files and folders, local or ``gs://``: the one way this package writes what a reader may see half-done.

``atomic_file(path)`` / ``write_text`` / ``write_json`` / ``save_npy``: locally a temporary file beside ``path``
renamed over it; on Cloud Storage a local temporary file uploaded as one object (an object appears whole or not at
all). ``atomic_folder(out)``: locally a ``.NAME.tmp-*`` folder renamed into place (with ``overwrite`` the old one is
moved aside first), whose owner file lets the next writer remove temporaries of dead writers and restore an old
folder if a writer died between its two renames. On Cloud Storage, which has no folder rename, the folder is built
locally, uploaded, and ``COMMIT`` is written last; readers of a gs:// folder require it (``is_complete``).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from typing import Any, Callable, Iterator, Optional

import numpy as np

from instructor_jax.storage import paths

OWNER = ".owner.json"       # in a temporary folder: who is writing it
COMMIT = "commit_success.txt"  # in a gs:// folder: written last; a folder without it is never read
LEGACY_STALE_S = 3600       # a temporary folder without an owner file is stale after an hour


def umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


# ---------------------------------------------------------------------------------------------------------------
# Processes: is the owner of a temporary folder or lock still running?

def start_time(pid: int) -> Optional[str]:
  """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or None if unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def alive(pid: int, started: Optional[str]) -> bool:
  """Whether process ``pid`` (started at ``started``, if known) still runs on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, someone else's
  now = start_time(pid)
  return started is None or now is None or now == started


def owner() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "start_time": start_time(os.getpid())}


def owner_is_dead(info: dict) -> bool:
  return info.get("host") == socket.gethostname() and not alive(int(info["pid"]), info.get("start_time"))


# ---------------------------------------------------------------------------------------------------------------
# Files

@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", encoding: Optional[str] = "utf-8") -> Iterator[Any]:
  """``with atomic_file(path) as f: f.write(...)``: ``path`` appears complete (fsynced) or not at all."""
  path = os.fspath(path)
  if paths.is_gcs(path):
    with tempfile.TemporaryDirectory(prefix="instructor_jax-upload-") as tmp:
      local = os.path.join(tmp, paths.basename(path))
      with open(local, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
        yield f
      paths.upload(local, path)
    return
  if os.path.isdir(path):
    raise IsADirectoryError(21, "Is a directory", path)
  parent = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a new file's usual mode
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  with atomic_file(path) as f:
    f.write(text)


def write_bytes(path: str, data: bytes) -> None:
  with atomic_file(path, "wb") as f:
    f.write(data)


def write_json(path: str, obj: Any, indent: Optional[int] = 2, **kwargs) -> None:
  with atomic_file(path) as f:
    json.dump(obj, f, indent=indent, **kwargs)
    f.write("\n")


def save_npy(path: str, array: np.ndarray) -> None:
  with atomic_file(path, "wb") as f:
    np.save(f, array)


# ---------------------------------------------------------------------------------------------------------------
# Folders

def _temp_names(out: str) -> tuple[str, str]:
  parent, base = os.path.dirname(os.path.abspath(out)), os.path.basename(os.path.abspath(out))
  return parent, base


def remove_stale(out: str, log: Optional[Callable[[str], None]] = None) -> list[str]:
  """Removes the ``.NAME.tmp-*`` / ``.NAME.old-*`` folders that writers of ``out`` killed before they finished left
  beside it (their owner is dead); if one died between its two renames, its backup becomes ``out`` again. A folder
  whose owner is alive, or that belongs to another host, is left alone. Returns the removed paths."""
  parent, base = _temp_names(out)
  removed = []
  for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
    if not (name.startswith(f".{base}.tmp-") or name.startswith(f".{base}.old-")):
      continue
    path = os.path.join(parent, name)
    try:
      with open(os.path.join(path, OWNER)) as f:
        stale = owner_is_dead(json.load(f))
    except (OSError, ValueError, KeyError, TypeError):
      try:
        stale = time.time() - os.path.getmtime(path) > LEGACY_STALE_S
      except OSError:
        continue
    if not stale:
      continue
    backup = os.path.join(path, "old")
    if name.startswith(f".{base}.old-") and os.path.isdir(backup) and not os.path.exists(out):
      os.rename(backup, out)  # a writer killed between its two renames: the old folder returns
      if log:
        log(f"restored {out} from the backup of an interrupted write")
    shutil.rmtree(path, ignore_errors=True)
    removed.append(path)
    if log:
      log(f"removed {path}, left by an interrupted write")
  return removed


def fix_permissions(root: str) -> None:
  """mkdtemp folders are 0700 and some writers use 0600: give a finished folder the usual umask-based modes."""
  mask = umask()
  os.chmod(root, 0o777 & ~mask)
  for d, dirs, names in os.walk(root):
    for n in dirs:
      os.chmod(os.path.join(d, n), 0o777 & ~mask)
    for n in names:
      os.chmod(os.path.join(d, n), 0o666 & ~mask)


@contextlib.contextmanager
def atomic_folder(out: str, overwrite: bool = False, log: Optional[Callable[[str], None]] = None
                  ) -> Iterator[str]:
  """``with atomic_folder(out) as tmp:`` write into ``tmp``; on success it becomes ``out`` (replacing an existing
  ``out`` only with ``overwrite``, else ``FileExistsError``); on failure nothing is left. Stale temporary folders of
  ``out`` from dead writers are removed first."""
  if paths.is_gcs(out):
    with _gcs_folder(os.fspath(out), overwrite) as tmp:
      yield tmp
    return
  out = os.path.abspath(os.fspath(out))
  if os.path.exists(out) and not os.path.isdir(out):
    raise NotADirectoryError(20, "Not a directory (a file is in the way)", out)
  parent, base = _temp_names(out)
  os.makedirs(parent, exist_ok=True)
  remove_stale(out, log)
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(17, "File exists (pass overwrite to replace it)", out)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.tmp-")
  try:
    write_json(os.path.join(tmp, OWNER), owner())
    yield tmp
    os.remove(os.path.join(tmp, OWNER))
    fix_permissions(tmp)
    if os.path.exists(out):
      if not overwrite:
        raise FileExistsError(17, "File exists (written by someone else meanwhile)", out)
      backup_dir = os.path.join(parent, f".{base}.old-{uuid.uuid4().hex[:8]}")
      os.mkdir(backup_dir)
      write_json(os.path.join(backup_dir, OWNER), owner())
      os.rename(out, os.path.join(backup_dir, "old"))
      os.rename(tmp, out)
      shutil.rmtree(backup_dir, ignore_errors=True)
    else:
      os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def is_complete(folder: str) -> bool:
  """Whether ``folder`` may be read: always for a local folder (it appeared by rename), for gs:// only with its
  ``COMMIT`` marker."""
  return paths.exists(paths.join(folder, COMMIT)) if paths.is_gcs(folder) else os.path.isdir(folder)


@contextlib.contextmanager
def _gcs_folder(out: str, overwrite: bool) -> Iterator[str]:
  """``atomic_folder`` on Cloud Storage: build locally, then (marker removed first when replacing) upload with
  ``COMMIT`` last."""
  if paths.exists(out) and not overwrite:
    raise FileExistsError(17, "File exists (pass overwrite to replace it)", out)
  with tempfile.TemporaryDirectory(prefix="instructor_jax-folder-") as tmp:
    yield tmp
    fix_permissions(tmp)
    if paths.exists(out):
      paths.remove(paths.join(out, COMMIT))  # readers stop reading the old folder before it changes
      paths.rmtree(out)
    write_text(os.path.join(tmp, COMMIT), "")
    paths.upload(tmp, out, last=(COMMIT,))
