"""Demo: a tiny random-init T5 (real T5 vocabulary) on the bundled MEDI sample; minutes on 2 CPU cores.

    python -m instructor_jax.train --config configs/demo.py --workdir /tmp/demo

Trains 400 steps, checkpoints, evaluates the final checkpoint on the bundled STS-B test subset
(``WORKDIR/eval/summary.md``) and exports a verified sentence-transformers folder (``WORKDIR/export``).

Same code path as the paper configs (sharded step, global in-batch negatives, orbax checkpoints); only the sizes
differ. ``mesh_shape=(-1, 1, 1)`` runs data-parallel on however many devices there are (1 CPU, or 8 fake ones with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``), with identical losses.
"""
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_train_steps = 400
  c.global_batch_size = 16
  c.log_every_steps = 1
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 2
  c.async_checkpoints = True
  c.mesh_shape = (-1, 1, 1)          # (data, fsdp, tensor); -1 takes all remaining devices
  c.logical_axis_rules = ()          # () = sharding.DEFAULT_RULES
  c.grad_cache_chunk = 0             # 0 = off; else queries per chunk (a multiple of the data x fsdp shards;
                                     # packed: at most chunk x (2 + num_negatives) rows per chunk)
  c.grad_cache_fsdp = "per_chunk"    # FSDP + caching: ZeRO-3 in the chunk loop, or "once" (gather/reduce once)
  c.peak_flops_per_device = 0.0      # 0 = known-chip table (no MFU on CPU)
  c.debug_nan_step = -1              # tests only: poison this step's loss / gradients
  c.resume_allow_changes = ""       # resuming refuses run-altering config changes unless named here (KEY,KEY)

  c.model = ml_collections.ConfigDict()
  c.model.init_from = ""             # an HF / sentence-transformers folder (or hub id), e.g. GTR
  c.model.init_checkpoint = ""       # a workdir written by training or checkpoints.save_params
  c.model.t5 = dict(vocab_size=32128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
                    layer_norm_epsilon=1e-6, feed_forward_proj="relu")
  c.model.out_features = 64
  c.model.normalize = True
  c.model.tokenizer_dir = ""         # "" = instructor_jax/assets/t5-vocab
  c.model.dtype = "float32"          # compute dtype; "bfloat16" on TPU / GPU
  c.model.param_dtype = "float32"
  c.model.remat = "none"
  c.model.attention = "xla"          # "cudnn": fused flash attention on GPU, bf16 only (see t5.py)
  c.model.dropout_rate = None        # None = the T5 config's dropout_rate

  c.loss = ml_collections.ConfigDict()
  c.loss.variant = "instructor"      # or "gtr"
  c.loss.temperature = 0.01
  c.loss.learnable_temperature = False

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3
  c.optim.warmup_ratio = 0.1
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 1.0

  c.data_source = "medi"             # "medi" (data.TrainStream) or "synthetic" (random tokens)
  c.data = ml_collections.ConfigDict()
  c.data.medi_path = os.path.join(REPO, "tests", "fixtures", "medi", "medi_small.json")
  c.data.tfds_data_dir = ""
  c.data.source = "file"              # "file" (medi_path / tfds_data_dir), "prepared" or "seqio"
  c.data.prepared = ""                # source=prepared: a folder written by `python -m instructor_jax.data prepare`
  c.data.mixture_or_task = "medi"     # source=seqio: a registered seqio Task or Mixture (medi: $MEDI_PATH)
  c.data.seqio_modules = "tasks.medi" # source=seqio: modules imported to register it (comma-separated)
  c.data.seqio_split = "train"
  c.data.max_query_length = 64
  c.data.max_doc_length = 64
  c.data.num_negatives = 1
  c.data.pack = True                 # each step's sequences packed into rows of pack_length tokens (packing.py)
  c.data.pack_length = 0             # 0 = max(max_query_length, max_doc_length)
  c.data.pack_max_segments = 0       # sequences per row at most; 0 = pack_length // 8
  c.data.pack_buckets_per_octave = 8 # rows per step rounded up to a ladder of this many sizes per doubling
  c.data.sampling = "proportional"
  c.data.temperature = 1.0
  c.data.small_tasks = "drop"         # tasks smaller than the global batch are dropped (counted)
  c.data.dedup_positives = True
  c.data.strict = False
  c.data.skip_invalid = True
  c.data.max_invalid_fraction = 0.01  # with skip_invalid: more invalid records than this fails the load

  # After the last step (process 0): evaluate the checkpoint offline, then export a verified sentence-transformers
  # folder whose model card carries the scores (train.finish).
  c.eval = ml_collections.ConfigDict()
  c.eval.data_dir = os.path.join(REPO, "tests", "fixtures", "eval", "stsbenchmark")  # 40 STS-B test pairs
  c.eval.no_instructions = False
  c.export = ml_collections.ConfigDict()
  c.export.enabled = True
  c.export.out_dir = ""              # "" = WORKDIR/export
  c.export.legacy_instructor = False
  return c
