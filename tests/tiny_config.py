"""A tiny variant of configs/demo.py for tests: synthetic tokens, d_model 32, 1 layer, short sequences.

    python -m instructor_jax.train --config tests/tiny_config.py --workdir DIR [--config.key=value ...]
"""
import importlib.util
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
  spec = importlib.util.spec_from_file_location("demo_config", os.path.join(HERE, "..", "configs", "demo.py"))
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  c = demo.get_config()
  c.num_train_steps = 8
  c.global_batch_size = 8
  c.log_every_steps = 1
  c.checkpoint_every_steps = 3
  c.keep_checkpoints = 2
  c.model.t5 = dict(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.1,
                    layer_norm_epsilon=1e-6, feed_forward_proj="relu")
  c.model.out_features = 32
  c.optim.learning_rate = 1e-3
  c.data.source = "synthetic"
  c.data.max_query_length = 12
  c.data.max_doc_length = 16
  c.data.num_negatives = 2
  c.eval.data_dir = ""               # synthetic vocab: nothing real to evaluate or export
  c.export.enabled = False
  return c
