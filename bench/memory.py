"""Memory vs global batch (with and without gradient caching), scaling of the step, and the large-batch fit check.

Memory: the train step (``train.setup(...).p_step``) is AOT-compiled for abstract state and batch shapes (no data,
no weights, as ``python -m instructor_jax.train --compile_only`` does) and XLA's buffer assignment gives the
figures: ``temp`` (activations and workspace), ``argument`` / ``output`` (state and batch; the state is donated,
so ``alias`` bytes are counted once) and ``peak = argument + output - alias + temp``, the bytes the step needs on
the device. This is exact for what XLA allocates and needs no memory to run, so a 1024 batch is measured on a
laptop. On GPU each configuration can also be executed in a fresh process and ``peak_bytes_in_use`` read from the
allocator (``--execute``).

Scaling: (a) step time vs global batch on one device (compute is linear in the batch, so time per example
should be flat); (b) the data-parallel step over N fake CPU devices (``--xla_force_host_platform_device_count``,
one process per N) at a fixed global batch: collectives found in the compiled HLO (count and bytes) against the
expected cost (one all-reduce of the gradients = parameter bytes, plus all-gathers of the embeddings, ``B x D``
floats per tower, for the global-batch loss), and step time relative to one device (all fake devices share the
same CPU cores, so the total compute is the same and any extra time is sharding overhead).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

from bench import REPO, CompileTimer, log, stats


@dataclasses.dataclass
class MemoryConfig:
  size: str = "small"
  global_batches: tuple = (8, 32, 128, 512, 1024)
  chunk: int = 8               # gradient-caching chunk (queries per chunk); 0 = only without caching
  query_length: int = 64
  doc_length: int = 64
  num_negatives: int = 1
  dtype: str = "float32"
  remat: str = "none"
  execute: bool = False        # also run the step in a fresh process and read the allocator's peak (GPU)
  uncached: bool = True        # also measure without gradient caching


@dataclasses.dataclass
class ScalingConfig:
  size: str = "mini"
  global_batches: tuple = (8, 16, 32, 64)
  query_length: int = 32
  doc_length: int = 32
  num_negatives: int = 1
  reps: int = 3
  fake_devices: tuple = (1, 2, 4, 8)
  fake_global_batch: int = 16
  fake_grad_cache_chunk: int = 4   # also measure the gradient-caching step on fake devices (0 = skip)
  dtype: str = "float32"


def _config(size, gb, lq, ld, nneg, dtype="float32", remat="none", chunk=0, mesh_shape=(-1, 1, 1)):
  from bench.train_step import make_config
  return make_config(size, gb, lq, ld, nneg, dtype, remat, chunk, mesh_shape)


def compile_step(config) -> dict:
  """AOT-compiles the train step for ``config`` (abstract inputs) and returns XLA's memory figures."""
  import jax
  import jax.numpy as jnp
  from instructor_jax.training import trainer as train
  s = train.setup(config, load_weights=False)
  shapes = train.batch_shapes(config)
  batch = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=s.batch_shardings[k]) for k, v in shapes.items()}
  with CompileTimer() as ct:
    compiled = s.p_step.lower(s.abstract, batch).compile()
  mem = compiled.memory_analysis()
  out = dict(compile_s=ct.seconds, state_bytes=train.bytes_per_device(s.abstract), flops_per_step=s.flops)
  if mem is not None:
    for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes"):
      out[k.replace("_size_in_bytes", "_bytes")] = int(getattr(mem, k, 0) or 0)
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
  return out, compiled, s


def collectives(hlo_text: str) -> dict:
  """Counts and result bytes of the collectives in compiled HLO text (async ``-start`` ops counted once).

  Collectives inside while-loop bodies are reported under ``"<op> (in loop body, per iteration)"``: they run once
  per iteration (gradient caching's scan runs ``global_batch / chunk`` iterations).
  """
  sizes = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "pred": 1, "s8": 1,
           "u8": 1}
  out = {}
  pat = re.compile(r"=\s*(.*?)\s(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(-start)?\(")
  bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo_text))
  comp = None
  for line in hlo_text.splitlines():
    head = re.match(r"\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*->.*\{\s*$", line)
    if head:
      comp = head.group(1)
    m = pat.search(line)
    if not m:
      continue
    shape_str, op = m.group(1), m.group(2)
    nbytes = 0
    for dt, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape_str):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      nbytes += n * sizes.get(dt, 4)
    if m.group(3):  # async start: (operands..., results...) tuple, count the results half
      nbytes //= 2
    # Collectives inside a while body (e.g. the gradient-caching scan) run once per iteration: kept apart.
    d = out.setdefault(op + (" (in loop body, per iteration)" if comp in bodies else ""), dict(count=0, bytes=0))
    d["count"] += 1
    d["bytes"] += nbytes
  return out


def _worker(spec: dict) -> dict:
  """One measurement in this (fresh) process: ``spec['kind']`` is ``memory`` or ``scaling``."""
  import jax
  config = _config(**spec["config"])
  out, compiled, s = compile_step(config)
  out["devices"] = jax.device_count()
  if spec["kind"] == "scaling":
    from instructor_jax.data import stream as data
    from instructor_jax.training import sharding
    from instructor_jax.training import trainer as train
    out["collectives"] = collectives(compiled.as_text())
    out["param_bytes"] = train.bytes_per_device(s.abstract["params"]) * 1  # replicated under pure DP
    state = train.create_state(s.spec, s.tx, config, s.abstract, s.shardings)
    stream = data.SyntheticStream(config.data, s.spec.model.config.vocab_size, config.global_batch_size, 0)
    batch = sharding.global_batch(s.mesh, stream.get(0))
    state, m = s.p_step(state, batch)
    float(m["loss"])
    times = []
    for _ in range(spec.get("reps", 3)):
      t0 = time.perf_counter()
      state, m = s.p_step(state, batch)
      float(m["loss"])
      times.append(time.perf_counter() - t0)
    out["step_s"] = stats(times)
  if spec.get("execute"):
    from instructor_jax.data import stream as data
    from instructor_jax.training import sharding
    from instructor_jax.training import trainer as train
    state = train.create_state(s.spec, s.tx, config, s.abstract, s.shardings)
    stream = data.SyntheticStream(config.data, s.spec.model.config.vocab_size, config.global_batch_size, 0)
    state, m = s.p_step(state, sharding.global_batch(s.mesh, stream.get(0)))
    float(m["loss"])
    ms = jax.devices()[0].memory_stats() or {}
    out["runtime_peak_bytes"] = ms.get("peak_bytes_in_use")
  return out


def _spawn(spec: dict, devices: int = 0) -> dict:
  env = dict(os.environ)
  if devices:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  p = subprocess.run([sys.executable, "-m", "bench.memory", json.dumps(spec)], cwd=REPO, env=env,
                     capture_output=True, text=True)
  for line in p.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"bench.memory worker failed (rc {p.returncode}):\n{p.stderr[-3000:]}")


def run_memory(cfg: MemoryConfig) -> dict:
  rows = []
  for gb in cfg.global_batches:
    for chunk in ((0,) if cfg.uncached else ()) + ((cfg.chunk,) if cfg.chunk else ()):
      if chunk and (gb % chunk or chunk >= gb):
        continue
      kw = dict(size=cfg.size, gb=gb, lq=cfg.query_length, ld=cfg.doc_length, nneg=cfg.num_negatives,
                dtype=cfg.dtype, remat=cfg.remat, chunk=chunk)
      if cfg.execute:
        try:
          r = _spawn(dict(kind="memory", config=kw, execute=True))
        except RuntimeError as e:  # e.g. out of device memory: compile-only figures, and say why
          r, _, _ = compile_step(_config(**kw))
          r["execute_error"] = str(e).strip().splitlines()[-1][:300]
          log(f"[memory] B={gb} chunk={chunk}: executing failed: {r['execute_error']}")
      else:
        r, _, _ = compile_step(_config(**kw))
      r.update(global_batch=gb, grad_cache_chunk=chunk)
      rows.append(r)
      log(f"[memory] B={gb} chunk={chunk}: peak {r.get('peak_bytes', 0) / 2**20:.1f} MiB "
          f"(temp {r.get('temp_bytes', 0) / 2**20:.1f} MiB, state {r['state_bytes'] / 2**20:.1f} MiB), "
          f"compile {r['compile_s']:.1f}s")
  return dict(size=cfg.size, query_length=cfg.query_length, doc_length=cfg.doc_length,
              num_negatives=cfg.num_negatives, dtype=cfg.dtype, remat=cfg.remat, rows=rows)


def run_fit(cfg: MemoryConfig) -> dict:
  """The T5-large / 4096-query check: same as ``run_memory`` (compile-only memory, plus a real step with
  ``execute``), with caching only."""
  return run_memory(dataclasses.replace(cfg, uncached=False))


def memory_table(res: dict) -> str:
  lines = [f"memory per device: {res['size']} Lq={res['query_length']} Ld={res['doc_length']} "
           f"N={res['num_negatives']} {res['dtype']} remat={res['remat']} (XLA buffer assignment, MiB)",
           f"  {'global batch':>12} {'chunk':>6} {'peak':>10} {'temp':>10} {'state':>9}" +
           ("  runtime peak" if any("runtime_peak_bytes" in r for r in res["rows"]) else "")]
  for r in res["rows"]:
    line = (f"  {r['global_batch']:>12} {r['grad_cache_chunk'] or '-':>6} {r.get('peak_bytes', 0) / 2**20:>10.1f} "
            f"{r.get('temp_bytes', 0) / 2**20:>10.1f} {r['state_bytes'] / 2**20:>9.1f}")
    if r.get("runtime_peak_bytes"):
      line += f"  {r['runtime_peak_bytes'] / 2**20:>12.1f}"
    if r.get("execute_error"):
      line += f"  (execute failed: {r['execute_error'][:80]})"
    lines.append(line)
  return "\n".join(lines)


def run_scaling(cfg: ScalingConfig, threads: int = 0) -> dict:
  from bench.train_step import JaxTrainer
  rows = []
  for gb in cfg.global_batches:
    try:
      jx = JaxTrainer(_config(cfg.size, gb, cfg.query_length, cfg.doc_length, cfg.num_negatives, cfg.dtype))
      b = jx.device_batch(jx.batch(0))
      compile_s, _ = jx.compile(b)
    except Exception as e:  # out of device memory at the larger batches: say so and stop growing the batch
      log(f"[scaling] B={gb}: failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
      rows.append(dict(global_batch=gb, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
      break
    times = []
    for _ in range(cfg.reps):
      t0 = time.perf_counter()
      jx.step(b)
      times.append(time.perf_counter() - t0)
    rows.append(dict(global_batch=gb, step_s=stats(times), per_example_ms=stats([1e3 * t / gb for t in times]),
                     compile_s=compile_s))
    log(f"[scaling] B={gb}: {rows[-1]['step_s']['median']:.3f}s/step "
        f"({rows[-1]['per_example_ms']['median']:.2f} ms/example)")
    del jx
  fake = []
  for chunk in (0, cfg.fake_grad_cache_chunk) if cfg.fake_grad_cache_chunk else (0,):
    for n in cfg.fake_devices:
      if chunk and chunk % n:
        continue
      spec = dict(kind="scaling", reps=cfg.reps,
                  config=dict(size=cfg.size, gb=cfg.fake_global_batch, lq=cfg.query_length, ld=cfg.doc_length,
                              nneg=cfg.num_negatives, dtype=cfg.dtype, mesh_shape=(-1, 1, 1), chunk=chunk))
      r = _spawn(spec, devices=n)
      r.update(fake_devices=n, grad_cache_chunk=chunk)
      fake.append(r)
      log(f"[scaling] {n} fake devices, B={cfg.fake_global_batch}, chunk {chunk}: {r['step_s']['median']:.3f}s/step,"
          f" collectives {r['collectives']}")
  d = _embed_dim(cfg.size)
  for r in fake:
    base = next(x for x in fake if x["grad_cache_chunk"] == r["grad_cache_chunk"])["step_s"]["median"]
    r["time_vs_first"] = r["step_s"]["median"] / base
    # Expected data-parallel traffic per step: the gradients all-reduced once (param bytes) + the q, p, n
    # embeddings all-gathered for the global-batch loss (B x D floats per tower).
    r["expected_collective_bytes"] = (r["param_bytes"] + 4 * d * cfg.fake_global_batch * (2 + cfg.num_negatives)
                                      if r["devices"] > 1 else 0)
    k = cfg.fake_global_batch // r["grad_cache_chunk"] if r["grad_cache_chunk"] else 1
    r["collective_bytes"] = sum(v["bytes"] * (k if "loop body" in op else 1) for op, v in r["collectives"].items())
  return dict(size=cfg.size, query_length=cfg.query_length, doc_length=cfg.doc_length,
              num_negatives=cfg.num_negatives, rows=rows, fake=fake, fake_global_batch=cfg.fake_global_batch)


def _embed_dim(size):
  from bench import SIZES
  return SIZES[size]["out_features"]


def scaling_table(res: dict) -> str:
  lines = [f"scaling: {res['size']} Lq={res['query_length']} Ld={res['doc_length']} N={res['num_negatives']}",
           f"  {'global batch':>12} {'s/step (median [min, max])':>30} {'ms/example':>11}"]
  for r in res["rows"]:
    if "error" in r:
      lines.append(f"  {r['global_batch']:>12} {r['error'][:90]}")
      continue
    s = r["step_s"]
    lines.append(f"  {r['global_batch']:>12} {s['median']:>10.3f} [{s['min']:.3f}, {s['max']:.3f}]"
                 f"{'':>8}{r['per_example_ms']['median']:>11.2f}")
  if res["fake"]:
    lines.append(f"  fake CPU devices, data parallel, global batch {res['fake_global_batch']} (collective MiB per step; "
                 f"loop-body collectives x iterations):")
    lines.append(f"  {'devices':>8} {'chunk':>6} {'s/step':>8} {'vs 1':>6} {'collective MiB':>15} {'expected MiB':>13}  ops")
    for r in res["fake"]:
      ops = ", ".join(f"{k} x{v['count']}" for k, v in r["collectives"].items()) or "none"
      lines.append(f"  {r['fake_devices']:>8} {r['grad_cache_chunk'] or '-':>6} {r['step_s']['median']:>8.3f} "
                   f"{r['time_vs_first']:>6.2f} "
                   f"{r['collective_bytes'] / 2**20:>15.2f} {r['expected_collective_bytes'] / 2**20:>13.2f}  {ops}")
  return "\n".join(lines)


if __name__ == "__main__":
  import bench
  bench.set_threads(0)  # inherits the parent's affinity mask
  result = _worker(json.loads(sys.argv[1]))
  print("RESULT " + json.dumps(result, default=str), flush=True)
