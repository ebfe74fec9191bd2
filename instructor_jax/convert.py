"""``python -m instructor_jax.convert``: JAX checkpoints <-> Hugging Face / sentence-transformers folders.

    python -m instructor_jax.convert to-hf --checkpoint WORKDIR[/STEP] --out DIR [--legacy-instructor]
    python -m instructor_jax.convert to-hf --model DIR_OR_HUB_ID --out DIR      # re-export an HF folder
    python -m instructor_jax.convert from-hf --model DIR_OR_HUB_ID --out WORKDIR

Every export verifies itself before it appears under its name (``export/to_hf.py``); a failed check leaves nothing
behind.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from instructor_jax.core import cli, errors
from instructor_jax.export.folder import DTYPES
from instructor_jax.export.hf_import import import_hf
from instructor_jax.export.to_hf import export_model


def _main(args) -> int:
  p = argparse.ArgumentParser(prog="python -m instructor_jax.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="cmd", required=True)
  t = sub.add_parser("to-hf", help="JAX checkpoint (or HF folder) -> sentence-transformers / INSTRUCTOR folder")
  src = t.add_mutually_exclusive_group(required=True)
  src.add_argument("--checkpoint", help="orbax workdir (latest step) or workdir/STEP")
  src.add_argument("--model", help="an HF / sentence-transformers / INSTRUCTOR folder or hub id (re-export)")
  t.add_argument("--out", required=True, help="folder to create")
  t.add_argument("--legacy-instructor", action="store_true",
                 help="hkunlp/instructor-* layout for InstructorEmbedding 1.0.1 + sentence-transformers 2.2.2")
  t.add_argument("--dtype", default="float32", choices=DTYPES, help="weight dtype of the export (default float32)")
  t.add_argument("--max-seq-length", type=int, default=None, help="sentence_bert_config max_seq_length (512)")
  t.add_argument("--overwrite", action="store_true", help="replace an existing --out folder (atomically)")
  t.add_argument("--no-verify", action="store_true", help="skip the self-check (not recommended)")
  t.add_argument("--name", help="model name for the model card (default: the --out folder name)")
  t.add_argument("--training-config", help="JSON file with the training config, quoted in the model card")
  t.add_argument("--eval-results", help="instructor_jax.eval output folder or {task: score} JSON for the card")
  t.add_argument("--push-to-hub", metavar="REPO", help="upload the verified folder with huggingface_hub")
  f = sub.add_parser("from-hf", help="HF folder or hub id -> orbax checkpoint training can start from")
  f.add_argument("--model", required=True, help="HF / sentence-transformers / INSTRUCTOR folder or hub id")
  f.add_argument("--out", required=True, help="orbax workdir to write")
  f.add_argument("--step", type=int, default=0)
  p.add_argument("--debug", action="store_true", help="show the traceback of user errors")
  args = p.parse_args(args)
  try:
    return _run(args)
  except errors.VerificationError as e:
    raise errors.ExportError(f"verification failed: {e}") from e


def _run(args) -> int:
  if args.cmd == "from-hf":
    import_hf(args.model, args.out, step=args.step)
    return 0
  training = None
  if args.training_config:
    with open(args.training_config, encoding="utf-8") as f:
      training = json.load(f)
  out = export_model(args.out, checkpoint=args.checkpoint, model=args.model, legacy=args.legacy_instructor,
                     dtype=args.dtype, max_seq_length=args.max_seq_length, name=args.name,
                     training_config=training, eval_results_path=args.eval_results, overwrite=args.overwrite,
                     verify=not args.no_verify)
  if args.push_to_hub:
    from huggingface_hub import HfApi
    api = HfApi()
    api.create_repo(args.push_to_hub, exist_ok=True)
    api.upload_folder(folder_path=out, repo_id=args.push_to_hub)
    print(f"pushed {out} to {args.push_to_hub}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
