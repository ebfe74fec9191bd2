"""Tokenisation and the INSTRUCTOR instruction-length rule (InstructorEmbedding 1.0.1), shared by data and model.

``[instruction, text]`` is tokenised as ``(instruction + text.strip()).strip()`` with the checkpoint's tokenizer
(T5: ``</s>`` appended; BERT: ``[CLS] ... [SEP]``), and pooling skips the first ``n`` positions, where
``n = len(tokens(instruction.strip())) - 1`` and ``n = 0`` whenever ``n <= 1``. The first thing to know: the
instruction is attended to but not pooled, and a one-token T5 instruction is pooled with the text. Pure Python (no
JAX). WORKSPACE.md ("The instruction rule") spells out each step and how it relates to sentence-transformers.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Sequence, Union

# An input is either a plain string or an ``[instruction, text]`` pair.
Input = Union[str, Sequence[str]]

DEFAULT_MAX_LENGTH = 512
# The real T5 SentencePiece vocabulary shipped with the package (the default tokenizer of random-init runs).
T5_VOCAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "t5-vocab")


def join_instruction(instruction: str, text: str) -> str:
  """The text the encoder sees: ``(instruction + text.strip()).strip()``."""
  return (instruction + text.strip()).strip()


def instruction_length(num_instruction_tokens: int) -> int:
  """Pooling offset ``n`` from the token count of ``instruction.strip()`` *including* its special tokens.

  ``n = count - 1`` (drop the closing ``</s>`` / ``[SEP]``); ``n <= 1 -> 0`` (nothing masked).
  """
  n = int(num_instruction_tokens) - 1
  return 0 if n <= 1 else n


def split_input(item: Input, where: str = "input") -> tuple[str | None, str]:
  """Validates one input and returns ``(instruction or None, text)``."""
  if isinstance(item, str):
    return None, item
  if isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(s, str) for s in item):
    return item[0], item[1]
  raise ValueError(f"{where}: expected a string or an [instruction, text] pair of strings, got {item!r:.200}")


@dataclasses.dataclass(frozen=True)
class Encoded:
  """One tokenised input: ids with special tokens (no padding) and the pooling offset ``instr_len``."""
  ids: tuple[int, ...]
  instr_len: int


class Tokenizer:
  """The checkpoint's tokenizer (T5 SentencePiece or BERT WordPiece) plus the instruction rule.

  Wraps a Hugging Face *fast* tokenizer loaded with ``from_pretrained(folder)`` (in transformers 5,
  ``T5Tokenizer(vocab_file=...)`` / ``BertTokenizer(vocab_file=...)`` silently give wrong ids, so never build them
  from the vocab file directly). ``pad_id`` is the tokenizer's pad token; ``eos_id`` is the token that closes every
  sequence (``</s>`` for T5, ``[SEP]`` for BERT).
  """

  def __init__(self, hf_tokenizer, max_length: int = DEFAULT_MAX_LENGTH):
    min_length = len(hf_tokenizer("", add_special_tokens=True)["input_ids"]) + 1
    if max_length < min_length:
      raise ValueError(f"max_length must be >= {min_length} (room for one token and the special tokens), "
                       f"got {max_length}")
    self.hf = hf_tokenizer
    self.max_length = int(max_length)
    self.pad_id = int(hf_tokenizer.pad_token_id)
    end = hf_tokenizer.eos_token_id if hf_tokenizer.eos_token_id is not None else hf_tokenizer.sep_token_id
    self.eos_id = int(end)

  @classmethod
  def from_pretrained(cls, folder: str | os.PathLike, max_length: int = DEFAULT_MAX_LENGTH) -> "Tokenizer":
    from transformers import AutoTokenizer  # local import: keeps `import instructor_jax` light
    folder = os.fspath(folder)
    try:
      hf = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # pragma: no cover - message enrichment only
      raise ValueError(f"could not load a tokenizer from {folder!r}: {e}") from e
    if hf.pad_token_id is None or (hf.eos_token_id is None and hf.sep_token_id is None):
      raise ValueError(f"tokenizer in {folder!r} has no pad token or no closing token (eos / sep); not a T5 or BERT "
                       "tokenizer")
    return cls(hf, max_length=max_length)

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  def _ids(self, texts: list[str]) -> list[list[int]]:
    if not texts:
      return []
    out = self.hf(texts, truncation=True, max_length=self.max_length, padding=False,
                  add_special_tokens=True, return_attention_mask=False)["input_ids"]
    return [list(x) for x in out]

  def encode(self, inputs: Iterable[Input]) -> list[Encoded]:
    """Tokenises strings and ``[instruction, text]`` pairs (batched calls to the fast tokenizer)."""
    inputs = list(inputs)
    joined, instr_idx, instructions = [], [], []
    for i, item in enumerate(inputs):
      instruction, text = split_input(item, where=f"input {i}")
      if instruction is None:
        joined.append(text.strip())
      else:
        joined.append(join_instruction(instruction, text))
        instr_idx.append(i)
        instructions.append(instruction.strip())
    ids = self._ids(joined)
    n = [0] * len(inputs)
    for i, instr_ids in zip(instr_idx, self._ids(instructions)):
      n[i] = instruction_length(len(instr_ids))
    return [Encoded(tuple(x), k) for x, k in zip(ids, n)]

  def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
    """Plain tokenisation (strip, special tokens, truncation) without any instruction handling."""
    return self._ids([t.strip() for t in texts])


def check_vocab(vocab_size: int, tokenizer_dir: str) -> None:
  """The tokenizer must not produce ids outside the embedding table (torch would crash, JAX would give NaN)."""
  n = Tokenizer.from_pretrained(tokenizer_dir).vocab_size
  if n > vocab_size:
    from instructor_jax.core.errors import CheckpointError
    raise CheckpointError(f"{tokenizer_dir}: the tokenizer has {n} tokens but the model's vocab_size is {vocab_size}; "
                          "this checkpoint cannot embed text tokenized with it (trained on synthetic token ids?)")
