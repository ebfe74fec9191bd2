"""Contrastive INSTRUCTOR training on one CPU, one GPU, a multi-GPU host or a TPU pod with the same code.

Reads top to bottom: ``setup_distributed`` -> ``setup`` (model, optimizer and shardings from ``state.py``, the packer,
the jitted step, ``StepCompiler``) -> ``train`` (``restore_or_init``, then ``loop``); the command line is
``instructor_jax/train.py``, evaluation and export ``finish.py``. Read first: a host's batch is a pure function of
``(seed, step)``, so resuming from the newest complete checkpoint is exact; SIGTERM saves and exits 0, and a NaN /
inf loss stops with an error, keeping the last good checkpoint.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from instructor_jax.storage import checkpoints, files, paths
from instructor_jax.data import stream as data
from instructor_jax.training import metrics
from instructor_jax.training import periodic_eval
from instructor_jax.data import packing
from instructor_jax.training import run_config
from instructor_jax.training import sharding
from instructor_jax.storage import workdir as workdir_lib
from instructor_jax.training import step as step_lib
from instructor_jax.core.errors import UserError
from instructor_jax.training.state import (ModelSpec, build_model, bytes_per_device, create_state, make_optimizer,
                                  state_shardings)

# Dense bf16 peak FLOP/s per device (chip for TPU, GPU for GPUs), used for MFU when not configured.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


def setup_distributed(distributed: bool, coordinator: str | None, num_processes: int | None,
                      process_id: int | None):
  """``jax.distributed.initialize()`` on pods / clusters (``--distributed``, or explicit ``--coordinator_address
  --num_processes --process_id``); nothing on one process."""
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  elif distributed:
    jax.distributed.initialize()  # TPU pods, SLURM and other clusters: auto-detected


# ----------------------------------------------------------------------------------------------------------------
# Packing and the shape of a step's batch
# ----------------------------------------------------------------------------------------------------------------
def make_packer(config, mesh, model_cfg) -> packing.Packer | None:
  """The step's ``packing.Packer`` (``config.data.pack``), or None for padded batches; checks the config."""
  dc = config.data
  if not dc.pack:
    return None
  longest = max(int(dc.max_query_length), int(dc.max_doc_length))
  length = int(dc.pack_length) or longest
  for key, low in (("pack_length", 0), ("pack_max_segments", 0), ("pack_buckets_per_octave", 1)):
    if int(dc[key]) < low:
      raise ValueError(f"config.data.{key}={dc[key]} must be >= {low}")
  if length < longest:
    raise ValueError(f"config.data.pack_length={length} is shorter than the longest allowed input "
                     f"(max_query_length={dc.max_query_length}, max_doc_length={dc.max_doc_length}); a sequence "
                     f"is never split across rows, so pack_length must be >= {longest}")
  if getattr(model_cfg, "attention", "xla") == "cudnn":
    raise ValueError("config.model.attention='cudnn' cannot take packed segments in training (its fused kernel "
                     "takes per-row key lengths, not segment ids); set config.data.pack=False or "
                     "config.model.attention='xla'")
  shards, procs = sharding.num_batch_shards(mesh), jax.process_count()
  multiple = math.lcm(shards, procs)
  width = 2 + int(dc.num_negatives)
  chunk = int(config.grad_cache_chunk) * width  # rows per chunk: the padded chunk's sequences
  if chunk and chunk % multiple:
    raise ValueError(f"config.grad_cache_chunk x (2 + num_negatives) = {chunk} rows per chunk must be a multiple of "
                     f"{multiple} (the {shards} batch shards and {procs} processes)")
  try:
    lengths = packing.length_ladder(length, dc.pack_lengths)
  except packing.PackingError as e:
    raise ValueError(f"config.data.pack_lengths: {e}") from None
  return packing.Packer(length, config.global_batch_size * width, row_multiple=multiple,
                        max_segments=int(dc.pack_max_segments),
                        buckets_per_octave=int(dc.pack_buckets_per_octave), max_chunk_rows=chunk,
                        process_index=jax.process_index(), num_processes=procs, lengths=lengths,
                        attention_tokens=attention_tokens(model_cfg))


# One attended (query, key) pair costs, per head, 4 * d_kv matmul FLOPs plus about this many FLOP-equivalents of
# elementwise work (mask, softmax, dropout, forward and backward), which runs far below matmul speed on CPU.
ATTENTION_ELEMENTWISE_FLOPS = 340


def attention_tokens(cfg) -> float:
  """The row length at which a token's attention costs as much as its matmuls (``packing.cost``'s weight)."""
  h_dk = cfg.num_heads * cfg.d_kv
  per_token = 2 * (4 * cfg.d_model * h_dk + (3 if cfg.gated else 2) * cfg.d_model * cfg.d_ff)
  return per_token / (4 * h_dk + ATTENTION_ELEMENTWISE_FLOPS * cfg.num_heads)


def batch_shapes(config, packer: packing.Packer | None = None, rows: int | None = None,
                 length: int | None = None) -> dict:
  """Global batch shapes (int32): padded from the config, or packed with ``rows`` rows of ``length`` tokens
  (default: the largest ladder size of the longest rows, the most memory any step can need)."""
  if packer is not None:
    n = packer.pack_length if length is None else length
    r = packer.ladders[n][-1] if rows is None else rows
    return dict(tokens=(r, n), segment_ids=(r, n), pool_ids=(r, n), slot_seq=(r, packer.max_segments))
  b, lq, ld, n = (config.global_batch_size, config.data.max_query_length, config.data.max_doc_length,
                  config.data.num_negatives)
  return dict(query_tokens=(b, lq), query_instr_len=(b,), pos_tokens=(b, ld), pos_instr_len=(b,),
              neg_tokens=(b, n, ld), neg_instr_len=(b, n), task=(b,))


class StepCompiler:
  """One AOT-compiled step per batch shape (a packed run meets a few ladder sizes), counted and timed.

  ``get(host_batch)`` compiles on first sight (thread-safe: the prefetch thread compiles the next step's variant
  while the current step runs) and returns the executable.
  """

  def __init__(self, p_step, abstract, batch_shardings):
    self.p_step, self.abstract, self.batch_shardings = p_step, abstract, batch_shardings
    self.executables: dict = {}
    self.seconds = 0.0
    self._lock = threading.Lock()

  @property
  def count(self) -> int:
    return len(self.executables)

  def lower(self, shapes: dict):
    batch = {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=self.batch_shardings[k]) for k, v in shapes.items()}
    return self.p_step.lower(self.abstract, batch)

  def get(self, host_batch: dict):
    procs = jax.process_count()
    shapes = {k: (v.shape[0] * procs, *v.shape[1:]) for k, v in host_batch.items()}
    key = tuple(sorted((k, v) for k, v in shapes.items()))
    with self._lock:
      if key not in self.executables:
        t0 = time.time()
        self.executables[key] = self.lower(shapes).compile()
        self.seconds += time.time() - t0
      return self.executables[key]


# ----------------------------------------------------------------------------------------------------------------
# Setup: mesh, state shardings, the jitted step
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
  """Everything the loop needs, built from a config and a mesh (also used by the tests)."""
  spec: ModelSpec
  mesh: Any
  tx: Any
  schedule: Any
  abstract: Any         # ShapeDtypeStruct state with shardings
  shardings: Any        # NamedSharding state tree
  batch_shardings: Any
  p_step: Any           # jitted step(state, batch) -> (state, metrics); donates state
  grad_fn: Any          # grad_fn(trainable, batch, rng) -> (grads, metrics), unjitted
  packer: Any           # packing.Packer, or None (padded batches)
  flops: float          # train FLOPs of the largest step variant on computed tokens (step.flops)


def setup(config, mesh=None, load_weights: bool = True) -> Setup:
  """Builds the ``Setup``: ``build_model`` (``config.model.init_checkpoint``, ``init_from`` or random) and
  ``make_optimizer`` (AdamW, warmup + linear decay, clipping); ``state_shardings`` over ``sharding.make_mesh``
  (``config.mesh_shape`` over ``data, fsdp, tensor``) and the logical-axis rules (FSDP / tensor parallel);
  ``make_packer`` (padded, or packed rows of ``config.data.pack_length`` tokens whose count per step comes from a
  fixed ladder, ``packing.py``), the batch split over ``data x fsdp``; and the step (``step.py``: encode, score the
  global batch, AdamW; plain or gradient-cached) under one ``jax.jit`` with explicit in/out shardings, compiled per
  batch shape by ``StepCompiler``."""
  mesh = sharding.make_mesh(config.mesh_shape) if mesh is None else mesh
  rules = sharding.rules_from_config(config)
  spec = build_model(config, load_weights=load_weights)
  run_config.check_matryoshka(config, spec.model.out_features or spec.model.config.d_model)
  tx, schedule = make_optimizer(config)
  abstract, shardings = state_shardings(spec.model, tx, config, mesh, rules)
  if config.global_batch_size % sharding.num_batch_shards(mesh):
    raise ValueError(f"global_batch_size {config.global_batch_size} is not divisible by the "
                     f"{sharding.num_batch_shards(mesh)} batch shards (data x fsdp) of mesh {dict(mesh.shape)}")
  if config.global_batch_size % jax.process_count():
    raise ValueError(f"global_batch_size {config.global_batch_size} is not divisible by {jax.process_count()} "
                     f"processes")
  packer = make_packer(config, mesh, spec.model.config)
  shapes = batch_shapes(config, packer)
  batch_sh = {k: sharding.batch_sharding(mesh, len(s)) for k, s in shapes.items()}
  width = 2 + int(config.data.num_negatives)
  inputs = (step_lib.Padded(spec.model.pad_id) if packer is None else
            step_lib.Packed(config.global_batch_size, width, packer.max_segments, packer.max_chunk_rows))
  step_fn, grad_fn = step_lib.make_train_step(spec.model, tx, schedule, config, mesh, shardings["params"], inputs)

  def traced_step(state, batch):
    with step_lib.activation_sharding(mesh, rules):
      return step_fn(state, batch)

  def traced_grads(trainable, batch, rng):
    with step_lib.activation_sharding(mesh, rules):
      return grad_fn(trainable, batch, rng)

  p_step = jax.jit(traced_step, in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                   donate_argnums=0)
  cfg, grad_cache = spec.model.config, bool(config.grad_cache_chunk)
  if packer is None:
    flops = step_lib.padded_flops(cfg, spec.model.out_features, shapes, grad_cache)
  else:
    r, length = shapes["tokens"]
    flops = step_lib.flops(cfg, spec.model.out_features, r * length, r * length ** 2, packer.num_seqs,
                           step_lib.hardware_passes(cfg, grad_cache))
  return Setup(spec, mesh, tx, schedule, abstract, shardings, batch_sh, p_step, traced_grads, packer, flops)


def compile_report(s: Setup, config, workdir: str) -> dict:
  """``--compile_only``: compiles the largest step variant for the mesh and writes ``compile_report.json``."""
  compiler = StepCompiler(s.p_step, s.abstract, s.batch_shardings)
  shapes = batch_shapes(config, s.packer)
  t0 = time.time()
  compiled = compiler.lower(shapes).compile()
  mem = compiled.memory_analysis()
  report = dict(mesh=dict(s.mesh.shape), devices=int(s.mesh.devices.size), compile_s=round(time.time() - t0, 1),
                state_bytes_per_device=bytes_per_device(s.abstract),
                params_bytes_per_device=bytes_per_device(s.abstract["params"]), train_flops_per_step=s.flops,
                batch_shapes={k: list(v) for k, v in shapes.items()})
  if s.packer is not None:
    report.update(pack_length=s.packer.pack_length, pack_rows=list(s.packer.ladder),
                  pack_lengths=list(s.packer.lengths), pack_shapes=len(s.packer.shapes),
                  compiled_rows=shapes["tokens"][0])
  if mem is not None:
    for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes"):
      report[k] = int(getattr(mem, k, 0) or 0)
    report["peak_estimate_bytes_per_device"] = (report["argument_size_in_bytes"] + report["output_size_in_bytes"]
                                                - report["alias_size_in_bytes"] + report["temp_size_in_bytes"])
  for key in [k for k in report if k.endswith("_bytes_per_device") or k.endswith("_in_bytes")]:
    report[key.replace("bytes", "gib").replace("_in_gib", "_gib")] = round(report[key] / 2 ** 30, 3)
  if jax.process_index() == 0:
    print(json.dumps(report, indent=1))
    gib = lambda k: report.get(k.replace("bytes", "gib").replace("_in_gib", "_gib"), 0.0)
    print(f"per device: state {gib('state_bytes_per_device'):.2f} GiB (params {gib('params_bytes_per_device'):.2f}), "
          f"temporaries {gib('temp_size_in_bytes'):.2f} GiB, peak estimate "
          f"{gib('peak_estimate_bytes_per_device'):.2f} GiB; written to {workdir}/compile_report.json", flush=True)
    paths.makedirs(workdir)
    files.write_json(paths.join(workdir, "compile_report.json"), report, indent=1)
  return report


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------
class Diverged(UserError):
  """A non-finite loss or gradient norm (the checkpoints before it are kept)."""


def schedule_note(config, old_total: int, new_total: int, step: int) -> str:
  """What growing ``num_train_steps`` does to the learning rate at the resume step."""
  old = ml_collections.ConfigDict(config.to_dict())
  old.num_train_steps = old_total
  lr_old, lr_new = float(make_optimizer(old)[1](step)), float(make_optimizer(config)[1](step))
  return (f" (the schedule is recomputed for {new_total} steps: the learning rate at step {step} is {lr_new:.3g}, "
          f"was {lr_old:.3g})")


def train(config: ml_collections.ConfigDict, workdir: str, compile_only: bool = False) -> dict | None:
  """Trains (or AOT-compiles) ``config`` in ``workdir``; returns the last logged metrics."""
  workdir = paths.check(workdir, "--workdir")
  is_main = jax.process_index() == 0
  guard = None if compile_only else workdir_lib.PreemptionGuard()  # early: a signal during setup also saves
  s = setup(config, load_weights=not compile_only)
  if is_main:
    print(f"mesh: {sharding.describe(s.mesh)}", flush=True)
    if s.packer is not None:
      print(s.packer.describe(), flush=True)
  if compile_only:
    return compile_report(s, config, workdir)

  ckpt = checkpoints.Checkpointer(workdir, max_to_keep=int(config.keep_checkpoints),
                                  async_save=bool(config.async_checkpoints))
  state, start, stream, meta = restore_or_init(config, workdir, s, ckpt)
  return loop(config, workdir, s, ckpt, guard, state, start, stream, meta)


def restore_or_init(config, workdir: str, s: Setup, ckpt):
  """``(state, start step, data stream, checkpoint meta)``: resumed from the newest intact checkpoint (its config
  compared with this one first: a changed model shape would otherwise look like a damaged step), or fresh."""
  spec, abstract, shardings = s.spec, s.abstract, s.shardings
  log = (lambda m: print(m, flush=True)) if jax.process_index() == 0 else (lambda m: None)
  _, refused = run_config.resume_changes((ckpt.newest_meta() or {}).get("config"), config)
  if refused:
    raise run_config.ConfigError(run_config.refusal(workdir, refused))
  checkpoints.copy_tokenizer(spec.tokenizer_dir, workdir)  # WORKDIR/tokenizer: a self-contained workdir
  stream = data.make_stream(config, spec.tokenizer_dir, spec.model.config.vocab_size, s.packer,
                            jax.process_index(), jax.process_count())
  start, restored = ckpt.restore_latest(
      abstract["params"], dict(opt_state=abstract["opt_state"], rng=abstract["rng"], step=abstract["step"]), log)
  history = []
  if restored is not None:
    params, train_state, data_state, stored_meta = restored
    state = dict(params=params, **train_state)
    accepted, refused = run_config.resume_changes(stored_meta.get("config"), config)
    if refused:  # the intact step is older than the one compared above
      raise run_config.ConfigError(run_config.refusal(workdir, refused))
    history = list(stored_meta.get("config_history", []))
    if accepted:
      history.append(run_config.history_entry(start, accepted))
      for key, (old, new) in accepted.items():
        log(f"resume: accepting {key} {old} -> {new}" + (schedule_note(config, old, new, start)
                                                         if key == "num_train_steps" else ""))
    if data_state.get("stream") is not None:
      stream.load_state_dict(data_state["stream"],
                             strict=run_config.DATA_KEY not in run_config.allowed_changes(config))
    log(f"resumed from {workdir}/{start}")
  else:
    state = create_state(spec, s.tx, config, abstract, shardings)
    start = 0
  meta = dict(spec.meta(), config=json.loads(config.to_json_best_effort()), config_history=history)
  if meta.get("max_seq_length") is None:  # random init: the exported model truncates where training did
    meta["max_seq_length"] = max(int(config.data.max_query_length), int(config.data.max_doc_length))
  return state, start, stream, meta


def loop(config, workdir: str, s: Setup, ckpt, guard, state, start: int, stream, meta) -> dict | None:
  """The steps ``start..num_train_steps``: prefetch -> step -> metrics -> checkpoints; a signal saves and stops.

  Each step: the host batch from the data stream (a pure function of ``(seed, step)``) ->
  ``jax.make_array_from_process_local_data`` -> step -> metrics (``metrics.py``: ``metrics.jsonl``, tensorboard,
  tqdm) -> async orbax checkpoints every ``checkpoint_every_steps`` and at the end. The prefetch thread compiles the
  next step's shape while the current one runs. MFU is counted on real tokens and HFU on computed ones
  (``step.flops``), against ``config.peak_flops_per_device`` or ``PEAK_FLOPS`` (absent on CPU)."""
  is_main = jax.process_index() == 0
  log = (lambda m: print(m, flush=True)) if is_main else (lambda m: None)
  mesh, abstract = s.mesh, s.abstract
  model_cfg, out_features = s.spec.model.config, s.spec.model.out_features
  s.spec.params = None  # host copy of pretrained weights no longer needed

  writer = metrics.MetricWriter(workdir, start)
  total = int(config.num_train_steps)
  every_log, every_ckpt = int(config.log_every_steps), int(config.checkpoint_every_steps)
  peak = float(config.peak_flops_per_device) or PEAK_FLOPS.get(
      next((k for k in PEAK_FLOPS if jax.devices()[0].device_kind.startswith(k)), ""), 0.0)
  interval = metrics.Interval(model_cfg, out_features, bool(config.grad_cache_chunk),
                              config.global_batch_size, peak, jax.device_count(),
                              config.global_batch_size * (2 + int(config.data.num_negatives)))
  compiler = StepCompiler(s.p_step, abstract, s.batch_shardings)
  evaluator = None
  if int(config.eval.every_steps):  # reads and checks the suite before the first step
    evaluator = periodic_eval.PeriodicEval(config, workdir, s.spec, writer, meta, log)

  def save(step):
    ckpt.save(step, state["params"], dict(opt_state=state["opt_state"], rng=state["rng"], step=state["step"]),
              {"step": step, "stream": stream.state_dict()}, meta)
    writer.sync()  # metrics.jsonl holds every step up to the newest checkpoint (gs:// uploads it now)

  def prepare(step):
    """Prefetch thread: the host batch of ``step`` and its compiled step (compiled now if it is a new shape), and
    the seconds spent compiling (not data time)."""
    host_batch = stream.get(step)
    t0, count = time.time(), compiler.count
    executable = compiler.get(host_batch)
    return host_batch, executable, (time.time() - t0) if compiler.count > count else 0.0

  pool = concurrent.futures.ThreadPoolExecutor(1)
  future = pool.submit(prepare, start) if start < total else None
  pending = []  # (step, metrics on device) since the last check
  last, t_last = None, time.time()
  data_wait = 0.0  # seconds the loop waited for data (not for a compile) since the last log
  progress = None
  if is_main:
    from tqdm import tqdm
    progress = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, file=sys.stderr)

  def check_and_log(step, force_log):
    """Fetches pending metrics; stops on a non-finite loss; logs at log steps."""
    nonlocal pending, last, t_last, data_wait
    fetched = jax.device_get(pending)
    pending = []
    for s_, m in fetched:
      if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
        ckpt.wait()
        good = ckpt.latest_step()
        where = (f"the last good checkpoint is {workdir}/{good}; rerun to resume from it (e.g. with a lower "
                 f"learning rate)" if good is not None else "no checkpoint was saved before it")
        raise Diverged(f"non-finite loss ({m['loss']}) or grad norm ({m['grad_norm']}) at step {s_ + 1}; "
                       f"stopping: {where}")
      interval.add(m)
      if s_ + 1 == step and (force_log or step % every_log == 0):
        now = time.time()
        out = interval.row(m, now - t_last)
        out.update(compiles=compiler.count, compile_s=compiler.seconds, data_wait_s=data_wait,
                   data_wait_frac=data_wait / max(now - t_last, 1e-9))
        data_wait = 0.0
        writer.write(step, out)
        last = dict(out, step=step)
        t_last = now
        if progress is not None:
          progress.set_postfix(loss=f"{out['loss']:.4f}", acc=f"{out['accuracy']:.3f}")

  try:
    if evaluator is not None and evaluator.due(start) and not evaluator.done(start):
      evaluator(start, state["params"])  # a resume at a step whose evaluation was interrupted
    for step in range(start, total):
      t_wait = time.time()
      host_batch, executable, compiling = future.result()
      data_wait += max(0.0, time.time() - t_wait - compiling)
      future = pool.submit(prepare, step + 1) if step + 1 < total else None
      batch = sharding.global_batch(mesh, host_batch)
      state, step_metrics = executable(state, batch)
      done = step + 1
      pending.append((step, step_metrics))
      if progress is not None:
        progress.update(1)
      stop = guard.should_stop()
      is_ckpt = done % every_ckpt == 0 or done == total or stop
      if done % every_log == 0 or is_ckpt or len(pending) >= 100:
        check_and_log(done, force_log=done == total or stop)
      if is_ckpt:
        save(done)
      if evaluator is not None and evaluator.due(done) and not stop:
        t_eval = time.time()
        evaluator(done, state["params"])  # reads the parameters before the next step donates them
        t_last += time.time() - t_eval  # the next row's step times leave the evaluation out
      if stop:
        ckpt.wait()
        log(f"{guard.signal_name or 'SIGTERM'}: saved step {done} to {workdir}; exiting. To resume: "
            f"{workdir_lib.resume_command()}")
        break
  finally:
    pool.shutdown(wait=False, cancel_futures=True)
    if progress is not None:
      progress.close()
    ckpt.close()
    writer.close()
    guard.restore_handlers()
  if is_main and compiler.count:
    print(f"compiled {compiler.count} step variant(s) in {compiler.seconds:.1f} s", flush=True)
  return last
