"""``python -m instructor_jax.encode``: embed a JSON-lines file into a ``.npy`` matrix.

Input lines are ``{"instruction": ..., "text": ...}`` or ``{"text": ...}`` (``--instruction`` fills in lines without
one); anything else, or an empty text, fails with ``FILE:LINE``. The output is written atomically (no partial file).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from instructor_jax.core import cli, errors
from instructor_jax.storage import files, paths

ALLOWED_KEYS = {"instruction", "text"}


InputError = errors.DataError  # core/errors.py


def read_jsonl(path: str, default_instruction: str | None = None) -> list:
  """Reads inputs for ``Instructor.encode`` (strings or ``[instruction, text]``), validating every line."""
  items = []
  try:
    f = paths.open_file(paths.check(path, "--input"), "rb")
  except OSError as e:
    raise InputError(f"{path}: cannot open: {e.strerror}") from e
  with f:
    for lineno, raw in enumerate(f, start=1):
      where = f"{path}:{lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise InputError(f"{where}: invalid UTF-8 ({e.reason} at byte {e.start})") from e
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise InputError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from e
      if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object with a \"text\" key, got {type(obj).__name__}")
      extra = set(obj) - ALLOWED_KEYS
      if extra:
        raise InputError(f"{where}: unexpected key(s) {sorted(extra)} (allowed: instruction, text)")
      if "text" not in obj:
        raise InputError(f"{where}: missing key \"text\"")
      for k, v in obj.items():
        if not isinstance(v, str):
          raise InputError(f"{where}: \"{k}\" must be a string, got {type(v).__name__}")
      if not obj["text"].strip():
        raise InputError(f"{where}: \"text\" is empty or only whitespace (its embedding would say nothing)")
      instruction = obj.get("instruction", default_instruction)
      items.append(obj["text"] if instruction is None else [instruction, obj["text"]])
  if not items:
    raise InputError(f"{path}: no inputs (the file is empty or blank); nothing written")
  return items


def check_output(path: str) -> None:
  """Fails before any work when ``--output`` cannot be written: a folder, a missing or read-only parent."""
  path = paths.check(path, "--output")
  if paths.is_gcs(path):
    return  # Cloud Storage: written as one object at the end
  if os.path.isdir(path):
    raise InputError(f"--output {path}: is a folder; name a .npy file")
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):  # created at the end; the nearest existing folder must take it
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise InputError(f"--output {path}: {parent} is a file, not a folder")
  if not os.access(parent, os.W_OK):
    raise InputError(f"--output {path}: {parent} is not writable")


def positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
  return value


def _main(argv) -> int:
  p = argparse.ArgumentParser(prog="python -m instructor_jax.encode", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True,
                 help="checkpoint folder (INSTRUCTOR, sentence-transformers with a T5 or BERT encoder, plain T5 / "
                 "BERT) or hub id")
  p.add_argument("--input", required=True, help="JSON lines: {\"instruction\": ..., \"text\": ...} or {\"text\": ...}")
  p.add_argument("--output", required=True, help=".npy file for the float32 [N, D] embeddings")
  p.add_argument("--instruction", default=None, help="instruction for lines that have none")
  p.add_argument("--batch-size", type=positive_int, default=32)
  p.add_argument("--max-length", type=positive_int, default=512,
                 help="tokens per input (BERT: capped at max_position_embeddings)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
  p.add_argument("--truncate-dim", type=int, default=None, metavar="K",
                 help="Matryoshka: keep the first K dimensions, re-normalised to unit length")
  p.add_argument("--similarities", action="store_true", help="also print the cosine similarity matrix")
  p.add_argument("--debug", action="store_true", help="show the traceback of user errors")
  args = p.parse_args(argv)
  if args.truncate_dim is not None and args.truncate_dim < 1:
    raise errors.ConfigError(f"--truncate-dim {args.truncate_dim}: must be an integer from 1 to the model's "
                             f"embedding size")
  return _encode(args)


def main(argv=None) -> int:
  return cli.run(_main, argv)


def _encode(args) -> int:
  check_output(args.output)
  items = read_jsonl(args.input, args.instruction)
  import jax.numpy as jnp
  from instructor_jax.models.embedder import Instructor, check_truncate_dim
  model = Instructor.from_pretrained(args.model, dtype=getattr(jnp, args.dtype), max_length=args.max_length)
  check_truncate_dim(args.truncate_dim, model.dim, "--truncate-dim")
  emb = model.encode(items, batch_size=args.batch_size, show_progress_bar=sys.stderr.isatty() or None,
                     truncate_dim=args.truncate_dim)
  if not paths.is_gcs(args.output):
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  files.save_npy(args.output, emb)
  print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {args.output}", file=sys.stderr)
  if args.similarities:
    sims = emb @ emb.T
    labels = [(it if isinstance(it, str) else it[1])[:40] for it in items]
    width = max(len(s) for s in labels) if labels else 0
    print("cosine similarities (row i, column j):")
    print(" " * (width + 5) + "".join(f"{j:>7d}" for j in range(len(items))))
    for i, (label, row) in enumerate(zip(labels, sims)):
      print(f"{i:>3d}  {label:<{width}}" + "".join(f"{v:7.3f}" for v in row))
  return 0


if __name__ == "__main__":
  sys.exit(main())
