"""seqio registrations for MEDI: one Task per MEDI dataset plus the Mixture ``medi`` (``register_medi``).

Sources: TFDS shards (``medi_tfds.py``) or a MEDI file read directly. Every Task tokenises with
``features.Featurizer`` -- the same function the file source uses -- through ``tf.numpy_function``, truncating to the
``sequence_length`` seqio hands it, and emits ``query_tokens``, ``pos_tokens``, ``neg_tokens`` (+ ``*_instr_len``,
``record_id``, ``pos_key``). The first thing to know: a seqio Mixture interleaves *examples*, but a training batch
must come from one task, so training reads these Tasks through ``seqio_source.py`` (one Task per global batch).
Importing this module registers ``medi`` when ``MEDI_PATH`` or ``MEDI_TFDS_DIR`` is set (``MEDI_TOKENIZER_DIR``,
``MEDI_SAMPLING``, ``MEDI_TEMPERATURE``).
"""
from __future__ import annotations

import functools
import os
import re
from typing import Optional

import numpy as np
import seqio
import tensorflow as tf

from instructor_jax.data import medi
from instructor_jax.data.features import PAD_ID, Featurizer
from instructor_jax.data.tokenization import T5_VOCAB, join_instruction
from instructor_jax.data.sampling import task_rates
from instructor_jax.data.tf_env import hide_gpus_from_tf

hide_gpus_from_tf()  # before TF runs anything: the input pipeline stays on the CPU

DEFAULT_TOKENIZER_DIR = T5_VOCAB
RAW_KEYS = ("task", "record_id", "query_instruction", "query_text", "pos_instruction", "pos_text", "neg_instruction",
            "neg_text")
_records_cache: dict = {}


def vocabulary(tokenizer_dir: str = DEFAULT_TOKENIZER_DIR) -> seqio.SentencePieceVocabulary:
  return seqio.SentencePieceVocabulary(os.path.join(tokenizer_dir, "spiece.model"))


def output_features(vocab: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  ids = lambda rank: seqio.Feature(vocab, add_eos=False, dtype=tf.int32, rank=rank)  # </s> added by the rule
  num = lambda rank, dtype=tf.int32: seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, dtype=dtype,
                                                   rank=rank)
  return {"query_tokens": ids(1), "query_instr_len": num(0), "pos_tokens": ids(1), "pos_instr_len": num(0),
          "neg_tokens": ids(2), "neg_instr_len": num(1), "record_id": num(0, tf.int64), "pos_key": num(0, tf.int64)}


def task_name(prefix: str, task: str) -> str:
  """seqio-safe name ``{prefix}.{task}`` (characters outside ``[\\w.:#]`` become ``_``)."""
  return f"{prefix}." + re.sub(r"[^\w\.\:#]", "_", task)


# -- sources ---------------------------------------------------------------------------------------------------------

def _file_records(path: str, strict: bool, skip_invalid: bool) -> dict[str, list[medi.Record]]:
  key = (os.path.abspath(path), os.path.getmtime(path), strict, skip_invalid)
  if key not in _records_cache:
    by_task: dict[str, list[medi.Record]] = {}
    for r in medi.read_medi(path, strict=strict, skip_invalid=skip_invalid):
      by_task.setdefault(r.task, []).append(r)
    _records_cache.clear()
    _records_cache[key] = by_task
  return _records_cache[key]


def _raw_spec(num_neg: Optional[int] = None):
  s = tf.TensorSpec([], tf.string)
  return {"task": s, "record_id": tf.TensorSpec([], tf.int64), "query_instruction": s, "query_text": s,
          "pos_instruction": s, "pos_text": s, "neg_instruction": tf.TensorSpec([num_neg], tf.string),
          "neg_text": tf.TensorSpec([num_neg], tf.string)}


def _file_dataset(split: str, shuffle_files: bool, seed: Optional[int] = None, *, path: str, task: str,
                  strict: bool, skip_invalid: bool) -> tf.data.Dataset:
  del shuffle_files, seed  # one file; order = source order
  if split != "train":
    raise ValueError(f"MEDI has only a 'train' split, got {split!r}")
  records = _file_records(path, strict, skip_invalid)[task]

  def gen():
    for r in records:
      yield {"task": r.task, "record_id": r.index, "query_instruction": r.query.instruction,
             "query_text": r.query.text, "pos_instruction": r.pos.instruction, "pos_text": r.pos.text,
             "neg_instruction": [n.instruction for n in r.neg], "neg_text": [n.text for n in r.neg]}

  return tf.data.Dataset.from_generator(gen, output_signature=_raw_spec())


# -- preprocessors ---------------------------------------------------------------------------------------------------

def raw_features(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Keeps the raw MEDI fields (drops TFDS extras such as ``line``)."""
  return ds.map(lambda ex: {k: ex[k] for k in RAW_KEYS}, num_parallel_calls=tf.data.AUTOTUNE)


def for_lengths(featurizer: Featurizer, sequence_length) -> Featurizer:
  """``featurizer`` with the lengths seqio passes to preprocessors (``sequence_length``: ``query_tokens``,
  ``pos_tokens``, ``neg_tokens`` as ``Ld`` or ``[N, Ld]``), so a Task registered once serves any config."""
  if not sequence_length or sequence_length.get("query_tokens") is None:
    return featurizer
  neg = sequence_length.get("neg_tokens")
  if isinstance(neg, (list, tuple)):
    n, ld = neg
  else:
    n, ld = featurizer.num_negatives, neg or sequence_length["pos_tokens"]
  return Featurizer(featurizer.doc_tok, int(sequence_length["query_tokens"]), int(ld), int(n))


def tokenize_medi(ds: tf.data.Dataset, featurizer: Featurizer, sequence_length=None) -> tf.data.Dataset:
  """Raw MEDI example -> token features, through ``Featurizer`` (the TrainStream's implementation), truncated to
  seqio's ``sequence_length`` when given (``for_lengths``). ``pos_key`` is the file source's positive key (a stable
  hash of the joined positive text), what ``dedup_positives`` compares."""
  featurizer = for_lengths(featurizer, sequence_length)
  N = featurizer.num_negatives

  def py(qi, qt, pi, pt, ni, nt, rid):
    dec = lambda b: b.decode("utf-8")
    negs = tuple(medi.Pair(dec(i), dec(t)) for i, t in zip(ni, nt))
    rec = medi.Record(int(rid), 0, "", medi.Pair(dec(qi), dec(qt)), medi.Pair(dec(pi), dec(pt)), negs)
    f = featurizer([rec])
    negs = f["neg"][0]
    width = max([len(e.ids) for e in negs], default=0)
    neg_tokens = np.zeros((N, width), np.int32)
    for j, e in enumerate(negs):
      neg_tokens[j, :len(e.ids)] = e.ids
    return (np.asarray(f["query"][0].ids, np.int32), np.int32(f["query"][0].instr_len),
            np.asarray(f["pos"][0].ids, np.int32), np.int32(f["pos"][0].instr_len), neg_tokens,
            np.asarray([e.instr_len for e in negs], np.int32).reshape(N),
            np.int64(medi.stable_hash(join_instruction(rec.pos.instruction, rec.pos.text))))

  def fn(ex):
    out = tf.numpy_function(py, [ex["query_instruction"], ex["query_text"], ex["pos_instruction"], ex["pos_text"],
                                 ex["neg_instruction"], ex["neg_text"], ex["record_id"]],
                            [tf.int32, tf.int32, tf.int32, tf.int32, tf.int32, tf.int32, tf.int64], stateful=False)
    shapes = ([None], [], [None], [], [N, None], [N], [])
    for t, s in zip(out, shapes):
      t.set_shape(s)
    return {"query_tokens": out[0], "query_instr_len": out[1], "pos_tokens": out[2], "pos_instr_len": out[3],
            "neg_tokens": out[4], "neg_instr_len": out[5], "record_id": ex["record_id"], "pos_key": out[6]}

  return ds.map(fn, num_parallel_calls=1, deterministic=True)


# -- feature converter -----------------------------------------------------------------------------------------------

class MediFeatureConverter(seqio.FeatureConverter):
  """Pads task features to fixed lengths (pad id 0): ``task_feature_lengths = feature_lengths(Lq, Ld, N)``."""

  _F = seqio.FeatureConverter.FeatureSpec
  TASK_FEATURES = {"query_tokens": _F(tf.int32, 1), "query_instr_len": _F(tf.int32, 0),
                   "pos_tokens": _F(tf.int32, 1), "pos_instr_len": _F(tf.int32, 0),
                   "neg_tokens": _F(tf.int32, 2, sequence_dim=1), "neg_instr_len": _F(tf.int32, 1),
                   "record_id": _F(tf.int64, 0), "pos_key": _F(tf.int64, 0)}
  MODEL_FEATURES = TASK_FEATURES
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, **kw):
    kw.setdefault("pack", False)
    kw.setdefault("apply_length_check", False)  # lengths are per-axis lists for neg_tokens; padding checks shapes
    if kw["pack"]:
      raise ValueError("MediFeatureConverter does not pack (one example per row)")
    super().__init__(**kw)

  def _convert_features(self, ds, task_feature_lengths):
    lq, ld = task_feature_lengths["query_tokens"], task_feature_lengths["neg_tokens"][-1]

    def pad(ex):
      out = dict(ex)
      out["query_tokens"] = _pad_last(ex["query_tokens"], lq)
      out["pos_tokens"] = _pad_last(ex["pos_tokens"], task_feature_lengths["pos_tokens"])
      out["neg_tokens"] = _pad_last(ex["neg_tokens"], ld)
      return out

    return ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    return dict(task_feature_lengths)


def _pad_last(t, length):
  t = t[..., :length]
  pad = [[0, 0]] * (len(t.shape) - 1) + [[0, length - tf.shape(t)[-1]]]
  out = tf.pad(t, pad, constant_values=PAD_ID)
  return tf.ensure_shape(out, t.shape[:-1].concatenate([length]))


def feature_lengths(max_query_length: int, max_doc_length: int, num_negatives: int) -> dict[str, int]:
  """``task_feature_lengths`` for ``seqio.get_dataset(..., feature_converter=MediFeatureConverter())``."""
  return {"query_tokens": max_query_length, "query_instr_len": None, "pos_tokens": max_doc_length,
          "pos_instr_len": None, "neg_tokens": [num_negatives, max_doc_length], "neg_instr_len": [num_negatives],
          "record_id": None, "pos_key": None}


# -- registration ----------------------------------------------------------------------------------------------------

def register_medi(medi_path: str = "", tfds_data_dir: str = "", tokenizer_dir: str = DEFAULT_TOKENIZER_DIR,
                  max_query_length: int = 512, max_doc_length: int = 512, num_negatives: int = 1,
                  sampling: str = "proportional", temperature: float = 2.0, prefix: str = "medi",
                  strict: bool = False, skip_invalid: bool = False, overwrite: bool = True) -> list[str]:
  """Registers one seqio Task per MEDI task and the Mixture ``prefix``; returns the Task names (sorted by MEDI
  task name, i.e. in ``TrainStream.task_names`` order)."""
  featurizer = Featurizer(tokenizer_dir, max_query_length, max_doc_length, num_negatives)
  vocab = vocabulary(tokenizer_dir)
  features = output_features(vocab)
  preprocessors = [raw_features, functools.partial(tokenize_medi, featurizer=featurizer)]
  if tfds_data_dir:
    from instructor_jax.data import medi_tfds
    builder = medi_tfds.load_builder(tfds_data_dir)
    splits = builder.info.metadata["tasks"]          # split -> task
    sizes = builder.info.metadata["sizes"]           # task -> records
    sources = {t: seqio.TfdsDataSource(tfds_name=f"{medi_tfds.NAME}:{medi_tfds.VERSION}", tfds_data_dir=tfds_data_dir,
                                       splits={"train": s}) for s, t in splits.items()}
  elif medi_path:
    by_task = _file_records(medi_path, strict, skip_invalid)
    sizes = {t: len(r) for t, r in by_task.items()}
    sources = {t: seqio.FunctionDataSource(
        functools.partial(_file_dataset, path=medi_path, task=t, strict=strict, skip_invalid=skip_invalid),
        splits=["train"], num_input_examples={"train": sizes[t]}) for t in by_task}
  else:
    raise ValueError("register_medi needs medi_path or tfds_data_dir")
  names = sorted(sources)
  registered = []
  for t in names:
    name = task_name(prefix, t)
    if overwrite:
      seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=sources[t], preprocessors=list(preprocessors), output_features=features)
    registered.append(name)
  rates = task_rates([sizes[t] for t in names], sampling, temperature)
  if overwrite:
    seqio.MixtureRegistry.remove(prefix)
  seqio.MixtureRegistry.add(prefix, [(n, float(r)) for n, r in zip(registered, rates)])
  return registered


if os.environ.get("MEDI_PATH") or os.environ.get("MEDI_TFDS_DIR"):
  register_medi(medi_path=os.environ.get("MEDI_PATH", ""), tfds_data_dir=os.environ.get("MEDI_TFDS_DIR", ""),
                tokenizer_dir=os.environ.get("MEDI_TOKENIZER_DIR", "") or DEFAULT_TOKENIZER_DIR,
                sampling=os.environ.get("MEDI_SAMPLING", "proportional"),
                temperature=float(os.environ.get("MEDI_TEMPERATURE", "2.0")))
