"""Every config key and its default, once: the other configs load this and override what they change.

    python -m instructor_jax.train --config configs/base.py --print_config     # every key with its default

Not a run of its own (no data, no model size): ``demo.py``, ``instructor_{base,large,xl}.py`` and
``quality_minilm.py`` start from ``get_config()`` here. Code reads keys directly (``config.data.temperature``), so a
key that is not here does not exist.
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_train_steps = 20_000
  c.global_batch_size = 128
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.mesh_shape = (-1, 1, 1)          # (data, fsdp, tensor); -1 takes all remaining devices
  c.compile_devices = 0              # --compile_only device count when mesh_shape has a -1 (0: the flag's)
  c.logical_axis_rules = ()          # () = sharding.DEFAULT_RULES
  c.grad_cache_chunk = 0             # 0 = off; else queries per chunk (a multiple of the data x fsdp shards;
                                     # packed: at most chunk x (2 + num_negatives) rows per chunk)
  c.grad_cache_fsdp = "per_chunk"    # FSDP + caching: ZeRO-3 in the chunk loop, or "once" (gather/reduce once)
  c.peak_flops_per_device = 0.0      # 0 = known-chip table (no MFU on CPU)
  c.debug_nan_step = -1              # tests only: poison this step's loss / gradients
  c.resume_allow_changes = ""        # resuming refuses run-altering config changes unless named here (KEY,KEY)
  c.compilation_cache_dir = ""       # persistent XLA compilation cache: "" = ~/.cache/instructor_jax/jax (or
                                     # $INSTRUCTOR_JAX_COMPILATION_CACHE), "none" = off, or a folder / gs:// path

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "t5"            # random init: "t5" (model.t5) or "bert" (model.bert); init_* read theirs
  c.model.init_from = ""             # an HF / sentence-transformers folder (or hub id), e.g. GTR
  c.model.init_checkpoint = ""       # a workdir written by training or checkpoints.save_params
  c.model.t5 = None                  # random init: HF T5 config.json fields (dict)
  c.model.bert = None                # random init with backbone="bert": HF BertConfig fields (dict)
  c.model.out_features = placeholder(int)   # None = no projection head (the backbone's width)
  c.model.normalize = True
  c.model.tokenizer_dir = ""         # "" = instructor_jax/assets/t5-vocab
  c.model.dtype = "float32"          # compute dtype; "bfloat16" on TPU / GPU
  c.model.param_dtype = "float32"
  c.model.remat = "none"             # "none" | "dots" | "full"
  c.model.attention = "xla"          # "cudnn": fused flash attention on GPU, bf16 only (see t5.py)
  c.model.dropout_rate = placeholder(float)  # None = the model config's dropout_rate

  c.loss = ml_collections.ConfigDict()
  c.loss.variant = "instructor"      # or "gtr"
  c.loss.temperature = 0.01
  c.loss.learnable_temperature = False
  c.loss.matryoshka_dims = ()        # Matryoshka (MRL): e.g. (768, 512, 256, 128); the loss is summed over the
                                     # embeddings truncated to each d and re-normalised; () = off
  c.loss.matryoshka_weights = ()     # one weight per matryoshka_dims entry; () = 1 each

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 2e-5
  c.optim.schedule = "linear"        # warmup then linear decay to 0; or "constant"
  c.optim.warmup_ratio = 0.1
  c.optim.warmup_steps = placeholder(int)   # None = ceil(warmup_ratio x num_train_steps)
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 1.0       # 0 = no clipping
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8

  c.data = ml_collections.ConfigDict()
  c.data.source = "file"             # "file" (medi_path / tfds_data_dir), "prepared", "seqio" or "synthetic"
  c.data.medi_path = ""              # source=file: a MEDI .json / .jsonl file (or a prepared folder)
  c.data.tfds_data_dir = ""          # source=file: TFDS text shards instead (`data prepare --data-dir`)
  c.data.prepared = ""               # source=prepared: a folder written by `python -m instructor_jax.data prepare`
  c.data.mixture_or_task = "medi"    # source=seqio: a registered seqio Task or Mixture (medi: $MEDI_PATH)
  c.data.seqio_modules = "tasks.medi"  # source=seqio: modules imported to register it (comma-separated)
  c.data.seqio_split = "train"
  c.data.max_query_length = 512
  c.data.max_doc_length = 512
  c.data.num_negatives = 1
  c.data.pack = True                 # each step's sequences packed into rows of pack_length tokens (packing.py)
  c.data.pack_length = 0             # 0 = max(max_query_length, max_doc_length)
  c.data.pack_max_segments = 0       # sequences per row at most; 0 = pack_length // 8
  c.data.pack_buckets_per_octave = 8  # rows per step rounded up to a ladder of this many sizes per doubling
  c.data.pack_lengths = "auto"      # row lengths a step may pick (the cheapest that holds it): "auto" = 64, 128,
                                     # ... up to pack_length; "off" = pack_length only; or "64,256" (+ pack_length)
  c.data.sampling = "proportional"
  c.data.temperature = 1.0           # sampling="temperature": task-size temperature
  c.data.small_tasks = "drop"        # tasks smaller than the global batch are dropped (counted)
  c.data.dedup_positives = True
  c.data.strict = False
  c.data.skip_invalid = True
  c.data.max_invalid_fraction = 0.01  # with skip_invalid: more invalid records than this fails the load

  # After the last step (process 0): evaluate the checkpoint offline, then export a verified sentence-transformers
  # folder whose model card carries the scores (training/finish.py).
  c.eval = ml_collections.ConfigDict()
  c.eval.data_dir = ""               # "" = no evaluation; else local task folder(s) (python -m instructor_jax.eval)
  c.eval.tasks = ""                  # names, types or folders of data_dir's tasks to evaluate ("" = all; a,b)
  c.eval.no_instructions = False
  # During training (training/periodic_eval.py): every N steps the current parameters are scored in-process on
  # data_dir's tasks; scores in metrics.jsonl / tensorboard as eval/<task>/<main_score>, results in WORKDIR/eval/<step>.
  c.eval.every_steps = 0             # 0 = off
  c.eval.max_examples = 0            # during training: at most N examples per task (a fixed random subset; 0 = all)
  c.eval.during_split = "test"       # the split scored during training ("dev" to choose settings / keep_best on it)
  c.eval.keep_best = ""              # e.g. "eval/average" or "eval/STSBenchmark/cosine_spearman": the best step's
                                     # parameters are kept in WORKDIR/best (a verified params-only checkpoint)
  c.export = ml_collections.ConfigDict()
  c.export.enabled = False
  c.export.out_dir = ""              # "" = WORKDIR/export
  c.export.legacy_instructor = False
  c.export.from_best = False         # export (and finally evaluate) WORKDIR/best (eval.keep_best) instead of the last step
  return c
