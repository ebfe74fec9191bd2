"""Checks that an export reproduces its source: ``verify_export`` and the two reference encoders it uses.

Read first: three independent readers must agree with our embeddings to ``ATOL`` (fp32): our loader on the written
folder, ``transformers`` (``HF_MODEL_CLASS`` of the backbone) plus the INSTRUCTOR pooling rule (``reference_encode``),
and, for the default layout, ``SentenceTransformer.encode(texts, prompt=instruction)`` except where the ``n <= 1``
rule applies (``card.NOTES``). Any mismatch raises ``VerificationError``.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from instructor_jax.core import errors
from instructor_jax.models import hf, registry

ATOL = 1e-5
VerificationError = errors.VerificationError

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

def reference_encode(folder: str, inputs: Sequence, max_length: int = VERIFY_MAX_LENGTH, batch_size: int = 16
                     ) -> np.ndarray:
  """``transformers.T5EncoderModel`` / ``BertModel`` (by ``config.json``'s ``model_type``) + the INSTRUCTOR pooling
  rule (PyTorch, fp32), reading the folder directly."""
  import torch
  import transformers
  from transformers import AutoTokenizer
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
    model_cls = getattr(transformers, registry.get(json.load(f).get("model_type", "t5")).HF_MODEL_CLASS)
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


def source_embeddings(params, cfg: registry.Config, normalize: bool, tokenizer_dir: str, pairs,
                       max_length: int):
  import jax
  import jax.numpy as jnp
  from instructor_jax.models.embedder import Instructor, InstructorModel
  from instructor_jax.data.tokenization import Tokenizer
  tokenizer = Tokenizer.from_pretrained(tokenizer_dir, max_length=max_length)
  out_features = int(np.shape(params["dense"]["kernel"])[1]) if "dense" in params else None
  cfg = registry.backbone_of(cfg).with_overrides(cfg, dtype=jnp.float32, param_dtype=jnp.float32)
  model = InstructorModel(cfg,
                          out_features=out_features, normalize=normalize, pad_id=tokenizer.pad_id)
  p32 = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float32)), params)
  return Instructor(model, p32, tokenizer).encode(list(pairs), batch_size=16)
