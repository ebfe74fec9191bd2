"""Run in a subprocess with 8 fake CPU devices (see test_sharding.py); prints one JSON line of results.

For each mesh, trains the tiny config for 3 steps from the same init and records losses and final parameters;
compares with the 1-device run. Also compares gradient-cached gradients with uncached ones on a sharded mesh.
Modes (argv[1]): ``all``, ``meshes`` (packed, the default), ``grad_cache`` (padded); ``packing`` (packed gradients
on 1 and 8 devices, plain and cached, T5 and BERT, vs the padded step on 1 device); for test_train.py:
``grad_cache_dropout`` (cached gradient vs a finite difference of the loss, dropout on) and ``hlo OUT_DIR`` (writes
the compiled grad-cache step's HLO).
"""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import tiny_config  # noqa: E402
from instructor_jax.data import stream as data
from instructor_jax.training import sharding
from instructor_jax.training import state
from instructor_jax.training import trainer as train  # noqa: E402

STEPS = 3


def run(config, mesh):
  s = train.setup(config, mesh)
  state = train.create_state(s.spec, s.tx, config, s.abstract, s.shardings)
  stream = data.make_stream(config, "", s.spec.model.config.vocab_size, s.packer)
  losses = []
  for step in range(STEPS):
    state, m = s.p_step(state, sharding.global_batch(mesh, stream.get(step)))
    losses.append(float(m["loss"]))
  return losses, jax.tree.map(np.asarray, state["params"])


def max_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def grad_setup(config, mesh):
  """``(grad_fn jitted with the trainer's shardings, initial params, the first synthetic batch)``."""
  s = train.setup(config, mesh)
  state = train.create_state(s.spec, s.tx, config, s.abstract, s.shardings)
  stream = data.make_stream(config, "", s.spec.model.config.vocab_size, s.packer)
  batch = sharding.global_batch(mesh, stream.get(0))
  fn = jax.jit(s.grad_fn, in_shardings=(s.shardings["params"], s.batch_shardings, None),
               out_shardings=(s.shardings["params"], None))
  return fn, state["params"], batch


def grads(config, mesh):
  fn, params, batch = grad_setup(config, mesh)
  g, m = fn(params, batch, jax.random.PRNGKey(3))
  return jax.tree.map(np.asarray, g), float(m["loss"])


def compiled_hlo(config, mesh):
  """``(optimized HLO text, bytes per device: arguments + temporaries, model parameter bytes)`` of the jitted train
  step for ``config`` on ``mesh`` (compiled, not run)."""
  import jax.numpy as jnp
  s = train.setup(config, mesh)
  batch = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=s.batch_shardings[k])
           for k, v in train.batch_shapes(config, s.packer).items()}
  compiled = s.p_step.lower(s.abstract, batch).compile()
  mem = compiled.memory_analysis()
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(s.abstract["params"]["model"]))
  return compiled.as_text(), int(mem.argument_size_in_bytes + mem.temp_size_in_bytes), param_bytes


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
    gc.data.pack = False  # the padded path's gradient cache (test_packing covers the packed one)
    gc.global_batch_size = 16
    gc.data.max_query_length = gc.data.max_doc_length
    gc.model.dropout_rate = 0.0
    mesh = sharding.make_mesh((4, 2, 1), devs)
    g_ref, l_ref = grads(gc, mesh)
    gc.grad_cache_chunk = 8  # 2 chunks of 8 queries = 1 row from each of the 8 batch shards per chunk... x2
    for mode in ("per_chunk", "once"):  # FSDP: ZeRO-3 inside the chunk loop, or gathered / reduced once
      gc.grad_cache_fsdp = mode
      g_gc, l_gc = grads(gc, mesh)
      out["grad_cache" if mode == "per_chunk" else "grad_cache_once"] = dict(
          rel_l2=rel_diff(g_gc, g_ref)[0], loss_diff=abs(l_gc - l_ref))
    for mode in ("per_chunk", "once"):
      gc.grad_cache_fsdp = mode
      suffix = "" if mode == "per_chunk" else "_once"
      # pure FSDP (data 1 x fsdp 8): per_chunk needs no shard_map at all (the chunk loop is automatic ZeRO-3);
      # once is manual over fsdp alone
      g_gc, l_gc = grads(gc, sharding.make_mesh((1, 8, 1), devs))
      out["grad_cache_fsdp8" + suffix] = dict(rel_l2=rel_diff(g_gc, g_ref)[0], loss_diff=abs(l_gc - l_ref))
      # data 2 x fsdp 2 x tensor 2: per_chunk has two automatic axes inside the shard_map (the embedding-table
      # gather case); once has tensor automatic beside two manual axes
      g_gc, l_gc = grads(gc, sharding.make_mesh((2, 2, 2), devs))
      out["grad_cache_3d" + suffix] = dict(rel_l2=rel_diff(g_gc, g_ref)[0], loss_diff=abs(l_gc - l_ref))
    # queries and documents of different lengths (two encoder calls), learnable temperature, 4 chunks
    gc = tiny_config.get_config()
    gc.data.pack = False
    gc.global_batch_size = 16
    gc.model.dropout_rate = 0.0
    gc.loss.learnable_temperature = True
    g_ref, l_ref = grads(gc, mesh)
    gc.grad_cache_chunk = 4  # 4 chunks of 4 queries = 1 row of each of the 4 batch shards (data 4 x tensor 2)
    g_gc, l_gc = grads(gc, sharding.make_mesh((4, 1, 2), devs))
    out["grad_cache_split"] = dict(rel_l2=rel_diff(g_gc, g_ref)[0], loss_diff=abs(l_gc - l_ref))
  if which == "packing":
    # Packed gradients (dropout off) on 1 and 8 devices, plain and cached, vs the padded step on 1 device; T5 and
    # a random BERT (positions restart per segment); queries shorter than documents, learnable temperature.
    out["packing"] = {}
    for backbone in ("t5", "bert"):
      pc = tiny_config.get_config()
      pc.global_batch_size = 16
      pc.model.dropout_rate = 0.0
      pc.loss.learnable_temperature = True
      if backbone == "bert":
        pc.model.backbone, pc.model.tokenizer_dir = "bert", state.ASSETS_VOCAB  # not read: synthetic data
        pc.model.bert = dict(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0)
      pc.data.pack = False
      g_ref, l_ref = grads(pc, sharding.make_mesh((1, 1, 1), devs[:1]))
      pc.data.pack = True
      pc.data.pack_length, pc.data.pack_lengths = 32, "16,24"  # the step picks its row length from 16 / 24 / 32
      for shape in ((1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 1, 4)):
        for chunk in (0, 8):  # 8 queries x (2 + 2) -> at most 32 rows per chunk (2 chunks of the larger steps)
          pc.grad_cache_chunk = chunk
          mesh = sharding.make_mesh(shape, devs[:math.prod(shape)])
          g, l = grads(pc, mesh)
          out["packing"][f"{backbone}_{'x'.join(map(str, shape))}_chunk{chunk}"] = dict(
              rel_l2=rel_diff(g, g_ref)[0], loss_rel=abs(l - l_ref) / abs(l_ref))
  if which == "grad_cache_dropout":
    # With dropout, pass (c) must recompute exactly the activations pass (a) scored (same keys, same rows per
    # shard): only then is the cached gradient the derivative of the loss the step reports. Central difference of
    # that loss along the unit gradient direction u vs <g, u> = |g| (2 chunks of 8) on: data 4 x fsdp 2 in both
    # FSDP modes, and data 1 x fsdp 8 with per_chunk (no shard_map: rows split over fsdp by the partitioner).
    out["grad_cache_dropout"] = {}
    for mode, shape in (("per_chunk", (4, 2, 1)), ("once", (4, 2, 1)), ("per_chunk", (1, 8, 1))):
      dc = tiny_config.get_config()
      dc.global_batch_size = 16
      dc.grad_cache_chunk = 8
      dc.grad_cache_fsdp = mode
      dc.loss.temperature = 0.5  # a smoother loss than 0.01 for the finite difference
      fn, params, batch = grad_setup(dc, sharding.make_mesh(shape, devs))
      key = jax.random.PRNGKey(7)
      g, _ = fn(params, batch, key)
      norm = float(np.sqrt(sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(g))))
      eps = 1e-2
      loss = [float(fn(jax.tree.map(lambda p, d: p + sign * eps * d / norm, params, g), batch, key)[1]["loss"])
              for sign in (1, -1)]
      out["grad_cache_dropout"][f"{mode}_{'x'.join(map(str, shape))}"] = dict(
          finite_difference=(loss[0] - loss[1]) / (2 * eps), grad_norm=norm)
  if which == "hlo":  # sharded_check.py hlo OUT_DIR: the grad-cache step on data 4 x fsdp 2, 2 and 4 chunks
    hc = tiny_config.get_config()
    hc.data.pack = False  # fixed chunk counts (k = 2, 4) of a padded batch
    hc.global_batch_size = 32
    hc.data.max_query_length = hc.data.max_doc_length
    # Parameters large next to the activations (wide MLP, short rows), so where they live shows in the memory.
    hc.model.t5 = dict(hc.model.t5, d_ff=4096)
    hc.data.max_query_length = hc.data.max_doc_length = 8
    mesh = sharding.make_mesh((4, 2, 1), devs)
    out["hlo"], out["memory"] = {}, {}
    for mode in ("once", "per_chunk"):
      hc.grad_cache_fsdp = mode
      for k in (2, 4):
        hc.grad_cache_chunk = hc.global_batch_size // k
        text, mem, out["param_bytes"] = compiled_hlo(hc, mesh)
        path = os.path.join(sys.argv[2], f"grad_cache_{mode}_k{k}.hlo")
        with open(path, "w") as f:
          f.write(text)
        out["hlo"][f"{mode}_k{k}"] = path
        out["memory"][f"{mode}_k{k}"] = mem
  print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
