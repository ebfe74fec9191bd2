"""Content checksums of checkpointed arrays: verified after every restore, so a damaged step is never trained on.

Each saved array gets two 32-bit sums of its bits (as unsigned words): the plain sum and the sum weighted by
(2 * flat index + 1), both mod 2^32. Any single corrupted word changes the plain sum; the weighted sum catches
swapped or offsetting words. They are computed on the devices where the arrays live (a sharded array is reduced where
its shards are, no gather) and recomputed after every restore, on device (training) or in numpy (convert, eval).
Unreadable or truncated files fail earlier, in orbax / tensorstore.
"""
from __future__ import annotations

import jax
import numpy as np

from instructor_jax.core.errors import CheckpointError

_MASK = 0xFFFFFFFF


def _words_jax(x):
  import jax.numpy as jnp
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  size = jnp.dtype(x.dtype).itemsize
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  if size == 1:
    return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  raise TypeError(f"no checksum for dtype {x.dtype}")


def _checksum_jax(x):
  import jax.numpy as jnp
  w = _words_jax(x)
  idx = jnp.zeros(w.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(w.ndim)):  # flat (row-major) index without flattening the (sharded) array
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride & _MASK)
    stride *= w.shape[axis]
  return jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * (idx * jnp.uint32(2) + jnp.uint32(1)),
                                                         dtype=jnp.uint32)])


def _checksum_np(x) -> list[int]:
  x = np.asarray(x)
  if x.dtype == np.bool_:
    w = x.astype(np.uint64)
  else:
    w = x.view({4: np.uint32, 2: np.uint16, 1: np.uint8}[x.dtype.itemsize]).astype(np.uint64)
  idx = np.arange(w.size, dtype=np.uint64).reshape(w.shape)
  return [int(np.sum(w, dtype=np.uint64)) & _MASK, int(np.sum(w * (2 * idx + 1), dtype=np.uint64)) & _MASK]


def _paths(tree) -> list[str]:
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


_device_checksums = None


def checksums(items: dict) -> dict:
  """``{item + keystr(path): [sum, weighted sum]}`` of every array in ``items`` (e.g. ``{'params': ..., 'train':
  ...}``), computed where the arrays live (one jitted reduction; a small sync)."""
  global _device_checksums
  if _device_checksums is None:
    _device_checksums = jax.jit(lambda t: jax.tree.map(_checksum_jax, t))
  sums = jax.device_get(_device_checksums(items))
  return {k: [int(a) for a in v] for k, v in zip(_paths(items), jax.tree.leaves(sums, is_leaf=lambda x:
                                                                                  isinstance(x, np.ndarray)))}


def host_checksums(items: dict) -> dict:
  """``checksums`` of host (numpy) trees, computed in numpy: the same values."""
  return {k: _checksum_np(v) for k, v in zip(_paths(items), jax.tree.leaves(items))}


def verify(where: str, stored: dict | None, got: dict) -> None:
  """Raises ``CheckpointError`` naming the arrays whose checksums differ from the stored ones (``stored`` None: a
  checkpoint written before checksums existed, accepted as it is)."""
  if stored is None:
    return
  bad = [k for k, v in got.items() if stored.get(k) != v]
  if bad:
    raise CheckpointError(f"{where}: checksum mismatch in {bad[0]}" +
                          (f" and {len(bad) - 1} more array(s)" if len(bad) > 1 else "") +
                          " (the files changed after they were written)")
