"""``python -m instructor_jax.encode``: output, validation naming file and line, no partial output."""
import json
import os

import numpy as np
import pytest

import reference
from instructor_jax import encode
from instructor_jax.storage import files
from instructor_jax.models.embedder import Instructor

from helpers import TINY


def _write(path, lines):
  path.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
  return str(path)


def test_encode_cli_matches_api(relu_dir, tmp_path):
  lines = [json.dumps({"instruction": "Represent the title: ", "text": "hello world"}),
           "", json.dumps({"text": "plain"}), json.dumps({"text": "uses the default"})]
  inp = _write(tmp_path / "in.jsonl", lines)
  out = str(tmp_path / "sub" / "emb.npy")
  assert encode.main(["--model", relu_dir, "--input", inp, "--output", out, "--instruction", "Represent it: ",
                      "--batch-size", "2"]) == 0
  emb = np.load(out)
  expected = Instructor.from_pretrained(relu_dir).encode(
      [["Represent the title: ", "hello world"], ["Represent it: ", "plain"], ["Represent it: ", "uses the default"]])
  assert emb.shape == (3, 24) and emb.dtype == np.float32
  np.testing.assert_allclose(emb, expected, atol=1e-6)
  assert [f for f in os.listdir(tmp_path / "sub")] == ["emb.npy"]


@pytest.mark.parametrize("bad,message", [
    (b'{"text": "ok"}\n{"text": "broken"\n', r"in\.jsonl:2: invalid JSON"),
    (b'{"text": "ok"}\n\n["a", "b"]\n', r"in\.jsonl:3: expected a JSON object"),
    (b'{"instruction": "x"}\n', r"in\.jsonl:1: missing key \"text\""),
    (b'{"text": 3}\n', r"in\.jsonl:1: \"text\" must be a string"),
    (b'{"text": "a", "label": 1}\n', r"in\.jsonl:1: unexpected key"),
    (b'{"text": "ok"}\n{"text": "\xff"}\n', r"in\.jsonl:2: invalid UTF-8"),
])
def test_bad_lines_name_file_and_line(tmp_path, capsys, bad, message):
  import re
  inp = tmp_path / "in.jsonl"
  inp.write_bytes(bad)
  out = tmp_path / "emb.npy"
  assert encode.main(["--model", TINY, "--input", str(inp), "--output", str(out)]) == 2
  assert re.search(message, capsys.readouterr().err)
  assert not out.exists()


def test_failed_run_leaves_no_partial_file(tmp_path, monkeypatch):
  target = tmp_path / "emb.npy"

  def boom(f, array):
    f.write(b"partial")
    raise KeyboardInterrupt

  monkeypatch.setattr(np, "save", boom)
  with pytest.raises(KeyboardInterrupt):
    files.save_npy(str(target), np.zeros((2, 2), np.float32))
  assert os.listdir(tmp_path) == []


def test_bundled_tiny_model_runs(tmp_path, capsys):
  out = tmp_path / "e.npy"
  examples = os.path.join(os.path.dirname(__file__), "..", "examples", "pairs.jsonl")
  assert encode.main(["--model", TINY, "--input", examples, "--output", str(out), "--similarities"]) == 0
  emb = np.load(out)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  assert "cosine similarities" in capsys.readouterr().out
