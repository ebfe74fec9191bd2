"""The encoders' dense contractions and exact GELU, with backward passes written for XLA:CPU's fast paths.

The first thing to know: these compute the same functions and gradients as ``jnp.einsum`` / ``jax.nn.gelu`` (up to
floating-point summation order); only the *shape of the backward HLO* differs, and only on the CPU backend:

- ``dot_general`` (a drop-in for ``lax.dot_general`` in ``nn.Dense`` and the attention projections): XLA:CPU runs
  ``x @ W`` and ``g @ W^T`` on YNNPACK (85-89 GFLOP/s on one core here) but lowers the weight gradient
  ``x^T g`` (both operands contracted on the token axis) to its Eigen dot, 38-68 GFLOP/s. The custom VJP hands the
  weight gradient an explicit transposed operand (behind ``optimization_barrier`` so XLA cannot fold it back):
  ``x^T g`` when ``d_in <= d_out``, else ``(g^T x)^T``, so the copy is ``tokens x min(d_in, d_out)`` floats (XLA:CPU
  transposes a ``[tokens, d_ff]`` array at a fraction of memory speed). On other backends, and with several CPU
  devices, the VJP is autodiff's.
- ``gelu``: the erf GELU ``x * Phi(x)`` as torch computes it (``0.5 x (1 + erf(x / sqrt 2))``). ``jax.nn.gelu``
  goes through ``erfc`` and keeps its intermediates for the backward (three passes over ``[tokens, d_ff]`` forward
  on XLA:CPU); here the forward keeps only ``x`` (two passes) and the backward recomputes ``Phi`` and ``phi``.

BENCHMARKS.md ("vs sentence-transformers") has the per-op timings that motivated both.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def _on_cpu() -> bool:
  """The CPU backend with one device. Several CPU devices are the fake meshes of the sharding tests: there the
  partitioner places the weight gradient's reductions, and a barrier would keep an extra full-size partial gradient
  alive before its reduce-scatter (tests/test_train.py's grad-cache memory check measured it)."""
  return jax.default_backend() == "cpu" and jax.device_count() == 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x, w, precision):
  return jnp.matmul(x, w, precision=precision)


def _matmul_fwd(x, w, precision):
  return _matmul(x, w, precision), (x, w)


def _matmul_bwd(precision, res, g):
  x, w = res
  dx = jnp.matmul(g, w.T, precision=precision).astype(x.dtype)
  if x.shape[1] <= g.shape[1]:   # transpose the narrower operand: XLA:CPU transposes [tokens, wide] slowly
    dw = jnp.matmul(jax.lax.optimization_barrier(x.T), g, precision=precision)
  else:
    dw = jnp.matmul(jax.lax.optimization_barrier(g.T), x, precision=precision).T
  return dx, dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """``lax.dot_general``; a dense contraction (lhs's trailing axes with rhs's leading axes, no batch axes) on the
  CPU backend goes through the 2-D ``_matmul`` with the weight-gradient VJP (module docstring)."""
  (lc, rc), (lb, rb) = dimension_numbers
  lc, rc = tuple(lc), tuple(rc)
  n = len(lc)
  dense = (not lb and not rb and n and lc == tuple(range(lhs.ndim - n, lhs.ndim)) and rc == tuple(range(n))
           and lhs.dtype == rhs.dtype and preferred_element_type in (None, lhs.dtype))
  if not (dense and _on_cpu()):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  k = math.prod(lhs.shape[lhs.ndim - n:])
  out = _matmul(lhs.reshape(-1, k), rhs.reshape(k, -1), precision)
  return out.reshape(lhs.shape[:lhs.ndim - n] + rhs.shape[n:])


def einsum(equation: str, x, kernel, precision=None):
  """``jnp.einsum(equation, x, kernel)``; a projection (``"bld,dhk->blhk"``: x's trailing axes contracted with the
  kernel's leading ones, the output x's leading then the kernel's trailing axes) goes through ``dot_general``."""
  ins, out = equation.replace(" ", "").split("->")
  xs, ks = ins.split(",")
  n = sum(c in xs for c in ks)
  if n and xs[len(xs) - n:] == ks[:n] and out == xs[:len(xs) - n] + ks[n:]:
    dims = ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))), ((), ()))
    return dot_general(x, kernel, dims, precision=precision)
  return jnp.einsum(equation, x, kernel, precision=precision)


_SQRT_HALF = 2 ** -0.5             # Python floats: weakly typed, so bf16 stays bf16
_INV_SQRT_2PI = (2 * math.pi) ** -0.5


def _cdf(x):
  return 0.5 + 0.5 * jax.lax.erf(x * _SQRT_HALF)


@jax.custom_vjp
def gelu(x):
  """The exact (erf) GELU, ``0.5 x (1 + erf(x / sqrt 2))`` (torch's ``gelu``)."""
  return x * _cdf(x)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  return (g * (_cdf(x) + x * _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)
