"""The MEDI builder: mining positive / hard-negative pairs from Super-NaturalInstructions task files.

``python -m instructor_jax.medi build --super-ni DIR --embedder MODEL [--annotations FILE] --out medi.jsonl`` (the
command lives in ``medi.main`` beside ``validate`` / ``tasks`` / ``annotations``; this module holds the builder).

Per task (one ``*.json`` file of Super-NaturalInstructions): the instruction comes from an annotation
(``"Represent the {domain} {text_type} for {objective}: "``, ``DEFAULT_ANNOTATIONS`` for the 24 bundled tasks); the
inputs are embedded with ``embed``; ``mine_pairs`` picks each instance's positive and hard negatives by chunked
matrix products (never an N x N matrix): classification tasks by label, generation tasks by input + output
similarity. The records are valid MEDI (``medi.read_medi`` reads them back) and deterministic given the seed.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import sys
from typing import Mapping, Optional, Sequence

import numpy as np

from instructor_jax.core import log
from instructor_jax.core import errors
from instructor_jax.storage import files
from instructor_jax.data.medi import Report, read_medi, stable_hash, write_jsonl


INSTRUCTION_TEMPLATE = "Represent the {domain} {text_type} for {objective}: "

# Annotations for the 24 Super-NaturalInstructions tasks bundled in shared/data/super-ni (written for this project
# from each task's Definition). `type` fixes the mining rule; without it a task with few distinct outputs
# (<= max_labels and <= a quarter of its instances) is treated as classification.
DEFAULT_ANNOTATIONS: dict[str, dict[str, str]] = {
    **{f"task{n}_scan_structured_text_generation_command_action_{s}": {
        "domain": "navigation", "text_type": "command", "objective": "retrieving commands that execute the same "
        "action sequence", "type": "generation"} for n, s in ((126, "all"), (128, "short"), (130, "long"))},
    **{f"task{n}_scan_long_text_generation_action_command_{s}": {
        "domain": "navigation", "text_type": "action sequence", "objective": "retrieving action sequences of the "
        "same command", "type": "generation"} for n, s in ((127, "all"), (129, "short"), (131, "long"))},
    "task137_detoxifying-lms_classification_toxicity": {
        "domain": "language model", "text_type": "prompt and completions", "objective": "classifying which "
        "completion is the least toxic", "type": "classification"},
    "task138_detoxifying-lms_classification_fluency": {
        "domain": "language model", "text_type": "prompt and completions", "objective": "classifying which "
        "completion is the most fluent", "type": "classification"},
    "task139_detoxifying-lms_classification_topicality": {
        "domain": "language model", "text_type": "prompt and completions", "objective": "classifying which "
        "completion is the most topical", "type": "classification"},
    "task140_detoxifying-lms_classification_style": {
        "domain": "language model", "text_type": "prompt and completions", "objective": "classifying which "
        "completion is stylistically closest to the prompt", "type": "classification"},
    "task141_odd-man-out_classification_category": {
        "domain": "vocabulary", "text_type": "category and word list", "objective": "finding the word that does "
        "not belong", "type": "generation"},
    "task142_odd-man-out_classification_no_category": {
        "domain": "vocabulary", "text_type": "word list", "objective": "finding the word that does not belong",
        "type": "generation"},
    "task143_odd-man-out_classification_generate_category": {
        "domain": "vocabulary", "text_type": "word list", "objective": "classifying the category of the words",
        "type": "classification"},
    "task151_tomqa_find_location_easy_clean": {
        "domain": "theory of mind", "text_type": "story and question", "objective": "retrieving the location of "
        "an object", "type": "generation"},
    "task152_tomqa_find_location_easy_noise": {
        "domain": "theory of mind", "text_type": "noisy story and question", "objective": "retrieving the "
        "location of an object", "type": "generation"},
    "task156_codah_classification_adversarial": {
        "domain": "commonsense", "text_type": "prompt and completions", "objective": "classifying the most "
        "plausible completion", "type": "classification"},
    **{f"task{n}_jeopardy_answer_generation_{s}": {
        "domain": "trivia", "text_type": "Jeopardy clue", "objective": "retrieving the answer",
        "type": "generation"} for n, s in ((305, "normal"), (306, "double"), (307, "final"), (308, "all"))},
    **{f"task{n}_stereoset_classification_{s}": {
        "domain": f"{s} stereotype", "text_type": "target and sentence pair", "objective": "classifying "
        "stereotype, anti-stereotype or unrelated", "type": "classification"}
       for n, s in ((318, "gender"), (319, "profession"), (320, "race"), (321, "religion"))},
}


def instruction_from_annotation(task: str, ann: Mapping[str, str]) -> str:
  """``"Represent the {domain} {text type} for {objective}: "`` (an empty domain is left out)."""
  missing = [k for k in ("text_type", "objective") if not str(ann.get(k, "")).strip()]
  if missing:
    raise ValueError(f"annotation of {task} lacks {missing} (needs domain, text_type, objective)")
  domain = str(ann.get("domain", "")).strip()
  return INSTRUCTION_TEMPLATE.format(domain=domain, text_type=str(ann["text_type"]).strip(),
                                     objective=str(ann["objective"]).strip()).replace("the  ", "the ")


@dataclasses.dataclass
class SuperNiTask:
  name: str
  definition: str
  inputs: list[str]
  outputs: list[str]  # the first output of each instance


def read_super_ni(path: str) -> SuperNiTask:
  """One Super-NaturalInstructions task file (``Definition`` a string or a list; ``Instances`` with ``input`` and an
  ``output`` list)."""
  name = os.path.splitext(os.path.basename(path))[0]
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a valid JSON task file: {e}") from e
  if not isinstance(obj, dict) or "Instances" not in obj or "Definition" not in obj:
    raise ValueError(f"{path}: a Super-NaturalInstructions task needs 'Definition' and 'Instances'")
  definition = obj["Definition"]
  if isinstance(definition, list):
    definition = " ".join(str(d) for d in definition)
  inputs, outputs = [], []
  for i, inst in enumerate(obj["Instances"]):
    out = inst.get("output") if isinstance(inst, dict) else None
    if isinstance(out, str):
      out = [out]
    if (not isinstance(inst, dict) or not isinstance(inst.get("input"), str) or not isinstance(out, list)
        or not out or not all(isinstance(o, str) for o in out)):
      raise ValueError(f"{path}: instance {i} needs an 'input' string and a non-empty 'output' list of strings")
    if not inst["input"].strip():
      raise ValueError(f"{path}: instance {i} has an empty input")
    inputs.append(inst["input"])
    outputs.append(out[0])
  return SuperNiTask(name, str(definition), inputs, outputs)


def _unique_ids(texts: Sequence[str]) -> np.ndarray:
  ids: dict[str, int] = {}
  return np.asarray([ids.setdefault(t.strip(), len(ids)) for t in texts], np.int32)


def mine_pairs(x: np.ndarray, *, labels: Optional[np.ndarray] = None, y: Optional[np.ndarray] = None,
               input_ids: Optional[np.ndarray] = None, output_ids: Optional[np.ndarray] = None,
               num_negatives: int = 1, memory_bytes: int = 1 << 28) -> tuple[np.ndarray, np.ndarray]:
  """Positive and hard-negative indices per instance, by chunked matrix products (never an N x N matrix).

  Classification (``labels``): positive = most similar other input with the same label, negatives = most similar
  inputs with another label. Text output (``y``): ``s_pos = cos(x_i, x_j) + cos(y_i, y_j)``, ``s_neg = cos(x_i, x_j)
  - cos(y_i, y_j)``; the best ``s_pos`` is the positive, the best ``s_neg`` (other than the positive, with another
  output text) the negatives. Candidates never include the instance itself or a copy of its input text
  (``input_ids``). Returns ``pos [N]`` and ``neg [N, num_negatives]`` with -1 where no candidate exists.
  Rows are processed ``C`` at a time with ``C * N * 4 * 4 bytes <= memory_bytes`` (JAX on the default device).
  """
  import jax
  import jax.numpy as jnp

  if (labels is None) == (y is None):
    raise ValueError("pass labels (classification) or y (text outputs), not both")
  x = np.asarray(x, np.float32)
  n = len(x)
  x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  input_ids = np.arange(n, dtype=np.int32) if input_ids is None else np.asarray(input_ids, np.int32)
  classification = labels is not None
  if classification:
    aux = np.asarray(labels, np.int32)
    yy = np.zeros((n, 1), np.float32)
  else:
    yy = np.asarray(y, np.float32)
    yy = yy / np.maximum(np.linalg.norm(yy, axis=-1, keepdims=True), 1e-12)
    aux = np.arange(n, dtype=np.int32) if output_ids is None else np.asarray(output_ids, np.int32)
  k = int(num_negatives)
  if not 1 <= k < n:
    raise ValueError(f"num_negatives must be in [1, {n}), got {k}")
  chunk = int(max(1, min(n, memory_bytes // (16 * n))))
  X, Y, A, I = (jnp.asarray(v) for v in (x, yy, aux, input_ids))

  @jax.jit
  def scores(rows):
    sx = X[rows] @ X.T
    own = I[rows][:, None] == I[None, :]
    if classification:
      same = A[rows][:, None] == A[None, :]
      s_pos = jnp.where(same & ~own, sx, -jnp.inf)
      s_neg = jnp.where(~same & ~own, sx, -jnp.inf)
    else:
      sy = Y[rows] @ Y.T
      s_pos = jnp.where(~own, sx + sy, -jnp.inf)
      s_neg = jnp.where(~own & (A[rows][:, None] != A[None, :]), sx - sy, -jnp.inf)
    pv, pi = jax.lax.top_k(s_pos, 1)
    s_neg = jnp.where(jnp.arange(n)[None, :] == pi, -jnp.inf, s_neg)
    nv, ni = jax.lax.top_k(s_neg, k)
    return jnp.where(jnp.isfinite(pv[:, 0]), pi[:, 0], -1), jnp.where(jnp.isfinite(nv), ni, -1)

  pos = np.full((n,), -1, np.int64)
  neg = np.full((n, k), -1, np.int64)
  for start in range(0, n, chunk):
    rows = np.arange(start, start + chunk) % n  # the last chunk is padded (wrapped) to keep one compiled shape
    p, q = scores(jnp.asarray(rows, jnp.int32))
    m = min(chunk, n - start)
    pos[start:start + m] = np.asarray(p)[:m]
    neg[start:start + m] = np.asarray(q)[:m]
  return pos, neg


def is_classification(outputs: Sequence[str], ann: Mapping[str, str], max_labels: int) -> bool:
  kind = ann.get("type", "auto")
  if kind not in ("auto", "classification", "generation"):
    raise ValueError(f"annotation type must be auto, classification or generation, got {kind!r}")
  if kind != "auto":
    return kind == "classification"
  distinct = len(set(o.strip() for o in outputs))
  return distinct <= max_labels and distinct <= len(outputs) / 4


BuildError = errors.DataError  # core/errors.py


def select_tasks(super_ni_dir: str, tasks: Sequence[str] = ()) -> list[str]:
  """The task files (``*.json``) of ``super_ni_dir``, or only those named in ``tasks``.

  A name that matches no file fails and lists the closest task names of the folder (a typo must not silently drop a
  task, nor be reported as an empty folder).
  """
  if not os.path.isdir(super_ni_dir):
    raise BuildError(f"--super-ni {super_ni_dir}: no such folder")
  files = sorted(f for f in os.listdir(super_ni_dir) if f.endswith(".json"))
  if not files:
    raise BuildError(f"no Super-NaturalInstructions task files (*.json) in {super_ni_dir}")
  if not tasks:
    return files
  have = [os.path.splitext(f)[0] for f in files]
  unknown = [t for t in dict.fromkeys(tasks) if t not in have]
  if unknown:
    hints = []
    for t in unknown:
      close = difflib.get_close_matches(t, have, n=3, cutoff=0.5) or [h for h in have if t in h][:3]
      hints.append(f"{t!r} (closest: {', '.join(close)})" if close else f"{t!r} (nothing close)")
    raise BuildError(f"--tasks: {len(unknown)} name(s) match no task file in {super_ni_dir} ({len(have)} tasks): "
                     f"{'; '.join(hints)}")
  wanted = set(tasks)
  return [f for f, h in zip(files, have) if h in wanted]


def build_medi(super_ni_dir: str, embed, annotations: Mapping[str, Mapping[str, str]], seed: int = 0,
               max_instances: int = 0, num_negatives: int = 1, max_labels: int = 64, tasks: Sequence[str] = (),
               memory_bytes: int = 1 << 28) -> tuple[list[dict], dict]:
  """Mines MEDI records from every ``*.json`` task in ``super_ni_dir``; ``embed(list[str]) -> [N, D]``.

  Returns ``(records, report)``; records are sorted by task name then instance order (deterministic given the
  seed, which only picks the instances of tasks larger than ``max_instances``).
  """
  files = select_tasks(super_ni_dir, tasks)
  names = [os.path.splitext(f)[0] for f in files]
  missing = [t for t in names if t not in annotations]
  if missing:
    raise ValueError(f"no annotation (domain, text_type, objective) for {len(missing)} task(s): {missing[:10]}; "
                     "add them to the --annotations file")
  records, report = [], {"tasks": {}, "seed": seed}
  for name, f in zip(names, files):
    task = read_super_ni(os.path.join(super_ni_dir, f))
    instruction = instruction_from_annotation(name, annotations[name])
    keep = np.arange(len(task.inputs))
    if max_instances and len(keep) > max_instances:
      keep = np.sort(np.random.default_rng([seed, stable_hash(name) & 0x7FFFFFFF]).choice(
          len(keep), max_instances, replace=False))
    inputs = [task.inputs[i] for i in keep]
    outputs = [task.outputs[i] for i in keep]
    entry = {"instances": len(task.inputs), "used": len(inputs), "instruction": instruction}
    if len(inputs) < 3:
      entry.update(kind="skipped", records=0, reason="fewer than 3 instances")
      report["tasks"][name] = entry
      continue
    classification = is_classification(outputs, annotations[name], max_labels)
    x = np.asarray(embed(inputs), np.float32)
    in_ids = _unique_ids(inputs)
    if classification:
      pos, neg = mine_pairs(x, labels=_unique_ids(outputs), input_ids=in_ids, num_negatives=num_negatives,
                            memory_bytes=memory_bytes)
    else:
      out_ids = _unique_ids(outputs)
      uniq = {}
      for o, i in zip(outputs, out_ids):
        uniq.setdefault(int(i), o.strip())
      y_uniq = np.asarray(embed([uniq[i] for i in range(len(uniq))]), np.float32)
      pos, neg = mine_pairs(x, y=y_uniq[out_ids], input_ids=in_ids, output_ids=out_ids,
                            num_negatives=num_negatives, memory_bytes=memory_bytes)
    made = no_pos = no_neg = 0
    for i in range(len(inputs)):
      if pos[i] < 0:
        no_pos += 1
        continue
      if (neg[i] < 0).any():
        no_neg += 1
        continue
      negs = [[instruction, inputs[j]] for j in neg[i]]
      records.append({"query": [instruction, inputs[i]], "pos": [instruction, inputs[pos[i]]],
                      "neg": negs[0] if num_negatives == 1 else negs, "task_name": name})
      made += 1
    entry.update(kind="classification" if classification else "generation", records=made,
                 skipped_no_positive=no_pos, skipped_no_negative=no_neg)
    if classification:
      entry["labels"] = int(len(set(o.strip() for o in outputs)))
    report["tasks"][name] = entry
    log.info("%s: %s, %d records (%d without positive, %d without negative)", name, entry["kind"], made, no_pos,
             no_neg)
  return records, report


def _load_annotations(path: Optional[str]) -> dict:
  if not path:
    return dict(DEFAULT_ANNOTATIONS)
  try:
    with open(path, encoding="utf-8") as f:
      ann = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read annotations: {e}") from e
  if not isinstance(ann, dict) or not all(isinstance(v, dict) for v in ann.values()):
    raise ValueError(f"{path}: annotations must map task name -> {{domain, text_type, objective[, type]}}")
  return ann


def add_arguments(b) -> None:
  """The ``medi build`` flags (the subcommand's parser is made by ``medi.main``)."""
  b.add_argument("--super-ni", required=True, help="folder of Super-NaturalInstructions task .json files")
  b.add_argument("--embedder", required=True, help="checkpoint folder or hub id Instructor.from_pretrained loads")
  b.add_argument("--annotations", default="", help="JSON {task: {domain, text_type, objective[, type]}}; default: "
                 "the built-in annotations of the 24 bundled tasks (`annotations` prints them)")
  b.add_argument("--out", required=True, help="output MEDI JSON lines")
  b.add_argument("--seed", type=int, default=0, help="picks the instances of tasks above --max-instances")
  b.add_argument("--merge", action="append", help="existing MEDI-format file to append (repeatable)")
  b.add_argument("--tasks", nargs="*", help="only these task names (file names without .json)")
  b.add_argument("--max-instances", type=int, default=0, help="per task, seeded sample (0: all)")
  b.add_argument("--num-negatives", type=int, default=1, help="hard negatives per record")
  b.add_argument("--max-labels", type=int, default=64, help="auto type: at most this many distinct outputs")
  b.add_argument("--batch-size", type=int, default=64, help="embedding batch size")
  b.add_argument("--max-length", type=int, default=512, help="embedding max length (tokens)")
  b.add_argument("--strict", action="store_true", help="merged files: instructions must start with 'Represent '")
  b.add_argument("--skip-invalid", action="store_true", help="merged files: skip and count invalid records")


def quiet_jax_logs() -> None:
  """JAX logs backend probing (``Unable to initialize backend 'tpu'``) at INFO; the builder logs its own progress at
  INFO, so JAX's loggers are kept at WARNING."""
  for name in ("jax", "jax._src.xla_bridge", "absl"):
    logging.getLogger(name).setLevel(logging.WARNING)


def run(args, load_embedder) -> int:
  """``medi build``: mine, merge, write ``--out`` and ``--out.report.json`` atomically. ``load_embedder(args)``
  returns ``embed(texts) -> [n, D]`` (the command passes the model's; the data stage imports no model)."""
  quiet_jax_logs()
  select_tasks(args.super_ni, args.tasks or ())  # before loading the embedder: a typo fails in a second
  embed = load_embedder(args)
  records, report = build_medi(args.super_ni, embed, _load_annotations(args.annotations), seed=args.seed,
                               max_instances=args.max_instances, num_negatives=args.num_negatives,
                               max_labels=args.max_labels, tasks=args.tasks or ())
  merged = {}
  for path in args.merge or ():
    rep = Report(path)
    recs = [r.to_json() for r in read_medi(path, strict=args.strict, skip_invalid=args.skip_invalid, report=rep)]
    merged[path] = rep.to_dict()
    records.extend(recs)
  report["merged"] = merged
  report["records"] = len(records)
  report["embedder"] = args.embedder
  write_jsonl(records, args.out)
  files.write_json(args.out + ".report.json", report, indent=1)
  for name, e in report["tasks"].items():
    print(f"{name}: {e.get('kind')} {e['records']} records" + (
        f" (skipped: {e.get('skipped_no_positive', 0)} no positive, {e.get('skipped_no_negative', 0)} no negative)"
        if e.get("skipped_no_positive") or e.get("skipped_no_negative") else ""), file=sys.stderr)
  print(f"wrote {len(records)} records to {args.out} (report: {args.out}.report.json)", file=sys.stderr)
  return 0

