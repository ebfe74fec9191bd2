"""One trainer per workdir, and stopping cleanly: the workdir lock, SIGTERM / SIGINT, the resume command.

Read first: process 0 of a run holds ``WORKDIR/.lock`` (``WorkdirLock``) before anything else in the workdir is
touched, and a second trainer on the same workdir is refused. The workdir is local (the lock is a file created with
``O_CREAT | O_EXCL``) or ``gs://`` (a Cloud Storage object created with ``ifGenerationMatch=0``). ``PreemptionGuard``
turns SIGTERM / SIGINT into a save after the current step and exit 0; ``resume_command()`` is printed at every stop.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
import uuid

import jax
import numpy as np

from instructor_jax.core.errors import UserError
from instructor_jax.storage import files, paths

LOCK_NAME = ".lock"
HEARTBEAT_S = 10.0
STALE_S = 120.0


class LockedError(UserError, RuntimeError):
  """The workdir is held by another live trainer."""


def _describe(info: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("started", 0)))
  beat = time.time() - float(info.get("heartbeat", 0))
  return f"pid {info.get('pid')} on host {info.get('host')}, started {started}, last heartbeat {beat:.0f} s ago"


class _LocalFile:
  """The lock as a local file: create with ``O_EXCL``, replace by rename."""

  def __init__(self, path: str):
    self.path = path

  def read(self):
    """``(info, token)``: ``(None, None)`` when absent, ``({}, token)`` when unreadable."""
    try:
      with open(self.path) as f:
        return json.load(f), None
    except FileNotFoundError:
      return None, None
    except (OSError, ValueError):
      return {}, None  # half-written or garbage: treated like a lock whose heartbeat is unknown

  def create(self, data: bytes) -> bool:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    return True

  def replace(self, data: bytes, token) -> bool:
    files.write_bytes(self.path, data)
    return True

  def delete(self, token) -> None:
    try:
      os.remove(self.path)
    except OSError:
      pass


class _GcsObject:
  """The lock as a Cloud Storage object: create with ``ifGenerationMatch=0`` (only one creator wins), replace and
  delete only the generation we read (compare-and-swap), so two trainers can never both hold it."""

  def __init__(self, path: str):
    from google.cloud import storage
    bucket, _, name = path[len("gs://"):].partition("/")
    self.path = path
    self.blob_name = name
    self.bucket = storage.Client().bucket(bucket)

  def read(self):
    from google.api_core import exceptions
    blob = self.bucket.blob(self.blob_name)
    try:
      data = blob.download_as_bytes()
    except exceptions.NotFound:
      return None, None
    try:
      return json.loads(data), blob.generation
    except ValueError:
      return {}, blob.generation

  def _upload(self, data: bytes, generation) -> bool:
    from google.api_core import exceptions
    try:
      self.bucket.blob(self.blob_name).upload_from_string(data, content_type="application/json",
                                                          if_generation_match=generation)
      return True
    except exceptions.PreconditionFailed:
      return False

  def create(self, data: bytes) -> bool:
    return self._upload(data, 0)

  def replace(self, data: bytes, token) -> bool:
    return self._upload(data, token)

  def delete(self, token) -> None:
    from google.api_core import exceptions
    try:
      self.bucket.blob(self.blob_name).delete(if_generation_match=token)
    except (exceptions.NotFound, exceptions.PreconditionFailed):
      pass


class WorkdirLock:
  """``with WorkdirLock(workdir, log):`` -- held by process 0 for the whole run.

  ``WORKDIR/.lock`` is a small JSON object ``{pid, host, start_time, run, started, heartbeat}`` written by process 0
  (one lock per run, whatever its process count; the other processes learn the outcome by a broadcast). It is
  created atomically (a local file with ``O_CREAT | O_EXCL``; on ``gs://`` a Cloud Storage object with
  ``ifGenerationMatch=0``, replaced and deleted only at the generation read), refreshed by a heartbeat thread every
  ``HEARTBEAT_S``, and removed when the run ends. A second trainer is refused with a message naming the holder. A
  lock is *stale*, and taken over with a message, when its process is gone: on the same host, the pid is not
  running (or is another process: its start time differs); on another host (a shared filesystem or ``gs://``), its
  heartbeat is older than ``STALE_S``. Take-over writes a new lock and re-reads it, so of two trainers taking over
  at once only one wins. Nothing else in the workdir is touched before the lock is held (orbax's start-up clean-up
  would delete a live trainer's in-flight save).
  """

  def __init__(self, workdir: str, log=print):
    workdir = paths.check(workdir, "--workdir")
    self.workdir = workdir
    self.path = paths.join(workdir, LOCK_NAME)
    self.file = _GcsObject(self.path) if paths.is_gcs(workdir) else _LocalFile(self.path)
    self.log = log
    self.info = None
    self.token = None
    self._stop = threading.Event()
    self._thread = None

  def _mine(self) -> dict:
    now = time.time()
    return dict(pid=os.getpid(), host=socket.gethostname(), start_time=files.start_time(os.getpid()),
                run=uuid.uuid4().hex, started=now, heartbeat=now, argv=sys.argv)

  def _stale(self, info: dict) -> str | None:
    """Why ``info``'s holder is gone, or None if it may be alive."""
    if info.get("host") == socket.gethostname() and "pid" in info:
      return None if files.alive(int(info["pid"]), info.get("start_time")) else "not running"
    age = time.time() - float(info.get("heartbeat", 0))
    if age > STALE_S:
      return f"no heartbeat for {age:.0f} s"
    return None

  def acquire(self) -> None:
    ok, message = True, ""
    if jax.process_index() == 0:
      try:
        self._acquire_here()
      except LockedError as e:
        ok, message = False, str(e)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
      if not ok and not message:
        message = f"{self.workdir} is locked by another trainer (see process 0's message)"
    if not ok:
      raise LockedError(message)

  def _acquire_here(self) -> None:
    mine = self._mine()
    data = json.dumps(mine).encode()
    for _ in range(5):
      if self.file.create(data):
        break
      held, token = self.file.read()
      if held is None:
        continue  # released meanwhile: try again
      why = self._stale(held)
      if why is None:
        raise LockedError(f"{self.workdir} is in use by another trainer ({_describe(held)}); two trainers would "
                          f"overwrite each other's checkpoints. Stop it first, or use another --workdir (lock "
                          f"file: {self.path})")
      self.log(f"taking over the lock of {self.workdir} from "
               f"{held.get('pid', '?')} on host {held.get('host', '?')} ({why})")
      if not self.file.replace(data, token):
        continue  # someone else replaced it first: look again
      time.sleep(0.05)
      if (self.file.read()[0] or {}).get("run") == mine["run"]:
        break
    else:
      raise LockedError(f"{self.path}: could not take the lock (another trainer keeps taking it)")
    self.info = mine
    self.token = self.file.read()[1]
    self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lock-heartbeat")
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      held, token = self.file.read()
      if not held or held.get("run") != self.info["run"]:
        self.log(f"warning: {self.path} is no longer ours ({_describe(held) if held else 'removed'})")
        return
      self.info["heartbeat"] = time.time()
      try:
        if self.file.replace(json.dumps(self.info).encode(), token):
          self.token = self.file.read()[1]
      except Exception as e:  # a network hiccup must not stop training; the next beat tries again
        self.log(f"warning: cannot refresh {self.path}: {e}")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    if self.info is not None:
      held, token = self.file.read()
      if (held or {}).get("run") == self.info["run"]:
        self.file.delete(token)
    self.info = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


def check_writable(workdir: str) -> None:
  """At start, before any step: ``workdir`` is local or gs:// (another scheme is refused), has a UTF-8 path (orbax /
  tensorstore need one), is a folder (made if missing) and can be written; else a one-line ``UserError``."""
  workdir = paths.check(workdir, "--workdir")  # a non-UTF-8 local name or another scheme: one line
  if not paths.is_gcs(workdir) and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir}: exists and is not a folder")
  try:
    paths.makedirs(workdir)
    probe = paths.join(workdir, f".write-probe-{uuid.uuid4().hex}")
    files.write_text(probe, "ok")
    paths.remove(probe)
  except OSError as e:
    raise UserError(f"--workdir {workdir}: cannot write there ({e.strerror or e})") from None


def resume_command() -> str:
  """The command line of this run (``python -m instructor_jax.train ...``): rerunning it resumes."""
  return shlex.join(["python", "-m", "instructor_jax.train", *sys.argv[1:]])


class PreemptionGuard:
  """SIGTERM / SIGINT -> a flag the training loop polls (it saves the current step, then exits 0).

  A second SIGINT raises ``KeyboardInterrupt`` at once (the newest checkpoint on disk stays). With several
  processes ``should_stop`` all-reduces the flag (``any``), so every host stops after the same step.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._flag = threading.Event()
    self.signal_name = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for s in signals:
        self._previous[s] = signal.signal(s, self._handle)

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if signum == signal.SIGINT and self._flag.is_set():
      signal.signal(signal.SIGINT, signal.SIG_IGN)  # no third Ctrl-C traceback while threads wind down
      raise KeyboardInterrupt
    self.signal_name = self.signal_name or name
    self._flag.set()
    if signum == signal.SIGINT:
      print(f"\n{name}: saving after this step (press Ctrl-C again to stop without saving)", file=sys.stderr,
            flush=True)

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
