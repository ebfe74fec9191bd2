"""Local (offline) evaluation data: which task a folder holds, read into an mteb task object.

A ``--data-dir`` is one task folder or a folder of task folders. A folder is recognised by its files (first match
wins; the layouts are ``FORMATS``, printed by ``python -m instructor_jax.eval --help-formats``) and gives one task
(a SICK folder two). ``discover`` only looks at file names; ``LocalTask.build`` reads the files (errors name
``FILE:LINE``). The stand-in tasks (ours) are defined in ``evaluation/tasks.py``; mteb's evaluators score all.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Callable, Sequence

import numpy as np

from instructor_jax.evaluation import readers, tasks
from instructor_jax.evaluation.readers import DataError

# The layouts ``detect`` recognises (printed by ``eval --help-formats``).
FORMATS = """Local (offline) evaluation data: which task a folder holds, read into an mteb task object.

A ``--data-dir`` is one task folder or a folder of task folders. A folder is recognised by its files (first match
wins) and gives one task (a SICK folder two). ``SPLIT`` is ``--split`` (``dev`` also finds ``trial`` files):

=====================  ===========================  ========================================================
layout                 task (MTEB's own, or ours)   files
=====================  ===========================  ========================================================
``task.json``          ``name`` (generic; or MTEB's ``{"type", "name", "mteb_task", "instruction" |
                       ``mteb_task`` with this data) "query_instruction"/"corpus_instruction"}`` + the generic
                                                    files below
STS Benchmark          STSBenchmark (MTEB)          ``sts-SPLIT.csv``: TSV, no header, no quoting: genre, file,
                                                    year, id, score 0-5, s1, s2 [, extra columns ignored]
SICK                   SICK-R (MTEB; ``--split``    ``SICK_train.txt`` + ``SICK_trial.txt`` +
                       test: all 9,927 pairs, as    ``SICK_test_annotated.txt`` (TSV, header ``sentence_A``,
                       MTEB defines it)             ``sentence_B``, ``relatedness_score``)
                       + SICK-R.official            the official file of the split (test: 4,927 pairs)
BEIR                   SciFact (MTEB) for a folder  ``corpus.jsonl`` (``_id``, ``title``, ``text``),
                       named scifact, else generic  ``queries.jsonl`` (``_id``, ``text``), ``qrels/SPLIT.tsv``
                       Retrieval                    (query-id, corpus-id, score; header)
Banking77-style CSV    Banking77Classification      ``train.csv`` + ``SPLIT.csv``, header ``text,category``
                       (MTEB) for a folder named    (or ``text,label``)
                       banking77, else generic
PIT (SemEval-2015)     TwitterPIT2015               ``SPLIT.data`` + ``SPLIT.label`` (``true``/``false``;
                                                    ``----`` debatable, dropped); ``dev.data`` labels from
                                                    the votes ``(yes, no)``: yes >= 3 -> 1, yes <= 1 -> 0
Twitter URL corpus     TwitterURLCorpusTest         ``Twitter_URL_Corpus_SPLIT*.txt``: s1, s2, ``(n,6)``, url;
                                                    n >= 4 -> 1, n <= 1 -> 0, n in {2, 3} dropped
MSRP                   MRPC                         ``msr_paraphrase_SPLIT.txt``: quality, id1, id2, s1, s2
AG News CSV            AGNewsTitlesClustering       ``SPLIT.csv`` (no header: class, title, description) +
                                                    ``classes.txt``; the titles are clustered by class
WikiQA                 WikiQAReranking              ``SPLIT/a.toks``, ``b.toks``, ``id.txt``, ``sim.txt``
TrecQA                 TrecQAReranking              ``SPLIT.xml`` upper-case (``<QApairs>``: ``<question>``,
                                                    ``<positive>``, ``<negative>``; first line each)
generic                by columns (folder name)     ``SPLIT.jsonl`` / ``.tsv`` (header, no quoting) /
                                                    ``.csv`` (header): ``sentence1, sentence2, score`` -> STS;
                                                    ``sentence1, sentence2, label`` (0/1) ->
                                                    PairClassification; ``text, label`` -> Classification
                                                    when ``train.*`` exists, else Clustering; ``query,
                                                    positive, negative`` (lists; jsonl) -> Reranking
=====================  ===========================  ========================================================

The stand-in tasks (ours) are defined in ``evaluation/tasks.py``; every task is scored by mteb's evaluators.
``discover`` only looks at file names; ``LocalTask.build`` reads the files (errors name ``FILE:LINE``).
"""

# Folder names of local copies of MTEB tasks whose layout alone does not name the task.
MTEB_FOLDERS = {"scifact": "SciFact", "banking77": "Banking77Classification"}
SPLIT_FILES = {"test": ["test"], "dev": ["dev", "trial"], "validation": ["dev", "trial"], "train": ["train"]}
SICK_FILES = {"train": "SICK_train.txt", "trial": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
SICK_SPLITS = {"test": "test", "train": "train", "dev": "trial", "validation": "trial", "trial": "trial"}


@dataclasses.dataclass
class LocalTask:
  """One task found in a folder; ``build()`` reads its files into the mteb task object."""
  name: str
  type: str
  folder: str
  split: str
  files: list[str]
  read: Callable[[], dict]           # -> reader columns (``tasks.inject``)
  make: Callable[[], object]         # -> the mteb task object, without data
  instructions: dict | None = None   # task.json's own: {"text"} or {"query", "document"}

  def build(self, max_examples: int = 0):
    """The mteb task with its data; ``max_examples`` > 0 keeps a fixed random subset (``subsample``), and the
    result's dataset revision says so (``-max<N>``)."""
    task, data = self.make(), self.read()
    if max_examples:
      data = subsample(self.type, data, int(max_examples))
    score_range = (task.min_score, task.max_score) if self.type == "STS" and hasattr(task, "min_score") else None
    where = ", ".join(self.files) or self.folder
    readers.check(self.type, data, where + (f" (subsample of {max_examples})" if max_examples else ""), score_range)
    task = tasks.inject(task, self.split, data, self.files, self.folder)
    if max_examples:
      dataset = dict(task.metadata.dataset, revision=f"{task.metadata.dataset['revision']}-max{int(max_examples)}")
      task.metadata = task.metadata.model_copy(update={"dataset": dataset})
    return task


def _keep(n_rows: int, n: int, seed: int) -> list[int]:
  """``n`` of ``range(n_rows)`` drawn with ``seed``, in their original order (all of them when ``n >= n_rows``)."""
  if n >= n_rows:
    return list(range(n_rows))
  return sorted(np.random.RandomState(seed).choice(n_rows, n, replace=False).tolist())


def _rows(columns: dict, keep: Sequence[int]) -> dict:
  return {k: [v[i] for i in keep] for k, v in columns.items()}


def subsample(task_type: str, data: dict, n: int, seed: int = 0) -> dict:
  """At most ``n`` examples of a task's reader columns, a fixed random subset (``seed``), to bound the cost of
  evaluation during training (``config.eval.max_examples``).

  An example is a pair (STS, PairClassification), a text (Clustering; Classification: ``n`` of each split), a
  reranking sample, or a retrieval query: ``n`` queries with their judgements, and a corpus of their relevant
  documents filled up to ``n`` documents with others."""
  if n < 1:
    raise ValueError(f"max_examples must be >= 1, got {n}")
  if task_type == "Classification":
    return {split: _rows(part, _keep(len(part["label"]), n, seed)) for split, part in data.items()}
  if task_type == "Reranking" and "samples" in data:
    samples = data["samples"]
    return dict(data, samples=[samples[i] for i in _keep(len(samples), n, seed)])
  if task_type in ("Retrieval", "Reranking"):
    qids = [q for q in data["queries"] if any(v > 0 for v in data["qrels"].get(q, {}).values())]
    qids = [qids[i] for i in _keep(len(qids), n, seed)]
    relevant = list(dict.fromkeys(d for q in qids for d in data["qrels"][q] if d in data["corpus"]))
    others = [d for d in data["corpus"] if d not in set(relevant)]
    docs = set(relevant) | {others[i] for i in _keep(len(others), max(0, n - len(relevant)), seed)}
    return dict(data, queries={q: data["queries"][q] for q in qids},
                qrels={q: {d: v for d, v in data["qrels"][q].items() if d in docs} for q in qids},
                corpus={d: v for d, v in data["corpus"].items() if d in docs})
  key = "score" if task_type == "STS" else "label"
  return _rows(data, _keep(len(data[key]), n, seed))


def _mteb(name: str) -> Callable[[], object]:
  def make():
    import mteb
    return mteb.get_task(name)
  return make


def _first(folder: str, names: Sequence[str]) -> str | None:
  for n in names:
    p = os.path.join(folder, n)
    if os.path.exists(p):
      return p
  return None


def _split_file(folder: str, split: str) -> str | None:
  return _first(folder, [f"{split}.jsonl", f"{split}.tsv", f"{split}.csv"])


def _guess_type(folder: str, split: str) -> str:
  path = _split_file(folder, split)
  if path is None:
    raise DataError(f"{folder}: no {split}.jsonl / {split}.tsv / {split}.csv to tell the task type from")
  rows = readers.read_table(path)[:1]
  if not rows:
    raise DataError(f"{path}: no rows")
  cols = set(readers._columns(rows[0]))
  if {"query", "positive", "negative"} <= cols:
    return "Reranking"
  if {"sentence1", "sentence2", "score"} <= cols:
    return "STS"
  if {"sentence1", "sentence2", "label"} <= cols:
    return "PairClassification"
  if {"text", "label"} <= cols:
    return "Classification" if _split_file(folder, "train") else "Clustering"
  raise DataError(f"{path}:{rows[0].get('__line__', 1)}: cannot tell the task type from the columns "
                  f"{[k for k in rows[0] if k != '__line__']}; add a task.json with \"type\"")


def _generic(folder: str, task_type: str, split: str) -> tuple[list[str], Callable[[], dict]]:
  """``(files, read)`` of a folder in the generic layout."""
  if task_type == "Retrieval":
    files = [os.path.join(folder, n) for n in ("corpus.jsonl", "queries.jsonl", os.path.join("qrels",
                                                                                             f"{split}.tsv"))]
    return files, lambda: readers.read_beir(folder, split)
  path = _split_file(folder, split)
  if path is None:
    raise DataError(f"{folder}: no {split}.jsonl / {split}.tsv / {split}.csv for a {task_type} task")
  if task_type == "Classification":
    train = _split_file(folder, "train")
    if train is None:
      raise DataError(f"{folder}: a Classification task needs train.jsonl / train.tsv / train.csv")
    return [train, path], lambda: {"train": readers.read_text_label(train), split: readers.read_text_label(path)}
  read = {"STS": readers.read_sts_table, "PairClassification": readers.read_pairs_table,
          "Clustering": readers.read_text_label, "Reranking": readers.read_reranking_jsonl}.get(task_type)
  if read is None:
    raise DataError(f"{folder}: unknown task type {task_type!r} (one of {', '.join(tasks.TASK_TYPES)})")
  return [path], lambda: read(path)


def _manifest(folder: str, split: str) -> LocalTask:
  path = os.path.join(folder, "task.json")
  try:
    with open(path, encoding="utf-8") as f:
      m = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
  if not isinstance(m, dict):
    raise DataError(f"{path}: expected a JSON object")
  mteb_task = m.get("mteb_task") or m.get("mteb_name")
  if mteb_task:
    import mteb
    try:
      task_type = mteb.get_task(mteb_task).metadata.type
    except KeyError:
      raise DataError(f"{path}: \"mteb_task\" {mteb_task!r} is not an MTEB task") from None
    name, make = mteb_task, _mteb(mteb_task)
  else:
    task_type = m.get("type") or _guess_type(folder, split)
    if task_type not in tasks.TASK_TYPES:
      raise DataError(f"{path}: \"type\" must be one of {', '.join(tasks.TASK_TYPES)}, got {task_type!r}")
    name = m.get("name", os.path.basename(folder))
    make = lambda: tasks.generic_task(name, task_type, folder)
  instructions = None
  if "instruction" in m:
    instructions = {"text": m["instruction"]}
  elif "query_instruction" in m or "corpus_instruction" in m:
    instructions = {"query": m.get("query_instruction", ""), "document": m.get("corpus_instruction", "")}
  files, read = _generic(folder, task_type, split)
  return LocalTask(name, task_type, folder, split, files, read, make, instructions)


def detect(folder: str, split: str = "test") -> list[LocalTask]:
  """The tasks in ``folder`` (``FORMATS``); ``[]`` if the folder matches no layout."""
  folder = os.path.normpath(folder)
  base = os.path.basename(folder)
  if os.path.exists(os.path.join(folder, "task.json")):
    return [_manifest(folder, split)]
  names = SPLIT_FILES.get(split, [split])
  stand_in = lambda name: tasks.STAND_INS[name]

  def task(name, type_, files, read, make):
    return LocalTask(name, type_, folder, split, list(files), read, make)

  p = _first(folder, [f"sts-{s}.csv" for s in names])
  if p:
    return [task("STSBenchmark", "STS", [p], lambda: readers.read_stsbenchmark(p), _mteb("STSBenchmark"))]
  sick = {k: os.path.join(folder, v) for k, v in SICK_FILES.items() if os.path.exists(os.path.join(folder, v))}
  if sick:
    found = []
    if split == "test" and len(sick) == len(SICK_FILES):  # MTEB's SICK-R: the whole corpus is its test split
      files = [sick[k] for k in ("train", "trial", "test")]
      found.append(task("SICK-R", "STS", files, lambda: _concat([readers.read_sick(f) for f in files]),
                        _mteb("SICK-R")))
    official = sick.get(SICK_SPLITS.get(split, ""))
    if official:
      found.append(task("SICK-R.official", "STS", [official], lambda: readers.read_sick(official),
                        stand_in("SICK-R.official")))
    if found:
      return found
  if os.path.exists(os.path.join(folder, "corpus.jsonl")) and os.path.exists(os.path.join(folder, "queries.jsonl")):
    files, read = _generic(folder, "Retrieval", split)
    mteb_name = MTEB_FOLDERS.get(base.lower())
    make = _mteb(mteb_name) if mteb_name else (lambda: tasks.generic_task(base, "Retrieval", folder))
    return [task(mteb_name or base, "Retrieval", files, read, make)]
  p = _first(folder, [f"{s}.data" for s in names])
  if p:
    s = os.path.basename(p)[:-len(".data")]
    files = [p] + ([p[:-5] + ".label"] if os.path.exists(p[:-5] + ".label") else [])
    return [task("TwitterPIT2015", "PairClassification", files, lambda: readers.read_pit(folder, s),
                 stand_in("TwitterPIT2015"))]
  urls = sorted(glob.glob(os.path.join(folder, f"Twitter_URL_Corpus_{names[0]}*.txt")))
  if urls:
    return [task("TwitterURLCorpusTest", "PairClassification", urls[:1], lambda: readers.read_twitter_url(urls[0]),
                 stand_in("TwitterURLCorpusTest"))]
  p = _first(folder, [f"msr_paraphrase_{s}.txt" for s in names])
  if p:
    return [task("MRPC", "PairClassification", [p], lambda: readers.read_msrp(p), stand_in("MRPC"))]
  p = _first(folder, [f"{s}.csv" for s in names])
  if p and os.path.exists(os.path.join(folder, "classes.txt")):
    return [task("AGNewsTitlesClustering", "Clustering", [p], lambda: readers.read_agnews(p),
                 stand_in("AGNewsTitlesClustering"))]
  for s in names:
    sub = os.path.join(folder, s)
    if os.path.exists(os.path.join(sub, "a.toks")):
      files = [os.path.join(sub, n) for n in ("a.toks", "b.toks", "id.txt", "sim.txt")]
      return [task("WikiQAReranking", "Reranking", files, lambda: readers.read_wikiqa(sub),
                   stand_in("WikiQAReranking"))]
  p = _first(folder, [f"{s.upper()}.xml" for s in names])
  if p:
    return [task("TrecQAReranking", "Reranking", [p], lambda: readers.read_trecqa(p), stand_in("TrecQAReranking"))]
  if _split_file(folder, split):
    task_type = _guess_type(folder, split)
    mteb_name = MTEB_FOLDERS.get(base.lower())
    make = _mteb(mteb_name) if mteb_name else (lambda: tasks.generic_task(base, task_type, folder))
    files, read = _generic(folder, task_type, split)
    return [task(mteb_name or base, task_type, files, read, make)]
  return []


def _concat(parts: Sequence[dict]) -> dict:
  return {k: [v for p in parts for v in p[k]] for k in parts[0]}


def _other_splits(folder: str, split: str) -> list[str]:
  """The splits ``folder`` does hold when it holds none named ``split``."""
  return [s for s in ("test", "dev", "train") if s != split and detect(folder, s)]


def discover(data_dir: str, split: str = "test", note=None) -> list[LocalTask]:
  """The tasks of ``data_dir`` itself, or of its sub-folders (sorted by folder). Errors if none is found or two
  folders hold a task of the same name (their results would overwrite each other). A sub-folder that holds a task
  but not of ``split`` is left out and said so through ``note``."""
  if not os.path.isdir(data_dir):
    raise DataError(f"{data_dir}: not a folder")
  found = detect(data_dir, split)
  if not found:
    for name in sorted(os.listdir(data_dir)):
      sub = os.path.join(data_dir, name)
      if os.path.isdir(sub) and not name.startswith("."):
        here = detect(sub, split)
        found += here
        if not here and note is not None:
          others = _other_splits(sub, split)
          if others:
            note(f"{name}: left out, it has no {split!r} split (it has {', '.join(others)})")
  if not found:
    raise DataError(f"{data_dir}: no task folder found for split {split!r} (see `python -m instructor_jax.eval "
                    "--help-formats`)")
  seen = {}
  for t in found:
    if t.name in seen:
      raise DataError(f"{t.folder}: task {t.name} is also in {seen[t.name]}; evaluate one of them")
    seen[t.name] = t.folder
  return found


def select(found: Sequence[LocalTask], specs: Sequence[str]) -> list[LocalTask]:
  """The tasks matching any spec: a task name, a task type or a folder name (case-insensitive)."""
  wanted = {s.lower() for s in specs}
  out = [t for t in found if {t.name.lower(), t.type.lower(), os.path.basename(t.folder).lower()} & wanted]
  matched = {k for t in out for k in (t.name.lower(), t.type.lower(), os.path.basename(t.folder).lower())}
  missing = [s for s in specs if s.lower() not in matched]
  if missing:
    raise DataError(f"--tasks {','.join(missing)}: no such local task, type or folder (found: "
                    f"{', '.join(t.name for t in found)})")
  return out
