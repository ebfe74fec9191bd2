"""After a complete run: evaluate the final checkpoint, then export it (``train.run`` calls ``finish``).

Only a run that reached ``num_train_steps`` finishes; a stopped one (SIGTERM) skips both, and rerunning the same
workdir finishes it.
"""
from __future__ import annotations


import jax
import ml_collections

from instructor_jax.core import errors, log
from instructor_jax.storage import checkpoints, paths


def finish(config: ml_collections.ConfigDict, workdir: str) -> None:
  """On process 0: evaluate (``config.eval.data_dir``; results in ``WORKDIR/eval``) and export (``config.export``:
  a verified sentence-transformers folder, ``WORKDIR/export`` by default, whose model card carries the scores)."""
  if jax.process_index() != 0 or not (config.eval.data_dir or config.export.enabled):
    return
  workdir = paths.check(workdir, "--workdir")
  latest = checkpoints.latest_step(workdir)
  if latest != int(config.num_train_steps):
    log.info(f"run stopped at step {latest} of {config.num_train_steps}: skipping evaluation and export")
    return
  source = workdir
  if config.export.from_best:  # eval.keep_best's step (training/periodic_eval.py)
    from instructor_jax.training import periodic_eval
    source = periodic_eval.best_dir(workdir)
    if checkpoints.latest_step(source) is None:
      raise errors.CheckpointError(f"--config.export.from_best: {source} holds no checkpoint (no evaluation during "
                                   f"training kept one; see config.eval.keep_best)")
  eval_out = evaluate(config, workdir, source) if config.eval.data_dir else None
  if config.export.enabled:
    export(config, source, eval_out, workdir)


def evaluate(config: ml_collections.ConfigDict, workdir: str, source: str | None = None) -> str:
  """Evaluates the final checkpoint (or ``source``) on ``config.eval.data_dir``, every example of ``eval.tasks``;
  returns the results folder, ``WORKDIR/eval``."""
  from instructor_jax.evaluation import runner
  from instructor_jax.training import periodic_eval
  out = paths.join(workdir, "eval")
  result = runner.evaluate(source or workdir, data_dir=config.eval.data_dir, output=out,
                           tasks=periodic_eval.suite_tasks(config),
                           max_length=int(config.data.max_doc_length), no_instructions=config.eval.no_instructions)
  if result["failed"]:
    raise errors.DataError(f"evaluation of {workdir} failed: "
                           + "; ".join(f"{task}: {err}" for task, err in result["failed"]))
  return out


def export(config: ml_collections.ConfigDict, source: str, eval_out: str | None, workdir: str | None = None) -> str:
  """Exports ``source`` (the final checkpoint, or ``WORKDIR/best``; verified) to ``config.export.out_dir`` (default
  ``WORKDIR/export``)."""
  from instructor_jax.export import to_hf
  workdir = workdir or source
  out = to_hf.export_model(config.export.out_dir or paths.join(workdir, "export"), checkpoint=source,
                           legacy=config.export.legacy_instructor, eval_results_path=eval_out, overwrite=True)
  log.info(f"exported {source} to {out}: load it with sentence_transformers.SentenceTransformer({out!r}) or "
           f"instructor_jax.Instructor.from_pretrained({out!r})")
  return out
