"""The model to evaluate: loaded from an orbax workdir[/STEP], an exported / sentence-transformers / INSTRUCTOR
folder or a hub id, with the jax backend (``Instructor.encode``) or the torch one (``transformers`` encoder + the
same INSTRUCTOR rule, ``export.verify.reference_encode``), and its identity in MTEB's result layout (``ModelInfo``:
the same weights give the same revision wherever they lie).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Sequence

import numpy as np

from instructor_jax.storage import paths


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """The model's identity in MTEB's result layout.

  ``name`` is ``org/model`` (the hub id, or ``local/<folder name>``); ``revision`` is the hub commit of a downloaded
  snapshot, else a content hash (12 hex of sha256): of every file of a folder but ``README.md`` and hidden files (a
  model card edit or an eval folder beside it does not change it), or of an orbax checkpoint's parameter arrays,
  encoder config and tokenizer files (not of the workdir, whose eval / export folders and metrics change after
  every run). The same weights give the same revision wherever they lie.
  """
  name: str                  # "org/model"
  revision: str
  d_model: int
  dim: int | None            # embedding size (None: not known before encoding, torch backend on a folder)
  n_parameters: int | None
  framework: str             # "JAX" | "PyTorch" (mteb's ModelMeta.framework names)
  max_length: int


@dataclasses.dataclass
class InMemory:
  """A model already in memory, evaluated as it is (no checkpoint round trip): the trainer's current parameters
  (``training/periodic_eval.py``). ``embedder`` is an ``Instructor``; ``name`` / ``revision`` are its identity in
  MTEB's result layout (e.g. ``local/<workdir>`` and ``step-400``)."""
  embedder: object
  name: str
  revision: str

  def __str__(self) -> str:
    return f"{self.name}@{self.revision}"


class TorchInstructor:
  """``transformers.T5EncoderModel`` / ``BertModel`` + the INSTRUCTOR pooling rule on an exported / HF folder
  (``--backend torch``)."""

  def __init__(self, folder: str, max_length: int = 512):
    self.folder, self.max_length = folder, max_length

  def encode(self, inputs: Sequence, batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
    from instructor_jax.export.verify import reference_encode
    return reference_encode(self.folder, list(inputs), max_length=self.max_length, batch_size=batch_size)


def is_orbax(path: str) -> bool:
  from instructor_jax.storage.checkpoints import is_checkpoint
  return is_checkpoint(path)


def model_dir(folder: str) -> str:
  """The folder with the encoder's ``config.json`` (sentence-transformers may keep it in ``0_Transformer``)."""
  modules = os.path.join(folder, "modules.json")
  if os.path.exists(modules):
    with open(modules, encoding="utf-8") as f:
      return os.path.join(folder, json.load(f)[0].get("path", ""))
  return folder


def local_name(path: str) -> str:
  """``local/<name>``: the folder's name (the workdir's for ``WORKDIR/STEP``)."""
  if paths.scheme(path):
    return "local/" + re.sub(r"[^A-Za-z0-9._-]+", "_", paths.basename(paths.check(path)))
  path = os.path.normpath(os.path.abspath(path))
  base = os.path.basename(path)
  if base.isdigit() and is_orbax(os.path.dirname(path)):
    base = os.path.basename(os.path.dirname(path))
  return "local/" + re.sub(r"[^A-Za-z0-9._-]+", "_", base)


def folder_revision(folder: str) -> str:
  """The hub commit of a snapshot folder (``.../snapshots/<commit>``), else sha256 of its files (12 hex)."""
  m = re.search(r"[\\/]snapshots[\\/]([0-9a-f]{40})[\\/]?$", os.path.abspath(folder))
  if m:
    return m.group(1)
  h = hashlib.sha256()
  for d, dirs, files in os.walk(folder, followlinks=True):
    dirs[:] = sorted(x for x in dirs if not x.startswith("."))
    for n in sorted(files):
      if n.startswith(".") or n == "README.md":
        continue
      path = os.path.join(d, n)
      h.update(os.path.relpath(path, folder).replace(os.sep, "/").encode() + b"\0")
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          h.update(chunk)
  return h.hexdigest()[:12]


def params_revision(params, hf_config: dict, normalize: bool, tokenizer_dir: str) -> str:
  """sha256 (12 hex) of the parameter arrays (path, dtype, shape, bytes), the encoder config, ``normalize`` and
  the tokenizer files."""
  import jax
  h = hashlib.sha256(json.dumps([hf_config, bool(normalize)], sort_keys=True, default=str).encode())
  leaves = sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: jax.tree_util.keystr(kv[0]))
  for path, x in leaves:
    x = np.ascontiguousarray(np.asarray(x))
    h.update(f"{jax.tree_util.keystr(path)}|{x.dtype}|{x.shape}".encode())
    h.update(memoryview(x).cast("B"))
  from instructor_jax.storage.checkpoints import tokenizer_files
  for n in tokenizer_files(tokenizer_dir):
    with open(os.path.join(tokenizer_dir, n), "rb") as f:
      h.update(n.encode() + b"\0" + f.read())
  return h.hexdigest()[:12]


def _n_params(params) -> int:
  import jax
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def load_embedder(model: str, backend: str = "jax", max_length: int = 512, dtype: str = "float32",
                  name: str | None = None):
  """``(embedder, ModelInfo, d_model, cleanup)``; ``embedder.encode(inputs)`` takes ``[instruction, text]`` pairs
  (or plain texts) and returns float32 ``[N, D]``. The model is read by ``models.loader.load``."""
  import jax.numpy as jnp
  from instructor_jax.models import hf, loader
  from instructor_jax.models.embedder import Instructor
  if backend not in ("jax", "torch"):
    raise ValueError(f"--backend {backend!r}: expected jax or torch")
  if isinstance(model, InMemory):
    if backend != "jax":
      raise ValueError("an in-memory model is evaluated with the jax backend only")
    inst = model.embedder
    info = ModelInfo(model.name, model.revision, inst.model.config.d_model, inst.dim, _n_params(inst.params), "JAX",
                     inst.max_length)
    return inst, info, inst.model.config.d_model, lambda: None
  cdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  framework = "JAX" if backend == "jax" else "PyTorch"
  if is_orbax(model):
    src = loader.load(model)
    max_length = src.max_length(max_length)
    d_model = src.config.d_model
    info = ModelInfo(name or local_name(model), params_revision(src.params, src.hf_config, src.normalize,
                                                                src.tokenizer_dir),
                     d_model, src.out_features or d_model, _n_params(src.params), framework, max_length)
    if backend == "torch":
      from instructor_jax.export.to_hf import export_folder
      tmp = tempfile.mkdtemp(prefix="instructor-eval-")
      folder = export_folder(src.params, src.hf_config, os.path.join(tmp, "model"), tokenizer_dir=src.tokenizer_dir,
                             normalize=src.normalize, verify=False, log=lambda *a: None)
      return TorchInstructor(folder, max_length), info, d_model, lambda: shutil.rmtree(tmp, True)
    inst = Instructor.from_loaded(src, dtype=cdtype, max_length=max_length)
    return inst, info, d_model, lambda: None
  folder = loader.resolve(model)
  hub_id = model if not (os.path.exists(model) or paths.scheme(model)) else None
  ident = dict(name=name or hub_id or local_name(model if paths.scheme(model) else folder),
               revision=folder_revision(folder), framework=framework)
  if backend == "torch":
    with open(os.path.join(model_dir(folder), "config.json"), encoding="utf-8") as f:
      cfg = hf.config_from_hf(json.load(f))
    max_length = registry_max_length(cfg, max_length)
    info = ModelInfo(**ident, d_model=cfg.d_model, dim=None, n_parameters=None, max_length=max_length)
    return TorchInstructor(folder, max_length), info, cfg.d_model, lambda: None
  inst = Instructor.from_pretrained(folder, dtype=cdtype, max_length=max_length)
  info = ModelInfo(**ident, d_model=inst.model.config.d_model, dim=inst.dim, n_parameters=_n_params(inst.params),
                   max_length=inst.max_length)
  return inst, info, inst.model.config.d_model, lambda: None


def registry_max_length(cfg, requested: int) -> int:
  """``requested`` capped by the backbone (BERT: ``max_position_embeddings``)."""
  from instructor_jax.models import registry
  return registry.backbone_of(cfg).max_length(cfg, requested)


def d_model_of(model: str | None) -> int | None:
  """``d_model`` from a local folder's ``config.json`` without loading weights (``--list-tasks``); else None."""
  if not model or not os.path.isdir(model) or is_orbax(model):
    return None
  path = os.path.join(model_dir(model), "config.json")
  if not os.path.exists(path):
    return None
  from instructor_jax.models import hf
  with open(path, encoding="utf-8") as f:
    return hf.config_from_hf(json.load(f)).d_model
