"""GPU-only checks (skipped without a CUDA backend; CI has none): bf16 numerics and the cuDNN attention path.

Run on a GPU host with ``python -m pytest tests/test_gpu.py -q``. What is compared:
- ``attention="cudnn"`` (fused flash attention, t5.py) against the default XLA attention at the same bf16 compute
  dtype: embeddings, padding invariance, packed rows, and the gradients of a contrastive loss (every parameter,
  the relative-position table included, whose gradient comes from cuDNN's dbias);
- bf16 against fp32 embeddings;
- fp32 on the GPU against fp32 on the CPU (XLA:GPU must not silently drop to TF32 for our fp32 path).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructor_jax.training import losses
from instructor_jax.models.embedder import InstructorModel
from instructor_jax.models.t5 import T5Config

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU (jax backend 'gpu')")

CFG = T5Config(vocab_size=512, d_model=256, d_kv=64, d_ff=512, num_layers=2, num_heads=4, dropout_rate=0.0)


def _batch(rng, b=6, length=64):
  lengths = rng.integers(length // 4, length + 1, size=b)
  lengths[0] = length  # one full row
  tokens = np.zeros((b, length), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(2, CFG.vocab_size, size=n)
  instr = rng.integers(0, 6, size=b).astype(np.int32)
  return jnp.asarray(tokens), jnp.asarray(instr)


def _model(**kw):
  return InstructorModel(dataclasses.replace(CFG, **kw), out_features=128)


@pytest.fixture(scope="module")
def params():
  tokens, instr = _batch(np.random.default_rng(0))
  return nn.unbox(_model().init(jax.random.PRNGKey(0), tokens, instr)["params"])


def test_cudnn_matches_xla_embeddings(params):
  tokens, instr = _batch(np.random.default_rng(1))
  ref = _model(dtype=jnp.bfloat16).apply({"params": params}, tokens, instr)
  out = _model(dtype=jnp.bfloat16, attention="cudnn").apply({"params": params}, tokens, instr)
  cos = np.sum(np.asarray(ref) * np.asarray(out), axis=-1)
  assert np.all(np.isfinite(np.asarray(out)))
  assert cos.min() > 0.999, cos


def test_cudnn_padding_invariance(params):
  """A row padded to 128 embeds like the same row at 64 (cuDNN masks keys past each row's length)."""
  tokens, instr = _batch(np.random.default_rng(2))
  wide = jnp.pad(tokens, ((0, 0), (0, 64)))
  m = _model(dtype=jnp.bfloat16, attention="cudnn")
  a = np.asarray(m.apply({"params": params}, tokens, instr))
  b = np.asarray(m.apply({"params": params}, wide, instr))
  assert np.min(np.sum(a * b, axis=-1)) > 0.999


def test_cudnn_packed_rows(params):
  """Packed rows (segment ids, per-segment pooling) through cuDNN equal one row per input."""
  rng = np.random.default_rng(3)
  lens = [20, 30, 14]
  seqs = [rng.integers(2, CFG.vocab_size, size=n).astype(np.int32) for n in lens]
  row = np.zeros((1, 64), np.int32)
  seg = np.zeros((1, 64), np.int32)
  pool = np.zeros((1, 3, 64), np.float32)
  at = 0
  for s, x in enumerate(seqs):
    row[0, at:at + len(x)] = x
    seg[0, at:at + len(x)] = s + 1
    pool[0, s, at + 2:at + len(x)] = 1  # instruction of 2 tokens
    at += len(x)
  m = _model(dtype=jnp.bfloat16, attention="cudnn")
  packed = np.asarray(m.apply({"params": params}, jnp.asarray(row), jnp.zeros((1,), jnp.int32),
                              jnp.asarray(row != 0), segment_ids=jnp.asarray(seg), pool=jnp.asarray(pool)))[0]
  single = np.zeros((3, 64), np.int32)
  for s, x in enumerate(seqs):
    single[s, :len(x)] = x
  one = np.asarray(m.apply({"params": params}, jnp.asarray(single), jnp.full((3,), 2, jnp.int32)))
  assert np.min(np.sum(packed * one, axis=-1)) > 0.999


def test_cudnn_gradients_match_xla(params):
  rng = np.random.default_rng(4)
  q, qi = _batch(rng, b=8)
  d, di = _batch(rng, b=8)

  def loss_fn(p, attention):
    m = _model(dtype=jnp.bfloat16, attention=attention)
    eq = m.apply({"params": p}, q, qi)
    ed = m.apply({"params": p}, d, di)
    return losses.contrastive_loss(eq, ed, jnp.zeros((eq.shape[0], 0, eq.shape[1])), temperature=0.05)[0]

  g_ref = jax.grad(loss_fn)(params, "xla")
  g = jax.grad(loss_fn)(params, "cudnn")
  flat_ref = jax.tree_util.tree_leaves_with_path(g_ref)
  flat = jax.tree.leaves(g)
  for (path, a), b in zip(flat_ref, flat):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    rel = np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)
    assert np.all(np.isfinite(b)), path
    assert rel < 5e-2, (jax.tree_util.keystr(path), rel)
  # The relative-position table gets a gradient through cuDNN's dbias.
  table = np.asarray(g["encoder"]["relative_attention_bias"])
  assert np.abs(table).max() > 0


def test_bf16_close_to_fp32(params):
  tokens, instr = _batch(np.random.default_rng(5))
  f32 = np.asarray(_model().apply({"params": params}, tokens, instr))
  b16 = np.asarray(_model(dtype=jnp.bfloat16).apply({"params": params}, tokens, instr))
  assert np.min(np.sum(f32 * b16, axis=-1)) > 0.999


def test_fp32_gpu_equals_cpu(params):
  tokens, instr = _batch(np.random.default_rng(6))
  gpu = np.asarray(_model().apply({"params": params}, tokens, instr))
  cpu_dev = jax.devices("cpu")[0]
  with jax.default_device(cpu_dev):
    p_cpu = jax.device_put(params, cpu_dev)
    cpu = np.asarray(_model().apply({"params": p_cpu}, jax.device_put(tokens, cpu_dev),
                                    jax.device_put(instr, cpu_dev)))
  assert np.max(np.abs(gpu - cpu)) < 1e-5, np.max(np.abs(gpu - cpu))
