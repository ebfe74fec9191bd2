"""Which task and which of its records form global batch ``step``: a pure function of ``(seed, step)``.

The step's task is drawn with the configured rates (proportional / temperature / uniform) from per-block seeded
generators -- the same on every host; the task's rows come from a seeded permutation per (task, epoch) of that task,
``B`` rows per batch (optionally with no duplicate positive inside a batch). Tasks smaller than a global batch are
dropped and counted (a batch never holds a record twice: a positive would be its own negative). No tokenizer, JAX or TensorFlow needed.
"""
from __future__ import annotations

import functools
import hashlib
import json
from typing import Optional, Sequence

import numpy as np

from instructor_jax.core.errors import DataError

SAMPLING = ("proportional", "temperature", "uniform")
SMALL_TASKS = ("drop",)   # a task smaller than the batch cannot fill one without repeating a record
_BLOCK = 1024                      # steps per block of task draws


def task_rates(sizes: Sequence[int], sampling: str, temperature: float = 1.0) -> np.ndarray:
  """Sampling probabilities per task: proportional to size, to ``size ** (1 / temperature)``, or uniform."""
  sizes = np.asarray(sizes, np.float64)
  if sampling == "proportional":
    w = sizes
  elif sampling == "temperature":
    if not temperature > 0:
      raise ValueError(f"temperature must be > 0, got {temperature}")
    w = sizes ** (1.0 / temperature)
  elif sampling == "uniform":
    w = np.ones_like(sizes)
  else:
    raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
  return w / w.sum()


def _rng(*key: int) -> np.random.Generator:
  return np.random.default_rng([int(k) for k in key])


class Sampler:
  """Which task and which of its rows form global batch ``step``: ``batch(step) -> (task, rows [B])``.

  ``rows`` index into the task's records (``MediIndex.tasks[task].ids[rows]`` are source record ids).
  Deterministic in ``(seed, step)`` and independent of the host count.
  """

  def __init__(self, sizes: Sequence[int], global_batch_size: int, seed: int = 0, sampling: str = "proportional",
               temperature: float = 2.0, small_tasks: str = "drop", dedup_positives: bool = False,
               pos_keys: Optional[Sequence[np.ndarray]] = None, task_names: Optional[Sequence[str]] = None,
               rates: Optional[Sequence[float]] = None):
    if global_batch_size < 1:
      raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if small_tasks not in SMALL_TASKS:
      raise DataError(f"small_tasks must be 'drop', got {small_tasks!r}: a task smaller than the global batch "
                      f"cannot fill a batch without repeating a record (a positive would be its own negative)")
    if dedup_positives and pos_keys is None:
      raise ValueError("dedup_positives needs pos_keys")
    self.sizes = [int(s) for s in sizes]
    self.names = list(task_names) if task_names is not None else [str(i) for i in range(len(sizes))]
    self.B = int(global_batch_size)
    self.seed = int(seed)
    self.sampling, self.temperature, self.small_tasks = sampling, float(temperature), small_tasks
    self.pos_keys = pos_keys
    if rates is not None and (len(rates) != len(self.sizes) or not all(float(r) >= 0 for r in rates)):
      raise ValueError(f"rates: expected {len(self.sizes)} non-negative task rates, got {list(rates)}")
    self.given_rates = None if rates is None else [float(r) for r in rates]
    self.dedup = [False] * len(self.sizes)
    self.dropped: dict[str, str] = {}
    active = []
    for k, n in enumerate(self.sizes):
      dedup = bool(dedup_positives)
      if dedup:
        distinct = len(np.unique(pos_keys[k]))
        if distinct < self.B or not self._dedup_layout(k, 0).shape[0]:
          self.dropped[self.names[k]] = (f"{n} records, {distinct} distinct positives: no batch of "
                                         f"{self.B} without duplicate positives")
          continue
      elif n < self.B:
        self.dropped[self.names[k]] = f"{n} records < global batch {self.B}"
        continue
      self.dedup[k] = dedup
      active.append(k)
    if not active:
      why = "; ".join(f"{name}: {reason}" for name, reason in self.dropped.items())
      raise DataError(f"no task can fill a global batch of {self.B} without repeating a record ({why}); use a "
                      f"smaller global_batch_size or more data")
    self.active = np.asarray(active, np.int64)
    if self.given_rates is None:
      self.rates = task_rates([self.sizes[k] for k in active], sampling, temperature)
    else:  # a seqio Mixture's rates, renormalised over the tasks kept
      w = np.asarray([self.given_rates[k] for k in active], np.float64)
      if not w.sum() > 0:
        raise DataError(f"every task that can fill a global batch of {self.B} has rate 0")
      self.rates = w / w.sum()
    self._blocks: list[np.ndarray] = []    # task draws (indices into `active`) per block
    self._prefix: list[np.ndarray] = [np.zeros(len(active), np.int64)]  # occurrences before each block
    self._epoch_batches: dict[int, list[int]] = {}  # dedup tasks: batches per epoch

  def report(self) -> dict:
    return {"global_batch_size": self.B, "seed": self.seed, "sampling": self.sampling,
            "temperature": self.temperature, "small_tasks": self.small_tasks,
            "active_tasks": {self.names[k]: {"records": self.sizes[k], "rate": float(r)}
                             for k, r in zip(self.active, self.rates)},
            "dropped_tasks": dict(self.dropped)}

  def fingerprint(self) -> str:
    fields = [self.names, self.sizes, self.B, self.seed, self.sampling, self.temperature, self.small_tasks,
              self.dedup]
    blob = json.dumps(fields + ([self.given_rates] if self.given_rates is not None else []), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

  # -- which task -------------------------------------------------------------------------------------------------
  def _block(self, b: int) -> np.ndarray:
    while len(self._blocks) <= b:
      i = len(self._blocks)
      draws = _rng(self.seed, 0x7A5C, i).choice(len(self.active), size=_BLOCK, p=self.rates)
      self._blocks.append(draws.astype(np.int32))
      self._prefix.append(self._prefix[i] + np.bincount(draws, minlength=len(self.active)))
    return self._blocks[b]

  def _draw(self, step: int) -> tuple[int, int]:
    """(active index, occurrence number of that task before this step)."""
    b, i = divmod(step, _BLOCK)
    block = self._block(b)
    a = int(block[i])
    return a, int(self._prefix[b][a] + np.count_nonzero(block[:i] == a))

  def task_of(self, step: int) -> int:
    return int(self.active[self._draw(check_step(step))[0]])

  # -- which rows -------------------------------------------------------------------------------------------------
  @functools.lru_cache(maxsize=16)
  def _perm(self, k: int, epoch: int) -> np.ndarray:
    return _rng(self.seed, 0x9E3, k, epoch).permutation(self.sizes[k])

  @functools.lru_cache(maxsize=16)
  def _dedup_layout(self, k: int, epoch: int) -> np.ndarray:
    """Full batches ``[nb, B]`` of epoch ``epoch``: no positive twice in a batch.

    Records are taken in the epoch's permutation order; each goes to the first batch that is not full and comes after
    the last batch holding its positive (a union-find over "next non-full batch" keeps this O(n)). Records left in
    unfilled batches at the end are used in other epochs (each epoch has its own permutation).
    """
    keys = self.pos_keys[k]
    B = self.B
    members: list[list[int]] = []
    parent: list[int] = []            # parent[b] == b: batch b is open; else a pointer towards the next open one
    last: dict[int, int] = {}

    def find(b: int) -> int:
      root = b
      while root < len(parent) and parent[root] != root:
        root = parent[root]
      while b < len(parent) and parent[b] != b:  # path compression
        parent[b], b = root, parent[b]
      return root

    for idx in self._perm(k, epoch):
      key = int(keys[idx])
      b = find(last.get(key, -1) + 1)
      if b == len(members):
        members.append([])
        parent.append(b)
      members[b].append(int(idx))
      last[key] = b
      if len(members[b]) == B:
        parent[b] = b + 1
    full = [m for m in members if len(m) == B]
    return np.asarray(full, np.int64).reshape(len(full), B)

  def _rows(self, k: int, j: int) -> np.ndarray:
    """Rows of the ``j``-th batch drawn from task ``k``."""
    n, B = self.sizes[k], self.B
    if self.dedup[k]:
      counts = self._epoch_batches.setdefault(k, [])
      e, before = 0, 0
      while True:
        if e == len(counts):
          counts.append(self._dedup_layout(k, e).shape[0])
        if j < before + counts[e]:
          return self._dedup_layout(k, e)[j - before]
        before += counts[e]
        e += 1
    e, r = divmod(j, n // B)  # drop each epoch's remainder (a different one every epoch); n >= B
    return self._perm(k, e)[r * B:(r + 1) * B]

  def batch(self, step: int) -> tuple[int, np.ndarray]:
    """``(task id, rows [B])`` of global step ``step``."""
    a, j = self._draw(check_step(step))
    k = int(self.active[a])
    return k, np.asarray(self._rows(k, j), np.int64)

  def host_slice(self, rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    b = host_batch_size(self.B, process_count)
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return rows[process_index * b:(process_index + 1) * b]


def check_step(step) -> int:
  if isinstance(step, bool) or int(step) != step or step < 0:
    raise ValueError(f"step must be a non-negative integer, got {step!r}")
  return int(step)


def host_batch_size(global_batch_size: int, process_count: int) -> int:
  if process_count < 1 or global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by process_count {process_count}")
  return global_batch_size // process_count

