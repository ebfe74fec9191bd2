"""Smoke test of the benchmark suite at toy sizes (no timed assertions: benchmarks are not tests).

Runs the encode and train-step benchmarks of ``python -m bench.run --suite tiny`` in one subprocess (so thread
pinning and XLA flags do not leak into the test process) and checks the JSON has every figure, that JAX and the
PyTorch reference computed the same embeddings, and the pure helpers (statistics, HLO collective parsing, the
encode variants' packing plan). The memory / scaling parts compile several train steps; they run in the full
``--suite tiny`` by hand (see BENCHMARKS.md).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT as REPO

sys.path.insert(0, REPO)


@pytest.mark.slow
def test_tiny_suite_runs(tmp_path):
  out = tmp_path / "bench.json"
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_backend_optimization_level=0")
  p = subprocess.run([sys.executable, "-m", "bench.run", "--suite", "tiny", "--only", "encode,train", "--threads",
                      "1", "--json", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  res = json.loads(out.read_text())
  assert res["threads"] == 1 and res["torch_threads"] == 1
  enc = res["encode"][0]
  assert enc["max_abs_diff"] < 1e-4, enc["max_abs_diff"]
  for k in ("jax_sent_per_s", "torch_sent_per_s", "jax_tok_per_s", "torch_tok_per_s", "ratio"):
    assert enc[k]["median"] > 0 and enc[k]["n"] == 2
  assert enc["compile_s"] > 0 and enc["compiled_executables"] >= 1
  tr = res["train"]
  assert tr["jax_steps_per_s"]["median"] > 0 and tr["torch_steps_per_s"]["median"] > 0
  assert tr["flops_per_step"] > 0 and tr["compile_s"] > 0
  assert "ratio jax/torch" in p.stdout


@pytest.mark.slow
def test_roofline_runs(tmp_path):
  """``python -m bench.roofline`` at toy size: every figure present, the ceiling is the product it documents."""
  out = tmp_path / "roofline.json"
  env = dict(os.environ, PYTHONPATH=REPO)
  p = subprocess.run([sys.executable, "-m", "bench.roofline", "--size", "tiny", "--reps", "1", "--threads", "1",
                      "--json", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  res = json.loads(out.read_text())
  assert len(res["gemm"]) == 3 and len(res["jax"]) == 4 and len(res["torch"]) == 2
  assert all(r["gflops"]["median"] > 0 for r in res["jax"] + res["torch"])
  c = res["ceiling"]
  assert c["ratio_ceiling"] == c["token_ratio"] * c["xla_gemm_gflops"] / c["torch_forward_gflops"]
  assert "encode ratio ceiling" in p.stdout


def test_gemm_rates_cover_the_weight_gradients():
  """``gemm_rates(..., weight_grads=True)`` (``python -m bench.vs_st gemm``) adds the three ``x^T g`` shapes, the
  token axis contracted, after the forward ones."""
  from bench.roofline import gemm_rates
  rows = gemm_rates(dict(d_model=8, d_ff=16, num_heads=2, d_kv=4), 1, tokens=32, weight_grads=True)
  assert [r["shape"] for r in rows] == [[32, 8, 16], [32, 16, 8], [32, 8, 8], [8, 32, 16], [16, 32, 8], [8, 32, 8]]
  assert all(r["xla_gflops"]["median"] > 0 and r["torch_gflops"]["median"] > 0 for r in rows)


def test_stats_and_collectives():
  from bench import stats
  from bench.memory import collectives
  s = stats([3.0, 1.0, 2.0])
  assert s["median"] == 2.0 and s["min"] == 1.0 and s["max"] == 3.0 and abs(s["spread"] - 1.0) < 1e-12
  hlo = """
  %all-reduce.1 = (f32[10,4]{1,0}, bf16[8]{0}) all-reduce(%a, %b), channel_id=1, to_apply=%add
  %all-gather.2 = f32[16,32]{1,0} all-gather(%c), channel_id=2, dimensions={0}
  %ags = (f32[8,32]{1,0}, f32[16,32]{1,0}) all-gather-start(%d), channel_id=3
  %agd = f32[16,32]{1,0} all-gather-done(%ags)
  %add.3 = f32[4]{0} add(%x, %y)
  """
  c = collectives(hlo)
  assert c["all-reduce"] == dict(count=1, bytes=10 * 4 * 4 + 8 * 2)
  assert c["all-gather"]["count"] == 2
  assert c["all-gather"]["bytes"] == 16 * 32 * 4 + (8 * 32 * 4 + 16 * 32 * 4) // 2


def test_packing_plan_covers_every_sentence_once():
  from bench.encode import JaxEncoder
  enc = JaxEncoder.__new__(JaxEncoder)
  enc.opts, enc.pack = {"pack64"}, 64

  class E:
    def __init__(self, n):
      self.ids = tuple(range(n))

  encoded = [E(n) for n in np.random.default_rng(0).integers(1, 90, size=50)]
  enc.inst = type("I", (), {"max_length": 512, "bucket": staticmethod(lambda n: 128 if n > 64 else 64)})()
  calls = enc._plan(encoded, batch_size=8)
  seen = []
  for kind, idx, rows, length in calls:
    if kind == "packed":
      assert len(idx) <= rows and length == 64
      for members in idx:
        assert sum(len(encoded[i].ids) for i in members) <= 64 and len(members) <= 8
        seen += members
    else:
      assert len(idx) <= rows and all(len(encoded[i].ids) <= length for i in idx)
      seen += list(idx)
  assert sorted(seen) == list(range(50))
