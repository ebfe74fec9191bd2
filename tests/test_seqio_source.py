"""Training from seqio (instructor_jax/seqio_source.py, config.data.source=seqio) and the TSV example Task.

The seqio source must give the file source's batches for the same data and seed (every host, padded and packed,
with dedup_positives), resume exactly, and fail in one line for an unknown name or missing features; ten training
steps of a demo-like config give the same losses from the file and from the ``medi`` Mixture (``MEDI_PATH``).
Imports TensorFlow (seqio); no /work/shared data.
"""
import json

import numpy as np
import pytest

from instructor_jax.data import stream as data
from instructor_jax.data import features
from instructor_jax.data import packing
from instructor_jax.data import seqio_source
from instructor_jax.core.errors import DataError
from instructor_jax.data.tokenization import Tokenizer

import helpers
from helpers import SMALL, VOCAB

CFG = dict(medi_path=SMALL, max_query_length=24, max_doc_length=40, num_negatives=1, sampling="proportional",
           dedup_positives=True)
SEQIO = dict(CFG, source="seqio", mixture_or_task="medi_t14", seqio_modules="")


@pytest.fixture(scope="module")
def registered():
  from instructor_jax.data import seqio_tasks as tm  # registered with 512 / 512; training hands its own lengths to the preprocessor
  return tm.register_medi(medi_path=SMALL, tokenizer_dir=VOCAB, prefix="medi_t14")


def test_seqio_index_is_the_file_index(registered):
  ref = features.MediIndex.from_file(SMALL, featurizer=features.Featurizer(VOCAB, 24, 40, 1))
  index, rates = seqio_source.load_index("medi_t14", 24, 40, 1, modules="")
  assert index.task_names == registered and index.sizes == ref.sizes
  assert rates == pytest.approx(np.asarray(ref.sizes) / sum(ref.sizes))
  for mine, want in zip(index.tasks, ref.tasks):
    assert np.array_equal(mine.ids, want.ids) and np.array_equal(mine.pos_keys, want.pos_keys)
    for a, b in zip([mine.query, mine.pos, *mine.neg], [want.query, want.pos, *want.neg]):
      assert np.array_equal(a.data, b.data) and np.array_equal(a.offsets, b.offsets)
      assert np.array_equal(a.instr_len, b.instr_len)
  assert max(index.tasks[0].query.lengths) == 24  # truncated to the training length, </s> kept
  assert index.tasks[0].query.row(int(np.argmax(index.tasks[0].query.lengths)))[-1] == 1


@pytest.mark.parametrize("pack", [False, True])
def test_same_batches_as_the_file_source_on_every_host_and_exact_resume(registered, pack):
  B, hosts = 8, 2
  loaded = None
  for host in range(hosts):
    p = packing.Packer(40, B * 3, row_multiple=hosts, max_segments=6, process_index=host,
                       num_processes=hosts) if pack else None
    kw = dict(tokenizer_dir=VOCAB, global_batch_size=B, seed=5, process_index=host, process_count=hosts, packer=p)
    ref = data.TrainStream.from_config(CFG, **kw)
    if loaded is None:
      mine = loaded = data.TrainStream.from_config(SEQIO, **kw)
      assert mine.sampler.given_rates is not None
    else:  # the other host: the same index and sampler (what its own load gives), its own rows
      mine = data.TrainStream(loaded.index, loaded.sampler, 24, 40, 1, host, hosts, p)
    for step in range(15):
      want, got = ref.get(step, with_record_ids=True), mine.get(step, with_record_ids=True)
      assert all(np.array_equal(want[k], got[k]) for k in want), (host, step)
  state = json.loads(json.dumps(mine.state_dict()))  # a restarted process of the last host
  again = data.TrainStream.from_config(SEQIO, **kw)
  again.load_state_dict(state)
  assert all(np.array_equal(v, ref.get(15)[k]) for k, v in next(again).items())


def test_mixture_rates_are_the_sampling_rates(registered):
  import seqio
  seqio.MixtureRegistry.remove("medi_t14_skewed")
  rates = [0.0, 0.0, 0.0, 0.0, 5.0, 1.0]  # only stsb (50 records) and twitter (20) can be drawn
  seqio.MixtureRegistry.add("medi_t14_skewed", list(zip(registered, rates)))
  s = data.TrainStream.from_config(dict(SEQIO, mixture_or_task="medi_t14_skewed", dedup_positives=False), VOCAB, 8,
                                   seed=0)
  tasks = [s.sampler.batch(step)[0] for step in range(600)]
  counts = np.bincount(tasks, minlength=6)
  assert counts[:4].sum() == 0 and 0.75 < counts[4] / 600 < 0.92  # 5/6 = 0.83
  assert s.sampler.report()["active_tasks"][registered[4]]["rate"] == pytest.approx(5 / 6)


def test_unknown_name_lists_the_registered_ones(registered):
  with pytest.raises(DataError, match=r"no seqio Task or Mixture 'medi_t41' \(closest: medi_t14.*registered "
                                      r"Mixtures: .*medi_t14.*Tasks: .*medi_t14\.banking77_train_same_intent"):
    seqio_source.load_index("medi_t41", 24, 40, 1, modules="")
  with pytest.raises(DataError, match="cannot import 'no_such_tasks_module'"):
    seqio_source.load_index("medi_t14", 24, 40, 1, modules="no_such_tasks_module")


def test_missing_features_are_named(registered):
  import seqio
  import tensorflow as tf
  from instructor_jax.data import seqio_tasks as tm
  vocab = tm.vocabulary(VOCAB)
  feats = {k: v for k, v in tm.output_features(vocab).items() if k not in ("pos_instr_len", "neg_tokens")}
  source = seqio.FunctionDataSource(lambda split, shuffle_files, seed=None: tf.data.Dataset.range(3).map(
      lambda i: {"query_tokens": tf.ones([3], tf.int32)}), splits=["train"])
  seqio.TaskRegistry.remove("t14_incomplete")
  seqio.TaskRegistry.add("t14_incomplete", source=source, preprocessors=[], output_features=feats)
  with pytest.raises(DataError, match=r"t14_incomplete: missing feature\(s\) pos_instr_len, neg_tokens; "):
    seqio_source.load_index("t14_incomplete", 24, 40, 1, modules="")


def test_tsv_pairs_example_task(tmp_path):
  from tasks import pairs_tsv
  rows = [(f"question {i} about cards?", f"answer {i}: use the app" + " really" * (i % 7)) for i in range(20)]
  path = tmp_path / "pairs.tsv"
  path.write_text("".join(f"{q}\t{p}\n" for q, p in rows))
  qi, pi = "Represent the banking question for retrieving answers: ", "Represent the banking answer: "
  pairs_tsv.register_pairs("t14_pairs", str(path), qi, pi, tokenizer_dir=VOCAB)
  index, rates = seqio_source.load_index("t14_pairs", 16, 20, 0, modules="")
  assert index.task_names == ["t14_pairs"] and index.sizes == [20] and rates == [1.0]
  tq, td = Tokenizer.from_pretrained(VOCAB, 16), Tokenizer.from_pretrained(VOCAB, 20)
  t = index.tasks[0]
  for i, (q, p) in enumerate(rows):
    for side, tok, pair in ((t.query, tq, [qi, q]), (t.pos, td, [pi, p])):
      e = tok.encode([pair])[0]
      assert side.row(i).tolist() == list(e.ids) and side.instr_len[i] == e.instr_len
  s = data.TrainStream.from_config(dict(CFG, source="seqio", mixture_or_task="t14_pairs", seqio_modules="",
                                        num_negatives=0, max_query_length=16, max_doc_length=20), VOCAB, 4, 0)
  b = s.get(3)
  assert b["query_tokens"].shape == (4, 16) and b["neg_tokens"].shape == (4, 0, 20)
  bad = tmp_path / "bad.tsv"
  bad.write_text("q1\tp1\nonly a query\n")
  with pytest.raises(DataError, match=r"bad.tsv:2: expected query<TAB>positive"):
    pairs_tsv.register_pairs("t14_bad", str(bad), qi, pi, tokenizer_dir=VOCAB)


def _train(workdir, env, *overrides):
  helpers.run_train(workdir, "--config.num_train_steps=10", "--config.checkpoint_every_steps=100",
                    "--config.eval.data_dir=", "--config.export.enabled=False", "--config.data.pack=False",
                    "--config.data.max_query_length=32", "--config.data.max_doc_length=32", *overrides,
                    config=helpers.DEMO_CONFIG, env=env)
  return helpers.losses(workdir)


@pytest.mark.slow
def test_ten_demo_steps_give_the_same_losses_from_the_file_and_the_medi_mixture(tmp_path):
  """The issue's bar, padded (one compiled shape): the prepared store's batches equal the file's
  (tests/test_prepared.py), so its losses do too."""
  env = helpers.cli_env(MEDI_PATH=SMALL)
  file_losses = _train(tmp_path / "file", env)
  assert len(file_losses) == 10 and len(set(file_losses)) == 10
  assert _train(tmp_path / "seqio", env, "--config.data.source=seqio", "--config.data.mixture_or_task=medi") == \
      file_losses
