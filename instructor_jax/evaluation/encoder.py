"""INSTRUCTOR as an mteb 2.x model: the instruction of every task and role (``Instructions``), the embedding cache,
the encoder (``mteb.models.AbsEncoder``, so ``mteb.evaluate(encoder, tasks)`` runs any text task) and its
``ModelMeta``. Every text is embedded as ``[instruction, text]``: the instruction is attended to and excluded from
the mean pool (``Instructor.encode``); the result file records which instruction was used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction

from instructor_jax.storage import files
from instructor_jax.evaluation import model as model_lib
from instructor_jax.evaluation.readers import DataError

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
INSTRUCTIONS_FILE = os.path.join(ASSETS, "instructor_mteb_instructions.json")
SIZE_BY_D_MODEL = {768: "hkunlp/instructor-base", 1024: "hkunlp/instructor-large", 2048: "hkunlp/instructor-xl"}
GENERIC = {
    "STS": "Represent the sentence for measuring semantic similarity: ",
    "Summarization": "Represent the summary for measuring semantic similarity: ",
    "BitextMining": "Represent the sentence for retrieving its translation: ",
    "Classification": "Represent the text for classification: ",
    "Clustering": "Represent the text for clustering: ",
    "PairClassification": "Represent the sentence for retrieving duplicate sentences: ",
    "Reranking": {"query": "Represent the query for reranking candidate documents: ",
                  "document": "Represent the candidate document for reranking: "},
    "Retrieval": {"query": "Represent the query for retrieving relevant documents: ",
                  "document": "Represent the document for retrieval by a query: "},
}
# Task types without their own generic instruction -> the type whose instruction they use.
GENERIC_TYPE = {"InstructionRetrieval": "Retrieval", "InstructionReranking": "Reranking",
                "retrieval": "Retrieval", "clustering": "Clustering", "classification": "Classification",
                "semantic-similarity": "STS", "pair-classification": "PairClassification"}


# ----------------------------------------------------------------------------------------------------------------
# Instructions


def load_instruction_table(spec: str | None, d_model: int | None = None) -> tuple[dict, str]:
  """``({task type: {task: str | {"query", "corpus"}}}, its name)`` from a JSON file or a model key of the bundled
  table (``hkunlp/instructor-base|large|xl``; default: by ``d_model`` 768 / 1024 / 2048, else base)."""
  path = spec if spec and os.path.exists(spec) else INSTRUCTIONS_FILE
  try:
    with open(path, encoding="utf-8") as f:
      table = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: invalid JSON in the instruction table ({e.msg}, column {e.colno})") from None
  if not isinstance(table, Mapping):
    raise DataError(f"{path}: the instruction table must be a JSON object, got {type(table).__name__}")
  name = path
  if any("/" in k for k in table):  # keyed by model
    if spec and not os.path.exists(spec) and spec not in table:
      raise DataError(f"--instructions {spec!r}: not a file nor one of {sorted(table)}")
    key = spec if spec in table else SIZE_BY_D_MODEL.get(d_model or 0, "hkunlp/instructor-base")
    key = key if key in table else sorted(table)[0]
    table, name = table[key], key if path == INSTRUCTIONS_FILE else f"{path}:{key}"
  for task_type, entries in table.items():
    if not isinstance(entries, Mapping):
      raise DataError(f"{path}: {task_type!r} must map task names to instructions, got {type(entries).__name__}")
  return table, name


@dataclasses.dataclass(frozen=True)
class Instruction:
  text: str
  source: str  # "none" | "task.json" | "table <name>" [" (X, adapted_from)"] | "generic <type>"


def _pick(entry: str | Mapping, role: str) -> str:
  """An entry's instruction for ``role`` ("query" | "document" | "text")."""
  if isinstance(entry, str):
    return entry
  if role == "document":
    return entry.get("document", entry.get("corpus", ""))
  return entry.get("query", entry.get("text", ""))


class Instructions:
  """The instruction of each (task, role).

  ``get``: first match wins, and the result file records which one was used:

  1. ``--no-instructions``: none (the bare texts).
  2. the task's own (a local ``task.json``: ``instruction`` or ``query_instruction`` / ``corpus_instruction``).
  3. the INSTRUCTOR table's entry for the task's name, or for a task mteb declares it ``adapted_from`` (same data,
     re-split or cleaned: ``SICK-R.official`` -> SICK-R, ``STSBenchmark.v2`` -> STSBenchmark).
  4. ``GENERIC[type]``: written for this purpose; never another task's entry.

  Roles: mteb passes ``prompt_type`` query / document for retrieval and reranking; the table's ``{"query",
  "corpus"}`` entries give one instruction each; other tasks embed every text with one instruction. Every text is
  embedded as ``[instruction, text]``: the instruction is attended to and excluded from the mean pool
  (``Instructor.encode``).
  """

  def __init__(self, table: Mapping | None, table_name: str = "", task_instructions: Mapping | None = None):
    self.table, self.table_name = table, table_name
    self.task_instructions = dict(task_instructions or {})
    self.by_name = {task: entry for entries in (table or {}).values() for task, entry in entries.items()}

  def get(self, name: str, task_type: str, role: str = "text", adapted_from: Sequence[str] = ()) -> Instruction:
    if self.table is None:
      return Instruction("", "none")
    if name in self.task_instructions:
      return Instruction(_pick(self.task_instructions[name], role), "task.json")
    for key in (name, *adapted_from):
      if key in self.by_name:
        via = "" if key == name else f" ({key}, adapted_from)"
        return Instruction(_pick(self.by_name[key], role), f"table {self.table_name}{via}")
    generic_type = task_type if task_type in GENERIC else GENERIC_TYPE.get(task_type)
    if generic_type is None:  # image / audio / video types: by mteb's simplified type (TaskMetadata)
      from mteb.abstasks import task_metadata
      simplified = getattr(task_metadata, "_TASKTYPE2SIMPLIFIEDTASKTYPE", {}).get(task_type, "")
      generic_type = GENERIC_TYPE.get(simplified, "STS")
    return Instruction(_pick(GENERIC[generic_type], role), f"generic {generic_type}")

  def for_task(self, metadata) -> Instruction:
    return self.get(metadata.name, metadata.type, "text", tuple(metadata.adapted_from or ()))


# ----------------------------------------------------------------------------------------------------------------
# Embedding cache


class CachedEncoder:
  """Encodes ``(instruction, texts)`` groups through ``embedder.encode``, with an on-disk cache: one ``.npy`` per
  call under ``cache_dir/fingerprint/``, keyed by sha256 of (fingerprint, instruction, texts)."""

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
      files.save_npy(path, emb)
    return emb


def fingerprint(info: model_lib.ModelInfo, backend: str, dtype: str) -> str:
  """The embedding cache's key for a model: its content revision and what changes its embeddings."""
  return hashlib.sha256(f"{info.revision}|{backend}|{info.max_length}|{dtype}".encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# The mteb encoder


def model_meta(info: model_lib.ModelInfo, use_instructions: bool, loader_kwargs: Mapping[str, Any]) -> ModelMeta:
  """mteb's ``ModelMeta`` of a loaded model (framework JAX or PyTorch; cosine similarity; text only);
  ``meta.load_model()`` loads it again through ``load_encoder`` with ``loader_kwargs``."""
  n = info.n_parameters
  return ModelMeta(
      loader=load_encoder, loader_kwargs=dict(loader_kwargs), name=info.name, revision=info.revision,
      release_date=None, languages=None, n_parameters=n, memory_usage_mb=None if n is None else
      round(4 * n / 2 ** 20, 1), max_tokens=info.max_length, embed_dim=info.dim, license=None, open_weights=None,
      public_training_code=None, public_training_data=None, framework=[info.framework],
      similarity_fn_name=ScoringFunction.COSINE, use_instructions=use_instructions, training_datasets=None,
      modalities=["text"], model_type=["dense"])


class InstructorEncoder(AbsEncoder):
  """An INSTRUCTOR model as an mteb 2.x encoder (``mteb.models.EncoderProtocol``)."""

  def __init__(self, embedder, meta: ModelMeta, instructions: Instructions, cache: CachedEncoder,
               cleanup=lambda: None, truncate_dim: int | None = None):
    self.model = embedder
    self.truncate_dim = truncate_dim  # Matryoshka: the first k dimensions, re-normalised (the cache holds all)
    self.mteb_model_meta = meta
    self.instructions = instructions
    self.cache = cache
    self.used: dict[str, dict[str, Instruction]] = {}  # task name -> role -> instruction embedded with
    self._cleanup = cleanup

  @classmethod
  def from_pretrained(cls, model: str, *, backend: str = "jax", max_length: int = 512, dtype: str = "float32",
                      instructions: str | None = None, no_instructions: bool = False,
                      task_instructions: Mapping | None = None, cache_dir: str | None = None,
                      batch_size: int = 32, name: str | None = None, progress: bool = True,
                      truncate_dim: int | None = None) -> "InstructorEncoder":
    """Loads ``model`` (``evaluation/model.py``); ``instructions``: a table file or ``hkunlp/instructor-*`` key
    (default: the bundled table for the model's size); ``cache_dir``: the embedding cache (None: off);
    ``truncate_dim``: Matryoshka truncation (``truncated``)."""
    embedder, info, d_model, cleanup = model_lib.load_embedder(model, backend, max_length, dtype, name=name)
    table, table_name = (None, "") if no_instructions else load_instruction_table(instructions, d_model)
    where = str(model) if not isinstance(model, str) else os.path.abspath(model) if os.path.exists(model) else model
    loader_kwargs = dict(model=where, backend=backend,
                         max_length=max_length, dtype=dtype, instructions=instructions,
                         no_instructions=no_instructions)
    meta = model_meta(info, table is not None, loader_kwargs)
    cache = CachedEncoder(embedder, fingerprint(info, backend, dtype), cache_dir, batch_size, progress)
    encoder = cls(embedder, meta, Instructions(table, table_name, task_instructions), cache, cleanup)
    if truncate_dim is not None:  # ModelMeta.load_model passes the truncated model's name back: no second suffix
      encoder = encoder.truncated(truncate_dim, suffix=not (name or "").endswith(truncate_suffix(truncate_dim)))
    return encoder

  def truncated(self, dim: int, suffix: bool = True) -> "InstructorEncoder":
    """The same model, embeddings truncated to their first ``dim`` dimensions and re-normalised (Matryoshka),
    sharing the loaded model and the embedding cache (of full embeddings). Its ``ModelMeta`` name is the model's
    with ``-d{dim}`` (``truncate_suffix``), so MTEB's result layout keeps each dimension apart; same revision."""
    from instructor_jax.models.embedder import check_truncate_dim
    meta = self.mteb_model_meta
    if meta.embed_dim:
      check_truncate_dim(dim, int(meta.embed_dim), "--truncate-dim")
    name = meta.name + truncate_suffix(dim) if suffix else meta.name
    meta = meta.model_copy(update=dict(name=name, embed_dim=int(dim),
                                       loader_kwargs=dict(meta.loader_kwargs, truncate_dim=int(dim))))
    return type(self)(self.model, meta, self.instructions, self.cache, self._cleanup, int(dim))

  def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
             **kwargs) -> np.ndarray:
    texts = []
    for batch in inputs:
      if "text" not in batch:
        raise ValueError(f"{task_metadata.name}: {self.mteb_model_meta.name} embeds text only, got inputs "
                         f"{sorted(batch)}")
      texts.extend(batch["text"])
    role = str(getattr(prompt_type, "value", prompt_type)) if prompt_type is not None else "text"
    instruction = self.instructions.get(task_metadata.name, task_metadata.type, role,
                                        tuple(task_metadata.adapted_from or ()))
    self.used.setdefault(task_metadata.name, {})[role] = instruction
    emb = self.cache(texts, instruction.text)
    if self.truncate_dim is not None:
      from instructor_jax.models.embedder import check_truncate_dim, truncate
      check_truncate_dim(self.truncate_dim, emb.shape[-1], "--truncate-dim")
      emb = truncate(emb, self.truncate_dim)
    return emb

  def instructions_used(self, task_name: str) -> dict[str, str]:
    """``{role: instruction, ..., "source": ...}`` the task's texts were embedded with (for its result file)."""
    used = self.used.get(task_name, {})
    out = {role: ins.text for role, ins in sorted(used.items())}
    out["source"] = "; ".join(sorted({ins.source for ins in used.values()}))
    return out

  def close(self) -> None:
    self._cleanup()


def truncate_suffix(dim: int) -> str:
  """What a Matryoshka-truncated model's name carries in MTEB's results: ``org/name-d64``."""
  return f"-d{int(dim)}"


def load_encoder(model_name: str, revision: str | None = None, **kwargs) -> InstructorEncoder:
  """``ModelMeta.loader``: ``InstructorEncoder.from_pretrained(kwargs["model"], name=model_name, ...)``."""
  kwargs.pop("device", None)
  return InstructorEncoder.from_pretrained(kwargs.pop("model"), name=model_name, **kwargs)
