"""MEDI: reading and validating records, and the MEDI builder (mining pairs from Super-NaturalInstructions).

A MEDI record is ``{"query": [instruction, text], "pos": [instruction, text], "neg": [instruction, text],
"task_name": str}`` (newer copies say ``"task_id"``, an integer in the released file). ``neg`` may also be a list of
pairs (k hard negatives).

Reading (``read_medi``) streams both formats without loading the file whole:

* a JSON array (the original ``medi-data.json``, ~3 GB): parsed element by element with ``json.JSONDecoder.raw_decode``
  over a sliding text window, so memory stays at one record plus one read chunk;
* JSON lines (one record per line).

Every problem is reported with the file, the 1-based line and the 0-based record index (the record's position in
the source, which is also its *record id* everywhere in the pipeline), and an error class:

=================  ==================================================================
``invalid_json``   the record is not valid JSON (array format: the reader resynchronises on the next record)
``invalid_utf8``   the bytes are not UTF-8 (or a string holds a lone surrogate escape)
``not_an_object``  the record is not a JSON object
``missing_key``    ``query``/``pos``/``neg`` or the task key is absent
``extra_key``      any other key (or both ``task_name`` and ``task_id``)
``bad_side``       a side is not an ``[instruction, text]`` list of two strings
``empty_text``     the text of a side is empty or whitespace
``bad_task_id``    the task is not a non-empty string (or an integer, as in the released MEDI)
``bad_instruction`` (``strict`` only) an instruction does not start with ``"Represent "``
``truncated``      the file ends inside a record or before the array's ``]`` (always an error)
=================  ==================================================================

By default the first problem raises ``MediError``. With ``skip_invalid=True`` bad records are skipped and counted
per class in a ``Report`` (``report.write(path)`` puts it next to prepared data); nothing is dropped silently. A
truncated file is never read as far as it goes: that error is raised whatever ``skip_invalid`` says.

The builder lives at the bottom of this file: ``python -m instructor_jax.medi build --super-ni DIR --embedder MODEL
--annotations FILE --out medi.jsonl``.
"""
from __future__ import annotations

import argparse
import codecs
import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from instructor_jax.errors import UserError

log = logging.getLogger(__name__)

ERROR_CLASSES = ("invalid_json", "invalid_utf8", "not_an_object", "missing_key", "extra_key", "bad_side",
                 "empty_text", "bad_task_id", "bad_instruction", "truncated")
FATAL_CLASSES = ("truncated",)  # problems of the file, not of a record: never skipped
SIDES = ("query", "pos", "neg")
TASK_KEYS = ("task_name", "task_id")
INSTRUCTION_PREFIX = "Represent "

_CHUNK = 1 << 20          # bytes read at a time from a JSON array
_TAIL = 16                # a decode error this close to the end of the window may just be a cut record
_WS = re.compile(r"\s*")
_RESYNC = re.compile(r",\s*(\{)")
_SURROGATE = re.compile("[\ud800-\udfff]")


class MediError(UserError, ValueError):
  """A bad MEDI record: ``path:line: record i: [class] message``."""

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
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.to_dict(), f, indent=1)
    os.replace(tmp, path)

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


def _raw_array(path: str) -> Iterator[tuple[int, int, str, Any, Optional[MediError]]]:
  """Yields ``(index, line, raw_text, obj, error)`` for every element of a top-level JSON array, streaming.

  Bytes that are not UTF-8 are decoded with ``surrogateescape`` and detected per record by validation.
  """
  decoder = json.JSONDecoder()
  dec = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
  f = open(path, "rb")
  buf, pos, line, eof = "", 0, 1, False  # `line` is the line number at `buf[pos]`

  def more() -> bool:
    nonlocal buf, eof
    if eof:
      return False
    chunk = f.read(_CHUNK)
    first = not buf and f.tell() == len(chunk)
    if not chunk:
      buf += dec.decode(b"", final=True)
      eof = True
      return False
    buf += dec.decode(chunk)
    if first and buf.startswith("\ufeff"):
      buf = buf[1:]
    return True

  def compact() -> None:  # drops the consumed prefix; only between records
    nonlocal buf, pos
    if pos > _CHUNK:
      buf, pos = buf[pos:], 0

  def skip_ws() -> None:
    nonlocal pos, line
    while True:
      m = _WS.match(buf, pos)
      line += buf.count("\n", pos, m.end())
      pos = m.end()
      if pos < len(buf) or not more():
        return

  try:
    more()
    skip_ws()
    if pos >= len(buf) or buf[pos] != "[":
      found = buf[pos:pos + 20] if pos < len(buf) else "end of file"
      yield 0, line, "", None, MediError(path, line, 0, "invalid_json", f"expected a JSON array '[', found {found!r}")
      return
    pos += 1
    index = 0
    skip_ws()
    if pos < len(buf) and buf[pos] == "]":
      return
    while True:
      compact()
      skip_ws()
      if pos >= len(buf):
        yield index, line, "", None, MediError(path, line, index, "truncated",
                                                "the file ends inside the array (no closing ']'): the file is "
                                                "truncated")
        return
      start, start_line = pos, line
      while True:
        try:
          obj, end = decoder.raw_decode(buf, pos)
          err = None
          break
        except json.JSONDecodeError as e:
          cut = e.pos >= len(buf) - _TAIL or e.msg.startswith("Unterminated string")
          if cut and more():
            continue
          err = e
          if cut:  # and no more data: the file ends inside this record
            yield index, start_line, "", None, MediError(
                path, start_line, index, "truncated",
                f"the file ends inside this record ({e.msg}): the file is truncated")
            return
          break
      if err is None:
        raw = buf[start:end]
        yield index, start_line, raw, obj, None
        line += buf.count("\n", start, end)
        pos = end
      else:
        err_line = start_line + buf.count("\n", start, err.pos)
        col = err.pos - (buf.rfind("\n", 0, err.pos) + 1) + 1
        hint = ""
        if err.msg.startswith("Expecting") and "delimiter" in err.msg and not buf[buf.rfind("\n", 0, err.pos) + 1:
                                                                               err.pos].strip():
          hint = f"; probably a missing delimiter at the end of line {err_line - 1}"
        yield index, err_line, "", None, MediError(
            path, err_line, index, "invalid_json",
            f"{err.msg} (column {col}; the record starts at line {start_line}{hint})")
        # Resynchronise on the next `, {` after the error.
        while True:
          m = _RESYNC.search(buf, max(err.pos, start + 1))
          if m or not more():
            break
        if not m:
          return
        line = start_line + buf.count("\n", start, m.start(1))
        pos = m.start(1)
        index += 1
        continue
      index += 1
      skip_ws()
      if pos >= len(buf):
        yield index, line, "", None, MediError(path, line, index, "truncated",
                                                "the file ends inside the array (no closing ']'): the file is "
                                                "truncated")
        return
      ch = buf[pos]
      if ch == "]":
        pos += 1
        skip_ws()
        if pos < len(buf):
          yield index, line, "", None, MediError(path, line, index, "invalid_json",
                                                  f"unexpected data after the closing ']': {buf[pos:pos + 20]!r}")
        return
      if ch != ",":
        col = pos - (buf.rfind("\n", 0, pos) + 1) + 1
        at_line_start = not buf[buf.rfind("\n", 0, pos) + 1:pos].strip()
        hint = f"; probably a missing ',' at the end of line {line - 1}" if at_line_start and line > 1 else ""
        yield index, line, "", None, MediError(path, line, index, "invalid_json",
                                                f"expected ',' or ']' between records (column {col}{hint}), "
                                                f"found {buf[pos:pos + 20]!r}")
        m = None
        while True:
          m = _RESYNC.search(buf, pos)
          if m or not more():
            break
        if not m:
          return
        line += buf.count("\n", pos, m.start(1))
        pos = m.start(1)
        index += 1
        continue
      pos += 1
  finally:
    f.close()


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
        obj = json.loads(text)
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
  path = os.fspath(path)
  if os.path.isdir(path):
    raise FileNotFoundError(f"{path} is a folder; pass a MEDI file (.json array or .jsonl)")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"MEDI file not found: {path}")
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
  if report.skipped:
    log.warning(report.summary())


def write_jsonl(records: Sequence[dict], path: str) -> None:
  """Writes MEDI JSON lines atomically (``path.tmp`` then rename)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def stable_hash(text: str) -> int:
  """A process-independent 63-bit hash (Python's ``hash`` is salted per process)."""
  return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little") >> 1


# ---------------------------------------------------------------------------------------------------------------
# The MEDI builder: mining positive / hard-negative pairs from Super-NaturalInstructions task files

INSTRUCTION_TEMPLATE = "Represent the {domain} {text_type} for {objective}: "

# Annotations for the 24 Super-NaturalInstructions tasks bundled in shared/data/super-ni (written for this project
# from each task's Definition). `type` fixes the mining rule; without it a task with few distinct outputs
# (<= max_labels and <= a quarter of its instances) is treated as classification.
DEFAULT_ANNOTATIONS: dict[str, dict[str, str]] = {
    **{f"task{n}_scan_structured_text_generation_command_action_{s}": {
        "domain": "navigation", "text_type": "command", "objective": "retrieving commands that execute the same "
        "action sequence", "type": "generation"} for n, s in ((126, "all"), (128, "short"), (130, "long"))},
    **{f"task{n}_scan_long_text_generation_action_command_{s}": {
        "domain": "navigation", "text_type": "action sequence", "objective": "retrieving action sequences of the "
        "same command", "type": "generation"} for n, s in ((127, "all"), (129, "short"), (131, "long"))},
    "task137_detoxifying-lms_classification_toxicity": {
        "domain": "language model", "text_type": "prompt and completions", "objective": "classifying which "
        "completion is the least toxic", "type": "classification"},
    "task138_detoxifying-lms_classification_fluency": {
        "domain": "language model", "text_type": "prompt and completions", "objective": "classifying which "
        "completion is the most fluent", "type": "classification"},
    "task139_detoxifying-lms_classification_topicality": {
        "domain": "language model", "text_type": "prompt and completions", "objective": "classifying which "
        "completion is the most topical", "type": "classification"},
    "task140_detoxifying-lms_classification_style": {
        "domain": "language model", "text_type": "prompt and completions", "objective": "classifying which "
        "completion is stylistically closest to the prompt", "type": "classification"},
    "task141_odd-man-out_classification_category": {
        "domain": "vocabulary", "text_type": "category and word list", "objective": "finding the word that does "
        "not belong", "type": "generation"},
    "task142_odd-man-out_classification_no_category": {
        "domain": "vocabulary", "text_type": "word list", "objective": "finding the word that does not belong",
        "type": "generation"},
    "task143_odd-man-out_classification_generate_category": {
        "domain": "vocabulary", "text_type": "word list", "objective": "classifying the category of the words",
        "type": "classification"},
    "task151_tomqa_find_location_easy_clean": {
        "domain": "theory of mind", "text_type": "story and question", "objective": "retrieving the location of "
        "an object", "type": "generation"},
    "task152_tomqa_find_location_easy_noise": {
        "domain": "theory of mind", "text_type": "noisy story and question", "objective": "retrieving the "
        "location of an object", "type": "generation"},
    "task156_codah_classification_adversarial": {
        "domain": "commonsense", "text_type": "prompt and completions", "objective": "classifying the most "
        "plausible completion", "type": "classification"},
    **{f"task{n}_jeopardy_answer_generation_{s}": {
        "domain": "trivia", "text_type": "Jeopardy clue", "objective": "retrieving the answer",
        "type": "generation"} for n, s in ((305, "normal"), (306, "double"), (307, "final"), (308, "all"))},
    **{f"task{n}_stereoset_classification_{s}": {
        "domain": f"{s} stereotype", "text_type": "target and sentence pair", "objective": "classifying "
        "stereotype, anti-stereotype or unrelated", "type": "classification"}
       for n, s in ((318, "gender"), (319, "profession"), (320, "race"), (321, "religion"))},
}


def instruction_from_annotation(task: str, ann: Mapping[str, str]) -> str:
  """``"Represent the {domain} {text type} for {objective}: "`` (an empty domain is left out)."""
  missing = [k for k in ("text_type", "objective") if not str(ann.get(k, "")).strip()]
  if missing:
    raise ValueError(f"annotation of {task} lacks {missing} (needs domain, text_type, objective)")
  domain = str(ann.get("domain", "")).strip()
  return INSTRUCTION_TEMPLATE.format(domain=domain, text_type=str(ann["text_type"]).strip(),
                                     objective=str(ann["objective"]).strip()).replace("the  ", "the ")


@dataclasses.dataclass
class SuperNiTask:
  name: str
  definition: str
  inputs: list[str]
  outputs: list[str]  # the first output of each instance


def read_super_ni(path: str) -> SuperNiTask:
  """One Super-NaturalInstructions task file (``Definition`` a string or a list; ``Instances`` with ``input`` and an
  ``output`` list)."""
  name = os.path.splitext(os.path.basename(path))[0]
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a valid JSON task file: {e}") from e
  if not isinstance(obj, dict) or "Instances" not in obj or "Definition" not in obj:
    raise ValueError(f"{path}: a Super-NaturalInstructions task needs 'Definition' and 'Instances'")
  definition = obj["Definition"]
  if isinstance(definition, list):
    definition = " ".join(str(d) for d in definition)
  inputs, outputs = [], []
  for i, inst in enumerate(obj["Instances"]):
    out = inst.get("output") if isinstance(inst, dict) else None
    if isinstance(out, str):
      out = [out]
    if (not isinstance(inst, dict) or not isinstance(inst.get("input"), str) or not isinstance(out, list)
        or not out or not all(isinstance(o, str) for o in out)):
      raise ValueError(f"{path}: instance {i} needs an 'input' string and a non-empty 'output' list of strings")
    if not inst["input"].strip():
      raise ValueError(f"{path}: instance {i} has an empty input")
    inputs.append(inst["input"])
    outputs.append(out[0])
  return SuperNiTask(name, str(definition), inputs, outputs)


def _unique_ids(texts: Sequence[str]) -> np.ndarray:
  ids: dict[str, int] = {}
  return np.asarray([ids.setdefault(t.strip(), len(ids)) for t in texts], np.int32)


def mine_pairs(x: np.ndarray, *, labels: Optional[np.ndarray] = None, y: Optional[np.ndarray] = None,
               input_ids: Optional[np.ndarray] = None, output_ids: Optional[np.ndarray] = None,
               num_negatives: int = 1, memory_bytes: int = 1 << 28) -> tuple[np.ndarray, np.ndarray]:
  """Positive and hard-negative indices per instance, by chunked matrix products (never an N x N matrix).

  Classification (``labels``): positive = most similar other input with the same label, negatives = most similar
  inputs with another label. Text output (``y``): ``s_pos = cos(x_i, x_j) + cos(y_i, y_j)``, ``s_neg = cos(x_i, x_j)
  - cos(y_i, y_j)``; the best ``s_pos`` is the positive, the best ``s_neg`` (other than the positive, with another
  output text) the negatives. Candidates never include the instance itself or a copy of its input text
  (``input_ids``). Returns ``pos [N]`` and ``neg [N, num_negatives]`` with -1 where no candidate exists.
  Rows are processed ``C`` at a time with ``C * N * 4 * 4 bytes <= memory_bytes`` (JAX on the default device).
  """
  import jax
  import jax.numpy as jnp

  if (labels is None) == (y is None):
    raise ValueError("pass labels (classification) or y (text outputs), not both")
  x = np.asarray(x, np.float32)
  n = len(x)
  x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  input_ids = np.arange(n, dtype=np.int32) if input_ids is None else np.asarray(input_ids, np.int32)
  classification = labels is not None
  if classification:
    aux = np.asarray(labels, np.int32)
    yy = np.zeros((n, 1), np.float32)
  else:
    yy = np.asarray(y, np.float32)
    yy = yy / np.maximum(np.linalg.norm(yy, axis=-1, keepdims=True), 1e-12)
    aux = np.arange(n, dtype=np.int32) if output_ids is None else np.asarray(output_ids, np.int32)
  k = int(num_negatives)
  if not 1 <= k < n:
    raise ValueError(f"num_negatives must be in [1, {n}), got {k}")
  chunk = int(max(1, min(n, memory_bytes // (16 * n))))
  X, Y, A, I = (jnp.asarray(v) for v in (x, yy, aux, input_ids))

  @jax.jit
  def scores(rows):
    sx = X[rows] @ X.T
    own = I[rows][:, None] == I[None, :]
    if classification:
      same = A[rows][:, None] == A[None, :]
      s_pos = jnp.where(same & ~own, sx, -jnp.inf)
      s_neg = jnp.where(~same & ~own, sx, -jnp.inf)
    else:
      sy = Y[rows] @ Y.T
      s_pos = jnp.where(~own, sx + sy, -jnp.inf)
      s_neg = jnp.where(~own & (A[rows][:, None] != A[None, :]), sx - sy, -jnp.inf)
    pv, pi = jax.lax.top_k(s_pos, 1)
    s_neg = jnp.where(jnp.arange(n)[None, :] == pi, -jnp.inf, s_neg)
    nv, ni = jax.lax.top_k(s_neg, k)
    return jnp.where(jnp.isfinite(pv[:, 0]), pi[:, 0], -1), jnp.where(jnp.isfinite(nv), ni, -1)

  pos = np.full((n,), -1, np.int64)
  neg = np.full((n, k), -1, np.int64)
  for start in range(0, n, chunk):
    rows = np.arange(start, start + chunk) % n  # the last chunk is padded (wrapped) to keep one compiled shape
    p, q = scores(jnp.asarray(rows, jnp.int32))
    m = min(chunk, n - start)
    pos[start:start + m] = np.asarray(p)[:m]
    neg[start:start + m] = np.asarray(q)[:m]
  return pos, neg


def is_classification(outputs: Sequence[str], ann: Mapping[str, str], max_labels: int) -> bool:
  kind = ann.get("type", "auto")
  if kind not in ("auto", "classification", "generation"):
    raise ValueError(f"annotation type must be auto, classification or generation, got {kind!r}")
  if kind != "auto":
    return kind == "classification"
  distinct = len(set(o.strip() for o in outputs))
  return distinct <= max_labels and distinct <= len(outputs) / 4


def build_medi(super_ni_dir: str, embed, annotations: Mapping[str, Mapping[str, str]], seed: int = 0,
               max_instances: int = 0, num_negatives: int = 1, max_labels: int = 64, tasks: Sequence[str] = (),
               memory_bytes: int = 1 << 28) -> tuple[list[dict], dict]:
  """Mines MEDI records from every ``*.json`` task in ``super_ni_dir``; ``embed(list[str]) -> [N, D]``.

  Returns ``(records, report)``; records are sorted by task name then instance order (deterministic given the
  seed, which only picks the instances of tasks larger than ``max_instances``).
  """
  files = sorted(f for f in os.listdir(super_ni_dir) if f.endswith(".json"))
  if tasks:
    files = [f for f in files if os.path.splitext(f)[0] in set(tasks)]
  if not files:
    raise ValueError(f"no Super-NaturalInstructions task files (*.json) in {super_ni_dir}")
  names = [os.path.splitext(f)[0] for f in files]
  missing = [t for t in names if t not in annotations]
  if missing:
    raise ValueError(f"no annotation (domain, text_type, objective) for {len(missing)} task(s): {missing[:10]}; "
                     "add them to the --annotations file")
  records, report = [], {"tasks": {}, "seed": seed}
  for name, f in zip(names, files):
    task = read_super_ni(os.path.join(super_ni_dir, f))
    instruction = instruction_from_annotation(name, annotations[name])
    keep = np.arange(len(task.inputs))
    if max_instances and len(keep) > max_instances:
      keep = np.sort(np.random.default_rng([seed, stable_hash(name) & 0x7FFFFFFF]).choice(
          len(keep), max_instances, replace=False))
    inputs = [task.inputs[i] for i in keep]
    outputs = [task.outputs[i] for i in keep]
    entry = {"instances": len(task.inputs), "used": len(inputs), "instruction": instruction}
    if len(inputs) < 3:
      entry.update(kind="skipped", records=0, reason="fewer than 3 instances")
      report["tasks"][name] = entry
      continue
    classification = is_classification(outputs, annotations[name], max_labels)
    x = np.asarray(embed(inputs), np.float32)
    in_ids = _unique_ids(inputs)
    if classification:
      pos, neg = mine_pairs(x, labels=_unique_ids(outputs), input_ids=in_ids, num_negatives=num_negatives,
                            memory_bytes=memory_bytes)
    else:
      out_ids = _unique_ids(outputs)
      uniq = {}
      for o, i in zip(outputs, out_ids):
        uniq.setdefault(int(i), o.strip())
      y_uniq = np.asarray(embed([uniq[i] for i in range(len(uniq))]), np.float32)
      pos, neg = mine_pairs(x, y=y_uniq[out_ids], input_ids=in_ids, output_ids=out_ids,
                            num_negatives=num_negatives, memory_bytes=memory_bytes)
    made = no_pos = no_neg = 0
    for i in range(len(inputs)):
      if pos[i] < 0:
        no_pos += 1
        continue
      if (neg[i] < 0).any():
        no_neg += 1
        continue
      negs = [[instruction, inputs[j]] for j in neg[i]]
      records.append({"query": [instruction, inputs[i]], "pos": [instruction, inputs[pos[i]]],
                      "neg": negs[0] if num_negatives == 1 else negs, "task_name": name})
      made += 1
    entry.update(kind="classification" if classification else "generation", records=made,
                 skipped_no_positive=no_pos, skipped_no_negative=no_neg)
    if classification:
      entry["labels"] = int(len(set(o.strip() for o in outputs)))
    report["tasks"][name] = entry
    log.info("%s: %s, %d records (%d without positive, %d without negative)", name, entry["kind"], made, no_pos,
             no_neg)
  return records, report


def _load_annotations(path: Optional[str]) -> dict:
  if not path:
    return dict(DEFAULT_ANNOTATIONS)
  try:
    with open(path, encoding="utf-8") as f:
      ann = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read annotations: {e}") from e
  if not isinstance(ann, dict) or not all(isinstance(v, dict) for v in ann.values()):
    raise ValueError(f"{path}: annotations must map task name -> {{domain, text_type, objective[, type]}}")
  return ann


def _build_cli(args) -> int:
  from instructor_jax.embedder import Instructor  # JAX only for the builder
  model = Instructor.from_pretrained(args.embedder, max_length=args.max_length)
  embed = lambda texts: model.encode(list(texts), batch_size=args.batch_size)
  records, report = build_medi(args.super_ni, embed, _load_annotations(args.annotations), seed=args.seed,
                               max_instances=args.max_instances, num_negatives=args.num_negatives,
                               max_labels=args.max_labels, tasks=args.tasks or ())
  merged = {}
  for path in args.merge or ():
    rep = Report(path)
    recs = [r.to_json() for r in read_medi(path, strict=args.strict, skip_invalid=args.skip_invalid, report=rep)]
    merged[path] = rep.to_dict()
    records.extend(recs)
  report["merged"] = merged
  report["records"] = len(records)
  report["embedder"] = args.embedder
  write_jsonl(records, args.out)
  with open(args.out + ".report.json.tmp", "w") as f:
    json.dump(report, f, indent=1)
  os.replace(args.out + ".report.json.tmp", args.out + ".report.json")
  for name, e in report["tasks"].items():
    print(f"{name}: {e.get('kind')} {e['records']} records" + (
        f" (skipped: {e.get('skipped_no_positive', 0)} no positive, {e.get('skipped_no_negative', 0)} no negative)"
        if e.get("skipped_no_positive") or e.get("skipped_no_negative") else ""), file=sys.stderr)
  print(f"wrote {len(records)} records to {args.out} (report: {args.out}.report.json)", file=sys.stderr)
  return 0


def _validate_cli(args) -> int:
  rep = Report(args.file)
  tasks = collections.Counter(r.task for r in read_medi(args.file, strict=args.strict,
                                                        skip_invalid=args.skip_invalid, report=rep))
  out = rep.to_dict()
  out["tasks"] = dict(sorted(tasks.items()))
  if args.report:
    rep.write(args.report)
  print(json.dumps(out, indent=1))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m instructor_jax.medi", description="MEDI tools")
  sub = p.add_subparsers(dest="cmd", required=True)
  b = sub.add_parser("build", help="mine MEDI pairs from Super-NaturalInstructions tasks")
  b.add_argument("--super-ni", required=True, help="folder of Super-NaturalInstructions task .json files")
  b.add_argument("--embedder", required=True, help="checkpoint folder or hub id Instructor.from_pretrained loads")
  b.add_argument("--annotations", default="", help="JSON {task: {domain, text_type, objective[, type]}}; default: "
                 "the built-in annotations of the 24 bundled tasks (`annotations` prints them)")
  b.add_argument("--out", required=True, help="output MEDI JSON lines")
  b.add_argument("--seed", type=int, default=0)
  b.add_argument("--merge", action="append", help="existing MEDI-format file to append (repeatable)")
  b.add_argument("--tasks", nargs="*", help="only these task names")
  b.add_argument("--max-instances", type=int, default=0, help="per task, seeded sample (0: all)")
  b.add_argument("--num-negatives", type=int, default=1)
  b.add_argument("--max-labels", type=int, default=64, help="auto type: at most this many distinct outputs")
  b.add_argument("--batch-size", type=int, default=64)
  b.add_argument("--max-length", type=int, default=512)
  b.add_argument("--strict", action="store_true", help="merged files: instructions must start with 'Represent '")
  b.add_argument("--skip-invalid", action="store_true", help="merged files: skip and count invalid records")
  v = sub.add_parser("validate", help="validate a MEDI file and print the per-class report")
  v.add_argument("file")
  v.add_argument("--strict", action="store_true")
  v.add_argument("--skip-invalid", action="store_true")
  v.add_argument("--report", default="", help="also write the report JSON here")
  sub.add_parser("annotations", help="print the built-in annotations (a starting --annotations file)")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO if args.cmd == "build" else logging.WARNING,
                      format="%(levelname)s %(message)s", stream=sys.stderr)
  try:
    if args.cmd == "build":
      return _build_cli(args)
    if args.cmd == "validate":
      return _validate_cli(args)
    print(json.dumps(DEFAULT_ANNOTATIONS, indent=1))
    return 0
  except (MediError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
