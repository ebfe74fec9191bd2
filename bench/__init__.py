"""Benchmarks: JAX vs the PyTorch reference on the same work, in the same process (see BENCHMARKS.md).

    python -m bench.run --suite cpu [--json OUT]

Shared helpers: thread pinning (must run before jax / torch start their pools), robust statistics over repeated
measurements, compile-time accounting from JAX's monitoring events, and the model sizes used by every benchmark.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# T5 encoder sizes (HF config fields). "base" is T5-base / INSTRUCTOR-base / GTR-base; "large" INSTRUCTOR-large.
SIZES = {
    "tiny": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, out_features=32),
    "mini": dict(d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=8, out_features=256),
    "small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, out_features=512),
    "base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12, out_features=768),
    "large": dict(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16, out_features=768),
}

INSTRUCTION = "Represent the sentence for retrieving duplicate sentences: "


def set_threads(n: int | None) -> int:
  """Pins this process to ``n`` CPUs and sets every thread-count knob to ``n``; call before importing jax/torch.

  XLA:CPU sizes its intra-op (Eigen) pool from the schedulable CPUs (``sched_getaffinity``), so the affinity mask
  is what controls it; torch gets ``torch.set_num_threads(n)`` (done by the callers that import torch) and the
  OpenMP / MKL variables. Returns the thread count in effect.
  """
  cpus = sorted(os.sched_getaffinity(0))
  if n is None or n <= 0 or n > len(cpus):
    n = len(cpus)
  os.sched_setaffinity(0, cpus[:n])
  for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(n)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  return n


def torch_threads(n: int):
  import torch
  torch.set_num_threads(n)
  try:
    torch.set_num_interop_threads(1)
  except RuntimeError:  # already set (interop threads can be set once per process)
    pass
  return torch.get_num_threads()


def stats(xs) -> dict:
  """Median and spread of repeated measurements: ``median``, ``min``, ``max``, ``spread`` ((max-min)/median), ``n``."""
  xs = [float(x) for x in xs]
  med = statistics.median(xs)
  return dict(median=med, min=min(xs), max=max(xs), spread=(max(xs) - min(xs)) / med if med else 0.0, n=len(xs),
              values=xs)


def fmt(s: dict, digits: int = 3) -> str:
  """``median [min, max]``."""
  return f"{s['median']:.{digits}g} [{s['min']:.{digits}g}, {s['max']:.{digits}g}]"


class CompileTimer:
  """Sums JAX's tracing, lowering and XLA compilation durations (``jax.monitoring`` events) while active."""
  EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")
  _registered = False
  _active: list = []

  def __init__(self):
    self.seconds = 0.0
    self.compiles = 0
    if not CompileTimer._registered:
      import jax
      jax.monitoring.register_event_duration_secs_listener(CompileTimer._listen)
      CompileTimer._registered = True

  @staticmethod
  def _listen(event, duration, **kw):
    if event in CompileTimer.EVENTS:
      for t in CompileTimer._active:
        t.seconds += duration
        t.compiles += event.endswith("backend_compile_duration")

  def __enter__(self):
    CompileTimer._active.append(self)
    return self

  def __exit__(self, *exc):
    CompileTimer._active.remove(self)


@contextlib.contextmanager
def timer(out: list):
  t0 = time.perf_counter()
  yield
  out.append(time.perf_counter() - t0)


def log(*a):
  print(*a, file=sys.stderr, flush=True)


def machine() -> dict:
  """What the numbers were measured on."""
  import platform
  info = dict(python=platform.python_version(), cpus_online=os.cpu_count(),
              cpus_used=len(os.sched_getaffinity(0)), loadavg=os.getloadavg())
  try:  # "AMD EPYC" alone hides the generation: family / model and the widest vector unit say which core it was
    fields = {}
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    info["cpu"] = fields.get("model name", "")
    info["cpu_family_model"] = f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}"
    flags = fields.get("flags", "").split()
    info["cpu_vector"] = "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "other")
  except OSError:
    pass
  try:
    import jax
    info["jax"] = jax.__version__
    info["jax_devices"] = [d.device_kind for d in jax.devices()]
  except Exception:
    pass
  try:
    import torch
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  except Exception:
    pass
  info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  # The code under test is changing under active development: fingerprint what was measured.
  import hashlib
  info["sources_sha256"] = {}
  for rel in ("instructor_jax/t5.py", "instructor_jax/embedder.py", "instructor_jax/train.py",
              "instructor_jax/step.py", "instructor_jax/packing.py", "instructor_jax/losses.py",
              "instructor_jax/sharding.py"):
    try:
      with open(os.path.join(REPO, rel), "rb") as f:
        info["sources_sha256"][rel] = hashlib.sha256(f.read()).hexdigest()[:12]
    except OSError:
      pass
  return info
