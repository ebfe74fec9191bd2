"""The README's main job, shortened: configs/demo.py trains on the bundled MEDI sample, evaluates, exports."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import DEMO_CONFIG, ROOT as REPO, metrics as read_metrics

pytestmark = pytest.mark.slow  # trains, evaluates and exports in a subprocess


def test_demo_trains_evaluates_and_exports(tmp_path):
  workdir = tmp_path / "demo"
  cmd = [sys.executable, "-m", "instructor_jax.train", "--config", DEMO_CONFIG,
         "--workdir", str(workdir), "--config.num_train_steps=6", "--config.checkpoint_every_steps=3"]
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(m["loss"]) for m in metrics)
  summary = json.loads((workdir / "eval" / "summary.json").read_text())
  rows = summary["rows"] if isinstance(summary, dict) and "rows" in summary else summary
  assert "STSBenchmark" in json.dumps(rows)
  export = workdir / "export"
  for f in ("modules.json", "model.safetensors", "config.json", "1_Pooling/config.json", "2_Dense/config.json",
            "README.md"):
    assert (export / f).exists(), f
  assert json.loads((export / "1_Pooling" / "config.json").read_text())["include_prompt"] is False
  # The exported folder gives the same embeddings as the checkpoint it came from.
  from instructor_jax.models.embedder import Instructor
  pairs = [["Represent the sentence: ", "A man is playing a guitar."], "a plain sentence"]
  from instructor_jax.evaluation import runner as evaluate
  embed, _, _, cleanup = evaluate.load_embedder(str(workdir), "jax", 64, "float32")
  try:
    a = embed.encode(pairs) if hasattr(embed, "encode") else embed(pairs)
  finally:
    cleanup()
  b = Instructor.from_pretrained(str(export), max_length=64).encode(pairs)
  assert np.abs(np.asarray(a) - b).max() <= 1e-5
