"""Rebuilds the bundled tiny random INSTRUCTOR checkpoint (instructor_jax/assets/tiny-instructor).

It is a 2-layer, d_model 32 T5 encoder with a 32 -> 24 Dense, random weights, the real T5 vocabulary, saved by
transformers in the hkunlp/instructor-* layout. Useful for smoke runs and examples; its embeddings mean nothing.
    python scripts/make_tiny_model.py [--out DIR]
"""
import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import reference  # noqa: E402

if __name__ == "__main__":
  p = argparse.ArgumentParser()
  p.add_argument("--out", default=os.path.join(HERE, "..", "instructor_jax", "assets", "tiny-instructor"))
  args = p.parse_args()
  tmp = args.out + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  reference.make_checkpoint(tmp, "relu", layout="instructor", seed=0)
  os.remove(os.path.join(tmp, "tokenizer.json"))  # rebuilt from spiece.model on load; keeps the repo small
  shutil.rmtree(args.out, ignore_errors=True)
  os.replace(tmp, args.out)
  print("wrote", args.out)
