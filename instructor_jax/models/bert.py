"""Flax BERT encoder (the ``BertModel`` of sentence-transformers' MiniLM / mpnet-style BERT checkpoints).

It numerically follows Hugging Face ``BertModel`` (fp32 hidden states equal to <= 1e-5, tests/test_bert.py); the
details, packed rows and logical axis names are in ``BertEncoder``'s docstring. HF's pooler is *not* computed
(INSTRUCTOR mean-pools), but its weights are kept when ``config.pooler`` so exports are complete ``BertModel``s.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from instructor_jax.models import ops
from instructor_jax.models.t5 import Dropout, run_layers

Dtype = Any

EXACT_GELU = ("gelu", "gelu_python")
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate")
ACTIVATIONS = EXACT_GELU + TANH_GELU + ("relu",)


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of a Hugging Face BERT ``config.json`` that shape the encoder (same names)."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  pad_token_id: int = 0
  # Not part of the HF config: whether the params carry HF's pooler (see ``BertEncoder``); compute and
  # parameter dtypes; per-block rematerialisation "none" | "full" | "dots"; the attention implementation (only
  # "xla" here: T5Config's "cudnn" option is not implemented for BERT).
  pooler: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"
  attention: str = "xla"

  model_type = "bert"

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act {self.hidden_act!r} is not supported ({', '.join(ACTIVATIONS)})")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                       f"{self.num_attention_heads}")
    if self.remat not in ("none", "full", "dots"):
      raise ValueError(f"remat must be none|full|dots, got {self.remat!r}")
    if self.attention != "xla":
      raise ValueError(f"attention {self.attention!r} is not implemented for the BERT encoder (xla only)")

  # T5Config's names for the shared quantities, so backbone-agnostic code (embedding dim, FLOPs, eval, the
  # trainer's dropout switch) reads one set of names.
  @property
  def d_model(self) -> int:
    return self.hidden_size

  @property
  def num_layers(self) -> int:
    return self.num_hidden_layers

  @property
  def num_heads(self) -> int:
    return self.num_attention_heads

  @property
  def d_kv(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def d_ff(self) -> int:
    return self.intermediate_size

  @property
  def gated(self) -> bool:
    return False

  @property
  def dropout_rate(self) -> float:
    return max(self.hidden_dropout_prob, self.attention_probs_dropout_prob)

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "BertConfig":
    """Builds the config from a parsed HF ``config.json``.

    ``dropout_rate=p`` (the trainer's override, T5's name) sets both dropout probabilities.
    """
    if hf.get("model_type", "bert") != "bert":
      raise ValueError(f"config.json: model_type {hf.get('model_type')!r} is not bert")
    kind = hf.get("position_embedding_type", "absolute")
    if kind != "absolute":
      raise ValueError(f"config.json: position_embedding_type {kind!r} is not supported (absolute)")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
      raise ValueError("config.json: a BERT decoder / cross-attention model is not an encoder")
    names = [f.name for f in dataclasses.fields(cls)
             if f.name not in ("pooler", "dtype", "param_dtype", "remat", "attention")]
    kw = {k: hf[k] for k in names if k in hf and hf[k] is not None}
    overrides = dict(overrides)
    if "dropout_rate" in overrides:
      p = float(overrides.pop("dropout_rate"))
      overrides.update(hidden_dropout_prob=p, attention_probs_dropout_prob=p)
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict:
    """The HF ``config.json`` fields of a ``BertModel`` with this shape."""
    return dict(
        architectures=["BertModel"], model_type="bert", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
        num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
        intermediate_size=self.intermediate_size, hidden_act=self.hidden_act,
        hidden_dropout_prob=self.hidden_dropout_prob, attention_probs_dropout_prob=self.attention_probs_dropout_prob,
        max_position_embeddings=self.max_position_embeddings, type_vocab_size=self.type_vocab_size,
        layer_norm_eps=self.layer_norm_eps, initializer_range=self.initializer_range,
        pad_token_id=self.pad_token_id, position_embedding_type="absolute", use_cache=False)


def activation(name: str):
  if name in EXACT_GELU:
    return ops.gelu
  if name in TANH_GELU:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    return functools.partial(jax.nn.gelu, approximate=True)
  return jax.nn.relu


def segment_positions(segment_ids):
  """Position ids restarting at 0 at the first token of every run of equal segment ids: ``[B, L]`` int32."""
  idx = jnp.broadcast_to(jnp.arange(segment_ids.shape[-1], dtype=jnp.int32), segment_ids.shape)
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  return idx - jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)


class LayerNorm(nn.Module):
  """``(x - mean) / sqrt(mean((x - mean)^2) + eps) * scale + bias`` in fp32 (torch's LayerNorm)."""
  epsilon: float
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (d,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class Linear(nn.Module):
  """``einsum(equation, x, kernel) + bias`` with a real-rank kernel and logical axis names (as ``t5.Projection``,
  plus a bias over the output axes)."""
  shape: tuple
  axes: tuple
  out_axes: int  # how many trailing kernel axes are output axes (the bias shape)
  equation: str
  std: float
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    init = nn.with_logical_partitioning(nn.initializers.normal(self.std), self.axes)
    kernel = self.param("kernel", init, self.shape, self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[-self.out_axes:]),
                      self.shape[-self.out_axes:], self.param_dtype)
    y = ops.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class SelfAttention(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask_bias, deterministic: bool):
    cfg = self.config
    h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
    lin = functools.partial(Linear, std=cfg.initializer_range, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    qkv = functools.partial(lin, (d, h, dk), ("embed", "heads", "kv"), 2, "bld,dhk->blhk")
    q, k, v = (nn.with_logical_constraint(qkv(name=n)(x), ("batch", "length", "heads", "kv")) for n in "qkv")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * (dk ** -0.5)
    weights = jax.nn.softmax(scores + mask_bias, axis=-1).astype(cfg.dtype)
    weights = Dropout(cfg.attention_probs_dropout_prob)(weights, deterministic=deterministic)
    out = nn.with_logical_constraint(jnp.einsum("bhqk,bkhd->bqhd", weights, v), ("batch", "length", "heads", "kv"))
    return lin((h, dk, d), ("heads", "kv", "embed"), 1, "blhk,hkd->bld", name="o")(out)


class Block(nn.Module):
  """Post-norm self-attention and feed-forward, dropout on each residual branch."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask_bias, deterministic: bool):
    cfg = self.config
    lin = functools.partial(Linear, std=cfg.initializer_range, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    norm = functools.partial(LayerNorm, cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype)
    drop = Dropout(cfg.hidden_dropout_prob)
    y = SelfAttention(cfg, name="attention")(x, mask_bias, deterministic)
    x = norm(name="attention_norm")(x + drop(y, deterministic=deterministic))
    # The MLP on the [tokens, d] view: XLA:CPU fuses the bias and GELU into fewer passes than on [B, L, d_ff].
    y = lin((cfg.d_model, cfg.d_ff), ("embed", "mlp"), 1, "nd,df->nf", name="wi")(x.reshape(-1, cfg.d_model))
    y = nn.with_logical_constraint(activation(cfg.hidden_act)(y), ("batch", "mlp"))
    y = lin((cfg.d_ff, cfg.d_model), ("mlp", "embed"), 1, "nf,fd->nd", name="wo")(y).reshape(x.shape)
    x = norm(name="mlp_norm")(x + drop(y, deterministic=deterministic))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class BertEncoder(nn.Module):
  """``tokens [B, L] int32``, ``mask [B, L]`` (1 = attend) -> last hidden states ``[B, L, hidden_size]``.

  Numerically follows Hugging Face ``BertModel`` (fp32 hidden states equal to <= 1e-5, tests/test_bert.py):
  - embeddings ``LayerNorm((word + token_type[0]) + position)`` then dropout; token types are all 0 (one segment);
  - post-norm blocks: ``x = LN(x + drop(attn(x)))``, ``x = LN(x + drop(ffn(x)))``; LayerNorm in fp32 with the
    biased variance ``mean((x - mean)^2)`` as torch computes it, ``layer_norm_eps`` from the config;
  - attention with biases, scores scaled by ``1/sqrt(d_head)``, softmax in fp32, padding masked by adding fp32's
    minimum (HF's extended attention mask); dropout on the attention weights when ``deterministic=False``;
  - ``hidden_act``: ``gelu`` / ``gelu_python`` are the exact erf GELU, ``gelu_new`` / ``gelu_pytorch_tanh`` /
    ``gelu_fast`` / ``gelu_accurate`` the tanh approximation (HF's ``ACT2FN`` maps them so), ``relu``;
  - HF's pooler (``tanh(dense(h[CLS]))``) is *not* computed (INSTRUCTOR mean-pools the hidden states), but its
    weights are kept as parameters when ``config.pooler`` so a converted checkpoint exports as a complete
    ``BertModel``. They get no gradient; only weight decay (if configured) changes them.

  Packed rows (``segment_ids``): each segment gets position ids ``0, 1, ...`` from its own first token and attends
  only within itself, so a packed row computes exactly what the segments compute unpadded (tests compare them).

  Parameters and activations carry the same logical axis names as ``t5.T5Encoder`` (``vocab``, ``embed``,
  ``heads``, ``kv``, ``mlp``; ``batch``, ``length``), plus ``positions`` / ``token_types`` for the two small
  embedding tables (never sharded, see ``sharding.py``).
  """
  config: BertConfig

  @nn.compact
  def __call__(self, tokens, mask, deterministic: bool = True, segment_ids=None):
    """``segment_ids [B, L]`` (optional): packed sequences attend within their segment and get position ids
    counted from their own first token (class docstring)."""
    cfg = self.config
    _, length = tokens.shape
    if length > cfg.max_position_embeddings:
      raise ValueError(f"sequence length {length} exceeds max_position_embeddings {cfg.max_position_embeddings}")
    emb = lambda n, rows, axis: nn.Embed(
        rows, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=n,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), (axis, "embed")))
    if segment_ids is None:
      positions = jnp.arange(length, dtype=jnp.int32)[None]
    else:
      positions = segment_positions(segment_ids)
    word = emb("word_embeddings", cfg.vocab_size, "vocab")(tokens.astype(jnp.int32))
    token_type = emb("token_type_embeddings", cfg.type_vocab_size, "token_types")(jnp.zeros((1, 1), jnp.int32))
    x = (word + token_type) + emb("position_embeddings", cfg.max_position_embeddings, "positions")(positions)
    x = LayerNorm(cfg.layer_norm_eps, cfg.dtype, cfg.param_dtype, name="embeddings_norm")(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)

    keep = mask[:, None, None, :].astype(bool)
    if segment_ids is not None:
      keep = keep & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    mask_bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)  # [B, 1, L|1, L]

    # remat != "none" scans the blocks with a checkpointed body (t5.run_layers: unrolled remat saves nothing).
    x = run_layers(self, Block, cfg, x, mask_bias, deterministic)
    if cfg.pooler:  # HF's pooler, carried for export only: its output is discarded (XLA drops the computation)
      Linear((cfg.d_model, cfg.d_model), ("embed", "mlp"), 1, "bd,de->be", std=cfg.initializer_range,
             dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="pooler")(x[:, 0])
    return x


# ----------------------------------------------------------------------------------------------------------------
# The backbone interface (``models/registry.py``): HF ``BertModel`` names <-> ``BertEncoder`` params.

NAME = "bert"
Config = BertConfig
Encoder = BertEncoder
HF_MODEL_CLASS = "BertModel"
LEGACY_INSTRUCTOR = False  # InstructorEmbedding 1.0.1 is T5 only
SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                "position_embedding_type", "model_type")
_PREFIXES = ("0.auto_model.", "auto_model.", "bert.")
_IGNORED = re.compile(r"^(cls\.|embeddings\.position_ids$|embeddings\.token_type_ids$)")
# (HF name under encoder.layer.N., Flax path under layers_N, kind). Attention kernels are stored per head
# (``[d, heads, d_head]`` / ``[heads, d_head, d]``), biases ``[heads, d_head]`` / ``[d]``; dense kernels ``[in, out]``.
_LAYER = (
    ("attention.self.query", ("attention", "q"), "qkv"), ("attention.self.key", ("attention", "k"), "qkv"),
    ("attention.self.value", ("attention", "v"), "qkv"), ("attention.output.dense", ("attention", "o"), "o"),
    ("attention.output.LayerNorm", ("attention_norm",), "norm"), ("intermediate.dense", ("wi",), "dense"),
    ("output.dense", ("wo",), "dense"), ("output.LayerNorm", ("mlp_norm",), "norm"))


def max_length(cfg: BertConfig, requested: int) -> int:
  """No positions beyond the table: capped at ``max_position_embeddings``."""
  return min(requested, cfg.max_position_embeddings)


def with_overrides(cfg: BertConfig, **overrides) -> BertConfig:
  """``dropout_rate`` (T5's field, the trainer's override) sets both dropout probabilities."""
  if "dropout_rate" in overrides:
    p = float(overrides.pop("dropout_rate"))
    overrides.update(hidden_dropout_prob=p, attention_probs_dropout_prob=p)
  return dataclasses.replace(cfg, **overrides)


def match_params(cfg: BertConfig, params: Mapping[str, Any]) -> BertConfig:
  """With or without pooler, as the ``InstructorModel`` params tree."""
  return dataclasses.replace(cfg, pooler="pooler" in params["encoder"])


def match_state(cfg: BertConfig, state: Mapping[str, Any]) -> BertConfig:
  """With or without pooler, as the HF state dict."""
  return dataclasses.replace(cfg, pooler="pooler.dense.weight" in state or "pooler.dense.bias" in state)


def describe(cfg: BertConfig) -> str:
  return f"BERT encoder with {cfg.num_layers} layers, hidden size {cfg.d_model}, `{cfg.hidden_act}`"


def strip_names(state: Mapping[str, Any]) -> dict:
  """``BertModel`` names from those under ``auto_model.`` / ``bert.``; pre-training heads (``cls.*``) and the
  ``position_ids`` / ``token_type_ids`` buffers dropped."""
  out = {}
  for k, v in state.items():
    for prefix in _PREFIXES:
      if k.startswith(prefix):
        k = k[len(prefix):]
    out[k] = v
  return {k: v for k, v in out.items() if not _IGNORED.match(k)}


def expected_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
  d, f = cfg.d_model, cfg.d_ff
  shapes = {"embeddings.word_embeddings.weight": (cfg.vocab_size, d),
            "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, d),
            "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, d),
            "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
  if cfg.pooler:
    shapes.update({"pooler.dense.weight": (d, d), "pooler.dense.bias": (d,)})
  out_in = {"attention.self.query": (d, d), "attention.self.key": (d, d), "attention.self.value": (d, d),
            "attention.output.dense": (d, d), "intermediate.dense": (f, d), "output.dense": (d, f),
            "attention.output.LayerNorm": (d,), "output.LayerNorm": (d,)}
  for i in range(cfg.num_layers):
    for name, shape in out_in.items():
      p = f"encoder.layer.{i}.{name}."
      if len(shape) == 1:
        shapes[p + "weight"] = shapes[p + "bias"] = shape
      else:
        shapes[p + "weight"], shapes[p + "bias"] = shape, shape[:1]
  return shapes


def encoder_to_flax(state: Mapping[str, Any], cfg: BertConfig, dtype) -> dict:
  h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  a = lambda x: np.asarray(x, dtype=dtype)
  w = lambda n: a(state[n + ".weight"])
  b = lambda n: a(state[n + ".bias"])
  enc = {"word_embeddings": {"embedding": w("embeddings.word_embeddings")},
         "position_embeddings": {"embedding": w("embeddings.position_embeddings")},
         "token_type_embeddings": {"embedding": w("embeddings.token_type_embeddings")},
         "embeddings_norm": {"scale": w("embeddings.LayerNorm"), "bias": b("embeddings.LayerNorm")}}
  for i in range(cfg.num_layers):
    layer = enc[f"layers_{i}"] = {"attention": {}}
    for name, path, kind in _LAYER:
      n = f"encoder.layer.{i}.{name}"
      if kind == "qkv":
        leaf = {"kernel": w(n).reshape(h, dk, d).transpose(2, 0, 1), "bias": b(n).reshape(h, dk)}
      elif kind == "o":
        leaf = {"kernel": w(n).T.reshape(h, dk, d), "bias": b(n)}
      elif kind == "dense":
        leaf = {"kernel": w(n).T, "bias": b(n)}
      else:
        leaf = {"scale": w(n), "bias": b(n)}
      (layer["attention"] if path[0] == "attention" else layer)[path[-1]] = leaf
  if cfg.pooler:
    enc["pooler"] = {"kernel": w("pooler.dense").T, "bias": b("pooler.dense")}
  return enc


def encoder_from_flax(enc: Mapping[str, Any], cfg: BertConfig, dtype) -> dict:
  """The inverse of ``encoder_to_flax`` (bit-exact in fp32)."""
  h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  a = lambda x: np.ascontiguousarray(np.asarray(x, dtype=dtype))
  state = {"embeddings.word_embeddings.weight": a(enc["word_embeddings"]["embedding"]),
           "embeddings.position_embeddings.weight": a(enc["position_embeddings"]["embedding"]),
           "embeddings.token_type_embeddings.weight": a(enc["token_type_embeddings"]["embedding"]),
           "embeddings.LayerNorm.weight": a(enc["embeddings_norm"]["scale"]),
           "embeddings.LayerNorm.bias": a(enc["embeddings_norm"]["bias"])}
  for i in range(cfg.num_layers):
    layer = enc[f"layers_{i}"]
    for name, path, kind in _LAYER:
      leaf = layer["attention"][path[-1]] if path[0] == "attention" else layer[path[-1]]
      n = f"encoder.layer.{i}.{name}"
      if kind == "qkv":
        state[n + ".weight"] = a(np.asarray(leaf["kernel"]).transpose(1, 2, 0).reshape(h * dk, d))
        state[n + ".bias"] = a(np.asarray(leaf["bias"]).reshape(h * dk))
      elif kind == "o":
        state[n + ".weight"] = a(np.asarray(leaf["kernel"]).reshape(h * dk, d).T)
        state[n + ".bias"] = a(leaf["bias"])
      elif kind == "dense":
        state[n + ".weight"], state[n + ".bias"] = a(np.asarray(leaf["kernel"]).T), a(leaf["bias"])
      else:
        state[n + ".weight"], state[n + ".bias"] = a(leaf["scale"]), a(leaf["bias"])
  if "pooler" in enc:
    state["pooler.dense.weight"] = a(np.asarray(enc["pooler"]["kernel"]).T)
    state["pooler.dense.bias"] = a(enc["pooler"]["bias"])
  return state
