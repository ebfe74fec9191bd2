"""Contrastive INSTRUCTOR training on one CPU, one GPU, a multi-GPU host or a TPU pod with the same code.

    python -m instructor_jax.train --config configs/demo.py --workdir /tmp/demo [--config.key=value ...]
    python -m instructor_jax.train --config configs/instructor_xl.py:v4-32 --workdir /tmp/x --compile_only

Reads top to bottom:

1. ``setup_distributed``: ``jax.distributed.initialize()`` on pods / clusters (``--distributed``, or explicit
   ``--coordinator_address --num_processes --process_id``).
2. ``build_model``: ``InstructorModel`` from ``config.model.init_checkpoint`` (a workdir, see ``checkpoints.py``),
   ``config.model.init_from`` (any folder ``Instructor.from_pretrained`` loads, e.g. GTR or all-MiniLM-L6-v2) or
   randomly from the HF-style ``config.model.t5`` dict (``config.model.backbone = "bert"`` with
   ``config.model.bert`` for a random BERT).
3. ``sharding.make_mesh`` (``config.mesh_shape`` over ``data, fsdp, tensor``) and the logical-axis rules give the
   ``NamedSharding`` of every parameter and optimizer moment (FSDP / tensor parallel), the batch is split over
   ``data x fsdp``.
4. ``make_train_step``: one ``jax.jit`` step with explicit in/out shardings, traced under the logical-axis rules
   (``activation_sharding``): encode queries, positives and hard negatives (one ``[B * (2 + N), L]`` encoder
   call when query and document lengths match, see ``_groups``; optionally with gradient caching, see
   ``grad_cache_grads``), score the *global* batch (``losses.py``), AdamW update.
5. The loop: host batch from the data stream (a pure function of ``(seed, step)``) ->
   ``jax.make_array_from_process_local_data`` -> step -> metrics (``metrics.jsonl``, tensorboard, tqdm) ->
   async orbax checkpoints every ``checkpoint_every_steps`` and at the end; resume from the latest complete one;
   SIGTERM saves and exits 0; a NaN / inf loss stops with an error, keeping the last good checkpoint.

Gradient caching (``config.grad_cache_chunk = C`` rows, GradCache, Gao et al. 2021): (a) embed the global batch
in chunks of C queries (with their positives and negatives) without keeping activations; (b) take the loss and its
gradient w.r.t. the embeddings only; (c) re-run each chunk under ``jax.vjp`` and accumulate ``J^T g`` (each device
its own partial gradient, inside ``jax.shard_map``; reduced over ``data`` once per step; over ``fsdp`` per chunk
(ZeRO-3, parameters stay sharded) or once with ``config.grad_cache_fsdp = "once"``, see ``grad_cache_grads``). The
gradients equal the uncached step (dropout off; with dropout each chunk uses its own key in both passes), and
activation memory is that of one chunk. Chunks are device-local: the batch ``[B]`` (split over S shards) is viewed
as ``[S, k, C/S]`` and chunk j takes ``[:, j]``, i.e. C/S rows *from every shard*, so no rows move between devices
(a contiguous ``[k, C]`` split would make XLA gather the batch).

Metrics: ``loss``, ``accuracy`` (in-batch top-1), ``lr``, ``grad_norm``, ``examples_per_s``, ``tokens_per_s``
(non-padding tokens), ``mfu``. FLOP count for MFU (``train_flops_per_step``, the usual 6ND-style estimate on
*padded* tokens, which is what the hardware computes): forward FLOPs of one sequence of length L =
``2 * L * P_layers + 4 * num_layers * L^2 * num_heads * d_kv`` (matmul weights, then QK^T and AV) ``+
2 * d_model * out_features`` (Dense); ``P_layers`` = non-embedding encoder weights (attention ``4 d_model h d_kv``
and MLP ``2 or 3 * d_model d_ff`` per layer; the embedding lookup is a gather, 0 FLOPs). Training = 3x forward
(backward = 2x), plus 1x forward for gradient caching's first pass and 1x for full remat. MFU = FLOPs per step /
step time / (devices x peak FLOP/s per device; ``config.peak_flops_per_device`` or a table of known chips; absent
on CPU).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any

from absl import app, flags, logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax

from instructor_jax import checkpoints, hf, losses, sharding
from instructor_jax.bert import BertConfig
from instructor_jax.embedder import InstructorModel
from instructor_jax.t5 import T5Config

ASSETS_VOCAB = os.path.join(os.path.dirname(__file__), "assets", "t5-vocab")

# Dense bf16 peak FLOP/s per device (chip for TPU, GPU for GPUs), used for MFU when not configured.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


# ----------------------------------------------------------------------------------------------------------------
# Model and parameters
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelSpec:
  model: InstructorModel
  params: Any            # host numpy tree (pretrained) or None (random init)
  tokenizer_dir: str
  max_seq_length: int | None = None

  def meta(self) -> dict:
    """What ``checkpoints.restore_params`` returns as ``meta`` (besides step / config): the backbone-tagged HF
    config (``backbone``, ``model_config``, and ``t5_config`` for T5) and the embedding head."""
    return dict(**checkpoints.backbone_meta(self.model.config.to_hf()), out_features=self.model.out_features,
                normalize=self.model.normalize, pad_id=self.model.pad_id, max_seq_length=self.max_seq_length,
                tokenizer_dir=checkpoints.TOKENIZER_SUBDIR)


def _dtype(name):
  return jnp.dtype(name) if isinstance(name, str) else name


def build_model(config, load_weights: bool = True) -> ModelSpec:
  """The model and (unless random init or ``load_weights=False``) its host parameters.

  The backbone (T5 or BERT) comes from the checkpoint's meta (``init_checkpoint``), the folder's ``config.json``
  (``init_from``, e.g. GTR or all-MiniLM-L6-v2), or, for random init, ``config.model.backbone`` (``"t5"``, the
  default: HF-style ``config.model.t5`` dict; ``"bert"``: ``config.model.bert`` dict with HF ``BertConfig`` fields
  and ``config.model.tokenizer_dir`` naming a BERT tokenizer folder). ``load_weights=False`` (``--compile_only``)
  with ``init_from`` takes the shapes from ``config.model.t5`` without reading the folder when the backbone is
  ``t5``; with ``backbone="bert"`` the folder is read.
  """
  mc = config.model
  overrides = dict(dtype=_dtype(mc.get("dtype", "float32")), param_dtype=_dtype(mc.get("param_dtype", "float32")),
                   remat=mc.get("remat", "none"))
  if mc.get("dropout_rate", None) is not None:
    overrides["dropout_rate"] = float(mc.dropout_rate)
  if mc.get("attention", None):  # "xla" | "cudnn" (T5Config.attention; BERT has xla only)
    overrides["attention"] = mc.attention
  params, max_len = None, None
  if mc.get("init_checkpoint", ""):
    restored, meta = checkpoints.restore_params(mc.init_checkpoint)
    params = restored if load_weights else None  # compile_only: meta only
    cfg = hf.match_params(hf.config_from_hf(checkpoints.model_config(meta), **overrides), restored)
    out_features, normalize, pad_id = meta["out_features"], meta["normalize"], meta.get("pad_id", 0)
    tok_dir, max_len = meta["tokenizer_dir"], meta.get("max_seq_length")
  elif mc.get("init_from", "") and (load_weights or mc.get("backbone", "t5") != "t5" or not mc.get("t5", None)):
    from instructor_jax import embedder
    folder = hf.read_folder(embedder._resolve(mc.init_from))
    cfg = hf.with_overrides(folder.config, **overrides)
    out_features = None if folder.dense is None else int(folder.dense.shape[0])
    normalize, pad_id, tok_dir, max_len = folder.normalize, 0, folder.model_dir, folder.max_seq_length
    if load_weights:
      params = hf.to_flax(folder.state, cfg, folder.dense, dtype=np.dtype(cfg.param_dtype))
  elif mc.get("backbone", "t5") == "bert":
    cfg = BertConfig.from_hf(dict(mc.bert), **overrides)
    out_features, normalize, pad_id = mc.get("out_features", None), mc.get("normalize", True), 0
    tok_dir = mc.get("tokenizer_dir", "")
    if not tok_dir:
      raise ValueError("config.model.tokenizer_dir: a random-init BERT needs the folder of a BERT (WordPiece) "
                       "tokenizer; the bundled default vocabulary is T5's")
  elif mc.get("backbone", "t5") == "t5":
    cfg = T5Config.from_hf(dict(mc.t5), **overrides)
    out_features, normalize, pad_id = mc.get("out_features", None), mc.get("normalize", True), 0
    tok_dir = mc.get("tokenizer_dir", "") or ASSETS_VOCAB
  else:
    raise ValueError(f"config.model.backbone must be t5 or bert, got {mc.backbone!r}")
  model = InstructorModel(cfg, out_features=out_features, normalize=normalize, pad_id=pad_id)
  return ModelSpec(model, params, tok_dir, max_len)


def init_variables(model: InstructorModel, rng, config):
  """Boxed (logically partitioned) trainable tree ``{'model': params[, 'log_temperature']}``."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  tokens = tokens.at[:, 0].set(1)
  trainable = {"model": model.init({"params": rng}, tokens, jnp.zeros((1,), jnp.int32))["params"]}
  if config.loss.get("learnable_temperature", False):
    trainable["log_temperature"] = jnp.log(jnp.float32(config.loss.temperature))
  return trainable


def make_optimizer(config):
  """AdamW with linear warmup (``warmup_ratio``) then linear decay to 0 (HF ``linear`` schedule), clipping."""
  oc = config.optim
  total = int(config.num_train_steps)
  warmup = int(math.ceil(oc.get("warmup_ratio", 0.0) * total)) if oc.get("warmup_steps", None) is None \
      else int(oc.warmup_steps)
  lr = float(oc.learning_rate)
  if oc.get("schedule", "linear") == "constant":
    schedule = optax.constant_schedule(lr)
  else:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.linear_schedule(lr, 0.0, max(total - warmup, 1))],
        [warmup])
  parts = []
  if oc.get("grad_clip_norm", 0.0):
    parts.append(optax.clip_by_global_norm(float(oc.grad_clip_norm)))
  parts.append(optax.adamw(schedule, b1=oc.get("b1", 0.9), b2=oc.get("b2", 0.999), eps=oc.get("eps", 1e-8),
                           weight_decay=float(oc.get("weight_decay", 0.0))))
  return optax.chain(*parts), schedule


# ----------------------------------------------------------------------------------------------------------------
# The train step
# ----------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def activation_sharding(mesh, rules):
  """Traces the model with the mesh and logical-axis rules active, so its ``with_logical_constraint`` calls pin
  activations (batch over ``data x fsdp``; without them XLA may follow the FSDP weights and replicate the batch).
  """
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
    yield


def _groups(batch):
  """The sequences to encode as ``[(tokens [B, T, L], instr_len [B, T])]``, grouped by padded length.

  Column 0 is the query, 1 the positive, 2.. the N negatives. With ``max_query_length == max_doc_length`` (the
  paper's 512 / 512) everything is one group of ``T = 2 + N`` columns, encoded as one ``[B * T, L]`` batch (one
  encoder call, a third of the compile); otherwise queries and documents are two groups. Stacking on a new axis
  after the batch keeps the rows where they are (the batch axis stays the sharded one).
  """
  q = (batch["query_tokens"][:, None], batch["query_instr_len"][:, None])
  d = (jnp.concatenate([batch["pos_tokens"][:, None], batch["neg_tokens"]], axis=1),
       jnp.concatenate([batch["pos_instr_len"][:, None], batch["neg_instr_len"]], axis=1))
  if q[0].shape[-1] == d[0].shape[-1]:
    return [(jnp.concatenate([q[0], d[0]], axis=1), jnp.concatenate([q[1], d[1]], axis=1))]
  return [q, d]


def _split(embs):
  """Group embeddings ``[[B, T_i, D]]`` -> ``q [B, D], p [B, D], n [B, N, D]``."""
  e = embs[0] if len(embs) == 1 else jnp.concatenate(embs, axis=1)
  return e[:, 0], e[:, 1], e[:, 2:]


def _constrain(x, spec, mesh):
  return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))


_REPLICATED = jax.sharding.PartitionSpec()


def _constrain_local(x, spec):
  """Inside a partly manual ``shard_map``: pins ``x`` to ``spec`` over the automatic mesh axes (a no-op when it
  names none)."""
  spec = spec if isinstance(spec, jax.sharding.PartitionSpec) else jax.sharding.PartitionSpec(*spec)
  if not any(_spec_axes(e) for e in spec):
    return x
  return jax.lax.with_sharding_constraint(x, spec)


def _spec_axes(entry) -> tuple:
  """The mesh axes of one ``PartitionSpec`` entry (``None``, a name or a tuple of names), in order."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _drop_axes(entry, axes):
  """A ``PartitionSpec`` entry (or a logical-axis rule's mesh axes) without the mesh axes ``axes``."""
  kept = tuple(a for a in _spec_axes(entry) if a not in axes)
  return None if not kept else kept[0] if len(kept) == 1 else kept


def _only_axes(entry, axes):
  """A ``PartitionSpec`` entry restricted to the mesh axes ``axes`` (a ``shard_map`` spec names only its own)."""
  kept = tuple(a for a in _spec_axes(entry) if a in axes)
  return None if not kept else kept[0] if len(kept) == 1 else kept


def _reduce_partial(x, spec, axes, mesh):
  """Sums this shard's partial gradient ``x`` over the (manual) mesh axes ``axes`` inside ``shard_map``.

  Where the parameter's ``spec`` shards a dimension over some of ``axes`` (FSDP: ``embed`` over ``fsdp``), the sum
  is a reduce-scatter along that dimension, leaving each device its own slice; over the other axes (``data``) an
  all-reduce. Axes of size 1 are skipped (a one-device reduce-scatter is not free on every backend, and XLA's
  partitioner rejects a one-device all-reduce while other mesh axes are automatic).
  """
  done = ()
  for dim, entry in enumerate(spec):
    names = tuple(a for a in _spec_axes(entry) if a in axes and mesh.shape[a] > 1)
    if names:
      x = jax.lax.psum_scatter(x, names[0] if len(names) == 1 else names, scatter_dimension=dim, tiled=True)
      done += names
  rest = tuple(a for a in axes if a not in done)
  return jax.lax.psum(x, rest) if rest else x


def make_train_step(model: InstructorModel, tx, schedule, config, mesh, param_shardings):
  """``(step, grad_fn)``: ``step(state, batch) -> (state, metrics)``, state ``{'params', 'opt_state', 'rng', 'step'}``.

  Trace it inside ``activation_sharding(mesh, rules)`` (``setup`` does) so the model's activation constraints apply.
  """
  dropout = model.config.dropout_rate > 0
  variant = config.loss.get("variant", "instructor")
  chunk = int(config.get("grad_cache_chunk", 0) or 0)
  fsdp_once = config.get("grad_cache_fsdp", "per_chunk")
  if fsdp_once not in ("per_chunk", "once"):
    raise ValueError(f"grad_cache_fsdp must be 'per_chunk' or 'once', got {fsdp_once!r}")
  fsdp_once = fsdp_once == "once"
  shards = sharding.num_batch_shards(mesh)
  nan_step = int(config.get("debug_nan_step", -1))

  def embed(model_params, tokens, instr_len, rng):
    """``tokens [B, T, L]``, ``instr_len [B, T]`` -> ``[B, T, D]`` (rows stay batch-sharded)."""
    b, t, length = tokens.shape
    out = model.apply({"params": model_params}, tokens.reshape(b * t, length), instr_len.reshape(b * t),
                      deterministic=not dropout, rngs={"dropout": rng} if dropout else None)
    return _constrain(out.reshape(b, t, -1), (sharding.BATCH_AXES, None, None), mesh)

  def score(trainable, embs):
    tau = losses.temperature_value(trainable, config.loss)
    return losses.contrastive_loss(*_split(embs), tau, variant)

  def plain_grads(trainable, batch, rng):
    groups = _groups(batch)

    def loss_fn(tr):
      return score(tr, [embed(tr["model"], t, il, jax.random.fold_in(rng, i)) for i, (t, il) in enumerate(groups)])

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    return grads, metrics

  def grad_cache_grads(trainable, batch, rng):
    """GradCache over the global batch, with the gradients reduced over ``data`` once per step.

    Passes (a) (embed every chunk, no activations kept) and (c) (each chunk's VJP, accumulated) run inside one
    ``jax.shard_map`` each, manual over ``data`` (and over ``fsdp`` with ``grad_cache_fsdp="once"``; axes of
    size 1 never; no shard_map at all when no axis is left), automatic over the other axes. Each device embeds and differentiates only its own rows, so over the manual axes it
    accumulates *its own, un-reduced* partial gradient and a single psum / psum_scatter after the scan reduces
    it. Why not the alternatives: under automatic sharding an accumulator constrained to the parameter sharding
    is a complete (reduced) value in every scan iteration, so XLA all-reduces the whole gradient once per chunk
    (k x the bytes; what this replaced). A ``[S, ...params]`` accumulator vmapped over S shards would need the
    model's own ``batch -> (data, fsdp)`` activation constraints switched off inside the vmap and relies on the
    partitioner to keep the vmapped VJP device-local; ``shard_map`` states it.

    FSDP (``config.grad_cache_fsdp``; with dropout off both give the uncached step's gradients):
    - ``"per_chunk"`` (default): ``fsdp`` stays automatic, so the chunk loop is ZeRO-3 like the uncached step:
      parameters stay sharded (XLA gathers each layer in each chunk's forward and backward; embedding tables
      are gathered over ``fsdp`` per chunk, see ``gather_tables``) and each chunk's gradient is reduce-scattered
      over ``fsdp`` into a sharded accumulator. Communication over ``fsdp``: ~4 x parameter bytes per chunk
      (gathers for pass (a), the recomputed forward and the backward; the reduce-scatter).
    - ``"once"``: ``fsdp`` is manual too: parameters are all-gathered over ``fsdp`` once per step and every
      device accumulates a full-size (``tensor``-sharded) partial gradient, reduce-scattered once per step.
      Communication: ~2 x parameter bytes per step whatever k; memory: a gathered parameter copy, a full-size
      accumulator and each chunk's full-size gradient per device (XL on fsdp 8: 13 GB more than ``per_chunk``,
      BENCHMARKS.md). For models small next to device memory.
    Pass (b), the loss over the global batch, stays automatic (XLA gathers the embeddings). Dropout: a chunk's
    key is folded with the manual shard index, if any (the same in (a) and (c), so the recomputed activations
    are the ones the loss saw); rows split over automatic axes draw their masks as one array (with the default
    threefry PRNG the bits do not depend on the partitioning; ``rbg`` / ``unsafe_rbg`` promise no such thing;
    the finite-difference test uses threefry, and a run of it by hand with ``unsafe_rbg`` on CPU also agreed). Masks therefore depend on the mesh and the FSDP mode, as they
    already depended on the chunking.
    """
    b = batch["query_tokens"].shape[0]
    if b % chunk or chunk % shards:
      raise ValueError(f"grad_cache_chunk={chunk} must divide global_batch_size={b} and be a multiple of the "
                       f"{shards} batch shards (data x fsdp)")
    k = b // chunk
    # The manual axes (size-1 axes never are: nothing to reduce, and XLA rejects a one-device all-reduce next to
    # automatic axes); with none (one device, or per_chunk on a pure FSDP mesh) no shard_map is needed at all.
    axes = tuple(a for a in (sharding.BATCH_AXES if fsdp_once else ("data",)) if mesh.shape[a] > 1)
    auto_rows = tuple(a for a in sharding.BATCH_AXES if a not in axes and mesh.shape[a] > 1)  # rows split inside
    f = math.prod(mesh.shape[a] for a in auto_rows)
    rows = jax.sharding.PartitionSpec(axes)

    def manual(in_specs, out_specs):
      if not axes:
        return lambda fn: fn
      return functools.partial(jax.shard_map, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                               axis_names=frozenset(axes))
    groups = _groups(batch)  # [(tokens [B, T, L], instr_len [B, T])], rows split over the batch axes
    keys = jax.vmap(lambda j: jnp.stack([jax.random.fold_in(jax.random.fold_in(rng, i), j)
                                         for i in range(len(groups))]))(jnp.arange(k))  # [k, groups] keys
    # Inside the shard_maps the manual axes may not be named by constraints: drop them from the rules.
    local_rules = tuple((name, _drop_axes(mesh_axes, axes)) for name, mesh_axes in nn.get_logical_axis_rules())
    model_sh = param_shardings["model"]
    # Parameters enter replicated over the manual axes ("once": gathered over fsdp here; tensor sharding kept).
    gathered = trainable["model"] if not fsdp_once else jax.lax.with_sharding_constraint(
        trainable["model"], jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            *(_drop_axes(e, axes) for e in s.spec))), model_sh))
    grad_specs = jax.tree.map(
        lambda s: jax.sharding.PartitionSpec(*(_only_axes(e, axes) for e in s.spec)), model_sh)
    auto_specs = jax.tree.map(  # the parameters' sharding over the automatic axes, for the accumulator
        lambda s: jax.sharding.PartitionSpec(*(_drop_axes(e, axes) for e in s.spec)), model_sh)

    def local_chunks(x):
      """This shard's rows ``[B/S, ...]`` -> ``[k, C/S, ...]``: chunk j = rows ``j*C/S ..`` of every device.

      With ``fsdp`` automatic (``per_chunk``) the shard's rows are f device blocks: ``[f, k, c]`` -> ``[k, f * c]``
      keeps every chunk split over the same devices (no rows move); the chunks are the same as with ``once``."""
      y = jnp.swapaxes(x.reshape(f, k, x.shape[0] // (f * k), *x.shape[1:]), 0, 1)
      y = y.reshape(k, x.shape[0] // k, *x.shape[1:])
      return _constrain_local(y, (None, auto_rows or None))

    def unchunk(e):
      """``[k, C/S, ...]`` -> this shard's rows ``[B/S, ...]`` in order (inverse of ``local_chunks``)."""
      y = jnp.swapaxes(e.reshape(k, f, e.shape[1] // f, *e.shape[2:]), 0, 1)
      return _constrain_local(y.reshape(k * e.shape[1], *e.shape[2:]), (auto_rows or None,))

    def gather_tables(model_params):
      """``per_chunk`` inside a shard_map: embedding tables (flax ``nn.Embed``'s ``embedding``) gathered over
      ``fsdp`` for the lookup. XLA's partitioner aborts on a gather whose table is sharded over two automatic
      axes (vocab over ``tensor``, embed over ``fsdp``) in a partly manual computation (jax 0.10.2, mesh 2x2x2)."""
      if not axes or fsdp_once:
        return model_params
      return jax.tree_util.tree_map_with_path(
          lambda path, x, spec: _constrain_local(x, jax.sharding.PartitionSpec(
              *(_drop_axes(e, ("fsdp",)) for e in spec))) if getattr(path[-1], "key", None) == "embedding" else x,
          model_params, auto_specs)

    def embed_chunk(model_params, chunk_groups, chunk_keys):
      """One chunk of this shard's rows: ``[[C/S, T, L]]`` -> ``[[C/S, T, D]]``."""
      model_params = gather_tables(model_params)
      shard = jax.lax.axis_index(axes) if dropout and axes else None
      out = []
      for i, (t, il) in enumerate(chunk_groups):
        n, width, length = t.shape
        key = chunk_keys[i] if shard is None else jax.random.fold_in(chunk_keys[i], shard)
        rngs = {"dropout": key} if dropout else None
        e = model.apply({"params": model_params}, t.reshape(n * width, length), il.reshape(n * width),
                        deterministic=not dropout, rngs=rngs)
        out.append(e.reshape(n, width, -1))
      return out

    # (a) embeddings of every chunk, no activations kept.
    @manual(in_specs=(_REPLICATED, rows, _REPLICATED), out_specs=rows)
    def embed_all(model_params, local_groups, all_keys):
      with nn.logical_axis_rules(local_rules):
        chunked = [(local_chunks(t), local_chunks(il)) for t, il in local_groups]
        embs = jax.lax.map(lambda xs: embed_chunk(model_params, *xs), (chunked, all_keys))  # [[k, C/S, T, D]]
        return [unchunk(e) for e in embs]  # [[B/S, T, D]], this shard's rows in order

    embs = embed_all(jax.lax.stop_gradient(gathered), groups, keys)  # [[B, T, D]]

    # (b) loss over the global batch and its gradient w.r.t. the embeddings (and the temperature).
    (_, metrics), (g_tr, g_embs) = jax.value_and_grad(score, argnums=(0, 1), has_aux=True)(trainable, embs)

    # (c) re-run each chunk with its VJP; accumulate this shard's partial gradient; reduce once after the scan.
    @manual(in_specs=(_REPLICATED, rows, _REPLICATED, rows), out_specs=grad_specs)
    def accumulate(model_params, local_groups, all_keys, local_g):
      with nn.logical_axis_rules(local_rules):
        # Varying over the manual axes: the VJP then returns this shard's own partial sum. (With the replicated
        # value, the transpose of its implicit broadcast would psum every chunk's gradient: the per-chunk
        # all-reduce this avoids.)
        model_params = jax.lax.pcast(model_params, axes, to="varying")
        chunked = [(local_chunks(t), local_chunks(il)) for t, il in local_groups]

        def body(acc, xs):
          (chunk_groups, chunk_keys), g = xs
          _, vjp = jax.vjp(lambda mp: embed_chunk(mp, chunk_groups, chunk_keys), model_params)
          (g_model,) = vjp(list(g))
          acc = jax.tree.map(jnp.add, acc, g_model)
          return jax.tree.map(_constrain_local, acc, auto_specs), None

        acc0 = jax.tree.map(_constrain_local, jax.tree.map(jnp.zeros_like, model_params), auto_specs)
        acc, _ = jax.lax.scan(body, acc0, ((chunked, all_keys), [local_chunks(g) for g in local_g]))
        return jax.tree.map(lambda x, s: _reduce_partial(x, s.spec, axes, mesh), acc, model_sh)

    g_model = accumulate(gathered, groups, keys, list(g_embs))
    grads = dict(g_tr)
    grads["model"] = jax.lax.with_sharding_constraint(g_model, model_sh)
    return grads, metrics

  def step(state, batch):
    trainable = state["params"]
    rng = jax.random.fold_in(state["rng"], state["step"])
    grads, metrics = (grad_cache_grads if chunk else plain_grads)(trainable, batch, rng)
    if nan_step >= 0:  # fault injection for tests: poison this step's loss and gradients
      poison = jnp.where(state["step"] == nan_step, jnp.nan, 1.0).astype(jnp.float32)
      grads = jax.tree.map(lambda g: g * poison, grads)
      metrics["loss"] = metrics["loss"] * poison
    updates, opt_state = tx.update(grads, state["opt_state"], trainable)
    params = optax.apply_updates(trainable, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["lr"] = schedule(state["step"])
    if config.loss.get("learnable_temperature", False):
      metrics["temperature"] = jnp.exp(trainable["log_temperature"])
    metrics["tokens"] = sum(jnp.sum(batch[k] != model.pad_id).astype(jnp.float32)
                            for k in ("query_tokens", "pos_tokens", "neg_tokens"))
    new_state = dict(params=params, opt_state=opt_state, rng=state["rng"], step=state["step"] + 1)
    return new_state, metrics

  return step, (grad_cache_grads if chunk else plain_grads)


def train_flops_per_step(cfg: T5Config | BertConfig, out_features, batch_shapes: dict, grad_cache: bool,
                         recompute: bool = True) -> float:
  """FLOPs of one training step on padded tokens (see the module docstring); ``recompute=False``: model FLOPs
  only (3 forward passes, without gradient caching's first pass and full remat's second forward).

  Same count for both backbones (``BertConfig`` exposes T5's names: ``d_kv = hidden_size / heads``, ``d_ff =
  intermediate_size``, never gated): attention q, k, v, o and the two MLP matmuls per layer; BERT's biases, norms,
  embedding sums and its unused pooler are elementwise or dead code and not counted, as T5's norms are not.
  """
  h_dk = cfg.num_heads * cfg.d_kv
  p_layers = cfg.num_layers * (4 * cfg.d_model * h_dk + (3 if cfg.gated else 2) * cfg.d_model * cfg.d_ff)

  def fwd(num_seqs, length):
    per_seq = 2 * length * p_layers + 4 * cfg.num_layers * length * length * h_dk
    per_seq += 2 * cfg.d_model * (out_features or 0)
    return num_seqs * per_seq

  b, lq = batch_shapes["query_tokens"]
  _, ld = batch_shapes["pos_tokens"]
  _, nneg, _ = batch_shapes["neg_tokens"]
  forward = fwd(b, lq) + fwd(b, ld) + fwd(b * nneg, ld)
  passes = 3 + ((1 if grad_cache else 0) + (1 if cfg.remat == "full" else 0) if recompute else 0)
  return float(forward * passes)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
class SyntheticStream:
  """Random token batches with the ``data.TrainStream`` contract (tests, benchmarks, compile checks).

  ``get(step)`` is a pure function of ``(seed, step)``: the global batch is drawn, then this process's rows kept.
  """

  def __init__(self, dcfg, vocab_size: int, global_batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    if global_batch_size % process_count:
      raise ValueError(f"global_batch_size {global_batch_size} is not divisible by {process_count} processes")
    self.lq, self.ld = int(dcfg.max_query_length), int(dcfg.max_doc_length)
    self.n = int(dcfg.num_negatives)
    self.vocab, self.gb, self.seed = vocab_size, global_batch_size, seed
    self.rows = slice(process_index * global_batch_size // process_count,
                      (process_index + 1) * global_batch_size // process_count)
    self.task_names = ["synthetic"]
    self._step = 0

  def _seqs(self, rng, shape, length):
    lens = rng.integers(max(2, length // 4), length + 1, size=shape)
    tok = rng.integers(2, self.vocab, size=shape + (length,), dtype=np.int64).astype(np.int32)
    pos = np.arange(length)
    tok = np.where(pos < lens[..., None], tok, 0).astype(np.int32)
    tok[..., 0] = np.where(lens > 0, tok[..., 0], 0)
    instr = rng.integers(0, np.maximum(lens - 1, 1)).astype(np.int32)
    return tok, instr

  def get(self, step: int) -> dict:
    rng = np.random.default_rng([self.seed, step])
    q, qi = self._seqs(rng, (self.gb,), self.lq)
    p, pi = self._seqs(rng, (self.gb,), self.ld)
    n, ni = self._seqs(rng, (self.gb, self.n), self.ld)
    self._step = step + 1
    out = dict(query_tokens=q, query_instr_len=qi, pos_tokens=p, pos_instr_len=pi, neg_tokens=n, neg_instr_len=ni,
               task=np.zeros((self.gb,), np.int32))
    return {k: v[self.rows] for k, v in out.items()}

  def state_dict(self) -> dict:
    return {"step": self._step, "seed": self.seed}

  def load_state_dict(self, d: dict):
    self._step = int(d.get("step", 0))


def make_stream(config, tokenizer_dir: str, vocab_size: int):
  if config.get("data_source", "medi") == "synthetic":
    return SyntheticStream(config.data, vocab_size, config.global_batch_size, config.seed, jax.process_index(),
                           jax.process_count())
  from instructor_jax import data
  return data.TrainStream.from_config(config.data, tokenizer_dir, config.global_batch_size, config.seed,
                                      jax.process_index(), jax.process_count())


def batch_shapes(config) -> dict:
  """Global batch shapes / dtypes from the config (what the stream yields, before host slicing)."""
  b, lq, ld, n = (config.global_batch_size, config.data.max_query_length, config.data.max_doc_length,
                  config.data.num_negatives)
  return dict(query_tokens=(b, lq), query_instr_len=(b,), pos_tokens=(b, ld), pos_instr_len=(b,),
              neg_tokens=(b, n, ld), neg_instr_len=(b, n), task=(b,))


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------
class MetricWriter:
  """``metrics.jsonl`` (one JSON object per logged step) and tensorboard, on process 0 only."""

  def __init__(self, workdir: str, resume_step: int | None):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if not self.active:
      return
    if os.path.exists(self.path):  # drop lines of steps that will be re-run after a resume
      keep = []
      with open(self.path) as f:
        for line in f:
          try:
            if resume_step is not None and json.loads(line)["step"] <= resume_step:
              keep.append(line)
          except (ValueError, KeyError):
            pass
      with open(self.path + ".tmp", "w") as f:
        f.writelines(keep)
      os.replace(self.path + ".tmp", self.path)
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except Exception as e:  # pragma: no cover - tensorboard is optional
      logging.warning("tensorboard disabled: %s", e)

  def write(self, step: int, metrics: dict):
    if not self.active:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.tb is not None:
      for k, v in metrics.items():
        self.tb.add_scalar(k, float(v), step)
      self.tb.flush()

  def close(self):
    if self.tb is not None:
      self.tb.close()


# ----------------------------------------------------------------------------------------------------------------
# Putting it together
# ----------------------------------------------------------------------------------------------------------------
def state_shardings(model, tx, config, mesh, rules):
  """Abstract (ShapeDtypeStruct) state and its shardings, from the model's logical axis names."""
  boxed = jax.eval_shape(functools.partial(init_variables, model, config=config), jax.random.PRNGKey(0))
  boxed_opt = jax.eval_shape(tx.init, boxed)
  params_sh = sharding.logical_shardings(mesh, boxed, rules)
  opt_sh = sharding.logical_shardings(mesh, boxed_opt, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shardings = dict(params=params_sh, opt_state=opt_sh, rng=replicated, step=replicated)
  abstract = dict(params=nn.unbox(boxed), opt_state=nn.unbox(boxed_opt),
                  rng=jax.eval_shape(lambda: jax.random.PRNGKey(0)), step=jax.ShapeDtypeStruct((), jnp.int32))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return abstract, shardings


def _put_global(x: np.ndarray, sh):
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])


def create_state(spec: ModelSpec, tx, config, abstract, shardings):
  """Fresh state: pretrained params put onto their shardings, or random init compiled straight onto them."""
  rng = jax.random.PRNGKey(int(config.seed))
  init_rng, train_rng = jax.random.split(rng)
  if spec.params is not None:
    trainable = {"model": spec.params}
    if config.loss.get("learnable_temperature", False):
      trainable["log_temperature"] = np.log(np.float32(config.loss.temperature))
    want = jax.tree.structure(abstract["params"])
    if jax.tree.structure(trainable) != want:
      raise ValueError(f"loaded parameters do not match the model: {jax.tree.structure(trainable)} vs {want}")
    params = jax.tree.map(lambda x, a: _put_global(np.asarray(x, a.dtype), a.sharding), trainable,
                          abstract["params"])
  else:
    params = jax.jit(lambda r: nn.unbox(init_variables(spec.model, r, config)),
                     out_shardings=shardings["params"])(init_rng)
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
  return dict(params=params, opt_state=opt_state, rng=_put_global(np.asarray(train_rng), shardings["rng"]),
              step=_put_global(np.int32(0), shardings["step"]))


def bytes_per_device(abstract) -> int:
  total = 0
  for a in jax.tree.leaves(abstract):
    shard = a.sharding.shard_shape(a.shape)
    total += math.prod(shard) * jnp.dtype(a.dtype).itemsize
  return total


def setup_distributed(distributed: bool, coordinator: str | None, num_processes: int | None,
                      process_id: int | None):
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  elif distributed:
    jax.distributed.initialize()  # TPU pods, SLURM and other clusters: auto-detected


@dataclasses.dataclass
class Setup:
  """Everything the loop needs, built from a config and a mesh (also used by the tests)."""
  spec: ModelSpec
  mesh: Any
  tx: Any
  schedule: Any
  abstract: Any         # ShapeDtypeStruct state with shardings
  shardings: Any        # NamedSharding state tree
  batch_shardings: Any
  p_step: Any           # jitted step(state, batch) -> (state, metrics); donates state
  grad_fn: Any          # grad_fn(trainable, batch, rng) -> (grads, metrics), unjitted
  flops: float          # train FLOPs per step (see module docstring)


def setup(config, mesh=None, load_weights: bool = True) -> Setup:
  mesh = sharding.make_mesh(config.mesh_shape) if mesh is None else mesh
  rules = sharding.rules_from_config(config)
  spec = build_model(config, load_weights=load_weights)
  tx, schedule = make_optimizer(config)
  abstract, shardings = state_shardings(spec.model, tx, config, mesh, rules)
  shapes = batch_shapes(config)
  if config.global_batch_size % sharding.num_batch_shards(mesh):
    raise ValueError(f"global_batch_size {config.global_batch_size} is not divisible by the "
                     f"{sharding.num_batch_shards(mesh)} batch shards (data x fsdp) of mesh {dict(mesh.shape)}")
  if config.global_batch_size % jax.process_count():
    raise ValueError(f"global_batch_size {config.global_batch_size} is not divisible by {jax.process_count()} "
                     f"processes")
  batch_sh = {k: sharding.batch_sharding(mesh, len(s)) for k, s in shapes.items()}
  step_fn, grad_fn = make_train_step(spec.model, tx, schedule, config, mesh, shardings["params"])

  def traced_step(state, batch):
    with activation_sharding(mesh, rules):
      return step_fn(state, batch)

  def traced_grads(trainable, batch, rng):
    with activation_sharding(mesh, rules):
      return grad_fn(trainable, batch, rng)

  p_step = jax.jit(traced_step, in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                   donate_argnums=0)
  flops = train_flops_per_step(spec.model.config, spec.model.out_features, shapes,
                               bool(config.get("grad_cache_chunk", 0)))
  return Setup(spec, mesh, tx, schedule, abstract, shardings, batch_sh, p_step, traced_grads, flops)


def train(config: ml_collections.ConfigDict, workdir: str, compile_only: bool = False) -> dict | None:
  """Trains (or AOT-compiles) ``config`` in ``workdir``; returns the last logged metrics."""
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  guard = None if compile_only else checkpoints.PreemptionGuard()  # early: SIGTERM during setup also saves
  s = setup(config, load_weights=not compile_only)
  mesh, spec, tx, abstract, shardings, p_step, flops = s.mesh, s.spec, s.tx, s.abstract, s.shardings, s.p_step, s.flops
  shapes, batch_sh = batch_shapes(config), s.batch_shardings
  if is_main:
    print(f"mesh: {sharding.describe(mesh)}", flush=True)

  if compile_only:
    abstract_batch = {k: jax.ShapeDtypeStruct(s, jnp.int32, sharding=batch_sh[k]) for k, s in shapes.items()}
    t0 = time.time()
    compiled = p_step.lower(abstract, abstract_batch).compile()
    mem = compiled.memory_analysis()
    report = dict(mesh=dict(mesh.shape), devices=int(mesh.devices.size), compile_s=round(time.time() - t0, 1),
                  state_bytes_per_device=bytes_per_device(abstract),
                  params_bytes_per_device=bytes_per_device(abstract["params"]),
                  train_flops_per_step=flops)
    if mem is not None:
      for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
                "generated_code_size_in_bytes"):
        report[k] = int(getattr(mem, k, 0) or 0)
      report["peak_estimate_bytes_per_device"] = (report["argument_size_in_bytes"] + report["output_size_in_bytes"]
                                                  - report["alias_size_in_bytes"] + report["temp_size_in_bytes"])
    if is_main:
      print(json.dumps(report, indent=1))
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "compile_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report

  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpoints.Checkpointer(workdir, max_to_keep=int(config.get("keep_checkpoints", 3)),
                                  async_save=bool(config.get("async_checkpoints", True)))
  meta = dict(spec.meta(), config=json.loads(config.to_json_best_effort()))
  checkpoints.copy_tokenizer(spec.tokenizer_dir, workdir)  # WORKDIR/tokenizer: a self-contained workdir
  stream_vocab = spec.model.config.vocab_size
  start = ckpt.latest_step()
  stream = make_stream(config, spec.tokenizer_dir, stream_vocab)
  if start is not None:
    params, train_state, data_state, _ = ckpt.restore(
        start, abstract["params"], dict(opt_state=abstract["opt_state"], rng=abstract["rng"], step=abstract["step"]))
    state = dict(params=params, **train_state)
    if data_state.get("stream") is not None:
      stream.load_state_dict(data_state["stream"])
    if is_main:
      print(f"resumed from {workdir}/{start}", flush=True)
  else:
    state = create_state(spec, tx, config, abstract, shardings)
    start = 0
  del spec  # host copy of pretrained weights no longer needed

  writer = MetricWriter(workdir, start)
  total = int(config.num_train_steps)
  every_log, every_ckpt = int(config.log_every_steps), int(config.checkpoint_every_steps)
  peak = float(config.get("peak_flops_per_device", 0) or 0) or PEAK_FLOPS.get(
      next((k for k in PEAK_FLOPS if jax.devices()[0].device_kind.startswith(k)), ""), 0.0)
  n_dev = jax.device_count()

  def save(step):
    ckpt.save(step, state["params"], dict(opt_state=state["opt_state"], rng=state["rng"], step=state["step"]),
              {"step": step, "stream": stream.state_dict()}, meta)

  pool = concurrent.futures.ThreadPoolExecutor(1)
  future = pool.submit(stream.get, start) if start < total else None
  pending = []  # (step, metrics on device) since the last check
  last, t_last, n_last = None, time.time(), 0
  progress = None
  if is_main:
    from tqdm import tqdm
    progress = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, file=sys.stderr)

  def check_and_log(step, force_log):
    """Fetches pending metrics; stops on a non-finite loss; logs at log steps."""
    nonlocal pending, last, t_last, n_last
    fetched = jax.device_get(pending)
    pending = []
    for s, m in fetched:
      if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
        ckpt.wait()
        good = ckpt.latest_step()
        raise FloatingPointError(
            f"non-finite loss ({m['loss']}) or grad norm ({m['grad_norm']}) at step {s + 1}; stopping. The last "
            f"good checkpoint is {workdir}/{good} (rerun to resume from it, e.g. with a lower learning rate).")
      if s + 1 == step and (force_log or step % every_log == 0):
        now = time.time()
        dt = max(now - t_last, 1e-9)
        steps = step - n_last
        out = {k: v for k, v in m.items() if k != "tokens"}
        out["examples_per_s"] = steps * config.global_batch_size / dt
        out["tokens_per_s"] = steps * float(m["tokens"]) / dt
        out["step_time_s"] = dt / max(steps, 1)
        if peak:
          out["mfu"] = flops * steps / dt / (n_dev * peak)
        writer.write(step, out)
        last = dict(out, step=step)
        t_last, n_last = now, step
        if progress is not None:
          progress.set_postfix(loss=f"{out['loss']:.4f}", acc=f"{out['accuracy']:.3f}")

  n_last = start
  try:
    for step in range(start, total):
      host_batch = future.result()
      future = pool.submit(stream.get, step + 1) if step + 1 < total else None
      batch = sharding.global_batch(mesh, host_batch)
      state, metrics = p_step(state, batch)
      done = step + 1
      pending.append((step, metrics))
      if progress is not None:
        progress.update(1)
      stop = guard.should_stop()
      is_ckpt = done % every_ckpt == 0 or done == total or stop
      if done % every_log == 0 or is_ckpt or len(pending) >= 100:
        check_and_log(done, force_log=done == total or stop)
      if is_ckpt:
        save(done)
      if stop:
        ckpt.wait()
        if is_main:
          print(f"SIGTERM: saved step {done} to {workdir}; exiting", flush=True)
        break
  finally:
    pool.shutdown(wait=False, cancel_futures=True)
    if progress is not None:
      progress.close()
    ckpt.close()
    writer.close()
    guard.restore_handlers()
  return last


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------
_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/NAME.py[:variant])",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, tensorboard, tokenizer")
flags.DEFINE_bool("compile_only", False, "AOT-compile the train step for config.mesh_shape on fake CPU devices and "
                  "report memory per device; no data, no weights")
flags.DEFINE_integer("compile_devices", 0, "device count for --compile_only (default: product of mesh_shape, "
                     "or config.compile_devices when mesh_shape has a -1)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (TPU pods, SLURM: auto-detected)")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit multi-process setup)")
flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator_address)")
flags.DEFINE_integer("process_id", None, "this process (with --coordinator_address)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  config = _CONFIG.value
  if FLAGS.compile_only:
    # Must happen before the backend starts: fake CPU devices for the target mesh.
    n = FLAGS.compile_devices or int(config.get("compile_devices", 0) or 0)
    if not n:
      if -1 in tuple(config.mesh_shape):
        raise app.UsageError("--compile_only with a -1 in mesh_shape needs --compile_devices N")
      n = math.prod(config.mesh_shape)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={n}").strip()
    jax.config.update("jax_platforms", "cpu")
  setup_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.workdir is None:
    raise app.UsageError("--workdir is required")
  train(config, FLAGS.workdir, compile_only=FLAGS.compile_only)
  if not FLAGS.compile_only:
    finish(config, FLAGS.workdir)


def finish(config: ml_collections.ConfigDict, workdir: str) -> None:
  """After a *complete* run, on process 0: evaluate (``config.eval.data_dir``) and export (``config.export``).

  Evaluation reads the final orbax checkpoint (``python -m instructor_jax.eval --model WORKDIR --data-dir ...``,
  results in ``WORKDIR/eval``); the export (``python -m instructor_jax.convert to-hf``, a verified
  sentence-transformers folder, ``WORKDIR/export`` by default) carries those results in its model card. Runs that
  stopped early (SIGTERM) skip both; a rerun of the same workdir finishes them.
  """
  if jax.process_index() != 0:
    return
  eval_cfg, export_cfg = config.get("eval", None), config.get("export", None)
  if not ((eval_cfg and eval_cfg.get("data_dir")) or (export_cfg and export_cfg.get("enabled"))):
    return
  workdir = os.path.abspath(workdir)
  ckpt = checkpoints.Checkpointer(workdir, async_save=False)
  latest = ckpt.latest_step()
  ckpt.close()
  if latest != int(config.num_train_steps):
    print(f"run stopped at step {latest} of {config.num_train_steps}: skipping evaluation and export", flush=True)
    return
  from instructor_jax import convert, eval as evaluate
  eval_out = None
  if eval_cfg and eval_cfg.get("data_dir"):
    eval_out = os.path.join(workdir, "eval")
    args = ["--model", workdir, "--data-dir", eval_cfg.data_dir, "--output", eval_out,
            "--max-length", str(config.data.max_doc_length)]
    if eval_cfg.get("no_instructions", False):
      args.append("--no-instructions")
    if evaluate.main(args) != 0:
      raise SystemExit(f"evaluation of {workdir} failed")
  if export_cfg and export_cfg.get("enabled"):
    out = export_cfg.get("out_dir") or os.path.join(workdir, "export")
    args = ["to-hf", "--checkpoint", workdir, "--out", out, "--overwrite"]
    if export_cfg.get("legacy_instructor", False):
      args.append("--legacy-instructor")
    if eval_out:
      args += ["--eval-results", eval_out]
    if convert.main(args) != 0:
      raise SystemExit(f"export of {workdir} to {out} failed")
    print(f"exported to {out}: SentenceTransformer({out!r}).encode(texts, prompt=instruction)", flush=True)


if __name__ == "__main__":
  app.run(main)
