"""MEDI features: tokenise once, group by task, keep compact ragged token ids.

``Featurizer`` is the single implementation of "``instruction + text`` with ``</s>``, truncated per side, plus the
instruction length ``n``" (``tokenization.Tokenizer`` / ``join_instruction``: the embedder's rule, same ids and ``n``
as ``Tokenizer.encode``); the seqio tasks in ``tasks/medi.py`` share it. ``MediIndex`` holds every valid record of a
MEDI file (``medi.read_medi``) or of prepared TFDS shards (``tasks/medi_tfds.py``), grouped by task (``task_names``
sorted; index = ``task`` id), with token ids as ragged ``uint16`` arrays per task and side (int32 for vocabularies of
65,536 or more) and per-sequence lengths (``_Ragged.lengths``, what packing reads).
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import os
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from instructor_jax.data import medi
from instructor_jax.core.errors import DataError
from instructor_jax.data.tokenization import Encoded, Tokenizer, join_instruction

PAD_ID = 0
_TOKENIZE_CHUNK = 2048             # records per tokenizer call while loading
# With skip_invalid, more invalid records than this fraction fail the load. The released MEDI and every set built
# here validate completely, so a few bad records are a handful of broken lines while a larger share means a wrong
# file (another format, a mangled export): 1% tolerates the first and stops the second.
MAX_INVALID_FRACTION = 0.01


def check_invalid(report: medi.Report, max_fraction: float) -> None:
  """Fails when the skipped share of the records read exceeds ``max_fraction`` (``config.data.max_invalid_fraction``)."""
  if report.read and report.skipped / report.read > max_fraction:
    per = ", ".join(f"{k}={v}" for k, v in sorted(report.counts.items()))
    raise DataError(f"{report.path}: {report.skipped} of {report.read} records are invalid ({per}), more than "
                    f"config.data.max_invalid_fraction={max_fraction:g}; first: "
                    f"{next(iter(report.examples.values()))[0]}")


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
    self.data = self.offsets = self.instr_len = self._lengths = None

  def extend(self, encoded: Sequence) -> None:
    """Appends a list of ``Encoded`` (one array per call, so call it with many rows at once)."""
    if not encoded:
      return
    lens = np.fromiter((len(e.ids) for e in encoded), np.int64, len(encoded))
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encoded), np.int64, int(lens.sum()))
    self.append(ids, lens, np.fromiter((e.instr_len for e in encoded), np.int32, len(encoded)))

  def append(self, ids: np.ndarray, lens: np.ndarray, instr_len: np.ndarray) -> None:
    """Appends rows given as their concatenated ids, their lengths and their instruction lengths."""
    # uint16 halves host memory for T5-sized vocabularies; larger vocabularies (mT5...) keep int32.
    self._parts.append(ids.astype(np.uint16 if ids.max(initial=0) < 65536 else np.int32))
    self._lens.append(np.asarray(lens, np.int64))
    self._n.append(np.asarray(instr_len, np.int32))

  def finish(self) -> "_Ragged":
    self.data = np.concatenate(self._parts) if self._parts else np.zeros((0,), np.uint16)
    lens = np.concatenate(self._lens) if self._lens else np.zeros((0,), np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    self.instr_len = np.concatenate(self._n) if self._n else np.zeros((0,), np.int32)
    self._parts, self._lens, self._n = [], [], []
    return self

  def row(self, i: int) -> np.ndarray:
    return self.data[self.offsets[i]:self.offsets[i + 1]]

  @property
  def lengths(self) -> np.ndarray:
    """Tokens per row (int64), what packing lays out."""
    if self._lengths is None:
      self._lengths = np.diff(self.offsets)
    return self._lengths


def ragged_from_rows(rows: Sequence[np.ndarray], instr_len: Sequence[int]) -> "_Ragged":
  """A finished ``_Ragged`` from token arrays (the seqio source's examples)."""
  r = _Ragged()
  if len(rows):
    r.append(np.concatenate([np.asarray(x, np.int64) for x in rows]), [len(x) for x in rows], instr_len)
  return r.finish()


def content_fingerprint(per_task: Iterable[tuple[str, np.ndarray, np.ndarray, Sequence[np.ndarray]]]) -> str:
  """``MediIndex.fingerprint`` of ``(task name, record ids, positive keys, [lengths per side])`` per task (sorted
  names); the prepared store computes the same digest from its index, so a resume may switch between the two."""
  h = hashlib.sha256()
  for name, ids, pos_keys, lengths in per_task:
    h.update(name.encode())
    for a in [ids, pos_keys, *lengths]:
      h.update(np.ascontiguousarray(a, np.int64).tobytes())
  return h.hexdigest()[:16]


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

  def fingerprint(self) -> str:
    """A digest of what was loaded: task names, record ids, positive-text keys and every sequence's length."""
    return content_fingerprint(
        (name, td.ids, td.pos_keys, [td.query.lengths, td.pos.lengths] + [n.lengths for n in td.neg]
         if self.tokenized else [])
        for name, td in zip(self.task_names, self.tasks))

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
      raise DataError(f"{source}: no valid MEDI records ({report.summary()})")
    return cls(dict(tasks), report, source, tokenized=featurizer is not None)

  @classmethod
  def from_file(cls, path: str, strict: bool = False, skip_invalid: bool = False,
                featurizer: Optional[Featurizer] = None, max_invalid_fraction: float = MAX_INVALID_FRACTION
                ) -> "MediIndex":
    """All valid records of a MEDI file. With ``skip_invalid`` bad records are counted per class, and more than
    ``max_invalid_fraction`` of them fails: that many means a broken or wrong file, not a few bad lines. A truncated
    file always fails (``medi.read_medi``)."""
    report = medi.Report(path)
    index = cls.build(medi.read_medi(path, strict=strict, skip_invalid=skip_invalid, report=report), report, path,
                      featurizer)
    check_invalid(report, max_invalid_fraction)
    return index

  @classmethod
  def from_tfds(cls, data_dir: str, strict: bool = False, featurizer: Optional[Featurizer] = None) -> "MediIndex":
    from instructor_jax.data import medi_tfds  # imports TensorFlow / TFDS
    report = medi.Report(data_dir)
    return cls.build(medi_tfds.read_prepared(data_dir, strict=strict, report=report), report, data_dir, featurizer)

