"""``python -m instructor_jax.eval``: evaluate an INSTRUCTOR model with MTEB (``evaluation/runner.py``).

    python -m instructor_jax.eval --model DIR --data-dir data/eval --output results/      # offline task folders
    python -m instructor_jax.eval --model DIR --tasks STSBenchmark,Banking77Classification --output results/
    python -m instructor_jax.eval --list-tasks [--data-dir DIR] [--tasks ...]
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from instructor_jax.core import cli, errors
from instructor_jax.evaluation import local, runner
from instructor_jax.evaluation.runner import list_tasks

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
  p.add_argument("--truncate-dim", action="append", default=[], metavar="K[,K...]",
                 help="Matryoshka: evaluate the first K dimensions, re-normalised; repeat or give a comma list for "
                      "one result set per K (model name org/name-dK)")
  p.add_argument("--max-examples", type=int, default=0, metavar="N",
                 help="with --data-dir: at most N examples per task, a fixed random subset (0 = all; quick checks)")
  p.add_argument("--list-tasks", action="store_true", help="print the tasks with type and instructions and exit")
  p.add_argument("--debug", action="store_true", help="show the traceback of user errors")
  p.add_argument("--help-formats", action="store_true", help="print the local data layouts and exit")
  args = p.parse_args(args)
  if args.help_formats:
    print(local.FORMATS)
    return 0
  if args.model_name and "/" not in args.model_name:
    p.error(f"--model-name {args.model_name!r}: expected org/name")
  specs = [s.strip() for s in (args.tasks or "").split(",") if s.strip()]
  if args.list_tasks:
    try:
      return list_tasks(args)
    except ValueError as e:
      raise errors.DataError(cli.one_line(e)) from e
  try:
    dims = [int(k) for spec in args.truncate_dim for k in spec.split(",") if k.strip()]
  except ValueError:
    raise errors.ConfigError(f"--truncate-dim {','.join(args.truncate_dim)}: expected integers such as 256,64") \
        from None
  if not args.model:
    p.error("--model is required")
  if not args.data_dir and not specs:
    p.error("give --data-dir (offline) or --tasks (MTEB)")
  result = runner.evaluate(args.model, data_dir=args.data_dir, output=args.output, tasks=specs, split=args.split,
                           max_length=args.max_length, batch_size=args.batch_size, dtype=args.dtype,
                           backend=args.backend, instructions=args.instructions,
                           no_instructions=args.no_instructions, model_name=args.model_name,
                           cache_dir=args.cache_dir, truncate_dims=dims, max_examples=args.max_examples)
  return 1 if result["failed"] else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
