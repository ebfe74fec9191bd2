"""The MEDI builder (instructor_jax/medi_builder.py, CLI `python -m instructor_jax.medi build`): chunked mining equals brute force; classification positives share the
label and negatives do not; output is valid, deterministic MEDI; the CLI runs end to end on a tiny checkpoint."""
import json
import os

import numpy as np
import pytest

from instructor_jax.data import medi
from instructor_jax.data import medi_builder
from instructor_jax import medi as medi_cli

from helpers import FIXTURES, MEDI_FIXTURES, ROOT

SNI = os.path.join(FIXTURES, "super-ni")
CLS_TASK = "task321_stereoset_classification_religion"
GEN_TASK = "task305_jeopardy_answer_generation_normal"


def _unit(rng, n, d=8):
  x = rng.normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(x, labels=None, y=None, in_ids=None, out_ids=None, k=1):
  n = len(x)
  in_ids = np.arange(n) if in_ids is None else in_ids
  sx = x @ x.T
  own = in_ids[:, None] == in_ids[None, :]
  if labels is not None:
    same = labels[:, None] == labels[None, :]
    sp, sn = np.where(same & ~own, sx, -np.inf), np.where(~same & ~own, sx, -np.inf)
  else:
    out_ids = np.arange(n) if out_ids is None else out_ids
    sy = y @ y.T
    sp = np.where(~own, sx + sy, -np.inf)
    sn = np.where(~own & (out_ids[:, None] != out_ids[None, :]), sx - sy, -np.inf)
  pos = np.where(np.isfinite(sp.max(1)), sp.argmax(1), -1)
  sn[np.arange(n), pos] = np.where(pos >= 0, -np.inf, sn[np.arange(n), pos])
  order = np.argsort(-sn, axis=1, kind="stable")[:, :k]
  neg = np.where(np.isfinite(np.take_along_axis(sn, order, 1)), order, -1)
  return pos, neg


@pytest.mark.parametrize("mode", ["classification", "generation"])
def test_chunked_mining_equals_brute_force(mode):
  rng = np.random.default_rng(0)
  n = 53
  x = _unit(rng, n)
  in_ids = np.arange(n)
  in_ids[7] = 3  # instance 7 repeats the input of instance 3: never each other's candidate
  if mode == "classification":
    labels = rng.integers(0, 4, n)
    labels[0] = 9  # a label seen once: no positive
    kw, bkw = dict(labels=labels), dict(labels=labels)
  else:
    y = _unit(rng, n)
    out_ids = np.arange(n)
    out_ids[10] = out_ids[11] = 10
    kw, bkw = dict(y=y, output_ids=out_ids), dict(y=y, out_ids=out_ids)
  want = _brute(x, in_ids=in_ids, k=2, **bkw)
  for memory in (16 * n * 5, 1 << 28):  # 5 rows per chunk (a padded last chunk) and one chunk
    pos, neg = medi_builder.mine_pairs(x, input_ids=in_ids, num_negatives=2, memory_bytes=memory, **kw)
    np.testing.assert_array_equal(pos, want[0])
    np.testing.assert_array_equal(neg, want[1])
  assert pos[3] != 7 and pos[7] != 3
  if mode == "classification":
    assert pos[0] == -1
    ok = pos >= 0
    assert (labels[pos[ok]] == labels[ok]).all() and (labels[neg] != labels[:, None]).all()
  else:
    assert neg[10][0] != 11 and neg[11][0] != 10
  assert (neg != pos[:, None]).all()


def test_mining_memory_is_chunked():
  """A 100k-instance task never materialises N x N: the chunk size follows the memory budget."""
  rng = np.random.default_rng(1)
  x = _unit(rng, 2000, 4)
  pos, neg = medi_builder.mine_pairs(x, labels=rng.integers(0, 3, 2000), memory_bytes=16 * 2000 * 64)  # 64 rows / chunk
  assert pos.shape == (2000,) and neg.shape == (2000, 1) and (pos >= 0).all()


def test_read_super_ni_definition_string_or_list(tmp_path):
  t = medi_builder.read_super_ni(os.path.join(SNI, CLS_TASK + ".json"))
  assert t.name == CLS_TASK and len(t.inputs) == 100 and set(t.outputs) == {"stereotype", "anti-stereotype",
                                                                              "unrelated"}
  obj = json.load(open(os.path.join(SNI, CLS_TASK + ".json")))
  obj["Definition"] = ["First part.", "Second part."]
  p = tmp_path / "task9_list.json"
  p.write_text(json.dumps(obj))
  assert medi_builder.read_super_ni(str(p)).definition == "First part. Second part."
  obj["Instances"][3] = {"input": "x", "output": []}
  p.write_text(json.dumps(obj))
  with pytest.raises(ValueError, match="instance 3"):
    medi_builder.read_super_ni(str(p))


def test_instruction_template_and_annotations():
  ann = medi_builder.DEFAULT_ANNOTATIONS[CLS_TASK]
  instr = medi_builder.instruction_from_annotation(CLS_TASK, ann)
  assert instr == ("Represent the religion stereotype target and sentence pair for classifying stereotype, "
                   "anti-stereotype or unrelated: ")
  assert medi_builder.instruction_from_annotation("t", {"domain": "", "text_type": "tweet", "objective": "retrieval"}) == (
      "Represent the tweet for retrieval: ")
  with pytest.raises(ValueError, match="objective"):
    medi_builder.instruction_from_annotation("t", {"domain": "d", "text_type": "x"})
  bundled = sorted(f[:-5] for f in os.listdir(SNI) if f.endswith(".json"))
  assert all(t in medi_builder.DEFAULT_ANNOTATIONS for t in bundled) and len(medi_builder.DEFAULT_ANNOTATIONS) == 24


def _fake_embed(texts):
  """Deterministic bag-of-character-trigram embedding (fast, similar texts are close)."""
  out = np.zeros((len(texts), 64), np.float32)
  for i, t in enumerate(texts):
    t = t.lower()
    for j in range(len(t) - 2):
      out[i, medi.stable_hash(t[j:j + 3]) % 64] += 1
  return out


def test_build_classification_and_generation_rules():
  records, report = medi_builder.build_medi(SNI, _fake_embed, medi_builder.DEFAULT_ANNOTATIONS)
  by_task = {}
  for r in records:
    by_task.setdefault(r["task_name"], []).append(r)
  assert report["tasks"][CLS_TASK]["kind"] == "classification" and report["tasks"][GEN_TASK]["kind"] == "generation"
  label = {}
  task = medi_builder.read_super_ni(os.path.join(SNI, CLS_TASK + ".json"))
  for x, y in zip(task.inputs, task.outputs):
    label[x] = y
  assert len(by_task[CLS_TASK]) == report["tasks"][CLS_TASK]["records"] > 90
  for r in by_task[CLS_TASK]:
    q, p, n = r["query"][1], r["pos"][1], r["neg"][1]
    assert label[p] == label[q] and label[n] != label[q] and p != q
  gen = medi_builder.read_super_ni(os.path.join(SNI, GEN_TASK + ".json"))
  out = dict(zip(gen.inputs, gen.outputs))
  for r in by_task[GEN_TASK]:
    assert r["pos"][1] != r["query"][1] and r["neg"][1] not in (r["query"][1], r["pos"][1])
    assert out[r["neg"][1]] != out[r["query"][1]]
  # Every instance either became a record or is counted.
  for name, e in report["tasks"].items():
    assert e["records"] + e.get("skipped_no_positive", 0) + e.get("skipped_no_negative", 0) == e["used"]


def test_build_respects_max_instances_and_seed():
  a, _ = medi_builder.build_medi(SNI, _fake_embed, medi_builder.DEFAULT_ANNOTATIONS, seed=1, max_instances=30, tasks=[GEN_TASK])
  b, _ = medi_builder.build_medi(SNI, _fake_embed, medi_builder.DEFAULT_ANNOTATIONS, seed=1, max_instances=30, tasks=[GEN_TASK])
  c, _ = medi_builder.build_medi(SNI, _fake_embed, medi_builder.DEFAULT_ANNOTATIONS, seed=2, max_instances=30, tasks=[GEN_TASK])
  assert a == b and len(a) == 30 and a != c
  with pytest.raises(ValueError, match="no annotation"):
    medi_builder.build_medi(SNI, _fake_embed, {})


@pytest.mark.slow
def test_build_cli_with_a_tiny_checkpoint(tmp_path):
  """End to end: `python -m instructor_jax.medi build` with an Instructor checkpoint, merge, valid strict MEDI."""
  import reference
  ckpt = reference.make_checkpoint(str(tmp_path / "ckpt"), "relu")
  ann = tmp_path / "ann.json"
  ann.write_text(json.dumps({k: medi_builder.DEFAULT_ANNOTATIONS[k] for k in (CLS_TASK, GEN_TASK)}))
  sni = tmp_path / "sni"
  sni.mkdir()
  for t in (CLS_TASK, GEN_TASK):
    obj = json.load(open(os.path.join(SNI, t + ".json")))
    obj["Instances"] = obj["Instances"][:40]
    (sni / f"{t}.json").write_text(json.dumps(obj))
  out = tmp_path / "medi.jsonl"
  merge = os.path.join(MEDI_FIXTURES, "instructor_readme_medi_examples.json")
  args = ["build", "--super-ni", str(sni), "--embedder", ckpt, "--annotations", str(ann), "--out", str(out),
          "--merge", merge, "--batch-size", "16", "--max-length", "64"]
  assert medi_cli.main(args) == 0
  recs = list(medi.read_medi(str(out), strict=True))
  rep = json.load(open(str(out) + ".report.json"))
  mined = [r for r in recs if r.task in (CLS_TASK, GEN_TASK)]
  assert len(mined) == rep["tasks"][CLS_TASK]["records"] + rep["tasks"][GEN_TASK]["records"] >= 70
  assert [r.task for r in recs[-3:]] == ["1", "1", "300"] and rep["records"] == len(recs)
  assert all(r.query.instruction.endswith(": ") for r in mined)
  first = out.read_bytes()
  assert medi_cli.main(args) == 0 and out.read_bytes() == first  # deterministic


def test_unknown_task_names_list_the_closest_ones(tmp_path, capsys):
  """`--tasks` with a typo names the close tasks (issue 16 item 7), before any embedder is loaded."""
  with pytest.raises(medi_builder.BuildError, match=r"'task321_stereoset_classification_religon' \(closest: "
                     r"task321_stereoset_classification_religion"):
    medi_builder.select_tasks(SNI, [CLS_TASK, "task321_stereoset_classification_religon"])
  assert medi_builder.select_tasks(SNI, [GEN_TASK]) == [GEN_TASK + ".json"]
  assert len(medi_builder.select_tasks(SNI)) == len([f for f in os.listdir(SNI) if f.endswith(".json")])
  args = ["build", "--super-ni", SNI, "--embedder", str(tmp_path / "no-such-model"), "--out",
          str(tmp_path / "o.jsonl"), "--tasks", "jeopardy"]
  assert medi_cli.main(args) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "'jeopardy' (closest: task305_jeopardy" in err and "no Super" not in err
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(medi_builder.BuildError, match="no Super-NaturalInstructions task files"):
    medi_builder.select_tasks(str(empty), [GEN_TASK])


@pytest.mark.slow
def test_build_does_not_print_jax_backend_probing(tmp_path):
  """`medi build` logs its own progress, not JAX's `Unable to initialize backend 'tpu'` (issue 16 item 10)."""
  import subprocess
  import sys
  import reference
  ckpt = reference.make_checkpoint(str(tmp_path / "ckpt"), "relu")
  sni = tmp_path / "sni"
  sni.mkdir()
  obj = json.load(open(os.path.join(SNI, CLS_TASK + ".json")))
  obj["Instances"] = obj["Instances"][:20]
  (sni / f"{CLS_TASK}.json").write_text(json.dumps(obj))
  r = subprocess.run([sys.executable, "-m", "instructor_jax.medi", "build", "--super-ni", str(sni), "--embedder",
                      ckpt, "--out", str(tmp_path / "m.jsonl"), "--max-length", "32"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300,
                     env={k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"})  # probes every backend
  assert r.returncode == 0, r.stderr
  assert "Unable to initialize backend" not in r.stderr and f"{CLS_TASK}: classification" in r.stderr
