"""``python -m instructor_jax.medi``: MEDI tools (``build``, ``validate``, ``tasks``, ``annotations``).

    python -m instructor_jax.medi validate FILE [--strict] [--skip-invalid] [--report OUT]
    python -m instructor_jax.medi tasks FILE_OR_PREPARED_DIR [--json]
    python -m instructor_jax.medi build --super-ni DIR --embedder MODEL [--annotations FILE] --out medi.jsonl
    python -m instructor_jax.medi annotations

The format, its error classes and the reader live in ``data/medi.py``; the builder in ``data/medi_builder.py``.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
from typing import Optional, Sequence

from instructor_jax.core import cli
from instructor_jax.data import medi_builder, prepared
from instructor_jax.data.medi import Report, read_medi
from instructor_jax.storage import paths

def _validate_cli(args) -> int:
  rep = Report(args.file)
  tasks = collections.Counter(r.task for r in read_medi(args.file, strict=args.strict,
                                                        skip_invalid=args.skip_invalid, report=rep))
  out = rep.to_dict()
  out["tasks"] = dict(sorted(tasks.items()))
  if args.report:
    rep.write(args.report)
  print(json.dumps(out, indent=1))
  return 0


def task_counts(path: str, strict: bool = False, skip_invalid: bool = False) -> tuple[dict[str, int], str]:
  """``({task: records}, summary)`` of a MEDI file (one streaming pass, no tokenizer) or of a prepared folder
  (``data prepare``: read from its manifest, nothing else)."""
  if paths.isdir(path):
    manifest = prepared.read_manifest(path)
    return ({t["name"]: int(t["records"]) for t in manifest["tasks"]},
            f"{path}: prepared from {manifest['source']['path']} ({manifest['report'].get('valid', '?')} valid "
            f"records; lengths {manifest['max_query_length']}/{manifest['max_doc_length']}, "
            f"{manifest['num_negatives']} negative(s))")
  rep = Report(path)
  counts = collections.Counter(r.task for r in read_medi(path, strict=strict, skip_invalid=skip_invalid,
                                                         report=rep))
  return dict(counts), rep.summary()


def _tasks_cli(args) -> int:
  counts, summary = task_counts(args.path, strict=args.strict, skip_invalid=args.skip_invalid)
  if args.json:
    print(json.dumps({"tasks": dict(sorted(counts.items())), "records": sum(counts.values())}, indent=1))
    return 0
  width = max((len(t) for t in counts), default=4)
  print(f"{'task':<{width}}  records")
  for task in sorted(counts):
    print(f"{task:<{width}}  {counts[task]:>7d}")
  print(f"{len(counts)} tasks, {sum(counts.values())} records", file=sys.stderr)
  print(summary, file=sys.stderr)
  return 0


def _embedder(args):
  """``embed(texts)`` with ``--embedder`` (JAX is imported only for ``build``)."""
  from instructor_jax.models.embedder import Instructor
  model = Instructor.from_pretrained(args.embedder, max_length=args.max_length)
  return lambda texts: model.encode(list(texts), batch_size=args.batch_size)


def _main(args) -> int:
  p = argparse.ArgumentParser(prog="python -m instructor_jax.medi", description="MEDI tools")
  sub = p.add_subparsers(dest="cmd", required=True)
  medi_builder.add_arguments(sub.add_parser("build", help="mine MEDI pairs from Super-NaturalInstructions tasks"))
  v = sub.add_parser("validate", help="validate a MEDI file and print the per-class report (JSON)")
  v.add_argument("file", help="MEDI file (.json array or .jsonl)")
  v.add_argument("--strict", action="store_true", help="instructions must start with 'Represent '")
  v.add_argument("--skip-invalid", action="store_true", help="count invalid records instead of failing on the first")
  v.add_argument("--report", default="", help="also write the report JSON here")
  t = sub.add_parser("tasks", help="list the tasks of a MEDI file or prepared folder with their record counts")
  t.add_argument("path", help="MEDI file (.json array or .jsonl) or a folder written by `data prepare`")
  t.add_argument("--json", action="store_true", help="print {tasks: {name: records}, records: total} as JSON")
  t.add_argument("--strict", action="store_true", help="MEDI file: instructions must start with 'Represent '")
  t.add_argument("--skip-invalid", action="store_true", help="MEDI file: skip (and count) invalid records")
  sub.add_parser("annotations", help="print the built-in annotations (a starting --annotations file)")
  args = p.parse_args(args)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
  if args.cmd == "build":
    logging.getLogger("instructor_jax").setLevel(logging.INFO)  # the builder's per-task progress
    return medi_builder.run(args, _embedder)
  if args.cmd == "validate":
    return _validate_cli(args)
  if args.cmd == "tasks":
    return _tasks_cli(args)
  print(json.dumps(medi_builder.DEFAULT_ANNOTATIONS, indent=1))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
