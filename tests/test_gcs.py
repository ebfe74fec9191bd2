"""Cloud Storage end to end, against a real GCS API server on 127.0.0.1 (fake-gcs-server, tests/gcs_server.py):
a gs:// workdir trains, is killed with -9 and resumes with the losses of an uninterrupted local run; two processes
do the same; a live gs:// workdir refuses a second trainer; data prepared to gs:// trains; checkpoints convert to
a gs:// export that loads back; other schemes are one-line errors and never become local folders.
"""
import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from helpers import DEMO_CONFIG, SMALL, ROOT, cli_env, last_line, metrics, run_module, run_train, train_cmd
from instructor_jax.storage import paths, workdir as workdir_lib

STEPS = 40
COMMON = (f"--config.num_train_steps={STEPS}", "--config.checkpoint_every_steps=4")


def _gcs_metrics(wd):
  path = paths.join(wd, "metrics.jsonl")
  return [json.loads(l) for l in paths.read_text(path).splitlines() if l.strip()] if paths.exists(path) else []


def _steps(wd):
  return sorted(int(n) for n in paths.listdir(wd) if n.isdigit()) if paths.isdir(wd) else []


def _wait_for_checkpoint(procs, wd, step, timeout=300):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if any(s >= step for s in _steps(wd)) and paths.exists(paths.join(wd, str(max(_steps(wd))),
                                                                      "commit_success.txt")):
      return
    for p in procs:
      assert p.poll() is None, p.communicate()[1][-4000:]
    time.sleep(0.2)
  raise TimeoutError(f"no checkpoint {step} in {wd}")


@pytest.fixture(scope="module")
def local_baseline(tmp_path_factory):
  wd = tmp_path_factory.mktemp("local")
  run_train(wd, *COMMON)
  return [r["loss"] for r in metrics(wd)]


@pytest.mark.slow
def test_gcs_workdir_killed_and_resumed_equals_local(local_baseline, gcs_dir, tmp_path):
  wd = gcs_dir + "/run"
  proc = subprocess.Popen(train_cmd(wd, *COMMON), cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_checkpoint([proc], wd, 4)
  finally:
    proc.kill()
    proc.wait()
  assert proc.returncode == -signal.SIGKILL and max(_steps(wd)) < STEPS
  out = run_train(wd, *COMMON)
  assert "resumed from" in out.stdout + out.stderr and "taking over the lock" in out.stdout + out.stderr
  got = [r["loss"] for r in _gcs_metrics(wd)]
  assert [r["step"] for r in _gcs_metrics(wd)] == list(range(1, STEPS + 1))
  assert got == local_baseline  # bitwise
  assert not paths.exists(paths.join(wd, workdir_lib.LOCK_NAME))  # released at the end
  assert paths.exists(paths.join(wd, "tokenizer", "spiece.model"))
  assert len(paths.listdir(paths.join(wd, "tensorboard"))) == 2  # both runs' event files: nothing was cleaned away
  assert os.listdir(tmp_path) == [] and not os.path.exists(os.path.join(ROOT, "gs:"))  # never a local "gs:"


@pytest.mark.slow
def test_two_processes_on_one_gcs_workdir_resume(local_baseline, gcs_dir, tmp_path):
  wd = gcs_dir + "/multi"

  def launch():
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    return [subprocess.Popen(train_cmd(wd, *COMMON, flags=("--coordinator_address", f"127.0.0.1:{port}",
                                                             "--num_processes", "2", "--process_id", str(i))),
                             cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]

  procs = launch()
  try:
    _wait_for_checkpoint(procs, wd, 4)
  finally:
    for p in procs:
      p.kill()
      p.wait()
  procs = launch()
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  rows = _gcs_metrics(wd)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([r["loss"] for r in rows], local_baseline, rtol=1e-5)


def test_a_live_gcs_workdir_refuses_a_second_trainer(gcs_dir):
  first = workdir_lib.WorkdirLock(gcs_dir, log=lambda m: None)
  first.acquire()
  try:
    with pytest.raises(workdir_lib.LockedError, match="in use by another trainer"):
      workdir_lib.WorkdirLock(gcs_dir, log=lambda m: None).acquire()
  finally:
    first.release()
  again = workdir_lib.WorkdirLock(gcs_dir, log=lambda m: None)  # released: free again
  again.acquire()
  again.release()


def test_a_dead_holders_gcs_lock_is_taken_over_once(gcs_dir):
  dead = subprocess.Popen(["true"])
  dead.wait()
  stale = {"pid": dead.pid, "host": socket.gethostname(), "start_time": "0", "run": "old", "heartbeat": 0}
  lock_path = paths.join(gcs_dir, workdir_lib.LOCK_NAME)
  from instructor_jax.storage import files
  files.write_json(lock_path, stale)
  said = []
  lock = workdir_lib.WorkdirLock(gcs_dir, log=said.append)
  lock.acquire()
  try:
    assert "taking over the lock" in said[0]
    with pytest.raises(workdir_lib.LockedError):  # and now it is ours: a second one is refused
      workdir_lib.WorkdirLock(gcs_dir, log=lambda m: None).acquire()
  finally:
    lock.release()


@pytest.mark.slow
def test_prepare_to_gcs_and_train_from_it(gcs_dir, tmp_path):
  store = gcs_dir + "/prepared"
  r = run_module("instructor_jax.data", "prepare", "--config", "configs/demo.py", "--out", store, "--no-progress",
                 check=True)
  assert paths.exists(paths.join(store, "manifest.json")) and paths.exists(paths.join(store, "commit_success.txt"))
  common = ("--config.num_train_steps=3", "--config.export.enabled=false", "--config.eval.data_dir=")
  run_train(gcs_dir + "/run", "--config.data.source=prepared", f"--config.data.prepared={store}", *common,
            config=DEMO_CONFIG)
  local = tmp_path / "local"
  run_train(local, f"--config.data.medi_path={SMALL}", *common, config=DEMO_CONFIG)
  assert [x["loss"] for x in _gcs_metrics(gcs_dir + "/run")] == [x["loss"] for x in metrics(local)]
  assert r.returncode == 0


@pytest.mark.slow
def test_convert_gcs_checkpoint_to_gcs_export_and_back(gcs_dir, relu_dir):
  from instructor_jax import Instructor
  work, out = gcs_dir + "/work", gcs_dir + "/export"
  run_module("instructor_jax.convert", "from-hf", "--model", relu_dir, "--out", work, check=True)
  run_module("instructor_jax.convert", "to-hf", "--checkpoint", work, "--out", out, check=True)
  names = paths.listdir(out)
  assert "modules.json" in names and "commit_success.txt" in names
  pairs = [["Represent the title: ", "a gs:// export"], "plain"]
  a = Instructor.from_pretrained(relu_dir).encode(pairs)
  for model in (work, out):
    np.testing.assert_allclose(Instructor.from_pretrained(model).encode(pairs), a, atol=1e-6)


@pytest.mark.parametrize("url", ["s3://x/run", "hdfs://nn/run"])
def test_other_schemes_are_one_line_errors_and_leave_no_folder(tmp_path, url):
  r = subprocess.run(train_cmd(url), cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and last_line(r.stderr).startswith(f"error: --workdir {url}: the ")
  assert "Traceback" not in r.stderr and os.listdir(tmp_path) == []


@pytest.mark.slow
def test_encode_and_eval_read_and_write_gcs(gcs_dir, tmp_path):
  from helpers import EVAL_FIXTURES, TINY
  from instructor_jax.storage import files
  src = gcs_dir + "/in.jsonl"
  files.write_text(src, '{"instruction": "Represent the title: ", "text": "a"}\n{"text": "b"}\n')
  run_module("instructor_jax.encode", "--model", TINY, "--input", src, "--output", gcs_dir + "/e.npy", check=True)
  with paths.open_file(gcs_dir + "/e.npy", "rb") as f:
    assert np.load(f).shape[0] == 2
  out = gcs_dir + "/eval"
  run_module("instructor_jax.eval", "--model", TINY, "--data-dir", os.path.join(EVAL_FIXTURES, "stsbenchmark"),
             "--output", out, "--max-length", "32", check=True)
  import mteb
  cache = mteb.ResultCache(paths.local_copy(out))
  assert paths.exists(paths.join(out, "summary.json")) and cache is not None
