"""Mesh resolution, and 8 fake devices vs 1 device (run in a subprocess: XLA_FLAGS must precede jax)."""
import numpy as np
import pytest

from instructor_jax.training import sharding

from helpers import sharded_check


def test_resolve_mesh_shape():
  assert sharding.resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert sharding.resolve_mesh_shape((-1, 1, 1), 1) == (1, 1, 1)
  assert sharding.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  assert sharding.resolve_mesh_shape((1, 8, 1), 8) == (1, 8, 1)
  for bad in [(-1, -1, 1), (3, -1, 1), (2, 2, 1), (2, 2), (0, -1, 1)]:
    with pytest.raises(ValueError):
      sharding.resolve_mesh_shape(bad, 8)


def test_rules_map_params_and_activations():
  import flax.linen as nn
  rules = sharding.DEFAULT_RULES
  # activations: batch takes data+fsdp, so embed stays unsharded
  assert tuple(nn.logical_to_mesh_axes(("batch", "length", "embed"), rules)) == (("data", "fsdp"), None, None)
  # params: FSDP on embed, tensor parallel on mlp / heads / vocab
  assert tuple(nn.logical_to_mesh_axes(("embed", "mlp"), rules)) == ("fsdp", "tensor")
  assert tuple(nn.logical_to_mesh_axes(("embed", "heads", "kv"), rules)) == ("fsdp", "tensor", None)
  assert tuple(nn.logical_to_mesh_axes(("vocab", "embed"), rules)) == ("tensor", "fsdp")


@pytest.fixture(scope="module")
def eight_devices():
  return sharded_check("all", timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["data", "data_fsdp", "data_tensor"])
def test_eight_devices_match_one(eight_devices, mesh):
  r = eight_devices[mesh]
  assert eight_devices["devices"] == 8
  np.testing.assert_allclose(r["losses"], eight_devices["ref_losses"], rtol=1e-5)
  assert r["param_diff"] <= 1e-5, r


@pytest.mark.slow
@pytest.mark.parametrize("case", ["grad_cache", "grad_cache_once", "grad_cache_fsdp8",
                                  "grad_cache_fsdp8_once", "grad_cache_3d", "grad_cache_3d_once",
                                  "grad_cache_split"])
def test_grad_cache_matches_uncached_on_sharded_mesh(eight_devices, case):
  r = eight_devices[case]
  assert r["rel_l2"] <= 1e-5, r
  assert r["loss_diff"] <= 1e-5 * 100, r  # losses are O(100) at temperature 0.01
