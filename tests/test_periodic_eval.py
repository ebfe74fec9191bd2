"""Evaluation during training (``config.eval.every_steps``, ``training/periodic_eval.py``) and ``max_examples``.

Fast: ``local.subsample`` per task type, ``runner.evaluate(max_examples=)`` on the bundled tiny model, the config
checks. Slow (trainer subprocesses on configs/demo.py, cut to 8 steps): losses bitwise equal with and without
evaluation, eval rows and MTEB result folders per step, keep_best + export.from_best, a kill -9 inside an evaluation
then resume, and two processes.
"""
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from instructor_jax.core import errors
from instructor_jax.evaluation import local, runner
from instructor_jax.storage import checkpoints
from instructor_jax.training import run_config

from helpers import DEMO_CONFIG, EVAL_FIXTURES, ROOT, TINY, cli_env, last_line, metrics, run_train, train_cmd

STS = os.path.join(EVAL_FIXTURES, "stsbenchmark")


# -- max_examples ---------------------------------------------------------------------------------------------------

def test_subsample_keeps_a_fixed_subset_of_each_task_type():
  sts = {"sentence1": [f"a{i}" for i in range(50)], "sentence2": [f"b{i}" for i in range(50)],
         "score": [i / 10 for i in range(50)]}
  got = local.subsample("STS", sts, 10)
  assert len(got["score"]) == 10 and got == local.subsample("STS", sts, 10)  # deterministic
  assert all(got["sentence1"][i] == f"a{int(round(got['score'][i] * 10))}" for i in range(10))  # rows stay aligned
  assert got != local.subsample("STS", sts, 10, seed=1)
  assert local.subsample("STS", sts, 500) == sts

  cls = {"train": {"text": [f"t{i}" for i in range(40)], "label": [i % 4 for i in range(40)]},
         "test": {"text": [f"s{i}" for i in range(30)], "label": [i % 3 for i in range(30)]}}
  got = local.subsample("Classification", cls, 12)
  assert set(got) == {"train", "test"} and len(got["train"]["text"]) == len(got["test"]["label"]) == 12

  corpus = {f"d{i}": {"title": "", "text": f"doc {i}"} for i in range(100)}
  qrels = {f"q{i}": {f"d{i}": 1, f"d{i + 50}": 1} for i in range(30)}
  qrels["q_none"] = {"d1": 0}
  ret = {"corpus": corpus, "queries": {**{f"q{i}": f"query {i}" for i in range(30)}, "q_none": "x"},
         "qrels": qrels}
  got = local.subsample("Retrieval", ret, 8)
  assert len(got["queries"]) == 8 and "q_none" not in got["queries"] and set(got["qrels"]) == set(got["queries"])
  relevant = {d for q in got["queries"] for d in qrels[q]}
  assert relevant <= set(got["corpus"]) and len(got["corpus"]) == 16  # every relevant doc kept, none added beyond
  assert len(local.subsample("Retrieval", ret, 20)["corpus"]) == 40

  rerank = {"samples": [{"query": f"q{i}", "positive": ["p"], "negative": ["n"]} for i in range(9)]}
  assert len(local.subsample("Reranking", rerank, 4)["samples"]) == 4
  with pytest.raises(ValueError, match="max_examples"):
    local.subsample("STS", sts, 0)


def test_evaluate_max_examples_scores_a_subset_and_says_so(tmp_path):
  out = runner.evaluate(TINY, data_dir=STS, output=str(tmp_path / "e"), max_examples=10, cache_dir="none",
                        say=lambda m: None)
  assert not out["failed"] and len(out["rows"]) == 1
  with open(os.path.join(out["output"], out["rows"][0]["result"])) as f:
    result = json.load(f)
  assert result["dataset_revision"].endswith("-max10")
  (_, task), = runner.local_tasks(STS, max_examples=10)  # what was scored: 10 of the fixture's 40 pairs
  assert len(task.dataset["test"]) == 10
  with pytest.raises(errors.ConfigError, match="max-examples"):
    runner.evaluate(TINY, data_dir=STS, output=str(tmp_path / "f"), max_examples=-1)


def _config(**eval_keys):
  import importlib.util
  spec = importlib.util.spec_from_file_location("demo_cfg", DEMO_CONFIG)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  for k, v in eval_keys.items():
    section, key = k.split("__")
    c[section][key] = v
  return c


@pytest.mark.parametrize("keys,message", [
    (dict(eval__every_steps=4, eval__data_dir=""), "eval.every_steps=4: needs --config.eval.data_dir"),
    (dict(eval__every_steps=-1), "eval.every_steps"),
    (dict(eval__max_examples=-5), "eval.max_examples"),
    (dict(eval__keep_best="eval/average"), "keep_best='eval/average': needs --config.eval.every_steps"),
    (dict(export__from_best=True), "export.from_best: needs --config.eval.keep_best"),
    (dict(eval__data_dir="/nonexistent/eval"), "eval.data_dir: no such folder"),
])
def test_eval_config_errors_are_one_line(keys, message):
  with pytest.raises(run_config.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    run_config.validate(_config(**keys))


# -- during training (subprocesses) -----------------------------------------------------------------------------------

SMALL_RUN = ("--config.global_batch_size=8", "--config.data.max_query_length=32", "--config.data.max_doc_length=32",
             "--config.checkpoint_every_steps=4", "--config.export.enabled=False")


def _run(wd, *overrides, steps=8, **kw):
  return run_train(wd, *SMALL_RUN, f"--config.num_train_steps={steps}", *overrides, config=DEMO_CONFIG, **kw)


def _losses(wd):
  return [(r["step"], r["loss"]) for r in metrics(wd) if "loss" in r]


def _evals(wd):
  return [r for r in metrics(wd) if "eval/average" in r]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
  wd = tmp_path_factory.mktemp("plain")
  _run(wd)
  return wd


@pytest.mark.slow
def test_eval_during_training_leaves_losses_bitwise_equal(plain, tmp_path):
  wd = tmp_path / "evaluated"
  _run(wd, "--config.eval.every_steps=4", "--config.eval.max_examples=20", "--config.eval.keep_best=eval/average",
       "--config.export.from_best=True", "--config.export.enabled=True")
  assert _losses(wd) == _losses(plain)
  evals = _evals(wd)
  assert [r["step"] for r in evals] == [4, 8]
  for r in evals:
    assert set(r) == {"step", "eval/STSBenchmark/cosine_spearman", "eval/average", "eval_s"}
    assert r["eval/average"] == r["eval/STSBenchmark/cosine_spearman"] and -1 <= r["eval/average"] <= 1
  for step in (4, 8):  # MTEB's layout, one folder per evaluation
    folder = wd / "eval" / str(step)
    with open(folder / "summary.json") as f:
      summary = json.load(f)
    assert summary["tasks"][0]["task"] == "STSBenchmark" and summary["revision"] == f"step-{step}"
    assert (folder / summary["tasks"][0]["result"]).exists()
  best = max(evals, key=lambda r: (r["eval/average"], -r["step"]))  # the first of equal best scores
  params, meta = checkpoints.restore_params(str(wd / "best"))  # verified against its checksums
  assert meta["step"] == best["step"] and meta["eval"]["score"] == best["eval/average"]
  assert sorted(d for d in os.listdir(wd / "best") if d.isdigit()) == [str(best["step"])]  # only the best kept
  with open(wd / "export" / "README.md") as f:  # export.from_best: the export is the best step
    assert f"best (step {best['step']})" in f.read()


@pytest.mark.slow
def test_unknown_keep_best_metric_fails_before_training(tmp_path):
  proc = _run(tmp_path / "w", "--config.eval.every_steps=4", "--config.eval.keep_best=eval/nope", check=False)
  assert proc.returncode == 2
  assert "keep_best='eval/nope': not a score of the evaluation suite; one of eval/average, " \
         "eval/STSBenchmark/cosine_spearman" in last_line(proc.stderr)
  assert not [r for r in metrics(tmp_path / "w") if "loss" in r]


KILL_IN_EVAL = """
import os, signal, sys
from instructor_jax.evaluation import runner
run = runner.run
def killing_run(encoder, *a, **k):
  out = run(encoder, *a, **k)  # scored, not yet moved into WORKDIR/eval/4 nor logged
  if encoder.mteb_model_meta.revision == "step-4":
    os.kill(os.getpid(), signal.SIGKILL)
  return out
runner.run = killing_run
sys.argv = ["instructor_jax.train"] + sys.argv[1:]
import runpy
runpy.run_module("instructor_jax.train", run_name="__main__")
"""


@pytest.mark.slow
def test_kill9_inside_an_evaluation_resumes_exactly(plain, tmp_path):
  wd = tmp_path / "killed"
  args = ["--config", DEMO_CONFIG, "--workdir", str(wd), *SMALL_RUN, "--config.num_train_steps=8",
          "--config.eval.every_steps=4", "--config.eval.max_examples=20"]
  proc = subprocess.run([sys.executable, "-c", KILL_IN_EVAL, *args], cwd=ROOT, env=cli_env(), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert not (wd / "eval" / "4").exists() and not _evals(wd)
  _run(wd, "--config.eval.every_steps=4", "--config.eval.max_examples=20")
  assert _losses(wd) == _losses(plain)
  assert [r["step"] for r in _evals(wd)] == [4, 8]
  assert not [n for n in os.listdir(wd / "eval") if ".tmp-" in n]  # the killed temporary folder is gone


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_evaluate_on_process_zero_and_keep_the_best(plain, tmp_path):
  wd, port = tmp_path / "multi", _free_port()
  over = [*SMALL_RUN, "--config.num_train_steps=8", "--config.eval.every_steps=4", "--config.eval.max_examples=20",
          "--config.eval.keep_best=eval/average"]
  procs = [subprocess.Popen(
      train_cmd(wd, *over, flags=("--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
                                  "--process_id", str(i)), config=DEMO_CONFIG),
      cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  np.testing.assert_allclose([l for _, l in _losses(wd)], [l for _, l in _losses(plain)], rtol=1e-5)
  evals = _evals(wd)
  assert [r["step"] for r in evals] == [4, 8]
  _, meta = checkpoints.restore_params(str(wd / "best"))
  assert meta["eval"]["score"] == max(r["eval/average"] for r in evals)


@pytest.mark.slow
def test_gcs_workdir_evaluates_and_keeps_the_best(gcs_dir):
  from instructor_jax.storage import files, paths
  wd = gcs_dir + "/evaluated"
  _run(wd, "--config.eval.every_steps=4", "--config.eval.max_examples=20", "--config.eval.keep_best=eval/average",
       "--config.export.from_best=True", "--config.export.enabled=True")
  rows = [json.loads(l) for l in paths.read_text(paths.join(wd, "metrics.jsonl")).splitlines() if l.strip()]
  evals = [r for r in rows if "eval/average" in r]
  assert [r["step"] for r in evals] == [4, 8]
  for step in (4, 8):  # uploaded whole: the commit marker is written last
    folder = paths.join(wd, "eval", str(step))
    assert files.is_complete(folder) and paths.exists(paths.join(folder, "summary.json"))
  _, meta = checkpoints.restore_params(wd + "/best")
  assert meta["eval"]["score"] == max(r["eval/average"] for r in evals)
  assert files.is_complete(paths.join(wd, "export"))
  assert not os.path.exists(os.path.join(ROOT, "gs:"))  # never a local folder named after the URL
