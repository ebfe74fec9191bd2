"""storage/files.py, the one atomic file / folder utility, and the one-line user errors of core/cli.py."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from instructor_jax.core import cli
from instructor_jax.core.errors import DataError
from instructor_jax.storage import files


def test_atomic_file_is_complete_or_absent(tmp_path):
  target = tmp_path / "a.json"
  files.write_json(str(target), {"x": 1})
  assert json.loads(target.read_text()) == {"x": 1}
  with pytest.raises(RuntimeError):
    with files.atomic_file(str(target)) as f:
      f.write("partial")
      raise RuntimeError("killed")
  assert json.loads(target.read_text()) == {"x": 1}  # the old content stays, no temp file beside it
  assert sorted(os.listdir(tmp_path)) == ["a.json"]
  with pytest.raises(IsADirectoryError):
    files.write_text(str(tmp_path), "x")


def test_atomic_file_honours_the_umask(tmp_path):
  old = os.umask(0o027)
  try:
    files.save_npy(str(tmp_path / "e.npy"), np.zeros(3))
  finally:
    os.umask(old)
  assert os.stat(tmp_path / "e.npy").st_mode & 0o777 == 0o640


def test_atomic_folder_appears_whole_and_replaces_only_with_overwrite(tmp_path):
  out = tmp_path / "out"
  with files.atomic_folder(str(out)) as tmp:
    (open(os.path.join(tmp, "a"), "w")).write("1")
    assert not out.exists()  # not visible under its name while being written
  assert (out / "a").read_text() == "1" and not (out / files.OWNER).exists()
  with pytest.raises(FileExistsError):
    with files.atomic_folder(str(out)):
      pass
  with pytest.raises(ValueError):
    with files.atomic_folder(str(out), overwrite=True) as tmp:
      open(os.path.join(tmp, "b"), "w").write("2")
      raise ValueError("failed half-way")
  assert sorted(os.listdir(out)) == ["a"] and sorted(os.listdir(tmp_path)) == ["out"]
  with files.atomic_folder(str(out), overwrite=True) as tmp:
    open(os.path.join(tmp, "b"), "w").write("2")
  assert sorted(os.listdir(out)) == ["b"] and sorted(os.listdir(tmp_path)) == ["out"]


def _dead_owner(folder):
  """An owner file naming a process that has exited."""
  p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  info = dict(files.owner(), pid=int(p.stdout), start_time="0")
  files.write_json(os.path.join(folder, files.OWNER), info)


def test_killed_writers_leave_nothing_and_an_interrupted_swap_restores_the_old_folder(tmp_path):
  out = tmp_path / "export"
  stale = tmp_path / ".export.tmp-dead"
  stale.mkdir()
  (stale / "model.safetensors").write_bytes(b"0" * 1000)
  _dead_owner(str(stale))
  live = tmp_path / ".export.tmp-live"
  live.mkdir()
  files.write_json(str(live / files.OWNER), files.owner())  # this process: alive, left alone
  backup = tmp_path / ".export.old-dead"  # killed between its two renames: `out` is gone, the old one is inside
  (backup / "old").mkdir(parents=True)
  (backup / "old" / "kept").write_text("old")
  _dead_owner(str(backup))
  removed = files.remove_stale(str(out))
  assert sorted(os.path.basename(p) for p in removed) == [".export.old-dead", ".export.tmp-dead"]
  assert (out / "kept").read_text() == "old" and live.exists()


@pytest.mark.parametrize("exc,code,text", [
    (DataError("f.jsonl:3: bad"), 2, "error: f.jsonl:3: bad"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), 2, "error: /ro/x: Read-only file system"),
    (OSError(errno.ENOSPC, "No space left on device", "/full"), 2, "error: /full: No space left on device"),
    (KeyboardInterrupt(), 130, "error: interrupted"),
])
def test_cli_reports_user_errors_in_one_line(capsys, exc, code, text):
  def main(args):
    raise exc
  assert cli.run(main, []) == code
  assert capsys.readouterr().err.strip() == text


def test_cli_keeps_internal_errors_and_debug_tracebacks():
  def bug(args):
    raise ZeroDivisionError("bug")
  with pytest.raises(ZeroDivisionError):
    cli.run(bug, [])
  with pytest.raises(DataError):
    cli.run(lambda args: (_ for _ in ()).throw(DataError("x")), ["--debug"])


# -- the same on Cloud Storage (fake-gcs-server on 127.0.0.1) ------------------------------------------------------

from instructor_jax.storage import paths  # noqa: E402


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_atomic_files_and_folders_local_and_gcs(tmp_path, request, where):
  base = str(tmp_path) if where == "local" else request.getfixturevalue("gcs_dir")
  target = paths.join(base, "a.json")
  files.write_json(target, {"x": 1})
  assert json.loads(paths.read_text(target)) == {"x": 1}
  with pytest.raises(RuntimeError):
    with files.atomic_file(target) as f:
      f.write("partial")
      raise RuntimeError("killed")
  assert json.loads(paths.read_text(target)) == {"x": 1}
  out = paths.join(base, "folder")
  with pytest.raises(RuntimeError):
    with files.atomic_folder(out) as tmp:
      open(os.path.join(tmp, "a"), "w").write("1")
      raise RuntimeError("killed")
  assert not paths.exists(out) and not files.is_complete(out)
  with files.atomic_folder(out) as tmp:
    os.makedirs(os.path.join(tmp, "sub"))
    open(os.path.join(tmp, "sub", "b"), "w").write("2")
  assert files.is_complete(out) and paths.read_text(paths.join(out, "sub", "b")) == "2"
  with files.atomic_folder(out, overwrite=True) as tmp:
    open(os.path.join(tmp, "c"), "w").write("3")
  names = list(paths.walk_files(out))
  assert [n for n in names if n != files.COMMIT] == ["c"]


def test_other_schemes_are_one_line_errors(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for bad, why in (("s3://x/run", "the s3:// scheme is not supported"), ("hdfs://nn/run", "the hdfs:// scheme"),
                   ("gs:/bucket/run", "expected gs://BUCKET"), ("gs:///run", "expected gs://BUCKET")):
    with pytest.raises(paths.PathError, match=why):
      paths.check(bad, "--workdir")
  assert paths.check("gs://b/run/", "--workdir") == "gs://b/run"
  assert paths.check("run") == str(tmp_path / "run")
  assert os.listdir(tmp_path) == []
