"""MEDI records: the streaming reader and validator (a 3 GB JSON array or JSON lines in constant memory).

A record is ``{"query": [instruction, text], "pos": [...], "neg": [...] or [[...], ...], "task_name": str}``
(``task_id`` in newer copies). The first thing to know: every problem is a ``MediError`` naming
``FILE:LINE: record i: [class]``, where the record index is the record's id everywhere in the pipeline; with
``skip_invalid`` bad records are counted per class in a ``Report`` instead (a file problem -- ``truncated``,
``no_records`` -- always fails). Classes: ``invalid_json``, ``invalid_utf8``, ``not_an_object``, ``missing_key``,
``extra_key``, ``duplicate_key``, ``bad_side``, ``empty_text``, ``bad_task_id``, ``bad_instruction`` (``strict``:
must start with "Represent "), ``truncated``, ``no_records``.
"""
from __future__ import annotations

import codecs
import collections
import dataclasses
import hashlib
import json
import re
from typing import Any, Iterator, Optional, Sequence

from instructor_jax.core import log
from instructor_jax.core import errors
from instructor_jax.storage import files, paths


ERROR_CLASSES = ("invalid_json", "invalid_utf8", "not_an_object", "missing_key", "extra_key", "duplicate_key",
                 "bad_side", "empty_text", "bad_task_id", "bad_instruction", "truncated", "no_records")
FATAL_CLASSES = ("truncated", "no_records")  # problems of the file, not of a record: never skipped
SIDES = ("query", "pos", "neg")
TASK_KEYS = ("task_name", "task_id")
INSTRUCTION_PREFIX = "Represent "

_CHUNK = 1 << 20          # bytes read at a time from a JSON array
_TAIL = 16                # a decode error this close to the end of the window may just be a cut record
_WS = re.compile(r"\s*")
_RESYNC = re.compile(r",\s*(\{)")
_SURROGATE = re.compile("[\ud800-\udfff]")


class MediError(errors.DataError):
  """A bad MEDI record: ``path:line: record i: [class] message`` (its parts as attributes)."""

  def __init__(self, path: str, line: int, index: int, cls: str, message: str):
    self.path, self.line, self.index, self.cls, self.message = path, line, index, cls, message
    super().__init__(f"{path}:{line}: record {index} (line {line}): [{cls}] {message}")


@dataclasses.dataclass(frozen=True)
class Pair:
  instruction: str
  text: str

  def as_list(self) -> list[str]:
    return [self.instruction, self.text]


@dataclasses.dataclass(frozen=True)
class Record:
  """One validated MEDI record. ``index`` is its position in the source (its record id), ``line`` its first line."""
  index: int
  line: int
  task: str
  query: Pair
  pos: Pair
  neg: tuple[Pair, ...]

  def to_json(self, task_key: str = "task_name") -> dict:
    neg = self.neg[0].as_list() if len(self.neg) == 1 else [p.as_list() for p in self.neg]
    return {"query": self.query.as_list(), "pos": self.pos.as_list(), "neg": neg, task_key: self.task}


class Report:
  """Per-class counts of skipped records, with the first few locations of each class."""

  MAX_EXAMPLES = 20

  def __init__(self, path: str = ""):
    self.path = path
    self.read = 0            # records seen (valid + invalid)
    self.valid = 0
    self.counts: collections.Counter = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def add(self, err: MediError) -> None:
    self.counts[err.cls] += 1
    if len(self.examples[err.cls]) < self.MAX_EXAMPLES:
      self.examples[err.cls].append(str(err))

  @property
  def skipped(self) -> int:
    return sum(self.counts.values())

  def to_dict(self) -> dict:
    return {"source": self.path, "records_read": self.read, "valid": self.valid, "skipped": self.skipped,
            "skipped_by_class": dict(sorted(self.counts.items())), "examples": dict(self.examples)}

  def write(self, path: str) -> None:
    files.write_json(path, self.to_dict(), indent=1)

  def summary(self) -> str:
    if not self.skipped:
      return f"{self.path}: {self.valid} valid records, none skipped"
    per = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
    return f"{self.path}: {self.valid} valid records, skipped {self.skipped} invalid ({per})"


# ---------------------------------------------------------------------------------------------------------------
# Validation


def _utf8_ok(s: str) -> bool:
  try:
    s.encode("utf-8")
    return True
  except UnicodeEncodeError:
    return False


def _key_line(raw: str, key: str, first_line: int) -> int:
  """Line of ``"key":`` inside a record's raw text (the record's first line when not found)."""
  if not raw:
    return first_line
  m = re.search(r'"%s"\s*:' % re.escape(key), raw)
  return first_line + raw.count("\n", 0, m.start()) if m else first_line


def _pair(value: Any, side: str) -> Pair:
  if not (isinstance(value, list) and len(value) == 2 and all(isinstance(s, str) for s in value)):
    raise _Bad("bad_side", f"{side!r} must be an [instruction, text] list of two strings, got {_short(value)}")
  return Pair(value[0], value[1])


class _Bad(Exception):

  def __init__(self, cls: str, message: str, key: Optional[str] = None):
    super().__init__(message)
    self.cls, self.message, self.key = cls, message, key


def _short(value: Any, n: int = 120) -> str:
  s = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
  return s if len(s) <= n else s[:n] + "..."


def _validate(obj: Any, strict: bool) -> tuple[str, Pair, Pair, tuple[Pair, ...]]:
  if not isinstance(obj, dict):
    raise _Bad("not_an_object", f"expected a JSON object, got {type(obj).__name__}: {_short(obj)}")
  if getattr(obj, "duplicates", ()):
    raise _Bad("duplicate_key", f"key(s) {', '.join(map(repr, obj.duplicates))} appear more than once in the "
               "record (JSON would keep the last value silently)", key=obj.duplicates[0])
  keys = set(obj)
  missing = [k for k in SIDES if k not in keys]
  task_keys = [k for k in TASK_KEYS if k in keys]
  if not task_keys:
    missing.append("task_name (or task_id)")
  if missing:
    raise _Bad("missing_key", f"missing key(s) {', '.join(missing)}; record has {sorted(keys)}")
  extra = sorted(keys - set(SIDES) - set(TASK_KEYS))
  if len(task_keys) > 1:
    extra.append("task_id (besides task_name)")
  if extra:
    raise _Bad("extra_key", f"unexpected key(s) {', '.join(extra)}", key=extra[0].split()[0])
  task = obj[task_keys[0]]
  if isinstance(task, bool) or not isinstance(task, (str, int)) or (isinstance(task, str) and not task.strip()):
    raise _Bad("bad_task_id", f"{task_keys[0]} must be a non-empty string (or an integer), got {_short(task)}",
               key=task_keys[0])
  task = str(task).strip()
  if not _utf8_ok(task):
    raise _Bad("invalid_utf8", f"{task_keys[0]} is not valid UTF-8: {task!r:.120}", key=task_keys[0])
  sides = {}
  for side in SIDES:
    value = obj[side]
    try:
      if side == "neg" and isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        pairs = tuple(_pair(v, side) for v in value)  # k hard negatives
      else:
        pairs = (_pair(value, side),)
    except _Bad as e:
      e.key = side
      raise
    for p in pairs:
      if not (_utf8_ok(p.instruction) and _utf8_ok(p.text)):
        raise _Bad("invalid_utf8", f"{side!r} holds bytes that are not valid UTF-8: {p.text[:80]!r}", key=side)
      if not p.text.strip():
        raise _Bad("empty_text", f"{side!r} has an empty text", key=side)
      if strict and not p.instruction.startswith(INSTRUCTION_PREFIX):
        raise _Bad("bad_instruction", f"{side!r} instruction does not start with {INSTRUCTION_PREFIX!r} "
                   f"(--strict): {p.instruction[:80]!r}", key=side)
    sides[side] = pairs
  return task, sides["query"][0], sides["pos"][0], sides["neg"]


# ---------------------------------------------------------------------------------------------------------------
# Reading


def detect_format(path: str) -> str:
  """``'array'`` or ``'jsonl'``: by the first non-blank character (``[`` -> array), else by the extension."""
  with open(path, "rb") as f:
    head = f.read(4096)
  head = head.lstrip(codecs.BOM_UTF8).lstrip()
  if head[:1] == b"[":
    return "array"
  if head[:1] == b"{":
    return "jsonl"
  if not head:
    raise MediError(path, 1, 0, "invalid_json", "the file is empty")
  return "jsonl" if path.endswith((".jsonl", ".jsonlines")) else "array"


class _Object(dict):
  """A decoded JSON object that remembers keys it saw twice (``json`` would keep the last value silently)."""
  duplicates: tuple = ()

  @classmethod
  def from_pairs(cls, pairs):
    obj = cls(pairs)
    if len(obj) != len(pairs):
      seen, dup = set(), []
      for k, _ in pairs:
        if k in seen and k not in dup:
          dup.append(k)
        seen.add(k)
      obj.duplicates = tuple(dup)
    return obj


class _Window:
  """A sliding text window over a file (UTF-8 with ``surrogateescape``): ``buf[pos]`` is at line ``line``."""

  def __init__(self, f):
    self.f, self.dec = f, codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    self.buf, self.pos, self.line, self.eof = "", 0, 1, False

  def more(self) -> bool:
    if self.eof:
      return False
    chunk = self.f.read(_CHUNK)
    first = not self.buf and self.f.tell() == len(chunk)
    if not chunk:
      self.buf += self.dec.decode(b"", final=True)
      self.eof = True
      return False
    self.buf += self.dec.decode(chunk)
    if first and self.buf.startswith("\ufeff"):
      self.buf = self.buf[1:]
    return True

  def compact(self) -> None:  # drops the consumed prefix; only between records
    if self.pos > _CHUNK:
      self.buf, self.pos = self.buf[self.pos:], 0

  def skip_ws(self) -> None:
    while True:
      m = _WS.match(self.buf, self.pos)
      self.line += self.buf.count("\n", self.pos, m.end())
      self.pos = m.end()
      if self.pos < len(self.buf) or not self.more():
        return

  def at_end(self) -> bool:
    return self.pos >= len(self.buf)

  def column(self, pos: int) -> int:
    return pos - (self.buf.rfind("\n", 0, pos) + 1) + 1

  def blank_before(self, pos: int) -> bool:
    """Whether only whitespace stands between the start of ``pos``'s line and ``pos``."""
    return not self.buf[self.buf.rfind("\n", 0, pos) + 1:pos].strip()

  def resync(self, after: int, start: int, start_line: int) -> bool:
    """Moves to the next ``, {`` after ``after`` (a record that starts at ``start`` / ``start_line``)."""
    while True:
      m = _RESYNC.search(self.buf, after)
      if m or not self.more():
        break
    if not m:
      return False
    self.line = start_line + self.buf.count("\n", start, m.start(1))
    self.pos = m.start(1)
    return True


def _decode_record(w: _Window, decoder: json.JSONDecoder, path: str, index: int):
  """``(obj, end, None)`` for the record at ``w.pos``, or ``(None, err_pos, MediError)``; a record the file ends
  inside is a ``truncated`` error with ``err_pos = None``."""
  start_line = w.line
  while True:
    try:
      obj, end = decoder.raw_decode(w.buf, w.pos)
      return obj, end, None
    except json.JSONDecodeError as e:
      cut = e.pos >= len(w.buf) - _TAIL or e.msg.startswith("Unterminated string")
      if cut and w.more():
        continue
      if cut:  # and no more data: the file ends inside this record
        return None, None, MediError(path, start_line, index, "truncated",
                                     f"the file ends inside this record ({e.msg}): the file is truncated")
      err_line = start_line + w.buf.count("\n", w.pos, e.pos)
      hint = ""
      if e.msg.startswith("Expecting") and "delimiter" in e.msg and w.blank_before(e.pos):
        hint = f"; probably a missing delimiter at the end of line {err_line - 1}"
      return None, e.pos, MediError(path, err_line, index, "invalid_json",
                                    f"{e.msg} (column {w.column(e.pos)}; the record starts at line {start_line}{hint})")


def _truncated_array(path: str, line: int, index: int) -> MediError:
  return MediError(path, line, index, "truncated", "the file ends inside the array (no closing ']'): the file is "
                   "truncated")


def _raw_array(path: str) -> Iterator[tuple[int, int, str, Any, Optional[MediError]]]:
  """Yields ``(index, line, raw_text, obj, error)`` for every element of a top-level JSON array, streaming.

  Bytes that are not UTF-8 are decoded with ``surrogateescape`` and detected per record by validation. After a
  record that is not valid JSON the reader resynchronises on the next ``, {``.
  """
  decoder = json.JSONDecoder(object_pairs_hook=_Object.from_pairs)
  with open(path, "rb") as f:
    w = _Window(f)
    w.more()
    w.skip_ws()
    if w.at_end() or w.buf[w.pos] != "[":
      found = w.buf[w.pos:w.pos + 20] if not w.at_end() else "end of file"
      yield 0, w.line, "", None, MediError(path, w.line, 0, "invalid_json",
                                           f"expected a JSON array '[', found {found!r}")
      return
    w.pos += 1
    index = 0
    w.skip_ws()
    if not w.at_end() and w.buf[w.pos] == "]":
      return
    while True:
      w.compact()
      w.skip_ws()
      if w.at_end():
        yield index, w.line, "", None, _truncated_array(path, w.line, index)
        return
      start, start_line = w.pos, w.line
      obj, end, err = _decode_record(w, decoder, path, index)
      if err is not None:
        yield index, err.line, "", None, err
        if end is None or not w.resync(max(end, start + 1), start, start_line):
          return
        index += 1
        continue
      yield index, start_line, w.buf[start:end], obj, None
      w.line += w.buf.count("\n", start, end)
      w.pos = end
      index += 1
      w.skip_ws()
      if w.at_end():
        yield index, w.line, "", None, _truncated_array(path, w.line, index)
        return
      ch = w.buf[w.pos]
      if ch == "]":
        w.pos += 1
        w.skip_ws()
        if not w.at_end():
          extra = w.buf[w.pos:w.pos + 20]
          yield index, w.line, "", None, MediError(path, w.line, index, "invalid_json",
                                                    f"unexpected data after the closing ']': {extra!r}")
        return
      if ch != ",":
        hint = (f"; probably a missing ',' at the end of line {w.line - 1}"
                if w.blank_before(w.pos) and w.line > 1 else "")
        yield index, w.line, "", None, MediError(path, w.line, index, "invalid_json",
                                                  f"expected ',' or ']' between records (column {w.column(w.pos)}"
                                                  f"{hint}), found {w.buf[w.pos:w.pos + 20]!r}")
        if not w.resync(w.pos, w.pos, w.line):
          return
        index += 1
        continue
      w.pos += 1


def _raw_jsonl(path: str) -> Iterator[tuple[int, int, str, Any, Optional[MediError]]]:
  index = 0
  with open(path, "rb") as f:
    for lineno, bline in enumerate(f, start=1):
      if lineno == 1:
        bline = bline[len(codecs.BOM_UTF8):] if bline.startswith(codecs.BOM_UTF8) else bline
      if not bline.strip():
        continue
      try:
        text = bline.decode("utf-8")
      except UnicodeDecodeError as e:
        yield index, lineno, "", None, MediError(path, lineno, index, "invalid_utf8",
                                                  f"not valid UTF-8 at byte {e.start} of the line")
        index += 1
        continue
      try:
        obj = json.loads(text, object_pairs_hook=_Object.from_pairs)
        yield index, lineno, "", obj, None
      except json.JSONDecodeError as e:
        if not bline.endswith(b"\n"):  # the last line, cut short
          yield index, lineno, "", None, MediError(path, lineno, index, "truncated",
                                                    f"the last line is incomplete JSON ({e.msg}): the file is "
                                                    f"truncated")
          return
        yield index, lineno, "", None, MediError(path, lineno, index, "invalid_json", f"{e.msg} (column {e.colno})")
      index += 1


def read_medi(path: str, strict: bool = False, skip_invalid: bool = False, report: Optional[Report] = None,
              fmt: Optional[str] = None) -> Iterator[Record]:
  """Streams validated ``Record``s from a MEDI JSON array or JSON-lines file.

  Raises ``MediError`` on the first bad record unless ``skip_invalid`` (then counted in ``report``).
  """
  path = paths.check(path, "MEDI file")
  if paths.is_gcs(path) and paths.isfile(path):
    path = paths.local_copy(path)
  if paths.isdir(path):
    raise errors.DataError(f"{path} is a folder; pass a MEDI file (.json array or .jsonl)")
  if not paths.isfile(path):
    raise errors.DataError(f"MEDI file not found: {path}")
  fmt = fmt or detect_format(path)
  raw = _raw_array(path) if fmt == "array" else _raw_jsonl(path)
  report = report if report is not None else Report(path)
  report.path = report.path or path
  for index, line, text, obj, err in raw:
    report.read += 1
    if err is None:
      try:
        task, query, pos, neg = _validate(obj, strict)
      except _Bad as e:
        err_line = _key_line(text, e.key, line) if e.key else line
        bad = _SURROGATE.search(text) if e.cls == "invalid_utf8" else None
        if bad:
          err_line = line + text.count("\n", 0, bad.start())
        err = MediError(path, err_line, index, e.cls, e.message + (
            f" (the record starts at line {line})" if err_line != line else ""))
      else:
        report.valid += 1
        yield Record(index, line, task, query, pos, neg)
        continue
    if not skip_invalid or err.cls in FATAL_CLASSES:
      raise err
    report.add(err)
    if report.counts[err.cls] <= Report.MAX_EXAMPLES:
      log.warning("skipping invalid record: %s", err)
  if report.read == 0:
    raise MediError(path, 1, 0, "no_records", "the file holds no records")
  if report.skipped:
    log.warning(report.summary())


def write_jsonl(records: Sequence[dict], path: str) -> None:
  """Writes MEDI JSON lines atomically."""
  with files.atomic_file(path) as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")


def stable_hash(text: str) -> int:
  """A process-independent 63-bit hash (Python's ``hash`` is salted per process)."""
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little") >> 1
