"""The model card (``README.md``) of an export and the eval results it quotes.

Read first: the card documents the one place where ``SentenceTransformer.encode(texts, prompt=instruction)`` and the
INSTRUCTOR rule differ (``NOTES``, per backbone).
"""
from __future__ import annotations

import datetime
import json
from typing import Any, Mapping, Optional

from instructor_jax.models import registry
from instructor_jax.storage import paths

ONE_TOKEN_NOTE = (
    "sentence-transformers excludes every prompt token from pooling, while the INSTRUCTOR rule (InstructorEmbedding "
    "1.0.1, and this project) keeps an instruction of exactly one token in the pool (`n <= 1 -> 0`: an instruction "
    "that tokenizes to a single piece, such as `\"Title\"` or `\"Question\"`, is pooled with the text). Only for "
    "such one-token instructions do `SentenceTransformer.encode(texts, prompt=instruction)` embeddings differ from "
    "ours; for every other instruction (and for no instruction) they agree to 1e-5 in fp32. INSTRUCTOR also strips "
    "the text before joining (`instruction + text.strip()`) while sentence-transformers joins `prompt + text`: "
    "pass stripped texts.")

BERT_NOTE = (
    "With this BERT encoder the INSTRUCTOR rule excludes `[CLS]` and the instruction's tokens from the mean pooling "
    "(`n = len(tokens(instruction)) - 1`, dropping `[SEP]`), which is what sentence-transformers does with "
    "`prompt=instruction` and `\"include_prompt\": false`; the two agree to 1e-5 in fp32 for every instruction that "
    "has at least one token. An instruction with no tokens (e.g. only spaces) masks nothing here (`n <= 1 -> 0`: "
    "`[CLS]` is pooled) while sentence-transformers excludes `[CLS]`. Plain texts (no instruction) pool every token, "
    "`[CLS]` and `[SEP]` included, in both.")

# Inputs encoded by the self-check: instructions of several lengths, a one-token instruction, plain strings,
# non-ASCII, an empty text, and a text long enough to be truncated at the verification max_length.
NOTES = {"t5": ONE_TOKEN_NOTE, "bert": BERT_NOTE}


def eval_results(path: Optional[str]) -> Optional[dict]:
  """Reads an eval output folder (``summary.json`` from ``instructor_jax.eval``) or a ``{task: score}`` JSON file."""
  if not path:
    return None
  if paths.isdir(path):  # local or gs:// (training's WORKDIR/eval)
    path = paths.join(path, "summary.json")
  data = json.loads(paths.read_text(path))
  if isinstance(data, Mapping) and "tasks" in data:
    return {t.get("task_dim", t["task"]): {"type": t.get("type", ""), "metric": t.get("metric", ""),
                                           "score": t["score"]} for t in data["tasks"]}
  return data


def model_card(name: str, *, legacy: bool, dim: int, config: registry.Config, max_seq_length: int, dtype: str,
               training_config: Mapping[str, Any] | None = None, eval_results: Mapping[str, Any] | None = None,
               source: str | None = None, dense: bool = True, normalize: bool = True,
               matryoshka_dims: tuple = ()) -> str:
  """A README.md for the exported folder: loading, instruction format, training config, evaluation results."""
  kind = registry.name_of(config)
  encoder = registry.backbone_of(config).describe(config)
  head = ", followed by a linear layer without bias" if dense else ""
  head += " and L2 normalisation" if normalize else ""
  lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
           "tags:", "- sentence-transformers", "- feature-extraction", "- instructor", f"- {kind}", "language: en",
           "---", "", f"# {name}", "",
           f"INSTRUCTOR-style instruction-conditioned text embeddings ({dim} dimensions, {encoder}), trained with "
           "instructor_jax (JAX/Flax) and exported"
           + (f" from `{source}`" if source else "") + f" on {datetime.date.today().isoformat()}"
           f" ({dtype} weights).", "",
           "Each input is an instruction and a text. The encoder reads `instruction + text`; the embedding is the "
           "mean of the token states of the *text* only (instruction tokens are excluded from pooling)"
           + head + ".", ""]
  if legacy:
    lines += ["## Usage (InstructorEmbedding 1.0.1, sentence-transformers 2.2.2)", "",
              "This folder has the hkunlp/instructor-* layout for the original package:", "", "```python",
              "from InstructorEmbedding import INSTRUCTOR", "model = INSTRUCTOR('PATH_TO_THIS_FOLDER')",
              "emb = model.encode([['Represent the Science title: ', '3D ActionSLAM: wearable person tracking']])",
              "```", "",
              "It needs `sentence-transformers==2.2.2`. For sentence-transformers >= 3 export the default layout "
              "(without `--legacy-instructor`).", ""]
  else:
    lines += ["## Usage (sentence-transformers >= 3)", "", "```python",
              "from sentence_transformers import SentenceTransformer",
              "model = SentenceTransformer('PATH_TO_THIS_FOLDER')",
              "emb = model.encode(['3D ActionSLAM: wearable person tracking'], prompt='Represent the Science title: ')",
              "```", "",
              "`1_Pooling/config.json` sets `\"include_prompt\": false`, so the prompt tokens are excluded from the "
              "mean pooling as INSTRUCTOR does.", "",
              "**Difference from the INSTRUCTOR rule.** " + NOTES[kind], ""]
  if matryoshka_dims:
    dims = ", ".join(map(str, matryoshka_dims))
    k = min(matryoshka_dims)
    lines += ["## Matryoshka dimensions", "",
              f"Trained with a Matryoshka loss at {dims} dimensions: the first k dimensions of an embedding, "
              "re-normalised, are an embedding of their own for each of these k.", "", "```python",
              f"model = SentenceTransformer('PATH_TO_THIS_FOLDER', truncate_dim={k})",
              f"emb = model.encode(texts, prompt=instruction, normalize_embeddings=True)   # [N, {k}], unit norm",
              f"# instructor_jax: Instructor.from_pretrained(...).encode(pairs, truncate_dim={k})",
              "```", "",
              "sentence-transformers truncates after its `Normalize` module, so without "
              "`normalize_embeddings=True` the truncated vectors point the same way but are shorter than 1; cosine "
              "similarities (`model.similarity`) are the same either way.", ""]
  lines += ["## Usage (instructor_jax)", "", "```python", "from instructor_jax import Instructor",
            "model = Instructor.from_pretrained('PATH_TO_THIS_FOLDER')",
            "emb = model.encode([['Represent the Science title: ', '3D ActionSLAM: wearable person tracking']])",
            "```", "",
            "## Instruction format", "",
            "Instructions follow INSTRUCTOR: `Represent the [domain] [text type] for [task objective]: `, e.g. "
            "`Represent the Wikipedia question for retrieving supporting documents: ` for queries and "
            "`Represent the Wikipedia document for retrieval: ` for documents. The input text is "
            "`(instruction + text.strip()).strip()`, truncated to " + f"{max_seq_length} tokens.", ""]
  if training_config:
    lines += ["## Training configuration", "", "```json", json.dumps(training_config, indent=2, sort_keys=True,
                                                                      default=str), "```", ""]
  if eval_results:
    lines += ["## Evaluation results", "", "MTEB main scores in points (x 100), as `instructor_jax.eval` prints them.",
              "", "| task | type | metric | score |", "|---|---|---|---|"]
    for task, r in eval_results.items():
      if isinstance(r, Mapping):
        lines.append(f"| {task} | {r.get('type', '')} | {r.get('metric', '')} | "
                     f"{100 * float(r.get('score', 'nan')):.2f} |")
      else:
        lines.append(f"| {task} |  |  | {float(r):.4g} |")
    lines.append("")
  return "\n".join(lines)


