"""Test helpers: tiny random T5 checkpoints in the real Hugging Face / sentence-transformers layouts, and a
plain PyTorch re-statement of the INSTRUCTOR 1.0.1 embedding rule (the numerical reference).

Everything is offline: models are built with transformers (PyTorch) from a config, the tokenizer files come from the
real T5 vocabulary bundled in ``instructor_jax/assets/t5-vocab``.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

VOCAB_DIR = os.path.join(os.path.dirname(__file__), "..", "instructor_jax", "assets", "t5-vocab")
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tiny_t5_config(feed_forward_proj: str = "relu", **kw):
  from transformers import T5Config
  args = dict(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
              feed_forward_proj=feed_forward_proj, layer_norm_epsilon=1e-6)
  args.update(kw)
  return T5Config(**args)


def make_checkpoint(out: str, feed_forward_proj: str = "relu", layout: str = "instructor", seed: int = 0,
                    out_features: int | None = 24, safetensors: bool = True, **config_kw) -> str:
  """Writes a tiny random checkpoint.

  layout: ``instructor`` (hkunlp/instructor-*: weights at the root, 1_Pooling, 2_Dense, 3_Normalize),
  ``gtr`` (sentence-transformers: Transformer in ``0_Transformer``), ``t5`` (a plain ``T5EncoderModel`` folder)
  or ``t5-full`` (a ``T5Model`` with a decoder, as t5-small ships).
  """
  import torch
  from transformers import T5EncoderModel, T5Model
  torch.manual_seed(seed)
  cfg = tiny_t5_config(feed_forward_proj, **config_kw)
  model = (T5Model if layout == "t5-full" else T5EncoderModel)(cfg).eval()
  # Random, non-trivial norms and position biases (HF initialises norms to 1).
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      if "relative_attention_bias" in name:
        p.copy_(torch.randn_like(p))
  os.makedirs(out, exist_ok=True)
  t5_dir = os.path.join(out, "0_Transformer") if layout == "gtr" else out
  model.save_pretrained(t5_dir)
  if not safetensors:  # transformers 5 always writes safetensors: rewrite as a torch pickle like older checkpoints
    os.remove(os.path.join(t5_dir, "model.safetensors"))
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(t5_dir, "pytorch_model.bin"))
  for f in TOKENIZER_FILES:
    shutil.copy(os.path.join(VOCAB_DIR, f), t5_dir)
  if layout in ("t5", "t5-full"):
    return out
  transformer_type = ("InstructorEmbedding.INSTRUCTOR_Transformer" if layout == "instructor"
                      else "sentence_transformers.models.Transformer")
  return _write_sentence_transformers_modules(
      out, t5_dir, "" if layout == "instructor" else "0_Transformer", transformer_type, cfg.d_model, out_features,
      seed, max_seq_length=512, safetensors=safetensors)


def _write_sentence_transformers_modules(out, model_dir, transformer_path, transformer_type, dim, out_features, seed,
                                         max_seq_length, safetensors=True) -> str:
  """The sentence-transformers files around a saved Transformer: ``sentence_bert_config.json``, ``1_Pooling``
  (mean), ``2_Dense`` (random, bias-free, only if ``out_features``), ``N_Normalize`` and ``modules.json``."""
  import torch
  modules = [{"idx": 0, "name": "0", "path": transformer_path, "type": transformer_type},
             {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
  _json(os.path.join(model_dir, "sentence_bert_config.json"), {"max_seq_length": max_seq_length,
                                                               "do_lower_case": False})
  os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)
  _json(os.path.join(out, "1_Pooling", "config.json"), {
      "word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
      "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})
  if out_features is not None:
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    os.makedirs(os.path.join(out, "2_Dense"), exist_ok=True)
    w = torch.randn(out_features, dim, generator=torch.Generator().manual_seed(seed + 1)) / dim ** .5
    _json(os.path.join(out, "2_Dense", "config.json"), {
        "in_features": dim, "out_features": out_features, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity"})
    if safetensors:
      from safetensors.torch import save_file
      save_file({"linear.weight": w.contiguous()}, os.path.join(out, "2_Dense", "model.safetensors"))
    else:
      torch.save({"linear.weight": w}, os.path.join(out, "2_Dense", "pytorch_model.bin"))
  n = len(modules)
  modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"})
  os.makedirs(os.path.join(out, f"{n}_Normalize"), exist_ok=True)
  _json(os.path.join(out, "modules.json"), modules)
  return out


def _json(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)


class ReferenceInstructor:
  """PyTorch re-statement of the InstructorEmbedding 1.0.1 rule on ``T5EncoderModel`` (see tokenization.py)."""

  def __init__(self, folder: str, max_length: int = 512):
    import torch
    from transformers import AutoTokenizer
    modules_path = os.path.join(folder, "modules.json")
    model_dir, self.dense, self.normalize = folder, None, True
    if os.path.exists(modules_path):
      modules = json.load(open(modules_path))
      model_dir = os.path.join(folder, modules[0]["path"])
      self.normalize = any(m["type"].endswith("Normalize") for m in modules)
      for m in modules:
        if m["type"].endswith("Dense"):
          d = os.path.join(folder, m["path"])
          if os.path.exists(os.path.join(d, "model.safetensors")):
            from safetensors.torch import load_file
            self.dense = load_file(os.path.join(d, "model.safetensors"))["linear.weight"]
          else:
            self.dense = torch.load(os.path.join(d, "pytorch_model.bin"), weights_only=True)["linear.weight"]
    self.tok = AutoTokenizer.from_pretrained(model_dir)
    self.model = self.load_model(model_dir).eval()
    self.max_length = max_length

  @staticmethod
  def load_model(model_dir):
    from transformers import T5EncoderModel
    return T5EncoderModel.from_pretrained(model_dir)

  def tokenize(self, inputs):
    joined, n = [], []
    for item in inputs:
      if isinstance(item, str):
        joined.append(item.strip())
        n.append(0)
      else:
        instruction, text = item
        joined.append((instruction + text.strip()).strip())
        ids = self.tok(instruction.strip(), truncation=True, max_length=self.max_length)["input_ids"]
        k = len(ids) - 1
        n.append(0 if k <= 1 else k)
    feats = self.tok(joined, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
    return feats, n

  def hidden_states(self, inputs):
    import torch
    feats, _ = self.tokenize(inputs)
    with torch.no_grad():
      return self.model(**feats).last_hidden_state.numpy(), feats["attention_mask"].numpy()

  def encode(self, inputs, batch_size: int = 8) -> np.ndarray:
    import torch
    out = []
    for start in range(0, len(inputs), batch_size):
      batch = inputs[start:start + batch_size]
      feats, n = self.tokenize(batch)
      with torch.no_grad():
        h = self.model(**feats).last_hidden_state
        mask = feats["attention_mask"].clone()
        for row, k in enumerate(n):
          mask[row, :k] = 0
        m = mask.unsqueeze(-1).float()
        pooled = (h * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
        if self.dense is not None:
          pooled = pooled @ self.dense.T
        if self.normalize:
          pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
      out.append(pooled.numpy())
    return np.concatenate(out)


# Inputs covering the rule's corners: empty and one-token instructions, a word merging across the boundary,
# non-ASCII, plain strings, long texts (truncation at a short max_length), whitespace around both parts.
PAIRS = [
    ["Represent the Science title: ", "3D ActionSLAM: wearable person tracking in multi-floor environments"],
    ["Represent the Wikipedia question for retrieving supporting documents: ", "where is the food stored in a yam plant"],
    ["Represent the Wikipedia document for retrieval: ",
     "Capitalism has been dominant in the Western world since the end of feudalism, but most feel that the term "
     "'mixed economies' more precisely describes most contemporary economies, due to their containing both "
     "private-owned and state-owned enterprises."],
    ["", "an empty instruction pools over everything"],
    ["   ", "a whitespace instruction is empty after strip"],
    ["Represent", " a two-token instruction: n = 2"],
    ["Title", ": a one-token instruction: n = 1 -> 0, nothing masked (n <= 1 rule)"],
    ["Question ", "another one-token instruction"],
    ["Query: ", "two-token instruction"],
    ["Represent the sentence:", "no space between instruction and text"],
    ["Represent the", "m merges across the boundary"],
    ["Represent the ", "  text with surrounding spaces  "],
    ["  Represent the title with leading spaces: ", "leading"],
    ["Represent the German sentence: ", "Größenwahn und Übermut — schöne Grüße aus Köln!"],
    ["Represent the Chinese sentence: ", "生活的真谛是"],
    ["Represent the emoji text: ", "🦙 llamas 🦙 everywhere"],
    ["Represent the code: ", "def main():\n\tpass"],
    ["Represent the tweet for classifying sentiment: ", "I bought an apple for $1.00 at the store. :)"],
    ["Represent the financial statement: ", "The company was founded in 2016."],
    ["Represent the long document for retrieval: ", " ".join(["token"] * 700)],
    ["Represent the " + " ".join(["very"] * 600) + " long instruction: ", "the text after a huge instruction"],
    ["Represent the text: ", ""],
    ["Represent the text: ", "   "],
    ["Represent the question: ", "What's the capital of France?"],
    ["Represent the title: ", "A\n'll !!to?'d''d of, can't."],
    ["Represent the sentence for retrieving duplicate sentences: ", "you…\xa0\xa0you…\xa0\xa0"],
    ["Represent the", "rapist document"],
    "a plain string without instruction",
    "   a plain string with spaces   ",
    "Größe",
    "",
    "The llama (/ˈlɑːmə/; 🦙Spanish pronunciation: [ˈʎama]) (Lama glama) is a domesticated South American camelid",
    ["Represent the Medicine sentence for retrieving a duplicate sentence: ", "Many children need antibiotics."],
    ["Represent the news title for clustering: ", "Stocks rally as rates fall"],
]


# ----------------------------------------------------------------------------------------------------------------
# BERT: tiny random BertModel checkpoints with a WordPiece vocabulary written here (offline, no hub).

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 (pad 0 as in bert-base / MiniLM)


def tiny_wordpiece_vocab() -> list[str]:
  """A deterministic WordPiece vocabulary for ``PAIRS``: the specials, every character of the (lower-cased,
  accent-stripped) pairs but the llama emoji (which stays ``[UNK]``), ``##`` + ASCII letters and digits, the words of at
  most 6 characters plus "represent", and a few suffixes -- so longer words split into several pieces."""
  from tokenizers.normalizers import BertNormalizer
  from tokenizers.pre_tokenizers import BertPreTokenizer
  norm = BertNormalizer(lowercase=True, strip_accents=None, clean_text=True, handle_chinese_chars=True)
  pre = BertPreTokenizer()
  words = set()
  for p in PAIRS:
    for t in ([p] if isinstance(p, str) else p):
      words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
  chars = sorted({c for w in words for c in w} - {"🦙"})
  ascii_pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
  whole = sorted(w for w in words if (len(w) <= 6 or w == "represent") and "🦙" not in w and len(w) > 1)
  suffixes = ["##s", "##ing", "##ed", "##ment", "##tion", "##ies", "##er"]
  out = list(BERT_SPECIALS)
  for piece in chars + ascii_pieces + whole + suffixes:
    if piece not in out:
      out.append(piece)
  return out


def write_bert_tokenizer(folder: str, vocab: list[str] | None = None) -> int:
  """Writes ``vocab.txt`` and the fast tokenizer files (lower-casing, as uncased BERT) into ``folder``; returns the
  vocabulary size. Built with ``tokenizers`` (transformers 5's ``BertTokenizer(vocab_file=...)`` maps every word to
  ``[UNK]``)."""
  from tokenizers import BertWordPieceTokenizer
  from transformers import BertTokenizerFast
  vocab = vocab or tiny_wordpiece_vocab()
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(vocab) + "\n")
  wp = BertWordPieceTokenizer({w: i for i, w in enumerate(vocab)}, lowercase=True, strip_accents=None,
                              clean_text=True, handle_chinese_chars=True)
  tok = BertTokenizerFast(tokenizer_object=wp._tokenizer, do_lower_case=True, unk_token="[UNK]", sep_token="[SEP]",
                          pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", model_max_length=512)
  tok.save_pretrained(folder)
  return len(vocab)


def tiny_bert_config(hidden_act: str = "gelu", **kw):
  from transformers import BertConfig
  args = dict(vocab_size=len(tiny_wordpiece_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, hidden_act=hidden_act, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
              max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
              initializer_range=0.2)  # 10x BERT's 0.02: activations large enough that the GELU variant matters
  args.update(kw)
  return BertConfig(**args)


def random_bert_model(cfg, seed: int = 0, pooler: bool = True):
  """A ``BertModel`` with random, non-trivial LayerNorms and biases (HF initialises them to 1 / 0)."""
  import torch
  from transformers import BertModel
  torch.manual_seed(seed)
  model = BertModel(cfg, add_pooling_layer=pooler).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "LayerNorm.weight" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
  return model


def make_bert_checkpoint(out: str, hidden_act: str = "gelu", layout: str = "sentence-transformers", seed: int = 0,
                         out_features: int | None = None, pooler: bool = True, position_ids_buffer: bool = True,
                         **config_kw) -> str:
  """Writes a tiny random BERT checkpoint with ``save_pretrained`` and the tokenizer from ``write_bert_tokenizer``.

  layout: ``sentence-transformers`` (all-MiniLM-L6-v2: Transformer at the root, ``1_Pooling`` (mean, no
  ``include_prompt``), ``2_Dense`` only if ``out_features``, then ``N_Normalize``), ``subfolder`` (the same modules
  with the Transformer in ``0_Transformer``) or ``bert`` (a plain ``BertModel`` folder). ``position_ids_buffer``
  adds the ``embeddings.position_ids`` tensor older checkpoints (MiniLM) carry.
  """
  import torch
  cfg = tiny_bert_config(hidden_act, **config_kw)
  model = random_bert_model(cfg, seed, pooler)
  os.makedirs(out, exist_ok=True)
  model_dir = os.path.join(out, "0_Transformer") if layout == "subfolder" else out
  model.save_pretrained(model_dir)
  if position_ids_buffer:
    from safetensors.torch import load_file, save_file
    path = os.path.join(model_dir, "model.safetensors")
    sd = load_file(path)
    sd["embeddings.position_ids"] = torch.arange(cfg.max_position_embeddings)[None]
    save_file(sd, path, metadata={"format": "pt"})
  write_bert_tokenizer(model_dir)
  if layout == "bert":
    return out
  return _write_sentence_transformers_modules(
      out, model_dir, "" if layout == "sentence-transformers" else "0_Transformer",
      "sentence_transformers.models.Transformer", cfg.hidden_size, out_features, seed, max_seq_length=256)


class ReferenceBertInstructor(ReferenceInstructor):
  """The same PyTorch re-statement of the rule on transformers ``BertModel`` (the tokenizer adds ``[CLS]`` /
  ``[SEP]``; ``n = len(tokens(instruction.strip())) - 1`` therefore counts ``[CLS]``, and ``n <= 1 -> 0``)."""

  @staticmethod
  def load_model(model_dir):
    import torch
    from transformers import BertModel
    return BertModel.from_pretrained(model_dir, dtype=torch.float32)


def assert_same_folders(a: str, b: str) -> None:
  """Two checkpoint folders hold bit-identical fp32 tensors, the same Dense, encoder config and normalisation."""
  import numpy as np
  from instructor_jax.models import hf
  fa, fb = hf.read_folder(a), hf.read_folder(b)
  assert set(fa.state) == set(fb.state)
  for k in fa.state:
    assert fb.state[k].dtype == np.float32 and np.array_equal(fa.state[k], fb.state[k]), k
  assert (fa.dense is None and fb.dense is None) or np.array_equal(fa.dense, fb.dense)
  assert fa.config == fb.config and fa.normalize == fb.normalize
