"""Run in a subprocess with 8 fake CPU devices (see test_sharding.py); prints one JSON line of results.

For each mesh, trains the tiny config for 3 steps from the same init and records losses and final parameters;
compares with the 1-device run. Also compares gradient-cached gradients with uncached ones on a sharded mesh.
"""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import tiny_config  # noqa: E402
from instructor_jax import sharding, train  # noqa: E402

STEPS = 3


def run(config, mesh):
  s = train.setup(config, mesh)
  state = train.create_state(s.spec, s.tx, config, s.abstract, s.shardings)
  stream = train.SyntheticStream(config.data, config.model.t5["vocab_size"], config.global_batch_size, config.seed)
  losses = []
  for step in range(STEPS):
    state, m = s.p_step(state, sharding.global_batch(mesh, stream.get(step)))
    losses.append(float(m["loss"]))
  return losses, jax.tree.map(np.asarray, state["params"])


def max_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def grads(config, mesh):
  s = train.setup(config, mesh)
  state = train.create_state(s.spec, s.tx, config, s.abstract, s.shardings)
  stream = train.SyntheticStream(config.data, config.model.t5["vocab_size"], config.global_batch_size, config.seed)
  batch = sharding.global_batch(mesh, stream.get(0))
  fn = jax.jit(s.grad_fn, in_shardings=(s.shardings["params"], s.batch_shardings, None),
               out_shardings=(s.shardings["params"], None))
  g, m = fn(state["params"], batch, jax.random.PRNGKey(3))
  return jax.tree.map(np.asarray, g), float(m["loss"])


def rel_diff(a, b):
  num = np.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))
  den = np.sqrt(sum(float(np.sum(y ** 2)) for y in jax.tree.leaves(b)))
  worst = max(float(np.max(np.abs(x - y) / (np.abs(y) + 1e-6 * np.max(np.abs(y)) + 1e-30)))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  return num / den, worst


def main():
  which = sys.argv[1] if len(sys.argv) > 1 else "all"
  out = {"devices": jax.device_count()}
  devs = jax.devices()
  config = tiny_config.get_config()
  config.global_batch_size = 16
  config.data.max_query_length = config.data.max_doc_length  # one fused encoder call (test_train covers two)
  if which in ("all", "meshes"):
    ref_losses, ref_params = run(config, sharding.make_mesh((1, 1, 1), devs[:1]))
    out["ref_losses"] = ref_losses
    for name, shape in [("data", (8, 1, 1)), ("data_fsdp", (2, 4, 1)), ("data_tensor", (2, 1, 4))]:
      losses, params = run(config, sharding.make_mesh(shape, devs))
      out[name] = dict(losses=losses, loss_diff=max(abs(a - b) for a, b in zip(losses, ref_losses)),
                       param_diff=max_diff(params, ref_params))
  if which in ("all", "grad_cache"):
    gc = tiny_config.get_config()
    gc.global_batch_size = 16
    gc.data.max_query_length = gc.data.max_doc_length
    gc.model.dropout_rate = 0.0
    mesh = sharding.make_mesh((4, 2, 1), devs)
    g_ref, l_ref = grads(gc, mesh)
    gc.grad_cache_chunk = 8  # 2 chunks of 8 queries = 1 row from each of the 8 batch shards per chunk... x2
    g_gc, l_gc = grads(gc, mesh)
    out["grad_cache"] = dict(rel_l2=rel_diff(g_gc, g_ref)[0], loss_diff=abs(l_gc - l_ref))
    # queries and documents of different lengths (two encoder calls), learnable temperature, 4 chunks
    gc = tiny_config.get_config()
    gc.global_batch_size = 16
    gc.model.dropout_rate = 0.0
    gc.loss.learnable_temperature = True
    g_ref, l_ref = grads(gc, mesh)
    gc.grad_cache_chunk = 4  # 4 chunks of 4 queries = 1 row of each of the 4 batch shards (data 4 x tensor 2)
    g_gc, l_gc = grads(gc, sharding.make_mesh((4, 1, 2), devs))
    out["grad_cache_split"] = dict(rel_l2=rel_diff(g_gc, g_ref)[0], loss_diff=abs(l_gc - l_ref))
  print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
