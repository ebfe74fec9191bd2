"""TFDS builder ``medi``: a MEDI file -> sharded TFRecords, one split per MEDI task (``data prepare --data-dir``).

Validation is ``medi.read_medi`` (its report is kept in ``metadata['report']`` and ``prepare_report.json``); records
keep their ``record_id``, so batches from the shards equal batches from the file (``read_prepared``). TFDS writes
into ``<version>.incomplete-*`` and renames when complete, so an interrupted run is never read as prepared. Splits
are file-safe task names; ``metadata['tasks']`` maps split -> task.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from instructor_jax.storage import files
from instructor_jax.data import medi
from instructor_jax.data.tf_env import hide_gpus_from_tf

hide_gpus_from_tf()  # before TF runs anything: the input pipeline stays on the CPU

NAME = "medi"
VERSION = "1.0.0"


def split_names(tasks) -> dict[str, str]:
  """task name -> TFDS split name (file-safe, unique)."""
  out, used = {}, set()
  for task in sorted(tasks):
    s = re.sub(r"[^A-Za-z0-9_]", "_", task).strip("_") or "task"
    if s in used:
      s = f"{s}_{hashlib.sha1(task.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    if s in used:  # pragma: no cover - sha1 prefix collision
      raise ValueError(f"cannot make a unique split name for task {task!r}")
    used.add(s)
    out[task] = s
  return out


def _find_manual_file(manual_dir: str, medi_file: Optional[str]) -> str:
  if medi_file:
    path = medi_file if os.path.isabs(medi_file) else os.path.join(manual_dir, medi_file)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"MEDI file {path} not found (manual_dir={manual_dir})")
    return path
  cands = sorted(f for f in os.listdir(manual_dir) if f.endswith((".json", ".jsonl")))
  if len(cands) != 1:
    raise ValueError(f"manual_dir {manual_dir} must hold exactly one MEDI .json/.jsonl file (or pass medi_file=); "
                     f"found {cands}")
  return os.path.join(manual_dir, cands[0])


class Medi(tfds.core.GeneratorBasedBuilder):
  """MEDI (INSTRUCTOR's multitask embedding data) from a local file, one split per task."""

  VERSION = tfds.core.Version(VERSION)
  # TFDS derives this from the module through `importlib_resources`, which tensorflow-datasets 4.9.10 imports but
  # does not install on Python 3.11; the builder downloads nothing, so its own file is all TFDS needs here.
  code_path = epath.Path(__file__)
  RELEASE_NOTES = {str(VERSION): "One split per MEDI task; record ids and lines of the source kept."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the MEDI file (medi-data.json from the INSTRUCTOR release, or any MEDI-format "
                                  ".json array / .jsonl) alone in manual_dir, or pass medi_file=.")

  def __init__(self, *, medi_file: Optional[str] = None, strict: bool = False, skip_invalid: bool = False, **kw):
    self._medi_file, self._strict, self._skip_invalid = medi_file, strict, skip_invalid
    self._report: Optional[medi.Report] = None
    super().__init__(**kw)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "task": text, "record_id": tfds.features.Scalar(np.int64), "line": tfds.features.Scalar(np.int64),
            "query_instruction": text, "query_text": text, "pos_instruction": text, "pos_text": text,
            "neg_instruction": tfds.features.Sequence(text), "neg_text": tfds.features.Sequence(text)}),
        metadata=tfds.core.MetadataDict(),
        homepage="https://github.com/xlang-ai/instructor-embedding",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    path = _find_manual_file(os.fspath(dl_manager.manual_dir), self._medi_file)
    # Pass 1: validate and bucket records per task into temporary JSON lines (one pass over a 3 GB file).
    self._tmp = tempfile.mkdtemp(prefix="medi-tfds-")
    report = medi.Report(path)
    files, counts = {}, collections.Counter()
    try:
      for rec in medi.read_medi(path, strict=self._strict, skip_invalid=self._skip_invalid, report=report):
        if rec.task not in files:
          files[rec.task] = open(os.path.join(self._tmp, f"{len(files)}.jsonl"), "w", encoding="utf-8")
        out = rec.to_json()
        out["_index"], out["_line"] = rec.index, rec.line
        files[rec.task].write(json.dumps(out, ensure_ascii=False) + "\n")
        counts[rec.task] += 1
    finally:
      for f in files.values():
        f.close()
    if not files:
      raise ValueError(f"{path}: no valid MEDI records ({report.summary()})")
    self._report = report
    names = split_names(files)
    self.info.metadata["tasks"] = {names[t]: t for t in sorted(files)}
    self.info.metadata["sizes"] = {t: counts[t] for t in sorted(files)}
    self.info.metadata["report"] = report.to_dict()
    self.info.metadata["options"] = {"strict": self._strict, "skip_invalid": self._skip_invalid,
                                     "source": os.path.basename(path)}
    return {names[t]: self._generate_examples(f.name) for t, f in sorted(files.items())}

  def _generate_examples(self, path: str):
    with open(path, encoding="utf-8") as f:
      for line in f:
        r = json.loads(line)
        negs = r["neg"] if r["neg"] and isinstance(r["neg"][0], list) else [r["neg"]]
        yield r["_index"], {
            "task": r["task_name"], "record_id": r["_index"], "line": r["_line"],
            "query_instruction": r["query"][0], "query_text": r["query"][1],
            "pos_instruction": r["pos"][0], "pos_text": r["pos"][1],
            "neg_instruction": [n[0] for n in negs], "neg_text": [n[1] for n in negs]}

  # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared" for every build; this one
  # downloads nothing (the MEDI file is a manual input), so say what it does instead.
  def _log_download_bytes(self) -> None:
    print(f"converting {self._medi_file or 'the MEDI file'} into TFRecord shards under {self.data_dir}", flush=True)

  def _log_download_done(self) -> None:
    pass

  def cleanup(self) -> None:
    tmp = getattr(self, "_tmp", None)
    if tmp and os.path.isdir(tmp):
      shutil.rmtree(tmp)


def prepare(medi_path: str, data_dir: str, strict: bool = False, skip_invalid: bool = False,
            num_shards: int = 0) -> str:
  """Converts ``medi_path`` into TFDS shards under ``data_dir``; returns the dataset folder.

  ``num_shards``: shards per split; 0 lets TFDS choose (shards of roughly 64 MB to 1 GB).
  """
  medi_path = os.path.abspath(medi_path)
  builder = Medi(data_dir=data_dir, medi_file=medi_path, strict=strict, skip_invalid=skip_invalid)
  if builder.is_prepared():
    raise ValueError(f"{builder.data_dir} already holds a prepared MEDI dataset; remove it to rebuild")
  kw = {"num_shards": int(num_shards)} if num_shards else {}
  try:
    config = tfds.download.DownloadConfig(manual_dir=os.path.dirname(medi_path), **kw)
    builder.download_and_prepare(download_config=config)
  finally:
    builder.cleanup()
  report = builder.info.metadata.get("report", {})
  files.write_json(os.path.join(builder.data_dir, "prepare_report.json"), report, indent=1)
  return os.fspath(builder.data_dir)


def load_builder(data_dir: str) -> Medi:
  builder = Medi(data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(f"no prepared MEDI dataset under {data_dir} (expected {builder.data_dir}; run "
                            "`python -m instructor_jax.data prepare --medi FILE --data-dir DIR`; an interrupted "
                            "preparation leaves only an *.incomplete* folder, which is never read)")
  return builder


def read_prepared(data_dir: str, strict: bool = False, report: Optional[medi.Report] = None
                  ) -> Iterator[medi.Record]:
  """Yields the prepared records as ``medi.Record``, task by task, each task in record-id order."""
  builder = load_builder(data_dir)
  tasks = builder.info.metadata["tasks"]
  if report is not None:
    saved = builder.info.metadata.get("report", {})
    report.read, report.valid = saved.get("records_read", 0), saved.get("valid", 0)
    report.counts.update(saved.get("skipped_by_class", {}))
  for split in sorted(tasks, key=lambda s: tasks[s]):
    rows = []
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
      rows.append(ex)
    rows.sort(key=lambda ex: int(ex["record_id"]))
    for ex in rows:
      d = lambda k: ex[k].decode("utf-8")
      obj = {"query": [d("query_instruction"), d("query_text")], "pos": [d("pos_instruction"), d("pos_text")],
             "neg": [[i.decode("utf-8"), t.decode("utf-8")] for i, t in zip(ex["neg_instruction"], ex["neg_text"])],
             "task_name": d("task")}
      try:
        task, q, p, n = medi._validate(obj, strict)  # re-check: `strict` may be stricter than at preparation
      except medi._Bad as e:
        raise medi.MediError(data_dir, int(ex["line"]), int(ex["record_id"]), e.cls, e.message) from None
      yield medi.Record(int(ex["record_id"]), int(ex["line"]), task, q, p, n)
