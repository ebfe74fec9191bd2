"""Evaluate an INSTRUCTOR model with MTEB: local task folders (offline, ``--data-dir``) or MTEB 2.x tasks.

    # offline, task folder(s) (layouts: --help-formats; data: README.md; sample: tests/fixtures/eval/stsbenchmark)
    python -m instructor_jax.eval --model DIR --data-dir data/eval --output results/
    # MTEB 2.x (the task data from the Hugging Face hub or its local cache): task names, task types or benchmarks
    python -m instructor_jax.eval --model DIR --tasks STSBenchmark,Banking77Classification --output results/
    python -m instructor_jax.eval --list-tasks [--data-dir DIR] [--tasks ...]   # tasks, types and instructions

Results go to --output in MTEB's layout (mteb.ResultCache) plus summary.md / summary.json; exit status 1 if any
task failed. Instructions, outputs, cache and --truncate-dim: see evaluate() in evaluation/runner.py.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from instructor_jax.core import log
from instructor_jax.evaluation import local, model as model_lib
from instructor_jax.storage import files
from instructor_jax.evaluation.encoder import Instructions, InstructorEncoder, load_instruction_table

load_embedder = model_lib.load_embedder  # (embedder, ModelInfo, d_model, cleanup): the demo test and test_bert use it
# INSTRUCTOR's task types; with --list-tasks and no --tasks, the English MTEB tasks of these types are listed.
INSTRUCTOR_TYPES = ("Retrieval", "Reranking", "Clustering", "PairClassification", "Classification", "STS",
                    "Summarization")


def select_mteb_tasks(specs: Sequence[str]) -> list:
  """Task names, task types (``STS``, ``Retrieval``...) or benchmark names -> mteb task objects (English only
  for a type)."""
  import typing

  import mteb
  from mteb.abstasks.task_metadata import TaskType
  types = set(typing.get_args(TaskType))
  out, seen = [], set()
  for spec in specs:
    if spec in types:
      found = list(mteb.get_tasks(task_types=[spec], languages=["eng"], modalities=["text"]))
    else:
      try:
        found = list(mteb.get_tasks(tasks=[spec]))
      except Exception:  # noqa: BLE001 -- not a task name: try a benchmark
        try:
          found = list(mteb.get_benchmark(spec).tasks)
        except Exception as e:  # noqa: BLE001
          raise ValueError(f"--tasks: {spec!r} is neither an MTEB task, a task type nor a benchmark") from e
    for t in found:
      if t.metadata.name not in seen:
        seen.add(t.metadata.name)
        out.append(t)
  return out


def _offline() -> bool:
  from huggingface_hub import constants
  return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0")


def _instruction_cells(instructions: Instructions, metadata) -> tuple[str, str]:
  """``(instruction(s), source)`` of a task for tables: ``query / document`` for retrieval-type tasks."""
  args = (metadata.name, metadata.type)
  adapted = tuple(metadata.adapted_from or ())
  if metadata.type in ("Retrieval", "Reranking", "InstructionRetrieval", "InstructionReranking"):
    q, d = instructions.get(*args, "query", adapted), instructions.get(*args, "document", adapted)
    return (f"`{q.text}` / `{d.text}`" if q.text or d.text else "(none)"), q.source
  ins = instructions.get(*args, "text", adapted)
  return (f"`{ins.text}`" if ins.text else "(none)"), ins.source


def list_tasks(args, out=print) -> int:
  """``--list-tasks``: the local tasks of ``--data-dir``, or MTEB's tasks (``--tasks``; default: the English text
  tasks of INSTRUCTOR's types, superseded ones included), with type and the instructions a run would use."""
  table, table_name = (None, "") if args.no_instructions else load_instruction_table(
      args.instructions, model_lib.d_model_of(args.model))
  specs = [s.strip() for s in (args.tasks or "").split(",") if s.strip()]
  rows = []
  if args.data_dir:
    found = local.discover(args.data_dir, args.split, note=lambda m: print(f"note: {m}", file=sys.stderr))
    found = local.select(found, specs) if specs else found
    instructions = Instructions(table, table_name, {t.name: t.instructions for t in found if t.instructions})
    for t in found:
      rows.append((t.name, t.type, f"local {t.folder}", *_instruction_cells(instructions, t.make().metadata)))
  else:
    import mteb
    instructions = Instructions(table, table_name)
    tasks = select_mteb_tasks(specs) if specs else mteb.get_tasks(
        task_types=list(INSTRUCTOR_TYPES), languages=["eng"], modalities=["text"], exclude_superseded=False)
    for t in tasks:
      rows.append((t.metadata.name, t.metadata.type, "mteb", *_instruction_cells(instructions, t.metadata)))
  out(f"instructions: {table_name or 'none'}")
  out("| task | type | data | instruction (query / document) | source |\n|---|---|---|---|---|")
  for r in rows:
    out("| " + " | ".join(r) + " |")
  return 0


def _local_tasks(args, specs):
  return local_tasks(args.data_dir, args.split, specs)


def local_tasks(data_dir: str, split: str = "test", specs: Sequence[str] = (), max_examples: int = 0) -> list:
  """``[(local task, mteb task)]`` of the task folder(s) in ``data_dir`` (``specs`` filters them; ``max_examples``:
  a fixed random subset of each, ``local.subsample``); every file is read here, before the model is loaded."""
  found = local.discover(data_dir, split, note=lambda m: log.info(f"note: {m}"))
  found = local.select(found, list(specs)) if specs else found
  return [(t, t.build(max_examples)) for t in found]


def evaluate(model: str, *, data_dir: str | None = None, output: str, tasks: Sequence[str] = (), split: str = "test",
             max_length: int = 512, batch_size: int = 32, dtype: str = "float32", backend: str = "jax",
             instructions: str | None = None, no_instructions: bool = False, model_name: str | None = None,
             cache_dir: str | None = None, truncate_dims: Sequence[int] = (), max_examples: int = 0,
             say=print) -> dict:
  """Evaluates ``model`` (an orbax workdir[/STEP], an exported / HF folder or a hub id) on the local task folders
  of ``data_dir`` (``tasks`` filters them) or on the MTEB ``tasks``; writes MTEB's results and the summary to
  ``output``. Returns ``{"rows", "failed": [(task, error)], "summary": markdown or None, "output"}``.
  ``cache_dir``: None = ``OUTPUT/.embedding_cache``, ``"none"`` = no cache. ``truncate_dims``: Matryoshka
  dimensions, one result set each (``InstructorEncoder.truncated``); rows then carry ``dim``. ``max_examples``: at
  most that many examples per local task, a fixed random subset (``local.subsample``; 0 = all). ``model`` may also
  be a ``model.InMemory`` (an ``Instructor`` already loaded, e.g. the trainer's current parameters).

  ``local.discover`` reads the local tasks into mteb's own task objects (or our stand-ins for sets that are not
  MTEB data, ``evaluation/tasks.py``); ``encoder.InstructorEncoder`` is the model (``backend="jax"`` embeds with
  ``Instructor.encode``, ``"torch"`` with transformers and the same rule); ``mteb.evaluate`` scores every task.
  Instructions: INSTRUCTOR's table for the model's size (``instructions``: a file or ``hkunlp/instructor-*``), a
  task's own (``task.json``), or a generic one per task type the table does not list (``evaluation/encoder.py``);
  ``no_instructions`` embeds the bare texts; each result records the instructions it used. ``output`` is read by
  ``mteb.ResultCache(OUTPUT)``: ``results/{org__model}/{revision}/{Task}.json`` + ``model_meta.json`` (name:
  ``model_name``, the hub id or ``local/<folder>``; revision: the hub commit or a content hash of the weights),
  beside them ``summary.md`` (per-task main scores, per-type averages) and ``summary.json``. The embedding cache is
  keyed by the model's revision, the instruction and the texts, so a rerun skips the encoding. With
  ``truncate_dims`` each k is a result set under ``org/name-d{k}`` (same revision; the full embeddings are encoded
  once) and ``summary.md`` gains a table of scores against the dimension."""
  from instructor_jax.core import cli, errors
  from instructor_jax.storage import paths
  if data_dir and paths.scheme(data_dir):
    data_dir = paths.local_copy(paths.check(data_dir, "--data-dir"))
  if paths.scheme(output):  # mteb writes local files: evaluate into a local folder, then upload it whole
    output = paths.check(output, "--output")
    with tempfile.TemporaryDirectory(prefix="instructor_jax-eval-") as tmp:
      out = evaluate(model, data_dir=data_dir, output=tmp, tasks=tasks, split=split, max_length=max_length,
                     batch_size=batch_size, dtype=dtype, backend=backend, instructions=instructions,
                     no_instructions=no_instructions, model_name=model_name,
                     cache_dir=cache_dir if cache_dir else "none", truncate_dims=truncate_dims,
                     max_examples=max_examples, say=say)
      paths.upload(tmp, output, last=("summary.json",))
    return dict(out, output=output)
  specs = [t.strip() for t in tasks if t.strip()]
  dims = list(dict.fromkeys(int(k) for k in truncate_dims or ()))
  if any(k < 1 for k in dims):
    raise errors.ConfigError(f"--truncate-dim {','.join(map(str, dims))}: every dimension must be >= 1")
  if int(max_examples) < 0:
    raise errors.ConfigError(f"--max-examples {max_examples}: must be >= 0 (0 = every example)")
  if not data_dir and not specs:
    raise errors.ConfigError("evaluate needs data_dir (offline task folders) or tasks (MTEB)")
  try:
    if max_examples and not data_dir:
      raise errors.ConfigError("max_examples subsamples local task folders (data_dir); MTEB tasks are evaluated whole")
    selected = (local_tasks(data_dir, split, specs, max_examples) if data_dir
                else [(None, t) for t in select_mteb_tasks(specs)])
    task_instructions = {lt.name: lt.instructions for lt, _ in selected if lt and lt.instructions}
    cache_dir = None if (cache_dir or "").lower() == "none" else (
        cache_dir or os.path.join(output, ".embedding_cache"))
    encoder = InstructorEncoder.from_pretrained(
        model, backend=backend, max_length=max_length, dtype=dtype, instructions=instructions,
        no_instructions=no_instructions, task_instructions=task_instructions, cache_dir=cache_dir,
        batch_size=batch_size, name=model_name)
  except errors.UserError:
    raise
  except ValueError as e:  # bad data, model, instructions: one line
    raise errors.DataError(cli.one_line(e)) from e
  try:
    encoders = [encoder.truncated(k) for k in dims] or [encoder]  # checked against the embedding size first
    os.makedirs(output, exist_ok=True)
    meta = encoder.mteb_model_meta
    say(f"model {meta.name} revision {meta.revision} ({backend}, max_length {max_length}); results in "
        f"{os.path.join(output, 'results')}")
    rows, failed = [], []
    for enc in encoders:
      if enc.truncate_dim is not None:
        say(f"dimension {enc.truncate_dim} (truncated, re-normalised): {enc.mteb_model_meta.name}")
      r, f = run(enc, selected, output, batch_size, log=say)
      rows += [dict(row, dim=enc.truncate_dim) for row in r] if enc.truncate_dim is not None else r
      failed += [(t + (f" (d={enc.truncate_dim})" if enc.truncate_dim is not None else ""), e) for t, e in f]
    for task, err in failed:
      hint = ("; offline (HF_HUB_OFFLINE): only task data already in the Hugging Face cache loads, evaluate local "
              "copies with --data-dir (--help-formats)") if _offline() and not data_dir else ""
      log.info(f"error: {task}: {err}{hint}")
    summary = None
    if rows:
      info = {"name": meta.name, "revision": meta.revision, "backend": backend,
              "instructions": "none" if no_instructions else encoder.instructions.table_name,
              "max_length": max_length, "dtype": dtype}
      if dims:
        info["truncate_dims"] = ",".join(map(str, dims))
      summary = write_summary(rows, output, str(model), info, failed)
      say(summary)
    say(f"embedding cache: {encoder.cache.hits} hits, {encoder.cache.misses} misses")
    if failed:
      log.info(f"error: {len(failed)} of {len(selected)} task(s) failed: {', '.join(t for t, _ in failed)}"
               + ("" if rows else "; no summary written"))
    return {"rows": rows, "failed": failed, "summary": summary, "output": output}
  finally:
    encoder.close()


def save_result(result, encoder: InstructorEncoder, cache, encode_kwargs: Mapping) -> str:
  """Adds the instructions used to each score entry and writes the result with mteb's ``ResultCache``."""
  used = encoder.instructions_used(result.task_name)
  for split_scores in result.scores.values():
    for entry in split_scores:
      entry["instructions"] = used
  cache.save_to_cache(result, encoder.mteb_model_meta, encode_kwargs=dict(encode_kwargs))
  return str(cache.get_task_result_path(result.task_name, encoder.mteb_model_meta))


def run(encoder: InstructorEncoder, selected: Sequence[tuple[Any, Any]], output: str, batch_size: int = 32,
        log=print) -> tuple[list[dict], list[tuple[str, str]]]:
  """Evaluates each ``(local task | None, mteb task)`` with ``mteb.evaluate``, writes its result; returns
  ``(summary rows, [(task, error)])``."""
  import mteb
  cache = mteb.ResultCache(output)
  encode_kwargs = {"batch_size": batch_size, "show_progress_bar": False}
  rows, failed = [], []
  for lt, task in selected:
    md = task.metadata
    start = time.time()
    newer = getattr(md, "superseded_by", None)
    log(f"{md.name} ({md.type}, split {','.join(task.eval_splits)}"
        + (f", {lt.folder}" if lt else "") + (f"; mteb lists {newer} as its newer version" if newer else "")
        + f"): {' '.join(_instruction_cells(encoder.instructions, md))}")
    with warnings.catch_warnings():  # said once above instead of twice (mteb logs and warns it)
      warnings.filterwarnings("ignore", message=r"The task '.*' is superseded by")
      superseded_log = logging.getLogger("mteb.abstasks.abstask")
      level = superseded_log.level
      superseded_log.setLevel(logging.ERROR)
      try:
        res = mteb.evaluate(encoder, task, cache=None, raise_error=False, overwrite_strategy="always",
                            encode_kwargs=dict(encode_kwargs), co2_tracker=False, show_progress_bar=False)
      finally:
        superseded_log.setLevel(level)
    for e in res.exceptions or []:
      failed.append((e.task_name, e.exception))
      log(f"  failed: {e.exception}")
    for r in res.task_results:
      path = save_result(r, encoder, cache, encode_kwargs)
      used = encoder.instructions_used(r.task_name)
      score = float(r.get_score())
      rows.append({"task": r.task_name, "type": md.type, "metric": md.main_score, "score": score,
                   "split": ",".join(r.scores), "instruction": used.get("query", used.get("text", "")),
                   **({"document_instruction": used["document"]} if "document" in used else {}),
                   "instruction_source": used["source"], "result": os.path.relpath(path, output),
                   **({"folder": lt.folder} if lt else {})})
      log(f"  {md.main_score} = {100 * score:.2f}  ({time.time() - start:.1f}s)")
  return rows, failed


def write_summary(rows: list[dict], output: str, model: str, meta: Mapping[str, Any],
                  failed: Sequence[tuple[str, str]] = ()) -> str:
  """``summary.md`` + ``summary.json``: per-task main scores (fractions; x100 in the markdown), per-type averages
  and the average over tasks; failed tasks are listed, never averaged."""
  if not rows:
    raise ValueError("no task result to summarise")
  by_type: dict[str, list[float]] = {}
  for r in rows:
    by_type.setdefault(r["type"], []).append(r["score"])
  averages = {t: float(np.mean(v)) for t, v in by_type.items()}
  overall = float(np.mean([r["score"] for r in rows]))
  dims = list(dict.fromkeys(r["dim"] for r in rows if r.get("dim") is not None))
  lines = [f"# Evaluation of `{model}`", "", ", ".join(f"{k}: {v}" for k, v in meta.items()), ""]
  by_dim = {}
  if dims:  # Matryoshka: score against dimension, then every row below carries its dimension
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    score = {(r["task"], r["dim"]): r["score"] for r in rows}
    by_dim = {d: float(np.mean([r["score"] for r in rows if r.get("dim") == d])) for d in dims}
    lines += ["Scores against the embedding dimension (the first d dimensions, re-normalised):", "",
              "| task | " + " | ".join(f"d={d}" for d in dims) + " |", "|---|" + "---:|" * len(dims)]
    for t in tasks:
      lines.append(f"| {t} | " + " | ".join(f"{100 * score[(t, d)]:.2f}" if (t, d) in score else "-"
                                            for d in dims) + " |")
    lines += ["| **average** | " + " | ".join(f"{100 * by_dim[d]:.2f}" for d in dims) + " |", ""]
    for r in rows:
      r["task_dim"] = f"{r['task']} (d={r['dim']})"
  lines += ["| task | type | split | metric | score | instruction | source |", "|---|---|---|---|---:|---|---|"]
  for r in rows:
    instr = f"`{r['instruction']}`" if r.get("instruction") else "(none)"
    if r.get("document_instruction"):
      instr += f" / `{r['document_instruction']}`"
    lines.append(f"| {r.get('task_dim', r['task'])} | {r['type']} | {r.get('split', '')} | {r['metric']} | {100 * r['score']:.2f} | "
                 f"{instr} | {r.get('instruction_source', '')} |")
  lines += ["", "| task type | tasks | average |", "|---|---:|---:|"]
  for t, v in averages.items():
    lines.append(f"| {t} | {len(by_type[t])} | {100 * v:.2f} |")
  lines.append(f"| **all** | {len(rows)} | {100 * overall:.2f} |")
  if failed:
    lines += ["", "Failed (not averaged): " + ", ".join(f"{t} ({e})" for t, e in failed)]
  md = "\n".join(lines) + "\n"
  files.write_text(os.path.join(output, "summary.md"), md)
  files.write_json(os.path.join(output, "summary.json"), {
      "model": model, **meta, "tasks": rows, "type_averages": averages, "average": overall,
      **({"dims": dims, "dim_averages": {str(d): v for d, v in by_dim.items()}} if dims else {}),
      "failed": [{"task": t, "error": e} for t, e in failed]})
  return md
