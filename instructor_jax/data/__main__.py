"""``python -m instructor_jax.data``: training data tools (``preview``, ``prepare``).

    python -m instructor_jax.data preview --medi FILE --global-batch B --steps S [--json]
    python -m instructor_jax.data prepare --config configs/NAME.py --out DIR    # or --medi FILE --out DIR

``preview`` prints, per step, the task and the source record ids of one host's rows (``stream.TrainStream``'s
sampling); ``prepare`` tokenises a MEDI file once into a prepared store (``prepared.py``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from instructor_jax.core import cli
from instructor_jax.core.errors import DataError
from instructor_jax.data import prepared
from instructor_jax.storage import paths
from instructor_jax.data.features import Featurizer, MediIndex
from instructor_jax.data.sampling import SAMPLING, Sampler, host_batch_size
from instructor_jax.data.stream import data_defaults
from instructor_jax.data.tokenization import T5_VOCAB

def _preview(args) -> int:
  if paths.isdir(args.medi):  # a prepared folder: its index only
    index = prepared.PreparedIndex(prepared.local_store(args.medi))
  else:
    index = MediIndex.from_file(args.medi, strict=args.strict, skip_invalid=args.skip_invalid)
  sampler = Sampler(index.sizes, args.global_batch, seed=args.seed, sampling=args.sampling,
                    temperature=args.temperature, small_tasks="drop",
                    dedup_positives=args.dedup_positives, pos_keys=[t.pos_keys for t in index.tasks],
                    task_names=index.task_names)
  if index.report.skipped:
    print(index.report.summary(), file=sys.stderr)
  for name, why in sampler.dropped.items():
    print(f"dropped task {name}: {why}", file=sys.stderr)
  host_batch_size(args.global_batch, args.process_count)
  for step in range(args.start_step, args.start_step + args.steps):
    k, rows = sampler.batch(step)
    ids = index.tasks[k].ids[sampler.host_slice(rows, args.process_index, args.process_count)]
    if args.json:
      print(json.dumps({"step": step, "task": index.task_names[k], "task_index": k,
                        "process_index": args.process_index, "process_count": args.process_count,
                        "record_ids": [int(i) for i in ids]}))
    else:
      print(f"step {step:6d}  task {index.task_names[k]}  records {' '.join(map(str, ids))}")
  return 0


def _load_config(spec: str):
  """``get_config()`` of a config file (``configs/x.py`` or ``configs/x.py:variant``)."""
  import importlib.util
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise DataError(f"--config: no such file: {path}")
  module_spec = importlib.util.spec_from_file_location("_prepare_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _config_tokenizer(config) -> str:
  """The tokenizer folder training with ``config`` uses, without building the model (``state.build_model``)."""
  mc = config.model
  if mc.init_checkpoint:
    return os.path.join(mc.init_checkpoint, "tokenizer")
  if mc.init_from and os.path.isdir(mc.init_from):
    return mc.init_from
  if mc.init_from:
    raise DataError(f"config.model.init_from={mc.init_from!r} is not a local folder: pass its tokenizer folder "
                    f"with --tokenizer")
  return mc.tokenizer_dir or T5_VOCAB


def _prepare(args) -> int:
  if args.data_dir:  # raw text as TFDS shards (tokenised again at every start; seqio's TfdsDataSource reads them)
    from instructor_jax.data import medi_tfds  # first: `tasks` quiets TensorFlow's CUDA probing before TF is imported
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    print(medi_tfds.prepare(args.medi_path, args.data_dir, strict=args.strict, skip_invalid=args.skip_invalid,
                            num_shards=args.num_shards))
    return 0
  if not args.out:
    raise DataError("prepare needs --out DIR (token shards, the default) or --data-dir DIR (TFDS text shards)")
  opts = dict(data_defaults(), tokenizer="")
  if args.config:
    config = _load_config(args.config)
    opts.update({k: v for k, v in config.data.to_dict().items() if k in opts})
    opts["tokenizer"] = _config_tokenizer(config)
  for key in ("medi_path", "tokenizer", "max_query_length", "max_doc_length", "num_negatives",
              "max_invalid_fraction"):
    if getattr(args, key, None) is not None:
      opts[key] = getattr(args, key)
  opts["strict"] = bool(opts["strict"] or args.strict)
  opts["skip_invalid"] = bool(opts["skip_invalid"] or args.skip_invalid)
  if not opts["medi_path"]:
    raise DataError("prepare needs --medi FILE (or a --config whose data.medi_path names one)")
  tokenizer = opts["tokenizer"] or T5_VOCAB
  featurizer = Featurizer(tokenizer, int(opts["max_query_length"]), int(opts["max_doc_length"]),
                          int(opts["num_negatives"]))
  m = prepared.prepare(opts["medi_path"], args.out, featurizer, strict=opts["strict"],
                       skip_invalid=opts["skip_invalid"], max_invalid_fraction=float(opts["max_invalid_fraction"]),
                       shard_mb=args.shard_mb, overwrite=args.overwrite, progress=not args.no_progress,
                       tokenizer_dir=tokenizer)
  print(f"{paths.check(args.out)}: {m['records']} records of {len(m['tasks'])} tasks, {m['tokens']} tokens in "
        f"{len(m['shards'])} shard(s), lengths {m['max_query_length']}/{m['max_doc_length']}, "
        f"{m['num_negatives']} negative(s), {m['prepare_s']} s; train with --config.data.source=prepared "
        f"--config.data.prepared={paths.check(args.out)}", file=sys.stderr)
  return 0


def _main(args) -> int:
  p = argparse.ArgumentParser(prog="python -m instructor_jax.data", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  pv = sub.add_parser("preview", help="print the task and source record ids of this host's rows, per step")
  pv.add_argument("--medi", required=True, help="MEDI file (.json array or .jsonl) or a prepared folder")
  pv.add_argument("--global-batch", type=int, required=True, help="global batch size (queries per step, all hosts)")
  pv.add_argument("--steps", type=int, required=True, help="how many steps to print")
  pv.add_argument("--start-step", type=int, default=0, help="first step (a resumed run starts here)")
  pv.add_argument("--process-count", type=int, default=1, help="hosts sharing each global batch")
  pv.add_argument("--process-index", type=int, default=0, help="which host's rows to print (0-based)")
  pv.add_argument("--seed", type=int, default=0, help="config.seed: the stream is a pure function of (seed, step)")
  pv.add_argument("--sampling", choices=SAMPLING, default=data_defaults()["sampling"],
                  help="how the step's task is drawn (config.data.sampling)")
  pv.add_argument("--temperature", type=float, default=data_defaults()["temperature"],
                  help="task-size temperature for --sampling temperature (config.data.temperature)")
  pv.add_argument("--dedup-positives", action="store_true", help="no positive twice in a batch "
                  "(config.data.dedup_positives)")
  pv.add_argument("--strict", action="store_true", help="instructions must start with 'Represent '")
  pv.add_argument("--skip-invalid", action="store_true", help="skip (and count) invalid records instead of failing")
  pv.add_argument("--json", action="store_true", help="one JSON object per step (JSON lines)")
  pr = sub.add_parser("prepare", help="tokenise a MEDI file once into token shards + index (prepared.py)")
  pr.add_argument("--medi", dest="medi_path", default=None, help="MEDI file (.json / .jsonl)")
  pr.add_argument("--out", default="", help="prepared folder to write (config.data.prepared)")
  pr.add_argument("--config", default="", help="take medi_path, lengths, negatives, validation options and the "
                  "tokenizer from this training config (flags override)")
  pr.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the bundled T5 vocabulary)")
  pr.add_argument("--max-query-length", type=int, default=None, help="query tokens kept (default: the config's, or 512)")
  pr.add_argument("--max-doc-length", type=int, default=None, help="document tokens kept (default: the config's, or 512)")
  pr.add_argument("--num-negatives", type=int, default=None, help="hard negatives kept per record (default: the config's, "
                  "or 1)")
  pr.add_argument("--max-invalid-fraction", type=float, default=None, help="with --skip-invalid: fail when more than "
                  "this fraction of records is invalid (default 0.01)")
  pr.add_argument("--shard-mb", type=float, default=prepared.DEFAULT_SHARD_MB, help="about this many MB per shard")
  pr.add_argument("--overwrite", action="store_true", help="replace an existing prepared folder (atomically)")
  pr.add_argument("--no-progress", action="store_true", help="no progress bar")
  pr.add_argument("--data-dir", default="", help="instead: raw text as TFDS shards (config.data.tfds_data_dir)")
  pr.add_argument("--num-shards", type=int, default=0, help="--data-dir: 0 = about 64 MB per shard")
  pr.add_argument("--strict", action="store_true", help="instructions must start with 'Represent '")
  pr.add_argument("--skip-invalid", action="store_true", help="skip (and count) invalid records instead of failing")
  args = p.parse_args(args)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr)
  if args.cmd == "preview":
    if args.steps < 0 or args.start_step < 0:
      raise DataError("--steps and --start-step must be >= 0")
    return _preview(args)
  return _prepare(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
