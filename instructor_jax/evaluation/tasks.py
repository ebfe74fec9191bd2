"""mteb task objects for local data: our task classes for the sets that are not MTEB data, and the injection of
reader columns (``evaluation/readers.py``) into any mteb task (``inject``).

Rule: a local set that *is* an MTEB task's evaluation split is loaded into mteb's own task object
(``mteb.get_task(name)``); a set that is not MTEB data gets a class here, configured like its closest MTEB sibling
(``_like``; each class says which and why), so mteb's evaluators score every task and no metric is written here.
``generic_task`` builds a class for a folder in a generic layout (``task.json`` / column tables) the same way.
"""
from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import mteb
from datasets import Dataset, DatasetDict
from mteb.abstasks import (AbsTask, AbsTaskClassification, AbsTaskClustering, AbsTaskPairClassification,
                           AbsTaskRetrieval, AbsTaskSTS)
from mteb.abstasks.task_metadata import TaskMetadata

from instructor_jax.evaluation.readers import DataError

TASK_TYPES = ("STS", "Retrieval", "Classification", "Clustering", "PairClassification", "Reranking")
BASES = {"STS": AbsTaskSTS, "Classification": AbsTaskClassification, "Clustering": AbsTaskClustering,
         "PairClassification": AbsTaskPairClassification, "Retrieval": AbsTaskRetrieval,
         "Reranking": AbsTaskRetrieval}
# The main score of a generic local task: what MTEB's tasks of that type report (AskUbuntuDupQuestions for
# reranking, SciFact for retrieval, ...).
MAIN_SCORE = {"STS": "cosine_spearman", "Retrieval": "ndcg_at_10", "Classification": "accuracy",
              "Clustering": "v_measure", "PairClassification": "max_ap", "Reranking": "map_at_1000"}
LOCAL_DATASET = {"path": "local", "revision": "local"}  # replaced by inject()


def _like(sibling: str, name: str, description: str, reference: str | None = None, **fields) -> TaskMetadata:
  """The metadata of MTEB task ``sibling`` under our name: same type, category, main score, languages and splits;
  no dataset on the hub (``LOCAL_DATASET``) and no task prompt (the sibling's prompt describes other data).

  A set that is not MTEB data gets a class on mteb's abstract task of its type, configured like its closest MTEB
  sibling (metadata copied, then renamed and re-described here)."""
  base = mteb.get_task(sibling).metadata
  update = dict(name=name, description=description, reference=reference, dataset=dict(LOCAL_DATASET), prompt=None,
                bibtex_citation="", superseded_by=None, adapted_from=None, eval_splits=["test"])
  update.update(fields)
  return base.model_copy(update=update, deep=True)


class SickrOfficialSTS(AbsTaskSTS):
  """SICK relatedness on the official split files (``SICK_{train,trial,test_annotated}.txt``).

  Like SICK-R; a stand-in because MTEB's SICK-R test split is all 9,927 pairs (official test: 4,927).
  """
  min_score, max_score = 0, 5  # as mteb's SICK-R (scores are 1-5; min-max normalisation does not move Spearman)
  metadata = _like("SICK-R", "SICK-R.official",
                   "SICK-R relatedness on the official SemEval-2014 split files (test: SICK_test_annotated.txt, "
                   "4,927 pairs). MTEB's SICK-R test split is the whole corpus (9,927 pairs).",
                   "https://aclanthology.org/L14-1314/", adapted_from=["SICK-R"])


class TwitterPIT2015(AbsTaskPairClassification):
  """SemEval-2015 PIT (paraphrase in Twitter), official test set; debatable pairs dropped.

  Like TwitterSemEval2015; a stand-in because that MTEB test split has 16,777 pairs (official: 838
  non-debatable).
  """
  metadata = _like("TwitterSemEval2015", "TwitterPIT2015",
                   "SemEval-2015 Task 1 (PIT) paraphrase pairs of tweets, the official test set without the "
                   "debatable pairs. Not MTEB's TwitterSemEval2015 split (16,777 pairs).",
                   "https://github.com/cocoxu/SemEval-PIT2015")


class TwitterURLCorpusTest(AbsTaskPairClassification):
  """Twitter URL paraphrase corpus, its test file; pairs with 2 or 3 of 6 votes dropped.

  Like TwitterURLCorpus; a stand-in for the corpus's ``testNew`` file (MTEB's split has 51,534 pairs).
  """
  metadata = _like("TwitterURLCorpus", "TwitterURLCorpusTest",
                   "Twitter URL paraphrase corpus, the test file (Twitter_URL_Corpus_test*.txt): >= 4 of 6 votes "
                   "paraphrase, <= 1 not, 2-3 dropped. Not MTEB's TwitterURLCorpus split (51,534 pairs).",
                   "https://github.com/lanwuwei/Twitter-URL-Corpus")


class MRPC(AbsTaskPairClassification):
  """Microsoft Research Paraphrase Corpus (news sentence pairs), binary paraphrase labels.

  Like TwitterSemEval2015; no MTEB task.
  """
  metadata = _like("TwitterSemEval2015", "MRPC",
                   "Microsoft Research Paraphrase Corpus: pairs of news sentences labelled paraphrase or not.",
                   "https://www.microsoft.com/en-us/download/details.aspx?id=52398", domains=["News", "Written"],
                   license="not specified")


class AGNewsTitlesClustering(AbsTaskClustering):
  """AG News test titles clustered by their 4 classes (World, Sports, Business, Sci/Tech).

  Like TwentyNewsgroupsClustering.v2; no MTEB task. Every title is embedded (4% of 7,600 would be 304 titles;
  20NG.v2 embeds 2,381).
  """
  max_fraction_of_documents_to_embed = None  # all titles (see the class docstring)
  metadata = _like("TwentyNewsgroupsClustering.v2", "AGNewsTitlesClustering",
                   "Clustering of AG News test titles by their 4 classes.",
                   "https://proceedings.neurips.cc/paper/2015/hash/250cf8b51c773f3f8dc8b4be867a9a02-Abstract.html",
                   license="not specified")


class WikiQAReranking(AbsTaskRetrieval):
  """WikiQA answer-sentence selection: rank each question's candidate sentences.

  Like AskUbuntuDupQuestions; no MTEB task. MAP over each question's candidates (``map_at_1000``).
  """
  metadata = _like("AskUbuntuDupQuestions", "WikiQAReranking",
                   "WikiQA: rerank each question's candidate Wikipedia sentences; questions without a correct "
                   "answer are skipped (mteb scores only queries with a relevant candidate).",
                   "https://aclanthology.org/D15-1237/", domains=["Encyclopaedic", "Written"],
                   license="not specified")


class TrecQAReranking(AbsTaskRetrieval):
  """TrecQA answer-sentence selection: rank each question's candidate sentences.

  Like AskUbuntuDupQuestions; no MTEB task. MAP over each question's candidates (``map_at_1000``).
  """
  metadata = _like("AskUbuntuDupQuestions", "TrecQAReranking",
                   "TrecQA (TREC 8-13 QA): rerank each question's candidate answer sentences.",
                   "https://aclanthology.org/D07-1003/", domains=["News", "Written"], license="not specified")


STAND_INS = {cls.metadata.name: cls for cls in (SickrOfficialSTS, TwitterPIT2015, TwitterURLCorpusTest, MRPC,
                                                AGNewsTitlesClustering, WikiQAReranking, TrecQAReranking)}


def generic_task(name: str, task_type: str, folder: str) -> AbsTask:
  """A task object for a folder in a generic layout: mteb's abstract task of ``task_type`` with MTEB's main score
  of that type; clustering embeds every text (a local set is small)."""
  if task_type not in BASES:
    raise DataError(f"{folder}: unknown task type {task_type!r} (one of {', '.join(TASK_TYPES)})")
  meta = TaskMetadata(name=name, description=f"Local {task_type} task read from {folder}.", type=task_type,
                      dataset=dict(LOCAL_DATASET), category="t2c" if task_type in ("Classification", "Clustering")
                      else "t2t", modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"],
                      main_score=MAIN_SCORE[task_type])
  attrs = {"metadata": meta, "__doc__": meta.description}
  if task_type == "Clustering":
    attrs["max_fraction_of_documents_to_embed"] = None
  cls = type(name.replace("-", "_").replace(".", "_"), (BASES[task_type],), attrs)
  return cls()


def files_revision(files: Sequence[str]) -> str:
  """``local-<12 hex>``: sha256 over the bytes of the files a task was read from (in the given order)."""
  h = hashlib.sha256()
  for path in files:
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
  return "local-" + h.hexdigest()[:12]


def _pairs_check(cols: Mapping, where: str) -> None:
  labels = set(cols["label"])
  if len(cols["label"]) < 2 or not labels <= {0, 1} or len(labels) < 2:
    raise DataError(f"{where}: pair classification needs at least 2 pairs with both labels 0 and 1, got "
                    f"{len(cols['label'])} pairs with labels {sorted(labels)}")


def _reranking(samples: Sequence[Mapping], where: str) -> dict:
  """Reranking samples -> mteb's retrieval layout: query ``q{i}``, its candidates ``q{i}-d{j}`` (positives
  relevant with score 1) and ``top_ranked`` = the candidates (mteb reranks only those)."""
  corpus = {"id": [], "title": [], "text": []}
  queries = {"id": [], "text": []}
  relevant, top_ranked = {}, {}
  for i, s in enumerate(samples):
    qid = f"q{i}"
    queries["id"].append(qid)
    queries["text"].append(s["query"])
    ids = []
    for j, (doc, rel) in enumerate([(d, 1) for d in s["positive"]] + [(d, 0) for d in s["negative"]]):
      did = f"{qid}-d{j}"
      corpus["id"].append(did)
      corpus["title"].append("")
      corpus["text"].append(doc)
      ids.append(did)
      if rel:
        relevant.setdefault(qid, {})[did] = 1
    top_ranked[qid] = ids
  if not relevant:
    raise DataError(f"{where}: no query has a positive candidate")
  return {"corpus": Dataset.from_dict(corpus), "queries": Dataset.from_dict(queries), "relevant_docs": relevant,
          "top_ranked": top_ranked}


def _retrieval(data: Mapping, where: str) -> dict:
  """BEIR columns -> mteb's retrieval layout (``corpus`` with ``title`` / ``text``; mteb joins them)."""
  ids = list(data["corpus"])
  corpus = Dataset.from_dict({"id": ids, "title": [data["corpus"][i]["title"] for i in ids],
                              "text": [data["corpus"][i]["text"] for i in ids]})
  qids = list(data["queries"])
  if not qids:
    raise DataError(f"{where}: no query with relevance judgements")
  queries = Dataset.from_dict({"id": qids, "text": [data["queries"][q] for q in qids]})
  return {"corpus": corpus, "queries": queries, "relevant_docs": dict(data["qrels"]), "top_ranked": None}


def inject(task: AbsTask, split: str, data: Mapping, files: Sequence[str], where: str) -> AbsTask:
  """Puts reader columns into ``task`` in its abstract task's ``dataset`` layout and marks it loaded.

  ``data``: STS ``{"sentence1", "sentence2", "score"}``; Classification ``{"train": {"text", "label"}, split:
  {...}}``; Clustering ``{"text", "label"}``; PairClassification ``{"sentence1", "sentence2", "label"}``;
  Retrieval BEIR columns; Reranking ``{"samples"}`` (or BEIR columns). ``task`` evaluates ``split`` only.

  The task is left as mteb's ``load_data`` would leave it (the ``dataset`` layout of its abstract task,
  ``data_loaded = True``), as mteb's own mock tasks do, with the dataset revision ``local-<sha256 of the files
  read>`` so the result says which data was scored. The injected data is already in the evaluation layout, so a
  task's ``dataset_transform`` (HF layout -> evaluation layout) is not run; the MTEB classes we inject into have
  none (``tests/test_eval.py`` checks it).
  """
  kind = task.metadata.type
  if isinstance(task, AbsTaskSTS):
    if len(data["score"]) < 2:
      raise DataError(f"{where}: an STS task needs at least 2 scored pairs, got {len(data['score'])}")
    dataset = DatasetDict({split: Dataset.from_dict({k: list(data[k]) for k in ("sentence1", "sentence2",
                                                                                "score")})})
  elif isinstance(task, AbsTaskClassification):
    if split == task.train_split:
      raise DataError(f"{where}: a classification task trains on {task.train_split!r}; evaluate another split")
    dataset = DatasetDict({s: Dataset.from_dict({"text": list(data[s]["text"]), "label": list(data[s]["label"])})
                           for s in (task.train_split, split)})
  elif isinstance(task, AbsTaskClustering):
    if len(set(data["label"])) < 2:
      raise DataError(f"{where}: clustering needs at least 2 labels, got {sorted(set(data['label']))}")
    dataset = DatasetDict({split: Dataset.from_dict({"sentences": list(data["text"]),
                                                     "labels": list(data["label"])})})
  elif isinstance(task, AbsTaskPairClassification):
    _pairs_check(data, where)
    dataset = DatasetDict({split: Dataset.from_dict({"sentence1": list(data["sentence1"]),
                                                     "sentence2": list(data["sentence2"]),
                                                     "labels": list(data["label"])})})
  elif isinstance(task, AbsTaskRetrieval):
    split_data = _reranking(data["samples"], where) if "samples" in data else _retrieval(data, where)
    dataset = {"default": {split: split_data}}
  else:
    raise DataError(f"{where}: {type(task).__name__} ({kind}) has no local reader")
  task.metadata = task.metadata.model_copy(update={"dataset": {**task.metadata.dataset,
                                                               "revision": files_revision(files)}})
  task.dataset = dataset
  task.data_loaded = True
  task.filter_eval_splits([split])
  return task
