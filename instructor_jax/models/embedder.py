"""INSTRUCTOR embeddings: encoder -> mean pool over the text tokens -> Dense (no bias) -> L2 normalise.

``InstructorModel`` is the Flax module of both inference (``Instructor.encode``) and training; ``Instructor``
wraps a loaded model (``loader.load``) and its tokenizer behind ``from_pretrained`` / ``encode``.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Iterable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from instructor_jax.core.errors import UserError
from instructor_jax.data.packing import best_fit_decreasing
from instructor_jax.data.tokenization import DEFAULT_MAX_LENGTH, Input, Tokenizer
from instructor_jax.models import loader, registry

# Padded lengths used by `encode`: inputs are padded up to the next bucket (capped by max_length), so the number of
# compiled shapes stays small whatever the data.
BUCKETS = (16, 32, 64, 128, 256, 512)
# Inputs of at most PACK_LENGTH tokens are packed several to a row of PACK_LENGTH (attention block-diagonal per
# input): the encoder computes ~the real tokens instead of bucket-padded ones (see BENCHMARKS.md).
PACK_LENGTH = 128


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
  """``x / max(||x||, eps)`` as ``torch.nn.functional.normalize``, written ``x / sqrt(max(||x||^2, eps^2))`` (the same
  values) so that a zero vector, e.g. an empty packed slot, has a zero gradient instead of ``0 * inf = NaN``."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def truncate(emb: np.ndarray, dim: int | None) -> np.ndarray:
  """Matryoshka truncation: the first ``dim`` dimensions of each row, re-normalised to unit length (what the loss
  scores with ``loss.matryoshka_dims``); ``dim`` None: ``emb`` unchanged."""
  if dim is None:
    return emb
  out = np.asarray(emb, np.float32)[..., :dim]
  return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)


def check_truncate_dim(dim, width: int, what: str = "truncate_dim") -> None:
  """A one-line ``UserError`` unless ``dim`` is None or an integer in ``1..width``."""
  if dim is None:
    return
  if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= int(dim) <= width:
    raise TruncateDimError(f"{what} {dim!r}: must be an integer from 1 to the model's embedding size {width}")


class InstructorModel(nn.Module):
  """``(tokens [B, L], instr_len [B], mask [B, L] | None) -> embeddings [B, D]`` (fp32).

  ``instr_len`` is the pooling offset ``n`` of the instruction rule (see ``tokenization.py``); the outputs are
  unit vectors when ``normalize``. ``mask`` defaults to ``tokens != pad_id``. The Dense layer is absent when
  ``out_features`` is None (the identity, e.g. all-MiniLM-L6-v2). The encoder (param collection ``encoder``) is the
  config's backbone's ``Encoder`` (``registry.py``); everything after the encoder is the same for all backbones.
  """
  config: registry.Config
  out_features: Optional[int] = None
  normalize: bool = True
  pad_id: int = 0

  @nn.compact
  def __call__(self, tokens, instr_len, mask=None, deterministic: bool = True, segment_ids=None, pool=None):
    """Packed rows: ``segment_ids [B, L]`` (1.. per input, 0 = padding) and ``pool [B, S, L]`` (the pooling
    positions of each of up to S inputs per row; ``instr_len`` unused) give embeddings ``[B, S, D]``."""
    if mask is None:
      mask = tokens != self.pad_id
    encoder = registry.backbone_of(self.config).Encoder
    hidden = encoder(self.config, name="encoder")(tokens, mask, deterministic, segment_ids=segment_ids)
    if pool is None:
      pooled = mean_pool(hidden, pool_mask(mask, instr_len))
      pooled = nn.with_logical_constraint(pooled, ("batch", "embed"))
    else:
      w = pool.astype(jnp.float32)
      pooled = jnp.einsum("bsl,bld->bsd", w, hidden.astype(jnp.float32))
      pooled = pooled / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-9)
      pooled = nn.with_logical_constraint(pooled, ("batch", None, "embed"))
    if self.out_features is not None:
      cfg = self.config
      pooled = nn.Dense(
          self.out_features, use_bias=False, dtype=jnp.float32, param_dtype=cfg.param_dtype, name="dense",
          kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")))(pooled)
    return l2_normalize(pooled) if self.normalize else pooled


class Instructor:
  """A loaded INSTRUCTOR / GTR / T5 / BERT checkpoint: ``Instructor.from_pretrained(dir).encode(pairs)``."""

  def __init__(self, model: InstructorModel, params: Any, tokenizer: Tokenizer, source: str | None = None):
    self.model = model
    self.params = params
    self.tokenizer = tokenizer
    self.source = source
    self._apply = jax.jit(functools.partial(self.model.apply, deterministic=True))

  @classmethod
  def from_pretrained(cls, path_or_hub_id: str | os.PathLike, dtype=jnp.float32, max_length: int = DEFAULT_MAX_LENGTH,
                      param_dtype=jnp.float32) -> "Instructor":
    """Loads the INSTRUCTOR, sentence-transformers (GTR, MiniLM, ...) or plain T5 / BERT layout from a folder or a
    hub id, or a training workdir / ``WORKDIR/STEP`` (its verified parameters and tokenizer); ``loader.load``.
    ``max_length`` is capped by the backbone (BERT: ``max_position_embeddings``)."""
    return cls.from_loaded(loader.load(path_or_hub_id, params_dtype=param_dtype), dtype=dtype,
                           max_length=max_length, param_dtype=param_dtype)

  @classmethod
  def from_loaded(cls, loaded: "loader.Loaded", dtype=jnp.float32, max_length: int = DEFAULT_MAX_LENGTH,
                  param_dtype=jnp.float32) -> "Instructor":
    """The encoder of a ``loader.load`` result, computing in ``dtype`` with ``param_dtype`` parameters."""
    cfg = loaded.backbone.with_overrides(loaded.config, dtype=dtype, param_dtype=param_dtype)
    tokenizer = Tokenizer.from_pretrained(loaded.tokenizer_dir, max_length=loaded.max_length(max_length))
    model = InstructorModel(cfg, out_features=loaded.out_features, normalize=loaded.normalize,
                            pad_id=tokenizer.pad_id)
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), dtype=param_dtype), loaded.params)
    return cls(model, params, tokenizer, source=loaded.source)

  @property
  def max_length(self) -> int:
    return self.tokenizer.max_length

  @property
  def dim(self) -> int:
    return self.model.out_features or self.model.config.d_model

  def bucket(self, length: int) -> int:
    """The padded length of an input of ``length`` tokens: the next of ``BUCKETS``, beyond them the next multiple
    of the largest bucket; never more than ``max_length``."""
    for b in BUCKETS:
      if length <= b:
        return min(b, self.max_length)
    return min(-(-length // BUCKETS[-1]) * BUCKETS[-1], self.max_length)

  def check_memory(self, rows: int, length: int) -> None:
    """Fails before allocating when one call's attention scores (fp32 ``[rows, heads, L, L]``, twice: scores and
    weights) would not fit in the device's memory."""
    need = 2 * rows * self.model.config.num_heads * length * length * 4
    have = available_bytes()
    if have and need > have:
      raise MemoryBudgetError(
          f"inputs of {length} tokens (max_length {self.max_length}): one call of {rows} rows needs {need / 2**30:.1f} "
          f"GiB of attention scores (2 x {rows} x {self.model.config.num_heads} heads x {length}^2 x 4 bytes), more "
          f"than the {have / 2**30:.1f} GiB available on {jax.devices()[0].device_kind}; use a smaller max_length "
          f"or batch_size")

  def encode(self, inputs: Iterable[Input], batch_size: int = 32, show_progress_bar: bool | None = None,
             pack: bool = True, truncate_dim: int | None = None) -> np.ndarray:
    """Embeds strings and ``[instruction, text]`` pairs; float32 ``[N, D]`` in input order.

    ``truncate_dim=k`` (Matryoshka): ``[N, k]``, the first k dimensions re-normalised to unit length (``truncate``).

    Inputs are sorted by token length. With ``pack`` (default), inputs of at most ``PACK_LENGTH`` tokens are packed
    best-fit into rows of ``PACK_LENGTH`` tokens, ``max(1, batch_size * 32 // PACK_LENGTH)`` rows per call (the
    token budget of ``batch_size`` rows of 32); longer inputs (and all of them without ``pack``) are padded to
    bucket lengths with ``batch_size`` rows. A short last call is padded to a power of two rows, so the number of
    compiled shapes stays bounded. Every call is dispatched before any result is fetched.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_truncate_dim(truncate_dim, self.dim)
    if truncate_dim is not None:
      return truncate(self.encode(inputs, batch_size, show_progress_bar, pack), int(truncate_dim))
    if isinstance(inputs, str):
      raise TypeError("encode takes a list of inputs; wrap a single string in a list")
    encoded = self.tokenizer.encode(inputs)
    out = np.zeros((len(encoded), self.dim), np.float32)
    if not encoded:
      return out
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
    pad = min(PACK_LENGTH, self.max_length) if pack else 0
    short = [i for i in order if len(encoded[i].ids) <= pad]
    packed = [[short[j] for j in row]
              for row in best_fit_decreasing([len(encoded[i].ids) for i in short], pad, max(1, pad // 8))]
    per_call = max(1, batch_size * 32 // pad) if pad else 1
    calls = [("packed", packed[i:i + per_call], per_call) for i in range(0, len(packed), per_call)]
    rest = [i for i in order if len(encoded[i].ids) > pad]
    calls += [("bucket", rest[i:i + batch_size], batch_size) for i in range(0, len(rest), batch_size)]
    if rest:  # the longest inputs come first: their call is the largest
      self.check_memory(min(batch_size, len(rest)), self.bucket(len(encoded[rest[0]].ids)))
    if show_progress_bar is None:
      show_progress_bar = len(calls) > 10
    from tqdm.auto import tqdm
    pending = []
    for kind, idx, full in tqdm(calls, desc="encode", disable=not show_progress_bar):
      # A short last call is padded to the next power of two rows (not to full): few shapes, little waste.
      rows = full if len(idx) == full else min(full, 1 << (len(idx) - 1).bit_length())
      length = pad if kind == "packed" else self.bucket(max(len(encoded[i].ids) for i in idx))
      if kind == "bucket":
        tokens, mask, instr = bucket_arrays(encoded, idx, rows, length, self.tokenizer.pad_id)
        emb = self._apply({"params": self.params}, tokens, instr, mask)
        where = [(i, row) for row, i in enumerate(idx)]
      else:
        tokens, mask, seg, pool, where = packed_arrays(encoded, idx, rows, length, max(1, pad // 8),
                                                       self.tokenizer.pad_id)
        emb = self._apply({"params": self.params}, tokens, np.zeros((rows,), np.int32), mask, segment_ids=seg,
                          pool=pool)
      pending.append((emb, where))
      while len(pending) > _IN_FLIGHT:  # bounded: a huge corpus must not pile up on the device
        _fetch(pending.pop(0), out)
    for p in pending:
      _fetch(p, out)
    return out


_IN_FLIGHT = 4  # encode calls dispatched ahead of the one being fetched


class TruncateDimError(UserError, ValueError):
  """A Matryoshka ``truncate_dim`` outside ``1..`` the embedding size."""


class MemoryBudgetError(UserError, MemoryError):
  """An encode call that cannot fit in memory (raised before anything is allocated)."""


def available_bytes() -> int:
  """Free memory of the default device: the accelerator's limit minus what is in use, or the host's available RAM
  on CPU (``/proc/meminfo``); 0 when unknown."""
  stats = jax.devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def bucket_arrays(encoded, idx: Sequence[int], rows: int, length: int, pad_id: int):
  """One input per row: ``tokens``, ``mask`` ``[rows, length]`` and ``instr_len [rows]`` for ``encoded[idx]``."""
  tokens = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), np.int32)
  instr = np.zeros((rows,), np.int32)
  for row, i in enumerate(idx):
    ids = encoded[i].ids
    tokens[row, :len(ids)] = ids
    mask[row, :len(ids)] = 1
    instr[row] = encoded[i].instr_len
  return tokens, mask, instr


def packed_arrays(encoded, packed_rows: Sequence[Sequence[int]], rows: int, length: int, max_segments: int,
                  pad_id: int):
  """Several inputs per row (``packed_rows[r]`` lists row r's inputs): ``tokens``, ``mask``, 1-based
  ``segment_ids`` ``[rows, length]``, the per-input pooling mask ``pool [rows, max_segments, length]`` and
  ``where``: ``(input index, (row, segment))`` of every input."""
  tokens = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), np.int32)
  seg = np.zeros((rows, length), np.int32)
  pool = np.zeros((rows, max_segments, length), np.float32)
  where = []
  for row, members in enumerate(packed_rows):
    start = 0
    for s, i in enumerate(members):
      ids = encoded[i].ids
      tokens[row, start:start + len(ids)] = ids
      mask[row, start:start + len(ids)] = 1
      seg[row, start:start + len(ids)] = s + 1
      pool[row, s, start + encoded[i].instr_len:start + len(ids)] = 1.0
      where.append((i, (row, s)))
      start += len(ids)
  return tokens, mask, seg, pool, where


def _fetch(pending, out: np.ndarray) -> None:
  emb, where = pending
  emb = np.asarray(emb, np.float32)
  for i, at in where:
    out[i] = emb[at]
