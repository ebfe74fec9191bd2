"""Local (offline) evaluation tasks: readers for the documented folder layouts and MTEB-protocol scoring.

A ``--data-dir`` is either one task folder or a folder of task folders. A task folder is recognised by its files
(first match wins):

=====================  ==================  ===================================================================
layout                 task type           files
=====================  ==================  ===================================================================
``task.json``          any (``type``)      manifest ``{"type": "STS"|"Classification"|"Clustering"|
                                           "PairClassification"|"Reranking"|"Retrieval", "name": ...,
                                           "instruction" | "query_instruction"/"corpus_instruction",
                                           "mteb_name"}`` plus the generic files below
STS Benchmark          STS                 ``sts-{test,dev,train}.csv``: TSV without header and without
                                           quoting (split on tab): genre, file, year, id, score 0-5, s1, s2
                                           [, extra columns ignored]
SICK                   STS (SICK-R)        ``SICK_test_annotated.txt`` / ``SICK_train.txt`` / ``SICK_trial.txt``
                                           (TSV with header pair_ID, sentence_A, sentence_B,
                                           relatedness_score, ...)
BEIR                   Retrieval           ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
                                           (``_id``, ``text``), ``qrels/{split}.tsv`` (query-id, corpus-id,
                                           score; header)
Banking77-style CSV    Classification      ``train.csv`` + ``test.csv`` with header ``text,category`` (or
                                           ``text,label``)
PIT (SemEval-2015)     PairClassification  ``test.data`` + ``test.label`` (``true``/``false``; ``----``
                                           debatable pairs are dropped); ``dev.data`` labels from the vote
                                           column ``(yes, no)``: yes >= 3 -> 1, yes <= 1 -> 0, else dropped
Twitter URL corpus     PairClassification  ``Twitter_URL_Corpus_test*.txt``: s1, s2, ``(n,6)``, url; n >= 4 ->
                                           1, n <= 1 -> 0, n in {2, 3} dropped
MSRP                   PairClassification  ``msr_paraphrase_{test,train}.txt``: quality, id1, id2, s1, s2 (a
                                           header line and a BOM are tolerated)
AG News CSV            Clustering          ``test.csv`` without header: class, title, description (quoted CSV);
                                           the titles are clustered by class
WikiQA                 Reranking           ``{split}/a.toks``, ``b.toks``, ``id.txt``, ``sim.txt`` (aligned
                                           lines); questions without a positive answer are dropped
TrecQA                 Reranking           ``TEST.xml`` / ``DEV.xml`` (``<QApairs>`` with ``<question>``,
                                           ``<positive>``, ``<negative>``; first line of each is the text)
generic                by columns          ``{split}.jsonl`` / ``.tsv`` (header, no quoting) / ``.csv``
                                           (header): ``sentence1, sentence2, score`` -> STS;
                                           ``sentence1, sentence2, label`` (0/1) -> PairClassification;
                                           ``text, label`` -> Classification when ``train.*`` exists, else
                                           Clustering; ``query, positive, negative`` (lists; jsonl) ->
                                           Reranking
=====================  ==================  ===================================================================

Scores follow MTEB's protocols and metric names (fractions in [0, 1]):
STS: Spearman of cosine similarity (``cosine_spearman``); Retrieval: nDCG@10 with pytrec_eval
(``ndcg_at_10``); Classification: logistic regression (``max_iter=100``) on ``samples_per_label=8`` undersampled
training examples per label, ``n_experiments=10``, mean accuracy (MTEB's undersampling with seed 42);
Clustering: MiniBatchKMeans (batch 500, ``n_init="auto"``, seed 42) V-measure; PairClassification: average
precision of the best similarity (``max_ap``; cosine, dot, euclidean, manhattan); Reranking: mean average precision
over each query's candidates (``map``) and MRR@10.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import json
import os
import re
from typing import Callable, Sequence

import numpy as np

TASK_TYPES = ("STS", "Retrieval", "Classification", "Clustering", "PairClassification", "Reranking")
MAIN_SCORE = {"STS": "cosine_spearman", "Retrieval": "ndcg_at_10", "Classification": "accuracy",
              "Clustering": "v_measure", "PairClassification": "max_ap", "Reranking": "map"}
SEED = 42

# Folder names of the known real sets -> the MTEB task whose INSTRUCTOR instruction they use.
ALIASES = {"stsbenchmark": "STSBenchmark", "sts-b": "STSBenchmark", "stsb": "STSBenchmark", "sick": "SICK-R",
           "sick-r": "SICK-R", "banking77": "Banking77Classification", "twitter-semeval2015": "TwitterSemEval2015",
           "twittersemeval2015": "TwitterSemEval2015", "twitter-url": "TwitterURLCorpus",
           "twitterurlcorpus": "TwitterURLCorpus", "scifact": "SciFact"}


class DataError(ValueError):
  """Unreadable task data; the message names the file (and line)."""


@dataclasses.dataclass
class LocalTask:
  name: str
  type: str
  folder: str
  split: str
  load: Callable[[], dict]          # -> the task's data (see the readers)
  mteb_name: str | None = None      # name used to look up the instruction table
  instructions: dict | None = None  # from task.json: {"instruction"} or {"query", "corpus"}
  options: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Low-level readers (clear errors: file and line)


def _open(path: str):
  try:
    return open(path, encoding="utf-8-sig", newline="")
  except OSError as e:
    raise DataError(f"{path}: cannot open: {e}") from e


def _lines(path: str):
  """Yields ``(line_no, line without newline)``; a decoding error names the line."""
  with open(path, "rb") as f:
    for no, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(f"{path}:{no}: not UTF-8 ({e})") from e
      if no == 1:
        line = line.lstrip("\ufeff")
      yield no, line.rstrip("\r\n")


def _float(value: str, path: str, no: int, what: str) -> float:
  try:
    x = float(value)
  except ValueError:
    raise DataError(f"{path}:{no}: {what} {value!r} is not a number") from None
  if not np.isfinite(x):
    raise DataError(f"{path}:{no}: {what} {value!r} is not finite")
  return x


def read_jsonl(path: str) -> list[dict]:
  out = []
  for no, line in _lines(path):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{no}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
      raise DataError(f"{path}:{no}: expected a JSON object, got {type(obj).__name__}")
    obj["__line__"] = no
    out.append(obj)
  return out


def read_table(path: str) -> list[dict]:
  """``.jsonl``, ``.tsv`` (header, split on tab, no quoting) or ``.csv`` (header, quoted) as a list of dicts with a
  ``__line__`` key."""
  if path.endswith(".jsonl"):
    return read_jsonl(path)
  rows = []
  if path.endswith(".tsv"):
    it = _lines(path)
    try:
      _, header = next(it)
    except StopIteration:
      raise DataError(f"{path}:1: empty file (expected a header line)") from None
    cols = [c.strip() for c in header.split("\t")]
    for no, line in it:
      if not line.strip():
        continue
      vals = line.split("\t")
      if len(vals) < len(cols):
        raise DataError(f"{path}:{no}: expected {len(cols)} tab-separated columns ({', '.join(cols)}), "
                        f"found {len(vals)}")
      rows.append(dict(zip(cols, vals), __line__=no))
    return rows
  with _open(path) as f:
    reader = csv.reader(f)
    try:
      cols = [c.strip() for c in next(reader)]
    except StopIteration:
      raise DataError(f"{path}:1: empty file (expected a header line)") from None
    except csv.Error as e:
      raise DataError(f"{path}:1: {e}") from None
    while True:
      try:
        vals = next(reader)
      except StopIteration:
        break
      except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None
      if not vals:
        continue
      if len(vals) != len(cols):
        raise DataError(f"{path}:{reader.line_num}: expected {len(cols)} columns ({', '.join(cols)}), "
                        f"found {len(vals)}")
      rows.append(dict(zip(cols, vals), __line__=reader.line_num))
  return rows


COLUMN_ALIASES = {"text": ("text", "sentence"), "label": ("label", "category", "class", "labels"),
                  "sentence1": ("sentence1", "s1", "text1", "sentence_a", "sentence_A"),
                  "sentence2": ("sentence2", "s2", "text2", "sentence_b", "sentence_B"),
                  "score": ("score", "relatedness_score", "similarity", "gold_score"),
                  "query": ("query",), "positive": ("positive", "positives"), "negative": ("negative", "negatives")}


def _columns(row: dict) -> dict[str, str]:
  """Canonical column name -> the name used in this file."""
  out = {}
  for canon, names in COLUMN_ALIASES.items():
    for n in names:
      if n in row:
        out[canon] = n
        break
  return out


def _get(row: dict, cols: dict, key: str, path: str):
  if key not in cols:
    raise DataError(f"{path}:{row.get('__line__', '?')}: missing column {key!r} "
                    f"(accepted names: {', '.join(COLUMN_ALIASES[key])})")
  v = row.get(cols[key])
  if v is None:
    raise DataError(f"{path}:{row.get('__line__', '?')}: missing value for {cols[key]!r}")
  return v


def _text(v, path, no, what) -> str:
  if not isinstance(v, str):
    raise DataError(f"{path}:{no}: {what} must be a string, got {type(v).__name__}")
  return v


# ----------------------------------------------------------------------------------------------------------------
# Task data readers: each returns a dict with the data the scorer of its type needs.


def read_stsbenchmark(path: str) -> dict:
  s1, s2, scores = [], [], []
  for no, line in _lines(path):
    if not line.strip():
      continue
    cols = line.split("\t")
    if len(cols) < 7:
      raise DataError(f"{path}:{no}: expected at least 7 tab-separated columns (genre, file, year, id, score, s1, "
                      f"s2), found {len(cols)}")
    scores.append(_float(cols[4], path, no, "score"))
    s1.append(cols[5])
    s2.append(cols[6])
  if not scores:
    raise DataError(f"{path}: no pairs")
  return {"sentence1": s1, "sentence2": s2, "score": scores}


def read_sts_table(path: str) -> dict:
  rows = read_table(path)
  if not rows:
    raise DataError(f"{path}: no pairs")
  cols = _columns(rows[0])
  out = {"sentence1": [], "sentence2": [], "score": []}
  for r in rows:
    no = r["__line__"]
    out["sentence1"].append(_text(_get(r, cols, "sentence1", path), path, no, "sentence1"))
    out["sentence2"].append(_text(_get(r, cols, "sentence2", path), path, no, "sentence2"))
    out["score"].append(_float(_get(r, cols, "score", path), path, no, "score"))
  return out


def read_text_label(path: str) -> dict:
  rows = read_table(path)
  if not rows:
    raise DataError(f"{path}: no rows")
  cols = _columns(rows[0])
  texts, labels = [], []
  for r in rows:
    no = r["__line__"]
    texts.append(_text(_get(r, cols, "text", path), path, no, "text"))
    lab = _get(r, cols, "label", path)
    if not isinstance(lab, (str, int)):
      raise DataError(f"{path}:{no}: label must be a string or an integer, got {lab!r}")
    labels.append(str(lab))
  return {"text": texts, "label": labels}


def read_pairs_table(path: str) -> dict:
  rows = read_table(path)
  if not rows:
    raise DataError(f"{path}: no pairs")
  cols = _columns(rows[0])
  out = {"sentence1": [], "sentence2": [], "label": []}
  for r in rows:
    no = r["__line__"]
    out["sentence1"].append(_text(_get(r, cols, "sentence1", path), path, no, "sentence1"))
    out["sentence2"].append(_text(_get(r, cols, "sentence2", path), path, no, "sentence2"))
    out["label"].append(_binary(_get(r, cols, "label", path), path, no))
  return out


def _binary(v, path, no) -> int:
  s = str(v).strip().lower()
  if s in ("1", "true", "1.0"):
    return 1
  if s in ("0", "false", "0.0"):
    return 0
  raise DataError(f"{path}:{no}: label {v!r} is not 0/1")


def read_reranking_jsonl(path: str) -> dict:
  samples = []
  for r in read_jsonl(path):
    no = r["__line__"]
    cols = _columns(r)
    q = _text(_get(r, cols, "query", path), path, no, "query")
    pos, neg = _get(r, cols, "positive", path), _get(r, cols, "negative", path)
    for what, v in (("positive", pos), ("negative", neg)):
      if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise DataError(f"{path}:{no}: {what} must be a list of strings")
    samples.append({"query": q, "positive": pos, "negative": neg})
  return {"samples": samples}


def _read_sick(path: str) -> dict:
  it = _lines(path)
  _, header = next(it, (1, ""))
  cols = header.split("\t")
  try:
    ia, ib, isc = cols.index("sentence_A"), cols.index("sentence_B"), cols.index("relatedness_score")
  except ValueError:
    raise DataError(f"{path}:1: expected a header with sentence_A, sentence_B, relatedness_score") from None
  out = {"sentence1": [], "sentence2": [], "score": []}
  for no, line in it:
    if not line.strip():
      continue
    v = line.split("\t")
    if len(v) <= max(ia, ib, isc):
      raise DataError(f"{path}:{no}: expected {len(cols)} tab-separated columns, found {len(v)}")
    out["sentence1"].append(v[ia])
    out["sentence2"].append(v[ib])
    out["score"].append(_float(v[isc], path, no, "relatedness_score"))
  return out


def read_beir(folder: str, split: str) -> dict:
  corpus_path, queries_path = os.path.join(folder, "corpus.jsonl"), os.path.join(folder, "queries.jsonl")
  qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
  if not os.path.exists(qrels_path):
    raise DataError(f"{qrels_path}: not found (BEIR layout needs qrels/{split}.tsv)")
  qrels: dict[str, dict[str, int]] = collections.defaultdict(dict)
  for no, line in _lines(qrels_path):
    if not line.strip():
      continue
    v = line.split("\t")
    if no == 1 and not re.fullmatch(r"-?\d+", v[-1].strip()):
      continue  # header
    if len(v) == 4:  # TREC style: qid, 0, did, score
      v = [v[0], v[2], v[3]]
    if len(v) != 3:
      raise DataError(f"{qrels_path}:{no}: expected query-id, corpus-id, score (tab-separated), found {len(v)} "
                      "columns")
    qrels[v[0]][v[1]] = int(_float(v[2], qrels_path, no, "score"))
  corpus = {}
  for r in read_jsonl(corpus_path):
    if "_id" not in r:
      raise DataError(f"{corpus_path}:{r['__line__']}: missing '_id'")
    corpus[str(r["_id"])] = ((r.get("title") or "") + " " + _text(r.get("text", ""), corpus_path, r["__line__"],
                                                                   "text")).strip()
  queries = {}
  for r in read_jsonl(queries_path):
    if "_id" not in r or "text" not in r:
      raise DataError(f"{queries_path}:{r['__line__']}: needs '_id' and 'text'")
    queries[str(r["_id"])] = _text(r["text"], queries_path, r["__line__"], "text")
  missing = [q for q in qrels if q not in queries]
  if missing:
    raise DataError(f"{qrels_path}: query ids {missing[:5]} are not in queries.jsonl")
  queries = {q: queries[q] for q in qrels}
  return {"corpus": corpus, "queries": queries, "qrels": dict(qrels)}


def read_pit(folder: str, split: str) -> dict:
  data_path = os.path.join(folder, f"{split}.data")
  label_path = os.path.join(folder, f"{split}.label")
  labels = None
  if os.path.exists(label_path):
    labels = []
    for no, line in _lines(label_path):
      labels.append(line.split("\t")[0].strip())
  out = {"sentence1": [], "sentence2": [], "label": []}
  for i, (no, line) in enumerate(_lines(data_path)):
    v = line.split("\t")
    if len(v) < 5:
      raise DataError(f"{data_path}:{no}: expected at least 5 tab-separated columns (topic id, topic, sent1, "
                      f"sent2, label), found {len(v)}")
    if labels is not None:
      if i >= len(labels):
        raise DataError(f"{label_path}: fewer lines ({len(labels)}) than {data_path}")
      lab = labels[i]
      if lab == "----":
        continue
      if lab not in ("true", "false"):
        raise DataError(f"{label_path}:{i + 1}: expected true, false or ----, found {lab!r}")
      y = int(lab == "true")
    else:
      m = re.fullmatch(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)", v[4].strip())
      if not m:
        raise DataError(f"{data_path}:{no}: label column {v[4]!r} is not '(yes, no)'")
      yes = int(m.group(1))
      if yes == 2:
        continue
      y = int(yes >= 3)
    out["sentence1"].append(v[2])
    out["sentence2"].append(v[3])
    out["label"].append(y)
  return out


def read_twitter_url(path: str) -> dict:
  out = {"sentence1": [], "sentence2": [], "label": []}
  for no, line in _lines(path):
    if not line.strip():
      continue
    v = line.split("\t")
    if len(v) < 3:
      raise DataError(f"{path}:{no}: expected sentence1, sentence2, (n,6)[, url], found {len(v)} columns")
    m = re.fullmatch(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)", v[2].strip())
    if not m:
      raise DataError(f"{path}:{no}: vote column {v[2]!r} is not '(n,6)'")
    n = int(m.group(1))
    if n in (2, 3):
      continue
    out["sentence1"].append(v[0])
    out["sentence2"].append(v[1])
    out["label"].append(int(n >= 4))
  return out


def read_msrp(path: str) -> dict:
  out = {"sentence1": [], "sentence2": [], "label": []}
  for no, line in _lines(path):
    if not line.strip():
      continue
    v = line.split("\t")
    if no == 1 and v[0].strip().lower().startswith("quality"):
      continue
    if len(v) != 5:
      raise DataError(f"{path}:{no}: expected 5 tab-separated columns (quality, id1, id2, s1, s2), found {len(v)}")
    out["label"].append(_binary(v[0], path, no))
    out["sentence1"].append(v[3])
    out["sentence2"].append(v[4])
  return out


def read_agnews(path: str) -> dict:
  texts, labels = [], []
  with _open(path) as f:
    reader = csv.reader(f)
    while True:
      try:
        v = next(reader)
      except StopIteration:
        break
      except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None
      if not v:
        continue
      if len(v) < 2:
        raise DataError(f"{path}:{reader.line_num}: expected class, title, description")
      labels.append(v[0])
      texts.append(v[1])
  return {"text": texts, "label": labels}


def read_wikiqa(folder: str) -> dict:
  files = {n: os.path.join(folder, f"{n}.txt" if n in ("id", "sim") else f"{n}.toks") for n in ("a", "b", "id", "sim")}
  cols = {}
  for n, p in files.items():
    if not os.path.exists(p):
      raise DataError(f"{p}: not found (WikiQA layout: a.toks, b.toks, id.txt, sim.txt)")
    cols[n] = [line for _, line in _lines(p)]
  lengths = {n: len(v) for n, v in cols.items()}
  if len(set(lengths.values())) != 1:
    raise DataError(f"{folder}: a.toks, b.toks, id.txt and sim.txt must have the same number of lines, got {lengths}")
  groups: dict[str, dict] = {}
  for i in range(lengths["a"]):
    g = groups.setdefault(cols["id"][i].strip(), {"query": cols["a"][i], "positive": [], "negative": []})
    s = cols["sim"][i].strip()
    if s not in ("0", "1"):
      raise DataError(f"{files['sim']}:{i + 1}: expected 0 or 1, found {s!r}")
    g["positive" if s == "1" else "negative"].append(cols["b"][i])
  return {"samples": list(groups.values())}


def read_trecqa(path: str) -> dict:
  samples, cur, section, first = [], None, None, False
  for no, line in _lines(path):
    s = line.strip()
    if s.startswith("<QApairs"):
      cur = {"query": None, "positive": [], "negative": []}
    elif s == "</QApairs>":
      if cur is None or cur["query"] is None:
        raise DataError(f"{path}:{no}: </QApairs> without a <question>")
      samples.append(cur)
      cur = None
    elif s in ("<question>", "<positive>", "<negative>"):
      if cur is None:
        raise DataError(f"{path}:{no}: {s} outside <QApairs>")
      section, first = s[1:-1], True
    elif s in ("</question>", "</positive>", "</negative>"):
      section = None
    elif section is not None and first:
      text = " ".join(line.split("\t")).strip()
      if section == "question":
        cur["query"] = text
      else:
        cur[section].append(text)
      first = False
  if cur is not None:
    raise DataError(f"{path}: unterminated <QApairs> at end of file")
  return {"samples": samples}


# ----------------------------------------------------------------------------------------------------------------
# Detection


def _first(folder: str, names: Sequence[str]) -> str | None:
  for n in names:
    p = os.path.join(folder, n)
    if os.path.exists(p):
      return p
  return None


def _split_file(folder: str, split: str) -> str | None:
  return _first(folder, [f"{split}.jsonl", f"{split}.tsv", f"{split}.csv"])


def _guess_type(folder: str, split: str) -> str | None:
  path = _split_file(folder, split)
  if path is None:
    return None
  rows = read_jsonl(path)[:1] if path.endswith(".jsonl") else read_table(path)[:1]
  if not rows:
    raise DataError(f"{path}: no rows")
  cols = _columns(rows[0])
  if {"query", "positive", "negative"} <= set(cols):
    return "Reranking"
  if {"sentence1", "sentence2", "score"} <= set(cols):
    return "STS"
  if {"sentence1", "sentence2", "label"} <= set(cols):
    return "PairClassification"
  if {"text", "label"} <= set(cols):
    return "Classification" if _split_file(folder, "train") else "Clustering"
  raise DataError(f"{path}:{rows[0].get('__line__', 1)}: cannot tell the task type from the columns "
                  f"{[k for k in rows[0] if k != '__line__']}; add a task.json with \"type\"")


def _generic_loader(folder: str, type_: str, split: str) -> Callable[[], dict]:
  path = _split_file(folder, split)
  if type_ == "Retrieval":
    return lambda: read_beir(folder, split)
  if path is None:
    raise DataError(f"{folder}: no {split}.jsonl / {split}.tsv / {split}.csv for a {type_} task")
  if type_ == "STS":
    return lambda: read_sts_table(path)
  if type_ == "PairClassification":
    return lambda: read_pairs_table(path)
  if type_ == "Clustering":
    return lambda: read_text_label(path)
  if type_ == "Reranking":
    return lambda: read_reranking_jsonl(path)
  if type_ == "Classification":
    train = _split_file(folder, "train")
    if train is None:
      raise DataError(f"{folder}: a Classification task needs train.jsonl / train.tsv / train.csv")
    return lambda: {"train": read_text_label(train), "test": read_text_label(path)}
  raise DataError(f"{folder}: unknown task type {type_!r} (one of {', '.join(TASK_TYPES)})")


def _mteb_name(folder: str) -> str | None:
  return ALIASES.get(os.path.basename(os.path.normpath(folder)).lower())


def detect(folder: str, split: str = "test") -> LocalTask | None:
  """The task in ``folder`` (module docstring), or None if the folder matches no layout."""
  folder = os.path.normpath(folder)
  base = os.path.basename(folder)
  manifest = os.path.join(folder, "task.json")
  if os.path.exists(manifest):
    try:
      with open(manifest, encoding="utf-8") as f:
        m = json.load(f)
    except json.JSONDecodeError as e:
      raise DataError(f"{manifest}:{e.lineno}: invalid JSON ({e.msg})") from None
    type_ = m.get("type") or _guess_type(folder, split)
    if type_ not in TASK_TYPES:
      raise DataError(f"{manifest}: \"type\" must be one of {', '.join(TASK_TYPES)}, got {type_!r}")
    instr = None
    if "instruction" in m:
      instr = {"instruction": m["instruction"]}
    elif "query_instruction" in m or "corpus_instruction" in m:
      instr = {"query": m.get("query_instruction", ""), "corpus": m.get("corpus_instruction", "")}
    options = {k: m[k] for k in ("n_experiments", "samples_per_label") if k in m}
    return LocalTask(m.get("name", base), type_, folder, split, _generic_loader(folder, type_, split),
                     m.get("mteb_name", _mteb_name(folder)), instr, options)
  split_names = {"test": ["test"], "dev": ["dev", "trial"], "validation": ["dev", "trial"], "train": ["train"]}
  candidates = split_names.get(split, [split])
  # STS Benchmark
  p = _first(folder, [f"sts-{s}.csv" for s in candidates])
  if p:
    return LocalTask("STSBenchmark", "STS", folder, split, lambda: read_stsbenchmark(p), "STSBenchmark")
  p = _first(folder, {"test": ["SICK_test_annotated.txt"], "train": ["SICK_train.txt"]}.get(split, ["SICK_trial.txt"]))
  if p:
    return LocalTask("SICK-R", "STS", folder, split, lambda: _read_sick(p), "SICK-R")
  if os.path.exists(os.path.join(folder, "corpus.jsonl")) and os.path.exists(os.path.join(folder, "queries.jsonl")):
    return LocalTask(_mteb_name(folder) or base, "Retrieval", folder, split, lambda: read_beir(folder, split),
                     _mteb_name(folder))
  p = _first(folder, [f"{s}.data" for s in candidates])
  if p:
    s = os.path.basename(p)[:-len(".data")]
    return LocalTask(_mteb_name(folder) or base, "PairClassification", folder, split, lambda: read_pit(folder, s),
                     _mteb_name(folder) or "TwitterSemEval2015")
  urls = sorted(glob.glob(os.path.join(folder, f"Twitter_URL_Corpus_{candidates[0]}*.txt")))
  if urls:
    return LocalTask(_mteb_name(folder) or base, "PairClassification", folder, split,
                     lambda: read_twitter_url(urls[0]), "TwitterURLCorpus")
  p = _first(folder, [f"msr_paraphrase_{s}.txt" for s in candidates])
  if p:
    return LocalTask(base, "PairClassification", folder, split, lambda: read_msrp(p), None)
  p = _first(folder, [f"{s}.csv" for s in candidates])
  if p and os.path.exists(os.path.join(folder, "classes.txt")):  # AG News
    return LocalTask(base, "Clustering", folder, split, lambda: read_agnews(p), None)
  for s in candidates:
    if os.path.exists(os.path.join(folder, s, "a.toks")):
      return LocalTask(base, "Reranking", folder, split, lambda s=s: read_wikiqa(os.path.join(folder, s)), None)
  p = _first(folder, [f"{s.upper()}.xml" for s in candidates])
  if p:
    return LocalTask(base, "Reranking", folder, split, lambda: read_trecqa(p), None)
  if _split_file(folder, split):
    type_ = _guess_type(folder, split)
    return LocalTask(_mteb_name(folder) or base, type_, folder, split, _generic_loader(folder, type_, split), _mteb_name(folder))
  return None


def discover(data_dir: str, split: str = "test") -> list[LocalTask]:
  """The task of ``data_dir`` itself, or the tasks of its sub-folders (sorted). Errors if none is found."""
  if not os.path.isdir(data_dir):
    raise DataError(f"{data_dir}: not a folder")
  task = detect(data_dir, split)
  if task is not None:
    return [task]
  tasks = []
  for name in sorted(os.listdir(data_dir)):
    sub = os.path.join(data_dir, name)
    if os.path.isdir(sub) and not name.startswith("."):
      t = detect(sub, split)
      if t is not None:
        tasks.append(t)
  if not tasks:
    raise DataError(f"{data_dir}: no task folder found (see `python -m instructor_jax.eval --help-formats`)")
  return tasks


# ----------------------------------------------------------------------------------------------------------------
# Scoring (MTEB protocols). `embed(texts, role)` returns float32 [N, D] embeddings for role "query" | "corpus".


def _unique_embed(embed, texts: Sequence[str], role: str) -> np.ndarray:
  uniq = list(dict.fromkeys(texts))
  emb = embed(uniq, role)
  index = {t: i for i, t in enumerate(uniq)}
  return emb[[index[t] for t in texts]]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return a, b


def score_sts(data: dict, embed) -> dict:
  from scipy.stats import pearsonr, spearmanr
  e1 = _unique_embed(embed, data["sentence1"], "query")
  e2 = _unique_embed(embed, data["sentence2"], "query")
  gold = np.asarray(data["score"], np.float64)
  a, b = _cos(e1.astype(np.float64), e2.astype(np.float64))
  sims = {"cosine": np.sum(a * b, -1), "manhattan": -np.sum(np.abs(e1 - e2), -1, dtype=np.float64),
          "euclidean": -np.linalg.norm(e1.astype(np.float64) - e2, axis=-1),
          "dot": np.sum(e1.astype(np.float64) * e2, -1)}
  out = {}
  for k, s in sims.items():
    out[f"{k}_pearson"] = float(pearsonr(gold, s)[0])
    out[f"{k}_spearman"] = float(spearmanr(gold, s)[0])
  out["pearson"], out["spearman"] = out["cosine_pearson"], out["cosine_spearman"]
  return out


def undersample(labels: Sequence, samples_per_label: int, idxs: list[int] | None, seed: int = SEED
                ) -> tuple[list[int], list[int]]:
  """MTEB's ``AbsTaskClassification._undersample_data``: ``(shuffled idxs, selected idxs)``."""
  if idxs is None:
    idxs = list(range(len(labels)))
  np.random.RandomState(seed).shuffle(idxs)
  counter: dict = collections.defaultdict(int)
  selected = []
  for i in idxs:
    if counter[labels[i]] < samples_per_label:
      selected.append(i)
      counter[labels[i]] += 1
  return idxs, selected


def score_classification(data: dict, embed, n_experiments: int = 10, samples_per_label: int = 8) -> dict:
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import accuracy_score, f1_score
  train, test = data["train"], data["test"]
  x_train = _unique_embed(embed, train["text"], "query")
  x_test = _unique_embed(embed, test["text"], "query")
  y_train, y_test = np.asarray(train["label"]), np.asarray(test["label"])
  idxs, runs = None, []
  for _ in range(n_experiments):
    idxs, sel = undersample(list(y_train), samples_per_label, idxs)
    clf = LogisticRegression(max_iter=100).fit(x_train[sel], y_train[sel])
    pred = clf.predict(x_test)
    runs.append({"accuracy": accuracy_score(y_test, pred), "f1": f1_score(y_test, pred, average="macro"),
                 "f1_weighted": f1_score(y_test, pred, average="weighted")})
  out = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
  out["accuracy_std"] = float(np.std([r["accuracy"] for r in runs]))
  out["scores_per_experiment"] = runs
  return out


def score_clustering(data: dict, embed) -> dict:
  from sklearn.cluster import MiniBatchKMeans
  from sklearn.metrics import v_measure_score
  x = _unique_embed(embed, data["text"], "query")
  labels = data["label"]
  km = MiniBatchKMeans(n_clusters=len(set(labels)), batch_size=500, n_init="auto", compute_labels=True,
                       random_state=SEED).fit(x)
  return {"v_measure": float(v_measure_score(labels, km.labels_))}


def score_pair_classification(data: dict, embed) -> dict:
  from sklearn.metrics import average_precision_score
  e1 = _unique_embed(embed, data["sentence1"], "query").astype(np.float64)
  e2 = _unique_embed(embed, data["sentence2"], "query").astype(np.float64)
  y = np.asarray(data["label"])
  if len(set(y.tolist())) < 2:
    raise DataError("pair classification needs both labels 0 and 1")
  a, b = _cos(e1, e2)
  sims = {"cosine": np.sum(a * b, -1), "dot": np.sum(e1 * e2, -1), "euclidean": -np.linalg.norm(e1 - e2, axis=-1),
          "manhattan": -np.sum(np.abs(e1 - e2), -1)}
  out = {f"{k}_ap": float(average_precision_score(y, s)) for k, s in sims.items()}
  out["max_ap"] = max(out[f"{k}_ap"] for k in sims)
  return out


def score_reranking(data: dict, embed) -> dict:
  from sklearn.metrics import average_precision_score
  samples = [s for s in data["samples"] if s["positive"] and s["negative"]]
  if not samples:
    raise DataError("reranking: no query has both a positive and a negative candidate")
  q = _unique_embed(embed, [s["query"] for s in samples], "query")
  docs = [d for s in samples for d in s["positive"] + s["negative"]]
  d = _unique_embed(embed, docs, "corpus")
  aps, rrs, start = [], [], 0
  for i, s in enumerate(samples):
    n = len(s["positive"]) + len(s["negative"])
    qa, da = _cos(q[i:i + 1].astype(np.float64), d[start:start + n].astype(np.float64))
    sims = (da @ qa[0])
    rel = np.array([1] * len(s["positive"]) + [0] * len(s["negative"]))
    aps.append(average_precision_score(rel, sims))
    order = np.argsort(-sims, kind="stable")[:10]
    hits = np.nonzero(rel[order])[0]
    rrs.append(1.0 / (hits[0] + 1) if len(hits) else 0.0)
    start += n
  return {"map": float(np.mean(aps)), "mrr_at_10": float(np.mean(rrs)), "num_queries": len(samples)}


def score_retrieval(data: dict, embed, top_k: int = 1000) -> dict:
  import pytrec_eval
  corpus_ids = list(data["corpus"])
  query_ids = list(data["queries"])
  d = embed([data["corpus"][i] for i in corpus_ids], "corpus").astype(np.float32)
  q = embed([data["queries"][i] for i in query_ids], "query").astype(np.float32)
  qn, dn = _cos(q, d)
  run = {}
  k = min(top_k, len(corpus_ids))
  for start in range(0, len(query_ids), 256):
    sims = qn[start:start + 256] @ dn.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    for row, qi in enumerate(range(start, min(start + 256, len(query_ids)))):
      run[query_ids[qi]] = {corpus_ids[j]: float(sims[row, j]) for j in top[row]}
  ks = (1, 3, 5, 10, 100, 1000)
  measures = {f"ndcg_cut.{','.join(map(str, ks))}", f"map_cut.{','.join(map(str, ks))}",
              f"recall.{','.join(map(str, ks))}", f"P.{','.join(map(str, ks))}", "recip_rank"}
  qrels = {q: {d: int(s) for d, s in v.items()} for q, v in data["qrels"].items()}
  scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
  out = {}
  for name, key in (("ndcg_at", "ndcg_cut"), ("map_at", "map_cut"), ("recall_at", "recall"), ("precision_at", "P")):
    for kk in ks:
      out[f"{name}_{kk}"] = float(np.mean([s[f"{key}_{kk}"] for s in scores.values()]))
  out["mrr"] = float(np.mean([s["recip_rank"] for s in scores.values()]))
  return out


def score(task: LocalTask, data: dict, embed) -> dict:
  if task.type == "STS":
    return score_sts(data, embed)
  if task.type == "Classification":
    return score_classification(data, embed, **task.options)
  if task.type == "Clustering":
    return score_clustering(data, embed)
  if task.type == "PairClassification":
    return score_pair_classification(data, embed)
  if task.type == "Reranking":
    return score_reranking(data, embed)
  if task.type == "Retrieval":
    return score_retrieval(data, embed)
  raise DataError(f"{task.folder}: unknown task type {task.type!r}")
