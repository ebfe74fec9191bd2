"""Training metrics: rates over each logging interval, ``metrics.jsonl`` and tensorboard (process 0 only).

Per logged step: what the step returned (``loss``, ``accuracy``, ``loss_q``, ``loss_p``, ``lr``, ``grad_norm``,
``temperature`` when learnable; with ``loss.matryoshka_dims`` also ``loss_d{d}`` and ``accuracy_d{d}`` per
dimension), its ``real_tokens`` (non-padding tokens of its sequences), ``computed_tokens`` (what the encoder
computed: padded sequences, or packed rows of ``pack_length``) and ``packing_efficiency`` (their ratio), and over the interval since the previous log line: ``step_time_s``, ``examples_per_s``, ``tokens_per_s``
(real tokens), ``computed_tokens_per_s``, ``mfu`` (model FLOPs on real tokens) and ``hfu`` (the hardware's FLOPs on
computed tokens, recomputation included) where the device's peak is known, and the step variants compiled so far
(``compiles``, ``compile_s``). FLOPs are ``step.flops``.
"""
from __future__ import annotations

import json
import time

import jax
import numpy as np

from instructor_jax.core import log
from instructor_jax.storage import files, paths
from instructor_jax.training import step as step_lib

# Step outputs that are summed over an interval, not logged as they are.
SUMS = ("real_tokens", "real_tokens_sq", "computed_tokens", "computed_tokens_sq")


class Interval:
  """Accumulates the steps between two log lines and turns them into rates."""

  def __init__(self, model_cfg, out_features, grad_cache: bool, global_batch_size: int, peak_flops: float,
               num_devices: int, num_seqs: int):
    self.cfg, self.out_features = model_cfg, out_features
    self.hw_passes = step_lib.hardware_passes(model_cfg, grad_cache)
    self.global_batch_size, self.peak, self.num_devices, self.num_seqs = global_batch_size, peak_flops, \
        num_devices, num_seqs
    self.reset()

  def reset(self):
    self.steps, self.real, self.computed, self.model_flops, self.hw_flops = 0, 0.0, 0.0, 0.0, 0.0

  def add(self, m: dict):
    self.steps += 1
    self.real += float(m["real_tokens"])
    self.computed += float(m["computed_tokens"])
    self.model_flops += step_lib.flops(self.cfg, self.out_features, float(m["real_tokens"]),
                                       float(m["real_tokens_sq"]), self.num_seqs, 3)
    self.hw_flops += step_lib.flops(self.cfg, self.out_features, float(m["computed_tokens"]),
                                    float(m["computed_tokens_sq"]), self.num_seqs, self.hw_passes)

  def row(self, m: dict, seconds: float) -> dict:
    """The log row of the interval's last step ``m``, with the interval's rates; resets the interval."""
    dt = max(seconds, 1e-9)
    out = {k: float(v) for k, v in m.items() if k not in SUMS}
    out["real_tokens"] = float(m["real_tokens"])
    out["computed_tokens"] = float(m["computed_tokens"])
    out["packing_efficiency"] = float(m["real_tokens"]) / max(float(m["computed_tokens"]), 1.0)
    steps = max(self.steps, 1)
    out["step_time_s"] = dt / steps
    out["examples_per_s"] = self.steps * self.global_batch_size / dt
    out["tokens_per_s"] = self.real / dt
    out["computed_tokens_per_s"] = self.computed / dt
    if self.peak:
      out["mfu"] = self.model_flops / dt / (self.num_devices * self.peak)
      out["hfu"] = self.hw_flops / dt / (self.num_devices * self.peak)
    self.reset()
    return out


class MetricWriter:
  """``metrics.jsonl`` (one JSON object per logged step) and tensorboard, on process 0 only.

  Locally ``metrics.jsonl`` is appended to. A gs:// object cannot be appended to: the lines are kept and the file is
  uploaded whole, at most every ``UPLOAD_S`` and at every ``sync`` (the trainer syncs with each checkpoint, so a
  resumed run finds every step up to its checkpoint); tensorboardX writes gs:// itself.
  """
  UPLOAD_S = 15.0

  def __init__(self, workdir: str, resume_step: int | None):
    self.active = jax.process_index() == 0
    self.path = paths.join(workdir, "metrics.jsonl")
    self.remote = paths.is_gcs(workdir)
    self.lines: list[str] = []
    self.uploaded = time.time()
    self.tb = None
    if not self.active:
      return
    if paths.exists(self.path):  # drop lines of steps that will be re-run after a resume
      keep = []
      for line in paths.read_text(self.path).splitlines(keepends=True):
        try:
          if resume_step is not None and json.loads(line)["step"] <= resume_step:
            keep.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError):
          pass
      files.write_text(self.path, "".join(keep))
      self.lines = keep
    try:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(paths.join(workdir, "tensorboard"))
    except Exception as e:  # pragma: no cover - tensorboard is optional
      log.warn("tensorboard disabled: %s", e)

  def write(self, step: int, metrics: dict):
    if not self.active:
      return
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    line = json.dumps(row) + "\n"
    if self.remote:
      self.lines.append(line)
      if time.time() - self.uploaded > self.UPLOAD_S:
        self.sync()
    else:
      with open(self.path, "a") as f:
        f.write(line)
    if self.tb is not None:
      for k, v in metrics.items():
        if np.isfinite(float(v)):
          self.tb.add_scalar(k, float(v), step)
      self.tb.flush()

  def sync(self):
    """Makes everything written so far durable in the workdir (uploads ``metrics.jsonl`` on gs://)."""
    if self.active and self.remote:
      files.write_text(self.path, "".join(self.lines))
      self.uploaded = time.time()

  def close(self):
    self.sync()
    if self.tb is not None:
      self.tb.close()
