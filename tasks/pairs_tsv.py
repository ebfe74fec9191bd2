"""Example: your own training data as a seqio Task -- a TSV of ``(query, positive)`` pairs, one instruction per side.

``pairs.tsv``: UTF-8, tab-separated, no header, ``query<TAB>positive[<TAB>negative...]`` (negatives take the
positive's instruction). Register it with ``register_pairs(name, path, query_instruction=..., pos_instruction=...)``
in a module of your own (or set ``PAIRS_TSV``, ``PAIRS_TASK``, ``PAIRS_QUERY_INSTRUCTION``, ``PAIRS_POS_INSTRUCTION``
and name ``tasks.pairs_tsv`` as the module), then train with ``--config.data.source=seqio
--config.data.mixture_or_task=NAME --config.data.seqio_modules=MODULE --config.data.num_negatives=0``.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import seqio
import tensorflow as tf

from instructor_jax.core.errors import DataError
from instructor_jax.data.features import Featurizer
from instructor_jax.data import seqio_tasks as medi_tasks


def read_pairs(path: str) -> list[tuple[str, str, tuple[str, ...]]]:
  """``[(query, positive, negatives)]`` of a TSV file, checked line by line: a line with an empty side or too few
  columns is an error naming ``FILE:LINE``."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such TSV file")
  rows = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      line = line.rstrip("\n").rstrip("\r")
      if not line.strip():
        continue
      cols = line.split("\t")
      if len(cols) < 2 or not all(c.strip() for c in cols):
        raise DataError(f"{path}:{line_no}: expected query<TAB>positive[<TAB>negative...] with no empty column, "
                        f"got {len(cols)} column(s)")
      rows.append((cols[0], cols[1], tuple(cols[2:])))
  if not rows:
    raise DataError(f"{path}: no pairs")
  return rows


def _dataset(split: str, shuffle_files: bool, seed: Optional[int] = None, *, path: str, query_instruction: str,
             pos_instruction: str) -> tf.data.Dataset:
  """The raw MEDI fields of every line (what ``tokenize_medi`` reads); ``record_id`` = the pair's position."""
  del shuffle_files, seed
  if split != "train":
    raise ValueError(f"{path}: only a 'train' split, got {split!r}")
  rows = read_pairs(path)

  def gen():
    for i, (q, p, negs) in enumerate(rows):
      yield {"task": "", "record_id": i, "query_instruction": query_instruction, "query_text": q,
             "pos_instruction": pos_instruction, "pos_text": p, "neg_instruction": [pos_instruction] * len(negs),
             "neg_text": list(negs)}

  return tf.data.Dataset.from_generator(gen, output_signature=medi_tasks._raw_spec())


def register_pairs(name: str, path: str, query_instruction: str, pos_instruction: str,
                   tokenizer_dir: str = medi_tasks.DEFAULT_TOKENIZER_DIR, num_negatives: int = 0,
                   overwrite: bool = True) -> str:
  """Registers the seqio Task ``name`` over the TSV ``path``; returns ``name``. ``num_negatives`` is the default when
  no ``sequence_length`` is given (training passes its own).

  For example, in a module of your own (``my_tasks``)::

    from tasks import pairs_tsv
    pairs_tsv.register_pairs("faq_pairs", "/data/pairs.tsv",
                             query_instruction="Represent the banking question for retrieving answers: ",
                             pos_instruction="Represent the banking answer for retrieval: ")

  and trained on with (in-batch negatives only: ``num_negatives=0`` unless every line has that many negatives)::

    python -m instructor_jax.train --config configs/demo.py --workdir /tmp/faq --config.data.source=seqio \\
        --config.data.mixture_or_task=faq_pairs --config.data.seqio_modules=my_tasks --config.data.num_negatives=0

  The Task uses ``data/seqio_tasks.py``'s tokenising preprocessor (``tokenize_medi``: the encoder's instruction
  rule, truncation to the training lengths, ``pos_key`` for ``dedup_positives``), so it yields exactly the features
  ``instructor_jax/data/seqio_source.py`` trains from. Several such Tasks make a Mixture with
  ``seqio.MixtureRegistry.add(name, [(task, rate), ...])``; training then draws one Task per global batch with those
  rates.
  """
  featurizer = Featurizer(tokenizer_dir, 512, 512, num_negatives)
  source = seqio.FunctionDataSource(
      functools.partial(_dataset, path=os.path.abspath(path), query_instruction=query_instruction,
                        pos_instruction=pos_instruction),
      splits=["train"], num_input_examples={"train": len(read_pairs(path))})
  if overwrite:
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=source,
                         preprocessors=[functools.partial(medi_tasks.tokenize_medi, featurizer=featurizer)],
                         output_features=medi_tasks.output_features(medi_tasks.vocabulary(tokenizer_dir)))
  return name


if os.environ.get("PAIRS_TSV"):
  register_pairs(os.environ.get("PAIRS_TASK", "pairs"), os.environ["PAIRS_TSV"],
                 os.environ.get("PAIRS_QUERY_INSTRUCTION", ""), os.environ.get("PAIRS_POS_INSTRUCTION", ""))
