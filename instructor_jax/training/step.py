"""The training step as a pure function: encode one step's sequences, score the global batch, AdamW.

``make_train_step(model, tx, schedule, config, mesh, param_shardings, inputs) -> (step_fn, grad_fn)``;
``step_fn(state, batch) -> (state, metrics)`` is traced once per batch shape under ``jax.jit``. ``Padded`` / ``Packed``
say what a row is; ``plain_grads`` and ``grad_cache_grads`` are written once over rows. The first thing to know: the
gradient-cached path embeds the rows in chunks without activations, takes the loss gradient w.r.t. the embeddings
over the *global* batch, and pushes it back chunk by chunk inside a ``shard_map`` manual over ``data`` -- so its
gradients equal the plain step's. WORKSPACE.md ("training/step.py") has the derivation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from instructor_jax.training import losses
from instructor_jax.training import sharding

P = jax.sharding.PartitionSpec
_REPLICATED = P()


# ----------------------------------------------------------------------------------------------------------------
# Sharding helpers
# ----------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def activation_sharding(mesh, rules):
  """Traces the model with the mesh and logical-axis rules active, so its ``with_logical_constraint`` calls pin
  activations (batch over ``data x fsdp``; without them XLA may follow the FSDP weights and replicate the batch)."""
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
    yield


def constrain_rows(x, mesh):
  """Pins a row-leading array to the batch sharding (rows over ``data x fsdp``)."""
  return jax.lax.with_sharding_constraint(
      x, jax.sharding.NamedSharding(mesh, P(sharding.BATCH_AXES, *([None] * (x.ndim - 1)))))


def spec_axes(entry) -> tuple:
  """The mesh axes of one ``PartitionSpec`` entry (``None``, a name or a tuple of names), in order."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def drop_axes(entry, axes):
  """A ``PartitionSpec`` entry (or a logical-axis rule's mesh axes) without the mesh axes ``axes``."""
  kept = tuple(a for a in spec_axes(entry) if a not in axes)
  return None if not kept else kept[0] if len(kept) == 1 else kept


def only_axes(entry, axes):
  """A ``PartitionSpec`` entry restricted to the mesh axes ``axes`` (a ``shard_map`` spec names only its own)."""
  kept = tuple(a for a in spec_axes(entry) if a in axes)
  return None if not kept else kept[0] if len(kept) == 1 else kept


def constrain_local(x, spec):
  """Inside a partly manual ``shard_map``: pins ``x`` to ``spec`` over the automatic mesh axes (a no-op when it
  names none)."""
  spec = spec if isinstance(spec, P) else P(*spec)
  if not any(spec_axes(e) for e in spec):
    return x
  return jax.lax.with_sharding_constraint(x, spec)


def reduce_partial(x, spec, axes, mesh):
  """Sums this shard's partial gradient ``x`` over the (manual) mesh axes ``axes`` inside ``shard_map``.

  Where the parameter's ``spec`` shards a dimension over some of ``axes`` (FSDP: ``embed`` over ``fsdp``), the sum
  is a reduce-scatter along that dimension, leaving each device its own slice; over the other axes (``data``) an
  all-reduce. Axes of size 1 are skipped (a one-device reduce-scatter is not free on every backend, and XLA's
  partitioner rejects a one-device all-reduce while other mesh axes are automatic).
  """
  done = ()
  for dim, entry in enumerate(spec):
    names = tuple(a for a in spec_axes(entry) if a in axes and mesh.shape[a] > 1)
    if names:
      x = jax.lax.psum_scatter(x, names[0] if len(names) == 1 else names, scatter_dimension=dim, tiled=True)
      done += names
  rest = tuple(a for a in axes if a not in done)
  return jax.lax.psum(x, rest) if rest else x


def chunk_rows(x, k: int, f: int):
  """This shard's rows ``[n, ...]`` -> ``[k, n / k, ...]``: chunk j = rows ``j * c ..`` of each of the ``f`` device
  blocks (``f`` > 1 when the rows are still split over automatic axes inside the shard_map), so every chunk stays
  split over the same devices and no rows move."""
  y = jnp.swapaxes(x.reshape(f, k, x.shape[0] // (f * k), *x.shape[1:]), 0, 1)
  return y.reshape(k, x.shape[0] // k, *x.shape[1:])


def unchunk_rows(e, k: int, f: int):
  """``[k, n / k, ...]`` -> ``[n, ...]`` in row order (the inverse of ``chunk_rows``)."""
  y = jnp.swapaxes(e.reshape(k, f, e.shape[1] // f, *e.shape[2:]), 0, 1)
  return y.reshape(k * e.shape[1], *e.shape[2:])


# ----------------------------------------------------------------------------------------------------------------
# What a row is: padded examples or packed rows
# ----------------------------------------------------------------------------------------------------------------
def _apply(model, params, tokens, instr_len, rng, dropout, **kw):
  return model.apply({"params": params}, tokens, instr_len, kw.pop("mask", None), not dropout,
                     rngs={"dropout": rng} if dropout else None, **kw)


@dataclasses.dataclass(frozen=True)
class Padded:
  """Rows are examples: the query, positive and N negatives of one query, each padded to its max length."""
  pad_id: int = 0

  def rows(self, batch):
    """``[(tokens [B, T, L], instr_len [B, T])]`` grouped by padded length: column 0 the query, 1 the positive, 2..
    the negatives. With ``Lq == Ld`` (the paper's 512 / 512) one group of ``T = 2 + N`` columns, one encoder call (a
    third of the compile); otherwise queries and documents are two groups."""
    q = (batch["query_tokens"][:, None], batch["query_instr_len"][:, None])
    d = (jnp.concatenate([batch["pos_tokens"][:, None], batch["neg_tokens"]], axis=1),
         jnp.concatenate([batch["pos_instr_len"][:, None], batch["neg_instr_len"]], axis=1))
    if q[0].shape[-1] == d[0].shape[-1]:
      return [(jnp.concatenate([q[0], d[0]], axis=1), jnp.concatenate([q[1], d[1]], axis=1))]
    return [q, d]

  def embed(self, model, params, rows, rng, dropout):
    """``[(tokens [n, T, L], instr_len [n, T])]`` -> ``[[n, T, D]]`` (group i draws dropout from ``fold_in(rng, i)``)."""
    out = []
    for i, (t, il) in enumerate(rows):
      n, width, length = t.shape
      e = _apply(model, params, t.reshape(n * width, length), il.reshape(n * width), jax.random.fold_in(rng, i),
                 dropout)
      out.append(e.reshape(n, width, -1))
    return out

  def split(self, embs, batch):
    e = embs[0] if len(embs) == 1 else jnp.concatenate(embs, axis=1)
    return e[:, 0], e[:, 1], e[:, 2:]

  def token_stats(self, batch):
    """``(real, real_sq, computed, computed_sq, sequences)``: sums of L and L^2 over real and computed sequences."""
    real = real_sq = computed = computed_sq = 0.0
    count = 0
    for key in ("query_tokens", "pos_tokens", "neg_tokens"):
      t = batch[key]
      lens = jnp.sum(t != self.pad_id, axis=-1).astype(jnp.float32)
      real, real_sq = real + jnp.sum(lens), real_sq + jnp.sum(lens * lens)
      n = math.prod(t.shape[:-1])
      computed, computed_sq = computed + n * t.shape[-1], computed_sq + n * t.shape[-1] ** 2
      count += n
    return real, real_sq, jnp.float32(computed), jnp.float32(computed_sq), count


@dataclasses.dataclass(frozen=True)
class Packed:
  """Rows are ``pack_length`` tokens of several whole sequences (``packing.py``)."""
  num_examples: int      # B, the global batch
  width: int             # 2 + N sequences per example
  max_segments: int
  chunk_rows: int = 0    # gradient caching: at most this many rows per chunk

  def rows(self, batch):
    return {k: batch[k] for k in ("tokens", "segment_ids", "pool_ids")}

  def embed(self, model, params, rows, rng, dropout):
    """``tokens``, ``segment_ids``, ``pool_ids [n, Lp]`` -> slot embeddings ``[n, S, D]`` (an empty slot is 0)."""
    seg, pool_ids = rows["segment_ids"], rows["pool_ids"]
    slots = jnp.arange(1, self.max_segments + 1, dtype=pool_ids.dtype)
    pool = (pool_ids[:, None, :] == slots[None, :, None]).astype(jnp.float32)   # [n, S, Lp]
    return _apply(model, params, rows["tokens"], jnp.zeros(seg.shape[:1], jnp.int32), rng, dropout, mask=seg > 0,
                  segment_ids=seg, pool=pool)

  def split(self, slots, batch):
    """Slot embeddings ``[R, S, D]`` -> ``q, p, n`` by ``slot_seq [R, S]`` (sequence ``b * width + t``, or the
    sentinel ``B * width`` for an empty slot). A sum over slots: with rows split over devices each device adds its
    slots into a zero ``[B * width, D]`` array and XLA reduces that (``B * width * D`` floats, not the slots)."""
    n_seq = self.num_examples * self.width
    d = slots.shape[-1]
    seqs = jax.ops.segment_sum(slots.reshape(-1, d), batch["slot_seq"].reshape(-1), num_segments=n_seq + 1)
    e = seqs[:n_seq].reshape(self.num_examples, self.width, d)
    return e[:, 0], e[:, 1], e[:, 2:]

  def token_stats(self, batch):
    seg = batch["segment_ids"]
    slots = jnp.arange(1, self.max_segments + 1, dtype=seg.dtype)
    lens = jnp.sum(seg[:, None, :] == slots[None, :, None], axis=-1).astype(jnp.float32)  # [R, S]
    rows, length = seg.shape
    return (jnp.sum(lens), jnp.sum(lens * lens), jnp.float32(rows * length), jnp.float32(rows * length ** 2),
            self.num_examples * self.width)


# ----------------------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------------------
def _score(trainable, embs, batch, inputs, config):
  tau = losses.temperature_value(trainable, config.loss)
  return losses.matryoshka_loss(*inputs.split(embs, batch), tau, config.loss.variant,
                                tuple(config.loss.matryoshka_dims), tuple(config.loss.matryoshka_weights))


def plain_grads(model, inputs, config, mesh, trainable, batch, rng):
  """Loss and gradients of the whole global batch in one pass."""
  dropout = model.config.dropout_rate > 0
  rows = inputs.rows(batch)

  def loss_fn(tr):
    embs = jax.tree.map(lambda e: constrain_rows(e, mesh), inputs.embed(model, tr["model"], rows, rng, dropout))
    return _score(tr, embs, batch, inputs, config)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  return grads, metrics


def gather_tables(model_params, auto_specs, axes, fsdp_once):
  """``per_chunk`` inside a shard_map: embedding tables (flax ``nn.Embed``'s ``embedding``) gathered over ``fsdp``
  for the lookup. XLA's partitioner aborts on a gather whose table is sharded over two automatic axes (vocab over
  ``tensor``, embed over ``fsdp``) in a partly manual computation (jax 0.10.2, mesh 2x2x2)."""
  if not axes or fsdp_once:
    return model_params
  return jax.tree_util.tree_map_with_path(
      lambda path, x, spec: constrain_local(x, P(*(drop_axes(e, ("fsdp",)) for e in spec)))
      if getattr(path[-1], "key", None) == "embedding" else x,
      model_params, auto_specs)


def num_chunks(inputs, config, rows: int, shards: int) -> int:
  """Chunks of a step with ``rows`` rows: ``B / grad_cache_chunk`` padded; packed, the fewest equal chunks of at
  most ``inputs.chunk_rows`` rows (the packing ladder makes every row count split so)."""
  chunk = int(config.grad_cache_chunk)
  if isinstance(inputs, Packed):
    k = -(-rows // inputs.chunk_rows)
    ok = rows % k == 0 and (rows // k) % shards == 0
  else:
    k = max(rows // chunk, 1)
    ok = rows % chunk == 0 and chunk % shards == 0
  if not ok:
    raise ValueError(f"grad_cache_chunk={chunk}: {rows} rows do not split into {k} equal chunks that are multiples "
                     f"of the {shards} batch shards (data x fsdp); it must divide global_batch_size and be a "
                     f"multiple of the batch shards")
  return k


def grad_cache_grads(model, inputs, config, mesh, param_shardings, trainable, batch, rng):
  """GradCache over the global batch, gradients reduced over ``data`` once per step (see the module docstring)."""
  dropout = model.config.dropout_rate > 0
  fsdp_once = config.grad_cache_fsdp == "once"
  rows = inputs.rows(batch)
  k = num_chunks(inputs, config, jax.tree.leaves(rows)[0].shape[0], sharding.num_batch_shards(mesh))
  # The manual axes (size-1 axes never are: nothing to reduce, and XLA rejects a one-device all-reduce next to
  # automatic axes); with none (one device, or per_chunk on a pure FSDP mesh) no shard_map is needed at all.
  axes = tuple(a for a in (sharding.BATCH_AXES if fsdp_once else ("data",)) if mesh.shape[a] > 1)
  auto_rows = tuple(a for a in sharding.BATCH_AXES if a not in axes and mesh.shape[a] > 1)  # split inside
  f = math.prod(mesh.shape[a] for a in auto_rows)
  row_spec = P(axes)
  keys = jax.vmap(lambda j: jax.random.fold_in(rng, j))(jnp.arange(k))  # one key per chunk

  def manual(in_specs, out_specs):
    if not axes:
      return lambda fn: fn
    return functools.partial(jax.shard_map, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                             axis_names=frozenset(axes))

  # Inside the shard_maps the manual axes may not be named by constraints: drop them from the rules.
  local_rules = tuple((name, drop_axes(mesh_axes, axes)) for name, mesh_axes in nn.get_logical_axis_rules())
  model_sh = param_shardings["model"]
  # Parameters enter replicated over the manual axes ("once": gathered over fsdp here; tensor sharding kept).
  gathered = trainable["model"] if not fsdp_once else jax.lax.with_sharding_constraint(
      trainable["model"], jax.tree.map(
          lambda s: jax.sharding.NamedSharding(mesh, P(*(drop_axes(e, axes) for e in s.spec))), model_sh))
  grad_specs = jax.tree.map(lambda s: P(*(only_axes(e, axes) for e in s.spec)), model_sh)
  auto_specs = jax.tree.map(lambda s: P(*(drop_axes(e, axes) for e in s.spec)), model_sh)  # the accumulator's

  def to_chunks(x):
    return constrain_local(chunk_rows(x, k, f), (None, auto_rows or None))

  def from_chunks(e):
    return constrain_local(unchunk_rows(e, k, f), (auto_rows or None,))

  def embed_chunk(model_params, chunk, key):
    model_params = gather_tables(model_params, auto_specs, axes, fsdp_once)
    if dropout and axes:
      key = jax.random.fold_in(key, jax.lax.axis_index(axes))
    return inputs.embed(model, model_params, chunk, key, dropout)

  # (a) embeddings of every chunk, no activations kept.
  @manual(in_specs=(_REPLICATED, row_spec, _REPLICATED), out_specs=row_spec)
  def embed_all(model_params, local_rows, all_keys):
    with nn.logical_axis_rules(local_rules):
      embs = jax.lax.map(lambda xs: embed_chunk(model_params, *xs), (jax.tree.map(to_chunks, local_rows), all_keys))
      return jax.tree.map(from_chunks, embs)  # this shard's rows in order

  embs = embed_all(jax.lax.stop_gradient(gathered), rows, keys)

  # (b) loss over the global batch and its gradient w.r.t. the embeddings (and the temperature).
  (_, metrics), (g_tr, g_embs) = jax.value_and_grad(
      lambda tr, e: _score(tr, e, batch, inputs, config), argnums=(0, 1), has_aux=True)(trainable, embs)

  # (c) re-run each chunk with its VJP; accumulate this shard's partial gradient; reduce once after the scan.
  @manual(in_specs=(_REPLICATED, row_spec, _REPLICATED, row_spec), out_specs=grad_specs)
  def accumulate(model_params, local_rows, all_keys, local_g):
    with nn.logical_axis_rules(local_rules):
      # Varying over the manual axes: the VJP then returns this shard's own partial sum. (With the replicated
      # value, the transpose of its implicit broadcast would psum every chunk's gradient: the per-chunk
      # all-reduce this avoids.)
      if axes:
        model_params = jax.lax.pcast(model_params, axes, to="varying")

      def body(acc, xs):
        chunk, key, g = xs
        _, vjp = jax.vjp(lambda mp: embed_chunk(mp, chunk, key), model_params)
        (g_model,) = vjp(g)
        acc = jax.tree.map(jnp.add, acc, g_model)
        return jax.tree.map(constrain_local, acc, auto_specs), None

      acc0 = jax.tree.map(constrain_local, jax.tree.map(jnp.zeros_like, model_params), auto_specs)
      xs = (jax.tree.map(to_chunks, local_rows), all_keys, jax.tree.map(to_chunks, local_g))
      acc, _ = jax.lax.scan(body, acc0, xs)
      return jax.tree.map(lambda x, s: reduce_partial(x, s.spec, axes, mesh), acc, model_sh)

  g_model = accumulate(gathered, rows, keys, g_embs)
  grads = dict(g_tr)
  grads["model"] = jax.lax.with_sharding_constraint(g_model, model_sh)
  return grads, metrics


# ----------------------------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------------------------
def make_train_step(model, tx, schedule, config, mesh, param_shardings, inputs):
  """``(step, grad_fn)``: ``step(state, batch) -> (state, metrics)``; ``grad_fn(trainable, batch, rng) ->
  (grads, metrics)`` (unjitted, for tests)."""
  if config.grad_cache_fsdp not in ("per_chunk", "once"):
    raise ValueError(f"grad_cache_fsdp must be 'per_chunk' or 'once', got {config.grad_cache_fsdp!r}")
  nan_step = int(config.debug_nan_step)
  if config.grad_cache_chunk:
    grad_fn = functools.partial(grad_cache_grads, model, inputs, config, mesh, param_shardings)
  else:
    grad_fn = functools.partial(plain_grads, model, inputs, config, mesh)

  def step(state, batch):
    trainable = state["params"]
    rng = jax.random.fold_in(state["rng"], state["step"])
    grads, metrics = grad_fn(trainable, batch, rng)
    if nan_step >= 0:  # fault injection for tests: poison this step's loss and gradients
      poison = jnp.where(state["step"] == nan_step, jnp.nan, 1.0).astype(jnp.float32)
      grads = jax.tree.map(lambda g: g * poison, grads)
      metrics["loss"] = metrics["loss"] * poison
    updates, opt_state = tx.update(grads, state["opt_state"], trainable)
    params = optax.apply_updates(trainable, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["lr"] = schedule(state["step"])
    if config.loss.learnable_temperature:
      metrics["temperature"] = jnp.exp(trainable["log_temperature"])
    real, real_sq, computed, computed_sq, _ = inputs.token_stats(batch)
    metrics.update(real_tokens=real, real_tokens_sq=real_sq, computed_tokens=computed,
                   computed_tokens_sq=computed_sq)
    new_state = dict(params=params, opt_state=opt_state, rng=state["rng"], step=state["step"] + 1)
    return new_state, metrics

  return step, grad_fn


def flops(cfg, out_features, tokens, tokens_sq, sequences, passes: int) -> float:
  """FLOPs of ``passes`` forward-equivalents over sequences with ``sum L = tokens`` and ``sum L^2 = tokens_sq``
  (module docstring). Same count for both backbones (``BertConfig`` exposes T5's names; BERT's biases, norms and
  unused pooler are not counted, as T5's norms are not)."""
  h_dk = cfg.num_heads * cfg.d_kv
  p_layers = cfg.num_layers * (4 * cfg.d_model * h_dk + (3 if cfg.gated else 2) * cfg.d_model * cfg.d_ff)
  forward = 2 * tokens * p_layers + 4 * cfg.num_layers * tokens_sq * h_dk + 2 * cfg.d_model * (out_features or 0) \
      * sequences
  return float(forward * passes)


def hardware_passes(cfg, grad_cache: bool) -> int:
  """Forward-equivalents the hardware runs: 3, +1 for gradient caching's first pass, +1 for full remat."""
  return 3 + (1 if grad_cache else 0) + (1 if cfg.remat == "full" else 0)


def padded_flops(cfg, out_features, batch_shapes: dict, grad_cache: bool, recompute: bool = True) -> float:
  """FLOPs of one padded step (every sequence at its padded length); ``recompute=False``: model FLOPs only."""
  b, lq = batch_shapes["query_tokens"]
  _, ld = batch_shapes["pos_tokens"]
  _, nneg, _ = batch_shapes["neg_tokens"]
  seqs = [(b, lq), (b * (1 + nneg), ld)]
  tokens, tokens_sq = sum(n * l for n, l in seqs), sum(n * l * l for n, l in seqs)
  passes = hardware_passes(cfg, grad_cache) if recompute else 3
  return flops(cfg, out_features, tokens, tokens_sq, b * (2 + nneg), passes)
