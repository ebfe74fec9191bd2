"""Sequence packing for the training step: the ``B * (2 + N)`` sequences of a step share rows of one length.

``Packer.layout`` lays them out best-fit-decreasing (``best_fit_decreasing``, also the encoder's packer), whole and
contiguous, at most ``max_segments`` per row. Each step picks its row length from a short ladder (``lengths``, e.g.
64 / 128 / 256 / 512: attention costs L^2 per row, so a step of short texts gets short rows) and its row count from
a fixed ladder per length (``row_ladder``), whichever (rows, length) computes least (``cost``), so a run compiles a
bounded set of step shapes. The first thing to know: the layout is a pure function of the lengths, so every host
computes the same one and ``Packer.build`` fills only its own rows (``tokens``, ``segment_ids``, ``pool_ids``,
``slot_seq``). Host-side numpy, no JAX; WORKSPACE.md ("Packing") has the derivation of the ladders and the masks.
"""
from __future__ import annotations

import bisect
import dataclasses
from typing import Callable, Sequence

import numpy as np

from instructor_jax.core import errors

PACK_KEYS = ("tokens", "segment_ids", "pool_ids", "slot_seq")


PackingError = errors.ConfigError  # core/errors.py


def best_fit_decreasing(lengths: Sequence[int], row_length: int, max_segments: int) -> list[list[int]]:
  """Rows of sequence indices: longest first, each into the open row with the least room that still fits it.

  Ties (equal lengths, equal room) go to the lower index, so the result depends only on ``lengths``. O(n log n)
  comparisons (open rows kept sorted by free space).
  """
  lengths = np.asarray(lengths, np.int64)
  if lengths.size and (lengths.min() < 1 or lengths.max() > row_length):
    bad = int(np.flatnonzero((lengths < 1) | (lengths > row_length))[0])
    raise PackingError(f"sequence {bad} has length {int(lengths[bad])}, outside [1, {row_length}]")
  order = np.argsort(-lengths, kind="stable")
  rows: list[list[int]] = []
  free: list[int] = []
  width = len(lengths) + 1
  open_keys: list[int] = []           # free * width + row, sorted: the first key >= n * width fits best
  for i in order.tolist():
    n = int(lengths[i])
    at = bisect.bisect_left(open_keys, n * width)
    if at < len(open_keys):
      r = open_keys.pop(at) % width
    else:
      r = len(rows)
      rows.append([])
      free.append(row_length)
    rows[r].append(i)
    free[r] -= n
    if len(rows[r]) < max_segments and free[r] > 0:
      bisect.insort(open_keys, free[r] * width + r)
  return rows


def _round_units(m: int, per_octave: int) -> int:
  """``m`` rounded up to the ladder: every integer up to ``per_octave``, then ``per_octave`` evenly spaced values per
  doubling (steps of ``2 ** (e - 1)`` in ``(per_octave * 2 ** (e - 1), per_octave * 2 ** e]``)."""
  e = 0
  while per_octave << e < m:
    e += 1
  step = 1 << max(e - 1, 0)
  return -(-m // step) * step


def row_ladder(row_multiple: int, max_rows: int, buckets_per_octave: int, max_chunk_rows: int = 0) -> tuple:
  """Every row count a step may have, ascending, up to the first size that holds ``max_rows`` rows.

  Sizes are ``m * row_multiple`` with ``m`` on the ladder of ``_round_units`` (each size at most
  ``1 / buckets_per_octave`` above the previous one). With ``max_chunk_rows`` a size is raised to split into
  ``k = ceil(size / max_chunk_rows)`` equal chunks that are multiples of ``row_multiple`` (still ``<= max_chunk_rows``,
  which is itself a multiple of ``row_multiple``).
  """
  if row_multiple < 1 or buckets_per_octave < 1 or max_rows < 1:
    raise ValueError("row_multiple, buckets_per_octave and max_rows must be >= 1")
  if max_chunk_rows and max_chunk_rows % row_multiple:
    raise ValueError(f"max_chunk_rows {max_chunk_rows} is not a multiple of the row multiple {row_multiple}")
  sizes, m = [], 1
  while not sizes or sizes[-1] < max_rows:
    size = _round_units(m, buckets_per_octave) * row_multiple
    if max_chunk_rows:
      k = -(-size // max_chunk_rows)
      size = -(-size // (k * row_multiple)) * k * row_multiple
    if not sizes or size > sizes[-1]:
      sizes.append(size)
    m = size // row_multiple + 1
  return tuple(sizes)


def chunks_of(rows: int, max_chunk_rows: int) -> int:
  """Number of gradient-cache chunks of a ``rows`` step (equal chunks of at most ``max_chunk_rows`` rows)."""
  return -(-rows // max_chunk_rows) if max_chunk_rows else 1


def length_ladder(pack_length: int, spec: str = "auto", shortest: int = 64) -> tuple:
  """The row lengths a step may use, ascending, ending at ``pack_length``.

  ``spec``: ``"auto"`` = the powers of two from ``shortest`` below ``pack_length``, then ``pack_length`` (512 ->
  64, 128, 256, 512); ``"off"`` = ``pack_length`` only; or comma-separated lengths (``pack_length`` is added).
  """
  spec = str(spec).strip().lower()
  if spec == "off":
    return (int(pack_length),)
  if spec == "auto":
    out, n = [], int(shortest)
    while n < pack_length:
      out.append(n)
      n *= 2
  else:
    try:
      out = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
      raise PackingError(f"pack lengths {spec!r}: expected 'auto', 'off' or comma-separated integers") from None
    if any(n < 2 or n > pack_length for n in out):
      raise PackingError(f"pack lengths {spec!r}: every length must be in [2, pack_length={pack_length}]")
  return tuple(sorted(set(out) | {int(pack_length)}))


def cost(rows: int, length: int, attention_tokens: float) -> float:
  """Relative compute of a step of ``rows`` rows of ``length`` tokens: ``rows * L * (1 + L / attention_tokens)``
  (per-token matmuls plus attention's ``L^2`` per row; ``attention_tokens`` is the row length at which both are
  equal; 0 = count tokens only)."""
  return rows * length * (1.0 + (length / attention_tokens if attention_tokens else 0.0))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where every sequence of a step goes: ``rows[r]`` lists the sequence indices of row r in order; ``num_rows``
  is the ladder size (rows past ``len(rows)`` are padding); ``length`` the step's row length."""
  rows: tuple
  num_rows: int
  lengths: np.ndarray
  length: int = 0

  @property
  def real_tokens(self) -> int:
    return int(self.lengths.sum())


class Packer:
  """Packs the ``num_seqs`` sequences of one step into a ladder size of rows of a ladder length.

  ``pack_length``: the longest row (every sequence fits it); ``lengths``: the row lengths a step may use
  (``length_ladder``; default ``pack_length`` only); ``row_multiple``: rows divide evenly over this many (batch
  shards x processes); ``buckets_per_octave``: row sizes per doubling at ``pack_length``, halved with each halving
  of the length down to 4 (a coarser ladder for short rows bounds the compiled variants; below 4 the rounding
  wasted up to a third of a short-text step);
  ``attention_tokens``: ``cost``'s weight of attention; ``max_chunk_rows``: gradient-cache chunk bound (0 = off);
  ``num_processes`` / ``process_index``: which rows this host builds.
  """

  def __init__(self, pack_length: int, num_seqs: int, row_multiple: int = 1, max_segments: int = 0,
               buckets_per_octave: int = 8, max_chunk_rows: int = 0, process_index: int = 0,
               num_processes: int = 1, lengths: Sequence[int] = (), attention_tokens: float = 0.0):
    if pack_length < 2:
      raise ValueError(f"pack_length must be >= 2, got {pack_length}")
    if row_multiple % num_processes:
      raise ValueError(f"row_multiple {row_multiple} is not a multiple of the {num_processes} processes")
    self.pack_length = int(pack_length)
    self.lengths = tuple(sorted({int(n) for n in lengths} | {self.pack_length}))
    if self.lengths[0] < 2 or self.lengths[-1] != self.pack_length:
      raise ValueError(f"row lengths {self.lengths} must lie in [2, pack_length={self.pack_length}]")
    self.max_segments = int(max_segments) or max(1, self.pack_length // 8)
    self.num_seqs = int(num_seqs)
    self.row_multiple = int(row_multiple)
    self.max_chunk_rows = int(max_chunk_rows)
    self.attention_tokens = float(attention_tokens)
    self.process_index, self.num_processes = int(process_index), int(num_processes)
    # Worst case: every sequence alone in its row. One row ladder per length, coarser for shorter rows.
    self.ladders = {}
    for n in self.lengths:
      per_octave = min(int(buckets_per_octave), max(4, int(buckets_per_octave) * n // self.pack_length))
      self.ladders[n] = row_ladder(self.row_multiple, self.num_seqs, per_octave, self.max_chunk_rows)
    self.ladder = self.ladders[self.pack_length]

  @property
  def shapes(self) -> list:
    """Every ``(rows, length)`` a step may have (the bound on compiled variants)."""
    return [(r, n) for n in self.lengths for r in self.ladders[n]]

  def describe(self) -> str:
    per = "; ".join(f"{n}: {list(self.ladders[n])}" for n in self.lengths)
    return (f"packing: {self.num_seqs} sequences per step into rows of {'/'.join(map(str, self.lengths))} tokens "
            f"(at most {self.max_segments} per row); {len(self.shapes)} step shapes, rows per length {per}")

  def rows_for(self, needed: int, length: int | None = None) -> int:
    ladder = self.ladders[self.pack_length if length is None else length]
    at = bisect.bisect_left(ladder, needed)
    if at == len(ladder):
      raise PackingError(f"{needed} rows needed, more than the largest size {ladder[-1]}")
    return ladder[at]

  def layout(self, lengths: Sequence[int], where: str = "") -> Layout:
    """The layout of one step's sequences (``lengths [num_seqs]``, each in ``[1, pack_length]``): of the ladder
    lengths that hold the longest sequence, the one whose (rows, length) ``cost`` is least (ties: the shorter)."""
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    if lengths.size != self.num_seqs:
      raise PackingError(f"{where}expected {self.num_seqs} sequences, got {lengths.size}")
    longest = int(lengths.max()) if lengths.size else 1
    best = None
    try:
      for n in [n for n in self.lengths if n >= longest] or [self.pack_length]:
        rows = best_fit_decreasing(lengths, n, self.max_segments)
        num_rows = self.rows_for(len(rows), n)
        c = cost(num_rows, n, self.attention_tokens)
        if best is None or c < best[0]:
          best = (c, rows, num_rows, n)
    except PackingError as e:
      raise PackingError(f"{where}{e}") from None
    _, rows, num_rows, n = best
    placed = sum(len(r) for r in rows)
    if placed != self.num_seqs:  # cannot happen; never train on a step that lost a sequence
      raise PackingError(f"{where}placed {placed} of {self.num_seqs} sequences")
    return Layout(tuple(tuple(r) for r in rows), num_rows, lengths, n)

  def host_rows(self, num_rows: int) -> range:
    per = num_rows // self.num_processes
    return range(self.process_index * per, (self.process_index + 1) * per)

  def build(self, layout: Layout, fetch: Callable[[Sequence[int]], Sequence[tuple[np.ndarray, int]]]) -> dict:
    """This host's rows of ``layout``: ``tokens``, ``segment_ids``, ``pool_ids`` ``[R / P, layout.length]`` and
    ``slot_seq [R / P, max_segments]`` (int32). ``fetch(seq_indices)`` returns ``(ids, instr_len)`` per sequence."""
    mine = self.host_rows(layout.num_rows)
    n_rows, length, smax = len(mine), layout.length or self.pack_length, self.max_segments
    tokens = np.zeros((n_rows, length), np.int32)
    segment_ids = np.zeros((n_rows, length), np.int32)
    pool_ids = np.zeros((n_rows, length), np.int32)
    slot_seq = np.full((n_rows, smax), self.num_seqs, np.int32)
    wanted = [r for r in mine if r < len(layout.rows)]
    seqs = [s for r in wanted for s in layout.rows[r]]
    got = dict(zip(seqs, fetch(seqs))) if seqs else {}
    for r in wanted:
      local, start = r - mine.start, 0
      for s, seq in enumerate(layout.rows[r]):
        ids, instr = got[seq]
        n = len(ids)
        if n != layout.lengths[seq]:
          raise PackingError(f"sequence {seq}: {n} tokens, the layout expected {int(layout.lengths[seq])}")
        tokens[local, start:start + n] = ids
        segment_ids[local, start:start + n] = s + 1
        pool_ids[local, start + min(int(instr), n):start + n] = s + 1
        slot_seq[local, s] = seq
        start += n
    return dict(tokens=tokens, segment_ids=segment_ids, pool_ids=pool_ids, slot_seq=slot_seq)


def padded_lengths(batch: dict, pad_id: int = 0) -> tuple[np.ndarray, Callable]:
  """For a padded global batch (the stream contract): ``lengths [B * (2 + N)]`` and a ``fetch`` for ``Packer.build``.

  Sequence ``b * (2 + N) + t``: ``t = 0`` the query, 1 the positive, 2.. the negatives. Lengths count the non-pad
  tokens (padding is trailing).
  """
  q, p, n = batch["query_tokens"], batch["pos_tokens"], batch["neg_tokens"]
  num_neg = n.shape[1]
  seqs = [(q, batch["query_instr_len"]), (p, batch["pos_instr_len"])]
  seqs += [(n[:, j], batch["neg_instr_len"][:, j]) for j in range(num_neg)]
  lengths = np.stack([np.sum(t != pad_id, axis=-1) for t, _ in seqs], axis=1).reshape(-1)
  width = 2 + num_neg

  def fetch(indices):
    out = []
    for i in indices:
      tok, il = seqs[i % width]
      row = i // width
      out.append((tok[row, :lengths[i]], int(il[row])))
    return out

  return lengths, fetch
