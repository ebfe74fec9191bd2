"""JAX checkpoints <-> Hugging Face / sentence-transformers folders.

    python -m instructor_jax.convert to-hf --checkpoint WORKDIR[/STEP] --out DIR [--legacy-instructor]
    python -m instructor_jax.convert to-hf --model DIR_OR_HUB_ID --out DIR      # re-export an HF folder
    python -m instructor_jax.convert from-hf --model DIR_OR_HUB_ID --out WORKDIR

Layouts written by ``to-hf`` (``export_folder``):

- default, **sentence-transformers >= 3** (tested with 6.2): ``config.json`` (T5EncoderModel or BertModel),
  ``model.safetensors``, tokenizer files (``spiece.model`` / ``vocab.txt``, ``tokenizer.json``, ...),
  ``modules.json`` (Transformer at path ``""``), ``sentence_bert_config.json``, ``config_sentence_transformers.json``,
  ``1_Pooling/config.json`` (mean, ``"include_prompt": false``), ``2_Dense`` (``linear.weight [out, in]``, no bias,
  safetensors; only if the model has one), ``N_Normalize`` and a ``README.md`` model card -- the module layout of a
  sentence-transformers source (a BERT model without Dense such as all-MiniLM-L6-v2 exports as Transformer,
  ``1_Pooling``, ``2_Normalize``). ``SentenceTransformer(DIR).encode(texts, prompt=instruction)`` then gives our
  embeddings, except where the ``n <= 1`` rule applies (T5: a one-token instruction, see ``ONE_TOKEN_NOTE``; BERT:
  an instruction with no tokens, see ``BERT_NOTE``). BERT exports keep the pooler weights (a complete
  ``BertModel``).
- ``legacy=True`` (``--legacy-instructor``, T5 only): the hkunlp/instructor-* layout for InstructorEmbedding 1.0.1 on
  sentence-transformers 2.2.2: ``InstructorEmbedding.INSTRUCTOR_Transformer`` at path ``""``, a ``1_Pooling`` config
  *without* ``include_prompt`` (INSTRUCTOR_Pooling rejects unknown keys), ``2_Dense/pytorch_model.bin`` (2.2.2
  reads nothing else) and ``sentence_bert_config.json`` with only ``max_seq_length`` / ``do_lower_case`` (its
  Transformer passes every key to ``__init__``). Root weights stay ``model.safetensors``.

Every export is written to a temporary folder next to ``out`` and renamed at the end, after it verified itself
(``verify_export``): the written tensors read back bit-exactly (fp32), our loader reproduces the source
embeddings, ``transformers.T5EncoderModel`` / ``BertModel`` plus the INSTRUCTOR pooling rule reproduces our loader
(<= 1e-5), and
for the default layout sentence-transformers with ``prompt=`` reproduces them too. A failure raises
``VerificationError`` (exit status 2 on the command line) and leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Any, Mapping, Sequence

import numpy as np

from instructor_jax.core import errors
from instructor_jax.models import hf
from instructor_jax.data.tokenization import check_vocab
from instructor_jax.models.bert import BertConfig
from instructor_jax.models.t5 import T5Config

TOKENIZER_FILES = ("spiece.model", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
DTYPES = ("float32", "float16", "bfloat16")
ATOL = 1e-5

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
VERIFY_PAIRS = [
    ["Represent the Science title: ", "3D ActionSLAM: wearable person tracking in multi-floor environments"],
    ["Represent the Wikipedia question for retrieving supporting documents: ", "where is the food stored in a yam plant"],
    ["Represent the Wikipedia document for retrieval: ",
     "Capitalism has been dominant in the Western world since the end of feudalism, but most feel that the term "
     "'mixed economies' more precisely describes most contemporary economies."],
    ["Title", "a one-token instruction is pooled with the text"],
    ["Query: ", "two-token instruction"],
    ["Represent the German sentence: ", "Größenwahn und Übermut — schöne Grüße aus Köln!"],
    ["Represent the text: ", ""],
    ["Represent the long document for retrieval: ", " ".join(["token"] * 200)],
    "a plain string without instruction",
    "Größe",
]
VERIFY_MAX_LENGTH = 128


VerificationError = errors.VerificationError  # core/errors.py


ConvertError = errors.ExportError  # core/errors.py


# ----------------------------------------------------------------------------------------------------------------
# Writing


# The config.json fields that shape the encoder: an export writes ours over the source's.
SHAPE_FIELDS = {
    "t5": ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
           "relative_attention_max_distance", "layer_norm_epsilon", "feed_forward_proj", "model_type"),
    "bert": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
             "position_embedding_type", "model_type"),
}


def _as_config(config: T5Config | BertConfig | Mapping[str, Any], params: Mapping[str, Any] | None = None
               ) -> tuple[T5Config | BertConfig, dict]:
  """Accepts a ``T5Config`` / ``BertConfig`` or a parsed HF ``config.json``; returns both forms (the HF dict as
  ``T5EncoderModel`` / ``BertModel``). With ``params``, the config is matched to them (BERT: pooler or not)."""
  if isinstance(config, (T5Config, BertConfig)):
    cfg, hf_cfg = config, config.to_hf()
  else:
    hf_cfg = dict(config)
    cfg = hf.config_from_hf(hf_cfg)
  if params is not None:
    cfg = hf.match_params(cfg, params)
  base = cfg.to_hf()
  # Keep the source's extra fields (e.g. task_specific_params), but the shape fields must be ours.
  hf_cfg = {k: v for k, v in hf_cfg.items() if not k.startswith("_") and k not in ("transformers_version",)}
  hf_cfg.update({k: v for k, v in base.items() if k in SHAPE_FIELDS[hf.backbone(cfg)]})
  for k, v in base.items():
    hf_cfg.setdefault(k, v)
  hf_cfg["architectures"] = base["architectures"]
  return cfg, hf_cfg


def _json(path: str, obj: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
    f.write("\n")


def _save_tensors(tensors: Mapping[str, np.ndarray], path: str, dtype: str, fmt: str = "safetensors") -> None:
  import torch
  tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
  sd = {k: torch.from_numpy(np.array(v, np.float32, copy=True)).to(tdtype).contiguous()
        for k, v in tensors.items()}
  if fmt == "safetensors":
    from safetensors.torch import save_file
    save_file(sd, path, metadata={"format": "pt"})
  else:
    torch.save(sd, path)


def _copy_tokenizer(tokenizer_dir: str, out: str) -> None:
  found = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(tokenizer_dir, f))]
  if "tokenizer.json" not in found and "spiece.model" not in found:
    raise ConvertError(f"{tokenizer_dir}: no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})")
  for f in found:
    shutil.copyfile(os.path.join(tokenizer_dir, f), os.path.join(out, f))


def _versions() -> dict:
  out = {}
  for name in ("sentence_transformers", "transformers", "torch"):
    try:
      out[name if name != "torch" else "pytorch"] = __import__(name).__version__
    except Exception:  # pragma: no cover
      pass
  return out


def write_folder(out: str, state: Mapping[str, np.ndarray], dense: np.ndarray | None, hf_config: dict,
                 tokenizer_dir: str, *, normalize: bool = True, legacy: bool = False, dtype: str = "float32",
                 max_seq_length: int = 512, card: str | None = None) -> None:
  """Writes the files of one layout into an existing empty folder ``out`` (no verification, no renaming)."""
  if dtype not in DTYPES:
    raise ConvertError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  d_model = int(hf.config_from_hf(hf_config).d_model)
  cfg = dict(hf_config, torch_dtype=dtype)
  _json(os.path.join(out, "config.json"), cfg)
  _save_tensors(state, os.path.join(out, "model.safetensors"), dtype)
  _copy_tokenizer(tokenizer_dir, out)
  _json(os.path.join(out, "sentence_bert_config.json"), {"max_seq_length": int(max_seq_length), "do_lower_case": False})
  modules = [{"idx": 0, "name": "0", "path": "",
              "type": "InstructorEmbedding.INSTRUCTOR_Transformer" if legacy
              else "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
  pooling = {"word_embedding_dimension": d_model, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
             "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
  if not legacy:
    pooling.update({"pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False,
                    "include_prompt": False})
  os.makedirs(os.path.join(out, "1_Pooling"))
  _json(os.path.join(out, "1_Pooling", "config.json"), pooling)
  if dense is not None:
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    ddir = os.path.join(out, "2_Dense")
    os.makedirs(ddir)
    _json(os.path.join(ddir, "config.json"), {"in_features": int(dense.shape[1]), "out_features": int(dense.shape[0]),
                                              "bias": False,
                                              "activation_function": "torch.nn.modules.linear.Identity"})
    # sentence-transformers 2.2.2 reads only pytorch_model.bin; newer versions prefer model.safetensors.
    if legacy:
      _save_tensors({"linear.weight": dense}, os.path.join(ddir, "pytorch_model.bin"), dtype, fmt="bin")
    else:
      _save_tensors({"linear.weight": dense}, os.path.join(ddir, "model.safetensors"), dtype)
  if normalize:
    n = len(modules)
    modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"})
    os.makedirs(os.path.join(out, f"{n}_Normalize"))
  _json(os.path.join(out, "modules.json"), modules)
  if legacy:
    st_cfg = {"__version__": {"sentence_transformers": "2.2.2", "transformers": "4.20.0", "pytorch": "1.7.0"}}
  else:
    st_cfg = {"__version__": _versions(), "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}
  _json(os.path.join(out, "config_sentence_transformers.json"), st_cfg)
  if card is not None:
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
      f.write(card)


# ----------------------------------------------------------------------------------------------------------------
# Model card


def model_card(name: str, *, legacy: bool, dim: int, config: T5Config | BertConfig, max_seq_length: int, dtype: str,
               training_config: Mapping[str, Any] | None = None, eval_results: Mapping[str, Any] | None = None,
               source: str | None = None, dense: bool = True, normalize: bool = True) -> str:
  """A README.md for the exported folder: loading, instruction format, training config, evaluation results."""
  kind = hf.backbone(config)
  encoder = (f"T5 encoder with {config.num_layers} layers, d_model {config.d_model}, `{config.feed_forward_proj}`"
             if kind == "t5" else
             f"BERT encoder with {config.num_layers} layers, hidden size {config.d_model}, `{config.hidden_act}`")
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
              "**Difference from the INSTRUCTOR rule.** " + (ONE_TOKEN_NOTE if kind == "t5" else BERT_NOTE), ""]
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


# ----------------------------------------------------------------------------------------------------------------
# Verification


def reference_encode(folder: str, inputs: Sequence, max_length: int = VERIFY_MAX_LENGTH, batch_size: int = 16
                     ) -> np.ndarray:
  """``transformers.T5EncoderModel`` / ``BertModel`` (by ``config.json``'s ``model_type``) + the INSTRUCTOR pooling
  rule (PyTorch, fp32), reading the folder directly."""
  import torch
  from transformers import AutoTokenizer, BertModel, T5EncoderModel
  modules_path = os.path.join(folder, "modules.json")
  model_dir, dense, normalize = folder, None, True
  if os.path.exists(modules_path):
    with open(modules_path, encoding="utf-8") as f:
      modules = json.load(f)
    model_dir = os.path.join(folder, modules[0]["path"])
    normalize = any(m["type"].endswith("Normalize") for m in modules)
    for m in modules:
      if m["type"].endswith("Dense"):
        d = os.path.join(folder, m["path"])
        if os.path.exists(os.path.join(d, "model.safetensors")):
          from safetensors.torch import load_file
          dense = load_file(os.path.join(d, "model.safetensors"))["linear.weight"].float()
        else:
          dense = torch.load(os.path.join(d, "pytorch_model.bin"), weights_only=True)["linear.weight"].float()
  tok = AutoTokenizer.from_pretrained(model_dir)
  with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
    model_cls = BertModel if json.load(f).get("model_type") == "bert" else T5EncoderModel
  model = model_cls.from_pretrained(model_dir, dtype=torch.float32).eval()
  out = []
  for start in range(0, len(inputs), batch_size):
    joined, n = [], []
    for item in inputs[start:start + batch_size]:
      if isinstance(item, str):
        joined.append(item.strip())
        n.append(0)
      else:
        instruction, text = item
        joined.append((instruction + text.strip()).strip())
        k = len(tok(instruction.strip(), truncation=True, max_length=max_length)["input_ids"]) - 1
        n.append(0 if k <= 1 else k)
    feats = tok(joined, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
      h = model(input_ids=feats["input_ids"], attention_mask=feats["attention_mask"]).last_hidden_state.float()
      mask = feats["attention_mask"].clone()
      for row, k in enumerate(n):
        mask[row, :k] = 0
      m = mask.unsqueeze(-1).float()
      pooled = (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
      if dense is not None:
        pooled = pooled @ dense.T
      if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    out.append(pooled.numpy())
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def sentence_transformers_encode(folder: str, inputs: Sequence, max_length: int = VERIFY_MAX_LENGTH
                                 ) -> tuple[np.ndarray, np.ndarray]:
  """Embeds with ``SentenceTransformer(folder).encode(texts, prompt=instruction)`` (one call per instruction).

  Returns ``(embeddings, comparable)``: ``comparable[i]`` is False where the INSTRUCTOR rule and
  sentence-transformers are documented to differ: where the instruction tokenises to two ids, i.e. ``n = 1`` (T5: one
  token + ``</s>``, ``ONE_TOKEN_NOTE``; BERT: ``[CLS] [SEP]`` of an instruction without tokens, ``BERT_NOTE``).
  """
  from sentence_transformers import SentenceTransformer
  model = SentenceTransformer(folder, device="cpu")
  model.max_seq_length = max_length
  tok = model.tokenizer
  groups: dict[str | None, list[int]] = {}
  for i, item in enumerate(inputs):
    groups.setdefault(None if isinstance(item, str) else item[0], []).append(i)
  out = None
  comparable = np.ones(len(inputs), bool)
  for instruction, idx in groups.items():
    # INSTRUCTOR joins `instruction + text.strip()`; sentence-transformers joins `prompt + text`: strip the texts.
    texts = [inputs[i] if instruction is None else inputs[i][1].strip() for i in idx]
    emb = model.encode(texts, prompt=instruction or None, convert_to_numpy=True, batch_size=16,
                       show_progress_bar=False)
    if out is None:
      out = np.zeros((len(inputs), emb.shape[1]), np.float32)
    out[idx] = emb
    if instruction and len(tok(instruction.strip(), truncation=True, max_length=max_length)["input_ids"]) == 2:
      comparable[idx] = False
  return out, comparable


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if a.size else 0.0


def verify_export(folder: str, expected: np.ndarray | None, *, legacy: bool, dtype: str = "float32",
                  state: Mapping[str, np.ndarray] | None = None, dense: np.ndarray | None = None,
                  pairs: Sequence = VERIFY_PAIRS, max_length: int = VERIFY_MAX_LENGTH,
                  log=print) -> dict[str, float]:
  """Checks an exported folder; raises ``VerificationError`` on any mismatch. Returns the measured differences.

  - ``state`` / ``dense`` (fp32 only): the tensors read back from the folder equal them bit for bit;
  - ``expected`` (embeddings of ``pairs`` from the source parameters): our loader on the folder matches them
    (<= 1e-5 in fp32; cosine >= 0.99 for fp16/bf16 weights);
  - transformers ``T5EncoderModel`` / ``BertModel`` + reference pooling matches our loader (<= 1e-5, fp32);
  - default layout: sentence-transformers with ``prompt=`` matches our loader (<= 1e-5) except one-token
    instructions; legacy layout: the files InstructorEmbedding 1.0.1 needs are present and parse.
  """
  from transformers.utils import logging as hf_logging
  from instructor_jax.models.embedder import Instructor
  hf_logging.disable_progress_bar()  # its "Loading weights" bars, once per reload: not the user's business here
  report: dict[str, float] = {}
  pairs = list(pairs)
  if state is not None and dtype == "float32":
    got = hf.read_folder(folder)
    for k, v in state.items():
      if k not in got.state or got.state[k].dtype != np.float32 or not np.array_equal(got.state[k], v):
        raise VerificationError(f"{folder}: tensor {k} does not read back bit-exactly")
    if (dense is None) != (got.dense is None) or (dense is not None and not np.array_equal(got.dense, dense)):
      raise VerificationError(f"{folder}: 2_Dense/linear.weight does not read back bit-exactly")
    report["readback"] = 0.0
  ours = Instructor.from_pretrained(folder, max_length=max_length).encode(pairs, batch_size=16)
  if expected is not None:
    if dtype == "float32":
      diff = report["ours_vs_source"] = _max_diff(ours, expected)
      if diff > ATOL:
        raise VerificationError(f"{folder}: reloaded embeddings differ from the source by {diff:.2e} > {ATOL}")
    else:
      cos = float(np.min(np.sum(ours * expected, -1) / np.maximum(
          np.linalg.norm(ours, axis=-1) * np.linalg.norm(expected, axis=-1), 1e-12)))
      report["min_cosine_vs_source"] = cos
      if cos < 0.99:
        raise VerificationError(f"{folder}: {dtype} embeddings have cosine {cos:.4f} < 0.99 to the fp32 source")
  diff = report["torch_reference"] = _max_diff(reference_encode(folder, pairs, max_length), ours)
  if diff > ATOL:
    raise VerificationError(f"{folder}: the transformers encoder + INSTRUCTOR pooling differs from our loader "
                            f"by {diff:.2e} > {ATOL}")
  if legacy:
    _check_legacy_files(folder)
  else:
    st, comparable = sentence_transformers_encode(folder, pairs, max_length)
    diff = report["sentence_transformers"] = _max_diff(st[comparable], ours[comparable])
    if diff > ATOL:
      raise VerificationError(f"{folder}: SentenceTransformer.encode(texts, prompt=instruction) differs from our "
                              f"loader by {diff:.2e} > {ATOL}")
  log(f"verified {folder}: " + ", ".join(f"{k} {v:.2e}" if k != "min_cosine_vs_source" else f"{k} {v:.5f}"
                                         for k, v in report.items()))
  return report


def _check_legacy_files(folder: str) -> None:
  import torch
  with open(os.path.join(folder, "modules.json"), encoding="utf-8") as f:
    modules = json.load(f)
  if modules[0]["type"] != "InstructorEmbedding.INSTRUCTOR_Transformer" or modules[0]["path"] != "":
    raise VerificationError(f"{folder}/modules.json: module 0 must be INSTRUCTOR_Transformer at path ''")
  with open(os.path.join(folder, "1_Pooling", "config.json"), encoding="utf-8") as f:
    pooling = json.load(f)
  allowed = {"word_embedding_dimension", "pooling_mode", "pooling_mode_cls_token", "pooling_mode_max_tokens",
             "pooling_mode_mean_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
             "pooling_mode_lasttoken"}
  if set(pooling) - allowed:
    raise VerificationError(f"{folder}/1_Pooling/config.json: keys {sorted(set(pooling) - allowed)} crash "
                            "INSTRUCTOR_Pooling")
  with open(os.path.join(folder, "sentence_bert_config.json"), encoding="utf-8") as f:
    if set(json.load(f)) - {"max_seq_length", "do_lower_case"}:
      raise VerificationError(f"{folder}/sentence_bert_config.json: INSTRUCTOR_Transformer accepts only "
                              "max_seq_length and do_lower_case")
  if any(m["type"].endswith("Dense") for m in modules):
    sd = torch.load(os.path.join(folder, "2_Dense", "pytorch_model.bin"), weights_only=True)
    if set(sd) != {"linear.weight"}:
      raise VerificationError(f"{folder}/2_Dense/pytorch_model.bin: expected only linear.weight, found {sorted(sd)}")


# ----------------------------------------------------------------------------------------------------------------
# Export (atomic)


@contextlib.contextmanager
def _sigterm_as_exception():
  """Turns SIGTERM into SystemExit while exporting, so the temporary folder is removed (main thread only)."""
  def handler(signum, frame):
    raise SystemExit(128 + signum)
  try:
    previous = signal.signal(signal.SIGTERM, handler)
  except ValueError:  # not the main thread
    yield
    return
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def _source_embeddings(params, cfg: T5Config | BertConfig, normalize: bool, tokenizer_dir: str, pairs,
                       max_length: int):
  import jax
  import jax.numpy as jnp
  from instructor_jax.models.embedder import Instructor, InstructorModel
  from instructor_jax.data.tokenization import Tokenizer
  tokenizer = Tokenizer.from_pretrained(tokenizer_dir, max_length=max_length)
  out_features = int(np.shape(params["dense"]["kernel"])[1]) if "dense" in params else None
  model = InstructorModel(dataclasses.replace(cfg, dtype=jnp.float32, param_dtype=jnp.float32),
                          out_features=out_features, normalize=normalize, pad_id=tokenizer.pad_id)
  p32 = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float32)), params)
  return Instructor(model, p32, tokenizer).encode(list(pairs), batch_size=16)


def _fix_permissions(root: str) -> None:
  """mkdtemp folders are 0700 and some writers use 0600: give the export the usual umask-based modes."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(root, 0o777 & ~umask)
  for d, dirs, files in os.walk(root):
    for n in dirs:
      os.chmod(os.path.join(d, n), 0o777 & ~umask)
    for n in files:
      os.chmod(os.path.join(d, n), 0o666 & ~umask)


_OWNER = ".owner.json"   # in an export's temp folders: who is writing it
_LEGACY_STALE_S = 3600  # a temp folder without an owner file (older versions) is stale after an hour


def _claim(folder: str) -> None:
  from instructor_jax.storage.workdir import _start_time
  with open(os.path.join(folder, _OWNER), "w") as f:
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "start_time": _start_time(os.getpid())}, f)


def remove_stale_temp(out: str, log=print) -> list[str]:
  """Removes the temp / backup folders ``.<name>.tmp-*`` / ``.<name>.old-*`` that exports of ``out`` killed before
  they finished left beside it (their writer is no longer running); returns them. A folder whose writer is alive,
  or that belongs to another host, is left alone."""
  from instructor_jax.storage.workdir import _alive
  parent, base = os.path.dirname(out), os.path.basename(out)
  removed = []
  for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
    if not (name.startswith(f".{base}.tmp-") or name.startswith(f".{base}.old-")):
      continue
    path = os.path.join(parent, name)
    try:
      with open(os.path.join(path, _OWNER)) as f:
        owner = json.load(f)
      stale = owner.get("host") == socket.gethostname() and not _alive(int(owner["pid"]), owner.get("start_time"))
    except (OSError, ValueError, KeyError):
      stale = time.time() - os.path.getmtime(path) > _LEGACY_STALE_S
    if stale:
      if name.startswith(f".{base}.old-") and os.path.isdir(os.path.join(path, "old")) and not os.path.exists(out):
        os.rename(os.path.join(path, "old"), out)  # an export killed between its two renames: the old one returns
        log(f"restored {out} from the backup of an interrupted export")
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
      log(f"removed {path}, left by an interrupted export")
  return removed


def export_folder(params: Mapping[str, Any], config: T5Config | BertConfig | Mapping[str, Any], out: str, *,
                  tokenizer_dir: str, normalize: bool = True, legacy: bool = False, dtype: str = "float32",
                  max_seq_length: int = 512, card: str | Mapping[str, Any] | None = None, overwrite: bool = False,
                  verify: bool = True, log=print) -> str:
  """Writes ``params`` (the ``InstructorModel`` pytree, any float dtype) as an HF / sentence-transformers folder.

  ``config``: a ``T5Config`` / ``BertConfig`` or the encoder's HF ``config.json`` dict (the backbone is its
  ``model_type``). ``params['dense']['kernel'] [in, out]`` becomes ``2_Dense`` (absent: no Dense module). ``card``:
  the README text, or a dict of ``model_card`` keyword arguments (``name``, ``training_config``, ``eval_results``,
  ``source``). For BERT, ``max_seq_length`` and the verification length are capped at ``max_position_embeddings``.
  The folder appears at ``out`` only complete and verified; returns ``out``.
  """
  out = os.path.abspath(os.fspath(out))
  if os.path.exists(out) and not overwrite:
    raise ConvertError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
  if dtype not in DTYPES:
    raise ConvertError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  cfg, hf_cfg = _as_config(config, params)
  if legacy and hf.backbone(cfg) != "t5":
    raise ConvertError("--legacy-instructor writes the hkunlp/instructor-* layout, which is for T5 models; export "
                       f"this {hf.backbone(cfg)} model in the default sentence-transformers layout")
  check_vocab(cfg.vocab_size, tokenizer_dir)
  verify_length = VERIFY_MAX_LENGTH
  if isinstance(cfg, BertConfig):  # no positions beyond the table
    max_seq_length = min(max_seq_length, cfg.max_position_embeddings)
    verify_length = min(verify_length, cfg.max_position_embeddings)
  state, dense = hf.from_flax(params, cfg, dtype=np.float32)
  hf.check_state(state, cfg, where="params")
  if not isinstance(card, str):
    kw = dict(card or {})
    kw.setdefault("name", os.path.basename(out))
    card = model_card(legacy=legacy, dim=int(dense.shape[0]) if dense is not None else cfg.d_model, config=cfg,
                      max_seq_length=max_seq_length, dtype=dtype, dense=dense is not None, normalize=normalize, **kw)
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  remove_stale_temp(out, log)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
  _claim(tmp)
  backup = None
  try:
    with _sigterm_as_exception():
      write_folder(tmp, state, dense, hf_cfg, tokenizer_dir, normalize=normalize, legacy=legacy, dtype=dtype,
                   max_seq_length=max_seq_length, card=card)
      _fix_permissions(tmp)
      if verify:
        expected = _source_embeddings(params, cfg, normalize, tokenizer_dir, VERIFY_PAIRS, verify_length)
        verify_export(tmp, expected, legacy=legacy, dtype=dtype, state=state, dense=dense, max_length=verify_length,
                      log=log)
      if os.path.exists(out):
        backup = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
        _claim(backup)
        os.rename(out, os.path.join(backup, "old"))
      os.remove(os.path.join(tmp, _OWNER))
      os.rename(tmp, out)
      tmp = None
  except BaseException:
    if backup is not None and not os.path.exists(out):  # put the previous export back
      os.rename(os.path.join(backup, "old"), out)
    raise
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
    if backup is not None:
      shutil.rmtree(backup, ignore_errors=True)
  use = (f"InstructorEmbedding 1.0.1: INSTRUCTOR({out!r}).encode([[instruction, text], ...])" if legacy else
         f"SentenceTransformer({out!r}).encode(texts, prompt=instruction)")
  log(f"wrote {out} ({'legacy INSTRUCTOR' if legacy else 'sentence-transformers'} layout, {dtype}): {use}")
  return out


# ----------------------------------------------------------------------------------------------------------------
# Sources: orbax checkpoints (checkpoints.py, the trainer's API) and HF folders


def _meta_get(meta: Mapping[str, Any], *names, default=None):
  for n in names:
    if n in meta and meta[n] is not None:
      return meta[n]
  return default


def load_checkpoint(path: str):
  """``(params, hf_config, normalize, tokenizer_dir, max_seq_length, training_config, step)`` from an orbax workdir
  (its newest intact step) or ``WORKDIR/STEP``, through the trainer's ``checkpoints.restore_params``."""
  try:
    from instructor_jax.storage import checkpoints
  except ImportError as e:
    raise ConvertError("reading orbax checkpoints needs instructor_jax/checkpoints.py (restore_params), which is "
                       f"not available: {e}") from e
  params, meta = checkpoints.restore_params(path)
  meta = dict(meta or {})
  hf_config = _meta_get(meta, "model_config", "t5_config", "hf_config")  # t5_config: checkpoints before BERT
  if hf_config is None:
    raise ConvertError(f"{path}: checkpoint metadata has no HF encoder config (keys: {sorted(meta)})")
  if isinstance(hf_config, (T5Config, BertConfig)):
    hf_config = hf_config.to_hf()
  tokenizer_dir = _meta_get(meta, "tokenizer_dir", "tokenizer")
  if tokenizer_dir is None or not os.path.isdir(tokenizer_dir):
    raise ConvertError(f"{path}: checkpoint metadata names no existing tokenizer folder ({tokenizer_dir!r})")
  normalize = bool(_meta_get(meta, "normalize", default=True))
  out_features = _meta_get(meta, "out_features")
  kernel_shape = np.shape(params["dense"]["kernel"]) if "dense" in params else None
  if (out_features is None) != (kernel_shape is None) or (
      kernel_shape is not None and int(kernel_shape[1]) != int(out_features)):
    raise ConvertError(f"{path}: metadata out_features {out_features} does not match the dense kernel "
                       f"{kernel_shape}")
  training = _meta_get(meta, "config", "training_config")
  max_seq_length = _meta_get(meta, "max_seq_length")
  return params, dict(hf_config), normalize, tokenizer_dir, max_seq_length, training, meta.get("step")


def load_hf(path_or_hub_id: str):
  """``(params numpy fp32, hf_config, normalize, tokenizer_dir, max_seq_length)`` from an HF folder or hub id."""
  from instructor_jax.models.embedder import _resolve
  folder = hf.read_folder(_resolve(path_or_hub_id))
  params = hf.to_flax(folder.state, folder.config, folder.dense, dtype=np.float32)
  return params, folder.hf_config, folder.normalize, folder.model_dir, folder.max_seq_length


def import_hf(model: str, workdir: str, step: int = 0, log=print) -> str:
  """``from-hf``: an HF folder / hub id -> an orbax checkpoint (``checkpoints.save_params``) training starts from.

  ``save_params`` copies the tokenizer files into the workdir, so the checkpoint does not depend on the source.
  The saved parameters are restored and compared bit for bit.
  """
  try:
    from instructor_jax.storage import checkpoints
  except ImportError as e:
    raise ConvertError("writing orbax checkpoints needs instructor_jax/checkpoints.py (save_params), which is "
                       f"not available: {e}") from e
  workdir = os.path.abspath(workdir)
  if os.path.isdir(workdir) and any(n.split(".")[0].isdigit() for n in os.listdir(workdir)):
    raise ConvertError(f"{workdir} already holds checkpoints; from-hf writes a new workdir (training would resume "
                       "from its latest step, not from the imported weights)")
  params, hf_config, normalize, tokenizer_dir, max_seq_length = load_hf(model)
  cfg = hf.config_from_hf(hf_config)
  check_vocab(cfg.vocab_size, tokenizer_dir)
  meta = {"model_config": cfg.to_hf() | {k: v for k, v in hf_config.items() if not k.startswith("_")},
          "out_features": int(params["dense"]["kernel"].shape[1]) if "dense" in params else None,
          "normalize": bool(normalize), "tokenizer_dir": tokenizer_dir, "source": model,
          "max_seq_length": max_seq_length or 512}
  checkpoints.save_params(workdir, params, meta, step=step)
  restored, _ = checkpoints.restore_params(os.path.join(workdir, str(step)))
  import jax
  flat_a = jax.tree_util.tree_leaves_with_path(params)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(restored))
  for path, a in flat_a:
    b = flat_b.get(path)
    if b is None or not np.array_equal(np.asarray(b, np.float32), np.asarray(a, np.float32)):
      raise VerificationError(f"{workdir}: parameter {jax.tree_util.keystr(path)} does not restore bit-exactly")
  log(f"wrote {workdir} (step {step}) from {model}")
  return workdir
