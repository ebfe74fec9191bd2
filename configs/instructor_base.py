"""INSTRUCTOR-base: the paper's recipe from sentence-transformers/gtr-t5-base on MEDI.

    python -m instructor_jax.train --config configs/instructor_base.py:VARIANT --workdir DIR [--config.key=value]

Recipe (Su et al. 2023 / the issue): init GTR-base, AdamW lr 2e-5, warmup ratio 0.1 then linear decay to 0,
20k steps, temperature 0.01, max length 512, T5 dropout 0.1, grad-norm clip 1.0, weight decay 0; INSTRUCTOR loss
(query -> positive vs all hard negatives of the global batch, plus positive -> query vs the other queries).
The global batch size is a scale choice of these configs (not stated in the recipe above); override it freely,
e.g. ``--config.global_batch_size=64``.

Variants (``:VARIANT``) set the mesh and batch for a target; ``--compile_only`` checks memory from a CPU:
- ``""`` (default): whatever devices are visible, data parallel (``mesh_shape=(-1, 1, 1)``);
- ``v4-32``: 16 TPU v4 chips (32 GiB HBM each), data parallel, batch 512;
- ``v5e-64``: 64 TPU v5e chips (16 GiB), data x FSDP, batch 1024;
- ``gpu8``: one host with 8 GPUs (e.g. H100 80 GiB), data parallel, batch 256.
"""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# HF config.json fields of the GTR / T5 v1.0 encoders (used for random init and --compile_only; training from
# `model.init_from` reads the real config.json of the folder).
T5 = {
    "base": dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
    "large": dict(vocab_size=32128, d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),
    "xl": dict(vocab_size=32128, d_model=1024, d_kv=128, d_ff=16384, num_layers=24, num_heads=32),
}

# variant -> per size: (mesh_shape, global_batch_size, remat, grad_cache_chunk, compile_devices).
# Starting points sized by hand (activations of 3 x 512-token sequences per query with fp32 attention scores;
# FSDP for XL's 1.2B-parameter encoder + AdamW state); check a change with --compile_only before renting the slice.
# (CPU's memory analysis does not fuse the attention softmax chain, so its temp bytes over-estimate TPU / GPU.)
VARIANTS = {
    "": {"base": ((-1, 1, 1), 128, "dots", 0, 8), "large": ((-1, 1, 1), 128, "full", 0, 8),
         "xl": ((1, -1, 1), 128, "full", 64, 8)},
    "v4-32": {"base": ((-1, 1, 1), 512, "dots", 0, 16), "large": ((-1, 1, 1), 512, "full", 0, 16),
              "xl": ((1, -1, 1), 512, "full", 128, 16)},
    "v5e-64": {"base": ((-1, 1, 1), 1024, "full", 0, 64), "large": ((4, -1, 1), 1024, "full", 0, 64),
               "xl": ((1, -1, 1), 1024, "full", 512, 64)},
    "gpu8": {"base": ((-1, 1, 1), 256, "dots", 0, 8), "large": ((-1, 1, 1), 256, "full", 0, 8),
             "xl": ((1, -1, 1), 256, "full", 64, 8)},
}


def load_base():
  """``configs/base.py`` (every key with its default), loaded by path."""
  spec = importlib.util.spec_from_file_location("instructor_base_defaults", os.path.join(REPO, "configs", "base.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def make_config(size: str, variant: str = ""):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; one of {sorted(VARIANTS)}")
  mesh, batch, remat, chunk, devices = VARIANTS[variant][size]
  c = load_base().get_config()
  c.global_batch_size = batch
  c.mesh_shape = mesh
  c.compile_devices = devices           # --compile_only device count when mesh_shape has a -1
  c.grad_cache_chunk = chunk            # queries per chunk (0 = off); a multiple of the data x fsdp shards

  c.model.init_from = f"sentence-transformers/gtr-t5-{size}"
  c.model.t5 = dict(T5[size], relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="relu")
  c.model.out_features = 768
  c.model.dtype = "bfloat16"            # compute; parameters, optimizer state, logits and loss stay fp32
  c.model.remat = remat
  c.model.dropout_rate = 0.1

  c.data.medi_path = os.path.join(REPO, "data", "medi-data.json")  # override: the MEDI json, or tfds_data_dir
  return c


def get_config(variant: str = ""):
  return make_config("base", variant)
