"""Evaluation during training: every ``config.eval.every_steps`` steps the current parameters are scored on a small
local suite through the same MTEB path as ``python -m instructor_jax.eval`` (``runner.evaluate``), in-process.

Read first: it only *reads* the parameters, between two steps (before the next step donates them), and draws no
random numbers, so the training losses are bitwise those of a run without it. Per evaluation:

- scores go to ``metrics.jsonl`` and tensorboard as ``eval/<task>/<main_score>`` and ``eval/average`` (a row of its
  own at that step, with ``eval_s``), MTEB's result layout to ``WORKDIR/eval/<step>/`` (written whole or not at all);
- ``config.eval.keep_best=METRIC`` keeps the best step's parameters in ``WORKDIR/best`` (a params-only checkpoint
  with checksums, like every checkpoint; its meta records the metric, score and step); ``config.export.from_best``
  exports it instead of the last step.

Multi-host: every process gathers the parameters to host memory (a collective), process 0 alone encodes and scores
(on its first local device) while the others wait in the next step's collectives; for ``keep_best`` process 0's
decision is broadcast so every process takes part in the same save. Resume: an evaluation killed midway left no
``eval/<step>`` folder, so resuming at that step evaluates it first.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from instructor_jax.core import errors
from instructor_jax.storage import checkpoints, files, paths

AVERAGE = "eval/average"


def best_dir(workdir: str) -> str:
  return paths.join(workdir, "best")


def metric_key(task: str, main_score: str) -> str:
  """The metrics name of one task's main score: ``eval/<task>/<main_score>``."""
  return f"eval/{task}/{main_score}"


def suite_tasks(config) -> list[str]:
  """``config.eval.tasks`` as a list (names, types or folders of ``eval.data_dir``'s tasks; [] = all)."""
  return [t.strip() for t in str(config.eval.tasks or "").split(",") if t.strip()]


class PeriodicEval:
  """``due(step)`` / ``__call__(step, params)``; built by the trainer when ``config.eval.every_steps > 0``."""

  def __init__(self, config, workdir: str, spec, writer, meta: dict, log=None):
    from instructor_jax.data.tokenization import Tokenizer
    from instructor_jax.evaluation import runner
    ec = config.eval
    self.every = int(ec.every_steps)
    self.workdir, self.spec, self.writer = workdir, spec, writer
    self.log = log or (lambda m: None)
    self.data_dir = ec.data_dir
    self.tasks = suite_tasks(config)
    self.max_examples = int(ec.max_examples)
    self.split = str(ec.during_split)
    self.no_instructions = bool(ec.no_instructions)
    self.keep_best = str(ec.keep_best or "")
    self.meta = meta  # the run's checkpoint meta, written with keep_best's saves
    self.max_length = max(int(config.data.max_query_length), int(config.data.max_doc_length))
    self.tokenizer = Tokenizer.from_pretrained(spec.tokenizer_dir, max_length=self.max_length)
    # Read (and check) the suite now: a bad task folder or metric fails before the first step, on every process.
    selected = runner.local_tasks(paths.local_copy(self.data_dir) if paths.scheme(self.data_dir) else self.data_dir,
                                  self.split, self.tasks, self.max_examples)
    names = [AVERAGE] + [metric_key(t.metadata.name, t.metadata.main_score) for _, t in selected]
    if self.keep_best and self.keep_best not in names:
      raise errors.ConfigError(f"--config.eval.keep_best={self.keep_best!r}: not a score of the evaluation suite; "
                               f"one of {', '.join(names)}")
    self.best_score = None
    if self.keep_best:
      stored = checkpoints.newest_meta(best_dir(workdir))
      if stored and (stored.get("eval") or {}).get("metric") == self.keep_best:
        self.best_score = float(stored["eval"]["score"])

  def due(self, step: int) -> bool:
    return self.every > 0 and step > 0 and step % self.every == 0

  def done(self, step: int) -> bool:
    """Whether ``WORKDIR/eval/<step>`` is complete (a resume at ``step`` then skips it)."""
    folder = paths.join(self.workdir, "eval", str(step))
    return paths.exists(paths.join(folder, "summary.json")) and files.is_complete(folder)

  def __call__(self, step: int, params) -> dict | None:
    """Evaluates ``params`` (the state's ``{'model': ...}`` tree) at ``step``; returns the logged scores (process 0)
    or None."""
    t0 = time.time()
    model_params = params["model"]
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      model_params = multihost_utils.process_allgather(model_params, tiled=True)  # host numpy, every process
      model_params = jax.device_put(model_params, jax.local_devices()[0])
    scores = None
    if jax.process_index() == 0:
      scores = self._score(step, model_params)
      scores["eval_s"] = time.time() - t0
      self.writer.write(step, scores)
      shown = ", ".join(f"{k[len('eval/'):]} {100 * v:.2f}" for k, v in scores.items() if k.startswith("eval/"))
      self.log(f"eval at step {step} ({scores['eval_s']:.1f} s): {shown}")
    if self.keep_best:
      self._keep_best(step, model_params, scores)
    return scores

  def _score(self, step: int, model_params) -> dict:
    from instructor_jax.evaluation import runner
    from instructor_jax.evaluation.model import InMemory
    from instructor_jax.models.embedder import Instructor
    embedder = Instructor(self.spec.model, model_params, self.tokenizer, source=f"{self.workdir}@{step}")
    name = "local/" + (paths.basename(self.workdir.rstrip("/")) or "train")
    quiet = lambda m: None if "\n" in str(m) or str(m).startswith(("model ", "embedding cache")) else self.log(
        f"eval step {step}: {m}")
    with files.atomic_folder(paths.join(self.workdir, "eval", str(step)), overwrite=True) as tmp:
      result = runner.evaluate(InMemory(embedder, name, f"step-{step}"), data_dir=self.data_dir, output=tmp,
                               split=self.split,
                               tasks=self.tasks, max_length=self.max_length, no_instructions=self.no_instructions,
                               cache_dir="none", max_examples=self.max_examples, say=quiet)
    if result["failed"]:
      raise errors.DataError(f"evaluation at step {step} failed: "
                             + "; ".join(f"{task}: {err}" for task, err in result["failed"]))
    out = {metric_key(r["task"], r["metric"]): float(r["score"]) for r in result["rows"]}
    out[AVERAGE] = float(np.mean([r["score"] for r in result["rows"]]))
    return out

  def _keep_best(self, step: int, model_params, scores: dict | None) -> None:
    """Saves ``WORKDIR/best`` when ``keep_best`` improved: process 0 decides, every process takes part in the save
    (orbax saves collectively; process 0 writes the meta with its score)."""
    score = float(scores[self.keep_best]) if scores is not None else float("nan")  # process 0 decides
    better = np.isfinite(score) and (self.best_score is None or score > self.best_score)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      better = bool(multihost_utils.broadcast_one_to_all(np.int32(better)))
    if not better:
      return
    meta = dict(self.meta, tokenizer_dir=self.spec.tokenizer_dir,
                eval=dict(metric=self.keep_best, score=score, step=int(step)))
    checkpoints.save_params(best_dir(self.workdir), jax.device_get(model_params), meta, step=step, max_to_keep=1)
    self.best_score = score
    self.log(f"eval: new best {self.keep_best} = {100 * score:.2f} at step {step}, saved to "
             f"{best_dir(self.workdir)}/{step}")
