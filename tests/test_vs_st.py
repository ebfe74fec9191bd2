"""bench/vs_st.py without running either trainer: the command is the train command with only the issue's overrides,
the summary reads steps 11-40, a child's CPU seconds come from /proc."""
import os
import sys

from helpers import ROOT

sys.path.insert(0, ROOT)
from bench import vs_st  # noqa: E402


def test_ours_runs_the_train_command_with_only_the_issue_overrides():
  batches = dict(global_batch=32, medi="/data/mix.jsonl", seed=0, steps=[{}] * 40)
  cmd = vs_st.ours_command(batches, "/tmp/w", "")
  assert cmd[1:3] == ["-m", "instructor_jax.train"] and cmd[4].endswith("configs/quality_minilm.py")
  overrides = {a.split("=", 1)[0] for a in cmd if a.startswith("--config.")}
  # nothing that changes what a step computes or how: no pack / dropout / model / XLA setting
  assert overrides == {"--config.global_batch_size", "--config.data.max_query_length", "--config.data.max_doc_length",
                       "--config.data.medi_path", "--config.num_train_steps", "--config.seed",
                       "--config.log_every_steps", "--config.checkpoint_every_steps", "--config.export.enabled",
                       "--config.compilation_cache_dir"}
  assert "--config.num_train_steps=40" in cmd and "--config.compilation_cache_dir=" in cmd


def test_summary_uses_steps_11_to_40_and_cpu_seconds():
  rows = [dict(step=i, seconds=1.0 if i > 10 else 100.0, cpu_seconds=0.5, real_tokens=100, computed_tokens=125)
          for i in range(1, 41)]
  s = vs_st.summarise(dict(rows=rows, total_wall_s=100.0, compile_s=10.0))
  assert s["median_real_tokens_per_s"] == 100.0 and s["median_real_tokens_per_cpu_s"] == 200.0
  assert s["real_over_computed"] == 0.8 and s["compile_frac"] == 0.1


def test_cpu_seconds_of_a_process():
  assert 0.0 <= vs_st.cpu_seconds(os.getpid()) < 1e6


def test_long_mix_keeps_only_the_long_tasks(tmp_path, monkeypatch):
  """The long mix is the derived set's SciFact and Banking77 records, unchanged and in file order (JSON lines)."""
  import json
  from bench import packing
  recs = [dict(query=["q: ", f"t{i}"], pos=["d: ", "p"], neg=["d: ", "n"], task_name=name)
          for i, name in enumerate(["scifact_train_claim_evidence", "stsb_train_paraphrase",
                                    "banking77_train_same_intent", "msrp_train_paraphrase"])]
  derived = tmp_path / "derived.json"
  derived.write_text(json.dumps(recs))
  monkeypatch.setattr(packing, "DERIVED", str(derived))
  out = tmp_path / "long.jsonl"
  vs_st.build_long_mix(str(out))
  assert [json.loads(line) for line in out.read_text().splitlines()] == [recs[0], recs[2]]


def test_thunk_ms_sums_thunks_by_kind():
  """Per-kind milliseconds of a perfetto trace: numbered thunks merged, enclosing spans and Python frames left out."""
  trace = {"traceEvents": [
      dict(ph="X", name="ynn_fusion.1", dur=2000), dict(ph="X", name="ynn_fusion.7", dur=500),
      dict(ph="X", name="dot.3", dur=1000), dict(ph="X", name="add_multiply_fusion.2", dur=250),
      dict(ph="X", name="ThunkExecutor::Execute", dur=9000), dict(ph="X", name="$api.py:1 block_until_ready", dur=9000),
      dict(ph="i", name="dot.4", dur=7000)]}
  assert vs_st.thunk_ms(trace) == {"ynn_fusion": 2.5, "dot": 1.0, "add_multiply_fusion": 0.25}
