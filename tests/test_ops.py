"""models/ops.py: the hand-written VJPs compute autodiff's gradients (values to fp32 rounding), and the CPU path is
the one taken."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from instructor_jax.models import ops


def _rand(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("equation,xs,ks", [
    ("bld,df->blf", (3, 5, 8), (8, 24)),        # d_in < d_out: x^T is transposed
    ("blf,fd->bld", (3, 5, 24), (24, 8)),       # d_in > d_out: g^T is transposed, the result transposed back
    ("bld,dhk->blhk", (2, 7, 8), (8, 2, 4)),    # attention projections (3-D kernels)
    ("blhk,hkd->bld", (2, 7, 2, 4), (2, 4, 8)),
    ("nd,df->nf", (11, 8), (8, 16)),
])
def test_einsum_value_and_gradients_equal_autodiff(equation, xs, ks):
  x, k = _rand(xs, 0), _rand(ks, 1)
  out_shape = jnp.einsum(equation, x, k).shape
  ct = _rand(out_shape, 2)

  def loss(fn):
    return lambda x, k: jnp.sum(fn(equation, x, k) * ct)

  ref_val, ref_grads = jax.value_and_grad(loss(jnp.einsum), argnums=(0, 1))(x, k)
  val, grads = jax.jit(jax.value_and_grad(loss(ops.einsum), argnums=(0, 1)))(x, k)
  np.testing.assert_allclose(val, ref_val, rtol=1e-5, atol=1e-5)
  for g, r in zip(grads, ref_grads):
    assert g.shape == r.shape and g.dtype == r.dtype
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_cpu_path_is_the_custom_vjp():
  """On CPU the weight gradient goes through the explicit transpose (an optimization barrier in the HLO); a
  non-projection einsum (batch axes) stays jnp.einsum."""
  x, k = _rand((4, 8), 0), _rand((8, 16), 1)
  grad = jax.grad(lambda x, k: jnp.sum(ops.einsum("nd,df->nf", x, k) ** 2), argnums=1)
  assert "opt-barrier" in jax.jit(grad).lower(x, k).as_text(dialect="hlo")
  q = _rand((2, 3, 4), 2)
  batched = jax.grad(lambda q: jnp.sum(ops.einsum("bqd,bkd->bqk", q, q) ** 2))
  assert "opt-barrier" not in jax.jit(batched).lower(q).as_text(dialect="hlo")


def test_dot_general_falls_back_for_other_contractions():
  a, b = _rand((3, 4, 5), 0), _rand((3, 5, 6), 1)
  dims = (((2,), (1,)), ((0,), (0,)))   # batched
  np.testing.assert_array_equal(ops.dot_general(a, b, dims), jax.lax.dot_general(a, b, dims))
  c = _rand((6, 5), 2)                   # contracting lhs's last with rhs's *last* axis
  dims = (((1,), (1,)), ((), ()))
  np.testing.assert_array_equal(ops.dot_general(a[0], c, dims), jax.lax.dot_general(a[0], c, dims))


def test_gelu_matches_torch_and_jax():
  x = jnp.concatenate([jnp.linspace(-12.0, 12.0, 2001), _rand((4096,), 3) * 3])
  ct = _rand(x.shape, 4)
  tx = torch.tensor(np.asarray(x), requires_grad=True)
  ty = torch.nn.functional.gelu(tx)
  ty.backward(torch.tensor(np.asarray(ct)))
  y, vjp = jax.vjp(jax.jit(ops.gelu), x)
  np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(vjp(ct)[0], tx.grad.numpy(), rtol=1e-5, atol=1e-6)
  ry, rvjp = jax.vjp(lambda v: jax.nn.gelu(v, approximate=False), x)
  np.testing.assert_allclose(y, ry, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(vjp(ct)[0], rvjp(ct)[0], rtol=1e-5, atol=1e-6)
  assert ops.gelu(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
