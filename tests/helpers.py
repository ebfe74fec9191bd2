"""Shared test helpers: repository paths, the CLIs in subprocesses, metrics.jsonl, and the 8-device checks.

``reference.py`` stays the PyTorch re-statement and tiny-checkpoint builder; everything else tests share lives here.
Subprocesses get :func:`cli_env`: the CPU backend, no inherited ``XLA_FLAGS`` (one device), and a persistent
compilation cache shared by every subprocess of this pytest process (reruns of one config load the compiled step).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(HERE, "fixtures")
MEDI_FIXTURES = os.path.join(FIXTURES, "medi")
SMALL = os.path.join(MEDI_FIXTURES, "medi_small.json")  # 212 records of 7 tasks
EVAL_FIXTURES = os.path.join(FIXTURES, "eval")
VOCAB = os.path.join(ROOT, "instructor_jax", "assets", "t5-vocab")
TINY = os.path.join(ROOT, "instructor_jax", "assets", "tiny-instructor")  # the bundled tiny model
TINY_CONFIG = os.path.join(HERE, "tiny_config.py")
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo.py")
SHARDED_CHECK = os.path.join(HERE, "sharded_check.py")

XLA_CACHE = tempfile.mkdtemp(prefix="instructor_jax_test_xla_cache_")
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"


def cli_env(**extra):
  """The environment of a CLI subprocess: CPU, one device, the shared persistent compilation cache, plus ``extra``."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=XLA_CACHE,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_module(module, *args, env=None, check=False, timeout=600, **kw):
  """``python -m module args...`` from the repository root; returns the CompletedProcess (text output captured)."""
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT,
                        env=cli_env() if env is None else env, capture_output=True, text=True, timeout=timeout, **kw)
  if check:
    assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def last_line(stderr):
  """The last non-blank line of a command's output (where the CLIs print their one-line ``error: ...``)."""
  return stderr.strip().splitlines()[-1]


# -- the training command -----------------------------------------------------------------------------------------

def train_cmd(workdir, *overrides, flags=(), config=TINY_CONFIG):
  return [sys.executable, "-m", "instructor_jax.train", "--config", config, "--workdir", str(workdir),
          *flags, *overrides]


def run_train(workdir, *overrides, flags=(), config=TINY_CONFIG, check=True, timeout=600, env=None):
  """Train in a subprocess (tests/tiny_config.py unless ``config``); asserts exit 0 when ``check``."""
  proc = subprocess.run(train_cmd(workdir, *overrides, flags=flags, config=config), cwd=ROOT,
                        env=cli_env() if env is None else env, capture_output=True, text=True, timeout=timeout)
  if check:
    assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def metrics(workdir):
  """The rows of ``workdir/metrics.jsonl`` ([] before the first)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def losses(workdir):
  return [r["loss"] for r in metrics(workdir)]


def wait_for_step(proc, workdir, step, timeout=300):
  """Wait until the trainer ``proc`` has logged ``step`` (fails if it exits first)."""
  t0 = time.time()
  while time.time() - t0 < timeout:
    m = metrics(workdir)
    if m and m[-1]["step"] >= step:
      return m[-1]["step"]
    assert proc.poll() is None, proc.communicate()[1][-4000:]
    time.sleep(0.02)
  raise TimeoutError(f"step {step} not reached")


def leaves_equal(a, b):
  """Same tree structure and bit-identical leaves (dtypes included)."""
  import jax
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb))


# -- 8 fake devices -------------------------------------------------------------------------------------------------

def sharded_check(*args, timeout=900):
  """Run ``tests/sharded_check.py args...`` with 8 fake CPU devices; returns its ``RESULT`` JSON.

  A subprocess, because XLA_FLAGS must be set before JAX starts and the in-process tests need one device (mesh
  shape -1 means "all devices", so 8 would change what the single-device tests check)."""
  env = cli_env(XLA_FLAGS=EIGHT_DEVICES)
  proc = subprocess.run([sys.executable, SHARDED_CHECK, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  return json.loads(lines[-1][len("RESULT "):])
