"""The prepared store: tokenise a MEDI file once, then every restart loads a small index and reads only its rows.

``prepare`` (``python -m instructor_jax.data prepare``) writes ``manifest.json`` (written last: a folder without it
is never read; tokenizer fingerprint, lengths, negatives, report, shards, the content fingerprint), ``index.npz``
(per record: ``record_id``, ``pos_key``, ``lengths [R, 2+N]``, ``instr_len``, ``token_offset``; ``task_offsets``,
``shard_tokens``) and ``tokens-*.npy`` (one uint16 token stream cut at record boundaries). ``PreparedIndex`` is the
``MediIndex`` interface over it: ``row(i)`` is one ``os.pread``. The first thing to know: a restart needs the lengths
of *every* sequence (the packed layout of a step is computed on every host) but the tokens of its own rows only;
WORKSPACE.md ("Why numpy shards") says why this layout and not TFRecord / ArrayRecord.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Optional, Sequence

import numpy as np

from instructor_jax.data import medi
from instructor_jax.storage import files, paths
from instructor_jax.core.errors import DataError
from instructor_jax.data.features import (MAX_INVALID_FRACTION, _TOKENIZE_CHUNK, Featurizer, check_invalid,
                                     content_fingerprint)
from instructor_jax.data.tokenization import join_instruction


FORMAT = "instructor_jax.prepared_medi"
VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.npz"
DEFAULT_SHARD_MB = 256
_COPY_TOKENS = 1 << 24             # tokens per block when the spill files are copied into shards
_PROBES = ("Represent the title: A title", "  Ünïcode  text\twith   spaces ", "x", "</s> <pad> literal")


def tokenizer_fingerprint(featurizer: Featurizer) -> str:
  """A digest of what the tokenizer *does*: its vocabulary, pad / closing ids and the ids of a few probe strings
  (two folders with the same vocabulary file but other normaliser settings differ)."""
  tok = featurizer.doc_tok
  h = hashlib.sha256()
  h.update(json.dumps(sorted(tok.hf.get_vocab().items())).encode())
  h.update(json.dumps([tok.pad_id, tok.eos_id, tok.encode_texts(list(_PROBES))]).encode())
  return h.hexdigest()[:16]


def tokenizer_files_digest(folder: str) -> str:
  """sha256 of the names and contents of a tokenizer folder's files (not recursive): the cheap check at start."""
  h = hashlib.sha256()
  for name in sorted(os.listdir(folder)):
    p = os.path.join(folder, name)
    if os.path.isfile(p):
      h.update(name.encode() + b"\0")
      with open(p, "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
  return h.hexdigest()[:16]


def shard_name(i: int, n: int) -> str:
  return f"tokens-{i:05d}-of-{n:05d}.npy"


# ---------------------------------------------------------------------------------------------------------------
# Writing


class _Spill:
  """Tokens per task appended to temporary files while reading (constant memory), metadata kept as arrays."""

  def __init__(self, folder: str, width: int, dtype):
    self.folder, self.width, self.dtype = folder, width, np.dtype(dtype)
    self.files: dict[str, object] = {}
    self.meta: dict[str, list[tuple[np.ndarray, ...]]] = {}

  def add(self, task: str, record_ids: np.ndarray, pos_keys: np.ndarray, seqs: Sequence[Sequence]) -> None:
    """``seqs[i]`` = the ``W`` ``Encoded`` sequences of record ``i`` (query, positive, negatives)."""
    if task not in self.files:
      self.files[task] = open(os.path.join(self.folder, f"spill-{len(self.files)}.bin"), "wb")
      self.meta[task] = []
    lengths = np.asarray([[len(e.ids) for e in rec] for rec in seqs], np.int32).reshape(-1, self.width)
    instr = np.asarray([[e.instr_len for e in rec] for rec in seqs], np.int32).reshape(-1, self.width)
    ids = np.fromiter((t for rec in seqs for e in rec for t in e.ids), np.int64, int(lengths.sum()))
    self.files[task].write(ids.astype(self.dtype).tobytes())
    self.meta[task].append((np.asarray(record_ids, np.int64), np.asarray(pos_keys, np.int64), lengths, instr))

  def close(self) -> None:
    for f in self.files.values():
      f.close()


def _write_shards(spill: _Spill, names: list[str], folder: str, shard_bytes: int) -> tuple[list[dict], dict]:
  """Concatenates the tasks (sorted names) into shards cut at record boundaries; returns (shards, index arrays)."""
  parts = {k: [np.concatenate([m[i] for m in spill.meta[n]]) for n in names] for i, k in
           enumerate(("record_id", "pos_key", "lengths", "instr_len"))}
  arrays = {k: np.concatenate(v) for k, v in parts.items()}
  sizes = [len(ids) for ids in parts["record_id"]]
  per_record = arrays["lengths"].sum(axis=1).astype(np.int64)
  ends = np.cumsum(per_record)
  arrays["token_offset"] = ends - per_record
  arrays["task_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
  total = int(ends[-1]) if len(ends) else 0
  per_shard = max(1, shard_bytes // spill.dtype.itemsize)
  cuts, start = [0], 0          # record boundaries: a shard closes at the first record end past `per_shard` tokens
  while start < total:
    r = int(np.searchsorted(ends, start + per_shard, side="left"))
    stop = int(ends[min(r, len(ends) - 1)])
    cuts.append(stop)
    start = stop
  arrays["shard_tokens"] = np.asarray(cuts, np.int64)
  n = len(cuts) - 1
  shards, readers = [], [(open(spill.files[t].name, "rb")) for t in names]
  try:
    src = iter(readers)
    current, left = next(src, None), b""
    for i in range(n):
      count = cuts[i + 1] - cuts[i]
      name = shard_name(i, n)
      out = np.lib.format.open_memmap(os.path.join(folder, name), mode="w+", dtype=spill.dtype, shape=(count,))
      done = 0
      while done < count:  # the token stream, task file after task file
        want = min(count - done, _COPY_TOKENS) * spill.dtype.itemsize
        while len(left) < want and current is not None:
          more = current.read(want - len(left))
          if not more:
            current = next(src, None)
            continue
          left += more
        block, left = left[:want], left[want:]
        if not block:
          raise RuntimeError(f"token spill ended {count - done} tokens early while writing {name}")
        got = np.frombuffer(block, spill.dtype)
        out[done:done + len(got)] = got
        done += len(got)
      out.flush()
      del out
      shards.append({"file": name, "tokens": int(count), "bytes": os.path.getsize(os.path.join(folder, name))})
  finally:
    for f in readers:
      f.close()
  return shards, arrays


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def local_store(path: str) -> str:
  """A prepared folder to read rows from with ``pread``: ``path`` itself when local; for gs:// a local copy
  (downloaded once per manifest: a store prepared again under the same name is downloaded again), checked like a
  local one afterwards."""
  path = paths.check(path, "prepared folder")
  if not paths.is_gcs(path):
    return path
  manifest = read_manifest(path)
  key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
  return paths.local_copy(path, key=key)


def _check_paths(medi_path: str, out_dir: str, overwrite: bool) -> None:
  if paths.isdir(medi_path):
    what = "a prepared folder already" if is_prepared(medi_path) else "a folder"
    raise DataError(f"{medi_path}: is {what}; `data prepare` reads a MEDI file (.json array or .jsonl)")
  if not paths.isfile(medi_path):
    raise DataError(f"MEDI file not found: {medi_path}")
  if paths.isfile(out_dir):
    raise DataError(f"--out {out_dir}: is a file; name a folder")
  if paths.exists(paths.join(out_dir, MANIFEST)) and not overwrite:
    raise DataError(f"{out_dir} already holds prepared data; remove it or pass --overwrite")
  if paths.isdir(out_dir) and not paths.exists(paths.join(out_dir, MANIFEST)) and paths.listdir(out_dir):
    raise DataError(f"{out_dir} exists and is not a prepared folder; choose an empty or new --out")


def _tokenize(medi_path: str, featurizer: Featurizer, spill: _Spill, report: medi.Report, strict: bool,
              skip_invalid: bool, progress: bool) -> None:
  """Reads and validates every record, tokenises them in chunks and appends them to ``spill`` per task."""
  from tqdm import tqdm
  pending: list[medi.Record] = []

  def flush():
    f = featurizer(pending)
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(pending):
      by_task.setdefault(r.task, []).append(i)
    for task, idx in by_task.items():
      spill.add(task, np.asarray([pending[i].index for i in idx]),
                np.asarray([medi.stable_hash(join_instruction(pending[i].pos.instruction, pending[i].pos.text))
                            for i in idx]),
                [[f["query"][i], f["pos"][i], *f["neg"][i]] for i in idx])
    pending.clear()

  with tqdm(desc=f"prepare {os.path.basename(medi_path)}", unit=" records", unit_scale=True, disable=not progress,
            dynamic_ncols=True, mininterval=1.0) as bar:
    for rec in medi.read_medi(medi_path, strict=strict, skip_invalid=skip_invalid, report=report):
      try:
        featurizer.check_negatives(rec)
      except medi.MediError as e:
        raise medi.MediError(medi_path, rec.line, rec.index, e.cls, e.message) from None
      pending.append(rec)
      if len(pending) >= _TOKENIZE_CHUNK:
        flush()
        bar.update(_TOKENIZE_CHUNK)
    n_last = len(pending)
    if pending:
      flush()
    bar.update(n_last)


def _manifest(medi_path: str, featurizer: Featurizer, tokenizer_dir: str, dtype, options: dict, report: medi.Report,
              names: list[str], arrays: dict, shards: list[dict], index_path: str, t0: float) -> dict:
  stat = os.stat(medi_path)
  return {
      "format": FORMAT, "version": VERSION,
      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "tokenizer": {"fingerprint": tokenizer_fingerprint(featurizer), "dir": os.path.abspath(tokenizer_dir)
                    if tokenizer_dir else "", "vocab_size": featurizer.doc_tok.vocab_size,
                    "files_sha256": tokenizer_files_digest(tokenizer_dir) if tokenizer_dir else ""},
      "max_query_length": featurizer.max_query_length, "max_doc_length": featurizer.max_doc_length,
      "num_negatives": featurizer.num_negatives, "token_dtype": np.dtype(dtype).name,
      "source": {"path": os.path.abspath(medi_path), "bytes": stat.st_size, "mtime": stat.st_mtime},
      "options": options,
      "report": report.to_dict(),
      "tasks": [{"name": n, "records": int(arrays["task_offsets"][k + 1] - arrays["task_offsets"][k])}
                for k, n in enumerate(names)],
      "records": int(len(arrays["record_id"])), "tokens": int(arrays["shard_tokens"][-1]), "shards": shards,
      "fingerprint": _fingerprint(names, arrays), "index_sha256": _sha256(index_path),
      "prepare_s": round(time.time() - t0, 1),
  }


def prepare(medi_path: str, out_dir: str, featurizer: Featurizer, strict: bool = False, skip_invalid: bool = False,
            max_invalid_fraction: float = MAX_INVALID_FRACTION, shard_mb: float = DEFAULT_SHARD_MB,
            overwrite: bool = False, progress: bool = True, tokenizer_dir: str = "") -> dict:
  """Tokenises ``medi_path`` once with ``featurizer`` into ``out_dir`` (see the module docstring); returns the
  manifest. Records are those ``MediIndex.from_file`` loads with the same options, in the same order. Written with
  ``storage.files.atomic_folder``: ``out_dir`` appears complete or not at all (an old one stays until then)."""
  out_dir = paths.check(out_dir, "--out")
  medi_path = paths.check(medi_path, "--medi")
  if not tokenizer_dir and os.path.isdir(getattr(featurizer.doc_tok.hf, "name_or_path", "") or ""):
    tokenizer_dir = featurizer.doc_tok.hf.name_or_path  # the folder the tokenizer was loaded from
  _check_paths(medi_path, out_dir, overwrite)
  source_path, medi_path = medi_path, paths.local_copy(medi_path)
  t0 = time.time()
  dtype = np.uint16 if featurizer.doc_tok.vocab_size <= 65536 else np.int32
  report = medi.Report(medi_path)
  with files.atomic_folder(out_dir, overwrite=True) as tmp:
    spill = _Spill(tmp, 2 + featurizer.num_negatives, dtype)
    try:
      _tokenize(medi_path, featurizer, spill, report, strict, skip_invalid, progress)
    finally:
      spill.close()
    check_invalid(report, max_invalid_fraction)
    if not spill.files:
      raise DataError(f"{medi_path}: no valid MEDI records ({report.summary()})")
    names = sorted(spill.files)
    shards, arrays = _write_shards(spill, names, tmp, int(shard_mb * (1 << 20)))
    for f in spill.files.values():
      os.remove(f.name)
    index_path = os.path.join(tmp, INDEX)
    with open(index_path, "wb") as f:
      np.savez(f, **arrays)
    options = {"strict": strict, "skip_invalid": skip_invalid, "max_invalid_fraction": max_invalid_fraction}
    manifest = _manifest(medi_path, featurizer, tokenizer_dir, dtype, options, report, names, arrays, shards,
                         index_path, t0)
    manifest["source"]["path"] = source_path  # the file as the user named it (gs:// too), not a local copy
    files.write_json(os.path.join(tmp, MANIFEST), manifest, indent=1)  # last: a folder without it is never read
  return manifest


def _fingerprint(names: Sequence[str], arrays: dict) -> str:
  """The file source's ``MediIndex.fingerprint`` from the index arrays (equal for the same data)."""
  off = arrays["task_offsets"]
  per_task = []
  for k, name in enumerate(names):
    a, b = int(off[k]), int(off[k + 1])
    lengths = arrays["lengths"][a:b]
    per_task.append((name, arrays["record_id"][a:b], arrays["pos_key"][a:b],
                     [lengths[:, t] for t in range(lengths.shape[1])]))
  return content_fingerprint(per_task)


# ---------------------------------------------------------------------------------------------------------------
# Reading


def is_prepared(path: str) -> bool:
  """A folder that holds (or was meant to hold) prepared data: ``manifest.json`` or ``index.npz`` inside."""
  path = os.fspath(path)
  return paths.isdir(path) and any(paths.exists(paths.join(path, f)) for f in (MANIFEST, INDEX))


def read_manifest(path: str) -> dict:
  """The manifest of a prepared folder; a one-line ``DataError`` when the folder is not (or not yet) prepared."""
  path = os.fspath(path)
  if not paths.isdir(path):
    raise DataError(f"{path}: no such prepared folder (write one with `python -m instructor_jax.data prepare "
                    f"--medi FILE --out {path}`)")
  mpath = paths.join(path, MANIFEST)
  if not paths.isfile(mpath) or not files.is_complete(path):
    raise DataError(f"{path}: no {MANIFEST} (or no {files.COMMIT} on gs://): not a prepared folder, or its "
                    f"preparation did not finish (a prepare writes the manifest last); run `python -m "
                    f"instructor_jax.data prepare` again")
  try:
    manifest = json.loads(paths.read_text(mpath))
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f"{mpath}: unreadable manifest ({e})") from None
  if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
    raise DataError(f"{mpath}: format {manifest.get('format')!r} version {manifest.get('version')!r}, this code "
                    f"reads {FORMAT!r} version {VERSION}; prepare the data again")
  return manifest


class _Side:
  """One column (query, positive or a negative) of one task: the ``_Ragged`` interface over the index + shards."""

  def __init__(self, index: "PreparedIndex", a: int, b: int, t: int):
    self._index, self._a, self._t = index, a, t
    self.lengths = index.lengths[a:b, t]
    self.instr_len = index.instr_len[a:b, t]

  def row(self, i: int) -> np.ndarray:
    g = self._a + int(i)
    start = int(self._index.token_offset[g]) + int(self._index.lengths[g, :self._t].sum())
    return self._index.read_tokens(start, int(self._index.lengths[g, self._t]))


class _Task:
  def __init__(self, index: "PreparedIndex", k: int):
    a, b = int(index.task_offsets[k]), int(index.task_offsets[k + 1])
    self.ids = index.record_id[a:b]
    self.pos_keys = index.pos_key[a:b]
    self.query = _Side(index, a, b, 0)
    self.pos = _Side(index, a, b, 1)
    self.neg = [_Side(index, a, b, 2 + j) for j in range(index.lengths.shape[1] - 2)]


class PreparedIndex:
  """A prepared folder with the ``features.MediIndex`` interface: the index in memory, tokens read on demand.

  ``tasks[k].query.row(i)`` reads one sequence's tokens from its shard (``os.pread``: nothing else of the shard is
  read or mapped); ``reads`` counts the sequences read (the tests check that a host reads only its rows).
  """

  tokenized = True

  def __init__(self, path: str, verify: bool = True):
    self.path = os.path.abspath(os.fspath(path))
    self.manifest = m = read_manifest(self.path)
    self.source = self.path
    self._fds, self._data_offset = [], []
    for s in m["shards"]:
      p = os.path.join(self.path, s["file"])
      if not os.path.isfile(p):
        raise DataError(f"{self.path}: shard {s['file']} is missing ({len(m['shards'])} shards in {MANIFEST}); "
                        f"restore it or prepare the data again")
      if os.path.getsize(p) != s["bytes"]:
        raise DataError(f"{p}: {os.path.getsize(p)} bytes, {MANIFEST} says {s['bytes']}: the shard is damaged or "
                        f"from another preparation; prepare the data again")
    ipath = os.path.join(self.path, INDEX)
    if not os.path.isfile(ipath):
      raise DataError(f"{self.path}: {INDEX} is missing; prepare the data again")
    if verify and _sha256(ipath) != m["index_sha256"]:
      raise DataError(f"{ipath}: sha256 differs from {MANIFEST}: the index is damaged; prepare the data again")
    try:
      with np.load(ipath) as z:
        for key in ("record_id", "pos_key", "lengths", "instr_len", "token_offset", "task_offsets", "shard_tokens"):
          setattr(self, key, z[key])
    except (OSError, ValueError, KeyError, EOFError) as e:  # only without verify: a damaged or foreign index
      raise DataError(f"{ipath}: unreadable index ({e}); prepare the data again") from None
    self.dtype = np.dtype(m["token_dtype"])
    for s in m["shards"]:
      p = os.path.join(self.path, s["file"])
      try:
        view = np.load(p, mmap_mode="r")  # reads the header only; the data offset is where pread starts
      except (OSError, ValueError) as e:
        raise DataError(f"{p}: not a readable token shard ({e}); prepare the data again") from None
      if view.dtype != self.dtype or view.shape != (s["tokens"],):
        raise DataError(f"{p}: holds {view.shape} {view.dtype}, {MANIFEST} says ({s['tokens']},) {self.dtype}")
      self._data_offset.append(int(view.offset))
      del view
      self._fds.append(os.open(p, os.O_RDONLY))
    self.task_names = [t["name"] for t in m["tasks"]]
    self.tasks = [_Task(self, k) for k in range(len(self.task_names))]
    self.report = medi.Report(m["source"]["path"])
    rep = m["report"]
    self.report.read, self.report.valid = rep.get("records_read", 0), rep.get("valid", 0)
    self.report.counts.update(rep.get("skipped_by_class", {}))
    for cls, ex in rep.get("examples", {}).items():
      self.report.examples[cls] = list(ex)
    self.reads = 0

  @property
  def sizes(self) -> list[int]:
    return [len(t.ids) for t in self.tasks]

  def fingerprint(self) -> str:
    return self.manifest["fingerprint"]

  def read_tokens(self, start: int, count: int) -> np.ndarray:
    """``count`` tokens of the token stream from ``start`` (one ``pread`` in the shard that holds them)."""
    s = int(np.searchsorted(self.shard_tokens, start, side="right")) - 1
    size = self.dtype.itemsize
    offset = self._data_offset[s] + (start - int(self.shard_tokens[s])) * size
    buf = os.pread(self._fds[s], count * size, offset)
    if len(buf) != count * size:
      raise DataError(f"{self.path}/{self.manifest['shards'][s]['file']}: short read at token {start} (the shard "
                      f"was truncated after the start)")
    self.reads += 1
    return np.frombuffer(buf, self.dtype)

  def check(self, max_query_length: int, max_doc_length: int, num_negatives: int, featurizer,
            tokenizer_dir: str = "", where: str = "config.data") -> None:
    """Fails when the folder was prepared for another tokenizer, other lengths or another number of negatives.

    The tokenizer is loaded (``featurizer``: a ``Featurizer`` or a callable making one) only when the files of
    ``tokenizer_dir`` differ from those it was prepared with: a restart does not import transformers.
    """
    m = self.manifest
    want = {"max_query_length": int(max_query_length), "max_doc_length": int(max_doc_length),
            "num_negatives": int(num_negatives)}
    bad = [f"{where}.{k}={v} but the data was prepared with {m[k]}" for k, v in want.items() if m[k] != v]
    tok = m["tokenizer"]
    same_files = bool(tokenizer_dir) and tok.get("files_sha256") == tokenizer_files_digest(tokenizer_dir)
    if not bad and not same_files:
      fp = tokenizer_fingerprint(featurizer if isinstance(featurizer, Featurizer) else featurizer())
      if fp != tok["fingerprint"]:
        bad.append(f"the model's tokenizer (fingerprint {fp}) is not the one the data was prepared with "
                   f"({tok['fingerprint']}, from {tok['dir'] or '?'})")
    if bad:
      raise DataError(f"{self.path}: {'; '.join(bad)}; prepare it again for this config (python -m "
                      f"instructor_jax.data prepare --medi {m['source']['path']} --out NEW_DIR --tokenizer DIR "
                      f"--max-query-length {want['max_query_length']} --max-doc-length {want['max_doc_length']} "
                      f"--num-negatives {want['num_negatives']})")

  def close(self) -> None:
    for fd in self._fds:
      os.close(fd)
    self._fds = []

  def __del__(self):
    try:
      self.close()
    except Exception:  # interpreter shutdown
      pass


def open_prepared(path: str, featurizer=None, lengths: Optional[Sequence[int]] = None,
                  tokenizer_dir: str = "") -> PreparedIndex:
  """``PreparedIndex(path)``, checked against the training config: ``lengths`` = ``(max_query_length,
  max_doc_length, num_negatives)`` (default: the ``Featurizer``'s) and the tokenizer (``featurizer``: a
  ``Featurizer`` or a callable making one, used only when ``tokenizer_dir``'s files differ; see ``check``)."""
  index = PreparedIndex(local_store(path))
  if featurizer is not None:
    if lengths is None:
      lengths = (featurizer.max_query_length, featurizer.max_doc_length, featurizer.num_negatives)
    index.check(*lengths, featurizer, tokenizer_dir)
  return index
