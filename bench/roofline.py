"""Where the CPU encode ratio's ceiling comes from: ``python -m bench.roofline [--threads 1] [--json OUT]``.

Measures, in one process with the same threads (median [min, max] of ``--reps``):

1. the fp32 GEMM rate of XLA and of torch at the model's three matmul shapes for 1,024 tokens (the core's peak
   as each framework reaches it);
2. the JAX T5 encoder forward (``--size``, default T5-base) on 1,024 tokens laid out as ``[8, 128]`` (packed: segments of 16),
   ``[16, 64]``, ``[32, 32]``, ``[64, 16]``: same matmul FLOPs, attention growing with the row length, so the
   spread is attention's share;
3. the torch ``T5EncoderModel`` forward on ``[32, 32]`` and ``[8, 128]``;

all as GFLOP/s of the forward (``forward_flops``: matmul weights plus QK^T and AV over the whole row). Then the
ceiling of the encode ratio: torch computes ``--torch-tokens`` padded tokens for ``--real-tokens`` real ones
(defaults: the 600 STS-B pairs of the encode benchmark); JAX can compute no fewer than the real tokens and run
no faster than its GEMM rate, so ``ratio <= (torch_tokens / real_tokens) x (JAX GEMM rate / torch forward rate)``.
Random weights (timing does not depend on them); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json

from bench import SIZES, log, machine, set_threads, stats, timer, torch_threads

SHAPES = ((8, 128), (16, 64), (32, 32), (64, 16))
TORCH_SHAPES = ((32, 32), (8, 128))


def _cfg(size: str) -> dict:
  return {k: v for k, v in SIZES[size].items() if k != "out_features"}


def forward_flops(rows: int, length: int, c: dict) -> float:
  tokens = rows * length
  weights = c["num_layers"] * (4 * c["d_model"] * c["num_heads"] * c["d_kv"] + 2 * c["d_model"] * c["d_ff"])
  return 2.0 * tokens * weights + 4.0 * c["num_layers"] * tokens * length * c["num_heads"] * c["d_kv"]


def _time(fn, reps):
  fn()  # compile / warm up
  out = []
  for _ in range(reps):
    with timer(out):
      fn()
  return out


def gemm_rates(c: dict, reps: int, tokens: int = 1024, weight_grads: bool = False) -> list:
  """The model's matmuls ``[tokens, d] x [d, d_ff]``, ``[tokens, d_ff] x [d_ff, d]``, ``[tokens, d] x [d, heads x
  d_kv]``; with ``weight_grads`` also the training step's weight gradients (``x^T g``: the token axis contracted)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  rows = []
  d, ff, hk = c["d_model"], c["d_ff"], c["num_heads"] * c["d_kv"]
  shapes = [(tokens, d, ff), (tokens, ff, d), (tokens, d, hk)]
  if weight_grads:
    shapes += [(d, tokens, ff), (ff, tokens, d), (d, tokens, hk)]
  for m, k, n in shapes:
    a, b = np.random.default_rng(0).standard_normal((2, max(m, k), max(k, n)), dtype=np.float32)
    a, b = a[:m, :k].copy(), b[:k, :n].copy()
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    f = jax.jit(lambda x, y: x @ y)
    tj = _time(lambda: f(ja, jb).block_until_ready(), reps)
    ta_, tb_ = torch.from_numpy(a), torch.from_numpy(b)
    tt = _time(lambda: ta_ @ tb_, reps)
    flops = 2.0 * m * k * n
    rows.append(dict(shape=[m, k, n], xla_gflops=stats([flops / t / 1e9 for t in tj]),
                     torch_gflops=stats([flops / t / 1e9 for t in tt])))
    log(f"[roofline] GEMM {m}x{k}x{n}: xla {rows[-1]['xla_gflops']['median']:.1f} torch "
        f"{rows[-1]['torch_gflops']['median']:.1f} GFLOP/s")
  return rows


def jax_forward(c: dict, reps: int) -> list:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from instructor_jax.models.t5 import T5Config, T5Encoder
  model = T5Encoder(T5Config(**c))
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((1, 16), jnp.int32),
                                      jnp.ones((1, 16), jnp.int32)))()
  f = jax.jit(lambda p, t, m, s: model.apply(p, t, m, segment_ids=s))
  rows = []
  for r, length in SHAPES:
    tokens = np.random.default_rng(0).integers(2, 32000, (r, length)).astype(np.int32)
    segments = (np.arange(length)[None] // 16).repeat(r, 0).astype(np.int32)  # 16-token segments
    ts = _time(lambda: f(params, tokens, np.ones_like(tokens), segments).block_until_ready(), reps)
    rows.append(dict(shape=[r, length], seconds=stats(ts),
                     gflops=stats([forward_flops(r, length, c) / t / 1e9 for t in ts])))
    log(f"[roofline] jax forward [{r}, {length}]: {rows[-1]['seconds']['median']:.3f}s "
        f"{rows[-1]['gflops']['median']:.1f} GFLOP/s")
  return rows


def torch_forward(c: dict, reps: int) -> list:
  import numpy as np
  import torch
  from transformers import T5Config as HFConfig, T5EncoderModel
  torch.manual_seed(0)
  model = T5EncoderModel(HFConfig(vocab_size=32128, feed_forward_proj="relu", **c)).eval()
  rows = []
  for r, length in TORCH_SHAPES:
    ids = torch.from_numpy(np.random.default_rng(0).integers(2, 32000, (r, length)))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
      ts = _time(lambda: model(input_ids=ids, attention_mask=mask), reps)
    rows.append(dict(shape=[r, length], seconds=stats(ts),
                     gflops=stats([forward_flops(r, length, c) / t / 1e9 for t in ts])))
    log(f"[roofline] torch forward [{r}, {length}]: {rows[-1]['seconds']['median']:.3f}s "
        f"{rows[-1]['gflops']['median']:.1f} GFLOP/s")
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--threads", type=int, default=0)
  ap.add_argument("--size", default="base", choices=sorted(SIZES))
  ap.add_argument("--reps", type=int, default=7)
  ap.add_argument("--torch-tokens", type=int, default=18200, help="padded tokens the torch path computes")
  ap.add_argument("--real-tokens", type=int, default=14771, help="real (non-padding) tokens of the inputs")
  ap.add_argument("--json", default="")
  args = ap.parse_args(argv)
  threads = set_threads(args.threads)
  torch_threads(threads)
  c = _cfg(args.size)
  res = dict(size=args.size, threads=threads, machine=machine(), gemm=gemm_rates(c, args.reps),
             jax=jax_forward(c, args.reps), torch=torch_forward(c, args.reps))
  best_gemm = max(g["xla_gflops"]["median"] for g in res["gemm"])
  torch_rate = max(t["gflops"]["median"] for t in res["torch"])
  attention = 1 - res["jax"][-1]["seconds"]["median"] / res["jax"][0]["seconds"]["median"]
  res["ceiling"] = dict(token_ratio=args.torch_tokens / args.real_tokens, xla_gemm_gflops=best_gemm,
                        torch_forward_gflops=torch_rate,
                        ratio_ceiling=args.torch_tokens / args.real_tokens * best_gemm / torch_rate,
                        attention_share_at_128=attention)
  c = res["ceiling"]
  print(f"token ratio {c['token_ratio']:.3f} x (XLA GEMM {best_gemm:.1f} / torch forward {torch_rate:.1f} "
        f"GFLOP/s) = encode ratio ceiling {c['ratio_ceiling']:.2f}; attention ~{100 * attention:.0f}% of a "
        f"packed [8, 128] forward")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
