"""After a complete training run: evaluate the final checkpoint and export it (``train.run`` calls ``finish``).

A stage of its own so ``train.py`` keeps setup, the loop and checkpoints; the work itself is the ``eval`` and
``convert`` CLIs, called as a user would.
"""
from __future__ import annotations

import os

import jax
import ml_collections

from instructor_jax.storage import checkpoints


def finish(config: ml_collections.ConfigDict, workdir: str) -> None:
  """After a *complete* run, on process 0: evaluate (``config.eval.data_dir``) and export (``config.export``).

  Evaluation reads the final orbax checkpoint (``python -m instructor_jax.eval --model WORKDIR --data-dir ...``,
  results in ``WORKDIR/eval``); the export (``python -m instructor_jax.convert to-hf``, a verified
  sentence-transformers folder, ``WORKDIR/export`` by default) carries those results in its model card. Runs that
  stopped early (SIGTERM) skip both; a rerun of the same workdir finishes them.
  """
  if jax.process_index() != 0:
    return
  eval_cfg, export_cfg = config.get("eval", None), config.get("export", None)
  if not ((eval_cfg and eval_cfg.get("data_dir")) or (export_cfg and export_cfg.get("enabled"))):
    return
  workdir = os.path.abspath(workdir)
  latest = checkpoints.latest_step(workdir)
  if latest != int(config.num_train_steps):
    print(f"run stopped at step {latest} of {config.num_train_steps}: skipping evaluation and export", flush=True)
    return
  from instructor_jax.export import convert
  from instructor_jax.evaluation import runner as evaluate
  eval_out = None
  if eval_cfg and eval_cfg.get("data_dir"):
    eval_out = os.path.join(workdir, "eval")
    args = ["--model", workdir, "--data-dir", eval_cfg.data_dir, "--output", eval_out,
            "--max-length", str(config.data.max_doc_length)]
    if eval_cfg.get("no_instructions", False):
      args.append("--no-instructions")
    if evaluate.main(args) != 0:
      raise SystemExit(f"evaluation of {workdir} failed")
  if export_cfg and export_cfg.get("enabled"):
    out = export_cfg.get("out_dir") or os.path.join(workdir, "export")
    args = ["to-hf", "--checkpoint", workdir, "--out", out, "--overwrite"]
    if export_cfg.get("legacy_instructor", False):
      args.append("--legacy-instructor")
    if eval_out:
      args += ["--eval-results", eval_out]
    if convert.main(args) != 0:  # it prints where the export is and how to load it
      raise SystemExit(f"export of {workdir} to {out} failed")
