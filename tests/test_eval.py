"""instructor_jax.eval: offline formats scored against independent computations, the CLI (MTEB-format JSON,
summary, cache, errors), and MTEB 2.x mock tasks through the mteb encoder wrapper. Offline, tiny random model."""
from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from scipy.stats import spearmanr

from instructor_jax import eval as ev
from instructor_jax.embedder import Instructor
from instructor_jax.evaluation import local
from reference import make_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")
MAX_LEN = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return make_checkpoint(str(tmp_path_factory.mktemp("eval-model") / "m"), "relu", layout="instructor", seed=5)


@pytest.fixture(scope="module")
def inst(model_dir):
  return Instructor.from_pretrained(model_dir, max_length=MAX_LEN)


@pytest.fixture(scope="module")
def table():
  return ev.load_instruction_table(None, d_model=32)


@pytest.fixture(scope="module")
def encoder(inst):
  return ev.CachedEncoder(inst, "test", None, batch_size=16, progress=False)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _run(encoder, table, name, tmp_path):
  rows = ev.run_local(encoder, table, os.path.join(FIXTURES, name), str(tmp_path), log=lambda *a: None)
  assert len(rows) == 1
  result = json.load(open(os.path.join(tmp_path, f"{rows[0]['task']}.json")))
  assert result["scores"]["test"][0]["main_score"] == pytest.approx(rows[0]["score"])
  return rows[0], result["scores"]["test"][0]


def test_bundled_instruction_table(table):
  assert ev.instruction_for(table, "STS", "STSBenchmark") == "represent the statement: "
  assert ev.instruction_for(table, "Retrieval", "SciFact", "query").startswith("Represent a Scientific query")
  assert ev.instruction_for(table, "Retrieval", "SciFact", "corpus").startswith("represent the Scientific passage")
  assert ev.instruction_for(table, "STS", "NotInTable") == ev.instruction_for(table, "STS", "STSBenchmark")
  xl = ev.load_instruction_table(None, d_model=2048)
  assert xl["STS"]["STS12"] != table["STS"]["STS12"]
  assert ev.instruction_for(None, "STS", "STSBenchmark") == ""


def test_sts_benchmark_layout(encoder, table, inst, tmp_path):
  """The STS-B file layout (TSV, no quoting, rows with extra columns) scored as an independent computation."""
  row, scores = _run(encoder, table, "stsbenchmark", tmp_path)
  assert row["task"] == "STSBenchmark" and row["metric"] == "cosine_spearman"
  s1, s2, gold = [], [], []
  with open(os.path.join(FIXTURES, "stsbenchmark", "sts-test.csv"), encoding="utf-8") as f:
    for line in f:
      cols = line.rstrip("\n").split("\t")
      gold.append(float(cols[4]))
      s1.append(cols[5])
      s2.append(cols[6])
  assert len(gold) == 40 and any('"' in s for s in s1 + s2)
  instruction = "represent the statement: "
  e1 = inst.encode([[instruction, s] for s in s1])
  e2 = inst.encode([[instruction, s] for s in s2])
  cos = np.sum(_unit(e1) * _unit(e2), -1)
  assert row["score"] == pytest.approx(spearmanr(gold, cos)[0], abs=1e-6)


def test_classification(encoder, table, inst, tmp_path):
  from sklearn.linear_model import LogisticRegression
  row, scores = _run(encoder, table, "banking77", tmp_path)
  assert row["task"] == "Banking77Classification" and row["metric"] == "accuracy"
  import csv
  read = lambda s: list(csv.DictReader(open(os.path.join(FIXTURES, "banking77", f"{s}.csv"), encoding="utf-8")))
  train, test = read("train"), read("test")
  instruction = table["Classification"]["Banking77Classification"]
  xtr = inst.encode([[instruction, r["text"]] for r in train])
  xte = inst.encode([[instruction, r["text"]] for r in test])
  ytr = np.array([r["category"] for r in train])
  yte = np.array([r["category"] for r in test])
  # MTEB protocol: 10 experiments, 8 examples per label (re-shuffled with RandomState(42) each time), LR(max_iter=100).
  idxs, accs = list(range(len(train))), []
  for _ in range(10):
    np.random.RandomState(42).shuffle(idxs)
    count, sel = {}, []
    for i in idxs:
      if count.get(ytr[i], 0) < 8:
        sel.append(i)
        count[ytr[i]] = count.get(ytr[i], 0) + 1
    pred = LogisticRegression(max_iter=100).fit(xtr[sel], ytr[sel]).predict(xte)
    accs.append(np.mean(pred == yte))
  assert row["score"] == pytest.approx(np.mean(accs), abs=1e-9)
  assert len(scores["scores_per_experiment"]) == 10


def test_retrieval_beir(encoder, table, inst, tmp_path):
  row, scores = _run(encoder, table, "retrieval-synthetic", tmp_path)
  assert row["metric"] == "ndcg_at_10"
  folder = os.path.join(FIXTURES, "retrieval-synthetic")
  corpus = [json.loads(l) for l in open(os.path.join(folder, "corpus.jsonl"))]
  queries = {q["_id"]: q["text"] for q in map(json.loads, open(os.path.join(folder, "queries.jsonl")))}
  qrels = {}
  for line in open(os.path.join(folder, "qrels", "test.tsv")).read().splitlines()[1:]:
    q, d, s = line.split("\t")
    qrels.setdefault(q, {})[d] = int(s)
  qi = ev.instruction_for(table, "Retrieval", "retrieval-synthetic", "query")
  ci = ev.instruction_for(table, "Retrieval", "retrieval-synthetic", "corpus")
  d = _unit(inst.encode([[ci, (c["title"] + " " + c["text"]).strip()] for c in corpus]))
  ndcgs = []
  for q, rel in qrels.items():
    sims = d @ _unit(inst.encode([[qi, queries[q]]]))[0]
    ranked = [corpus[i]["_id"] for i in np.argsort(-sims)[:10]]
    dcg = sum((2 ** rel.get(doc, 0) - 1) / np.log2(r + 2) for r, doc in enumerate(ranked))
    ideal = sorted(rel.values(), reverse=True)[:10]
    idcg = sum((2 ** g - 1) / np.log2(r + 2) for r, g in enumerate(ideal))
    ndcgs.append(dcg / idcg)
  assert row["score"] == pytest.approx(np.mean(ndcgs), abs=1e-4)  # pytrec_eval rounds to 4 digits internally


def test_clustering_task_json(encoder, table, inst, tmp_path):
  from sklearn.cluster import MiniBatchKMeans
  from sklearn.metrics import v_measure_score
  row, _ = _run(encoder, table, "clustering-synthetic", tmp_path)
  assert row["task"] == "SyntheticClustering" and row["metric"] == "v_measure"
  rows = [json.loads(l) for l in open(os.path.join(FIXTURES, "clustering-synthetic", "test.jsonl"))]
  x = inst.encode([["Represent the sentence for clustering by topic: ", r["text"]] for r in rows])
  km = MiniBatchKMeans(n_clusters=3, batch_size=500, n_init="auto", random_state=42).fit(x)
  assert row["score"] == pytest.approx(v_measure_score([r["label"] for r in rows], km.labels_), abs=1e-9)


def test_pair_classification(encoder, table, inst, tmp_path):
  from sklearn.metrics import average_precision_score
  row, scores = _run(encoder, table, "pairclassification-synthetic", tmp_path)
  assert row["metric"] == "max_ap"
  lines = open(os.path.join(FIXTURES, "pairclassification-synthetic", "test.tsv")).read().splitlines()[1:]
  a, b, y = zip(*(l.split("\t") for l in lines))
  instruction = ev.instruction_for(table, "PairClassification", "x")
  e1, e2 = inst.encode([[instruction, s] for s in a]), inst.encode([[instruction, s] for s in b])
  ap = average_precision_score([int(v) for v in y], np.sum(_unit(e1) * _unit(e2), -1))
  assert scores["cosine_ap"] == pytest.approx(ap, abs=1e-9)
  assert row["score"] == pytest.approx(max(scores[f"{k}_ap"] for k in ("cosine", "dot", "euclidean", "manhattan")))


def test_reranking(encoder, table, inst, tmp_path):
  row, scores = _run(encoder, table, "reranking-synthetic", tmp_path)
  assert row["metric"] == "map" and scores["num_queries"] == 3  # the query without positives is skipped
  qi = ev.instruction_for(table, "Reranking", "x", "query")
  ci = ev.instruction_for(table, "Reranking", "x", "corpus")
  aps = []
  for s in map(json.loads, open(os.path.join(FIXTURES, "reranking-synthetic", "test.jsonl"))):
    if not s["positive"]:
      continue
    docs = s["positive"] + s["negative"]
    sims = _unit(inst.encode([[ci, d] for d in docs])) @ _unit(inst.encode([[qi, s["query"]]]))[0]
    rel = [1 if i < len(s["positive"]) else 0 for i in np.argsort(-sims)]
    hits = np.cumsum(rel)
    aps.append(np.sum([hits[i] / (i + 1) for i in range(len(rel)) if rel[i]]) / sum(rel))
  assert row["score"] == pytest.approx(np.mean(aps), abs=1e-9)


def test_readers_of_other_real_layouts():
  f = os.path.join(FIXTURES, "formats")
  pit = local.detect(os.path.join(f, "twitter-semeval2015"))
  assert (pit.type, pit.mteb_name) == ("PairClassification", "TwitterSemEval2015")
  assert pit.load()["label"] == [1, 0]  # "----" dropped
  assert local.detect(os.path.join(f, "twitter-semeval2015"), "dev").load()["label"] == [1, 0]
  url = local.detect(os.path.join(f, "twitter-url"))
  assert (url.mteb_name, url.load()["label"]) == ("TwitterURLCorpus", [1, 0])
  msrp = local.detect(os.path.join(f, "msrp")).load()
  assert msrp["label"] == [1, 0] and msrp["sentence1"][0] == "A b c."
  ag = local.detect(os.path.join(f, "agnews"))
  assert ag.type == "Clustering" and ag.load() == {"text": ["Title one, with comma", "Title two", "Title three"],
                                                   "label": ["1", "2", "1"]}
  wiki = local.detect(os.path.join(f, "wikiqa"))
  assert wiki.type == "Reranking" and len(wiki.load()["samples"]) == 3
  trec = local.detect(os.path.join(f, "trecqa")).load()["samples"]
  assert trec == [{"query": "What is it ?", "positive": ["It is a thing ."], "negative": ["No .", "Maybe ."]}]
  sick = local.detect(os.path.join(f, "sick"))
  assert (sick.name, sick.type, sick.load()["score"]) == ("SICK-R", "STS", [4.8, 1.2])


SHARED_EVAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "eval")


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_EVAL, "stsbenchmark")), reason="../shared not available")
def test_shared_eval_sets_are_detected():
  tasks = {t.name: t for t in local.discover(SHARED_EVAL)}
  assert tasks["STSBenchmark"].type == "STS" and len(tasks["STSBenchmark"].load()["score"]) == 1379
  assert {"SciFact", "Banking77Classification", "SICK-R", "TwitterSemEval2015", "TwitterURLCorpus", "wikiqa",
          "trecqa", "agnews", "msrp"} <= set(tasks)


def test_cli_all_fixtures_summary_and_cache(model_dir, tmp_path, capsys):
  out = str(tmp_path / "out")
  args = ["--model", model_dir, "--data-dir", FIXTURES, "--output", out, "--max-length", str(MAX_LEN)]
  assert ev.main(args) == 0
  first = capsys.readouterr().out
  names = {"STSBenchmark", "Banking77Classification", "SyntheticClustering", "retrieval-synthetic",
           "pairclassification-synthetic", "reranking-synthetic"}
  assert {n for n in names if os.path.exists(os.path.join(out, f"{n}.json"))} == names
  summary = open(os.path.join(out, "summary.md")).read()
  for t in ("STS", "Classification", "Clustering", "Retrieval", "PairClassification", "Reranking", "**all**"):
    assert f"| {t} |" in summary
  s = json.load(open(os.path.join(out, "summary.json")))
  assert set(s["type_averages"]) == {"STS", "Classification", "Clustering", "Retrieval", "PairClassification",
                                     "Reranking"}
  assert "0 hits" in first
  # Re-run: every embedding comes from the cache, same scores.
  assert ev.main(args) == 0
  second = capsys.readouterr().out
  assert " 0 misses" in second
  assert json.load(open(os.path.join(out, "summary.json")))["tasks"] == s["tasks"]


def test_cli_no_instructions_and_task_filter(model_dir, inst, tmp_path):
  out = str(tmp_path / "out")
  assert ev.main(["--model", model_dir, "--data-dir", FIXTURES, "--tasks", "STS", "--output", out,
                  "--no-instructions", "--max-length", str(MAX_LEN), "--cache-dir", "none"]) == 0
  s = json.load(open(os.path.join(out, "summary.json")))
  assert [t["task"] for t in s["tasks"]] == ["STSBenchmark"] and s["tasks"][0]["instruction"] == ""
  lines = [l.split("\t") for l in open(os.path.join(FIXTURES, "stsbenchmark", "sts-test.csv")).read().splitlines()]
  e1, e2 = inst.encode([c[5] for c in lines]), inst.encode([c[6] for c in lines])
  want = spearmanr([float(c[4]) for c in lines], np.sum(_unit(e1) * _unit(e2), -1))[0]
  assert s["tasks"][0]["score"] == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("case", ["score", "columns", "json", "missing_column"])
def test_unreadable_data_names_file_and_line(model_dir, tmp_path, capsys, case):
  d = tmp_path / "data"
  if case in ("score", "columns"):
    shutil.copytree(os.path.join(FIXTURES, "stsbenchmark"), d)
    lines = open(d / "sts-test.csv").read().splitlines()
    lines[4] = "main-news\theadlines\t2015\t0001\tfive\ta\tb" if case == "score" else "only\ttwo"
    open(d / "sts-test.csv", "w").write("\n".join(lines) + "\n")
    want = "sts-test.csv:5:"
  elif case == "json":
    os.makedirs(d)
    open(d / "test.jsonl", "w").write('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a",\n')
    want = "test.jsonl:2:"
  else:
    os.makedirs(d)
    open(d / "test.tsv", "w").write("sentence1\tsentence2\tscore\na\tb\t1\n")
    (d / "task.json").write_text('{"type": "PairClassification"}')
    want = "test.tsv:2: missing column 'label'"
  code = ev.main(["--model", model_dir, "--data-dir", str(d), "--output", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert code == 1 and want in err, err


def test_mteb_mock_tasks_through_wrapper(encoder, table, inst, tmp_path, monkeypatch):
  import mteb
  from mteb.mocks.mock_run import get_compatible_mock_tasks
  model = ev.mteb_encoder(encoder, table, name="test/tiny", embed_dim=inst.dim)
  wanted = {"MockSTSTask", "MockClassificationTask", "MockClusteringTask", "MockPairClassificationTask",
            "MockRerankingTask", "MockRetrievalTask"}
  tasks = [t for t in get_compatible_mock_tasks(model) if t.metadata.name in wanted]
  assert {t.metadata.name for t in tasks} == wanted
  results = mteb.evaluate(model, tasks, cache=None, raise_error=True, show_progress_bar=False)
  assert {r.task_name for r in results.task_results} == wanted
  for r in results.task_results:
    assert np.isfinite(r.get_score())
  used = model.instructions_used
  assert used["MockRetrievalTask/query"] != used["MockRetrievalTask/corpus"]
  assert used["MockSTSTask/query"] == ev.instruction_for(table, "STS", "MockSTSTask")
  # The CLI path: MTEB-format JSON per task (readable by mteb) and the summary.
  monkeypatch.setattr(ev, "select_mteb_tasks", lambda specs: [t for t in tasks if t.metadata.name in specs])
  rows, failed = ev.run_mteb(encoder, table, ["MockSTSTask", "MockRetrievalTask"], str(tmp_path), "test/tiny",
                             inst.dim, log=lambda *a: None)
  assert failed == []
  assert sorted(r["task"] for r in rows) == ["MockRetrievalTask", "MockSTSTask"]
  for r in rows:
    saved = json.load(open(tmp_path / f"{r['task']}.json"))
    assert saved["task_name"] == r["task"] and "mteb_version" in saved
    assert np.mean([s[0]["main_score"] for s in saved["scores"].values()]) == pytest.approx(r["score"])
  md = ev.write_summary(rows, str(tmp_path), "tiny", {"backend": "jax"})
  assert "| STS | 1 |" in md and "| Retrieval | 1 |" in md


def test_orbax_checkpoint_and_torch_backend_give_the_same_scores(model_dir, tmp_path):
  """--model accepts an orbax workdir (from-hf) and --backend torch (T5EncoderModel) agrees with jax."""
  from instructor_jax import convert
  pytest.importorskip("instructor_jax.checkpoints")
  work = str(tmp_path / "work")
  assert convert.main(["from-hf", "--model", model_dir, "--out", work]) == 0
  scores = {}
  for name, model, backend in (("jax", model_dir, "jax"), ("orbax", work, "jax"), ("torch", model_dir, "torch"),
                               ("orbax-torch", work, "torch")):
    out = str(tmp_path / name)
    assert ev.main(["--model", model, "--backend", backend, "--data-dir", os.path.join(FIXTURES, "stsbenchmark"),
                    "--output", out, "--max-length", str(MAX_LEN)]) == 0
    scores[name] = json.load(open(os.path.join(out, "summary.json")))["tasks"][0]["score"]
  assert max(scores.values()) - min(scores.values()) < 1e-5, scores
