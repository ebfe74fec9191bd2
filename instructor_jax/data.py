"""Training batches from MEDI: tokenise once, one task per global batch, host slices, exact resume.

How one batch is made (``TrainStream.get(step)``):

1. **Load** (once, ``from_config``): records are streamed from the MEDI file (``medi.read_medi``: JSON array or JSON
   lines, validated) or from prepared TFDS shards (``tasks/medi_tfds.py``), grouped by task (``task_names`` sorted,
   index = ``task`` id) and tokenised *once* in large batches by ``Featurizer`` -- the single implementation of
   "``instruction + text`` with ``</s>``, truncated per side, plus the instruction length ``n``"; it uses
   ``tokenization.Tokenizer`` / ``join_instruction`` (the embedder's rule, same ids and ``n`` as
   ``Tokenizer.encode``) and is shared with the seqio tasks in ``tasks/medi.py``.
   Token ids are kept as compact ragged ``uint16`` arrays per task.
2. **Sample** (``Sampler``, a pure function of ``(seed, step)``, no tokenizer needed): the step's task is drawn with
   the configured rates (proportional / temperature / uniform) from per-block seeded generators -- the same on every
   host; the task's rows come from a seeded permutation per (task, epoch) of that task, ``B`` rows per batch
   (optionally with no duplicate positive inside a batch). Tasks smaller than a global batch are dropped (reported)
   or sampled with repetition.
3. **Slice**: host ``i`` of ``P`` takes rows ``[i*B/P, (i+1)*B/P)`` of the global batch.
4. **Pad** (``pad_rows``, the feature converter): fixed lengths ``Lq = max_query_length``, ``Ld = max_doc_length``,
   pad id 0; every row already ends with its tokenizer's closing token (T5 ``</s>``, BERT ``[SEP]``).

Because a batch is a pure function of ``(seed, step)``, resume is exact by construction: ``state_dict()`` stores the
next step (plus a fingerprint of the data and sampling settings) and ``load_state_dict`` restores it.

``python -m instructor_jax.data preview --medi FILE --global-batch B --steps S [--process-count P --process-index I]
[--start-step K] --json`` prints, per step, the task and the source record ids of this host's rows (JSON lines); it
imports neither JAX nor TensorFlow. ``python -m instructor_jax.data prepare --medi FILE --data-dir DIR`` converts a
MEDI file to sharded TFRecords with the TFDS builder.
"""
from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import itertools
import json
import logging
import os
import sys
import threading
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from instructor_jax import medi
from instructor_jax.tokenization import Encoded, Tokenizer, join_instruction

log = logging.getLogger(__name__)

PAD_ID = 0
SAMPLING = ("proportional", "temperature", "uniform")
SMALL_TASKS = ("drop", "repeat")
_BLOCK = 1024                      # steps per block of task draws
_TOKENIZE_CHUNK = 2048             # records per tokenizer call while loading

DEFAULTS = dict(medi_path="", tfds_data_dir="", max_query_length=512, max_doc_length=512, num_negatives=1,
                sampling="proportional", temperature=2.0, small_tasks="drop", dedup_positives=False, strict=False,
                skip_invalid=False)


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation: the one implementation shared with the seqio tasks


class Featurizer:
  """``(query, pos, negs)`` pairs -> token ids with ``</s>`` and instruction lengths, per side.

  Same result as ``Tokenizer.encode`` (``join_instruction``, truncation keeping ``</s>``, the ``n <= 1 -> 0`` rule)
  with ``max_query_length`` for queries and ``max_doc_length`` for positives and negatives.
  """

  def __init__(self, tokenizer: Tokenizer | str, max_query_length: int, max_doc_length: int, num_negatives: int):
    if isinstance(tokenizer, (str, os.PathLike)):
      tokenizer = Tokenizer.from_pretrained(tokenizer, max_length=max_doc_length)
    if num_negatives < 0:
      raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    self.query_tok = Tokenizer(tokenizer.hf, max_length=max_query_length)
    self.doc_tok = Tokenizer(tokenizer.hf, max_length=max_doc_length)
    self.max_query_length, self.max_doc_length = int(max_query_length), int(max_doc_length)
    self.num_negatives = int(num_negatives)
    self._n_cache: dict[int, dict[str, int]] = {}
    if tokenizer.pad_id != PAD_ID:  # rows are padded with 0 and the model masks `tokens != 0` (T5 and BERT)
      raise ValueError(f"expected a tokenizer with pad id {PAD_ID}, got {tokenizer.pad_id}")

  def check_negatives(self, rec: medi.Record) -> None:
    if len(rec.neg) < self.num_negatives:
      raise medi.MediError("<records>", rec.line, rec.index, "bad_side",
                           f"num_negatives={self.num_negatives} but the record has {len(rec.neg)} negative(s)")

  def __call__(self, records: Sequence[medi.Record]) -> dict[str, list]:
    """Returns ``{'query': [Encoded], 'pos': [Encoded], 'neg': [[Encoded] * num_negatives]}``."""
    for r in records:
      self.check_negatives(r)
    q = self._encode(self.query_tok, [r.query for r in records])
    p = self._encode(self.doc_tok, [r.pos for r in records])
    k = self.num_negatives
    flat = self._encode(self.doc_tok, [n for r in records for n in r.neg[:k]])
    neg = [flat[i * k:(i + 1) * k] for i in range(len(records))]
    return {"query": q, "pos": p, "neg": neg}

  def _encode(self, tok: Tokenizer, pairs: Sequence[medi.Pair]) -> list[Encoded]:
    """``tok.encode(pairs)``, with the instruction length computed once per distinct instruction.

    MEDI repeats a handful of instructions per task, so this halves the tokenizer work; the ids and ``n`` are
    exactly ``Tokenizer.encode``'s (tests compare them).
    """
    cache = self._n_cache.setdefault(tok.max_length, {})
    new = sorted({p.instruction for p in pairs} - cache.keys())
    for instr, e in zip(new, tok.encode([[i, "x"] for i in new])):
      cache[instr] = e.instr_len
    ids = tok.encode_texts([join_instruction(p.instruction, p.text) for p in pairs])
    return [Encoded(tuple(x), cache[p.instruction]) for x, p in zip(ids, pairs)]


class _Ragged:
  """Append-only ragged int rows, stored as one array plus offsets (``uint16`` while ids < 65536, else int32)."""

  def __init__(self):
    self._parts, self._lens, self._n = [], [], []
    self.data = self.offsets = self.instr_len = None

  def extend(self, encoded: Sequence) -> None:
    """Appends a list of ``Encoded`` (one array per call, so call it with many rows at once)."""
    if not encoded:
      return
    lens = np.fromiter((len(e.ids) for e in encoded), np.int64, len(encoded))
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encoded), np.int64, int(lens.sum()))
    # uint16 halves host memory for T5-sized vocabularies; larger vocabularies (mT5...) keep int32.
    self._parts.append(ids.astype(np.uint16 if ids.max(initial=0) < 65536 else np.int32))
    self._lens.append(lens)
    self._n.append(np.fromiter((e.instr_len for e in encoded), np.int32, len(encoded)))

  def finish(self) -> "_Ragged":
    self.data = np.concatenate(self._parts) if self._parts else np.zeros((0,), np.uint16)
    lens = np.concatenate(self._lens) if self._lens else np.zeros((0,), np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    self.instr_len = np.concatenate(self._n) if self._n else np.zeros((0,), np.int32)
    self._parts, self._lens, self._n = [], [], []
    return self

  def row(self, i: int) -> np.ndarray:
    return self.data[self.offsets[i]:self.offsets[i + 1]]


def pad_rows(rows: Sequence[np.ndarray], length: int) -> np.ndarray:
  """The feature converter's padding: ``int32 [len(rows), length]``, pad id 0 (rows are already truncated)."""
  out = np.full((len(rows), length), PAD_ID, np.int32)
  for i, r in enumerate(rows):
    if len(r) > length:
      raise ValueError(f"row of length {len(r)} exceeds the padded length {length}")
    out[i, :len(r)] = r
  return out


# ---------------------------------------------------------------------------------------------------------------
# Loading: records grouped per task


class TaskData:
  """Per task: source record ids, positive-text keys (for dedup) and, when tokenised, ragged token ids."""

  def __init__(self):
    self.ids: list[int] = []
    self.pos_keys: list[int] = []
    self.query = _Ragged()
    self.pos = _Ragged()
    self.neg: list[_Ragged] = []

  def finish(self) -> None:
    self.ids = np.asarray(self.ids, np.int64)
    self.pos_keys = np.asarray(self.pos_keys, np.int64)
    self.query.finish()
    self.pos.finish()
    for n in self.neg:
      n.finish()


class MediIndex:
  """All valid records grouped per task (sorted task names), optionally tokenised."""

  def __init__(self, tasks: Mapping[str, TaskData], report: medi.Report, source: str, tokenized: bool):
    self.task_names = sorted(tasks)
    self.tasks = [tasks[n] for n in self.task_names]
    self.report = report
    self.source = source
    self.tokenized = tokenized

  @property
  def sizes(self) -> list[int]:
    return [len(t.ids) for t in self.tasks]

  @classmethod
  def build(cls, records: Iterable[medi.Record], report: medi.Report, source: str,
            featurizer: Optional[Featurizer] = None) -> "MediIndex":
    tasks: dict[str, TaskData] = collections.defaultdict(TaskData)
    pending: list[tuple[TaskData, medi.Record]] = []

    def flush():
      if not pending:
        return
      feats = featurizer([r for _, r in pending])
      rows: dict[int, tuple[TaskData, list[int]]] = {}
      for i, (td, _) in enumerate(pending):
        rows.setdefault(id(td), (td, []))[1].append(i)
      for td, idx in rows.values():  # one array per task per chunk
        td.query.extend([feats["query"][i] for i in idx])
        td.pos.extend([feats["pos"][i] for i in idx])
        if not td.neg:
          td.neg = [_Ragged() for _ in range(featurizer.num_negatives)]
        for j in range(featurizer.num_negatives):
          td.neg[j].extend([feats["neg"][i][j] for i in idx])
      pending.clear()

    for rec in records:
      td = tasks[rec.task]
      td.ids.append(rec.index)
      td.pos_keys.append(medi.stable_hash(join_instruction(rec.pos.instruction, rec.pos.text)))
      if featurizer is not None:
        try:
          featurizer.check_negatives(rec)
        except medi.MediError as e:
          raise medi.MediError(source, rec.line, rec.index, e.cls, e.message) from None
        pending.append((td, rec))
        if len(pending) >= _TOKENIZE_CHUNK:
          flush()
    if featurizer is not None:
      flush()
      for td in tasks.values():
        if not td.neg:
          td.neg = [_Ragged() for _ in range(featurizer.num_negatives)]
    for td in tasks.values():
      td.finish()
    if not tasks:
      raise ValueError(f"{source}: no valid MEDI records ({report.summary()})")
    return cls(dict(tasks), report, source, tokenized=featurizer is not None)

  @classmethod
  def from_file(cls, path: str, strict: bool = False, skip_invalid: bool = False,
                featurizer: Optional[Featurizer] = None) -> "MediIndex":
    report = medi.Report(path)
    return cls.build(medi.read_medi(path, strict=strict, skip_invalid=skip_invalid, report=report), report, path,
                     featurizer)

  @classmethod
  def from_tfds(cls, data_dir: str, strict: bool = False, featurizer: Optional[Featurizer] = None) -> "MediIndex":
    from tasks import medi_tfds  # imports TensorFlow / TFDS
    report = medi.Report(data_dir)
    return cls.build(medi_tfds.read_prepared(data_dir, strict=strict, report=report), report, data_dir, featurizer)


# ---------------------------------------------------------------------------------------------------------------
# Sampling: a pure function of (seed, step)


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
               pos_keys: Optional[Sequence[np.ndarray]] = None, task_names: Optional[Sequence[str]] = None):
    if global_batch_size < 1:
      raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if small_tasks not in SMALL_TASKS:
      raise ValueError(f"small_tasks must be one of {SMALL_TASKS}, got {small_tasks!r}")
    if dedup_positives and pos_keys is None:
      raise ValueError("dedup_positives needs pos_keys")
    self.sizes = [int(s) for s in sizes]
    self.names = list(task_names) if task_names is not None else [str(i) for i in range(len(sizes))]
    self.B = int(global_batch_size)
    self.seed = int(seed)
    self.sampling, self.temperature, self.small_tasks = sampling, float(temperature), small_tasks
    self.pos_keys = pos_keys
    self.dedup = [False] * len(self.sizes)
    self.dropped: dict[str, str] = {}
    self.notes: list[str] = []
    active = []
    for k, n in enumerate(self.sizes):
      dedup = bool(dedup_positives)
      if dedup:
        distinct = len(np.unique(pos_keys[k]))
        if distinct < self.B or not self._dedup_layout(k, 0).shape[0]:
          dedup = False
          if small_tasks == "drop":
            self.dropped[self.names[k]] = (f"{n} records, {distinct} distinct positives: no batch of "
                                           f"{self.B} without duplicate positives")
            continue
          self.notes.append(f"task {self.names[k]}: {n} records, {distinct} distinct positives: no batch of "
                            f"{self.B} without duplicate positives; kept without that guarantee")
      elif n < self.B:
        if small_tasks == "drop":
          self.dropped[self.names[k]] = f"{n} records < global batch {self.B}"
          continue
        self.notes.append(f"task {self.names[k]}: {n} records < global batch {self.B}; sampled with repetition")
      self.dedup[k] = dedup
      active.append(k)
    if not active:
      raise ValueError(f"no task can fill a global batch of {self.B}: {self.dropped}")
    self.active = np.asarray(active, np.int64)
    self.rates = task_rates([self.sizes[k] for k in active], sampling, temperature)
    self._blocks: list[np.ndarray] = []    # task draws (indices into `active`) per block
    self._prefix: list[np.ndarray] = [np.zeros(len(active), np.int64)]  # occurrences before each block
    self._epoch_batches: dict[int, list[int]] = {}  # dedup tasks: batches per epoch

  def report(self) -> dict:
    return {"global_batch_size": self.B, "seed": self.seed, "sampling": self.sampling,
            "temperature": self.temperature, "small_tasks": self.small_tasks,
            "active_tasks": {self.names[k]: {"records": self.sizes[k], "rate": float(r)}
                             for k, r in zip(self.active, self.rates)},
            "dropped_tasks": dict(self.dropped), "notes": list(self.notes)}

  def fingerprint(self) -> str:
    blob = json.dumps([self.names, self.sizes, self.B, self.seed, self.sampling, self.temperature,
                       self.small_tasks, self.dedup], sort_keys=True)
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
    return int(self.active[self._draw(_check_step(step))[0]])

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
    if n >= B:  # drop each epoch's remainder (a different one every epoch)
      e, r = divmod(j, n // B)
      return self._perm(k, e)[r * B:(r + 1) * B]
    positions = np.arange(j * B, (j + 1) * B)  # small task, repeat: consecutive epochs back to back
    epochs, within = np.divmod(positions, n)
    return np.asarray([self._perm(k, int(e))[w] for e, w in zip(epochs, within)], np.int64)

  def batch(self, step: int) -> tuple[int, np.ndarray]:
    """``(task id, rows [B])`` of global step ``step``."""
    a, j = self._draw(_check_step(step))
    k = int(self.active[a])
    return k, np.asarray(self._rows(k, j), np.int64)

  def host_slice(self, rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    b = host_batch_size(self.B, process_count)
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return rows[process_index * b:(process_index + 1) * b]


def _check_step(step) -> int:
  if isinstance(step, bool) or int(step) != step or step < 0:
    raise ValueError(f"step must be a non-negative integer, got {step!r}")
  return int(step)


def host_batch_size(global_batch_size: int, process_count: int) -> int:
  if process_count < 1 or global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by process_count {process_count}")
  return global_batch_size // process_count


# ---------------------------------------------------------------------------------------------------------------
# The training stream (the trainer's interface)


def _cfg(cfg: Any, key: str):
  if cfg is None:
    return DEFAULTS[key]
  if isinstance(cfg, Mapping):
    return cfg.get(key, DEFAULTS[key])
  return cfg.get(key, DEFAULTS[key]) if hasattr(cfg, "get") else getattr(cfg, key, DEFAULTS[key])


class TrainStream:
  """Host-local numpy batches of global step ``step``; see the module docstring.

  ``get(step)`` -> ``query_tokens [b, Lq]``, ``query_instr_len [b]``, ``pos_tokens [b, Ld]``, ``pos_instr_len [b]``,
  ``neg_tokens [b, N, Ld]``, ``neg_instr_len [b, N]``, ``task [b]`` (all int32), with
  ``b = global_batch_size // process_count``; ``record_ids(step)`` gives the rows' source indices. Also an iterator
  (``next``) whose position is ``state_dict()``.
  """

  def __init__(self, index: MediIndex, sampler: Sampler, max_query_length: int, max_doc_length: int,
               num_negatives: int, process_index: int = 0, process_count: int = 1):
    if not index.tokenized:
      raise ValueError("TrainStream needs a tokenised MediIndex (build it with a Featurizer)")
    self.index, self.sampler = index, sampler
    self.Lq, self.Ld, self.N = int(max_query_length), int(max_doc_length), int(num_negatives)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.host_batch_size = host_batch_size(sampler.B, process_count)
    self.global_batch_size = sampler.B
    self._step = 0
    self._lock = threading.Lock()  # the sampler fills its caches lazily; `get` may run in a prefetch thread

  @classmethod
  def from_config(cls, cfg, tokenizer_dir: str, global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> "TrainStream":
    g = functools.partial(_cfg, cfg)
    host_batch_size(global_batch_size, process_count)  # fail early
    featurizer = Featurizer(os.fspath(tokenizer_dir), int(g("max_query_length")), int(g("max_doc_length")),
                            int(g("num_negatives")))
    if g("tfds_data_dir"):
      index = MediIndex.from_tfds(g("tfds_data_dir"), strict=bool(g("strict")), featurizer=featurizer)
    elif g("medi_path"):
      index = MediIndex.from_file(g("medi_path"), strict=bool(g("strict")), skip_invalid=bool(g("skip_invalid")),
                                  featurizer=featurizer)
    else:
      raise ValueError("config.data needs medi_path (a MEDI .json/.jsonl file) or tfds_data_dir (prepared shards)")
    sampler = Sampler(index.sizes, global_batch_size, seed=seed, sampling=g("sampling"),
                      temperature=float(g("temperature")), small_tasks=g("small_tasks"),
                      dedup_positives=bool(g("dedup_positives")), pos_keys=[t.pos_keys for t in index.tasks],
                      task_names=index.task_names)
    stream = cls(index, sampler, featurizer.max_query_length, featurizer.max_doc_length, featurizer.num_negatives,
                 process_index, process_count)
    log.info("MEDI stream: %s; %d of %d tasks active", index.report.summary(), len(sampler.active),
             len(index.task_names))
    for name, why in sampler.dropped.items():
      log.warning("MEDI task %s dropped: %s (config.data.small_tasks='repeat' keeps it)", name, why)
    for note in sampler.notes:
      log.warning("MEDI %s", note)
    return stream

  @property
  def task_names(self) -> list[str]:
    return list(self.index.task_names)

  def report(self) -> dict:
    return {"input": self.index.report.to_dict(), "sampling": self.sampler.report()}

  def host_rows(self, step: int) -> tuple[int, np.ndarray]:
    """``(task id, rows of this host)`` (rows index the task's records) -- what ``get`` will read."""
    k, rows = self.sampler.batch(step)
    return k, self.sampler.host_slice(rows, self.process_index, self.process_count)

  def record_ids(self, step: int) -> np.ndarray:
    """Source record ids (indices in the MEDI file) of this host's rows of step ``step`` (what ``preview`` prints)."""
    with self._lock:
      k, rows = self.host_rows(step)
    return self.index.tasks[k].ids[rows].astype(np.int64)

  def get(self, step: int, with_record_ids: bool = False) -> dict[str, np.ndarray]:
    """The batch of global step ``step`` (any order, any thread); the position becomes ``step + 1``.

    Exactly the seven contract keys; ``with_record_ids`` adds ``record_id`` (int64, source indices) for debugging.
    """
    with self._lock:
      k, rows = self.host_rows(step)
      self._step = int(step) + 1
    td = self.index.tasks[k]
    b, N = len(rows), self.N
    out = {
        "query_tokens": pad_rows([td.query.row(r) for r in rows], self.Lq),
        "query_instr_len": td.query.instr_len[rows].astype(np.int32),
        "pos_tokens": pad_rows([td.pos.row(r) for r in rows], self.Ld),
        "pos_instr_len": td.pos.instr_len[rows].astype(np.int32),
        "neg_tokens": pad_rows([td.neg[j].row(r) for r in rows for j in range(N)], self.Ld).reshape(b, N, self.Ld),
        "neg_instr_len": (np.stack([td.neg[j].instr_len[rows] for j in range(N)], axis=1).astype(np.int32)
                          if N else np.zeros((b, 0), np.int32)),
        "task": np.full((b,), k, np.int32),
    }
    if with_record_ids:
      out["record_id"] = td.ids[rows].astype(np.int64)
    return out

  # -- iterator + checkpointable position ------------------------------------------------------------------------
  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return self.get(self._step)

  @property
  def step(self) -> int:
    return self._step

  def state_dict(self) -> dict:
    """``{"step": next step, ...}``: the step after the last one served by ``get`` / ``next``. A trainer that
    prefetches ``get(step + 1)`` should store its own step (the stream is a pure function of it)."""
    return {"step": self._step, "seed": self.sampler.seed, "global_batch_size": self.sampler.B,
            "fingerprint": self.sampler.fingerprint(), "num_tasks": len(self.index.task_names)}

  def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
    """Restores the position; with ``strict`` the seed, batch size and data fingerprint must match."""
    mine = self.state_dict()
    if strict:
      for key in ("seed", "global_batch_size", "fingerprint"):
        if key in state and state[key] != mine[key]:
          raise ValueError(f"data iterator state mismatch on {key!r}: checkpoint has {state[key]!r}, this stream "
                           f"has {mine[key]!r} (different data, seed or sampling config; pass strict=False to "
                           "resume at the saved step anyway)")
    self._step = _check_step(state["step"])


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _preview(args) -> int:
  index = MediIndex.from_file(args.medi, strict=args.strict, skip_invalid=args.skip_invalid)
  sampler = Sampler(index.sizes, args.global_batch, seed=args.seed, sampling=args.sampling,
                    temperature=args.temperature, small_tasks=args.small_tasks,
                    dedup_positives=args.dedup_positives, pos_keys=[t.pos_keys for t in index.tasks],
                    task_names=index.task_names)
  if index.report.skipped:
    print(index.report.summary(), file=sys.stderr)
  for name, why in sampler.dropped.items():
    print(f"dropped task {name}: {why}", file=sys.stderr)
  for note in sampler.notes:
    print(note, file=sys.stderr)
  host_batch_size(args.global_batch, args.process_count)
  for step in range(args.start_step, args.start_step + args.steps):
    k, rows = sampler.batch(step)
    ids = index.tasks[k].ids[sampler.host_slice(rows, args.process_index, args.process_count)]
    if args.json:
      print(json.dumps({"step": step, "task": index.task_names[k], "task_index": k,
                        "process_index": args.process_index, "process_count": args.process_count,
                        "record_ids": [int(i) for i in ids]}))
    else:
      print(f"step {step:6d}  task {index.task_names[k]}  records {' '.join(map(str, ids))}")
  return 0


def _prepare(args) -> int:
  import tensorflow_datasets as tfds
  from tasks import medi_tfds
  tfds.disable_progress_bar()
  path = medi_tfds.prepare(args.medi, args.data_dir, strict=args.strict, skip_invalid=args.skip_invalid,
                           num_shards=args.num_shards)
  print(path)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m instructor_jax.data", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  pv = sub.add_parser("preview", help="print the task and source record ids of this host's rows, per step")
  pv.add_argument("--medi", required=True, help="MEDI file (.json array or .jsonl)")
  pv.add_argument("--global-batch", type=int, required=True)
  pv.add_argument("--steps", type=int, required=True)
  pv.add_argument("--start-step", type=int, default=0)
  pv.add_argument("--process-count", type=int, default=1)
  pv.add_argument("--process-index", type=int, default=0)
  pv.add_argument("--seed", type=int, default=0)
  pv.add_argument("--sampling", choices=SAMPLING, default=DEFAULTS["sampling"])
  pv.add_argument("--temperature", type=float, default=DEFAULTS["temperature"])
  pv.add_argument("--small-tasks", choices=SMALL_TASKS, default=DEFAULTS["small_tasks"])
  pv.add_argument("--dedup-positives", action="store_true")
  pv.add_argument("--strict", action="store_true", help="instructions must start with 'Represent '")
  pv.add_argument("--skip-invalid", action="store_true", help="skip (and count) invalid records instead of failing")
  pv.add_argument("--json", action="store_true", help="one JSON object per step (JSON lines)")
  pr = sub.add_parser("prepare", help="convert a MEDI file to sharded TFRecords (TFDS builder)")
  pr.add_argument("--medi", required=True)
  pr.add_argument("--data-dir", required=True, help="TFDS data_dir to write (config.data.tfds_data_dir)")
  pr.add_argument("--num-shards", type=int, default=0, help="0: about 64 MB per shard")
  pr.add_argument("--strict", action="store_true")
  pr.add_argument("--skip-invalid", action="store_true")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
  try:
    if args.cmd == "preview":
      if args.steps < 0 or args.start_step < 0:
        raise ValueError("--steps and --start-step must be >= 0")
      return _preview(args)
    return _prepare(args)
  except (medi.MediError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except BrokenPipeError:  # `| head`
    return 0


if __name__ == "__main__":
  sys.exit(main())
