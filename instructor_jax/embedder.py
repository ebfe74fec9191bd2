"""INSTRUCTOR embeddings: T5 encoder -> mean pool over the text tokens -> Dense (no bias) -> L2 normalise.

``InstructorModel`` is the Flax module used by both inference (``Instructor.encode``) and training: it takes
``tokens [B, L]`` and ``instr_len [B]`` (the pooling offset ``n`` of the instruction rule, see
``tokenization.py``) and returns unit vectors ``[B, D]``. ``Instructor`` wraps a loaded checkpoint and its
tokenizer behind ``from_pretrained`` / ``encode``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Iterable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from instructor_jax import hf
from instructor_jax.t5 import T5Config, T5Encoder
from instructor_jax.tokenization import DEFAULT_MAX_LENGTH, Input, Tokenizer

# Padded lengths used by `encode`: inputs are padded up to the next bucket (capped by max_length), so the number of
# compiled shapes stays small whatever the data.
BUCKETS = (16, 32, 64, 128, 256, 512)


def pool_mask(mask, instr_len):
  """Positions ``n .. len-1`` of each row: the attended tokens minus the first ``instr_len``."""
  positions = jnp.arange(mask.shape[-1])
  return mask.astype(bool) & (positions[None, :] >= instr_len[:, None])


def mean_pool(hidden, mask):
  """Masked mean in fp32, divided by ``max(count, 1e-9)`` (a fully masked row gives zeros, not NaN)."""
  m = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * m, axis=-2)
  return total / jnp.maximum(jnp.sum(m, axis=-2), 1e-9)


def l2_normalize(x, eps: float = 1e-12):
  """``x / max(||x||, eps)`` as ``torch.nn.functional.normalize``."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class InstructorModel(nn.Module):
  """``(tokens [B, L], instr_len [B], mask [B, L] | None) -> embeddings [B, D]`` (fp32).

  ``mask`` defaults to ``tokens != pad_id``. The Dense layer is absent when ``out_features`` is None.
  """
  config: T5Config
  out_features: Optional[int] = None
  normalize: bool = True
  pad_id: int = 0

  @nn.compact
  def __call__(self, tokens, instr_len, mask=None, deterministic: bool = True):
    if mask is None:
      mask = tokens != self.pad_id
    hidden = T5Encoder(self.config, name="encoder")(tokens, mask, deterministic)
    pooled = mean_pool(hidden, pool_mask(mask, instr_len))
    pooled = nn.with_logical_constraint(pooled, ("batch", "embed"))
    if self.out_features is not None:
      cfg = self.config
      pooled = nn.Dense(
          self.out_features, use_bias=False, dtype=jnp.float32, param_dtype=cfg.param_dtype, name="dense",
          kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")))(pooled)
    return l2_normalize(pooled) if self.normalize else pooled


def _resolve(path_or_hub_id: str | os.PathLike) -> str:
  path = os.fspath(path_or_hub_id)
  if os.path.isdir(path):
    return path
  if os.path.exists(path):
    raise ValueError(f"{path}: expected a checkpoint folder, found a file")
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(path)
  except Exception as e:
    raise ValueError(
        f"{path!r} is not a local folder and could not be downloaded from the Hugging Face hub "
        f"({type(e).__name__}: {e}). Offline? Download the model elsewhere and pass its folder.") from e


class Instructor:
  """A loaded INSTRUCTOR / GTR / T5 checkpoint: ``Instructor.from_pretrained(dir).encode(pairs)``."""

  def __init__(self, model: InstructorModel, params: Any, tokenizer: Tokenizer, source: str | None = None):
    self.model = model
    self.params = params
    self.tokenizer = tokenizer
    self.source = source
    self._apply = jax.jit(functools.partial(self.model.apply, deterministic=True))

  @classmethod
  def from_pretrained(cls, path_or_hub_id: str | os.PathLike, dtype=jnp.float32, max_length: int = DEFAULT_MAX_LENGTH,
                      param_dtype=jnp.float32) -> "Instructor":
    """Loads the INSTRUCTOR, GTR (sentence-transformers) or plain T5 layout from a folder or a hub id."""
    root = _resolve(path_or_hub_id)
    folder = hf.read_folder(root)
    cfg = dataclasses.replace(folder.t5_config, dtype=dtype, param_dtype=param_dtype)
    tokenizer = Tokenizer.from_pretrained(folder.t5_dir, max_length=max_length)
    model = InstructorModel(cfg, out_features=None if folder.dense is None else int(folder.dense.shape[0]),
                            normalize=folder.normalize, pad_id=tokenizer.pad_id)
    params = jax.tree.map(jnp.asarray, hf.to_flax(folder.state, cfg, folder.dense, dtype=np.dtype(param_dtype)))
    return cls(model, params, tokenizer, source=root)

  @property
  def max_length(self) -> int:
    return self.tokenizer.max_length

  @property
  def dim(self) -> int:
    return self.model.out_features or self.model.config.d_model

  def bucket(self, length: int) -> int:
    for b in BUCKETS:
      if length <= b:
        return min(b, self.max_length)
    return self.max_length

  def encode(self, inputs: Iterable[Input], batch_size: int = 32, show_progress_bar: bool | None = None
             ) -> np.ndarray:
    """Embeds strings and ``[instruction, text]`` pairs; float32 ``[N, D]`` in input order.

    Inputs are sorted by token length and padded to bucket lengths; the batch dimension is ``batch_size`` (a
    shorter last batch is padded to a power of two), so the number of compiled shapes stays bounded.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(inputs, str):
      raise TypeError("encode takes a list of inputs; wrap a single string in a list")
    encoded = self.tokenizer.encode(inputs)
    out = np.zeros((len(encoded), self.dim), np.float32)
    if not encoded:
      return out
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if show_progress_bar is None:
      show_progress_bar = len(batches) > 10
    from tqdm.auto import tqdm
    for idx in tqdm(batches, desc="encode", disable=not show_progress_bar):
      length = self.bucket(max(len(encoded[i].ids) for i in idx))
      # A short last batch is padded to the next power of two (not to batch_size): few shapes, little waste.
      rows = batch_size if len(idx) == batch_size else min(batch_size, 1 << (len(idx) - 1).bit_length())
      tokens = np.full((rows, length), self.tokenizer.pad_id, np.int32)
      mask = np.zeros((rows, length), np.int32)
      instr = np.zeros((rows,), np.int32)
      for row, i in enumerate(idx):
        ids = encoded[i].ids
        tokens[row, :len(ids)] = ids
        mask[row, :len(ids)] = 1
        instr[row] = encoded[i].instr_len
      emb = self._apply({"params": self.params}, tokens, instr, mask)
      out[idx] = np.asarray(emb[:len(idx)], np.float32)
    return out
