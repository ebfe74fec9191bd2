"""Flax T5 encoder (v1.0 ``relu`` as in GTR / INSTRUCTOR, and v1.1 ``gated-gelu``) and its HF weight mapping.

It numerically follows Hugging Face ``T5EncoderModel`` (details, the ``"xla"`` / ``"cudnn"`` attention choice and
the logical axis names: ``T5Encoder``'s docstring). Parameters and activations carry logical axis names that the
trainer shards with ``sharding.py``'s rules; without rules in context the constraints are no-ops.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from instructor_jax.models import ops

Dtype = Any


@dataclasses.dataclass(frozen=True)
class T5Config:
  """The encoder half of a Hugging Face ``T5Config`` (field names as in ``config.json``)."""
  vocab_size: int = 32128
  d_model: int = 768
  d_kv: int = 64
  d_ff: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"
  # Compute and parameter dtypes (not part of the HF config).
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  # Rematerialise each block in the backward pass (training memory); "none" | "full" | "dots".
  remat: str = "none"
  # "xla" | "cudnn" (see ``T5Encoder``).
  attention: str = "xla"

  def __post_init__(self):
    if self.feed_forward_proj not in ("relu", "gated-gelu"):
      raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} is not supported (relu, gated-gelu)")
    if self.remat not in ("none", "full", "dots"):
      raise ValueError(f"remat must be none|full|dots, got {self.remat!r}")
    if self.attention not in ("xla", "cudnn"):
      raise ValueError(f"attention must be xla|cudnn, got {self.attention!r}")

  @property
  def gated(self) -> bool:
    return self.feed_forward_proj == "gated-gelu"

  @classmethod
  def from_hf(cls, hf: Mapping[str, Any], **overrides) -> "T5Config":
    """Builds the config from a parsed HF ``config.json``."""
    proj = hf.get("feed_forward_proj", "relu")
    if proj == "gated-gelu" or (proj.startswith("gated-") and proj.endswith("gelu_new")):
      proj = "gated-gelu"
    elif proj != "relu":
      raise ValueError(f"config.json: feed_forward_proj {proj!r} is not supported (relu, gated-gelu)")
    if hf.get("is_gated_act") and proj != "gated-gelu":
      raise ValueError("config.json: is_gated_act without gated-gelu is not supported")
    kw = dict(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"], d_ff=hf["d_ff"],
        num_layers=hf["num_layers"], num_heads=hf["num_heads"],
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout_rate=hf.get("dropout_rate", 0.1), layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        feed_forward_proj=proj)
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict:
    """The HF ``config.json`` fields of a ``T5EncoderModel`` with this shape."""
    return dict(
        architectures=["T5EncoderModel"], model_type="t5", vocab_size=self.vocab_size, d_model=self.d_model,
        d_kv=self.d_kv, d_ff=self.d_ff, num_layers=self.num_layers, num_decoder_layers=self.num_layers,
        num_heads=self.num_heads, relative_attention_num_buckets=self.relative_attention_num_buckets,
        relative_attention_max_distance=self.relative_attention_max_distance, dropout_rate=self.dropout_rate,
        layer_norm_epsilon=self.layer_norm_epsilon, feed_forward_proj=self.feed_forward_proj,
        is_encoder_decoder=True, initializer_factor=1.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, use_cache=False, tie_word_embeddings=not self.gated,
        dense_act_fn="gelu_new" if self.gated else "relu", is_gated_act=self.gated)


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets ``[q_len, k_len]`` (int32), computed on the host for static lengths.

  Follows HF ``_relative_position_bucket(bidirectional=True)`` exactly, including its float32 arithmetic
  (``log(r / max_exact) / log(max_distance / max_exact) * (num_buckets - max_exact)`` in float32, truncated).
  """
  context = np.arange(q_len, dtype=np.int64)[:, None]
  memory = np.arange(k_len, dtype=np.int64)[None, :]
  rel = memory - context
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  is_small = rel < max_exact
  with np.errstate(divide="ignore"):
    scaled = np.log(rel.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    scaled = scaled * np.float32(half - max_exact)
  large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)  # masked values are never used
  large = np.minimum(large, half - 1)
  buckets = buckets + np.where(is_small, rel, large)
  return buckets.astype(np.int32)


def _mix32(h):
  """murmur3's 32-bit finaliser: every input bit flips each output bit with probability ~1/2."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def dropout_bits(key, shape) -> jax.Array:
  """32 pseudo-random bits per element of ``shape`` (uint32): a counter hash of the element's index, seeded by two
  threefry words of ``key``. About 30x cheaper than ``jax.random.bits`` on XLA:CPU (threefry's 20 rounds per 64
  bits), a pure function of ``(key, shape)`` and the same however the array is sharded (the index is global).
  Indices wrap past 2^32 elements (the mask then repeats; no step here comes near). For dropout only."""
  seed = jax.random.bits(key, (2,), jnp.uint32)
  idx = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for d in reversed(range(len(shape))):
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride % 2 ** 32)
    stride *= shape[d]
  return _mix32(_mix32(idx + seed[0]) ^ seed[1])


class Dropout(nn.Module):
  """Inverted dropout (``nn.Dropout``'s contract: zero with probability ``rate``, scale the rest by
  ``1 / (1 - rate)``) with ``dropout_bits`` instead of threefry: each element is kept iff its 32 bits are
  ``>= round(rate * 2^32)``, so the keep probability is ``1 - rate`` to 2^-32. The masks are another sample of the
  distribution ``nn.Dropout`` samples, and a pure function of the ``dropout`` rng (hence of seed and step)."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    threshold = min(int(round(self.rate * 2 ** 32)), 2 ** 32 - 1)
    keep = dropout_bits(self.make_rng("dropout"), x.shape) >= jnp.uint32(threshold)
    return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - self.rate), x.dtype), jnp.zeros((), x.dtype))


class RMSNorm(nn.Module):
  """T5 layer norm: ``x / sqrt(mean(x^2) + eps) * scale``, variance in fp32, no mean, no bias."""
  epsilon: float
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


def matmul_precision(dtype):
  """fp32 compute means fp32 matmuls: ``HIGHEST`` (XLA:GPU otherwise may use TF32 for fp32 dots, ~1e-4 off the
  PyTorch reference; the CPU is exact either way). bf16 / fp16 compute keeps the default."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.dtype(jnp.float32) else None


def _dense_init(std_fn):
  return lambda key, shape, dtype: std_fn(shape) * jax.random.normal(key, shape, dtype)


class Projection(nn.Module):
  """A bias-free multi-dimensional projection ``einsum(equation, x, kernel)`` with logical axis names.

  Used for attention's q/k/v (``embed -> heads x kv``) and o (``heads x kv -> embed``): the kernel is created with
  its real rank (flax's ``DenseGeneral`` initialises a flattened 2-D kernel, which cannot carry 3-D logical names
  under an active mesh). Param name ``kernel``, as ``nn.Dense``.
  """
  shape: tuple
  axes: tuple
  std: float
  equation: str
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    init = nn.with_logical_partitioning(_dense_init(lambda s: self.std), self.axes)
    kernel = self.param("kernel", init, self.shape, self.param_dtype)
    return ops.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype),
                      precision=matmul_precision(self.dtype))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class AttentionBias:
  """What every layer adds to its attention scores: ``position [1, H, L, L]`` (fp32) and either the key mask
  ``keep [B, 1, 1|L, L]`` (bool) or, for cuDNN, the key lengths ``[B]``."""
  position: jax.Array
  keep: jax.Array
  kv_lengths: jax.Array

  def dense(self):
    """``[B, H, L, L]`` fp32: position bias plus the fp32 minimum where a key is masked (HF's extended mask)."""
    return self.position + jnp.where(self.keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def _cudnn_attention(q, k, v, bias: AttentionBias, dtype):
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise ValueError(f"attention='cudnn' needs bf16/fp16 compute (T5Config.dtype), got {jnp.dtype(dtype).name}")
  if bias.keep.shape[-2] > 1:  # packed rows: block-diagonal mask, pass the full bias (inference)
    return jax.nn.dot_product_attention(q, k, v, bias=bias.dense().astype(dtype), scale=1.0, implementation="cudnn")
  return jax.nn.dot_product_attention(
      q, k, v, bias=bias.position.astype(dtype), scale=1.0, key_value_seq_lengths=bias.kv_lengths,
      query_seq_lengths=bias.kv_lengths, implementation="cudnn")


class SelfAttention(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, bias, deterministic: bool):
    cfg = self.config
    h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
    # Initialisation as in HF T5 (initializer_factor 1.0).
    proj = functools.partial(Projection, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    qkv = functools.partial(proj, (d, h, dk), ("embed", "heads", "kv"), equation="bld,dhk->blhk")
    q = qkv(std=(d * dk) ** -0.5, name="q")(x)
    k = qkv(std=d ** -0.5, name="k")(x)
    v = qkv(std=d ** -0.5, name="v")(x)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
    k = nn.with_logical_constraint(k, ("batch", "length", "heads", "kv"))
    v = nn.with_logical_constraint(v, ("batch", "length", "heads", "kv"))
    if cfg.attention == "cudnn":
      out = _cudnn_attention(q, k, v, bias, cfg.dtype)
    else:
      # No 1/sqrt(d_kv) scaling in T5. Scores and softmax in fp32 as HF does (`softmax(scores.float())`).
      precision = matmul_precision(cfg.dtype)
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32, precision=precision)
      scores = scores + bias.dense()
      weights = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
      weights = Dropout(cfg.dropout_rate)(weights, deterministic=deterministic)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=precision)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return proj((h, dk, d), ("heads", "kv", "embed"), std=(h * dk) ** -0.5, equation="blhk,hkd->bld", name="o")(out)


class FeedForward(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, deterministic: bool):
    cfg = self.config
    dense = functools.partial(nn.Dense, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                              precision=matmul_precision(cfg.dtype), dot_general=ops.dot_general)
    wi_init = nn.with_logical_partitioning(_dense_init(lambda s: cfg.d_model ** -0.5), ("embed", "mlp"))
    if cfg.gated:
      # gelu_new is the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
      hidden = jax.nn.gelu(dense(cfg.d_ff, name="wi_0", kernel_init=wi_init)(x), approximate=True)
      hidden = hidden * dense(cfg.d_ff, name="wi_1", kernel_init=wi_init)(x)
    else:
      hidden = jax.nn.relu(dense(cfg.d_ff, name="wi", kernel_init=wi_init)(x))
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    hidden = Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
    wo_init = nn.with_logical_partitioning(_dense_init(lambda s: cfg.d_ff ** -0.5), ("mlp", "embed"))
    return dense(cfg.d_model, name="wo", kernel_init=wo_init)(hidden)


class Block(nn.Module):
  """Pre-norm self-attention and feed-forward, each with dropout on its residual branch."""
  config: T5Config

  @nn.compact
  def __call__(self, x, bias, deterministic: bool):
    cfg = self.config
    norm = functools.partial(RMSNorm, cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype)
    drop = Dropout(cfg.dropout_rate)
    y = SelfAttention(cfg, name="attention")(norm(name="attention_norm")(x), bias, deterministic)
    x = x + drop(y, deterministic=deterministic)
    y = FeedForward(cfg, name="mlp")(norm(name="mlp_norm")(x), deterministic)
    x = x + drop(y, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def run_layers(module: nn.Module, block_cls, cfg, x, bias, deterministic: bool):
  """``cfg.num_layers`` blocks ``block_cls(cfg, name=f"layers_{i}")(x, bias, deterministic)`` in order.

  ``cfg.remat == "none"``: an unrolled Python loop. Otherwise the blocks run under ``lax.scan`` over their stacked
  parameters with a ``jax.checkpoint``-ed body (``full``: save each block's input only; ``dots``: also the
  matmul outputs without batch dimensions). The scan is what makes remat save memory: with an unrolled loop XLA
  schedules the recomputation early and keeps every activation alive (measured: a T5-large gradient-cache chunk
  needed the same 109 GiB with and without remat on an H100; see BENCHMARKS.md). The parameter tree stays
  ``layers_0 .. layers_{n-1}`` (checkpoints and conversion are unchanged); the stack is one copy of the layer
  weights per step. Dropout keys: one per layer, split from the module's ``dropout`` stream (the masks differ from
  the unrolled path's; both are valid dropout).
  """
  n = cfg.num_layers
  if cfg.remat == "none" or module.is_initializing():
    for i in range(n):
      x = block_cls(cfg, name=f"layers_{i}")(x, bias, deterministic)
    return x
  params = nn.unbox(module.variables["params"])
  missing = [f"layers_{i}" for i in range(n) if f"layers_{i}" not in params]
  if missing:
    raise ValueError(f"parameters {missing} are missing (num_layers={n})")
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[params[f"layers_{i}"] for i in range(n)])
  keys = (jax.random.split(module.make_rng("dropout"), n) if not deterministic and cfg.dropout_rate > 0
          else jnp.zeros((n, 2), jnp.uint32))
  block = block_cls(cfg, parent=None)

  def body(h, xs):
    p, key = xs
    rngs = {"dropout": key} if not deterministic and cfg.dropout_rate > 0 else None
    return block.apply({"params": p}, h, bias, deterministic, rngs=rngs), None

  policy = None if cfg.remat == "full" else jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
  x, _ = jax.lax.scan(jax.checkpoint(body, policy=policy, prevent_cse=False), x, (stacked, keys))
  return x


class T5Encoder(nn.Module):
  """``tokens [B, L] int32``, ``mask [B, L]`` (1 = attend) -> last hidden states ``[B, L, d_model]``.

  Numerically follows Hugging Face ``T5EncoderModel``:
  - RMS layer norm without mean or bias, variance in fp32; pre-norm residual blocks and a final norm;
  - no ``1/sqrt(d_kv)`` scaling of attention scores; softmax in fp32;
  - bidirectional relative-position buckets, one bias table in layer 0 shared by every layer;
  - padding masked by adding the dtype minimum; no biases anywhere; dropout only when ``deterministic=False``.

  Attention (``T5Config.attention``): ``"xla"`` (default, any backend, the HF arithmetic above) or ``"cudnn"``
  (GPU, bf16/fp16 compute only): cuDNN's fused flash attention through ``jax.nn.dot_product_attention`` with the
  relative-position bias ``[1, H, L, L]`` (cast to the compute dtype) and padding as per-row key lengths (masks must
  be right-padded prefixes, as everything in this package makes them; packed rows pass a full ``[B, H, L, L]``
  bias). The ``[B, H, L, L]`` scores never reach device memory; the one semantic difference is that the public API
  has no dropout on the attention probabilities, so with ``"cudnn"`` training drops only the residual / FFN
  activations.

  Every parameter carries logical axis names (``vocab``, ``embed``, ``mlp``, ``heads``, ``kv``, ``rel_buckets``) and
  the main activations are constrained with ``batch``, ``length``, ``embed``, ``heads``, ``mlp``, so the trainer
  shards them with logical-axis rules (see ``sharding.py``). Without rules in context the constraints are no-ops.
  """
  config: T5Config

  @nn.compact
  def __call__(self, tokens, mask, deterministic: bool = True, segment_ids=None):
    """``segment_ids [B, L]`` (optional): several sequences packed in one row attend only within their segment;
    exact for T5, whose position bias depends only on ``key - query`` (unchanged inside a segment)."""
    cfg = self.config
    _, length = tokens.shape
    embed = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="token_embedder",
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")))
    x = embed(tokens.astype(jnp.int32))
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

    # Relative position bias, computed once (layer 0's table) and shared by every layer: [1, H, L, L].
    table = self.param(
        "relative_attention_bias",
        nn.with_logical_partitioning(nn.initializers.normal(cfg.d_model ** -0.5), ("rel_buckets", "heads")),
        (cfg.relative_attention_num_buckets, cfg.num_heads), cfg.param_dtype)
    buckets = relative_position_buckets(
        length, length, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
    pos_bias = jnp.take(table.astype(jnp.float32), jnp.asarray(buckets), axis=0)  # [L, L, H]
    pos_bias = jnp.transpose(pos_bias, (2, 0, 1))[None]
    keep = mask[:, None, None, :].astype(bool)
    if segment_ids is not None:
      keep = keep & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    bias = AttentionBias(pos_bias, keep, jnp.sum(mask.astype(jnp.int32), axis=-1))

    x = run_layers(self, Block, cfg, x, bias, deterministic)
    x = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name="final_norm")(x)
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


# ----------------------------------------------------------------------------------------------------------------
# The backbone interface (``models/registry.py``): HF ``T5EncoderModel`` names <-> ``T5Encoder`` params.

NAME = "t5"
Config = T5Config
Encoder = T5Encoder
HF_MODEL_CLASS = "T5EncoderModel"   # the transformers class that reads an export
LEGACY_INSTRUCTOR = True            # the hkunlp/instructor-* layout exists for this backbone
# The config.json fields that shape the encoder: an export writes ours over the source's.
SHAPE_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
                "relative_attention_max_distance", "layer_norm_epsilon", "feed_forward_proj", "model_type")
_PREFIXES = ("0.auto_model.", "auto_model.", "transformer.")
_IGNORED = re.compile(r"^(decoder\.|lm_head\.|encoder\.embed_tokens\.weight$)")


def max_length(cfg: T5Config, requested: int) -> int:
  """Relative positions: any length."""
  return requested


def with_overrides(cfg: T5Config, **overrides) -> T5Config:
  return dataclasses.replace(cfg, **overrides)


def match_params(cfg: T5Config, params: Mapping[str, Any]) -> T5Config:
  return cfg


def match_state(cfg: T5Config, state: Mapping[str, Any]) -> T5Config:
  return cfg


def describe(cfg: T5Config) -> str:
  return f"T5 encoder with {cfg.num_layers} layers, d_model {cfg.d_model}, `{cfg.feed_forward_proj}`"


def strip_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """``T5EncoderModel`` names from those of a full T5 model, or of one under ``auto_model.`` / ``transformer.``;
  decoder and LM-head tensors dropped."""
  out = {}
  for k, v in state.items():
    for prefix in _PREFIXES:
      if k.startswith(prefix):
        k = k[len(prefix):]
    out[k] = v
  if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
    out["shared.weight"] = out["encoder.embed_tokens.weight"]
  return {k: v for k, v in out.items() if not _IGNORED.match(k)}


def expected_shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
  inner = cfg.num_heads * cfg.d_kv
  shapes = {"shared.weight": (cfg.vocab_size, cfg.d_model), "encoder.final_layer_norm.weight": (cfg.d_model,),
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
                (cfg.relative_attention_num_buckets, cfg.num_heads)}
  for i in range(cfg.num_layers):
    p = f"encoder.block.{i}."
    for n in "qkv":
      shapes[p + f"layer.0.SelfAttention.{n}.weight"] = (inner, cfg.d_model)
    shapes[p + "layer.0.SelfAttention.o.weight"] = (cfg.d_model, inner)
    shapes[p + "layer.0.layer_norm.weight"] = (cfg.d_model,)
    shapes[p + "layer.1.layer_norm.weight"] = (cfg.d_model,)
    for n in _wis(cfg):
      shapes[p + f"layer.1.DenseReluDense.{n}.weight"] = (cfg.d_ff, cfg.d_model)
    shapes[p + "layer.1.DenseReluDense.wo.weight"] = (cfg.d_model, cfg.d_ff)
  return shapes


def _wis(cfg: T5Config) -> tuple[str, ...]:
  return ("wi_0", "wi_1") if cfg.gated else ("wi",)


def encoder_to_flax(state: Mapping[str, np.ndarray], cfg: T5Config, dtype) -> dict:
  """HF tensors -> the ``encoder`` params. Attention kernels per head: q/k/v ``[d, heads, d_kv]``, o ``[heads,
  d_kv, d]``; dense kernels ``[in, out]``."""
  h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  a = lambda x: np.asarray(x, dtype=dtype)
  enc = {"token_embedder": {"embedding": a(state["shared.weight"])},
         "relative_attention_bias": a(state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]),
         "final_norm": {"scale": a(state["encoder.final_layer_norm.weight"])}}
  for i in range(cfg.num_layers):
    p = f"encoder.block.{i}.layer."
    att = {n: {"kernel": a(state[p + f"0.SelfAttention.{n}.weight"]).reshape(h, dk, d).transpose(2, 0, 1)}
           for n in "qkv"}
    att["o"] = {"kernel": a(state[p + "0.SelfAttention.o.weight"]).T.reshape(h, dk, d)}
    mlp = {n: {"kernel": a(state[p + f"1.DenseReluDense.{n}.weight"]).T} for n in _wis(cfg) + ("wo",)}
    enc[f"layers_{i}"] = {"attention": att, "mlp": mlp,
                          "attention_norm": {"scale": a(state[p + "0.layer_norm.weight"])},
                          "mlp_norm": {"scale": a(state[p + "1.layer_norm.weight"])}}
  return enc


def encoder_from_flax(enc: Mapping[str, Any], cfg: T5Config, dtype) -> dict[str, np.ndarray]:
  """The inverse of ``encoder_to_flax`` (bit-exact in fp32)."""
  h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
  a = lambda x: np.ascontiguousarray(np.asarray(x, dtype=dtype))
  state = {"shared.weight": a(enc["token_embedder"]["embedding"]),
           "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": a(enc["relative_attention_bias"]),
           "encoder.final_layer_norm.weight": a(enc["final_norm"]["scale"])}
  for i in range(cfg.num_layers):
    layer, p = enc[f"layers_{i}"], f"encoder.block.{i}.layer."
    for n in "qkv":
      state[p + f"0.SelfAttention.{n}.weight"] = a(
          np.asarray(layer["attention"][n]["kernel"]).transpose(1, 2, 0).reshape(h * dk, d))
    state[p + "0.SelfAttention.o.weight"] = a(np.asarray(layer["attention"]["o"]["kernel"]).reshape(h * dk, d).T)
    for n, w in layer["mlp"].items():
      state[p + f"1.DenseReluDense.{n}.weight"] = a(np.asarray(w["kernel"]).T)
    state[p + "0.layer_norm.weight"] = a(layer["attention_norm"]["scale"])
    state[p + "1.layer_norm.weight"] = a(layer["mlp_norm"]["scale"])
  return state
