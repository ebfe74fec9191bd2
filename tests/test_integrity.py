"""Training state you can trust (issue 13): one test per finding of the fault test, each through the real CLIs.

Checkpoints carry content checksums and a damaged latest step falls back to the previous one (bit flips, a truncated
file, a deleted item); one trainer per workdir; a resume refuses a changed run; bad data never trains; SIGINT saves;
config values are checked at start; user errors are one line (exit 2); ``encode`` and exports leave nothing behind.
The kill -9 and SIGTERM tests stay in test_train.py.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from instructor_jax.storage import checkpoints
from instructor_jax.data import features
from instructor_jax.data import medi
from instructor_jax.training import run_config
from instructor_jax.data import sampling
from instructor_jax.storage import files, workdir
from instructor_jax import convert as convert_cli

from helpers import DEMO_CONFIG as DEMO, ROOT, SMALL, TINY, cli_env as _env, metrics, run_train as run
from helpers import train_cmd as _cmd, wait_for_step


def _largest_params_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "params")) for f in fs]
  files = [f for f in files if os.sep + "d" + os.sep in f] or files
  return max(files, key=os.path.getsize)


def _flip(path, n=4000):
  data = bytearray(open(path, "rb").read())
  mid = len(data) // 2 - n // 2
  for i in range(max(mid, 0), min(mid + n, len(data))):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


STEPS = ("--config.checkpoint_every_steps=1", "--config.keep_checkpoints=3")


@pytest.fixture(scope="module")
def twelve(tmp_path_factory):
  """An uninterrupted 12-step run, a checkpoint every step (the fault test's repro)."""
  wd = tmp_path_factory.mktemp("twelve")
  run(wd, "--config.num_train_steps=12", *STEPS)
  return wd


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flipped_bytes", "truncated_file", "deleted_meta"])
def test_damaged_latest_step_falls_back_and_resumes_exactly(twelve, tmp_path, damage):
  uninterrupted = [r["loss"] for r in metrics(twelve)]
  wd = tmp_path / "wd"
  shutil.copytree(twelve, wd)
  target = _largest_params_file(str(wd / "12"))
  if damage == "flipped_bytes":
    _flip(target)
  elif damage == "truncated_file":
    os.truncate(target, os.path.getsize(target) // 3)
  else:
    shutil.rmtree(wd / "12" / "meta")
  # eval / convert read the newest intact step, and say so
  logged = []
  params, meta = checkpoints.restore_params(str(wd), log=logged.append)
  assert meta["step"] == 11 and meta["skipped_steps"] == [12], logged
  assert any(f"{wd}/12:" in m for m in logged)
  with pytest.raises(checkpoints.CheckpointError, match=r"/12: "):
    checkpoints.restore_params(str(wd / "12"))  # a step named explicitly is never replaced by another
  out = run(wd, "--config.num_train_steps=12", *STEPS)
  text = out.stdout + out.stderr
  assert f"{wd}/12: " in text and "resuming from step 11" in text, text[-3000:]
  assert os.path.isdir(wd / "12.corrupt") and sorted(int(d) for d in os.listdir(wd) if d.isdigit()) == [10, 11, 12]
  assert [r["loss"] for r in metrics(wd)] == uninterrupted  # step 12 again, bit-exact, as if never damaged
  a, _ = checkpoints.restore_params(str(twelve))
  b, _ = checkpoints.restore_params(str(wd))
  import jax
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_checksums_match_on_device_and_host(tmp_path):
  import jax
  import jax.numpy as jnp
  tree = {"params": {"w": jnp.linspace(-3, 3, 24, dtype=jnp.float32).reshape(4, 6),
                     "b": jnp.ones((5,), jnp.bfloat16)}, "train": {"rng": jax.random.PRNGKey(1), "step": jnp.int32(3)}}
  dev = checkpoints.checksums(tree)
  assert dev == checkpoints.host_checksums(jax.tree.map(np.asarray, tree))
  flipped = jax.tree.map(np.asarray, tree)
  flipped["params"]["w"] = flipped["params"]["w"].copy()
  flipped["params"]["w"].view(np.uint32)[2, 3] ^= 1 << 7  # one bit
  host = checkpoints.host_checksums(flipped)
  with pytest.raises(checkpoints.CheckpointError, match=r"checksum mismatch in \['params'\]\['w'\]"):
    checkpoints.verify("x", dev, host)


@pytest.mark.slow
def test_second_trainer_is_refused_and_the_first_goes_on(tmp_path):
  wd = tmp_path / "busy"
  args = ("--config.num_train_steps=30", "--config.checkpoint_every_steps=10")
  first = subprocess.Popen(_cmd(wd, *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  try:
    wait_for_step(first, wd, 2)
    second = run(wd, *args, check=False)
    assert second.returncode == 2, second.stderr[-2000:]
    err = second.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "in use by another trainer" in err and f"pid {first.pid}" in err
    out, errs = first.communicate(timeout=600)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 0, errs[-3000:]
  assert [r["step"] for r in metrics(wd)] == list(range(1, 31))
  assert not os.path.exists(wd / workdir.LOCK_NAME)


@pytest.mark.slow
def test_a_stale_lock_is_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  wd = tmp_path / "stale"
  wd.mkdir()
  (wd / workdir.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "run": "old",
                                                    "started": 0, "heartbeat": 0}))
  out = run(wd, "--config.num_train_steps=2")
  assert f"taking over the lock of {wd} from {dead.pid}" in out.stderr and "not running" in out.stderr
  # a lock from another host with a recent heartbeat is respected; an old one is taken over
  (wd / workdir.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "run": "x", "started": time.time(),
                                                    "heartbeat": time.time()}))
  refused = run(wd, "--config.num_train_steps=3", check=False)
  assert refused.returncode == 2 and "host elsewhere" in refused.stderr
  (wd / workdir.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "run": "x", "started": 0,
                                                    "heartbeat": time.time() - workdir.STALE_S - 5}))
  out = run(wd, "--config.num_train_steps=3")
  assert "no heartbeat for" in out.stderr


@pytest.mark.slow
def test_resume_refuses_a_changed_run_unless_the_change_is_named(tmp_path):
  wd = tmp_path / "changed"
  run(wd, "--config.num_train_steps=4", "--config.checkpoint_every_steps=2")
  for flag, key in (("--config.optim.learning_rate=0.002", "optim.learning_rate"),
                    ("--config.data.max_query_length=10", "data.max_query_length"),
                    ("--config.loss.variant=gtr", "loss.variant"), ("--config.loss.temperature=0.05", "loss.temperature"),
                    ("--config.seed=3", "seed"), ("--config.data.pack=false", "data.pack")):
    r = run(wd, "--config.num_train_steps=6", flag, check=False)
    assert r.returncode == 2, (flag, r.stderr[-2000:])
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and key in line and f"--config.resume_allow_changes={key}" in line, line
    assert "Traceback" not in r.stderr
  assert checkpoints.latest_step(str(wd)) == 4  # nothing was trained or written
  r = run(wd, "--config.num_train_steps=6", "--config.optim.learning_rate=0.002",
          "--config.resume_allow_changes=optim.learning_rate")
  assert "accepting optim.learning_rate 0.001 -> 0.002" in r.stdout
  assert "accepting num_train_steps 4 -> 6 (the schedule is recomputed for 6 steps" in r.stdout
  _, meta = checkpoints.restore_params(str(wd))
  assert meta["config"]["optim"]["learning_rate"] == 0.002
  assert meta["config_history"][-1]["step"] == 4
  assert meta["config_history"][-1]["changes"]["optim.learning_rate"] == [0.001, 0.002]
  # operational keys change freely
  run(wd, "--config.num_train_steps=7", "--config.optim.learning_rate=0.002", "--config.log_every_steps=2",
      "--config.checkpoint_every_steps=7")


def test_resume_changes_rules():
  import tiny_config
  c = tiny_config.get_config()
  stored = json.loads(c.to_json_best_effort())
  c.num_train_steps = 100
  c.mesh_shape = (2, 1, 1)
  c.model.remat = "full"
  accepted, refused = run_config.resume_changes(stored, c)
  assert set(accepted) == {"num_train_steps"} and not refused
  c.num_train_steps = 2
  c.model.t5 = dict(c.model.t5, d_model=64)
  _, refused = run_config.resume_changes(stored, c)
  assert set(refused) == {"num_train_steps", "model.t5.d_model"}
  c.resume_allow_changes = "num_train_steps, model.t5.d_model"
  accepted, refused = run_config.resume_changes(stored, c)
  assert set(accepted) == {"num_train_steps", "model.t5.d_model"} and not refused


# -- bad data never trains ----------------------------------------------------------------------------------------

def _demo(wd, medi_path, *extra):
  return subprocess.run([sys.executable, "-m", "instructor_jax.train", "--config", DEMO, "--workdir", str(wd),
                         f"--config.data.medi_path={medi_path}", "--config.num_train_steps=2", *extra], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_truncated_and_one_record_medi_files_fail(tmp_path):
  text = open(SMALL).read()
  cut = tmp_path / "truncated.json"
  cut.write_text(text[:len(text) * 4 // 9])
  one = tmp_path / "one.json"
  one.write_text(json.dumps(json.load(open(SMALL))[:1]))
  for path, expect in ((cut, "[truncated]"), (one, "no task can fill a global batch of 16")):
    r = _demo(tmp_path / path.stem, path)  # the demo config has skip_invalid=True
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and expect in line, line
    assert not any(d.isdigit() for d in os.listdir(tmp_path / path.stem)) if (tmp_path / path.stem).exists() else True
  jsonl = tmp_path / "cut.jsonl"
  lines = [json.dumps(o) for o in json.load(open(SMALL))]
  jsonl.write_text("\n".join(lines[:50]) + "\n" + lines[50][:40])
  with pytest.raises(medi.MediError, match=r"cut.jsonl:51: .*\[truncated\]"):
    list(medi.read_medi(str(jsonl), skip_invalid=True))


def test_too_many_invalid_records_fail_and_a_few_are_counted(tmp_path):
  objs = json.load(open(SMALL))
  for i in range(0, 20, 2):
    objs[i]["pos"] = "not a pair"  # 10 of 212 bad: 4.7%
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(objs))
  with pytest.raises(features.DataError, match=r"10 of 212 records are invalid \(bad_side=10\).*0.01"):
    features.MediIndex.from_file(str(path), skip_invalid=True)
  index = features.MediIndex.from_file(str(path), skip_invalid=True, max_invalid_fraction=0.05)
  assert index.report.skipped == 10 and sum(index.sizes) == 202


def test_a_global_batch_never_holds_a_record_twice():
  index = features.MediIndex.from_file(SMALL)
  s = sampling.Sampler(index.sizes, 16, seed=0, task_names=index.task_names)
  assert set(s.dropped) == {"sick_train_entailment"}  # 12 records < 16: dropped, counted
  for step in range(300):
    _, rows = s.batch(step)
    assert len(set(rows.tolist())) == len(rows) == 16
  with pytest.raises(sampling.DataError, match="repeating a record"):
    sampling.Sampler(index.sizes, 16, small_tasks="repeat")
  with pytest.raises(sampling.DataError, match="no task can fill a global batch of 100"):
    sampling.Sampler(index.sizes, 100, task_names=index.task_names)


# -- interrupts, validation, one-line errors ------------------------------------------------------------------------

@pytest.mark.slow
def test_sigint_saves_and_prints_the_resume_command(tmp_path):
  wd = tmp_path / "int"
  proc = subprocess.Popen(_cmd(wd, "--config.num_train_steps=100000", "--config.checkpoint_every_steps=1000"),
                          cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    wait_for_step(proc, wd, 3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  saved = [int(d) for d in os.listdir(wd) if d.isdigit()]
  assert len(saved) == 1 and saved[0] >= 3 and metrics(wd)[-1]["step"] == saved[0]
  assert f"SIGINT: saved step {saved[0]}" in out and "To resume: python -m instructor_jax.train --config" in out
  assert "Traceback" not in err and not os.path.exists(wd / workdir.LOCK_NAME)


@pytest.mark.parametrize("flag,key", [  # one trainer start (~10 s) in the fast tier, the rest slow
    ("--config.log_every_steps=0", "log_every_steps"),
    pytest.param("--config.checkpoint_every_steps=0", "checkpoint_every_steps", marks=pytest.mark.slow),
    pytest.param("--config.num_train_steps=-5", "num_train_steps", marks=pytest.mark.slow),
    pytest.param("--config.optim.learning_rate=nan", "optim.learning_rate", marks=pytest.mark.slow)])
def test_config_values_are_checked_at_start(tmp_path, flag, key):
  r = run(tmp_path / "v", flag, check=False)
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert lines[-1].startswith(f"error: --config.{key}: ") and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert not (tmp_path / "v").exists()  # nothing written


@pytest.mark.slow
def test_user_errors_are_one_line_unless_debugging(tmp_path):
  args = ("--config.data.source=file", f"--config.data.medi_path={tmp_path}/missing.json")
  r = run(tmp_path / "u", *args, check=False)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
      f"error: --config.data.medi_path: no such file: {tmp_path}/missing.json") and "Traceback" not in r.stderr
  env = dict(_env(), INSTRUCTOR_JAX_DEBUG="1")
  d = subprocess.run(_cmd(tmp_path / "u", *args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert d.returncode != 0 and "Traceback" in d.stderr and "ConfigError" in d.stderr


# -- encode and exports leave nothing behind -----------------------------------------------------------------------

def _encode(*args, umask=None):
  return subprocess.run([sys.executable, "-m", "instructor_jax.encode", "--model", TINY, *map(str, args)], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=600,
                        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def test_encode_empty_input_is_an_error_and_keeps_the_old_output(tmp_path):
  out = tmp_path / "emb.npy"
  np.save(out, np.ones((3, 4), np.float32))
  before = out.read_bytes()
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n  \n")
  r = _encode("--input", empty, "--output", out)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
      f"error: {empty}: no inputs (the file is empty or blank); nothing written")
  assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["emb.npy", "empty.jsonl"]


@pytest.mark.slow
def test_encode_output_honours_the_umask(tmp_path):
  src = tmp_path / "in.jsonl"
  src.write_text('{"text": "a title"}\n')
  for umask, mode in ((0o022, 0o644), (0o002, 0o664)):
    out = tmp_path / f"e{umask:o}.npy"
    r = _encode("--input", src, "--output", out, umask=umask)
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.stat(out).st_mode & 0o777 == mode


@pytest.mark.slow
def test_encode_attention_that_cannot_fit_fails_before_allocating(tmp_path):
  src = tmp_path / "long.jsonl"
  src.write_text(json.dumps({"text": "lorem ipsum " * 60000}) + "\n")
  t0 = time.time()
  r = _encode("--input", src, "--output", tmp_path / "e.npy", "--max-length", 100000)
  assert r.returncode == 2, r.stderr[-2000:]
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith("error: inputs of ") and "GiB of attention scores" in line and "GiB available" in line
  assert not (tmp_path / "e.npy").exists() and time.time() - t0 < 300


def test_a_killed_exports_temp_folder_is_removed_by_the_next_export(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  out = tmp_path / "export"
  stale = tmp_path / ".export.tmp-killed"
  stale.mkdir()
  (stale / "model.safetensors").write_bytes(b"\0" * 1000)
  (stale / ".owner.json").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
  legacy = tmp_path / ".export.tmp-old"  # an older version's, without an owner file
  legacy.mkdir()
  os.utime(legacy, (time.time() - 7200,) * 2)
  live = tmp_path / ".export.tmp-live"  # another export still writing
  live.mkdir()
  (live / ".owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                "start_time": files.start_time(os.getpid())}))
  assert convert_cli.main(["to-hf", "--model", TINY, "--out", str(out)]) == 0
  assert sorted(os.listdir(tmp_path)) == [".export.tmp-live", "export"]
  assert not os.path.exists(out / ".owner.json")


def _tree(root):
  return {os.path.relpath(os.path.join(d, f), root): (os.path.getsize(os.path.join(d, f)),
                                                       os.path.getmtime(os.path.join(d, f)))
          for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.slow
def test_a_finished_workdir_is_read_only_for_eval_and_convert(tmp_path):
  wd = tmp_path / "done"
  r = _demo(wd, SMALL, "--config.export.enabled=false", "--config.eval.data_dir=")
  assert r.returncode == 0, r.stderr[-3000:]
  before = _tree(wd)
  if os.geteuid() != 0:  # as root a mode cannot stop writes, so the check below is what counts
    for d, dirs, fs in os.walk(wd):
      for n in dirs + fs:
        os.chmod(os.path.join(d, n), 0o555 if n in dirs else 0o444)
  ev = subprocess.run([sys.executable, "-m", "instructor_jax.eval", "--model", str(wd), "--data-dir",
                       os.path.join(ROOT, "tests", "fixtures", "eval", "stsbenchmark"), "--output",
                       str(tmp_path / "eval"), "--max-length", "64"], cwd=ROOT, env=_env(), capture_output=True,
                      text=True, timeout=600)
  assert ev.returncode == 0, ev.stderr[-3000:]
  cv = subprocess.run([sys.executable, "-m", "instructor_jax.convert", "to-hf", "--checkpoint", str(wd), "--out",
                       str(tmp_path / "export")], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert cv.returncode == 0, cv.stderr[-3000:]
  assert _tree(wd) == before


def _eval_cli(*args):
  return subprocess.run([sys.executable, "-m", "instructor_jax.eval", "--model", TINY, *map(str, args)], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("case,expect", [
    ("constant", "every gold score is 3.0"), ("out_of_range", "outside the task's range [0, 5] (e.g. 7.5)"),
    ("one_example", "1 pair(s); a score needs at least 2")])
def test_eval_refuses_degenerate_gold_data_naming_the_file(tmp_path, case, expect):
  folder = tmp_path / "stsbenchmark"
  folder.mkdir()
  scores = {"constant": [3.0] * 6, "out_of_range": [1.0, 2.0, 7.5, 4.0, 0.5, 3.0], "one_example": [2.0]}[case]
  rows = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\ta man is playing {i}\ta man plays {i}"
          for i, s in enumerate(scores)]
  (folder / "sts-test.csv").write_text("\n".join(rows) + "\n")
  r = _eval_cli("--data-dir", folder, "--output", tmp_path / "out")
  assert r.returncode == 2, r.stderr[-2000:]
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: {folder}/sts-test.csv: ") and expect in line and "Traceback" not in r.stderr, line


@pytest.mark.slow
def test_eval_malformed_instructions_file_is_one_line(tmp_path):
  bad = tmp_path / "instructions.json"
  bad.write_text('{"STS": {"STSBenchmark": "Represent ...",}')
  r = _eval_cli("--data-dir", os.path.join(ROOT, "tests", "fixtures", "eval", "stsbenchmark"), "--output",
                tmp_path / "out", "--instructions", bad)
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:1: invalid JSON in the instruction table")


# -- issue 21: training faults are one line `error: ...`, exit 2, before any step -----------------------------------
def _one_line_error(r, *needles):
  assert r.returncode == 2, r.stderr[-2000:]
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and all(n in last for n in needles), last


def test_missing_config_file_is_one_line(tmp_path):
  _one_line_error(run(tmp_path / "w", config="configs/nope.py", check=False), "configs/nope.py", "no such file")


def test_unknown_config_variant_is_one_line(tmp_path):
  _one_line_error(run(tmp_path / "w", config="configs/demo.py:nope", check=False), "--config")


def test_unknown_config_key_is_one_line(tmp_path):
  _one_line_error(run(tmp_path / "w", "--config.foo=1", check=False), "--config.foo")


def test_mesh_larger_than_the_devices_is_one_line(tmp_path):
  _one_line_error(run(tmp_path / "w", "--config.mesh_shape=(64,1,1)", check=False), "--config.mesh_shape")
  assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / "f").write_text("x")
  _one_line_error(run(tmp_path / "f", check=False), str(tmp_path / "f"), "not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_workdir_is_one_line_at_start(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  try:
    _one_line_error(run(ro, check=False), str(ro), "cannot write")
  finally:
    ro.chmod(0o700)


def test_non_utf8_workdir_is_one_line_at_start(tmp_path):
  bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xff")
  _one_line_error(run(bad, check=False), "UTF-8")


def test_full_disk_during_a_save_is_one_line(tmp_path, monkeypatch):
  import errno
  from instructor_jax.core import cli
  ckpt = checkpoints.Checkpointer(str(tmp_path / "w"), max_to_keep=1, async_save=False)
  monkeypatch.setattr(ckpt.mgr, "save", lambda *a, **k: (_ for _ in ()).throw(
      OSError(errno.ENOSPC, "No space left on device")))
  params = {"w": np.zeros((2,), np.float32)}
  with pytest.raises(checkpoints.CheckpointError) as e:
    ckpt.save(1, params, {"step": np.int32(1)}, {"step": 1}, {})
  line = cli.describe(e.value)
  assert str(tmp_path / "w") in line and "disk is full" in line and "\n" not in line


def test_second_sigint_raises_keyboard_interrupt_and_ignores_a_third():
  guard = workdir.PreemptionGuard()
  try:
    guard._handle(signal.SIGINT, None)
    assert guard.should_stop()
    with pytest.raises(KeyboardInterrupt):
      guard._handle(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a third Ctrl-C prints no thread traceback
  finally:
    guard.restore_handlers()
