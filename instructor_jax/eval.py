"""Evaluate an INSTRUCTOR model: MTEB 2.x tasks (online) or local task folders (offline, ``--data-dir``).

    # offline: one task folder or a folder of task folders (layouts: --help-formats)
    python -m instructor_jax.eval --model DIR --data-dir ../shared/data/eval/stsbenchmark --output results/
    # MTEB 2.x (downloads the task data): task names, task types or benchmark names
    python -m instructor_jax.eval --model DIR --tasks STSBenchmark,Banking77Classification --output results/

``--model``: an orbax workdir or ``WORKDIR/STEP`` (``checkpoints.restore_params``), an exported /
sentence-transformers / INSTRUCTOR folder, or a hub id. ``--backend jax`` (default) embeds with
``Instructor.encode``; ``--backend torch`` with ``transformers.T5EncoderModel`` / ``BertModel`` (by the model's
``config.json``) and the same INSTRUCTOR rule (an orbax checkpoint is exported to a temporary folder first). Nothing
else here depends on the backbone.

Instructions: ``--instructions`` is a JSON table (INSTRUCTOR's layout: ``{model: {task type: {task: instruction
| {"query", "corpus"}}}}`` or directly ``{task type: ...}``) or a model key of the bundled table
(``hkunlp/instructor-base|large|xl``; default: by ``d_model`` / BERT's ``hidden_size`` 768 / 1024 / 2048, else
base). A task not in the
table uses the table's entry for a representative task of its type (``FALLBACK``). Retrieval and reranking use
the query instruction for queries and the corpus instruction for documents; other types use one instruction for
every text. ``--no-instructions`` embeds the bare texts (the ablation).

Outputs in ``--output``: ``{task}.json`` in MTEB's result format, ``summary.md`` (per-task main scores and per-type
averages) and ``summary.json``; embeddings are cached in ``--cache-dir`` (default ``OUTPUT/.embedding_cache``),
keyed by model, instruction and texts, so re-runs skip the encoding.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

import numpy as np

from instructor_jax.evaluation import local

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
INSTRUCTIONS_FILE = os.path.join(ASSETS, "instructor_mteb_instructions.json")
SIZE_BY_D_MODEL = {768: "hkunlp/instructor-base", 1024: "hkunlp/instructor-large", 2048: "hkunlp/instructor-xl"}
# Task types whose texts are queries and documents (separate instructions).
ASYMMETRIC = ("Retrieval", "Reranking")
# The table entry used for a task of this type that the table does not list.
FALLBACK = {"STS": "STSBenchmark", "Classification": "Banking77Classification", "Clustering":
            "TwentyNewsgroupsClustering", "PairClassification": "SprintDuplicateQuestions",
            "Reranking": "AskUbuntuDupQuestions", "Retrieval": "MSMARCO", "Summarization": "SummEval"}
TYPE_ALIASES = {"InstructionRetrieval": "Retrieval", "InstructionReranking": "Reranking",
                "Any2AnyRetrieval": "Retrieval", "BitextMining": "STS", "Regression": "Classification",
                "MultilabelClassification": "Classification"}


# ----------------------------------------------------------------------------------------------------------------
# Instructions


def load_instruction_table(spec: str | None, d_model: int | None = None) -> dict:
  """``{task type: {task: str | {"query", "corpus"}}}`` from a JSON file or a key of the bundled table."""
  path = spec if spec and os.path.exists(spec) else INSTRUCTIONS_FILE
  with open(path, encoding="utf-8") as f:
    table = json.load(f)
  if any(k.startswith("hkunlp/") or "/" in k for k in table):  # keyed by model
    key = spec if spec in table else SIZE_BY_D_MODEL.get(d_model or 0, "hkunlp/instructor-base")
    if spec and not os.path.exists(spec) and spec not in table:
      raise ValueError(f"--instructions {spec!r}: not a file nor one of {sorted(table)}")
    if key not in table:
      key = sorted(table)[0]
    table = table[key]
  return table


def instruction_for(table: Mapping | None, task_type: str, task_name: str, role: str = "query",
                    override: Mapping | None = None) -> str:
  """The instruction for ``role`` ("query" | "corpus") of a task; "" when instructions are off."""
  if override:
    if "instruction" in override:
      return override["instruction"]
    return override.get(role, "")
  if table is None:
    return ""
  task_type = TYPE_ALIASES.get(task_type, task_type)
  entries = table.get(task_type) or {}
  entry = entries.get(task_name)
  if entry is None:
    entry = entries.get(FALLBACK.get(task_type, ""))
  if entry is None and entries:
    entry = next(iter(entries.values()))
  if entry is None:
    return ""
  if isinstance(entry, Mapping):
    return entry.get("corpus" if role in ("corpus", "document", "passage") else "query", "")
  return entry


# ----------------------------------------------------------------------------------------------------------------
# Embedders: encode(inputs: list[str | [instruction, text]]) -> float32 [N, D]


class TorchInstructor:
  """``transformers.T5EncoderModel`` / ``BertModel`` + the INSTRUCTOR pooling rule on an exported / HF folder
  (``--backend torch``)."""

  def __init__(self, folder: str, max_length: int = 512):
    self.folder, self.max_length = folder, max_length

  def encode(self, inputs: Sequence, batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
    from instructor_jax.convert import reference_encode
    return reference_encode(self.folder, list(inputs), max_length=self.max_length, batch_size=batch_size)


def _is_orbax(path: str) -> bool:
  if not os.path.isdir(path):
    return False
  if os.path.exists(os.path.join(path, "config.json")) or os.path.exists(os.path.join(path, "modules.json")):
    return False
  names = os.listdir(path)
  return any(n.isdigit() for n in names) or any(n in ("_CHECKPOINT_METADATA", "params", "meta") for n in names)


def load_embedder(model: str, backend: str = "jax", max_length: int = 512, dtype: str = "float32"):
  """``(embedder, fingerprint, d_model, cleanup)`` for a checkpoint, folder or hub id."""
  import jax.numpy as jnp
  from instructor_jax import convert
  from instructor_jax.embedder import Instructor, InstructorModel
  cleanup = lambda: None
  fingerprint = _fingerprint(model, backend, max_length, dtype)
  if _is_orbax(model):
    params, hf_config, normalize, tokenizer_dir, _, _ = convert.load_checkpoint(model)
    from instructor_jax import hf
    from instructor_jax.tokenization import Tokenizer
    cfg = hf.match_params(hf.config_from_hf(hf_config), params)
    convert.check_vocab(cfg.vocab_size, tokenizer_dir)
    if backend == "torch":
      tmp = tempfile.mkdtemp(prefix="instructor-eval-")
      folder = convert.export_folder(params, hf_config, os.path.join(tmp, "model"), tokenizer_dir=tokenizer_dir,
                                     normalize=normalize, verify=False, log=lambda *a: None)
      import shutil
      return TorchInstructor(folder, max_length), fingerprint, cfg.d_model, lambda: shutil.rmtree(tmp, True)
    import dataclasses
    import jax
    cdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    if hf.backbone(cfg) == "bert":  # no positions beyond the table (as Instructor.from_pretrained)
      max_length = min(max_length, cfg.max_position_embeddings)
    tok = Tokenizer.from_pretrained(tokenizer_dir, max_length=max_length)
    out_features = int(np.shape(params["dense"]["kernel"])[1]) if "dense" in params else None
    m = InstructorModel(dataclasses.replace(cfg, dtype=cdtype), out_features=out_features, normalize=normalize,
                        pad_id=tok.pad_id)
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float32)), params)
    return Instructor(m, params, tok, source=model), fingerprint, cfg.d_model, cleanup
  if backend == "torch":
    from instructor_jax.embedder import _resolve
    folder = _resolve(model)
    from instructor_jax import hf
    with open(os.path.join(_model_dir(folder), "config.json"), encoding="utf-8") as f:
      d_model = hf.config_from_hf(json.load(f)).d_model
    return TorchInstructor(folder, max_length), fingerprint, d_model, cleanup
  cdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  inst = Instructor.from_pretrained(model, dtype=cdtype, max_length=max_length)
  return inst, fingerprint, inst.model.config.d_model, cleanup


def _model_dir(folder: str) -> str:
  modules = os.path.join(folder, "modules.json")
  if os.path.exists(modules):
    with open(modules, encoding="utf-8") as f:
      return os.path.join(folder, json.load(f)[0].get("path", ""))
  return folder


def _fingerprint(model: str, backend: str, max_length: int, dtype: str) -> str:
  """Identifies the model for the embedding cache: path, backend, and size + mtime of every file in it."""
  h = hashlib.sha256(f"{os.path.abspath(model) if os.path.exists(model) else model}|{backend}|{max_length}|{dtype}"
                     .encode())
  if os.path.isdir(model):
    for d, _, files in sorted(os.walk(model)):
      for n in sorted(files):
        try:
          st = os.stat(os.path.join(d, n))
        except OSError:
          continue
        h.update(f"{os.path.relpath(os.path.join(d, n), model)}:{st.st_size}:{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


class CachedEncoder:
  """Encodes ``(instruction, texts)`` groups, with an on-disk cache keyed by model, instruction and texts."""

  def __init__(self, embedder, fingerprint: str, cache_dir: str | None, batch_size: int = 32,
               progress: bool = True):
    self.embedder, self.fingerprint, self.cache_dir = embedder, fingerprint, cache_dir
    self.batch_size, self.progress = batch_size, progress
    self.hits = self.misses = 0

  def __call__(self, texts: Sequence[str], instruction: str = "") -> np.ndarray:
    texts = list(texts)
    path = None
    if self.cache_dir:
      h = hashlib.sha256(self.fingerprint.encode())
      h.update(json.dumps([instruction, texts], ensure_ascii=False).encode())
      path = os.path.join(self.cache_dir, self.fingerprint, h.hexdigest() + ".npy")
      if os.path.exists(path):
        try:
          emb = np.load(path)
          if emb.shape[0] == len(texts):
            self.hits += 1
            return emb
        except (OSError, ValueError):
          pass
    inputs = [[instruction, t] for t in texts] if instruction else texts
    emb = np.asarray(self.embedder.encode(inputs, batch_size=self.batch_size,
                                          show_progress_bar=self.progress and len(texts) > 4 * self.batch_size),
                     np.float32)
    self.misses += 1
    if path:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = path + f".{os.getpid()}.tmp.npy"
      np.save(tmp, emb)
      os.replace(tmp, path)
    return emb


# ----------------------------------------------------------------------------------------------------------------
# MTEB 2.x encoder wrapper


def mteb_encoder(encoder: CachedEncoder, table: Mapping | None, name: str = "instructor_jax/model",
                 embed_dim: int | None = None):
  """Wraps ``encoder`` as an ``mteb`` 2.x encoder (``mteb.models.AbsEncoder``) choosing INSTRUCTOR instructions."""
  from mteb.models.abs_encoder import AbsEncoder
  from mteb.models.model_meta import ModelMeta, ScoringFunction

  class InstructorMTEBEncoder(AbsEncoder):
    def __init__(self):
      self.model = encoder
      self.mteb_model_meta = ModelMeta.create_empty(overwrites={
          "name": name, "revision": "local", "embed_dim": embed_dim, "similarity_fn_name": ScoringFunction.COSINE,
          "use_instructions": table is not None, "modalities": ["text"]})
      self.instructions_used: dict[str, str] = {}

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
      texts = []
      for batch in inputs:
        if "text" not in batch:
          raise ValueError(f"{task_metadata.name}: only text inputs are supported, got {sorted(batch)}")
        texts.extend(batch["text"])
      role = "corpus" if prompt_type is not None and str(getattr(prompt_type, "value", prompt_type)) == "document" \
          else "query"
      instruction = instruction_for(table, task_metadata.type, task_metadata.name, role)
      self.instructions_used[f"{task_metadata.name}/{role}"] = instruction
      return encoder(texts, instruction)

  return InstructorMTEBEncoder()


def run_mteb(encoder: CachedEncoder, table, tasks_spec: Sequence[str], output: str, name: str, embed_dim,
             log=print) -> tuple[list[dict], list[str]]:
  """Evaluates MTEB tasks; returns ``(summary rows, names of the tasks that failed)``."""
  import mteb
  tasks = select_mteb_tasks(tasks_spec)
  model = mteb_encoder(encoder, table, name=name, embed_dim=embed_dim)
  results = mteb.evaluate(model, tasks, cache=None, show_progress_bar=True, raise_error=False)
  failed = list(results.exceptions or [])
  for exc in failed:
    log(f"error: {exc.task_name}: {exc.exception}")
  rows = []
  meta = {t.metadata.name: t.metadata for t in tasks}
  for r in results.task_results:
    path = os.path.join(output, f"{r.task_name}.json")
    with open(path, "w", encoding="utf-8") as f:
      json.dump(r.to_dict(), f, indent=2, default=str)
    md = meta[r.task_name]
    mains = [float(s["main_score"]) for split in r.scores.values() for s in split]
    rows.append({"task": r.task_name, "type": md.type, "metric": md.main_score, "score": float(np.mean(mains)),
                 "split": ",".join(r.scores), "instruction": model.instructions_used.get(f"{r.task_name}/query")})
    log(f"{r.task_name}: {rows[-1]['score']:.4f}")
  return rows, [e.task_name for e in failed]


def select_mteb_tasks(specs: Sequence[str]):
  """Task names, task types (``STS``, ``Retrieval``...) or benchmark names -> mteb task objects."""
  import mteb
  from mteb.abstasks.task_metadata import TaskType
  import typing
  types = set(typing.get_args(TaskType)) if typing.get_args(TaskType) else set()
  out, seen = [], set()
  for spec in specs:
    if spec in types or spec in TYPE_ALIASES or spec in FALLBACK:
      found = list(mteb.get_tasks(task_types=[spec], languages=["eng"]))
    else:
      try:
        found = list(mteb.get_tasks(tasks=[spec]))
      except Exception:
        try:
          found = list(mteb.get_benchmark(spec).tasks)
        except Exception as e:
          raise ValueError(f"--tasks: {spec!r} is neither an MTEB task, a task type nor a benchmark ({e})") from e
    for t in found:
      if t.metadata.name not in seen:
        seen.add(t.metadata.name)
        out.append(t)
  return out


# ----------------------------------------------------------------------------------------------------------------
# Offline tasks


def mteb_result_json(task_name: str, split: str, scores: dict, main_metric: str, seconds: float,
                     dataset_revision: str | None = None) -> dict:
  """A task result in MTEB's JSON layout (``TaskResult.to_dict``)."""
  try:
    import mteb
    version = mteb.__version__
  except Exception:  # pragma: no cover
    version = None
  entry = {k: v for k, v in scores.items() if k != "scores_per_experiment"}
  entry.update({"main_score": float(scores[main_metric]), "hf_subset": "default", "languages": ["eng-Latn"]})
  if "scores_per_experiment" in scores:
    entry["scores_per_experiment"] = scores["scores_per_experiment"]
  return {"dataset_revision": dataset_revision or "local", "task_name": task_name, "mteb_version": version,
          "scores": {split: [entry]}, "evaluation_time": seconds, "kg_co2_emissions": None}


def run_local(encoder: CachedEncoder, table, data_dir: str, output: str, split: str = "test",
              only: Sequence[str] | None = None, log=print) -> list[dict]:
  tasks = local.discover(data_dir, split)
  if only:
    wanted = {s.lower() for s in only}
    tasks = [t for t in tasks if t.name.lower() in wanted or t.type.lower() in wanted
             or os.path.basename(t.folder).lower() in wanted]
    if not tasks:
      raise local.DataError(f"{data_dir}: no task matches --tasks {','.join(only)}")
  rows = []
  for task in tasks:
    start = time.time()
    log(f"{task.name} ({task.type}, {task.folder}, split {task.split}); instruction "
        f"{instruction_for(table, task.type, task.mteb_name or task.name, 'query', task.instructions)!r}"
        + (f", corpus {instruction_for(table, task.type, task.mteb_name or task.name, 'corpus', task.instructions)!r}"
           if task.type in ASYMMETRIC else ""))
    data = task.load()

    def embed(texts, role, task=task):
      return encoder(texts, instruction_for(table, task.type, task.mteb_name or task.name, role, task.instructions))

    scores = local.score(task, data, embed)
    metric = local.MAIN_SCORE[task.type]
    result = mteb_result_json(task.name, task.split, scores, metric, time.time() - start)
    with open(os.path.join(output, f"{task.name}.json"), "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
    rows.append({"task": task.name, "type": task.type, "metric": metric, "score": float(scores[metric]),
                 "split": task.split, "folder": task.folder,
                 "instruction": instruction_for(table, task.type, task.mteb_name or task.name, "query",
                                                task.instructions)})
    log(f"  {metric} = {scores[metric]:.4f}  ({time.time() - start:.1f}s)")
  return rows


# ----------------------------------------------------------------------------------------------------------------
# Summary


def write_summary(rows: list[dict], output: str, model: str, meta: Mapping[str, Any]) -> str:
  by_type: dict[str, list[float]] = {}
  for r in rows:
    by_type.setdefault(r["type"], []).append(r["score"])
  averages = {t: float(np.mean(v)) for t, v in by_type.items()}
  overall = float(np.mean([r["score"] for r in rows])) if rows else float("nan")
  lines = [f"# Evaluation of `{model}`", "", ", ".join(f"{k}: {v}" for k, v in meta.items()), "",
           "| task | type | split | metric | score | instruction |", "|---|---|---|---|---:|---|"]
  for r in rows:
    instr = r.get("instruction")
    instr = "" if instr is None else (f"`{instr}`" if instr else "(none)")
    lines.append(f"| {r['task']} | {r['type']} | {r.get('split', '')} | {r['metric']} | {100 * r['score']:.2f} | "
                 f"{instr} |")
  lines += ["", "| task type | tasks | average |", "|---|---:|---:|"]
  for t, v in averages.items():
    lines.append(f"| {t} | {len(by_type[t])} | {100 * v:.2f} |")
  lines.append(f"| **all** | {len(rows)} | {100 * overall:.2f} |")
  md = "\n".join(lines) + "\n"
  with open(os.path.join(output, "summary.md"), "w", encoding="utf-8") as f:
    f.write(md)
  with open(os.path.join(output, "summary.json"), "w", encoding="utf-8") as f:
    json.dump({"model": model, **meta, "tasks": rows, "type_averages": averages, "average": overall}, f, indent=2)
  return md


# ----------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m instructor_jax.eval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", help="orbax workdir[/STEP], exported / HF folder, or hub id")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--data-dir", help="local task folder, or a folder of task folders (offline)")
  p.add_argument("--tasks", help="comma-separated MTEB task names, task types or benchmarks; with --data-dir: a "
                                 "filter on local task names / types / folder names")
  p.add_argument("--split", default="test", help="local split (test, dev, train); default test")
  p.add_argument("--output", default="eval_results", help="output folder (default eval_results)")
  p.add_argument("--backend", choices=("jax", "torch"), default="jax")
  p.add_argument("--instructions", help="instruction table JSON or hkunlp/instructor-{base,large,xl} "
                                        "(default: bundled INSTRUCTOR table for the model size)")
  p.add_argument("--no-instructions", action="store_true", help="embed the bare texts (ablation)")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--max-length", type=int, default=512)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype (jax backend)")
  p.add_argument("--cache-dir", help="embedding cache (default OUTPUT/.embedding_cache); 'none' disables it")
  p.add_argument("--help-formats", action="store_true", help="print the local data layouts and exit")
  args = p.parse_args(argv)
  if args.help_formats:
    print(local.__doc__)
    return 0
  if not args.model:
    p.error("--model is required")
  if not args.data_dir and not args.tasks:
    p.error("give --data-dir (offline) or --tasks (MTEB)")
  os.makedirs(args.output, exist_ok=True)
  cache_dir = None if (args.cache_dir or "").lower() == "none" else (
      args.cache_dir or os.path.join(args.output, ".embedding_cache"))
  try:
    if args.data_dir:  # fail on unreadable data before loading the model
      local.discover(args.data_dir, args.split)
    embedder, fingerprint, d_model, cleanup = load_embedder(args.model, args.backend, args.max_length, args.dtype)
  except (local.DataError, ValueError, FileNotFoundError) as e:  # ConvertError / CheckpointError are ValueErrors
    print(f"error: {e}", file=sys.stderr)
    return 1
  try:
    table = None if args.no_instructions else load_instruction_table(args.instructions, d_model)
    encoder = CachedEncoder(embedder, fingerprint, cache_dir, batch_size=args.batch_size)
    specs = [s.strip() for s in (args.tasks or "").split(",") if s.strip()]
    failed = []
    if args.data_dir:
      rows = run_local(encoder, table, args.data_dir, args.output, args.split, specs or None)
    else:
      rows, failed = run_mteb(encoder, table, specs, args.output, name=os.path.basename(os.path.normpath(args.model)),
                      embed_dim=getattr(embedder, "dim", None))
    meta = {"backend": args.backend, "instructions": "none" if table is None else (args.instructions or "bundled"),
            "max_length": args.max_length, "dtype": args.dtype}
    print(write_summary(rows, args.output, args.model, meta))
    print(f"embedding cache: {encoder.hits} hits, {encoder.misses} misses")
    if failed:
      print(f"error: {len(failed)} MTEB task(s) failed: {', '.join(failed)}", file=sys.stderr)
      return 1
    return 0
  except local.DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  finally:
    cleanup()


if __name__ == "__main__":
  sys.exit(main())
