"""``from-hf``: an HF / sentence-transformers / INSTRUCTOR folder or hub id -> an orbax checkpoint training can
start from (``import_hf``).

Read first: the workdir must not hold checkpoints yet (training would resume from its latest step, not from the
imported weights); the saved parameters are restored and compared bit for bit before ``import_hf`` returns.
"""
from __future__ import annotations


import numpy as np

from instructor_jax.core import errors
from instructor_jax.data.tokenization import check_vocab
from instructor_jax.models import loader
from instructor_jax.storage import checkpoints, paths


def import_hf(model: str, workdir: str, step: int = 0, log=print) -> str:
  """``from-hf``: an HF folder / hub id -> an orbax checkpoint (``checkpoints.save_params``) training starts from.

  ``save_params`` copies the tokenizer files into the workdir, so the checkpoint does not depend on the source.
  The saved parameters are restored and compared bit for bit.
  """
  workdir = paths.check(workdir, "--out")
  if paths.isdir(workdir) and any(n.split(".")[0].isdigit() for n in paths.listdir(workdir)):
    raise errors.ExportError(f"{workdir} already holds checkpoints; from-hf writes a new workdir (training would resume "
                       "from its latest step, not from the imported weights)")
  src = loader.load(model)
  if src.kind != "folder":
    raise errors.ExportError(f"{model}: from-hf reads an HF / sentence-transformers folder or hub id, not a training "
                             "workdir")
  check_vocab(src.config.vocab_size, src.tokenizer_dir)
  params = src.params
  meta = {"model_config": src.config.to_hf() | {k: v for k, v in src.hf_config.items() if not k.startswith("_")},
          "out_features": src.out_features, "normalize": bool(src.normalize), "tokenizer_dir": src.tokenizer_dir,
          "source": model, "max_seq_length": src.max_seq_length or 512}
  checkpoints.save_params(workdir, params, meta, step=step)
  restored, _ = checkpoints.restore_params(paths.join(workdir, str(step)))
  import jax
  flat_a = jax.tree_util.tree_leaves_with_path(params)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(restored))
  for path, a in flat_a:
    b = flat_b.get(path)
    if b is None or not np.array_equal(np.asarray(b, np.float32), np.asarray(a, np.float32)):
      raise errors.VerificationError(f"{workdir}: parameter {jax.tree_util.keystr(path)} does not restore bit-exactly")
  log(f"wrote {workdir} (step {step}) from {model}")
  return workdir

