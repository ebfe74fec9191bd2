"""The benchmark suite: ``python -m bench.run --suite cpu|gpu [--json OUT]`` (see BENCHMARKS.md).

Suites (sizes can be overridden with the flags below):

- ``cpu``: encode at T5-base size, batch 32, fp32, JAX vs torch interleaved (target: >= 1.5x torch sentences/s);
  train step JAX vs a PyTorch re-statement (small model); memory vs global batch with and without gradient caching
  (XLA's buffer assignment of the compiled step, compile only); scaling of step time with the global batch and
  the collective cost of the sharded step on fake CPU devices.
- ``gpu``: encode fp32 and bf16 against torch on CUDA (target: >= 2x in bf16); train step at T5-base, length 256,
  global batch 256 with MFU (target: >= 50%); memory vs global batch (device peak bytes); scaling; the T5-large
  4096-query gradient-caching fit check. Needs a CUDA jaxlib and a CUDA torch.
- ``tiny``: every benchmark at toy sizes, a smoke run: about 5 minutes on 2 CPU cores, most of it compiling the
  memory and scaling parts for fake devices; ``--only encode,train`` (what ``tests/test_bench.py`` runs) takes
  under a minute.

Thread counts: ``--threads N`` pins the process to N CPUs (XLA's intra-op pool follows the affinity mask) and sets
``torch.set_num_threads(N)``; default: all schedulable CPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench import log, machine, set_threads, torch_threads

SUITES = {
    "cpu": dict(
        encode=[dict(size="base", batch_size=32, dtype="float32", reps=5, shape_lengths=(16, 32, 64, 128))],
        train=dict(size="mini", global_batch=16, query_length=32, doc_length=64, num_negatives=1, reps=5,
                   steps_per_rep=2),
        memory=dict(size="mini", global_batches=(8, 32, 128, 512, 1024), chunk=8, query_length=64, doc_length=64,
                    num_negatives=1),
        scaling=dict(size="mini", global_batches=(8, 16, 32, 64), query_length=32, doc_length=32, num_negatives=1,
                     reps=3, fake_devices=(1, 2, 4)),
    ),
    "gpu": dict(
        encode=[dict(size="base", batch_size=32, dtype="float32", reps=5, device="cuda"),
                dict(size="base", batch_size=32, dtype="bfloat16", reps=5, device="cuda"),
                dict(size="base", batch_size=128, dtype="bfloat16", reps=5, device="cuda")],
        train=dict(size="base", global_batch=256, query_length=256, doc_length=256, num_negatives=1, reps=5,
                   steps_per_rep=3, dtype="bfloat16", device="cuda", remat="none"),
        memory=dict(size="base", global_batches=(8, 32, 128, 512, 1024), chunk=32, query_length=256,
                    doc_length=256, num_negatives=1, dtype="bfloat16"),
        scaling=dict(size="base", global_batches=(32, 64, 128), query_length=256, doc_length=256,
                     num_negatives=1, reps=3, fake_devices=(), dtype="bfloat16"),
        fit=dict(size="large", global_batch=4096, chunk=128, query_length=256, doc_length=256, num_negatives=1,
                 dtype="bfloat16", remat="full", execute=True),
    ),
    "tiny": dict(
        encode=[dict(size="tiny", batch_size=8, dtype="float32", reps=2, num_sentences=24, shape_lengths=(16,))],
        train=dict(size="tiny", global_batch=8, query_length=8, doc_length=16, num_negatives=1, reps=2,
                   steps_per_rep=1),
        memory=dict(size="tiny", global_batches=(8, 32), chunk=8, query_length=8, doc_length=16, num_negatives=1),
        scaling=dict(size="tiny", global_batches=(8, 16), query_length=8, doc_length=8, num_negatives=1, reps=2,
                     fake_devices=(1, 2)),
    ),
}
PARTS = ("encode", "train", "memory", "scaling", "fit")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--suite", choices=sorted(SUITES), required=True)
  p.add_argument("--json", default=None, help="write every result (with its command and machine info) here")
  p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
  p.add_argument("--threads", type=int, default=0, help="CPUs for both frameworks (0 = all schedulable)")
  p.add_argument("--reps", type=int, default=0, help="override the repetitions of every timed figure")
  p.add_argument("--size", default=None, help="override the encode model size (tiny|mini|small|base|large)")
  p.add_argument("--batch-size", type=int, default=0, help="override the encode batch size")
  p.add_argument("--num-sentences", type=int, default=0, help="override the number of encoded sentences")
  p.add_argument("--variant", default="default", help="JAX encode variant, '+'-joined: default|async|b8|hfirst|pack64|pack128 "
                 "(hfirst also applies to the train / memory / scaling parts)")
  p.add_argument("--no-shapes", action="store_true", help="skip the forward-only per-shape comparison")
  p.add_argument("--dropout", type=float, default=None, help="override the train-step dropout rate (both sides)")
  p.add_argument("--attention", default=None, choices=("xla", "cudnn"),
                 help="JAX attention kernel for encode and train (T5Config.attention; cudnn = GPU, bf16 only)")
  p.add_argument("--remat", default=None, choices=("none", "full", "dots"), help="override the train-step remat")
  p.add_argument("--grad-cache-chunk", type=int, default=None, help="override the train-step gradient-cache chunk")
  p.add_argument("--global-batch", type=int, default=0, help="override the train-step global batch")
  p.add_argument("--no-execute", action="store_true", help="fit: compile-only memory figures (no real step)")
  p.add_argument("--fit-chunk", type=int, default=0, help="fit: override the gradient-cache chunk")
  p.add_argument("--no-torch", action="store_true", help="train step: time JAX only (no PyTorch re-statement)")
  p.add_argument("--prng", default=None, help="jax_default_prng_impl for the run (threefry2x32 | rbg | unsafe_rbg)")
  args = p.parse_args(argv)

  threads = set_threads(args.threads)
  # Imports after the affinity mask is set: XLA and torch size their pools when they start.
  if args.prng:  # the environment variable reaches the compile-only worker processes too
    os.environ["JAX_DEFAULT_PRNG_IMPL"] = args.prng
  if args.attention:
    os.environ["INSTRUCTOR_BENCH_ATTENTION"] = args.attention
  import jax
  threads_torch = torch_threads(threads)
  suite = SUITES[args.suite]
  only = [x for x in args.only.split(",") if x]
  if "hfirst" in args.variant.split("+"):  # the attention-layout experiment applies to the train step too
    from bench.encode import patch_heads_first_attention
    patch_heads_first_attention()
  if args.suite == "gpu" and jax.default_backend() != "gpu":
    log(f"WARNING: --suite gpu but JAX's backend is {jax.default_backend()!r}")
  results = dict(variant=args.variant, command="python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
                 xla_flags=os.environ.get("XLA_FLAGS", ""), suite=args.suite, threads=threads,
                 torch_threads=threads_torch, prng=jax.config.jax_default_prng_impl, started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 machine=machine())
  tables = []

  def emit(res, table):
    tables.append(table(res))
    print(tables[-1], flush=True)
    return res

  def overrides(kw, **flags):  # flags that were given (not None) replace the suite's values
    return dict(kw, **{k: v for k, v in flags.items() if v is not None})

  if "encode" in only:
    from bench import encode
    results["encode"] = []
    for kw in suite["encode"]:
      kw = overrides(kw, reps=args.reps or None, size=args.size, batch_size=args.batch_size or None,
                     num_sentences=args.num_sentences or None, shape_lengths=() if args.no_shapes else None,
                     variant=args.variant)
      if args.attention:
        if args.attention == "cudnn" and kw["dtype"] == "float32":
          log(f"[encode] skipping {kw['dtype']} batch {kw['batch_size']}: cuDNN attention needs bf16/fp16")
          continue
        kw["attention"] = args.attention
      results["encode"].append(emit(encode.run(encode.EncodeConfig(**kw)), encode.table))

  if "train" in only and "train" in suite:
    from bench import train_step
    # --attention reaches the train step through $INSTRUCTOR_BENCH_ATTENTION (set above).
    kw = overrides(suite["train"], reps=args.reps or None, dropout_rate=args.dropout, remat=args.remat,
                   grad_cache_chunk=args.grad_cache_chunk, global_batch=args.global_batch or None,
                   torch=False if args.no_torch else None)
    results["train"] = emit(train_step.run(train_step.TrainConfig(**kw)), train_step.table)

  if "memory" in only and "memory" in suite:
    from bench import memory
    results["memory"] = emit(memory.run_memory(memory.MemoryConfig(**suite["memory"])), memory.memory_table)

  if "scaling" in only and "scaling" in suite:
    from bench import memory
    kw = overrides(suite["scaling"], reps=args.reps or None)
    results["scaling"] = emit(memory.run_scaling(memory.ScalingConfig(**kw), threads=threads), memory.scaling_table)

  if "fit" in only and "fit" in suite:
    from bench import memory
    kw = overrides({k: v for k, v in suite["fit"].items() if k != "global_batch"},
                   execute=False if args.no_execute else None, chunk=args.fit_chunk or None)
    res = memory.run_fit(memory.MemoryConfig(**kw, global_batches=(suite["fit"]["global_batch"],)))
    results["fit"] = emit(res, memory.memory_table)

  results["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
  print("\n" + "=" * 100 + "\n" + "\n\n".join(tables), flush=True)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1, default=str)
    log(f"wrote {args.json}")
  return results


if __name__ == "__main__":
  main()
