"""Training batches (instructor_jax/data.py), seqio tasks (tasks/medi.py) and the TFDS builder (tasks/medi_tfds.py).

Sampler / preview tests need no tokenizer; TrainStream tests load the bundled T5 tokenizer (transformers); the seqio
and TFDS tests import TensorFlow and come last.
"""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from instructor_jax.data import stream as data
from instructor_jax.data import features
from instructor_jax.data import medi
from instructor_jax.data import sampling
from instructor_jax.data.tokenization import join_instruction
from instructor_jax.data import __main__ as data_cli

from helpers import ROOT, SMALL, VOCAB, run_module
SIZES = {"banking77_train_same_intent": 60, "msrp_train_paraphrase": 40, "scifact_train_claim_evidence": 30,
         "sick_train_entailment": 12, "stsb_train_paraphrase": 50, "twitter_pit2015_dev_paraphrase": 20}


@pytest.fixture(scope="module")
def index():
  return features.MediIndex.from_file(SMALL)


def _sampler(index, B=8, seed=0, **kw):
  return sampling.Sampler(index.sizes, B, seed=seed, pos_keys=[t.pos_keys for t in index.tasks],
                      task_names=index.task_names, **kw)


def _preview(*args, check=True):
  return run_module("instructor_jax.data", "preview", *args, check=check, timeout=120)


def _lines(r):
  return [json.loads(l) for l in r.stdout.splitlines()]


# -- sampling: a pure function of (seed, step) ---------------------------------------------------------------------

def test_index_groups_records_by_task(index):
  assert index.task_names == sorted(SIZES) and index.sizes == [SIZES[t] for t in index.task_names]
  objs = json.load(open(SMALL))
  for name, td in zip(index.task_names, index.tasks):
    assert all(objs[i]["task_name"] == name for i in td.ids)
    assert list(td.ids) == sorted(td.ids)
  assert sorted(np.concatenate([t.ids for t in index.tasks]).tolist()) == list(range(212))


def test_every_global_batch_is_one_task_without_repeats(index):
  s = _sampler(index, B=8)
  for step in range(300):
    k, rows = s.batch(step)
    assert rows.shape == (8,) and len(set(rows.tolist())) == 8
    assert rows.min() >= 0 and rows.max() < index.sizes[k]


def test_random_access_equals_sequential(index):
  a, b = _sampler(index, seed=3), _sampler(index, seed=3)
  seq = [a.batch(t) for t in range(2500)]  # crosses block boundaries
  for t in [2499, 0, 1500, 1023, 1024, 7, 2048]:  # fresh sampler, out of order
    k, rows = b.batch(t)
    assert k == seq[t][0] and np.array_equal(rows, seq[t][1])
  c = _sampler(index, seed=4)
  assert any(c.batch(t)[0] != seq[t][0] or not np.array_equal(c.batch(t)[1], seq[t][1]) for t in range(20))


def test_each_epoch_of_a_task_is_a_permutation(index):
  s = _sampler(index, B=8)
  k = index.task_names.index("banking77_train_same_intent")  # 60 records: 7 batches per epoch, 4 left over
  rows = [s._rows(k, j) for j in range(14)]
  e0, e1 = np.concatenate(rows[:7]), np.concatenate(rows[7:])
  assert len(set(e0.tolist())) == 56 and len(set(e1.tolist())) == 56
  assert not np.array_equal(e0, e1)
  # Occurrences of the task along the step sequence consume the epoch in order.
  steps = [t for t in range(400) if s.task_of(t) == k][:7]
  assert np.array_equal(np.concatenate([s.batch(t)[1] for t in steps]), e0)


def test_rates(index):
  sizes = np.array(index.sizes, float)
  np.testing.assert_allclose(sampling.task_rates(sizes, "proportional"), sizes / sizes.sum())
  np.testing.assert_allclose(sampling.task_rates(sizes, "uniform"), np.full(6, 1 / 6))
  t = sampling.task_rates(sizes, "temperature", 2.0)
  np.testing.assert_allclose(t, np.sqrt(sizes) / np.sqrt(sizes).sum())
  with pytest.raises(ValueError):
    sampling.task_rates(sizes, "zipf")
  s = _sampler(index, B=8)
  counts = np.bincount([s.task_of(t) for t in range(20000)], minlength=6) / 20000
  np.testing.assert_allclose(counts, sizes / sizes.sum(), atol=0.015)
  u = _sampler(index, B=8, sampling="uniform")
  counts = np.bincount([u.task_of(t) for t in range(20000)], minlength=6) / 20000
  np.testing.assert_allclose(counts, 1 / 6, atol=0.015)


def test_small_tasks_are_dropped_and_reported(index):
  s = _sampler(index, B=16)
  assert set(s.dropped) == {"sick_train_entailment"} and "12 records < global batch 16" in s.dropped[
      "sick_train_entailment"]
  assert "sick_train_entailment" not in s.report()["active_tasks"]
  assert s.report()["dropped_tasks"] == s.dropped
  sick = index.task_names.index("sick_train_entailment")
  assert all(s.task_of(t) != sick for t in range(2000))
  with pytest.raises(ValueError, match="repeating a record"):  # "repeat" would put a record twice in a batch
    _sampler(index, B=16, small_tasks="repeat")
  with pytest.raises(ValueError, match="no task can fill"):
    _sampler(index, B=64)


def test_dedup_positives():
  rng = np.random.default_rng(0)
  keys = rng.integers(0, 30, size=200)  # many duplicate positives
  s = sampling.Sampler([200], 16, seed=1, dedup_positives=True, pos_keys=[keys])
  plain = sampling.Sampler([200], 16, seed=1, pos_keys=[keys])
  assert any(len(set(keys[plain.batch(t)[1]].tolist())) < 16 for t in range(20))
  seen = collections.Counter()
  for t in range(100):
    k, rows = s.batch(t)
    assert len(set(keys[rows].tolist())) == 16 and len(set(rows.tolist())) == 16
    seen.update(rows.tolist())
  assert len(seen) == 200  # everything is used over the epochs
  # A skewed task (one positive in 90% of 100k records) lays out in linear time.
  skew = np.where(rng.random(100_000) < 0.9, 0, np.arange(100_000))
  big = sampling.Sampler([100_000], 32, dedup_positives=True, pos_keys=[skew])
  layout = big._dedup_layout(0, 0)
  assert layout.shape[0] >= 300 and all(len(set(skew[r].tolist())) == 32 for r in layout[:50])
  # Fewer distinct positives than the batch: dropped (reported).
  few = sampling.Sampler([200, 50], 16, dedup_positives=True, pos_keys=[keys % 5, np.arange(50)])
  assert "0" in few.dropped and "distinct positives" in few.dropped["0"]


def test_host_slices(index):
  s = _sampler(index, B=8)
  k, rows = s.batch(5)
  parts = [s.host_slice(rows, i, 4) for i in range(4)]
  assert np.array_equal(np.concatenate(parts), rows)
  with pytest.raises(ValueError, match="divisible"):
    sampling.host_batch_size(8, 3)
  with pytest.raises(ValueError):
    s.host_slice(rows, 4, 4)
  with pytest.raises(ValueError):
    s.batch(-1)


# -- preview CLI (what the external bar runs) ------------------------------------------------------------------------

def test_preview_two_hosts_disjoint_complete_single_task_and_restart(index):
  h0 = _lines(_preview("--medi", SMALL, "--global-batch", 8, "--steps", 30, "--process-count", 2,
                       "--process-index", 0, "--json"))
  h1 = _lines(_preview("--medi", SMALL, "--global-batch", 8, "--steps", 30, "--process-count", 2,
                       "--process-index", 1, "--json"))
  one = _lines(_preview("--medi", SMALL, "--global-batch", 8, "--steps", 30, "--json"))
  objs = json.load(open(SMALL))
  assert len(h0) == len(h1) == len(one) == 30
  for a, b, g in zip(h0, h1, one):
    assert a["step"] == b["step"] == g["step"] and a["task"] == b["task"] == g["task"]
    assert len(a["record_ids"]) == len(b["record_ids"]) == 4
    assert not set(a["record_ids"]) & set(b["record_ids"])
    assert a["record_ids"] + b["record_ids"] == g["record_ids"]
    assert {objs[i]["task_name"] for i in g["record_ids"]} == {g["task"]}
  restart = _lines(_preview("--medi", SMALL, "--global-batch", 8, "--steps", 10, "--start-step", 20,
                            "--process-count", 2, "--process-index", 1, "--json"))
  assert restart == h1[20:]


def test_preview_matches_sampler_and_imports_neither_jax_nor_tf(index):
  code = ("import sys; from instructor_jax.data import __main__ as data_cli; "
          "data_cli.main(['preview', '--medi', %r, '--global-batch', '8', '--steps', '2', '--json']); "
          "bad = [m for m in ('jax', 'tensorflow', 'seqio', 'transformers') if m in sys.modules]; "
          "assert not bad, bad" % SMALL)
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  s = _sampler(index, B=8)
  for line in _lines(r):
    k, rows = s.batch(line["step"])
    assert line["task"] == index.task_names[k] and line["record_ids"] == index.tasks[k].ids[rows].tolist()


def test_preview_corrupted_copy_fails_with_line(tmp_path):
  lines = open(SMALL, encoding="utf-8").read().split("\n")
  lines[1234] = '"broken text without closing quote,'
  bad = tmp_path / "bad.json"
  bad.write_text("\n".join(lines), encoding="utf-8")
  r = _preview("--medi", bad, "--global-batch", 8, "--steps", 3, "--json", check=False)
  assert r.returncode != 0 and r.stdout == ""
  assert f"{bad}:1235:" in r.stderr and "line 1235" in r.stderr
  ok = _preview("--medi", bad, "--global-batch", 8, "--steps", 3, "--json", "--skip-invalid")
  assert "skipped 1 invalid (invalid_json=1)" in ok.stderr and len(_lines(ok)) == 3


def test_preview_reports_dropped_tasks():
  r = _preview("--medi", SMALL, "--global-batch", 16, "--steps", 2, "--json")
  assert "dropped task sick_train_entailment" in r.stderr


# -- TrainStream (the trainer's interface) ---------------------------------------------------------------------------

CFG = dict(medi_path=SMALL, tfds_data_dir="", max_query_length=24, max_doc_length=40, num_negatives=1,
           sampling="proportional", temperature=2.0, small_tasks="drop", dedup_positives=False, strict=False,
           skip_invalid=False)


@pytest.fixture(scope="module")
def tokenizer():
  from instructor_jax.data.tokenization import Tokenizer
  return Tokenizer.from_pretrained(VOCAB)


@pytest.fixture(scope="module")
def stream():
  return data.TrainStream.from_config(CFG, VOCAB, 8, 0, 0, 1)


def test_stream_shapes_and_values(stream, tokenizer):
  from instructor_jax.data.tokenization import Tokenizer
  recs = {r.index: r for r in medi.read_medi(SMALL)}
  qt, dt = Tokenizer(tokenizer.hf, 24), Tokenizer(tokenizer.hf, 40)
  assert stream.task_names == sorted(SIZES)
  for step in range(6):
    b = stream.get(step)
    shapes = {k: v.shape for k, v in b.items()}
    assert shapes == {"query_tokens": (8, 24), "query_instr_len": (8,), "pos_tokens": (8, 40), "pos_instr_len": (8,),
                      "neg_tokens": (8, 1, 40), "neg_instr_len": (8, 1), "task": (8,)}  # exactly the contract keys
    assert all(v.dtype == np.int32 for v in b.values())
    b = stream.get(step, with_record_ids=True)
    assert np.array_equal(b["record_id"], stream.record_ids(step))
    assert len(set(b["task"].tolist())) == 1
    for i, rid in enumerate(b["record_id"]):
      r = recs[int(rid)]
      assert stream.task_names[b["task"][i]] == r.task
      for key, tok, pair in (("query", qt, r.query), ("pos", dt, r.pos)):
        e = tok.encode([pair.as_list()])[0]
        row = b[f"{key}_tokens"][i]
        assert row[:len(e.ids)].tolist() == list(e.ids) and not row[len(e.ids):].any()
        assert row[len(e.ids) - 1] == 1 and b[f"{key}_instr_len"][i] == e.instr_len
      e = dt.encode([r.neg[0].as_list()])[0]
      assert b["neg_tokens"][i, 0, :len(e.ids)].tolist() == list(e.ids) and b["neg_instr_len"][i, 0] == e.instr_len
  assert (stream.get(0)["query_instr_len"] > 1).all()  # MEDI instructions are masked out of pooling


def test_stream_hosts_split_the_global_batch(stream):
  hosts = [data.TrainStream(stream.index, stream.sampler, 24, 40, 1, i, 2) for i in range(2)]
  for step in (0, 3, 17):
    g = stream.get(step, with_record_ids=True)
    parts = [h.get(step, with_record_ids=True) for h in hosts]
    for k in g:
      assert np.array_equal(np.concatenate([p[k] for p in parts]), g[k]), k
    assert not set(parts[0]["record_id"].tolist()) & set(parts[1]["record_id"].tolist())


def test_stream_resume_is_exact(stream):
  ref = data.TrainStream(stream.index, stream.sampler, 24, 40, 1)
  full = [next(ref) for _ in range(12)]
  a = data.TrainStream(stream.index, stream.sampler, 24, 40, 1)
  for _ in range(5):
    next(a)
  state = json.loads(json.dumps(a.state_dict()))  # JSON-serialisable
  assert state["step"] == 5
  g = data.TrainStream(stream.index, stream.sampler, 24, 40, 1)
  g.get(9)  # random access (a trainer's prefetch) moves the position too
  assert g.state_dict()["step"] == 10
  b = data.TrainStream.from_config(CFG, VOCAB, 8, 0, 0, 1)  # a "restarted" process
  b.load_state_dict(state)
  for want in full[5:]:
    got = next(b)
    assert all(np.array_equal(got[k], want[k]) for k in want)
  other = data.TrainStream.from_config(dict(CFG, sampling="uniform"), VOCAB, 8, 0, 0, 1)
  with pytest.raises(ValueError, match="training data changed since this checkpoint"):
    other.load_state_dict(state)
  other.load_state_dict(state, strict=False)
  assert other.step == 5


def test_stream_config_variants(tmp_path):
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(CFG, num_negatives=0))
  s = data.TrainStream.from_config(cfg, VOCAB, 4, 1, 1, 2)
  b = s.get(0)
  assert b["neg_tokens"].shape == (2, 0, 40) and b["neg_instr_len"].shape == (2, 0) and b["task"].shape == (2,)
  with pytest.raises(medi.MediError, match="num_negatives=2"):
    data.TrainStream.from_config(dict(CFG, num_negatives=2), VOCAB, 4, 0)
  with pytest.raises(ValueError, match="divisible"):
    data.TrainStream.from_config(CFG, VOCAB, 6, 0, 0, 4)
  with pytest.raises(ValueError, match="medi_path"):
    data.TrainStream.from_config(dict(CFG, medi_path=""), VOCAB, 4, 0)
  # --skip-invalid through the config; bad records are counted in the stream's report.
  objs = json.load(open(SMALL))
  objs[3]["pos"] = ["Represent the x;", ""]
  p = tmp_path / "m.jsonl"
  p.write_text("\n".join(json.dumps(o) for o in objs) + "\n")
  with pytest.raises(medi.MediError, match=r"m.jsonl:4: record 3"):
    data.TrainStream.from_config(dict(CFG, medi_path=str(p)), VOCAB, 4, 0)
  s = data.TrainStream.from_config(dict(CFG, medi_path=str(p), skip_invalid=True), VOCAB, 4, 0)
  assert s.report()["input"]["skipped_by_class"] == {"empty_text": 1}
  assert 3 not in np.concatenate([t.ids for t in s.index.tasks])


# -- seqio: vocabulary, tasks, feature converter (imports TensorFlow) ------------------------------------------------

SPECIAL = ("</s>", "<pad>", "<unk>", "<extra_id_")


@pytest.mark.slow
def test_seqio_vocabulary_ids_equal_the_encoder_tokenizer(tokenizer):
  """seqio.SentencePieceVocabulary (+ </s>, truncation keeping </s>) == Tokenizer ids.

  Known difference, skipped: strings with a literal special token ("</s>", "<pad>", ...), which the Hugging Face
  fast tokenizer turns into the special id while SentencePiece spells out as text.
  """
  from instructor_jax.data import seqio_tasks as tm
  from instructor_jax.data.tokenization import Tokenizer
  vocab = tm.vocabulary(VOCAB)
  golden = json.load(open(os.path.join(ROOT, "tests", "fixtures", "golden-token-ids-instructor-base.json")))
  strings = [d["input"] for d in golden["datasets"]]
  for r in medi.read_medi(SMALL):
    strings += [r.query.text, join_instruction(*r.pos.as_list()), r.neg[0].instruction]
  skipped = [s for s in strings if any(t in s for t in SPECIAL)]
  assert 1 <= len(skipped) <= 5
  for max_len in (512, 16):
    tok = Tokenizer(tokenizer.hf, max_len)
    for s in strings:
      if s in skipped:
        continue
      want = tok.encode_texts([s])[0]
      got = list(vocab.encode(s.strip()))[:max_len - 1] + [1]
      assert got == want, s
  assert vocab.decode(tok.encode_texts(["Represent the tweet: hello"])[0][:-1]) == "Represent the tweet: hello"


@pytest.fixture(scope="module")
def seqio_tasks():
  from instructor_jax.data import seqio_tasks as tm
  return tm.register_medi(medi_path=SMALL, tokenizer_dir=VOCAB, max_query_length=24, max_doc_length=40,
                          prefix="medi_test")


def test_seqio_tasks_produce_the_stream_features(seqio_tasks, stream):
  import seqio
  assert seqio_tasks == [f"medi_test.{t}" for t in sorted(SIZES)]
  for k, name in enumerate(seqio_tasks):
    ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split="train", shuffle=False)
    exs = list(ds.as_numpy_iterator())
    td = stream.index.tasks[k]
    assert [int(e["record_id"]) for e in exs] == td.ids.tolist()
    for row, e in enumerate(exs):
      assert e["query_tokens"].tolist() == td.query.row(row).tolist()
      assert e["pos_tokens"].tolist() == td.pos.row(row).tolist()
      assert e["neg_tokens"][0].tolist() == td.neg[0].row(row).tolist()
      assert (e["query_instr_len"], e["pos_instr_len"], e["neg_instr_len"][0]) == (
          td.query.instr_len[row], td.pos.instr_len[row], td.neg[0].instr_len[row])
  mix = seqio.get_mixture_or_task("medi_test")
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  total = sum(SIZES.values())
  for t, n in SIZES.items():
    assert rates[f"medi_test.{t}"] == pytest.approx(n / total)


def test_seqio_feature_converter_pads_like_the_stream(seqio_tasks, stream):
  import seqio
  from instructor_jax.data import seqio_tasks as tm
  ds = seqio.get_dataset(seqio_tasks[0], task_feature_lengths=tm.feature_lengths(24, 40, 1), dataset_split="train",
                         shuffle=False, feature_converter=tm.MediFeatureConverter())
  ex = next(ds.batch(4).as_numpy_iterator())
  assert ex["query_tokens"].shape == (4, 24) and ex["neg_tokens"].shape == (4, 1, 40)
  rows = np.arange(4)
  td = stream.index.tasks[0]
  assert np.array_equal(ex["query_tokens"], features.pad_rows([td.query.row(r) for r in rows], 24))
  assert np.array_equal(ex["neg_tokens"][:, 0], features.pad_rows([td.neg[0].row(r) for r in rows], 40))


# -- TFDS: prepared shards give the same batches; interrupted preparation is never read ------------------------------

def test_tfds_prepare_and_read_give_identical_batches(tmp_path, stream):
  import tensorflow_datasets as tfds
  from instructor_jax.data import medi_tfds
  tfds.disable_progress_bar()
  objs = json.load(open(SMALL))
  objs[10]["task_name"] = 3.5  # one bad record: counted, reported next to the data
  src = tmp_path / "src" / "medi.json"
  src.parent.mkdir()
  src.write_text(json.dumps(objs, indent=1))
  out = medi_tfds.prepare(str(src), str(tmp_path / "tfds"), skip_invalid=True, num_shards=2)
  report = json.load(open(os.path.join(out, "prepare_report.json")))
  assert report["skipped_by_class"] == {"bad_task_id": 1} and report["valid"] == 211
  assert len([f for f in os.listdir(out) if "banking77" in f and ".tfrecord" in f]) == 2
  s = data.TrainStream.from_config(dict(CFG, tfds_data_dir=str(tmp_path / "tfds")), VOCAB, 8, 0, 0, 1)
  assert s.report()["input"]["skipped_by_class"] == {"bad_task_id": 1}
  f = data.TrainStream.from_config(dict(CFG, medi_path=str(src), skip_invalid=True), VOCAB, 8, 0, 0, 1)
  for step in range(10):
    a, b = s.get(step), f.get(step)
    assert all(np.array_equal(a[k], b[k]) for k in a)
  # packed rows from the TFDS source are those of the file source too
  from instructor_jax.data import packing
  packed = [data.TrainStream.from_config(dict(CFG, **src_kw), VOCAB, 8, 0, 0, 1, packing.Packer(40, 8 * 3))
            for src_kw in (dict(tfds_data_dir=str(tmp_path / "tfds")), dict(medi_path=str(src), skip_invalid=True))]
  for step in range(5):
    a, b = packed[0].get(step), packed[1].get(step)
    assert set(a) == set(packing.PACK_KEYS) and all(np.array_equal(a[k], b[k]) for k in a)
  with pytest.raises(ValueError, match="already holds"):
    medi_tfds.prepare(str(src), str(tmp_path / "tfds"))
  # seqio reads the same shards.
  from instructor_jax.data import seqio_tasks as tm
  import seqio
  names = tm.register_medi(tfds_data_dir=str(tmp_path / "tfds"), tokenizer_dir=VOCAB, max_query_length=24,
                           max_doc_length=40, prefix="medi_tfds_test")
  ex = list(seqio.get_mixture_or_task(names[0]).get_dataset(sequence_length=None, split="train", shuffle=False)
            .as_numpy_iterator())
  assert [int(e["record_id"]) for e in ex] == s.index.tasks[0].ids.tolist()


def test_tfds_interrupted_preparation_is_not_read(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  from instructor_jax.data import medi_tfds
  tfds.disable_progress_bar()
  src = tmp_path / "src" / "medi.json"
  src.parent.mkdir()
  src.write_text(open(SMALL).read())
  real = medi_tfds.Medi._generate_examples
  calls = {"n": 0}

  def crashing(self, path):
    for i, ex in enumerate(real(self, path)):
      calls["n"] += 1
      if calls["n"] == 100:
        raise KeyboardInterrupt("simulated crash mid-preparation")
      yield ex

  monkeypatch.setattr(medi_tfds.Medi, "_generate_examples", crashing)
  with pytest.raises(KeyboardInterrupt):
    medi_tfds.prepare(str(src), str(tmp_path / "tfds"))
  monkeypatch.setattr(medi_tfds.Medi, "_generate_examples", real)
  with pytest.raises(FileNotFoundError, match="no prepared MEDI dataset"):
    features.MediIndex.from_tfds(str(tmp_path / "tfds"))
  assert not medi_tfds.Medi(data_dir=str(tmp_path / "tfds")).is_prepared()
  medi_tfds.prepare(str(src), str(tmp_path / "tfds"))  # a re-run starts over and completes
  assert features.MediIndex.from_tfds(str(tmp_path / "tfds")).sizes == [SIZES[t] for t in sorted(SIZES)]
