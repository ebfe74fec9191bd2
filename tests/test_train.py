"""The training command end to end on one CPU device (subprocesses), plus checkpoints' params API.

Runs: an uninterrupted baseline; kill -9 mid-run then rerun (bitwise-equal parameters); 2 processes with
jax.distributed on 127.0.0.1 (same losses); SIGTERM (saves, exit 0); NaN stop (keeps the last good checkpoint);
--compile_only; save_params / restore_params / init_checkpoint / init_from; gradient caching over 2 processes vs
the plain step on 1, and the compiled grad-cache step on 8 fake devices (gradients reduced once, not per chunk).
"""
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from instructor_jax.storage import checkpoints

from helpers import HERE, ROOT, cli_env as _env, leaves_equal, metrics, run_train as run, sharded_check
from helpers import train_cmd as _cmd, wait_for_step

pytestmark = pytest.mark.slow  # every test here launches trainers (or the 8-device check)

STEPS = 20


COMMON = (f"--config.num_train_steps={STEPS}", "--config.checkpoint_every_steps=4")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
  wd = tmp_path_factory.mktemp("baseline")
  run(wd, *COMMON)
  return wd


def test_baseline_outputs(baseline):
  m = metrics(baseline)
  assert [r["step"] for r in m] == list(range(1, STEPS + 1))
  for key in ("loss", "accuracy", "lr", "grad_norm", "examples_per_s", "tokens_per_s", "computed_tokens_per_s",
              "real_tokens", "computed_tokens", "packing_efficiency", "step_time_s", "compiles", "compile_s"):
    assert all(np.isfinite(r[key]) for r in m), key
  # packed (the default): real tokens are those of the padded batch, computed ones whole rows, a few variants
  assert all(0 < r["real_tokens"] <= r["computed_tokens"] for r in m)
  assert all(r["packing_efficiency"] == pytest.approx(r["real_tokens"] / r["computed_tokens"]) for r in m)
  assert 1 <= m[-1]["compiles"] <= 6 and all(r["computed_tokens"] % 16 == 0 for r in m)
  steps = sorted(int(d) for d in os.listdir(baseline) if d.isdigit())
  assert steps == [16, 20]  # keep_checkpoints=2
  assert os.path.exists(os.path.join(baseline, "tokenizer", "spiece.model"))
  assert os.listdir(os.path.join(baseline, "tensorboard"))
  params, meta = checkpoints.restore_params(baseline)
  assert meta["step"] == STEPS and meta["t5_config"]["d_model"] == 32 and meta["out_features"] == 32
  assert meta["normalize"] is True and "spiece.model" in meta["tokenizer_files"]
  assert set(params) == {"encoder", "dense"}
  p16, meta16 = checkpoints.restore_params(os.path.join(baseline, "16"))
  assert meta16["step"] == 16 and not leaves_equal(p16, params)
  # the learning rate follows warmup (10% of steps) then linear decay to 0
  assert m[0]["lr"] == 0.0 and max(r["lr"] for r in m) == pytest.approx(1e-3)


def test_kill9_then_resume_is_bitwise_equal(baseline, tmp_path):
  wd = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(wd, *COMMON), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  try:
    wait_for_step(proc, wd, 9)
  finally:
    proc.kill()
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  done = max(int(d) for d in os.listdir(wd) if d.isdigit())
  assert done < STEPS
  out = run(wd, *COMMON)
  assert "resumed from" in out.stdout + out.stderr
  a, _ = checkpoints.restore_params(baseline)
  b, _ = checkpoints.restore_params(wd)
  assert leaves_equal(a, b)
  assert [r["loss"] for r in metrics(wd)] == [r["loss"] for r in metrics(baseline)]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(baseline, tmp_path):
  wd = tmp_path / "multi"
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(wd, *COMMON, flags=("--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
                               "--process_id", str(i))),
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  assert "2 processes" in outs[0][0]
  got = [r["loss"] for r in metrics(wd)]
  want = [r["loss"] for r in metrics(baseline)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  a, _ = checkpoints.restore_params(baseline)
  b, _ = checkpoints.restore_params(wd)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_grad_cache_one_and_two_processes_match_uncached(tmp_path):
  """Packed with gradient caching on 1 device and across 2 processes (mesh data=2: shard_map over processes, each
  host building its own packed rows) = the plain padded step on 1 device (dropout off)."""
  steps = ("--config.num_train_steps=4", "--config.checkpoint_every_steps=4", "--config.model.t5.dropout_rate=0.0")
  ref = tmp_path / "plain"
  run(ref, *steps, "--config.data.pack=false")  # padded; the cached runs are packed (the default)
  one = tmp_path / "cached_one"
  run(one, *steps, "--config.grad_cache_chunk=4")
  wd = tmp_path / "cached"
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(wd, *steps, "--config.grad_cache_chunk=4",
           flags=("--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i))),
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  a, _ = checkpoints.restore_params(ref)
  for got in (one, wd):
    np.testing.assert_allclose([r["loss"] for r in metrics(got)], [r["loss"] for r in metrics(ref)], rtol=1e-5)
    b, _ = checkpoints.restore_params(got)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, atol=1e-5)


def _loop_computations(hlo: str):
  """``(computations, in_loop)``: the lines of each computation of compiled HLO text, and the names of those inside
  a while loop (a loop body or condition, or any computation those call)."""
  comps, refs, cur = {}, {}, None
  for line in hlo.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):  # computation header
      cur = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      comps[cur], refs[cur] = [], set()
    elif cur is not None:
      comps[cur].append(line)
      for names in re.findall(r"(?:body|condition|to_apply|calls|branch_computations)=\{?([%\w.\-, ]+)", line):
        refs[cur] |= {n.strip().lstrip("%") for n in names.split(",")}
  in_loop = {n.lstrip("%") for n in re.findall(r"(?:body|condition)=(%?[\w.\-]+)", hlo)}
  todo = list(in_loop)
  while todo:
    for callee in refs.get(todo.pop(), ()):
      if callee in comps and callee not in in_loop:
        in_loop.add(callee)
        todo.append(callee)
  return comps, in_loop


def _reductions(hlo: str):
  """``(outside, inside)``: all-reduce / reduce-scatter ops of compiled HLO text as ``(count, result bytes)``,
  outside any while loop and inside one (see ``_loop_computations``)."""
  comps, in_loop = _loop_computations(hlo)
  out = {False: [0, 0], True: [0, 0]}
  for name, lines in comps.items():
    for line in lines:
      m = re.search(r"=\s*(.*?)\s(?:all-reduce|reduce-scatter)(?:-start)?\(", line)
      if m:
        out[name in in_loop][0] += 1
        out[name in in_loop][1] += sum(4 * math.prod(int(d) for d in dims.split(",") if d)
                                       for dims in re.findall(r"\[([\d,]*)\]", m.group(1)))
  return tuple(out[False]), tuple(out[True])


def test_grad_cache_reduces_gradients_once(tmp_path):
  """The grad-cache step on 8 fake devices (data 4 x fsdp 2), parameters large next to activations, 2 and 4 chunks.

  ``grad_cache_fsdp="once"``: no gradient reduction inside the chunk loop and the same reductions (count and bytes)
  for 2 and 4 chunks (before, every chunk all-reduced the whole gradient). ``"per_chunk"`` (ZeRO-3 in the loop):
  each chunk reduce-scatters over ``fsdp`` only (replica groups of 2 devices; the ``data`` reduction stays after
  the loop), the same per chunk for 2 and 4 chunks, and the step needs less memory per device than ``"once"`` (which
  holds gathered parameters and a full-size accumulator): measured 0.55 x the parameter bytes less (each chunk's
  full-size partial gradient exists briefly before its reduce-scatter); asserted >= 0.4 x."""
  r = sharded_check("hlo", tmp_path, timeout=600)
  hlo = {name: open(path).read() for name, path in r["hlo"].items()}
  (out2, in2), (out4, in4) = (_reductions(hlo[f"once_k{k}"]) for k in (2, 4))
  assert all(_loop_computations(hlo[f"once_k{k}"])[1] for k in (2, 4))  # the chunk loop is there
  assert in2 == in4 == (0, 0), (in2, in4)
  assert out2 == out4 and out2[0] > 0, (out2, out4)
  (_, in2), (_, in4) = (_reductions(hlo[f"per_chunk_k{k}"]) for k in (2, 4))
  assert in2 == in4 and in2[0] > 0, (in2, in4)
  for k in (2, 4):
    groups = _loop_reduction_group_sizes(hlo[f"per_chunk_k{k}"])
    assert groups == {2}, groups
  saved = r["memory"]["once_k4"] - r["memory"]["per_chunk_k4"]
  assert saved >= 0.4 * r["param_bytes"], (r["memory"], r["param_bytes"])


def _loop_reduction_group_sizes(hlo: str) -> set:
  """Replica-group sizes of the all-reduce / reduce-scatter ops inside while loops (see ``_loop_computations``)."""
  comps, in_loop = _loop_computations(hlo)
  sizes = set()
  for name in in_loop:
    for line in comps.get(name, ()):
      if re.search(r"\s(?:all-reduce|reduce-scatter)(?:-start)?\(", line):
        m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)  # iota form [groups, size]<=[n]
        if m:
          sizes.add(int(m.group(2)))
        else:
          m = re.search(r"replica_groups=\{\{([\d,]+)\}", line)
          sizes.add(len(m.group(1).split(",")) if m else -1)
  return sizes


def test_grad_cache_gradient_is_derivative_of_loss_with_dropout():
  """Dropout on, 8 fake devices (data 4 x fsdp 2 in both FSDP modes; data 1 x fsdp 8 per_chunk): the cached
  gradient is the derivative of the loss the step scored, i.e. the VJP pass re-draws the first pass's dropout
  masks on every shard (finite difference)."""
  results = sharded_check("grad_cache_dropout", timeout=600)["grad_cache_dropout"]
  assert set(results) == {"per_chunk_4x2x1", "once_4x2x1", "per_chunk_1x8x1"}, results
  for r in results.values():
    assert r["finite_difference"] == pytest.approx(r["grad_norm"], rel=0.02), results


def test_sigterm_saves_and_exits_zero(tmp_path):
  wd = tmp_path / "term"
  proc = subprocess.Popen(_cmd(wd, "--config.num_train_steps=100000", "--config.checkpoint_every_steps=1000"),
                          cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    wait_for_step(proc, wd, 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-4000:]
  saved = [int(d) for d in os.listdir(wd) if d.isdigit()]
  assert len(saved) == 1 and 3 <= saved[0] < 1000
  assert metrics(wd)[-1]["step"] == saved[0]
  assert "SIGTERM" in out


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
  wd = tmp_path / "nan"
  proc = run(wd, "--config.debug_nan_step=6", "--config.checkpoint_every_steps=2", "--config.keep_checkpoints=5",
             check=False)
  assert proc.returncode != 0
  assert "non-finite loss" in proc.stderr and "step 7" in proc.stderr
  saved = sorted(int(d) for d in os.listdir(wd) if d.isdigit())
  assert saved == [2, 4, 6]
  params, _ = checkpoints.restore_params(wd)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_compile_only_reports_memory(tmp_path):
  run(tmp_path, "--config.mesh_shape=(2,2,2)", "--config.grad_cache_chunk=4", flags=("--compile_only",))
  report = json.loads(open(tmp_path / "compile_report.json").read())
  assert report["devices"] == 8 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert report["params_bytes_per_device"] > 0 and report["train_flops_per_step"] > 0
  assert "temp_size_in_bytes" in report
  assert not any(d.isdigit() for d in os.listdir(tmp_path))  # nothing trained
  # packed (the default): the largest ladder size is compiled, every sequence alone in a row (8 x 4 of them)
  assert report["compiled_rows"] == report["pack_rows"][-1] >= 32 and report["pack_length"] == 16
  assert report["batch_shapes"]["tokens"] == [report["compiled_rows"], 16]


def test_save_params_restore_params_and_init_checkpoint(tmp_path):
  sys.path.insert(0, HERE)
  import reference
  from instructor_jax import Instructor
  hf_dir = reference.make_checkpoint(str(tmp_path / "hf"), "relu", layout="instructor")
  model = Instructor.from_pretrained(hf_dir)
  meta = dict(t5_config=model.model.config.to_hf(), out_features=model.model.out_features,
              normalize=model.model.normalize, tokenizer_dir=hf_dir, max_seq_length=512)
  wd = tmp_path / "init"
  checkpoints.save_params(str(wd), jax.tree.map(np.asarray, model.params), meta)
  params, got = checkpoints.restore_params(str(wd))
  assert leaves_equal(params, jax.tree.map(np.asarray, model.params))
  assert got["step"] == 0 and got["out_features"] == 24 and got["t5_config"]["d_model"] == 32
  assert got["tokenizer_dir"] == str(wd / "tokenizer") and "tokenizer.json" in got["tokenizer_files"]
  # training starts from it (and from the HF folder directly), 2 steps each
  # (the second also with bf16 compute and a learnable temperature)
  for key, value, extra in (("init_checkpoint", str(wd), ()),
                            ("init_from", hf_dir, ("--config.model.dtype=bfloat16",
                                                   "--config.loss.learnable_temperature=True"))):
    out = tmp_path / f"from_{key}"
    run(out, "--config.num_train_steps=2", f"--config.model.{key}={value}", *extra)
    trained, tmeta = checkpoints.restore_params(str(out))
    assert tmeta["out_features"] == 24 and tmeta["step"] == 2
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(trained))
    assert ("log_temperature" in tmeta) == bool(extra)
    if extra:
      assert "temperature" in metrics(out)[-1] and np.isfinite(metrics(out)[-1]["loss"])
    assert jax.tree.structure(trained) == jax.tree.structure(params)
    assert not leaves_equal(trained, params)
