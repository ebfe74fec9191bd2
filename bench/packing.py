"""Packed vs padded training on MEDI-shaped data, side by side in one process (BENCHMARKS.md, issue 12).

    python -m bench.packing mix --out MIX.jsonl            # build the MEDI-shaped mix (minutes, needs ../shared)
    python -m bench.packing step --medi MIX.jsonl --size mini --global-batch 32 --steps 24 --json OUT.json
    python -m bench.packing bar --medi FILE --out DIR      # the issue's demo-config check (CLI runs)
    python -m bench.packing layouts --medi MIX.jsonl --steps 2000   # packing efficiency over many steps (no model)

**Data.** The mix is the derived MEDI set (``../shared/data/medi/medi_format_derived.json``, 3,094 records from the
train / dev splits of six evaluation sets) plus the pairs ``python -m instructor_jax.medi build`` mines from *all*
instances of the 24 super-NI tasks in ``../shared/data/super-ni`` (mined with the bundled random tiny model: the
pairs' lengths are what matters here, not their quality), sampled proportionally as MEDI is.

**step.** One trainer per mode built from ``configs/demo.py`` with a random T5 of ``--size`` (``bench.SIZES``),
lengths 512 / 512, one negative, dropout off, the real ``data.TrainStream`` over one shared tokenised index. Each
step is run packed (the trainer's state moves on) and, every ``--padded-every`` steps, padded on a copy of the
same state: the padded step computes the same batch at every length 512, so its time does not depend on the data
and a few samples time it, while its loss checks the packed one. Every step is timed alone with a host sync on the
loss; batches are built and new step variants compiled before the timer starts (compile time is reported
separately). Reported: steps/s, real tokens/s, packing efficiency (real / computed tokens), compile count and time,
the real-tokens/s ratio, and a least-squares fit of packed step time against real tokens.

**bar.** Trains ``configs/demo.py`` with the mini T5 of the issue at 512 / 512, global batch 32, 12 steps, once padded
and once packed, and once packed on 8 fake devices (subprocesses of the real CLI); compares per-step losses and the
median ``step_time_s`` of steps 4-12.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import REPO, SIZES, log, machine, set_threads, stats

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
DERIVED = os.path.join(SHARED, "medi", "medi_format_derived.json")
SUPER_NI = os.path.join(SHARED, "super-ni")
TINY = os.path.join(REPO, "instructor_jax", "assets", "tiny-instructor")
MINI_FLAGS = ("--config.model.t5.d_model=256", "--config.model.t5.d_kv=32", "--config.model.t5.d_ff=1024",
              "--config.model.t5.num_layers=4", "--config.model.t5.num_heads=8", "--config.model.out_features=256",
              "--config.model.t5.dropout_rate=0.0")


def build_mix(out: str) -> str:
  """The MEDI-shaped mix: super-NI pairs mined by ``medi build`` (all instances) merged with the derived set."""
  for path in (DERIVED, SUPER_NI):
    if not os.path.exists(path):
      raise SystemExit(f"{path} is missing: the mix is built from ../shared/data (see its README)")
  subprocess.run([sys.executable, "-m", "instructor_jax.medi", "build", "--super-ni", SUPER_NI, "--embedder", TINY,
                  "--out", out, "--merge", DERIVED, "--max-instances", "0", "--seed", "0"], check=True, cwd=REPO)
  return out


def make_config(size: str, global_batch: int, medi: str, pack: bool, grad_cache_chunk: int = 0,
                length: int = 512, remat: str = "none", dtype: str = "float32"):
  import importlib.util
  spec = importlib.util.spec_from_file_location("bench_demo_config", os.path.join(REPO, "configs", "demo.py"))
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  c = demo.get_config()
  kw = dict(SIZES[size])
  c.model.out_features = kw.pop("out_features")
  c.model.t5 = dict(vocab_size=32128, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    dropout_rate=0.0, layer_norm_epsilon=1e-6, feed_forward_proj="relu", **kw)
  c.model.remat = remat
  c.model.dtype = dtype
  c.global_batch_size = global_batch
  c.grad_cache_chunk = grad_cache_chunk
  c.num_train_steps = 1000
  c.data.medi_path = medi
  c.data.max_query_length = c.data.max_doc_length = length
  c.data.pack = pack
  return c


class Trainer:
  """A trainer of one mode over a shared index (``data.TrainStream`` with or without the packer)."""

  def __init__(self, config, index, sampler):
    import jax
    from instructor_jax.data import stream as data
    from instructor_jax.training import trainer as train
    self.jax = jax
    self.s = train.setup(config)
    self.compiler = train.StepCompiler(self.s.p_step, self.s.abstract, self.s.batch_shardings)
    self.stream = data.TrainStream(index, sampler, config.data.max_query_length, config.data.max_doc_length,
                                   config.data.num_negatives, packer=self.s.packer)
    self.state = train.create_state(self.s.spec, self.s.tx, config, self.s.abstract, self.s.shardings)

  def prepare(self, step):
    """Host batch, device batch and executable of ``step`` (compiles a new variant here, outside any timer)."""
    from instructor_jax.training import sharding
    host = self.stream.get(step)
    exe = self.compiler.get(host)
    batch = sharding.global_batch(self.s.mesh, host)
    self.jax.block_until_ready(batch)
    return host, batch, exe

  def run(self, exe, batch, state):
    t0 = time.perf_counter()
    state, m = exe(state, batch)
    loss = float(m["loss"])
    return state, m, loss, time.perf_counter() - t0


def step_bench(args) -> dict:
  set_threads(args.threads)
  import jax
  from instructor_jax.data import features
  from instructor_jax.data import sampling
  cfg = make_config(args.size, args.global_batch, args.medi, True, args.grad_cache_chunk, args.length, args.remat,
                    args.dtype)
  t0 = time.time()
  feat = features.Featurizer(cfg.model.tokenizer_dir or os.path.join(REPO, "instructor_jax", "assets", "t5-vocab"),
                             args.length, args.length, 1)
  index = features.MediIndex.from_file(args.medi, skip_invalid=True, featurizer=feat)
  sampler = sampling.Sampler(index.sizes, args.global_batch, seed=0, small_tasks="drop", dedup_positives=True,
                             pos_keys=[t.pos_keys for t in index.tasks], task_names=index.task_names)
  log(f"index: {sum(index.sizes)} records, {len(index.task_names)} tasks, {time.time() - t0:.0f} s")
  packed = Trainer(cfg, index, sampler)
  padded = Trainer(make_config(args.size, args.global_batch, args.medi, False, args.grad_cache_chunk, args.length,
                               args.remat, args.dtype), index, sampler) if args.padded_every else None
  log(packed.s.packer.describe())
  rows = []
  for step in range(args.steps):
    host, batch, exe = packed.prepare(step)
    row = dict(step=step, task=index.task_names[sampler.task_of(step)], rows=int(host["tokens"].shape[0]))
    if padded is not None and step % args.padded_every == 0:
      _, pbatch, pexe = padded.prepare(step)
      state_copy = jax.tree.map(lambda x: x.copy(), packed.state)
      _, pm, row["padded_loss"], row["padded_s"] = padded.run(pexe, pbatch, state_copy)
      row["padded_computed_tokens"] = float(pm["computed_tokens"])
      del state_copy
    packed.state, m, row["loss"], row["packed_s"] = packed.run(exe, batch, packed.state)
    row.update(real_tokens=float(m["real_tokens"]), real_tokens_sq=float(m["real_tokens_sq"]),
               computed_tokens=float(m["computed_tokens"]))
    log(f"step {step:3d} {row['task'][:40]:40s} rows {row['rows']:4d} real {row['real_tokens']:7.0f} "
        f"packed {row['packed_s']:7.2f} s" + (f" padded {row['padded_s']:7.2f} s loss rel diff "
                                              f"{abs(row['loss'] - row['padded_loss']) / abs(row['padded_loss']):.1e}"
                                              if "padded_s" in row else ""))
    rows.append(row)
  return summarize(args, rows, packed, padded)


def summarize(args, rows, packed, padded) -> dict:
  import jax
  from instructor_jax.training import step as step_lib
  from instructor_jax.training import trainer as train
  timed = rows[args.warmup:]
  real = np.array([r["real_tokens"] for r in timed])
  comp = np.array([r["computed_tokens"] for r in timed])
  t = np.array([r["packed_s"] for r in timed])
  pad_t = [r["padded_s"] for r in rows if "padded_s" in r] or [float("nan")]
  pad_med = float(np.median(pad_t))
  cfg, out_features = packed.s.spec.model.config, packed.s.spec.model.out_features
  model_flops = sum(step_lib.flops(cfg, out_features, r["real_tokens"], r["real_tokens_sq"], packed.s.packer.num_seqs,
                                   3) for r in timed)
  kind = jax.devices()[0].device_kind
  peak = next((v for k, v in train.PEAK_FLOPS.items() if kind.startswith(k)), 0.0)
  mem = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  fit = np.polyfit(real, t, 1)
  pred = np.polyval(fit, real)
  r2 = 1 - float(np.sum((t - pred) ** 2) / max(np.sum((t - t.mean()) ** 2), 1e-30))
  loss_rel = [abs(r["loss"] - r["padded_loss"]) / abs(r["padded_loss"]) for r in rows if "padded_loss" in r]
  out = dict(
      config=dict(size=args.size, global_batch=args.global_batch, length=args.length, num_negatives=1,
                  grad_cache_chunk=args.grad_cache_chunk, remat=args.remat, steps=args.steps, warmup=args.warmup,
                  padded_every=args.padded_every, medi=os.path.basename(args.medi)),
      packed=dict(steps_per_s=len(t) / t.sum(), real_tokens_per_s=real.sum() / t.sum(),
                  packing_efficiency=real.sum() / comp.sum(), compiles=packed.compiler.count,
                  compile_s=packed.compiler.seconds, ladder=list(packed.s.packer.ladder),
                  rows_seen=sorted({r["rows"] for r in rows}),
                  mfu_real_tokens=model_flops / t.sum() / peak if peak else None, device=kind,
                  device_peak_bytes=mem),
      padded=None if padded is None else dict(
          step_s=stats(pad_t), steps_per_s=1 / pad_med, real_tokens_per_s=real.mean() / pad_med,
          packing_efficiency=real.sum() / (len(real) * rows[0].get("padded_computed_tokens", 1.0)),
          compiles=padded.compiler.count, compile_s=padded.compiler.seconds),
      real_tokens_per_s_ratio=(real.sum() / t.sum()) / (real.mean() / pad_med),
      linear_fit=dict(seconds_per_real_token=float(fit[0]), intercept_s=float(fit[1]), r2=r2),
      max_loss_rel_diff=max(loss_rel) if loss_rel else None, steps=rows, machine=machine())
  log(json.dumps({k: v for k, v in out.items() if k not in ("steps", "machine")}, indent=1))
  return out


# ----------------------------------------------------------------------------------------------------------------
# The issue's bar: the demo config through the CLI
# ----------------------------------------------------------------------------------------------------------------
def _train(workdir, medi, pack, devices=0):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  cmd = [sys.executable, "-m", "instructor_jax.train", "--config", os.path.join(REPO, "configs", "demo.py"),
         "--workdir", workdir, *MINI_FLAGS, "--config.data.max_query_length=512", "--config.data.max_doc_length=512",
         "--config.global_batch_size=32", f"--config.data.medi_path={medi}", "--config.num_train_steps=12",
         f"--config.data.pack={str(pack).lower()}"]
  t0 = time.time()
  p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  if p.returncode:
    raise SystemExit(p.stderr[-4000:])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    m = [json.loads(l) for l in f]
  return dict(seconds=time.time() - t0, losses=[r["loss"] for r in m], step_time_s=[r["step_time_s"] for r in m],
              packing_efficiency=[r["packing_efficiency"] for r in m], compiles=m[-1]["compiles"],
              command=" ".join(cmd[1:]))


def bar(args) -> dict:
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, pack, devices in (("padded", False, 0), ("packed", True, 0), ("packed_8_devices", True, 8)):
      log(f"bar: {name} ...")
      out[name] = _train(os.path.join(tmp, name), args.medi, pack, devices)
  pad, pk = out["padded"], out["packed"]
  out["loss_rel_diff"] = max(abs(a - b) / abs(b) for a, b in zip(pk["losses"], pad["losses"]))
  out["loss_rel_diff_8_devices"] = max(abs(a - b) / abs(b) for a, b in zip(out["packed_8_devices"]["losses"],
                                                                         pk["losses"]))
  out["median_step_time_4_12"] = {k: float(np.median(out[k]["step_time_s"][3:12])) for k in ("padded", "packed")}
  out["speedup_4_12"] = out["median_step_time_4_12"]["padded"] / out["median_step_time_4_12"]["packed"]
  out["machine"] = machine()
  log(json.dumps({k: out[k] for k in ("loss_rel_diff", "loss_rel_diff_8_devices", "median_step_time_4_12",
                                      "speedup_4_12")}, indent=1))
  return out


def layouts(args) -> dict:
  """Packing efficiency of ``--steps`` steps of the real stream, layouts only (no model): what a long run sees."""
  from instructor_jax.data import features
  from instructor_jax.data import packing
  from instructor_jax.data import sampling
  t0 = time.time()
  feat = features.Featurizer(os.path.join(REPO, "instructor_jax", "assets", "t5-vocab"), args.length, args.length, 1)
  index = features.MediIndex.from_file(args.medi, skip_invalid=True, featurizer=feat)
  log(f"index: {sum(index.sizes)} records, {len(index.task_names)} tasks, {time.time() - t0:.0f} s")
  out = dict(medi=os.path.basename(args.medi), length=args.length, steps=args.steps, results=[])
  for B in args.global_batch:
    sampler = sampling.Sampler(index.sizes, B, seed=0, small_tasks="drop", dedup_positives=True,
                               pos_keys=[t.pos_keys for t in index.tasks], task_names=index.task_names)
    packer = packing.Packer(args.length, B * 3, buckets_per_octave=args.buckets_per_octave)
    real = computed = 0
    sizes = set()
    for step in range(args.steps):
      k, rows = sampler.batch(step)
      td = index.tasks[k]
      lengths = np.stack([side.lengths[rows] for side in (td.query, td.pos, td.neg[0])], axis=1).reshape(-1)
      lay = packer.layout(lengths)
      real += lay.real_tokens
      computed += lay.num_rows * args.length
      sizes.add(lay.num_rows)
    res = dict(global_batch=B, packing_efficiency=real / computed, padded_efficiency=real / (args.steps * B * 3 *
               args.length), row_counts_met=len(sizes), ladder_sizes=len(packer.ladder))
    log(json.dumps(res))
    out["results"].append(res)
  return out


def table(paths) -> str:
  """The BENCHMARKS.md rows of ``step`` results: one row per file, packed vs padded side by side."""
  rows = ["| size | global batch | grad cache | packed steps | padded steps | packed real tok/s | padded real tok/s | "
          "ratio | packing efficiency (padded) | compiles (s) | step time vs real tokens (R^2) | max loss rel diff |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for path in paths:
    with open(path) as f:
      d = json.load(f)
    c, pk, pd = d["config"], d["packed"], d["padded"]
    n_pad = len([r for r in d["steps"] if "padded_s" in r])
    rows.append(
        f"| {c['size']} | {c['global_batch']} | {c['grad_cache_chunk'] or 'off'} | {len(d['steps']) - c['warmup']} | "
        f"{n_pad} | {pk['real_tokens_per_s']:.0f} | {pd['real_tokens_per_s']:.0f} | "
        f"**{d['real_tokens_per_s_ratio']:.2f}x** | {100 * pk['packing_efficiency']:.1f}% "
        f"({100 * pd['packing_efficiency']:.1f}%) | {pk['compiles']} ({pk['compile_s']:.0f}) | "
        f"{1e3 * d['linear_fit']['seconds_per_real_token']:.2f} ms/token ({d['linear_fit']['r2']:.2f}) | "
        f"{d['max_loss_rel_diff']:.1e} |")
  return "\n".join(rows)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.packing", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  m = sub.add_parser("mix", help="build the MEDI-shaped mix from ../shared/data")
  m.add_argument("--out", required=True)
  s = sub.add_parser("step", help="packed vs padded steps of one size and batch")
  s.add_argument("--medi", required=True, help="MEDI file (the mix)")
  s.add_argument("--size", default="mini", choices=sorted(SIZES))
  s.add_argument("--global-batch", type=int, default=32)
  s.add_argument("--length", type=int, default=512, help="max query / document length (and pack_length)")
  s.add_argument("--steps", type=int, default=24, help="packed steps (each timed)")
  s.add_argument("--warmup", type=int, default=0, help="first steps left out of the rates")
  s.add_argument("--padded-every", type=int, default=4, help="a padded step on a copy of the state every N steps "
                 "(0: none, e.g. for a fit check)")
  s.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
  s.add_argument("--grad-cache-chunk", type=int, default=0, help="queries per chunk (both modes); 0 = off")
  s.add_argument("--remat", default="none", choices=("none", "full", "dots"))
  s.add_argument("--threads", type=int, default=0)
  s.add_argument("--json", help="write the results here")
  b = sub.add_parser("bar", help="the issue's check: configs/demo.py, mini T5, 512 / 512, batch 32, 12 steps")
  b.add_argument("--medi", default=DERIVED)
  b.add_argument("--json")
  lo = sub.add_parser("layouts", help="packing efficiency of many steps of the stream (layouts only, no model)")
  lo.add_argument("--medi", required=True, help="MEDI file (the mix)")
  lo.add_argument("--global-batch", type=int, nargs="+", default=[32, 128])
  lo.add_argument("--length", type=int, default=512)
  lo.add_argument("--steps", type=int, default=2000)
  lo.add_argument("--buckets-per-octave", type=int, default=8)
  lo.add_argument("--json")
  t = sub.add_parser("table", help="BENCHMARKS.md rows from step results")
  t.add_argument("results", nargs="+")
  args = p.parse_args(argv)
  if args.cmd == "table":
    print(table(args.results))
    return 0
  if args.cmd == "mix":
    print(build_mix(args.out))
    return 0
  out = step_bench(args) if args.cmd == "step" else layouts(args) if args.cmd == "layouts" else bar(args)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json + ".tmp", "w") as f:
      json.dump(out, f, indent=1)
    os.replace(args.json + ".tmp", args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
