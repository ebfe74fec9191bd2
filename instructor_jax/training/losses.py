"""Contrastive losses over the *global* batch: INSTRUCTOR (default) and GTR variants, and the Matryoshka sum.

``contrastive_loss(q [B, D], p [B, D], n [B, N, D], temperature, variant) -> (loss, metrics)``: cosine similarities
in fp32 over temperature; query -> its positive vs every hard negative of the global batch, plus positive -> its
query vs the other queries (GTR adds the other positives as candidates). The first thing to know: it is written as
if on one device; under ``jax.jit`` with batch-sharded inputs XLA gathers the candidates, so every query is scored
against the global batch. ``matryoshka_loss`` sums it over truncated, re-normalised embeddings. WORKSPACE.md has
the formulas.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

VARIANTS = ("instructor", "gtr")


def _normalize(x):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)  # torch CosineSimilarity eps


def _cross_entropy(logits, labels):
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def contrastive_loss(q, p, n, temperature, variant: str = "instructor"):
  """Returns ``(loss, metrics)``; ``q, p: [B, D]``, ``n: [B, N, D]`` (N may be 0), ``temperature`` scalar.

  ``metrics``: ``loss``, ``accuracy`` (top-1 of the query->candidates term), ``loss_q`` and ``loss_p`` (the two
  terms), all fp32 scalars.
  """
  if variant not in VARIANTS:
    raise ValueError(f"loss variant must be one of {VARIANTS}, got {variant!r}")
  b = q.shape[0]
  q, p = _normalize(q), _normalize(p)
  n_all = _normalize(n.reshape(-1, n.shape[-1]))  # [B*N, D]
  inv_t = 1.0 / jnp.asarray(temperature, jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  s_qn = jnp.einsum("bd,md->bm", q, n_all, precision=hi)  # [B, B*N]
  s_qp = jnp.einsum("bd,cd->bc", q, p, precision=hi)  # [B, B]; s_qp[i, j] = s(q_i, p_j)
  diag = jnp.diagonal(s_qp)  # s(q_i, p_i) = s(p_i, q_i)
  idx = jnp.arange(b)
  if variant == "instructor":
    logits_q = jnp.concatenate([diag[:, None], s_qn], axis=1) * inv_t
    labels_q = jnp.zeros((b,), jnp.int32)
  else:
    logits_q = jnp.concatenate([s_qp, s_qn], axis=1) * inv_t
    labels_q = idx.astype(jnp.int32)
  loss_q = jnp.mean(_cross_entropy(logits_q, labels_q))
  # Positive p_i vs its query q_i and the other queries q_j (j != i): s(p_i, q_j) = s_qp[j, i].
  # Mask j == i *after* scaling (exp(-inf) = 0): masking before would give 0 * inf = NaN in d/d(temperature).
  self_mask = jnp.concatenate([jnp.zeros((b, 1), bool), idx[:, None] == idx[None, :]], axis=1)
  logits_p = jnp.concatenate([diag[:, None], s_qp.T], axis=1) * inv_t
  logits_p = jnp.where(self_mask, -jnp.inf, logits_p)
  loss_p = jnp.mean(_cross_entropy(logits_p, jnp.zeros((b,), jnp.int32)))
  loss = loss_q + loss_p
  # Ties count as misses (argmax picks the first maximum, which is the positive only under `variant=instructor`).
  accuracy = jnp.mean((jnp.argmax(logits_q, axis=-1) == labels_q).astype(jnp.float32))
  return loss, dict(loss=loss, accuracy=accuracy, loss_q=loss_q, loss_p=loss_p)


def matryoshka_loss(q, p, n, temperature, variant: str = "instructor", dims=(), weights=()):
  """``contrastive_loss`` summed over the truncated embeddings ``[..., :d]`` for ``d`` in ``dims``, weighted by
  ``weights`` (empty: 1 each); ``dims`` empty: ``contrastive_loss`` itself.

  ``metrics``: ``loss``, ``loss_q``, ``loss_p`` the weighted sums, ``accuracy`` that of the largest ``d``, and per
  dimension ``loss_d{d}`` and ``accuracy_d{d}``.
  """
  dims = tuple(int(d) for d in dims or ())
  if not dims:
    return contrastive_loss(q, p, n, temperature, variant)
  weights = tuple(float(w) for w in weights or ()) or (1.0,) * len(dims)
  if len(weights) != len(dims):
    raise ValueError(f"matryoshka_weights {weights} must have one weight per dimension of {dims}")
  width = q.shape[-1]
  if any(d < 1 or d > width for d in dims):
    raise ValueError(f"matryoshka_dims {dims} must be in 1..{width} (the embedding size)")
  total, out = None, {}
  for d, w in zip(dims, weights):
    loss_d, m = contrastive_loss(q[..., :d], p[..., :d], n[..., :d], temperature, variant)
    terms = {k: w * m[k] for k in ("loss", "loss_q", "loss_p")}
    total = terms if total is None else {k: total[k] + terms[k] for k in terms}
    out[f"loss_d{d}"], out[f"accuracy_d{d}"] = loss_d, m["accuracy"]
  metrics = dict(total, accuracy=out[f"accuracy_d{max(dims)}"], **out)
  return total["loss"], metrics


def temperature_value(params_extra, config_loss):
  """The temperature: fixed ``config.loss.temperature`` or ``exp(log_temperature)`` when learnable."""
  if config_loss.learnable_temperature:
    return jnp.exp(params_extra["log_temperature"].astype(jnp.float32))
  return jnp.float32(config_loss.temperature)
