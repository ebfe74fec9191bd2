"""The export: a training checkpoint or an HF folder -> a verified sentence-transformers / INSTRUCTOR folder.

Read first: ``export_model`` (what ``python -m instructor_jax.convert to-hf`` and ``training/finish.py`` call) loads
the source (``models.loader.load``) and ``export_folder`` writes it through ``storage/files.atomic_folder``: the
folder is built in a hidden ``.NAME.tmp-*`` beside ``out``, verified (``verify.verify_export``), and only then renamed
to ``out``. A failure leaves nothing behind (with ``overwrite``, the previous export stays); a killed export's
temporary folder is removed by the next export into the same parent once its owner is dead.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
from typing import Any, Mapping, Optional

import numpy as np

from instructor_jax.core import errors
from instructor_jax.data.tokenization import check_vocab
from instructor_jax.export import card as card_lib
from instructor_jax.export import folder as folder_lib
from instructor_jax.export import verify as verify_lib
from instructor_jax.models import hf, loader, registry
from instructor_jax.storage import files, paths

DTYPES = folder_lib.DTYPES
_TEMP = re.compile(r"^\.(.+)\.(tmp|old)-")


def export_model(out: str, *, checkpoint: Optional[str] = None, model: Optional[str] = None, legacy: bool = False,
                 dtype: str = "float32", max_seq_length: Optional[int] = None, name: Optional[str] = None,
                 training_config: Optional[Mapping[str, Any]] = None, eval_results_path: Optional[str] = None,
                 overwrite: bool = False, verify: bool = True, matryoshka_dims=None) -> str:
  """Exports ``checkpoint`` (an orbax workdir or ``WORKDIR/STEP``) or ``model`` (an HF folder / hub id) to ``out``;
  returns the folder. ``matryoshka_dims`` (default: the training config's ``loss.matryoshka_dims``, or what an
  exported source folder records) are listed in the model card and ``config_sentence_transformers.json``."""
  if (checkpoint is None) == (model is None):
    raise ValueError("export_model needs exactly one of checkpoint= or model=")
  _check_out(out, overwrite)  # before loading anything: an unwritable --out is a one-line error at once
  src = loader.load(checkpoint if checkpoint is not None else model)
  if checkpoint is not None:
    training_config = training_config or src.training_config
    source = f"{checkpoint} (step {src.step})" if src.step is not None else checkpoint
  else:
    source = model
  if matryoshka_dims is None:
    matryoshka_dims = trained_dims(training_config) or recorded_dims(None if checkpoint is not None else model)
  card = {"name": name or paths.basename(paths.check(out, "--out")), "training_config": training_config,
          "eval_results": card_lib.eval_results(eval_results_path), "source": source}
  return export_folder(src.params, src.hf_config, out, tokenizer_dir=src.tokenizer_dir, normalize=src.normalize,
                       legacy=legacy, dtype=dtype, max_seq_length=max_seq_length or src.max_seq_length or 512,
                       card=card, overwrite=overwrite, verify=verify, matryoshka_dims=matryoshka_dims)


def trained_dims(training_config: Optional[Mapping[str, Any]]) -> tuple:
  """The Matryoshka dimensions a run was trained with (``loss.matryoshka_dims``; () when none or not known)."""
  loss = (training_config or {}).get("loss") or {}
  return tuple(int(d) for d in (loss.get("matryoshka_dims") or ()))


def recorded_dims(folder: Optional[str]) -> tuple:
  """The Matryoshka dimensions an exported folder records (``config_sentence_transformers.json``), else ()."""
  import json
  path = os.path.join(folder, "config_sentence_transformers.json") if folder and os.path.isdir(folder) else ""
  if not path or not os.path.exists(path):
    return ()
  try:
    with open(path, encoding="utf-8") as f:
      return tuple(int(d) for d in json.load(f).get(folder_lib.MATRYOSHKA_KEY) or ())
  except (OSError, ValueError, TypeError, AttributeError):
    return ()


def _check_out(out: str, overwrite: bool) -> None:
  out = paths.check(out, "--out")
  if paths.exists(out) and not overwrite:
    raise errors.ExportError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
  if paths.is_gcs(out):
    probe = f"{out}.probe-{os.getpid()}"
    files.write_text(probe, "")
    paths.remove(probe)
    return
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(out)}.probe-", dir=parent):
    pass


def remove_stale_exports(out: str, log=print) -> list[str]:
  """The temporary folders that killed writers left beside ``out``, for ``out`` and every other name in its parent
  with an owner file (``files.remove_stale``): removed when their owner is dead."""
  parent = os.path.dirname(os.path.abspath(out))
  names = {os.path.basename(os.path.abspath(out))}
  for n in os.listdir(parent) if os.path.isdir(parent) else []:
    m = _TEMP.match(n)
    if m and os.path.exists(os.path.join(parent, n, files.OWNER)):
      names.add(m.group(1))
  removed = []
  for base in sorted(names):
    removed += files.remove_stale(os.path.join(parent, base), log)
  return removed


@contextlib.contextmanager
def _sigterm_as_exception():
  """Turns SIGTERM into SystemExit while exporting, so the temporary folder is removed (main thread only)."""
  def handler(signum, frame):
    raise SystemExit(128 + signum)
  try:
    previous = signal.signal(signal.SIGTERM, handler)
  except ValueError:  # not the main thread
    yield
    return
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def export_folder(params: Mapping[str, Any], config: registry.Config | Mapping[str, Any], out: str, *,
                  tokenizer_dir: str, normalize: bool = True, legacy: bool = False, dtype: str = "float32",
                  max_seq_length: int = 512, card: str | Mapping[str, Any] | None = None, overwrite: bool = False,
                  verify: bool = True, log=print, matryoshka_dims=()) -> str:
  """Writes ``params`` (the ``InstructorModel`` pytree, any float dtype) as an HF / sentence-transformers folder.

  ``config``: a backbone config or the encoder's HF ``config.json`` dict (the backbone is its ``model_type``).
  ``params['dense']['kernel'] [in, out]`` becomes ``2_Dense`` (absent: no Dense module). ``card``: the README text,
  or a dict of ``card.model_card`` keyword arguments (``name``, ``training_config``, ``eval_results``, ``source``).
  ``max_seq_length`` and the verification length are capped by the backbone (BERT: ``max_position_embeddings``).
  ``matryoshka_dims``: the trained Matryoshka dimensions, listed in the card and recorded in
  ``config_sentence_transformers.json`` (no default ``truncate_dim``: the folder embeds at full size unless
  ``SentenceTransformer(out, truncate_dim=k)``). The folder appears at ``out`` only complete and verified; returns
  ``out``.
  """
  out = paths.check(out, "--out")
  if paths.exists(out) and not overwrite:
    raise errors.ExportError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
  if dtype not in DTYPES:
    raise errors.ExportError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  cfg, hf_cfg = folder_lib.as_config(config, params)
  backbone = registry.backbone_of(cfg)
  if legacy and not backbone.LEGACY_INSTRUCTOR:
    raise errors.ExportError("--legacy-instructor writes the hkunlp/instructor-* layout, which is for T5 models; "
                             f"export this {backbone.NAME} model in the default sentence-transformers layout")
  check_vocab(cfg.vocab_size, tokenizer_dir)
  max_seq_length = backbone.max_length(cfg, max_seq_length)
  verify_length = backbone.max_length(cfg, verify_lib.VERIFY_MAX_LENGTH)
  state, dense = hf.from_flax(params, cfg, dtype=np.float32)
  hf.check_state(state, cfg, where="params")
  if not isinstance(card, str):
    kw = dict(card or {})
    kw.setdefault("name", paths.basename(out))
    card = card_lib.model_card(legacy=legacy, dim=int(dense.shape[0]) if dense is not None else cfg.d_model,
                               config=cfg, max_seq_length=max_seq_length, dtype=dtype, dense=dense is not None,
                               normalize=normalize, matryoshka_dims=tuple(matryoshka_dims or ()), **kw)
  if not paths.is_gcs(out):  # on gs:// the folder is built in a local temporary folder, then uploaded
    os.makedirs(os.path.dirname(out), exist_ok=True)
    remove_stale_exports(out, log)
  with _sigterm_as_exception(), files.atomic_folder(out, overwrite=overwrite, log=log) as tmp:
    folder_lib.write_folder(tmp, state, dense, hf_cfg, tokenizer_dir, normalize=normalize, legacy=legacy,
                            dtype=dtype, max_seq_length=max_seq_length, card=card,
                            matryoshka_dims=tuple(matryoshka_dims or ()))
    if verify:
      expected = verify_lib.source_embeddings(params, cfg, normalize, tokenizer_dir, verify_lib.VERIFY_PAIRS,
                                              verify_length)
      verify_lib.verify_export(tmp, expected, legacy=legacy, dtype=dtype, state=state, dense=dense,
                               max_length=verify_length, log=log)
  local = out if not paths.is_gcs(out) else "<a local copy>"  # neither package opens gs:// itself
  use = (f"InstructorEmbedding 1.0.1: INSTRUCTOR({local!r}).encode([[instruction, text], ...])" if legacy else
         f"SentenceTransformer({local!r}).encode(texts, prompt=instruction)")
  if paths.is_gcs(out):
    use += f"; instructor_jax.Instructor.from_pretrained({out!r}) reads it directly"
  log(f"wrote {out} ({'legacy INSTRUCTOR' if legacy else 'sentence-transformers'} layout, {dtype}): {use}")
  return out
