"""MEDI reading and validation (instructor_jax/medi.py): streaming JSON arrays and JSON lines, every bad-input class
with its file / line / record number, --skip-invalid reports. No JAX, no TensorFlow."""
import json
import os
import re

import pytest

from instructor_jax.core import errors
from instructor_jax.data import medi
from instructor_jax import medi as medi_cli

from helpers import MEDI_FIXTURES as FIX, SMALL
README = os.path.join(FIX, "instructor_readme_medi_examples.json")


def _objects():
  with open(SMALL, encoding="utf-8") as f:
    return json.load(f)


def _record_lines(path):
  """1-based line numbers of top-level '{' in an indented array (one per record)."""
  with open(path, encoding="utf-8") as f:
    return [i for i, line in enumerate(f, 1) if line.startswith("{")]


def _write_array(path, objs, raw=None):
  """Indented JSON array; `raw` maps record index -> raw text replacing that record."""
  parts = [raw[i] if raw and i in raw else json.dumps(o, indent=1, ensure_ascii=False) for i, o in enumerate(objs)]
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    f.write("[\n" + ",\n".join(parts) + "\n]\n")


def _write_jsonl(path, objs, raw=None):
  with open(path, "w", encoding="utf-8") as f:
    for i, o in enumerate(objs):
      f.write((raw[i] if raw and i in raw else json.dumps(o, ensure_ascii=False)) + "\n")


def test_reads_array_with_record_ids_and_lines():
  recs = list(medi.read_medi(SMALL))
  objs = _objects()
  assert len(recs) == len(objs) == 212
  assert [r.index for r in recs] == list(range(212))
  assert [r.line for r in recs] == _record_lines(SMALL)
  for r, o in zip(recs, objs):
    assert r.task == o["task_name"]
    assert r.query.as_list() == o["query"] and r.pos.as_list() == o["pos"] and [r.neg[0].as_list()] == [o["neg"]]
    assert r.to_json() == o


def test_streaming_with_tiny_chunks_matches_json_load(monkeypatch):
  monkeypatch.setattr(medi, "_CHUNK", 37)  # far smaller than one record: exercises refills and compaction
  recs = list(medi.read_medi(SMALL))
  assert [r.to_json() for r in recs] == _objects()
  assert [r.line for r in recs] == _record_lines(SMALL)


def test_single_line_array_and_bom(tmp_path):
  p = tmp_path / "one_line.json"
  p.write_bytes(b"\xef\xbb\xbf" + json.dumps(_objects()[:5]).encode())
  recs = list(medi.read_medi(str(p)))
  assert [r.to_json() for r in recs] == _objects()[:5] and all(r.line == 1 for r in recs)


def test_jsonl_matches_array(tmp_path):
  p = tmp_path / "m.jsonl"
  _write_jsonl(p, _objects())
  recs = list(medi.read_medi(str(p)))
  assert [r.to_json() for r in recs] == _objects()
  assert [r.line for r in recs] == list(range(1, 213))
  assert medi.detect_format(str(p)) == "jsonl" and medi.detect_format(SMALL) == "array"


def test_real_medi_examples_with_integer_task_id_pass_strict():
  recs = list(medi.read_medi(README, strict=True))
  assert [r.task for r in recs] == ["1", "1", "300"]
  assert all(r.query.instruction.startswith("Represent ") for r in recs)


def test_k_negatives_accepted():
  o = dict(_objects()[0])
  o["neg"] = [o["neg"], ["Represent the x;", "another negative"]]
  task, q, p, n = medi._validate(o, strict=False)
  assert len(n) == 2 and n[1].text == "another negative"


# -- bad input, one case per class ---------------------------------------------------------------------------------

def _mutate(kind):
  """(class, mutate(obj) -> obj, or raw replacement text) for record 7."""
  def set_(key, value):
    def f(o):
      o = dict(o)
      o[key] = value
      return o
    return f

  def drop(key):
    def f(o):
      o = dict(o)
      del o[key]
      return o
    return f

  cases = {
      "invalid_json": ("invalid_json", '{"query": ["Represent the a;", "b"], "pos": oops}'),
      "not_an_object": ("not_an_object", '["Represent the a;", "b"]'),
      "missing_key": ("missing_key", drop("pos")),
      "missing_task": ("missing_key", drop("task_name")),
      "extra_key": ("extra_key", set_("score", 1)),
      "both_task_keys": ("extra_key", set_("task_id", 3)),
      "side_string": ("bad_side", set_("query", "Represent the sentence; text")),
      "side_three": ("bad_side", set_("pos", ["Represent the a;", "b", "c"])),
      "side_not_str": ("bad_side", set_("neg", ["Represent the a;", 5])),
      "empty_text": ("empty_text", set_("pos", ["Represent the a;", "   "])),
      "task_float": ("bad_task_id", set_("task_name", 1.5)),
      "task_null": ("bad_task_id", set_("task_name", None)),
      "task_bool": ("bad_task_id", set_("task_name", True)),
      "task_empty": ("bad_task_id", set_("task_name", "")),
      "lone_surrogate": ("invalid_utf8", set_("query", ["Represent the a;", "bad \ud800 text"])),
  }
  return cases[kind]


BAD = ["invalid_json", "not_an_object", "missing_key", "missing_task", "extra_key", "both_task_keys", "side_string",
       "side_three", "side_not_str", "empty_text", "task_float", "task_null", "task_bool", "task_empty",
       "lone_surrogate"]


def _bad_file(tmp_path, kind, fmt):
  objs = _objects()[:20]
  cls, m = _mutate(kind)
  raw = None
  if isinstance(m, str):
    raw = {7: m}
  else:
    objs = list(objs)
    objs[7] = m(objs[7])
  path = str(tmp_path / ("bad.json" if fmt == "array" else "bad.jsonl"))
  if kind == "lone_surrogate":  # written as the JSON escape \ud800: decodes to a string that is not UTF-8
    raw = {7: json.dumps(objs[7], ensure_ascii=True)}
  (_write_array if fmt == "array" else _write_jsonl)(path, objs, raw)
  return path, cls


@pytest.mark.parametrize("fmt", ["array", "jsonl"])
@pytest.mark.parametrize("kind", BAD)
def test_each_bad_class_fails_with_file_line_and_record(tmp_path, kind, fmt):
  path, cls = _bad_file(tmp_path, kind, fmt)
  raw_record = None if isinstance(_mutate(kind)[1], type(_mutate)) and kind != "lone_surrogate" else True
  with pytest.raises(medi.MediError) as ei:
    list(medi.read_medi(path))
  e = ei.value
  assert (e.cls, e.index, e.path) == (cls, 7, path)
  if fmt == "jsonl":
    assert e.line == 8
  else:
    start = _record_lines(path)[7] if raw_record is None else None
    with open(path, encoding="utf-8") as f:
      lines = f.read().split("\n")
    if start:
      assert start <= e.line < start + 20
    else:
      assert lines[e.line - 1].startswith(("{", "["))  # the replaced record is on one line
  assert f"{path}:{e.line}:" in str(e) and "record 7" in str(e) and f"[{cls}]" in str(e)


@pytest.mark.parametrize("fmt", ["array", "jsonl"])
@pytest.mark.parametrize("kind", BAD)
def test_skip_invalid_counts_per_class_and_keeps_the_rest(tmp_path, kind, fmt):
  path, cls = _bad_file(tmp_path, kind, fmt)
  rep = medi.Report(path)
  recs = list(medi.read_medi(path, skip_invalid=True, report=rep))
  assert [r.index for r in recs] == [i for i in range(20) if i != 7]  # ids stay source indices
  assert rep.counts == {cls: 1} and rep.valid == 19 and rep.read == 20
  out = tmp_path / "report.json"
  rep.write(str(out))
  d = json.loads(out.read_text())
  assert d["skipped_by_class"] == {cls: 1} and "record 7" in d["examples"][cls][0]


def test_invalid_utf8_bytes(tmp_path):
  for fmt in ("array", "jsonl"):
    path = str(tmp_path / f"u.{fmt}")
    (_write_array if fmt == "array" else _write_jsonl)(path, _objects()[:10])
    data = open(path, "rb").read()
    target = _objects()[4]["pos"][1][:12].encode()
    assert data.count(target) >= 1
    i = data.index(target)
    data = data[:i + 5] + b"\xff\xfe" + data[i + 5:]
    open(path, "wb").write(data)
    bad_line = data[:i].count(b"\n") + 1
    with pytest.raises(medi.MediError) as ei:
      list(medi.read_medi(path))
    assert (ei.value.cls, ei.value.index, ei.value.line) == ("invalid_utf8", 4, bad_line)
    rep = medi.Report()
    assert len(list(medi.read_medi(path, skip_invalid=True, report=rep))) == 9 and rep.counts == {"invalid_utf8": 1}


def test_strict_requires_represent_prefix(tmp_path):
  objs = _objects()[:10]
  objs[3] = dict(objs[3], neg=["Encode the sentence;", "text"])
  path = str(tmp_path / "s.json")
  _write_array(path, objs)
  assert len(list(medi.read_medi(path))) == 10  # fine without --strict
  with pytest.raises(medi.MediError) as ei:
    list(medi.read_medi(path, strict=True))
  assert ei.value.cls == "bad_instruction" and ei.value.index == 3
  with open(path) as f:
    assert '"neg"' in f.read().split("\n")[ei.value.line - 1]  # points at the offending side
  rep = medi.Report()
  assert len(list(medi.read_medi(path, strict=True, skip_invalid=True, report=rep))) == 9
  assert rep.counts == {"bad_instruction": 1}


def test_corrupted_line_in_the_real_layout_names_that_line(tmp_path):
  """The bar's check: a corrupted copy fails with the corrupted line's number."""
  lines = open(SMALL, encoding="utf-8").read().split("\n")
  for n in (5, 100, 1001, len(lines) - 4):  # 1-based line numbers inside records (texts, keys, brackets)
    bad = list(lines)
    bad[n - 1] = "this line is corrupted"
    path = tmp_path / f"c{n}.json"
    path.write_text("\n".join(bad), encoding="utf-8")
    with pytest.raises(medi.MediError) as ei:
      list(medi.read_medi(str(path)))
    assert ei.value.line == n, (n, str(ei.value))
    assert re.search(rf":{n}: record \d+ \(line {n}\)", str(ei.value))


def test_missing_comma_points_at_previous_line_too(tmp_path):
  lines = open(SMALL, encoding="utf-8").read().split("\n")
  n = _record_lines(SMALL)[3] - 1  # the "}," closing record 2
  assert lines[n - 1] == "},"
  lines[n - 1] = "}"
  path = tmp_path / "comma.json"
  path.write_text("\n".join(lines), encoding="utf-8")
  with pytest.raises(medi.MediError) as ei:
    list(medi.read_medi(str(path)))
  assert ei.value.cls == "invalid_json" and f"end of line {n}" in str(ei.value)


def test_array_resynchronises_after_a_broken_record(tmp_path):
  objs = _objects()[:30]
  path = str(tmp_path / "r.json")
  _write_array(path, objs, raw={5: '{"query": ["Represent the a;", "unterminated], "pos": ["x", "y"]}',
                                 12: "{not json at all}"})
  rep = medi.Report()
  recs = list(medi.read_medi(path, skip_invalid=True, report=rep))
  assert [r.index for r in recs] == [i for i in range(30) if i not in (5, 12)]
  assert [r.to_json() for r in recs] == [o for i, o in enumerate(objs) if i not in (5, 12)]
  assert rep.counts == {"invalid_json": 2}


@pytest.mark.parametrize("text,cls,skipped_cls", [("", "invalid_json", "invalid_json"),
                                                  ('{"a": 1}', "invalid_json", None), ("[", "truncated", "truncated"),
                                                  ('[{"query": 1}', "missing_key", "truncated")])
def test_truncated_or_non_array_files(tmp_path, text, cls, skipped_cls):
  """The first error; with skip_invalid a truncated file still fails (a non-array is one invalid record, and then no
  valid records, which the index refuses)."""
  path = tmp_path / "t.json"
  path.write_text(text)
  with pytest.raises(medi.MediError) as ei:
    list(medi.read_medi(str(path), fmt="array" if text else None))
  assert ei.value.cls == cls
  if skipped_cls:
    with pytest.raises(medi.MediError) as ei:
      list(medi.read_medi(str(path), fmt="array" if text else None, skip_invalid=True))
    assert ei.value.cls == skipped_cls


def test_truncated_real_file_is_an_error_not_a_short_read(tmp_path):
  data = open(SMALL, "rb").read()
  path = tmp_path / "cut.json"
  path.write_bytes(data[:len(data) // 2])
  for skip in (False, True):  # a truncated file is never read as far as it goes, whatever skip_invalid says
    with pytest.raises(medi.MediError) as ei:
      list(medi.read_medi(str(path), skip_invalid=skip))
    assert ei.value.cls == "truncated" and "the file is truncated" in str(ei.value)


def test_missing_file():
  with pytest.raises(errors.DataError, match="MEDI file not found"):
    list(medi.read_medi("/nonexistent/medi.json"))


def test_validate_cli(tmp_path, capsys):
  assert medi_cli.main(["validate", SMALL]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["valid"] == 212 and out["tasks"]["sick_train_entailment"] == 12
  path, _ = _bad_file(tmp_path, "empty_text", "array")
  assert medi_cli.main(["validate", path]) == 2
  assert f"{path}:" in capsys.readouterr().err
  rep = tmp_path / "rep.json"
  assert medi_cli.main(["validate", path, "--skip-invalid", "--report", str(rep)]) == 0
  assert json.loads(rep.read_text())["skipped_by_class"] == {"empty_text": 1}
