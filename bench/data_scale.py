"""MEDI at scale: prepare once, restart fast (issue 14). Results: bench/results/data_scale.md.

    python -m bench.data_scale --records 100000 300000 --out /tmp/data_scale [--file-source-max 100000]
    python -m bench.data_scale --records 300000 --out /tmp/data_scale --gcs     # the same on a local GCS server

For each N:

1. **write** a MEDI-shaped JSON-lines file of N records: task names and instructions from the real sets in
   ``../shared/data/medi`` (``instruction-examples/*.json``: 40 MEDI tasks with their query / document instructions,
   or one set for symmetric tasks;
   the derived set's 6 tasks with theirs), task sizes skewed like MEDI's (Zipf-like), and every text's word count
   drawn from the real texts of ``medi_format_derived.json`` and ``instructor_readme_medi_examples.json`` (words
   from their vocabulary, so tokens per word are real too);
2. **prepare**: ``python -m instructor_jax.data prepare --config configs/demo.py --medi FILE --out DIR`` (wall time,
   peak RSS);
3. **data stage** on its own (a fresh process): ``TrainStream.from_config`` on the prepared folder with the demo's
   packing (index load time, RSS after loading and after 200 packed host batches, batches/s); with
   ``--file-source-max`` the same for the file source (it tokenises everything at every start) up to that N;
4. **restart**: ``python -m instructor_jax.train --config configs/demo.py`` on the prepared folder, fresh
   (``--steps`` steps) and then resumed from its checkpoint (10 more): process start to the first logged step, and
   steps/s over the logged steps after the first five (the demo compiles one executable per packed row count the
   first time it meets it, so early steps include compiles; ``compiles`` is reported).

Prints one JSON object per N and appends it to ``OUT/results.jsonl``; ``--table`` prints the markdown rows.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("INSTRUCTOR_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
DEMO = os.path.join(ROOT, "configs", "demo.py")


# ---------------------------------------------------------------------------------------------------------------
# 1. A MEDI-shaped file


def _templates(shared: str):
  """(tasks: [(name, query instructions, doc instructions)], word counts per side, vocabulary)."""
  sys.path.insert(0, ROOT)
  from instructor_jax.data import medi
  medi_dir = os.path.join(shared, "data", "medi")
  tasks = []
  for path in sorted(glob.glob(os.path.join(medi_dir, "instruction-examples", "*.json"))):
    d = json.load(open(path))
    q = d.get("q_instructions") or d["instructions"]  # symmetric tasks: one set for both sides
    tasks.append((os.path.basename(path)[:-5], list(q), list(d.get("d_instructions") or q)))
  lengths = {"query": [], "doc": []}
  words = set()
  by_task: dict = {}
  for path in ("medi_format_derived.json", "instructor_readme_medi_examples.json"):
    for r in medi.read_medi(os.path.join(medi_dir, path)):
      lengths["query"].append(len(r.query.text.split()))
      lengths["doc"] += [len(p.text.split()) for p in (r.pos, *r.neg)]
      for p in (r.query, r.pos, *r.neg):
        words.update(p.text.split())
      if path.startswith("medi_format") and r.task not in by_task:
        by_task[r.task] = ([r.query.instruction], [r.pos.instruction])
  tasks += [(name, q, d) for name, (q, d) in sorted(by_task.items())]
  return tasks, lengths, sorted(words)


def write_medi(path: str, n: int, shared: str, seed: int = 0, max_words: int = 0) -> dict:
  """N records as JSON lines (``{"query": [instr, text], "pos": [...], "neg": [...], "task_name": ...}``).

  ``max_words`` > 0 caps every text at that many words: with ``max_words`` >= the training length every capped text
  is truncated to the same tokens as the uncapped one (a word is at least one token, and words are tokenised
  independently), so the prepared store is the same in shape while the tokenizer has far less to read (the 1.4M
  run on 2 cores)."""
  tasks, lengths, vocab = _templates(shared)
  rng = random.Random(seed)
  weights = [1.0 / (k + 1) ** 0.8 for k in range(len(tasks))]  # a few large tasks, a long tail (MEDI's shape)
  rng.shuffle(weights)
  cap = max_words if max_words > 0 else 1 << 30
  text = lambda side: " ".join(rng.choices(vocab, k=min(cap, max(1, rng.choice(lengths[side])))))
  t0 = time.time()
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for i in range(n):
      name, qi, di = rng.choices(tasks, weights)[0]
      rec = {"query": [rng.choice(qi), text("query")], "pos": [rng.choice(di), text("doc")],
             "neg": [rng.choice(di), text("doc")], "task_name": name}
      f.write(json.dumps(rec) + "\n")
  os.replace(tmp, path)
  return {"records": n, "tasks": len(tasks), "bytes": os.path.getsize(path), "write_s": round(time.time() - t0, 1),
          "max_words": max_words}


# ---------------------------------------------------------------------------------------------------------------
# 2-4. Measurements (each in a fresh process)


def _run(cmd, env=None) -> tuple[float, float, str]:
  """(wall s, peak RSS MB, stderr tail) of a child process."""
  import tempfile
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    wall = time.time() - t0
    out.seek(0), err.seek(0)
    stdout, stderr = out.read(), err.read()
  if os.waitstatus_to_exitcode(status):
    raise RuntimeError(f"{' '.join(cmd)} failed ({os.waitstatus_to_exitcode(status)}): {stderr[-2000:]}")
  return wall, usage.ru_maxrss / 1024, stdout + stderr[-2000:]


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


def data_stage(source: str, path: str, batches: int = 200) -> dict:
  """In this process: load the demo's stream from ``path`` and serve ``batches`` packed host batches."""
  sys.path.insert(0, ROOT)
  from instructor_jax.data import stream as data
  from instructor_jax.data import packing
  import importlib.util
  spec = importlib.util.spec_from_file_location("demo", DEMO)
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  c = demo.get_config()
  c.data.source, c.data.medi_path, c.data.prepared = source, path, path
  d = c.data  # train.make_packer's packer for one process (no JAX here)
  packer = packing.Packer(int(d.pack_length or max(d.max_query_length, d.max_doc_length)),
                          c.global_batch_size * (2 + d.num_negatives), max_segments=int(d.pack_max_segments),
                          buckets_per_octave=int(d.pack_buckets_per_octave))
  rss0, t0 = _rss_mb(), time.time()
  stream = data.TrainStream.from_config(c.data, os.path.join(ROOT, "instructor_jax", "assets", "t5-vocab"),
                                        c.global_batch_size, c.seed, packer=packer)
  load_s, rss1 = time.time() - t0, _rss_mb()
  t1 = time.time()
  for step in range(batches):
    stream.get(step)
  return {"source": source, "load_s": round(load_s, 2), "rss_before_mb": round(rss0), "rss_loaded_mb": round(rss1),
          "rss_after_batches_mb": round(_rss_mb()), "data_rss_mb": round(_rss_mb() - rss0),
          "batches_per_s": round(batches / (time.time() - t1), 1), "tasks_active": len(stream.sampler.active)}


def restart(prepared: str, workdir: str, steps: int, resume_steps: int = 10) -> dict:
  """Fresh start then resume of the demo on ``prepared``: time to the first logged step and steps/s."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = {}
  for phase, total in (("fresh", steps), ("resume", steps + resume_steps)):
    cmd = [sys.executable, "-m", "instructor_jax.train", "--config", DEMO, "--workdir", workdir,
           f"--config.num_train_steps={total}", f"--config.checkpoint_every_steps={steps}",
           "--config.eval.data_dir=", "--config.export.enabled=False", "--config.data.source=prepared",
           f"--config.data.prepared={prepared}"]
    metrics = os.path.join(workdir, "metrics.jsonl")
    seen = sum(1 for _ in open(metrics)) if os.path.exists(metrics) else 0
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    arrivals = []
    while proc.poll() is None:
      n = sum(1 for _ in open(metrics)) if os.path.exists(metrics) else 0
      arrivals += [time.time() - t0] * (n - seen - len(arrivals))
      time.sleep(0.05)
    err = proc.stderr.read()
    if proc.returncode:
      raise RuntimeError(f"train failed: {err[-2000:]}")
    rows = [json.loads(l) for l in open(metrics)][seen:]
    arrivals += [time.time() - t0] * (len(rows) - len(arrivals))
    later = arrivals[5:]
    out[phase] = {"first_step_s": round(arrivals[0], 1), "total_s": round(time.time() - t0, 1),
                  "steps": len(rows), "steps_per_s_after_5": round((len(later) - 1) / (later[-1] - later[0]), 2)
                  if len(later) > 1 else None, "compiles": rows[-1].get("compiles")}
  return out


def _first_step_s(proc, t0: float) -> tuple[float, str]:
  """Seconds from ``t0`` until the trainer's progress bar first shows a loss (its stderr, read as it comes)."""
  seen, first = "", None
  while True:
    ch = proc.stderr.read(256)
    if not ch:
      break
    seen += ch
    if first is None and "loss=" in seen:
      first = time.time() - t0
  proc.wait()
  return first, seen


def restart_gcs(prepared: str, workdir: str, steps: int, resume_steps: int = 10) -> dict:
  """``restart`` on Cloud Storage: the prepared store and the workdir are gs:// paths. The fresh run starts with
  an empty local cache (it downloads the store), the resumed one finds it. Also the data wait: the share of step
  time the loop waited for its batch (``data_wait_frac``, median over the logged steps after the first five)."""
  import statistics
  import tempfile
  cache = tempfile.mkdtemp(prefix="data_scale_cache_")
  env = dict(os.environ, JAX_PLATFORMS="cpu", INSTRUCTOR_JAX_CACHE=cache)
  out = {}
  sys.path.insert(0, ROOT)
  from instructor_jax.storage import paths
  for phase, total in (("fresh", steps), ("resume", steps + resume_steps)):
    cmd = [sys.executable, "-m", "instructor_jax.train", "--config", DEMO, "--workdir", workdir,
           f"--config.num_train_steps={total}", f"--config.checkpoint_every_steps={steps}",
           "--config.eval.data_dir=", "--config.export.enabled=False", "--config.data.source=prepared",
           f"--config.data.prepared={prepared}"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first, err = _first_step_s(proc, t0)
    if proc.returncode:
      raise RuntimeError(f"train failed: {err[-2000:]}")
    rows = [json.loads(l) for l in paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines() if l]
    rows = [r for r in rows if r["step"] > (0 if phase == "fresh" else steps)]
    fracs = [r["data_wait_frac"] for r in rows[5:] if "data_wait_frac" in r]
    out[phase] = {"first_step_s": round(first, 1) if first else None, "total_s": round(time.time() - t0, 1),
                  "steps": len(rows), "data_wait_frac_median": round(statistics.median(fracs), 4) if fracs else None,
                  "data_wait_frac_max": round(max(fracs), 4) if fracs else None,
                  "step_time_s_median": round(statistics.median(r["step_time_s"] for r in rows[5:]), 3)
                  if len(rows) > 5 else None}
  return out


def measure_gcs(n: int, out: str, shared: str, steps: int, max_words: int = 0) -> dict:
  """The prepare / restart measurement with the store and the workdir on a local GCS server (fake-gcs-server, as
  in the tests): ``prepare --out gs://``, then fresh and resumed demo runs on gs://."""
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import gcs_server
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, f"medi_{n}.jsonl")
  res = {"records": n, "storage": "gcs (fake-gcs-server on 127.0.0.1, memory backend)"}
  if not os.path.exists(path):
    res["file"] = write_medi(path, n, shared, max_words=max_words)
  proc, gcs = gcs_server.start()
  os.environ.update(gcs.env)
  try:
    prep, work = gcs.path(f"prepared_{n}"), gcs.path(f"work_{n}")
    wall, rss, _ = _run([sys.executable, "-m", "instructor_jax.data", "prepare", "--config", DEMO, "--medi", path,
                         "--out", prep, "--overwrite", "--no-progress"], env=dict(os.environ))
    res["prepare"] = {"wall_s": round(wall, 1), "records_per_s": round(n / wall), "peak_rss_mb": round(rss)}
    res["train"] = restart_gcs(prep, work, steps)
  finally:
    gcs_server.stop(proc)
  with open(os.path.join(out, "results_gcs.jsonl"), "a") as f:
    f.write(json.dumps(res) + "\n")
  return res


def measure(n: int, out: str, shared: str, steps: int, file_source_max: int, restart_only: bool = False,
            max_words: int = 0) -> dict:
  os.makedirs(out, exist_ok=True)
  path, prep, work = (os.path.join(out, f"medi_{n}.jsonl"), os.path.join(out, f"prepared_{n}"),
                      os.path.join(out, f"work_{n}"))
  if restart_only:  # again on an existing prepared folder: the restart measurement alone
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    res = {"records": n, "train": restart(prep, work, steps)}
    with open(os.path.join(out, "restarts.jsonl"), "a") as f:
      f.write(json.dumps(res) + "\n")
    return res
  res = {"records": n, "file": write_medi(path, n, shared, max_words=max_words)}
  wall, rss, log = _run([sys.executable, "-m", "instructor_jax.data", "prepare", "--config", DEMO, "--medi", path,
                         "--out", prep, "--overwrite", "--no-progress"])
  manifest = json.load(open(os.path.join(prep, "manifest.json")))
  size = sum(os.path.getsize(os.path.join(prep, f)) for f in os.listdir(prep))
  res["prepare"] = {"wall_s": round(wall, 1), "records_per_s": round(n / wall), "peak_rss_mb": round(rss),
                    "folder_mb": round(size / 2**20, 1), "index_mb": round(os.path.getsize(os.path.join(
                        prep, "index.npz")) / 2**20, 1), "shards": len(manifest["shards"]),
                    "tokens": manifest["tokens"]}
  sources = [("prepared", prep)] + ([("file", path)] if n <= file_source_max else [])
  for source, p in sources:
    _, rss, log = _run([sys.executable, "-m", "bench.data_scale", "_data", source, p])
    res[f"data_{source}"] = dict(json.loads(log.splitlines()[0]), peak_rss_mb=round(rss))
  import shutil
  shutil.rmtree(work, ignore_errors=True)
  res["train"] = restart(prep, work, steps)
  with open(os.path.join(out, "results.jsonl"), "a") as f:
    f.write(json.dumps(res) + "\n")
  return res


def table(path: str) -> str:
  rows = [json.loads(l) for l in open(path)]
  head = ("| records | MEDI file | prepare (s, rec/s, peak RSS) | prepared folder | index load | data RSS | batches/s "
          "| fresh: first step | resume: first step | steps/s | file source load (s, RSS) |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    p, d, t = r["prepare"], r["data_prepared"], r["train"]
    f = r.get("data_file")
    lines.append(f"| {r['records']:,} | {r['file']['bytes'] / 2**20:.0f} MB | {p['wall_s']}, {p['records_per_s']:,},"
                 f" {p['peak_rss_mb']} MB | {p['folder_mb']} MB ({p['shards']} shard(s)) | {d['load_s']} s | "
                 f"{d['data_rss_mb']} MB | {d['batches_per_s']} | {t['fresh']['first_step_s']} s | "
                 f"{t['resume']['first_step_s']} s | {t['fresh']['steps_per_s_after_5']} | "
                 + (f"{f['load_s']} s, {f['data_rss_mb']} MB |" if f else "not run |"))
  return "\n".join(lines)


def main(argv=None) -> int:
  if argv is None and sys.argv[1:2] == ["_data"]:
    print(json.dumps(data_stage(sys.argv[2], sys.argv[3])))
    return 0
  p = argparse.ArgumentParser(prog="python -m bench.data_scale", description=__doc__.split("\n")[0])
  p.add_argument("--records", type=int, nargs="+", default=[100_000, 300_000])
  p.add_argument("--out", default="/tmp/data_scale")
  p.add_argument("--shared", default=SHARED, help="the shared data folder (holds data/medi)")
  p.add_argument("--steps", type=int, default=30, help="training steps of the fresh run")
  p.add_argument("--file-source-max", type=int, default=100_000, help="also time the file source up to this N")
  p.add_argument("--max-words", type=int, default=0, help="cap texts at this many words (>= the demo's 64 tokens "
                 "keeps the prepared store's shape; see write_medi)")
  p.add_argument("--table", action="store_true", help="print OUT/results.jsonl as markdown rows and exit")
  p.add_argument("--restart-only", action="store_true", help="only the restart runs, on OUT's prepared folders "
                 "(appended to OUT/restarts.jsonl)")
  p.add_argument("--gcs", action="store_true", help="store and workdir on a local GCS server (fake-gcs-server): "
                 "prepare --out gs://, fresh and resumed runs on gs://, data wait (OUT/results_gcs.jsonl)")
  args = p.parse_args(argv)
  if args.gcs:
    for n in args.records:
      print(json.dumps(measure_gcs(n, args.out, args.shared, args.steps, args.max_words)), flush=True)
    return 0
  if args.table:
    print(table(os.path.join(args.out, "results.jsonl")))
    return 0
  for n in args.records:
    print(json.dumps(measure(n, args.out, args.shared, args.steps, args.file_source_max, args.restart_only,
                             args.max_words)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
