"""Training batches from MEDI: one task per global batch, host slices, padded or packed rows, exact resume.

``TrainStream`` (built by ``from_config``) loads the data once (``load_index``: a MEDI file, a prepared store or a
seqio Task / Mixture), samples each step's task and rows (``sampling.Sampler``) and returns this host's padded or
packed slice. Read first: a batch is a pure function of ``(seed, step)``, so resume is exact by construction
(``state_dict`` stores the next step and a fingerprint of the data). ``SyntheticStream`` has the same contract with
random tokens (tests, benchmarks); the ``preview`` / ``prepare`` commands are in ``data/__main__.py``.
"""
from __future__ import annotations

import functools
import os
import threading
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from instructor_jax.core import log
from instructor_jax.storage import paths
from instructor_jax.data import packing
from instructor_jax.data import prepared
from instructor_jax.core.errors import DataError
from instructor_jax.data.features import Featurizer, MediIndex, pad_rows
from instructor_jax.data.sampling import Sampler, check_step, host_batch_size


SOURCES = ("file", "prepared", "seqio")  # what load_index reads; config.data.source may also be "synthetic"
BASE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "configs", "base.py")


@functools.lru_cache(maxsize=1)
def data_defaults() -> dict:
  """``config.data`` of ``configs/base.py``, the one place data defaults live (the data CLI's flag defaults, and
  the keys a partial data config given to ``from_config`` leaves out)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("instructor_base_defaults", BASE_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return dict(module.get_config().data.to_dict())


# ---------------------------------------------------------------------------------------------------------------
# The training stream (the trainer's interface)


def _cfg(cfg: Any, key: str):
  """``cfg[key]`` of a data config (a ConfigDict or a dict); a key it leaves out takes ``configs/base.py``'s."""
  if cfg is not None and key in cfg:
    return cfg[key]
  return data_defaults()[key]


def load_index(cfg, featurizer, tokenizer_dir: str = ""):
  """``(index, rates)`` of ``config.data.source``: ``"file"`` (``medi_path``: a MEDI file, or a prepared folder;
  ``tfds_data_dir``), ``"prepared"`` (``prepared``: a folder written by ``data prepare``) or ``"seqio"``
  (``mixture_or_task``). ``rates`` are the seqio Mixture's (None: ``config.data.sampling``). ``featurizer`` is a
  callable that makes the ``Featurizer`` (a prepared folder or a seqio Task needs none: a restart on prepared data
  loads the tokenizer only when its files changed).

  ``"file"``: ``features.MediIndex`` streams the MEDI file (``medi.read_medi``: JSON array or JSON lines, validated)
  or TFDS text shards (``tasks/medi_tfds.py``), groups records by task and tokenises them *once* with
  ``features.Featurizer`` (the embedder's rule, shared with the seqio tasks). ``"prepared"`` (``prepared.py``): the
  index (task, record ids, every sequence's length) is loaded, tokens are read per sequence when a step needs them,
  nothing is tokenised. ``"seqio"`` (``seqio_source.py``): every example of the Task or Mixture, with its rates."""
  g = functools.partial(_cfg, cfg)
  lengths = (int(g("max_query_length")), int(g("max_doc_length")), int(g("num_negatives")))
  source = g("source") or "file"
  if source not in SOURCES:
    raise DataError(f"config.data.source must be one of {', '.join(SOURCES)}, got {source!r}")
  if source == "seqio":
    from instructor_jax.data import seqio_source
    if not g("mixture_or_task"):
      raise DataError("config.data.source=seqio needs config.data.mixture_or_task (a registered Task or Mixture)")
    return seqio_source.load_index(g("mixture_or_task"), *lengths, split=g("seqio_split"),
                                   modules=g("seqio_modules"))
  path = g("prepared") if source == "prepared" else g("medi_path")
  if path:
    path = paths.check(path, "config.data.prepared" if source == "prepared" else "config.data.medi_path")
  if source == "prepared" or (path and paths.isdir(path)):
    if not path:
      raise DataError("config.data.source=prepared needs config.data.prepared (a folder written by data prepare)")
    return prepared.open_prepared(path, featurizer, lengths, tokenizer_dir), None
  if g("tfds_data_dir"):
    return MediIndex.from_tfds(g("tfds_data_dir"), strict=bool(g("strict")), featurizer=featurizer()), None
  if path:
    return MediIndex.from_file(paths.local_copy(path), strict=bool(g("strict")), skip_invalid=bool(g("skip_invalid")),
                               featurizer=featurizer(), max_invalid_fraction=float(g("max_invalid_fraction"))), None
  raise ValueError("config.data needs medi_path (a MEDI .json/.jsonl file or a prepared folder), prepared, "
                   "tfds_data_dir or source=seqio with mixture_or_task")


class TrainStream:
  """Host-local numpy batches of global step ``step``.

  How ``get(step)`` makes one: the step's task and its ``B`` rows come from ``sampling.Sampler`` (a pure function of
  ``(seed, step)``). Padded (``config.data.pack = False``): host ``i`` of ``P`` takes rows ``[i*B/P, (i+1)*B/P)``
  and pads them (``pad_rows``) to ``Lq = max_query_length`` and ``Ld = max_doc_length``, pad id 0. Packed
  (``config.data.pack = True``, ``packing.py``): the lengths of all ``B * (2 + N)`` sequences of the global batch
  (known on every host from the index) give the step's layout, the same on every host, and host ``i`` builds only
  its own packed rows ``[i*R/P, (i+1)*R/P)``. Every sequence already ends with its tokenizer's closing token (T5
  ``</s>``, BERT ``[SEP]``).

  Padded (``packer=None``): ``get(step)`` -> ``query_tokens [b, Lq]``, ``query_instr_len [b]``, ``pos_tokens [b,
  Ld]``, ``pos_instr_len [b]``, ``neg_tokens [b, N, Ld]``, ``neg_instr_len [b, N]``, ``task [b]`` (all int32), with
  ``b = global_batch_size // process_count``. Packed (a ``packing.Packer``): this host's rows of the step's layout,
  ``tokens``, ``segment_ids``, ``pool_ids [R/P, pack_length]`` and ``slot_seq [R/P, max_segments]``.
  ``record_ids(step)`` gives the rows' source indices. Also an iterator (``next``) whose position is
  ``state_dict()``.
  """

  def __init__(self, index: MediIndex, sampler: Sampler, max_query_length: int, max_doc_length: int,
               num_negatives: int, process_index: int = 0, process_count: int = 1,
               packer: Optional[packing.Packer] = None):
    if not index.tokenized:
      raise ValueError("TrainStream needs a tokenised MediIndex (build it with a Featurizer)")
    if packer is not None and packer.num_seqs != sampler.B * (2 + int(num_negatives)):
      raise ValueError(f"packer expects {packer.num_seqs} sequences per step, the stream has "
                       f"{sampler.B} x {2 + int(num_negatives)}")
    self.index, self.sampler, self.packer = index, sampler, packer
    self.Lq, self.Ld, self.N = int(max_query_length), int(max_doc_length), int(num_negatives)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.host_batch_size = host_batch_size(sampler.B, process_count)
    self.global_batch_size = sampler.B
    self._step = 0
    self._lock = threading.Lock()  # the sampler fills its caches lazily; `get` may run in a prefetch thread

  @classmethod
  def from_config(cls, cfg, tokenizer_dir: str, global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, packer: Optional[packing.Packer] = None) -> "TrainStream":
    g = functools.partial(_cfg, cfg)
    host_batch_size(global_batch_size, process_count)  # fail early
    lq, ld, n = int(g("max_query_length")), int(g("max_doc_length")), int(g("num_negatives"))
    featurizer = functools.lru_cache(maxsize=None)(lambda: Featurizer(os.fspath(tokenizer_dir), lq, ld, n))
    index, rates = load_index(cfg, featurizer, os.fspath(tokenizer_dir))
    sampler = Sampler(index.sizes, global_batch_size, seed=seed, sampling=g("sampling"),
                      temperature=float(g("temperature")), small_tasks=g("small_tasks"),
                      dedup_positives=bool(g("dedup_positives")), pos_keys=[t.pos_keys for t in index.tasks],
                      task_names=index.task_names, rates=rates)
    stream = cls(index, sampler, lq, ld, n, process_index, process_count, packer)
    log.info("MEDI stream: %s; %d of %d tasks active", index.report.summary(), len(sampler.active),
             len(index.task_names))
    if sampler.dropped:
      log.warning("MEDI: dropped %d task(s) that cannot fill a global batch of %d without repeating a record: %s",
                  len(sampler.dropped), global_batch_size,
                  "; ".join(f"{name} ({why})" for name, why in sampler.dropped.items()))
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
    if self.packer is not None:
      return self._packed(step, with_record_ids)
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

  def _sides(self, td):
    """The ragged arrays of a task, by column: 0 the query, 1 the positive, 2.. the negatives."""
    return [td.query, td.pos, *td.neg[:self.N]]

  def _packed(self, step: int, with_record_ids: bool) -> dict[str, np.ndarray]:
    """This host's packed rows of step ``step``: the layout comes from the lengths of the whole global batch."""
    with self._lock:
      k, rows = self.sampler.batch(step)
      self._step = int(step) + 1
    td = self.index.tasks[k]
    sides = self._sides(td)
    width = len(sides)
    lengths = np.stack([side.lengths[rows] for side in sides], axis=1).reshape(-1)  # sequence b * width + t

    def fetch(seqs):
      return [(sides[t].row(rows[b]), int(sides[t].instr_len[rows[b]])) for b, t in (divmod(i, width) for i in seqs)]

    layout = self.packer.layout(lengths, where=f"step {step} (task {self.index.task_names[k]}): ")
    out = self.packer.build(layout, fetch)
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
            "fingerprint": self.sampler.fingerprint(), "content": self.index.fingerprint(),
            "num_tasks": len(self.index.task_names)}

  def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
    """Restores the position; with ``strict`` the seed, batch size, sampling fingerprint (task names and sizes,
    sampling settings) and content fingerprint (record ids, positives, lengths) must match."""
    mine = self.state_dict()
    if strict:
      what = {"seed": "seed", "global_batch_size": "global batch", "fingerprint": "tasks, sizes or sampling",
              "content": "records"}
      for key, name in what.items():
        if key in state and state[key] != mine[key]:
          raise DataError(f"the training data changed since this checkpoint ({name}: {state[key]!r} then, "
                          f"{mine[key]!r} now); resume with the run's data and settings, or accept the change with "
                          f"--config.resume_allow_changes=data")
    self._step = check_step(state["step"])


class SyntheticStream:
  """Random token batches with the ``data.TrainStream`` contract (tests, benchmarks, compile checks).

  ``get(step)`` is a pure function of ``(seed, step)``: the global batch is drawn, then this process's rows kept.
  """

  def __init__(self, dcfg, vocab_size: int, global_batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1, packer: Optional[packing.Packer] = None):
    if global_batch_size % process_count:
      raise ValueError(f"global_batch_size {global_batch_size} is not divisible by {process_count} processes")
    self.lq, self.ld = int(dcfg.max_query_length), int(dcfg.max_doc_length)
    self.n = int(dcfg.num_negatives)
    self.vocab, self.gb, self.seed = vocab_size, global_batch_size, seed
    self.rows = slice(process_index * global_batch_size // process_count,
                      (process_index + 1) * global_batch_size // process_count)
    self.task_names = ["synthetic"]
    self.packer = packer
    self._step = 0

  def _seqs(self, rng, shape, length):
    lens = rng.integers(max(2, length // 4), length + 1, size=shape)
    tok = rng.integers(2, self.vocab, size=shape + (length,), dtype=np.int64).astype(np.int32)
    pos = np.arange(length)
    tok = np.where(pos < lens[..., None], tok, 0).astype(np.int32)
    tok[..., 0] = np.where(lens > 0, tok[..., 0], 0)
    instr = rng.integers(0, np.maximum(lens - 1, 1)).astype(np.int32)
    return tok, instr

  def get(self, step: int) -> dict:
    rng = np.random.default_rng([self.seed, step])
    q, qi = self._seqs(rng, (self.gb,), self.lq)
    p, pi = self._seqs(rng, (self.gb,), self.ld)
    n, ni = self._seqs(rng, (self.gb, self.n), self.ld)
    self._step = step + 1
    out = dict(query_tokens=q, query_instr_len=qi, pos_tokens=p, pos_instr_len=pi, neg_tokens=n, neg_instr_len=ni,
               task=np.zeros((self.gb,), np.int32))
    if self.packer is not None:
      lengths, fetch = packing.padded_lengths(out)
      return self.packer.build(self.packer.layout(lengths, where=f"step {step} (task synthetic): "), fetch)
    return {k: v[self.rows] for k, v in out.items()}

  def state_dict(self) -> dict:
    return {"step": self._step, "seed": self.seed}

  def load_state_dict(self, d: dict, strict: bool = True):
    if strict and d.get("seed", self.seed) != self.seed:
      raise DataError(f"the synthetic data's seed changed since this checkpoint ({d['seed']} then, {self.seed} now)")
    self._step = int(d.get("step", 0))


def make_stream(config, tokenizer_dir: str, vocab_size: int, packer: Optional[packing.Packer] = None,
                process_index: int = 0, process_count: int = 1):
  """The trainer's stream: ``config.data.source`` ``"synthetic"`` (random tokens), else ``TrainStream``."""
  if config.data.source == "synthetic":
    return SyntheticStream(config.data, vocab_size, config.global_batch_size, config.seed, process_index,
                           process_count, packer)
  return TrainStream.from_config(config.data, tokenizer_dir, config.global_batch_size, config.seed, process_index,
                                 process_count, packer)
