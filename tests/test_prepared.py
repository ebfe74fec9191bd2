"""The prepared store (instructor_jax/prepared.py, `data prepare`): same records and batches as the MEDI file,
hosts read only their own rows, atomic writes, and one-line errors for a folder that does not fit the run.

No JAX, no TensorFlow: the bundled T5 tokenizer and the small MEDI fixture only.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from instructor_jax.data import stream as data
from instructor_jax.data import features
from instructor_jax.data import medi
from instructor_jax.data import packing
from instructor_jax.data import prepared
from instructor_jax.core.errors import DataError
from instructor_jax import medi as medi_cli

from helpers import DEMO_CONFIG, ROOT, SMALL, VOCAB, run_module
CFG = dict(medi_path=SMALL, max_query_length=24, max_doc_length=40, num_negatives=1, sampling="proportional",
           dedup_positives=True, skip_invalid=True)


def _featurizer(lq=24, ld=40, n=1, vocab=VOCAB):
  return features.Featurizer(vocab, lq, ld, n)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  """The fixture prepared into many small shards (records cross no shard boundary; reads span several shards)."""
  out = str(tmp_path_factory.mktemp("prep") / "medi")
  prepared.prepare(SMALL, out, _featurizer(), skip_invalid=True, shard_mb=0.002, progress=False)
  return out


@pytest.fixture(scope="module")
def file_index():
  return features.MediIndex.from_file(SMALL, skip_invalid=True, featurizer=_featurizer())


def test_same_records_tokens_and_fingerprint_as_the_file(store, file_index):
  index = prepared.open_prepared(store, _featurizer())
  assert len(index.manifest["shards"]) > 3
  assert index.task_names == file_index.task_names and index.sizes == file_index.sizes
  assert index.fingerprint() == file_index.fingerprint()
  counts, summary = medi_cli.task_counts(store)  # `medi tasks PREPARED` reads the manifest only
  assert counts == dict(zip(file_index.task_names, file_index.sizes)) and "prepared from" in summary
  for mine, ref in zip(index.tasks, file_index.tasks):
    assert np.array_equal(mine.ids, ref.ids) and np.array_equal(mine.pos_keys, ref.pos_keys)
    for a, b in zip([mine.query, mine.pos, *mine.neg], [ref.query, ref.pos, *ref.neg]):
      assert np.array_equal(a.lengths, b.lengths) and np.array_equal(a.instr_len, b.instr_len)
      for r in range(len(ref.ids)):
        assert a.row(r).tolist() == b.row(r).tolist()


@pytest.mark.parametrize("pack", [False, True])
def test_batches_equal_the_file_source_on_every_host_and_resume(store, pack):
  B, hosts = 8, 2
  kw = dict(tokenizer_dir=VOCAB, global_batch_size=B, seed=3)
  for host in range(hosts):
    p = packing.Packer(40, B * 3, row_multiple=hosts, max_segments=6, process_index=host,
                       num_processes=hosts) if pack else None
    ref = data.TrainStream.from_config(CFG, process_index=host, process_count=hosts, packer=p, **kw)
    via_path = data.TrainStream.from_config(dict(CFG, medi_path=store), process_index=host, process_count=hosts,
                                            packer=p, **kw)
    mine = data.TrainStream.from_config(dict(CFG, source="prepared", prepared=store), process_index=host,
                                        process_count=hosts, packer=p, **kw)
    assert isinstance(mine.index, prepared.PreparedIndex) and isinstance(via_path.index, prepared.PreparedIndex)
    for step in range(12):
      want, got = ref.get(step), mine.get(step)
      assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want), (host, step)
      assert all(np.array_equal(want[k], v) for k, v in via_path.get(step).items())
    # Exact resume, also across the two sources (same content fingerprint).
    state = json.loads(json.dumps(ref.state_dict()))
    assert state == mine.state_dict()
    again = data.TrainStream.from_config(dict(CFG, source="prepared", prepared=store), process_index=host,
                                         process_count=hosts, packer=p, **kw)
    again.load_state_dict(state)
    want, got = ref.get(again.step), next(again)
    assert all(np.array_equal(want[k], got[k]) for k in want)


def test_preview_of_a_prepared_folder_equals_the_file(store):
  run = lambda m: run_module("instructor_jax.data", "preview", "--medi", m, "--global-batch", 8, "--steps", 6,
                             "--json", "--skip-invalid", timeout=120)
  a, b = run(SMALL), run(store)
  assert a.returncode == 0 and b.returncode == 0, b.stderr
  assert a.stdout == b.stdout and len(a.stdout.splitlines()) == 6


def test_a_host_reads_only_its_own_rows(store):
  B, hosts = 8, 2
  for host in range(hosts):
    s = data.TrainStream.from_config(dict(CFG, source="prepared", prepared=store), VOCAB, B, 0, host, hosts)
    s.get(5)
    assert s.index.reads == (B // hosts) * 3  # query, positive, one negative per own row; nothing else
    p = packing.Packer(40, B * 3, row_multiple=hosts, max_segments=6, process_index=host, num_processes=hosts)
    s = data.TrainStream.from_config(dict(CFG, source="prepared", prepared=store), VOCAB, B, 0, host, hosts, p)
    out = s.get(5)
    assert s.index.reads == int(np.count_nonzero(out["slot_seq"] < B * 3)) < B * 3


def test_other_tokenizer_or_lengths_is_a_one_line_error(store, tmp_path):
  with pytest.raises(DataError, match=r"max_doc_length=64 but the data was prepared with 40"):
    prepared.open_prepared(store, _featurizer(ld=64))
  with pytest.raises(DataError, match=r"num_negatives=2 but the data was prepared with 1"):
    data.TrainStream.from_config(dict(CFG, source="prepared", prepared=store, num_negatives=2), VOCAB, 8, 0)
  from transformers import AutoTokenizer
  other = tmp_path / "t5-plus-one"  # the T5 vocabulary plus one added token: other ids for "Represent ..."
  hf = AutoTokenizer.from_pretrained(VOCAB)
  hf.add_tokens(["Represent"])
  hf.save_pretrained(str(other))
  with pytest.raises(DataError, match="tokenizer .* is not the one the data was prepared with") as e:
    prepared.open_prepared(store, _featurizer(vocab=str(other)))
  assert "\n" not in str(e.value)


def _copy(store, tmp_path):
  dst = tmp_path / "copy"
  shutil.copytree(store, dst)
  return str(dst)


def test_missing_shard_damaged_index_and_unfinished_folder(store, tmp_path):
  d = _copy(store, tmp_path)
  name = json.load(open(os.path.join(d, prepared.MANIFEST)))["shards"][2]["file"]
  os.remove(os.path.join(d, name))
  with pytest.raises(DataError, match=f"shard {name} is missing"):
    prepared.open_prepared(d)
  shutil.rmtree(d)
  d = _copy(store, tmp_path)
  with open(os.path.join(d, prepared.INDEX), "r+b") as f:
    f.seek(200)
    byte = f.read(1)
    f.seek(200)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(DataError, match="the index is damaged"):
    prepared.open_prepared(d)
  shutil.rmtree(d)
  d = _copy(store, tmp_path)
  shard = os.path.join(d, json.load(open(os.path.join(d, prepared.MANIFEST)))["shards"][0]["file"])
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) - 2)
  with pytest.raises(DataError, match="bytes, manifest.json says"):
    prepared.open_prepared(d)
  os.remove(os.path.join(d, prepared.MANIFEST))
  with pytest.raises(DataError, match="no manifest.json"):
    data.TrainStream.from_config(dict(CFG, medi_path=d), VOCAB, 8, 0)


def test_an_interrupted_prepare_leaves_nothing_readable(tmp_path, monkeypatch):
  out = tmp_path / "medi"

  def boom(*a, **k):
    raise KeyboardInterrupt

  monkeypatch.setattr(prepared, "_write_shards", boom)
  with pytest.raises(KeyboardInterrupt):
    prepared.prepare(SMALL, str(out), _featurizer(), skip_invalid=True, progress=False)
  assert not out.exists() and os.listdir(tmp_path) == []
  monkeypatch.undo()
  prepared.prepare(SMALL, str(out), _featurizer(), skip_invalid=True, progress=False)
  with pytest.raises(DataError, match="already holds prepared data"):
    prepared.prepare(SMALL, str(out), _featurizer(), skip_invalid=True, progress=False)
  m = prepared.prepare(SMALL, str(out), _featurizer(lq=16), skip_invalid=True, progress=False, overwrite=True)
  assert m["max_query_length"] == 16 and sorted(os.listdir(tmp_path)) == ["medi"]


@pytest.mark.slow
def test_cli_prepare_from_a_config_with_progress_and_errors(tmp_path):
  out = tmp_path / "demo"
  r = run_module("instructor_jax.data", "prepare", "--config", DEMO_CONFIG, "--out", out, "--max-doc-length", 48,
                 timeout=120)
  assert r.returncode == 0, r.stderr
  assert "records/s" in r.stderr and "--config.data.source=prepared" in r.stderr
  m = prepared.read_manifest(str(out))
  assert (m["max_query_length"], m["max_doc_length"], m["num_negatives"]) == (64, 48, 1)
  assert m["options"]["skip_invalid"] and m["tasks"][0]["name"] == "banking77_train_same_intent"
  r = run_module("instructor_jax.data", "prepare", "--medi", tmp_path / "nope.json", "--out", tmp_path / "x",
                 timeout=120)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "x").exists()


def test_a_restart_loads_no_tokenizer_unless_its_files_changed(store, tmp_path):
  """Same tokenizer files: no transformers import at start; other files, same behaviour: loaded, compared, fine."""
  code = ("import sys; from instructor_jax.data import stream as data; "
          f"s = data.TrainStream.from_config(dict(source='prepared', prepared={store!r}, max_query_length=24, "
          f"max_doc_length=40, num_negatives=1), {VOCAB!r}, 8, 0); s.get(0); "
          "print('transformers' in sys.modules)")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
  copy = tmp_path / "vocab"
  shutil.copytree(VOCAB, copy)
  (copy / "README.md").write_text("the same T5 vocabulary\n")
  s = data.TrainStream.from_config(dict(CFG, source="prepared", prepared=store), str(copy), 8, 0)
  assert s.index.manifest["tokenizer"]["files_sha256"] != prepared.tokenizer_files_digest(str(copy))
