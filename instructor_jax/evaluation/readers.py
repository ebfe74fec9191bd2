"""Readers of the offline evaluation formats: files -> plain Python columns, errors as ``FILE:LINE: ...``.

One ``read_*`` function per file layout; its docstring says what it returns (every list has one entry per row, in
file order). No scoring here (mteb's evaluators score, see ``evaluation/tasks.py``).
"""
from __future__ import annotations

import collections
import csv
import json
import os
import re

import numpy as np

from instructor_jax.core import errors


DataError = errors.DataError  # core/errors.py


def check(task_type: str, data: dict, where: str, score_range: tuple | None = None) -> None:
  """Task data that would give a meaningless score fails here, naming the file: fewer than two examples, constant
  gold scores or labels (no correlation, no classes), gold STS scores outside the task's range, no query with a
  relevant document, no reranking sample with both a positive and a negative."""
  for split, part in (data.items() if task_type == "Classification" else [("", data)]):
    if task_type in ("STS", "PairClassification"):
      gold = part["score" if task_type == "STS" else "label"]
      if len(gold) < 2:
        raise DataError(f"{where}: {len(gold)} pair(s); a score needs at least 2")
      if len(set(gold)) < 2:
        raise DataError(f"{where}: every gold {'score' if task_type == 'STS' else 'label'} is {gold[0]}: a "
                        f"correlation or a threshold is undefined on constant gold data")
      if task_type == "STS" and score_range is not None:
        low, high = score_range
        bad = [g for g in gold if not low <= g <= high]
        if bad:
          raise DataError(f"{where}: {len(bad)} gold score(s) outside the task's range [{low}, {high}] "
                          f"(e.g. {bad[0]})")
    elif task_type in ("Classification", "Clustering"):
      labels = part["label"]
      if len(labels) < 2 or len(set(labels)) < 2:
        raise DataError(f"{where}{': ' + split if split else ''}: {len(labels)} example(s) in {len(set(labels))} "
                        f"class(es); {task_type.lower()} needs at least 2 of each")
    elif task_type == "Retrieval":
      if not any(any(v > 0 for v in docs.values()) for docs in part["qrels"].values()):
        raise DataError(f"{where}: no query has a relevant document")
      if len(part["corpus"]) < 2:
        raise DataError(f"{where}: {len(part['corpus'])} document(s) in the corpus; retrieval needs at least 2")
    elif task_type == "Reranking":
      if not any(s["positive"] and s["negative"] for s in part["samples"]):
        raise DataError(f"{where}: no sample has both a positive and a negative")


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
  ``__line__`` key. ``COLUMN_ALIASES`` lists the accepted column names."""
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
  """``{"sentence1", "sentence2", "score"}`` from the STS Benchmark TSV (no header, no quoting: split on tab;
  genre, file, year, id, score, s1, s2 [, extra columns])."""
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
  """``{"sentence1", "sentence2", "score"}`` from a generic table (``read_table``: ``sentence1, sentence2,
  score``)."""
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
  """``{"text", "label"}`` (labels as strings) from a table with ``text`` / ``category``."""
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
  """``{"sentence1", "sentence2", "label"}`` (labels 0 / 1) from a generic table."""
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
  """``{"samples": [{"query", "positive": [...], "negative": [...]}]}`` from a jsonl file."""
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


def read_sick(path: str) -> dict:
  """``{"sentence1", "sentence2", "score"}`` from one SICK file (TSV with header ``sentence_A``, ``sentence_B``,
  ``relatedness_score``)."""
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
  """``{"corpus": {id: {"title", "text"}}, "queries": {id: text}, "qrels": {qid: {did: int}}}`` (queries without
  judgements left out)."""
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
    corpus[str(r["_id"])] = {"title": _text(r.get("title") or "", corpus_path, r["__line__"], "title"),
                             "text": _text(r.get("text", ""), corpus_path, r["__line__"], "text")}
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
  """``{"sentence1", "sentence2", "label"}`` (0 / 1) from SemEval-2015 PIT ``{split}.data`` (+ ``{split}.label``)."""
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
  """``{"sentence1", "sentence2", "label"}`` from the Twitter URL corpus (votes ``(n,6)``: n >= 4 -> 1,
  n <= 1 -> 0)."""
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
  """``{"sentence1", "sentence2", "label"}`` (0 / 1) from the MSR paraphrase corpus."""
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
  """``{"text", "label"}``: the titles and classes of the AG News CSV."""
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
  """``{"samples": [{"query", "positive": [...], "negative": [...]}]}`` from WikiQA's aligned ``a.toks``,
  ``b.toks``, ``id.txt``, ``sim.txt``."""
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
  """``{"samples": [{"query", "positive": [...], "negative": [...]}]}`` from TrecQA's ``<QApairs>``
  pseudo-XML."""
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
