"""Demo: a tiny random-init T5 (real T5 vocabulary) on the bundled MEDI sample; minutes on 2 CPU cores.

    python -m instructor_jax.train --config configs/demo.py --workdir /tmp/demo

Trains 400 steps, checkpoints, evaluates the final checkpoint on the bundled STS-B test subset
(``WORKDIR/eval/summary.md``) and exports a verified sentence-transformers folder (``WORKDIR/export``).

Same code path as the paper configs (sharded step, global in-batch negatives, orbax checkpoints); only the sizes
differ. ``mesh_shape=(-1, 1, 1)`` runs data-parallel on however many devices there are (1 CPU, or 8 fake ones with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``), with identical losses.
"""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_base():
  """``configs/base.py`` (every key with its default), loaded by path: works for ``--config configs/demo.py``."""
  spec = importlib.util.spec_from_file_location("instructor_base_defaults", os.path.join(REPO, "configs", "base.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  c = load_base().get_config()
  c.num_train_steps = 400
  c.global_batch_size = 16
  c.log_every_steps = 1
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 2

  c.model.t5 = dict(vocab_size=32128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
                    layer_norm_epsilon=1e-6, feed_forward_proj="relu")
  c.model.out_features = 64
  c.optim.learning_rate = 1e-3

  c.data.medi_path = os.path.join(REPO, "tests", "fixtures", "medi", "medi_small.json")
  c.data.max_query_length = 64
  c.data.max_doc_length = 64

  c.eval.data_dir = os.path.join(REPO, "tests", "fixtures", "eval", "stsbenchmark")  # 40 STS-B test pairs
  c.export.enabled = True
  return c
