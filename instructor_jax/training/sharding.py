"""Mesh from config, logical-axis rules, and global arrays from host-local rows.

Read first: the mesh axes are ``("data", "fsdp", "tensor")``, sized by ``config.mesh_shape`` (one ``-1`` takes the
remaining devices, so ``(-1, 1, 1)`` is pure data parallelism and ``(1, -1, 1)`` FSDP). The model names its
dimensions and ``DEFAULT_RULES`` map them to mesh axes (``rules_from_config``): batches split over ``data`` x
``fsdp``, parameters on ``embed`` over ``fsdp`` and on ``mlp`` / ``heads`` / ``vocab`` over ``tensor``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from instructor_jax.core.errors import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (logical name, mesh axes), in priority order.
DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("rel_buckets", None),
    ("positions", None),
    ("token_types", None),
)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces one ``-1`` with the remaining devices; checks the product equals ``num_devices``."""
  shape = [int(s) for s in mesh_shape]
  if len(shape) != len(AXES):
    raise ConfigError(f"--config.mesh_shape must have {len(AXES)} entries {AXES}, got {tuple(mesh_shape)}")
  if shape.count(-1) > 1:
    raise ConfigError(f"--config.mesh_shape may have at most one -1 entry, got {tuple(mesh_shape)}")
  known = math.prod(s for s in shape if s != -1)
  if any(s == 0 or s < -1 for s in shape) or num_devices % known:
    raise ConfigError(f"--config.mesh_shape {tuple(mesh_shape)} does not fit the {num_devices} available "
                      f"device(s): its sizes must multiply to {num_devices} (one -1 takes the rest)")
  if -1 in shape:
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ConfigError(f"--config.mesh_shape {tuple(mesh_shape)} -> {tuple(shape)} uses {math.prod(shape)} devices, "
                     f"but {num_devices} are available")
  return tuple(shape)


def make_mesh(mesh_shape: Sequence[int], devices: Sequence[Any] | None = None) -> Mesh:
  """A ``Mesh`` over all (or the given) devices with axes ``data, fsdp, tensor`` (Auto axis types).

  ``jax.make_mesh`` orders devices for the physical topology (ICI rings on TPU; processes contiguous on
  ``data``) so the ``tensor`` / ``fsdp`` axes stay within fast links where possible.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices)


def rules_from_config(config) -> tuple:
  """``config.logical_axis_rules`` (a list of ``[name, axes]``) or the defaults.

  The model (``t5.py`` / ``bert.py`` / ``embedder.py``) names its parameter and activation dimensions (``batch``,
  ``length``, ``embed``, ``mlp``, ``heads``, ``kv``, ``vocab``, ``rel_buckets``; BERT's small ``positions`` /
  ``token_types`` embedding tables); the rules map them to mesh axes (MaxText style). Flax applies the rules in
  order and never uses a mesh axis twice in one array, so with ``DEFAULT_RULES``:

  - the batch of every activation is split over ``data`` x ``fsdp`` (both are data parallel for activations);
  - parameters (and therefore AdamW moments) are split on ``embed`` over ``fsdp`` (ZeRO-3 / FSDP: weights are
    all-gathered per layer in the forward pass and gradients reduce-scattered), and on ``mlp`` / ``heads`` /
    ``vocab`` over ``tensor`` (Megatron-style tensor parallelism);
  - in activations, ``embed`` is left unsharded because ``fsdp`` is already taken by ``batch``.
  """
  rules = config.logical_axis_rules
  if not rules:
    return DEFAULT_RULES
  return tuple((name, tuple(ax) if isinstance(ax, (list, tuple)) else ax) for name, ax in rules)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Rows split over ``data`` x ``fsdp``, other dimensions replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def num_batch_shards(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch(mesh: Mesh, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Assembles global arrays from each process's rows (``jax.make_array_from_process_local_data``).

  Each process passes its own ``global_batch_size / process_count`` rows; the result is one logical array of
  the global batch, rows split over ``data`` x ``fsdp``. On one process this is a plain ``device_put``.
  """
  out = {}
  for k, v in host_batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
  return out


def logical_shardings(mesh: Mesh, abstract_boxed_tree: Any, rules) -> Any:
  """``NamedSharding`` tree for a tree of ``nn.LogicallyPartitioned`` (abstract) values; scalars replicated."""
  import flax.linen as nn
  specs = nn.get_partition_spec(abstract_boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def describe(mesh: Mesh) -> str:
  return ", ".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names) + f" ({mesh.devices.size} devices, " \
      f"{jax.process_count()} processes)"
