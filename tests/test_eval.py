"""instructor_jax.eval and evaluation/: local sets in mteb's own task objects (or our stand-ins on mteb's abstract
tasks), scored by mteb's evaluators and checked against independent computations; the instruction rule; our
encoder through ``mteb.evaluate`` (mteb's mock tasks); MTEB's result layout read back with mteb's result classes;
the CLI (summary, embedding cache, --list-tasks, errors). Offline, tiny random model."""
from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mteb
import numpy as np
import pytest
from mteb.abstasks import AbsTask, AbsTaskClustering, AbsTaskPairClassification, AbsTaskRetrieval, AbsTaskSTS
from scipy.stats import spearmanr

from instructor_jax.evaluation import runner as ev
from instructor_jax.models.embedder import Instructor
from instructor_jax.evaluation import encoder as enc, local, model as model_lib, readers, tasks as local_tasks
from instructor_jax import convert as convert_cli
from instructor_jax import eval as eval_cli
from reference import make_checkpoint

from helpers import EVAL_FIXTURES as FIXTURES

FORMATS = os.path.join(FIXTURES, "formats")
SHARED_EVAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "eval")
MAX_LEN = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return make_checkpoint(str(tmp_path_factory.mktemp("eval-model") / "m"), "relu", layout="instructor", seed=5)


@pytest.fixture(scope="module")
def inst(model_dir):
  return Instructor.from_pretrained(model_dir, max_length=MAX_LEN)


@pytest.fixture(scope="module")
def table():
  return enc.load_instruction_table(None, d_model=32)[0]


@pytest.fixture(scope="module")
def evaluated(model_dir, tmp_path_factory):
  """The CLI once over every fixture folder: ``(output folder, summary.json, stdout)``."""
  out = str(tmp_path_factory.mktemp("evaluated") / "out")
  import contextlib
  import io
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    assert eval_cli.main(["--model", model_dir, "--data-dir", FIXTURES, "--output", out, "--max-length", str(MAX_LEN)]) == 0
  return out, json.load(open(os.path.join(out, "summary.json"))), buf.getvalue()


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _row(summary, task):
  rows = [r for r in summary["tasks"] if r["task"] == task]
  assert len(rows) == 1, [r["task"] for r in summary["tasks"]]
  return rows[0]


def _result(out, row):
  return json.load(open(os.path.join(out, row["result"])))["scores"]["test"][0]


# ----------------------------------------------------------------------------------------------------------------
# Instructions


def test_instruction_rule(table):
  ins = enc.Instructions(table, "hkunlp/instructor-base", {"Mine": {"text": "Represent mine: "}})
  assert ins.get("STSBenchmark", "STS") == enc.Instruction("represent the statement: ", "table hkunlp/instructor-base")
  assert ins.get("SciFact", "Retrieval", "query").text.startswith("Represent a Scientific query")
  assert ins.get("SciFact", "Retrieval", "document").text.startswith("represent the Scientific passage")
  assert ins.get("Mine", "STS").source == "task.json"
  # A split of an MTEB task (mteb's adapted_from) uses that task's entry, and says so.
  sub = ins.get("SICK-R.official", "STS", adapted_from=("SICK-R",))
  assert sub.text == table["STS"]["SICK-R"] and "(SICK-R, adapted_from)" in sub.source
  # A task the table does not list gets the generic instruction of its type, never another task's.
  for name, task_type, role, want in (("MRPC", "PairClassification", "text", enc.GENERIC["PairClassification"]),
                                      ("WikiQAReranking", "Reranking", "query", enc.GENERIC["Reranking"]["query"]),
                                      ("WikiQAReranking", "Reranking", "document",
                                       enc.GENERIC["Reranking"]["document"]),
                                      ("Some", "InstructionRetrieval", "query", enc.GENERIC["Retrieval"]["query"]),
                                      ("Some", "MultilabelClassification", "text", enc.GENERIC["Classification"])):
    got = ins.get(name, task_type, role)
    assert got.text == want and got.source.startswith("generic "), (name, got)
  with open(enc.INSTRUCTIONS_FILE) as f:
    bundled = {v for t in json.load(f).values() for entries in t.values() for e in entries.values()
               for v in ([e] if isinstance(e, str) else e.values())}
  generic = {v for g in enc.GENERIC.values() for v in ([g] if isinstance(g, str) else g.values())}
  assert not generic & bundled
  assert enc.Instructions(None).get("STSBenchmark", "STS") == enc.Instruction("", "none")
  xl, name = enc.load_instruction_table(None, d_model=2048)
  assert name == "hkunlp/instructor-xl" and xl["STS"]["STS12"] != table["STS"]["STS12"]
  with pytest.raises(ValueError, match="--instructions 'nope'"):
    enc.load_instruction_table("nope")


# ----------------------------------------------------------------------------------------------------------------
# Local sets -> mteb task objects


def test_local_sets_are_loaded_into_mteb_tasks():
  found = {t.name: t for t in local.discover(FIXTURES) + local.discover(FORMATS)}
  assert set(found) == {"Banking77Classification", "SyntheticClustering", "pairclassification-synthetic",
                        "reranking-synthetic", "retrieval-synthetic", "STSBenchmark", "AGNewsTitlesClustering",
                        "MRPC", "SICK-R", "SICK-R.official", "TrecQAReranking", "TwitterPIT2015",
                        "TwitterURLCorpusTest", "WikiQAReranking"}
  built = {name: t.build() for name, t in found.items()}
  for name in ("STSBenchmark", "SICK-R", "Banking77Classification"):  # MTEB data: mteb's own task class
    assert type(built[name]) is type(mteb.get_task(name)), name
    # The injected data is in the evaluation layout; a dataset_transform would not run on it.
    assert type(built[name]).dataset_transform is AbsTask.dataset_transform, name
  for name, base in (("SICK-R.official", AbsTaskSTS), ("TwitterPIT2015", AbsTaskPairClassification),
                     ("TwitterURLCorpusTest", AbsTaskPairClassification), ("MRPC", AbsTaskPairClassification),
                     ("AGNewsTitlesClustering", AbsTaskClustering), ("WikiQAReranking", AbsTaskRetrieval),
                     ("TrecQAReranking", AbsTaskRetrieval)):
    assert isinstance(built[name], base) and type(built[name]) is local_tasks.STAND_INS[name], name
  assert built["WikiQAReranking"].metadata.type == "Reranking"
  assert built["AGNewsTitlesClustering"].max_fraction_of_documents_to_embed is None
  for name, t in built.items():
    assert t.data_loaded and t.eval_splits == ["test"], name
    assert t.metadata.revision == local_tasks.files_revision(found[name].files), name
  assert built["Banking77Classification"].dataset["train"].column_names == ["text", "label"]
  pit = built["TwitterPIT2015"].dataset["test"]
  assert pit["labels"] == [1, 0] and pit["sentence1"] == ["I love this movie"] * 2  # "----" pairs dropped
  assert built["TwitterURLCorpusTest"].dataset["test"]["labels"] == [1, 0]
  assert built["AGNewsTitlesClustering"].dataset["test"]["sentences"] == ["Title one, with comma", "Title two",
                                                                         "Title three"]
  trec = built["TrecQAReranking"].dataset["default"]["test"]
  assert trec["queries"]["text"] == ["What is it ?"] and trec["corpus"]["text"] == ["It is a thing .", "No .",
                                                                                      "Maybe ."]
  assert trec["relevant_docs"] == {"q0": {"q0-d0": 1}} and trec["top_ranked"] == {"q0": ["q0-d0", "q0-d1",
                                                                                          "q0-d2"]}
  wiki = built["WikiQAReranking"].dataset["default"]["test"]
  assert set(wiki["relevant_docs"]) == {"q0", "q1"} and len(wiki["queries"]) == 3  # q2 has no correct answer


def test_sick_r_is_the_whole_corpus_with_the_official_test_split_as_an_extra():
  found = {t.name: t for t in local.discover(os.path.join(FORMATS, "sick"))}
  whole, official = found["SICK-R"].build(), found["SICK-R.official"].build()
  assert len(whole.dataset["test"]) == 3 + 2 + 2 and len(official.dataset["test"]) == 2
  assert official.dataset["test"]["score"] == [4.8, 1.2]
  assert official.metadata.adapted_from == ["SICK-R"]
  dev = {t.name: t for t in local.discover(os.path.join(FORMATS, "sick"), "dev")}
  assert list(dev) == ["SICK-R.official"] and dev["SICK-R.official"].build().dataset["dev"]["score"] == [4.6, 2.2]


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_EVAL, "sick")), reason="../shared not available")
def test_shared_eval_sets():
  found = {t.name: t for t in local.discover(SHARED_EVAL)}
  assert set(found) == {"STSBenchmark", "SICK-R", "SICK-R.official", "Banking77Classification", "SciFact",
                        "TwitterPIT2015", "TwitterURLCorpusTest", "MRPC", "AGNewsTitlesClustering",
                        "WikiQAReranking", "TrecQAReranking"}
  assert len(found["SICK-R"].read()["score"]) == 9927 and len(found["SICK-R.official"].read()["score"]) == 4927
  assert len(found["STSBenchmark"].read()["score"]) == 1379
  assert len(found["TwitterPIT2015"].read()["label"]) == 838


# ----------------------------------------------------------------------------------------------------------------
# Scores (mteb's evaluators) vs independent computations


def test_sts(evaluated, inst):
  out, summary, _ = evaluated
  row = _row(summary, "STSBenchmark")
  assert row["metric"] == "cosine_spearman" and row["instruction"] == "represent the statement: "
  s1, s2, gold = [], [], []
  with open(os.path.join(FIXTURES, "stsbenchmark", "sts-test.csv"), encoding="utf-8") as f:
    for line in f:
      cols = line.rstrip("\n").split("\t")
      gold.append(float(cols[4]))
      s1.append(cols[5])
      s2.append(cols[6])
  assert len(gold) == 40 and any('"' in s for s in s1 + s2)
  e1 = inst.encode([["represent the statement: ", s] for s in s1])
  e2 = inst.encode([["represent the statement: ", s] for s in s2])
  assert row["score"] == pytest.approx(spearmanr(gold, np.sum(_unit(e1) * _unit(e2), -1))[0], abs=1e-6)


def test_classification(evaluated, inst, table):
  from sklearn.linear_model import LogisticRegression
  out, summary, _ = evaluated
  row = _row(summary, "Banking77Classification")
  read = lambda s: list(csv.DictReader(open(os.path.join(FIXTURES, "banking77", f"{s}.csv"), encoding="utf-8")))
  train, test = read("train"), read("test")
  instruction = table["Classification"]["Banking77Classification"]
  xtr = inst.encode([[instruction, r["text"]] for r in train])
  xte = inst.encode([[instruction, r["text"]] for r in test])
  ytr, yte = np.array([r["category"] for r in train]), np.array([r["category"] for r in test])
  # MTEB's protocol: 10 experiments, 8 examples per label (re-shuffled with RandomState(42) each time), LR.
  idxs, accs = list(range(len(train))), []
  for _ in range(10):
    np.random.RandomState(42).shuffle(idxs)
    count, sel = {}, []
    for i in idxs:
      if count.get(ytr[i], 0) < 8:
        sel.append(i)
        count[ytr[i]] = count.get(ytr[i], 0) + 1
    pred = LogisticRegression(max_iter=100, random_state=42).fit(xtr[sel], ytr[sel]).predict(xte)
    accs.append(np.mean(pred == yte))
  assert row["score"] == pytest.approx(np.mean(accs), abs=1e-9)
  assert len(_result(out, row)["scores_per_experiment"]) == 10


def test_retrieval(evaluated, inst):
  out, summary, _ = evaluated
  row = _row(summary, "retrieval-synthetic")
  folder = os.path.join(FIXTURES, "retrieval-synthetic")
  corpus = [json.loads(l) for l in open(os.path.join(folder, "corpus.jsonl"))]
  queries = {q["_id"]: q["text"] for q in map(json.loads, open(os.path.join(folder, "queries.jsonl")))}
  qrels = {}
  for line in open(os.path.join(folder, "qrels", "test.tsv")).read().splitlines()[1:]:
    q, d, s = line.split("\t")
    qrels.setdefault(q, {})[d] = int(s)
  qi, ci = enc.GENERIC["Retrieval"]["query"], enc.GENERIC["Retrieval"]["document"]
  assert (row["instruction"], row["document_instruction"]) == (qi, ci)
  d = _unit(inst.encode([[ci, (c["title"] + " " + c["text"]).strip()] for c in corpus]))
  ndcgs = []
  for q, rel in qrels.items():
    ranked = [corpus[i]["_id"] for i in np.argsort(-(d @ _unit(inst.encode([[qi, queries[q]]]))[0]))[:10]]
    # trec_eval's nDCG (pytrec_eval, as mteb): the gain is the relevance grade itself.
    dcg = sum(rel.get(doc, 0) / np.log2(r + 2) for r, doc in enumerate(ranked))
    idcg = sum(g / np.log2(r + 2) for r, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
    ndcgs.append(dcg / idcg)
  assert row["metric"] == "ndcg_at_10" and row["score"] == pytest.approx(np.mean(ndcgs), abs=1e-5)  # mteb rounds


def test_pair_classification(evaluated, inst):
  from sklearn.metrics import average_precision_score
  out, summary, _ = evaluated
  row = _row(summary, "pairclassification-synthetic")
  lines = open(os.path.join(FIXTURES, "pairclassification-synthetic", "test.tsv")).read().splitlines()[1:]
  a, b, y = zip(*(l.split("\t") for l in lines))
  instruction = enc.GENERIC["PairClassification"]
  e1, e2 = inst.encode([[instruction, s] for s in a]), inst.encode([[instruction, s] for s in b])
  ap = average_precision_score([int(v) for v in y], np.sum(_unit(e1) * _unit(e2), -1))
  scores = _result(out, row)
  assert scores["cosine_ap"] == pytest.approx(ap, abs=1e-6)
  assert row["metric"] == "max_ap" and row["score"] == pytest.approx(
      max(scores[f"{k}_ap"] for k in ("similarity", "cosine", "dot", "euclidean", "manhattan")))


def test_reranking(evaluated, inst):
  out, summary, _ = evaluated
  row = _row(summary, "reranking-synthetic")
  qi, ci = enc.GENERIC["Reranking"]["query"], enc.GENERIC["Reranking"]["document"]
  aps = []
  for s in map(json.loads, open(os.path.join(FIXTURES, "reranking-synthetic", "test.jsonl"))):
    if not s["positive"]:
      continue  # mteb scores queries with a relevant candidate only
    docs = s["positive"] + s["negative"]
    sims = _unit(inst.encode([[ci, d] for d in docs])) @ _unit(inst.encode([[qi, s["query"]]]))[0]
    rel = [1 if i < len(s["positive"]) else 0 for i in np.argsort(-sims)]
    hits = np.cumsum(rel)
    aps.append(np.sum([hits[i] / (i + 1) for i in range(len(rel)) if rel[i]]) / sum(rel))
  assert row["metric"] == "map_at_1000" and row["score"] == pytest.approx(np.mean(aps), abs=1e-4)


def test_clustering_uses_mteb_bootstrap(evaluated):
  out, summary, _ = evaluated
  row = _row(summary, "SyntheticClustering")
  scores = _result(out, row)
  assert row["metric"] == "v_measure" and row["instruction_source"] == "task.json"
  assert row["instruction"] == "Represent the sentence for clustering by topic: "
  assert len(scores["v_measures"]["Level 0"]) == 10 and scores["v_measure"] == pytest.approx(
      np.mean(scores["v_measures"]["Level 0"]))


@pytest.mark.slow
def test_stand_in_tasks_through_the_cli(model_dir, tmp_path, table):
  out = str(tmp_path / "out")
  assert eval_cli.main(["--model", model_dir, "--data-dir", FORMATS, "--output", out, "--max-length", str(MAX_LEN),
                  "--cache-dir", "none"]) == 0
  rows = {r["task"]: r for r in json.load(open(os.path.join(out, "summary.json")))["tasks"]}
  assert set(rows) == {"AGNewsTitlesClustering", "MRPC", "SICK-R", "SICK-R.official", "TrecQAReranking",
                       "TwitterPIT2015", "TwitterURLCorpusTest", "WikiQAReranking"}
  assert all(np.isfinite(r["score"]) for r in rows.values())
  assert rows["SICK-R"]["instruction"] == rows["SICK-R.official"]["instruction"] == table["STS"]["SICK-R"]
  for name in ("MRPC", "TwitterPIT2015", "TwitterURLCorpusTest"):
    assert rows[name]["instruction"] == enc.GENERIC["PairClassification"], name
  assert rows["WikiQAReranking"]["instruction"] == enc.GENERIC["Reranking"]["query"]
  assert rows["TrecQAReranking"]["document_instruction"] == enc.GENERIC["Reranking"]["document"]
  assert rows["AGNewsTitlesClustering"]["instruction_source"] == "generic Clustering"


# ----------------------------------------------------------------------------------------------------------------
# Results: MTEB's layout, read with mteb's classes; summary; embedding cache


def test_results_in_mteb_layout_load_with_mteb_classes(evaluated, model_dir):
  from mteb.models.model_meta import ModelMeta
  from mteb.results import TaskResult
  out, summary, _ = evaluated
  revision = model_lib.folder_revision(model_dir)
  folder = os.path.join(out, "results", "local__m", revision)
  names = {r["task"] for r in summary["tasks"]}
  assert sorted(os.listdir(folder)) == sorted([f"{n}.json" for n in names] + ["model_meta.json",
                                                                              "run_settings.jsonl"])
  meta = ModelMeta.model_validate_json_resolved(open(os.path.join(folder, "model_meta.json")).read())
  assert (meta.name, meta.revision, meta.framework, meta.embed_dim) == ("local/m", revision, ["JAX"], 24)
  for row in summary["tasks"]:
    r = TaskResult.from_disk(pathlib.Path(out, row["result"]))
    assert r.task_name == row["task"] and r.get_score() == pytest.approx(row["score"])
    assert r.dataset_revision.startswith("local-")
    entry = r.scores["test"][0]
    assert entry["instructions"]["source"] == row["instruction_source"]
  loaded = mteb.ResultCache(out).load_results(require_model_meta=True, include_remote=False)
  [model_result] = loaded.model_results
  assert (model_result.model_name, model_result.model_revision) == ("local/m", revision)
  assert {t.task_name: t.get_score() for t in model_result.task_results} == pytest.approx(
      {r["task"]: r["score"] for r in summary["tasks"]})
  md = open(os.path.join(out, "summary.md")).read()
  for t in ("STS", "Classification", "Clustering", "Retrieval", "PairClassification", "Reranking", "**all**"):
    assert f"| {t} |" in md
  assert summary["average"] == pytest.approx(np.mean([r["score"] for r in summary["tasks"]]))
  assert (summary["name"], summary["revision"], summary["failed"]) == ("local/m", revision, [])


@pytest.mark.slow
def test_rerun_reads_every_embedding_from_the_cache(evaluated, model_dir, capsys):
  out, summary, first = evaluated
  assert " 0 hits" in first
  assert eval_cli.main(["--model", model_dir, "--data-dir", FIXTURES, "--output", out, "--max-length", str(MAX_LEN)]) == 0
  second = capsys.readouterr().out
  assert " 0 misses" in second and " 0 hits" not in second
  again = json.load(open(os.path.join(out, "summary.json")))["tasks"]
  assert [(r["task"], r["score"]) for r in again] == [(r["task"], r["score"]) for r in summary["tasks"]]


@pytest.mark.slow
def test_demo_rerun_reuses_its_embedding_cache(model_dir, tmp_path, capsys):
  """As train.finish does: evaluate WORKDIR into WORKDIR/eval, export WORKDIR/export with the results; a rerun
  finds the same revision (the workdir changed, the checkpoint did not) and every embedding in the cache."""
  work = str(tmp_path / "demo")
  assert convert_cli.main(["from-hf", "--model", model_dir, "--out", work]) == 0
  args = ["--model", work, "--data-dir", os.path.join(FIXTURES, "stsbenchmark"), "--output",
          os.path.join(work, "eval"), "--max-length", str(MAX_LEN)]
  assert eval_cli.main(args) == 0
  assert " 0 hits, 2 misses" in capsys.readouterr().out
  assert convert_cli.main(["to-hf", "--checkpoint", work, "--out", os.path.join(work, "export"), "--overwrite",
                       "--eval-results", os.path.join(work, "eval")]) == 0
  assert "STSBenchmark" in open(os.path.join(work, "export", "README.md")).read()
  assert eval_cli.main(args) == 0
  assert "2 hits, 0 misses" in capsys.readouterr().out
  assert len(os.listdir(os.path.join(work, "eval", ".embedding_cache"))) == 1
  assert len(os.listdir(os.path.join(work, "eval", "results", "local__demo"))) == 1


def test_revision_follows_the_weights_not_the_card(model_dir, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(model_dir, copy)
  with open(os.path.join(copy, "README.md"), "a") as f:
    f.write("\nedited card\n")
  os.makedirs(os.path.join(copy, ".cache"))
  assert model_lib.folder_revision(copy) == model_lib.folder_revision(model_dir)
  weights = os.path.join(copy, "model.safetensors")
  data = bytearray(open(weights, "rb").read())
  data[-1] ^= 1
  open(weights, "wb").write(bytes(data))
  assert model_lib.folder_revision(copy) != model_lib.folder_revision(model_dir)


# ----------------------------------------------------------------------------------------------------------------
# The encoder as an MTEB model


def test_encoder_through_mteb_evaluate_on_mock_tasks(model_dir, table):
  from mteb.mocks.mock_run import get_compatible_mock_tasks
  model = enc.InstructorEncoder.from_pretrained(model_dir, max_length=MAX_LEN, progress=False)
  meta = model.mteb_model_meta
  assert (meta.framework, meta.name, meta.use_instructions) == (["JAX"], "local/m", True)
  wanted = {"MockSTSTask", "MockClassificationTask", "MockClusteringTask", "MockPairClassificationTask",
            "MockRerankingTask", "MockRetrievalTask"}
  mocks = [t for t in get_compatible_mock_tasks(model) if t.metadata.name in wanted]
  assert {t.metadata.name for t in mocks} == wanted
  results = mteb.evaluate(model, mocks, cache=None, raise_error=True, show_progress_bar=False)
  assert {r.task_name for r in results.task_results} == wanted
  assert all(np.isfinite(r.get_score()) for r in results.task_results)
  retrieval = model.instructions_used("MockRetrievalTask")
  assert retrieval["query"] == enc.GENERIC["Retrieval"]["query"] != retrieval["document"]
  assert model.instructions_used("MockSTSTask") == {"text": enc.GENERIC["STS"], "source": "generic STS"}
  # ModelMeta.load_model() rebuilds the same encoder through its loader.
  again = meta.load_model()
  assert isinstance(again, enc.InstructorEncoder) and again.mteb_model_meta.revision == meta.revision


def test_orbax_checkpoint_and_torch_backend_give_the_same_scores(model_dir, tmp_path):
  """--model accepts an orbax workdir (from-hf) and --backend torch (T5EncoderModel) agrees with jax."""
  work = str(tmp_path / "work")
  assert convert_cli.main(["from-hf", "--model", model_dir, "--out", work]) == 0
  scores, frameworks = {}, {}
  for name, model, backend in (("jax", model_dir, "jax"), ("orbax", work, "jax"), ("torch", model_dir, "torch"),
                               ("orbax-torch", work, "torch")):
    out = str(tmp_path / name)
    assert eval_cli.main(["--model", model, "--backend", backend, "--data-dir", os.path.join(FIXTURES, "stsbenchmark"),
                    "--output", out, "--max-length", str(MAX_LEN)]) == 0
    s = json.load(open(os.path.join(out, "summary.json")))
    scores[name] = s["tasks"][0]["score"]
    frameworks[name] = json.load(open(os.path.join(out, s["tasks"][0]["result"].rsplit("/", 1)[0],
                                                   "model_meta.json")))["framework"]
  assert max(scores.values()) - min(scores.values()) < 1e-5, scores
  assert frameworks == {"jax": ["JAX"], "orbax": ["JAX"], "torch": ["PyTorch"], "orbax-torch": ["PyTorch"]}


# ----------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_no_instructions_and_task_filter(model_dir, inst, tmp_path):
  out = str(tmp_path / "out")
  assert eval_cli.main(["--model", model_dir, "--data-dir", FIXTURES, "--tasks", "STS", "--output", out,
                  "--no-instructions", "--max-length", str(MAX_LEN), "--cache-dir", "none"]) == 0
  s = json.load(open(os.path.join(out, "summary.json")))
  assert [t["task"] for t in s["tasks"]] == ["STSBenchmark"] and s["tasks"][0]["instruction"] == ""
  assert s["tasks"][0]["instruction_source"] == "none" and s["instructions"] == "none"
  lines = [l.split("\t") for l in open(os.path.join(FIXTURES, "stsbenchmark", "sts-test.csv")).read().splitlines()]
  e1, e2 = inst.encode([c[5] for c in lines]), inst.encode([c[6] for c in lines])
  want = spearmanr([float(c[4]) for c in lines], np.sum(_unit(e1) * _unit(e2), -1))[0]
  assert s["tasks"][0]["score"] == pytest.approx(want, abs=1e-6)
  assert eval_cli.main(["--model", model_dir, "--data-dir", FIXTURES, "--tasks", "NoSuchTask", "--output", out]) == 2


def test_list_tasks(model_dir, capsys):
  assert eval_cli.main(["--list-tasks", "--data-dir", FORMATS, "--model", model_dir]) == 0
  text = capsys.readouterr().out
  rows = {l.split(" | ")[0].strip("| "): l for l in text.splitlines() if l.startswith("| ") and " local " in l}
  assert set(rows) == {"AGNewsTitlesClustering", "MRPC", "SICK-R", "SICK-R.official", "TrecQAReranking",
                       "TwitterPIT2015", "TwitterURLCorpusTest", "WikiQAReranking"}
  assert "| STS |" in rows["SICK-R"] and "table hkunlp/instructor-base" in rows["SICK-R"]
  assert "(SICK-R, adapted_from)" in rows["SICK-R.official"] and "generic Reranking" in rows["WikiQAReranking"]
  assert eval_cli.main(["--list-tasks", "--tasks", "SciFact,STSBenchmark.v2"]) == 0
  text = capsys.readouterr().out
  scifact = next(l for l in text.splitlines() if l.startswith("| SciFact |"))
  assert "Represent a Scientific query" in scifact and "represent the Scientific passage" in scifact
  assert "(STSBenchmark, adapted_from)" in next(l for l in text.splitlines() if l.startswith("| STSBenchmark.v2 |"))
  assert eval_cli.main(["--list-tasks"]) == 0
  text = capsys.readouterr().out
  assert "| Banking77Classification | Classification | mteb |" in text and "generic Retrieval" in text


def test_offline_mteb_task_fails_clearly(model_dir, tmp_path, capsys, monkeypatch):
  import datasets
  from huggingface_hub import constants
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
  out = str(tmp_path / "out")
  assert eval_cli.main(["--model", model_dir, "--tasks", "STSBenchmark", "--output", out, "--max-length", "32"]) == 1
  err = capsys.readouterr().err
  assert "error: STSBenchmark:" in err and "--data-dir" in err and "no summary written" in err
  assert not os.path.exists(os.path.join(out, "summary.json"))


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
  code = eval_cli.main(["--model", model_dir, "--data-dir", str(d), "--output", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert code == 2 and want in err, err


def test_readers_of_the_real_layouts():
  assert readers.read_msrp(os.path.join(FORMATS, "msrp", "msr_paraphrase_test.txt")) == {
      "sentence1": ["A b c.", "X y."], "sentence2": ["A b c d.", "Z w."], "label": [1, 0]}
  assert readers.read_pit(os.path.join(FORMATS, "twitter-semeval2015"), "dev")["label"] == [1, 0]  # (2, 3) dropped
  assert readers.read_agnews(os.path.join(FORMATS, "agnews", "test.csv"))["label"] == ["1", "2", "1"]
  assert readers.read_trecqa(os.path.join(FORMATS, "trecqa", "TEST.xml"))["samples"] == [
      {"query": "What is it ?", "positive": ["It is a thing ."], "negative": ["No .", "Maybe ."]}]
  beir = readers.read_beir(os.path.join(FIXTURES, "retrieval-synthetic"), "test")
  assert beir["corpus"]["d1"] == {"title": "Llamas", "text": "The llama is a domesticated South American camelid "
                                                             "used as a pack animal."}
