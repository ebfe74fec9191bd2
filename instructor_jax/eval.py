"""``python -m instructor_jax.eval``: evaluate an INSTRUCTOR model with MTEB (``evaluation/runner.py``).

    python -m instructor_jax.eval --model DIR --data-dir data/eval --output results/      # offline task folders
    python -m instructor_jax.eval --model DIR --tasks STSBenchmark,Banking77Classification --output results/
    python -m instructor_jax.eval --list-tasks [--data-dir DIR] [--tasks ...]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from instructor_jax.core import cli, errors
from instructor_jax.evaluation import local, runner
from instructor_jax.evaluation.encoder import InstructorEncoder
from instructor_jax.evaluation.runner import _local_tasks, _offline, list_tasks, run, select_mteb_tasks, write_summary

def _main(args) -> int:
  p = argparse.ArgumentParser(prog="python -m instructor_jax.eval", description=runner.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", help="orbax workdir[/STEP], exported / HF folder, or hub id")
  p.add_argument("--data-dir", help="local task folder, or a folder of task folders (offline)")
  p.add_argument("--tasks", help="comma-separated MTEB task names, task types or benchmarks; with --data-dir: a "
                                 "filter on local task names / types / folder names")
  p.add_argument("--split", default="test", help="local split (test, dev, train); default test")
  p.add_argument("--output", default="eval_results", help="output folder (default eval_results)")
  p.add_argument("--model-name", help="org/name of the model in the results (default: hub id or local/<folder>)")
  p.add_argument("--backend", choices=("jax", "torch"), default="jax")
  p.add_argument("--instructions", help="instruction table JSON or hkunlp/instructor-{base,large,xl} "
                                        "(default: bundled INSTRUCTOR table for the model size)")
  p.add_argument("--no-instructions", action="store_true", help="embed the bare texts (ablation)")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--max-length", type=int, default=512)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype (jax backend)")
  p.add_argument("--cache-dir", help="embedding cache (default OUTPUT/.embedding_cache); 'none' disables it")
  p.add_argument("--list-tasks", action="store_true", help="print the tasks with type and instructions and exit")
  p.add_argument("--debug", action="store_true", help="show the traceback of user errors")
  p.add_argument("--help-formats", action="store_true", help="print the local data layouts and exit")
  args = p.parse_args(args)
  if args.help_formats:
    print(local.__doc__)
    return 0
  if args.model_name and "/" not in args.model_name:
    p.error(f"--model-name {args.model_name!r}: expected org/name")
  specs = [s.strip() for s in (args.tasks or "").split(",") if s.strip()]
  try:
    if args.list_tasks:
      return list_tasks(args)
    if not args.model:
      p.error("--model is required")
    if not args.data_dir and not specs:
      p.error("give --data-dir (offline) or --tasks (MTEB)")
    selected = _local_tasks(args, specs) if args.data_dir else [(None, t) for t in select_mteb_tasks(specs)]
    task_instructions = {lt.name: lt.instructions for lt, _ in selected if lt and lt.instructions}
    cache_dir = None if (args.cache_dir or "").lower() == "none" else (
        args.cache_dir or os.path.join(args.output, ".embedding_cache"))
    encoder = InstructorEncoder.from_pretrained(
        args.model, backend=args.backend, max_length=args.max_length, dtype=args.dtype,
        instructions=args.instructions, no_instructions=args.no_instructions, task_instructions=task_instructions,
        cache_dir=cache_dir, batch_size=args.batch_size, name=args.model_name)
  except ValueError as e:  # bad data, model, instructions: one line
    raise errors.DataError(cli.one_line(e)) from e
  try:
    os.makedirs(args.output, exist_ok=True)
    meta = encoder.mteb_model_meta
    print(f"model {meta.name} revision {meta.revision} ({args.backend}, max_length {args.max_length}); results in "
          f"{os.path.join(args.output, 'results')}")
    rows, failed = run(encoder, selected, args.output, args.batch_size)
    for task, err in failed:
      hint = ("; offline (HF_HUB_OFFLINE): only task data already in the Hugging Face cache loads, evaluate local "
              "copies with --data-dir (--help-formats)") if _offline() and not args.data_dir else ""
      print(f"error: {task}: {err}{hint}", file=sys.stderr)
    if rows:
      info = {"name": meta.name, "revision": meta.revision, "backend": args.backend, "instructions": "none" if
              args.no_instructions else encoder.instructions.table_name, "max_length": args.max_length,
              "dtype": args.dtype}
      print(write_summary(rows, args.output, args.model, info, failed))
    print(f"embedding cache: {encoder.cache.hits} hits, {encoder.cache.misses} misses")
    if failed:
      print(f"error: {len(failed)} of {len(selected)} task(s) failed: {', '.join(t for t, _ in failed)}"
            + ("" if rows else "; no summary written"), file=sys.stderr)
      return 1
    return 0
  finally:
    encoder.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
