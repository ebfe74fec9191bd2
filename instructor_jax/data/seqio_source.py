"""Training from any registered seqio Task or Mixture (``config.data.source = "seqio"``).

Imports ``config.data.seqio_modules``, looks up ``config.data.mixture_or_task``, checks that its Tasks yield MEDI-like
token features (``query_tokens``, ``query_instr_len``, ``pos_tokens``, ``pos_instr_len``, ``neg_tokens``,
``neg_instr_len``; optional ``record_id``, ``pos_key``), runs each Task once with the training lengths and keeps the
tokens as ``features.MediIndex`` ragged arrays. The first thing to know: from there it is the file source's path
(one Task per global batch, with the Mixture's rates; each host builds its own rows; resume by step), so every host
reads whole Tasks; for data too large to hold per host, prepare it (``prepared.py``). WORKSPACE.md has the rest.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib

import numpy as np

from instructor_jax.data import medi
from instructor_jax.core.errors import DataError
from instructor_jax.data.features import MediIndex, TaskData, ragged_from_rows


REQUIRED = ("query_tokens", "query_instr_len", "pos_tokens", "pos_instr_len")
NEGATIVES = ("neg_tokens", "neg_instr_len")
DEFAULT_MODULES = "tasks.medi"


def import_modules(modules: str) -> None:
  """Imports the modules that register Tasks, with TensorFlow kept off the GPUs first."""
  from instructor_jax.data.tf_env import hide_gpus_from_tf
  hide_gpus_from_tf()
  for name in [m.strip() for m in str(modules or "").split(",") if m.strip()]:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise DataError(f"config.data.seqio_modules: cannot import {name!r} ({e})") from None


def lookup(name: str):
  """The registered Task or Mixture ``name``; an unknown name lists the registered ones, closest first."""
  import seqio
  if name in seqio.MixtureRegistry.names():
    return seqio.get_mixture_or_task(name)
  if name in seqio.TaskRegistry.names():
    return seqio.get_mixture_or_task(name)
  mixtures, tasks = sorted(seqio.MixtureRegistry.names()), sorted(seqio.TaskRegistry.names())
  close = difflib.get_close_matches(name, mixtures + tasks, n=3, cutoff=0.5)
  hint = f" (closest: {', '.join(close)})" if close else ""
  listed = lambda xs: ", ".join(xs[:50]) + (f", ... ({len(xs)} in all)" if len(xs) > 50 else "") if xs else "none"
  if name == "medi":
    hint += " (tasks.medi registers it when MEDI_PATH names a MEDI file or MEDI_TFDS_DIR prepared TFDS shards)"
  raise DataError(f"config.data.mixture_or_task: no seqio Task or Mixture {name!r}{hint}; registered Mixtures: "
                  f"{listed(mixtures)}; Tasks: {listed(tasks)} (modules imported: config.data.seqio_modules)")


def tasks_and_rates(provider) -> list[tuple[object, float]]:
  """``[(Task, rate)]`` in ``Mixture.tasks`` order (sorted names); a single Task has rate 1."""
  import seqio
  if isinstance(provider, seqio.Mixture):
    return [(t, float(provider.get_rate(t))) for t in provider.tasks]
  return [(provider, 1.0)]


def check_features(task, num_negatives: int) -> None:
  """Fails, naming them, when the Task declares none of some required features."""
  need = REQUIRED + (NEGATIVES if num_negatives else ())
  missing = [f for f in need if f not in task.output_features]
  if missing:
    raise DataError(f"seqio task {task.name}: missing feature(s) {', '.join(missing)}; training needs "
                    f"{', '.join(need)} (token ids with the closing token and instruction lengths; see "
                    f"tasks/pairs_tsv.py), it declares {', '.join(sorted(task.output_features)) or 'none'}")


def feature_lengths(max_query_length: int, max_doc_length: int, num_negatives: int) -> dict:
  """The ``sequence_length`` handed to the Tasks' preprocessors (the MEDI feature converter's lengths)."""
  return {"query_tokens": max_query_length, "pos_tokens": max_doc_length,
          "neg_tokens": [num_negatives, max_doc_length]}


def _trimmed(row: np.ndarray) -> np.ndarray:
  """A zero-padded row without its padding (token id 0 is the pad id, never inside a sequence)."""
  nz = np.flatnonzero(row)
  return row[:nz[-1] + 1] if len(nz) else row[:0]


def _examples(ds, name: str):
  """The dataset's examples as numpy; an error inside the Task's pipeline becomes a one-line ``DataError``."""
  import tensorflow as tf
  it = ds.as_numpy_iterator()
  while True:
    try:
      yield next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      lines = [l.strip() for l in str(e.message).splitlines() if l.strip()]
      why = next((l for l in lines if "Error" in l and ":" in l), lines[0] if lines else type(e).__name__)
      raise DataError(f"seqio task {name}: its pipeline failed: {why}") from None


def _task_data(task, split: str, lq: int, ld: int, num_negatives: int) -> TaskData:
  """One Task's examples as the file source's ragged arrays (checked against the config's lengths)."""
  try:
    ds = task.get_dataset(sequence_length=feature_lengths(lq, ld, num_negatives), split=split, shuffle=False,
                          num_epochs=1, use_cached=False, trim_output_features=False)
  except ValueError as e:  # seqio: a declared feature the preprocessors did not produce, an unknown split
    raise DataError(f"seqio task {task.name}: {e}") from None
  columns = {"query": ([], []), "pos": ([], [])}
  negs = [([], []) for _ in range(num_negatives)]
  ids, pos_keys = [], []
  for i, ex in enumerate(_examples(ds, task.name)):
    for side, limit in (("query", lq), ("pos", ld)):
      row = _trimmed(np.asarray(ex[f"{side}_tokens"]).reshape(-1))
      if len(row) > limit:
        raise DataError(f"seqio task {task.name}: example {i}: {side}_tokens has {len(row)} tokens, more than "
                        f"max_{'query' if side == 'query' else 'doc'}_length={limit} (truncate in the Task's "
                        f"preprocessor, keeping the closing token; it receives sequence_length)")
      columns[side][0].append(row)
      columns[side][1].append(int(ex[f"{side}_instr_len"]))
    if num_negatives:
      nt, ni = np.asarray(ex["neg_tokens"]), np.asarray(ex["neg_instr_len"]).reshape(-1)
      nt = nt.reshape(-1, nt.shape[-1]) if nt.size else nt.reshape(0, 0)
      if len(nt) < num_negatives:
        raise DataError(f"seqio task {task.name}: example {i}: {len(nt)} negative(s), num_negatives="
                        f"{num_negatives}")
      for j in range(num_negatives):
        row = _trimmed(nt[j])
        if len(row) > ld:
          raise DataError(f"seqio task {task.name}: example {i}: neg_tokens[{j}] has {len(row)} tokens, more "
                          f"than max_doc_length={ld}")
        negs[j][0].append(row)
        negs[j][1].append(int(ni[j]))
    ids.append(int(ex["record_id"]) if "record_id" in ex else i)
    if "pos_key" in ex:
      pos_keys.append(int(ex["pos_key"]))
    else:
      digest = hashlib.blake2b(columns["pos"][0][-1].astype(np.int64).tobytes(), digest_size=8).digest()
      pos_keys.append(int.from_bytes(digest, "little") >> 1)
  td = TaskData()
  td.ids, td.pos_keys = np.asarray(ids, np.int64), np.asarray(pos_keys, np.int64)
  td.query, td.pos = ragged_from_rows(*columns["query"]), ragged_from_rows(*columns["pos"])
  td.neg = [ragged_from_rows(*n) for n in negs]
  return td


def load_index(mixture_or_task: str, max_query_length: int, max_doc_length: int, num_negatives: int,
               split: str = "train", modules: str = DEFAULT_MODULES) -> tuple[MediIndex, list[float]]:
  """``(index, rates)``: every example of the Task(s), tokenised, grouped per Task (``MediIndex``), and the rate
  of each Task in index order."""
  import_modules(modules)
  provider = lookup(mixture_or_task)
  pairs = tasks_and_rates(provider)
  for task, _ in pairs:
    check_features(task, num_negatives)
  tasks, rates = {}, {}
  for task, rate in pairs:
    tasks[task.name] = _task_data(task, split, int(max_query_length), int(max_doc_length), int(num_negatives))
    rates[task.name] = rate
  report = medi.Report(f"seqio:{mixture_or_task}")
  report.read = report.valid = sum(len(td.ids) for td in tasks.values())
  index = MediIndex(tasks, report, report.path, tokenized=True)
  return index, [rates[n] for n in index.task_names]
