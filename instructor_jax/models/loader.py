"""The one model loader: ``load(path_or_hub_id) -> Loaded`` from a training workdir / ``WORKDIR/STEP`` (orbax,
through ``storage/checkpoints.py``) or an HF / sentence-transformers / INSTRUCTOR folder or hub id (``hf.py``).

What a reader must know first: ``Loaded.params`` is a host (numpy) ``InstructorModel`` tree, ``{'encoder': ...,
'dense': {'kernel': [in, out]}}`` (no ``dense``: no Dense layer); ``Loaded.config`` is already matched to it (BERT:
pooler or not). ``Instructor.from_pretrained``, the exporter, the evaluator and ``build_model`` all load through here.
"""
from __future__ import annotations

import dataclasses
import errno
import os
from typing import Any, Optional

import numpy as np

from instructor_jax.core import errors
from instructor_jax.data.tokenization import check_vocab
from instructor_jax.models import hf, registry
from instructor_jax.storage import files, paths


@dataclasses.dataclass
class Loaded:
  config: registry.Config          # the backbone config (overrides applied, matched to params)
  params: Any                      # host numpy tree (see the module docstring)
  hf_config: dict                  # the encoder's config.json (the source's extra fields kept)
  tokenizer_dir: str
  normalize: bool
  source: str                      # the folder or checkpoint path read (a hub id's local snapshot)
  kind: str                        # "checkpoint" | "folder"
  max_seq_length: Optional[int] = None
  hub_id: Optional[str] = None     # the hub id a folder was downloaded by
  pad_id: int = 0
  training_config: Optional[dict] = None
  step: Optional[int] = None

  @property
  def backbone(self):
    return registry.backbone_of(self.config)

  @property
  def out_features(self) -> Optional[int]:
    return int(np.shape(self.params["dense"]["kernel"])[1]) if "dense" in self.params else None

  def max_length(self, requested: int) -> int:
    """``requested`` capped at what the backbone can encode (BERT: ``max_position_embeddings``)."""
    return self.backbone.max_length(self.config, requested)


def looks_local(path: str) -> bool:
  """A path, not a hub id (``name`` or ``org/name``): absolute, relative with ``.``/``~``, or with 2+ separators."""
  return path.startswith(("/", "./", "../", "~", ".\\")) or path in (".", "..") or path.count("/") >= 2 or (
      os.sep != "/" and os.sep in path)


def resolve(path_or_hub_id: str | os.PathLike) -> str:
  """A local folder as it is, a gs:// folder's local copy (``paths.local_copy``), else the hub snapshot of
  ``org/name``; another URL scheme is a one-line error."""
  path = os.fspath(path_or_hub_id)
  if paths.scheme(path):
    path = paths.check(path, "model")
    if not paths.isdir(path):
      raise FileNotFoundError(errno.ENOENT, "no such folder (a model folder, a training workdir or WORKDIR/STEP)",
                              path)
    if not files.is_complete(path):
      raise errors.CheckpointError(f"{path}: incomplete (no {files.COMMIT}: its export did not finish)")
    return paths.local_copy(path)
  if os.path.isdir(path):
    return path
  if os.path.exists(path):
    raise errors.CheckpointError(f"{path}: expected a checkpoint folder, found a file")
  if looks_local(path):
    raise FileNotFoundError(errno.ENOENT, "no such folder (a model folder, a training workdir or WORKDIR/STEP)",
                            path)
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(path)
  except Exception as e:
    raise errors.CheckpointError(
        f"{path!r} is not a local folder and could not be downloaded from the Hugging Face hub "
        f"({type(e).__name__}: {e}). Offline? Download the model elsewhere and pass its folder.") from None


def load(path_or_hub_id: str | os.PathLike, *, params_dtype=None, log=None, **overrides) -> Loaded:
  """Loads a model from anywhere we read one (module docstring).

  ``overrides`` (``dtype``, ``param_dtype``, ``remat``, ``dropout_rate``, ...) go into the config through the
  backbone's ``with_overrides``. ``params_dtype``: the dtype of the returned arrays (None: float32 for a folder,
  as stored for a checkpoint).
  """
  from instructor_jax.storage import checkpoints
  path = os.fspath(path_or_hub_id)
  if checkpoints.is_checkpoint(path):
    out = _load_checkpoint(path, log)
  else:
    out = _load_folder(path, params_dtype)
  out.config = out.backbone.with_overrides(out.config, **overrides)
  if params_dtype is not None and out.kind == "checkpoint":
    out.params = _cast(out.params, params_dtype)
  return out


def _cast(params, dtype):
  import jax
  return jax.tree.map(lambda x: np.asarray(x, np.dtype(dtype)), params)


def _load_folder(path: str, params_dtype) -> Loaded:
  root = resolve(path)
  folder = hf.read_folder(root)
  params = hf.to_flax(folder.state, folder.config, folder.dense, dtype=np.dtype(params_dtype or np.float32))
  return Loaded(folder.config, params, folder.hf_config, folder.model_dir, folder.normalize, root, "folder",
                max_seq_length=folder.max_seq_length,
                hub_id=None if (os.path.exists(path) or paths.scheme(path)) else path)


def _meta_get(meta, *names, default=None):
  for n in names:
    if meta.get(n) is not None:
      return meta[n]
  return default


def _load_checkpoint(path: str, log) -> Loaded:
  from instructor_jax.storage import checkpoints
  params, meta = checkpoints.restore_params(path, log=log)
  meta = dict(meta or {})
  try:
    hf_config = checkpoints.model_config(meta)
  except ValueError as e:
    raise errors.CheckpointError(f"{path}: {e}") from None
  backbone = registry.get(hf_config.get("model_type", "t5"))
  cfg = backbone.match_params(backbone.Config.from_hf(hf_config), params)
  tokenizer_dir = _meta_get(meta, "tokenizer_dir", "tokenizer")
  if tokenizer_dir is None or not paths.isdir(tokenizer_dir):
    raise errors.CheckpointError(f"{path}: checkpoint metadata names no existing tokenizer folder "
                                 f"({tokenizer_dir!r})")
  check_vocab(cfg.vocab_size, tokenizer_dir)
  out = Loaded(cfg, params, dict(hf_config), tokenizer_dir, bool(_meta_get(meta, "normalize", default=True)),
               os.fspath(path), "checkpoint", max_seq_length=meta.get("max_seq_length"),
               pad_id=int(meta.get("pad_id", 0) or 0), training_config=_meta_get(meta, "config", "training_config"),
               step=meta.get("step"))
  want = meta.get("out_features")
  if (want is None) != (out.out_features is None) or (want is not None and int(want) != out.out_features):
    raise errors.CheckpointError(f"{path}: metadata out_features {want} does not match the dense kernel "
                                 f"{np.shape(params['dense']['kernel']) if 'dense' in params else None}")
  return out
