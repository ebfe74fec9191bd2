"""Fault cases of the data and encode commands: each is a one-line error with exit 2, checked before any work."""
import json
import os
import stat
import subprocess

import pytest

from instructor_jax import encode
from instructor_jax import medi as medi_cli
from instructor_jax.data import __main__ as data_cli
from instructor_jax.data import medi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "instructor_jax", "assets", "tiny-instructor")
SMALL = os.path.join(ROOT, "tests", "fixtures", "medi", "medi_small.json")


def _err(capsys) -> str:
  err = capsys.readouterr().err.strip()
  assert "Traceback" not in err and len(err.splitlines()) == 1, err
  return err


def _inputs(tmp_path, lines):
  path = tmp_path / "in.jsonl"
  path.write_text("".join(json.dumps(x) + "\n" for x in lines))
  return str(path)


@pytest.mark.parametrize("args,expect", [
    (["--batch-size", "0"], "--batch-size: must be >= 1"),
    (["--max-length", "0"], "--max-length: must be >= 1"),
])
def test_encode_rejects_non_positive_sizes(tmp_path, capsys, args, expect):
  with pytest.raises(SystemExit) as e:
    encode.main(["--model", TINY, "--input", _inputs(tmp_path, [{"text": "a"}]), "--output",
                 str(tmp_path / "e.npy"), *args])
  assert e.value.code == 2 and expect in capsys.readouterr().err


@pytest.fixture
def read_only_dir(tmp_path):
  """A read-only mount (EROFS, which root cannot write either), else a folder without write permission."""
  path = tmp_path / "ro"
  path.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                           capture_output=True).returncode == 0
  if not mounted:
    os.chmod(path, stat.S_IRUSR | stat.S_IXUSR)
  try:
    if os.access(path, os.W_OK):
      pytest.skip("no read-only mount here and this user can write anywhere")
    yield path
  finally:
    if mounted:
      subprocess.run(["umount", str(path)], capture_output=True)
    else:
      os.chmod(path, 0o755)


def test_encode_output_on_a_read_only_destination(tmp_path, capsys, read_only_dir):
  src = _inputs(tmp_path, [{"text": "a"}])
  assert encode.main(["--model", TINY, "--input", src, "--output", str(read_only_dir / "e.npy")]) == 2
  assert "not writable" in _err(capsys)


def test_encode_output_that_is_a_folder(tmp_path, capsys):
  src = _inputs(tmp_path, [{"text": "a"}])
  assert encode.main(["--model", TINY, "--input", src, "--output", str(tmp_path)]) == 2
  assert "is a folder" in _err(capsys)


@pytest.mark.parametrize("text", ["", "   \t "])
def test_encode_empty_text_is_an_error_naming_the_line(tmp_path, capsys, text):
  src = _inputs(tmp_path, [{"text": "fine"}, {"instruction": "Represent: ", "text": text}])
  out = tmp_path / "e.npy"
  assert encode.main(["--model", TINY, "--input", src, "--output", str(out)]) == 2
  assert f"{src}:2:" in _err(capsys) and not out.exists()


def test_medi_duplicate_key_is_an_error(tmp_path):
  rec = ('{"query": ["Represent the q: ", "a"], "pos": ["Represent the d: ", "b"], "neg": ["Represent the d: ", "c"],'
         ' "task_name": "t1", "task_name": "t2"}')
  for fmt, text in (("jsonl", rec + "\n"), ("json", "[\n" + rec + "\n]\n")):
    path = tmp_path / f"dup.{fmt}"
    path.write_text(text)
    with pytest.raises(medi.MediError, match=r"\[duplicate_key\] key\(s\) 'task_name' appear more than once") as e:
      list(medi.read_medi(str(path)))
    assert e.value.cls == "duplicate_key" and e.value.line == (1 if fmt == "jsonl" else 2)
    assert list(medi.read_medi(str(path), skip_invalid=True, report=(r := medi.Report(str(path))))) == []
    assert r.counts["duplicate_key"] == 1


def test_medi_validate_of_an_empty_list_fails(tmp_path, capsys):
  path = tmp_path / "empty.json"
  path.write_text("[]\n")
  assert medi_cli.main(["validate", str(path)]) == 2
  assert "[no_records] the file holds no records" in _err(capsys)


def test_data_prepare_of_a_folder_says_so(tmp_path, capsys):
  assert data_cli.main(["prepare", "--medi", str(tmp_path), "--out", str(tmp_path / "p")]) == 2
  assert "is a folder; `data prepare` reads a MEDI file" in _err(capsys)
  assert not (tmp_path / "p").exists()


def test_data_prepare_onto_a_file_says_so(tmp_path, capsys):
  target = tmp_path / "file"
  target.write_text("x")
  assert data_cli.main(["prepare", "--medi", SMALL, "--out", str(target), "--no-progress"]) == 2
  assert "is a file" in _err(capsys)
