"""Train-step throughput: the jitted ``instructor_jax.train`` step vs a PyTorch re-statement of the same step.

Same work on both sides: a random T5 encoder of the given size (dropout 0.1 as in training) + INSTRUCTOR pooling +
Dense + normalisation on queries ``[B, Lq]``, positives ``[B, Ld]`` and ``N`` hard negatives per query
``[B*N, Ld]`` (the same synthetic token arrays, ``data.SyntheticStream``; padded on both sides, ``config.data.pack = False``), the INSTRUCTOR contrastive loss over the
global batch (``losses.contrastive_loss``, temperature 0.01), gradient clipping at norm 1 and AdamW. Timed per step
with a host sync on the loss each step on both sides (as a training loop that logs every step would), JAX and
torch interleaved rep by rep. Compilation is measured separately (the first step, ``jax.monitoring`` compile
events) and excluded. FLOPs per step come from ``step.padded_flops`` (documented in step.py's docstring;
padded tokens, backward = 2x forward); MFU is reported where the device's peak is known (``train.PEAK_FLOPS``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import time

import numpy as np

from bench import REPO, SIZES, CompileTimer, fmt, log, stats


@dataclasses.dataclass
class TrainConfig:
  size: str = "small"
  global_batch: int = 16
  query_length: int = 32
  doc_length: int = 64
  num_negatives: int = 1
  reps: int = 5
  steps_per_rep: int = 2
  dtype: str = "float32"
  device: str = "cpu"          # torch device
  remat: str = "none"
  grad_cache_chunk: int = 0
  torch: bool = True           # also time the PyTorch re-statement
  mesh_shape: tuple = (-1, 1, 1)
  dropout_rate: float = 0.1    # both sides (0 = deterministic; isolates the cost of dropout's random bits)
  attention: str | None = None  # JAX attention kernel (T5Config.attention); None = $INSTRUCTOR_BENCH_ATTENTION or xla


def make_config(size: str, global_batch: int, query_length: int, doc_length: int, num_negatives: int,
                dtype: str = "float32", remat: str = "none", grad_cache_chunk: int = 0, mesh_shape=(-1, 1, 1),
                dropout_rate: float = 0.1, attention: str | None = None):
  """``configs/demo.py`` with a random T5 of ``size`` on synthetic tokens (the real T5 vocabulary size)."""
  spec = importlib.util.spec_from_file_location("bench_demo_config", os.path.join(REPO, "configs", "demo.py"))
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  c = demo.get_config()
  kw = dict(SIZES[size])
  out_features = kw.pop("out_features")
  c.model.t5 = dict(vocab_size=32128, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    dropout_rate=dropout_rate, layer_norm_epsilon=1e-6, feed_forward_proj="relu", **kw)
  c.model.dropout_rate = dropout_rate
  c.model.out_features = out_features
  c.model.dtype = dtype
  c.model.remat = remat
  # bench.run --attention sets the environment variable, so compile-only workers in subprocesses follow it too.
  c.model.attention = attention or os.environ.get("INSTRUCTOR_BENCH_ATTENTION", "xla")
  c.global_batch_size = global_batch
  c.grad_cache_chunk = grad_cache_chunk
  c.mesh_shape = tuple(mesh_shape)
  c.num_train_steps = 1000
  c.optim.learning_rate = 1e-5
  c.optim.warmup_ratio = 0.0
  c.data.source = "synthetic"
  c.data.pack = False  # the PyTorch re-statement pads; bench/packing.py measures packed vs padded
  c.data.max_query_length = query_length
  c.data.max_doc_length = doc_length
  c.data.num_negatives = num_negatives
  return c


class JaxTrainer:
  def __init__(self, config):
    from instructor_jax.data import stream as data
    from instructor_jax.training import sharding
    from instructor_jax.training import step
    from instructor_jax.training import trainer as train
    self.sharding = sharding
    self.config = config
    self.s = train.setup(config)
    self.state = train.create_state(self.s.spec, self.s.tx, config, self.s.abstract, self.s.shardings)
    self.stream = data.SyntheticStream(config.data, self.s.spec.model.config.vocab_size, config.global_batch_size,
                                       config.seed)
    self.flops = self.s.flops  # what the hardware computes, recomputation included
    self.model_flops = step.padded_flops(self.s.spec.model.config, self.s.spec.model.out_features,
                                         train.batch_shapes(config), bool(config.grad_cache_chunk), recompute=False)

  def batch(self, i):
    return self.stream.get(i)

  def device_batch(self, host):
    return self.sharding.global_batch(self.s.mesh, host)

  def step(self, batch) -> float:
    self.state, metrics = self.s.p_step(self.state, batch)
    return float(metrics["loss"])  # host sync, as a loop that logs every step

  def compile(self, batch) -> tuple[float, int]:
    with CompileTimer() as ct:
      self.step(batch)
    return ct.seconds, ct.compiles


class TorchTrainer:
  """PyTorch re-statement: ``T5EncoderModel`` + pooling + Dense + normalise, ``losses.contrastive_loss``
  (instructor variant), ``clip_grad_norm_(1.0)``, ``torch.optim.AdamW`` (lr 1e-5, weight decay 0)."""

  def __init__(self, config, device="cpu", dtype="float32"):
    import torch
    from transformers import T5Config, T5EncoderModel
    self.torch = torch
    self.device = torch.device(device)
    t5 = dict(config.model.t5)
    hf = T5Config(num_decoder_layers=t5["num_layers"], **t5)
    torch.manual_seed(0)
    self.model = T5EncoderModel(hf).to(self.device).train()
    self.dense = torch.nn.Linear(t5["d_model"], config.model.out_features, bias=False).to(self.device)
    self.params = list(self.model.parameters()) + list(self.dense.parameters())
    self.opt = torch.optim.AdamW(self.params, lr=1e-5, weight_decay=0.0)
    self.tau = float(config.loss.temperature)
    self.autocast = dtype == "bfloat16"

  def _embed(self, tokens, instr_len):
    torch = self.torch
    mask = (tokens != 0).long()
    h = self.model(input_ids=tokens, attention_mask=mask).last_hidden_state.float()
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    pm = (mask.bool() & (pos[None, :] >= instr_len[:, None])).float().unsqueeze(-1)
    pooled = (h * pm).sum(1) / torch.clamp(pm.sum(1), min=1e-9)
    return torch.nn.functional.normalize(self.dense(pooled), dim=-1)

  def _loss(self, q, p, n):
    torch = self.torch
    f = torch.nn.functional
    b = q.shape[0]
    q, p, n = f.normalize(q, dim=-1, eps=1e-8), f.normalize(p, dim=-1, eps=1e-8), f.normalize(n, dim=-1, eps=1e-8)
    s_qn, s_qp = q @ n.T, q @ p.T
    diag = torch.diagonal(s_qp)
    zeros = torch.zeros(b, dtype=torch.long, device=q.device)
    loss_q = f.cross_entropy(torch.cat([diag[:, None], s_qn], 1) / self.tau, zeros)
    logits_p = torch.cat([diag[:, None], s_qp.T], 1) / self.tau
    self_mask = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=q.device),
                           torch.eye(b, dtype=torch.bool, device=q.device)], 1)
    loss_p = f.cross_entropy(logits_p.masked_fill(self_mask, float("-inf")), zeros)
    return loss_q + loss_p

  def device_batch(self, host):
    torch = self.torch
    return {k: torch.from_numpy(np.asarray(v, np.int64)).to(self.device) for k, v in host.items()}

  def step(self, batch) -> float:
    torch = self.torch
    b, nneg, ld = batch["neg_tokens"].shape
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
      q = self._embed(batch["query_tokens"], batch["query_instr_len"])
      p = self._embed(batch["pos_tokens"], batch["pos_instr_len"])
      n = self._embed(batch["neg_tokens"].reshape(b * nneg, ld), batch["neg_instr_len"].reshape(b * nneg))
    loss = self._loss(q.float(), p.float(), n.float())
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, 1.0)
    self.opt.step()
    return loss.item()  # host sync


def run(cfg: TrainConfig) -> dict:
  import jax
  from instructor_jax.training import trainer as train
  config = make_config(cfg.size, cfg.global_batch, cfg.query_length, cfg.doc_length, cfg.num_negatives, cfg.dtype,
                       cfg.remat, cfg.grad_cache_chunk, cfg.mesh_shape, cfg.dropout_rate, cfg.attention)
  jx = JaxTrainer(config)
  host = [jx.batch(i) for i in range(cfg.steps_per_rep)]
  jb = [jx.device_batch(h) for h in host]
  compile_s, n_exec = jx.compile(jb[0])
  log(f"[train] {cfg.size} B={cfg.global_batch} Lq={cfg.query_length} Ld={cfg.doc_length} N={cfg.num_negatives}: "
      f"compile {compile_s:.1f}s ({n_exec} executables)")
  th, torch_error = None, None
  if cfg.torch:
    try:
      th = TorchTrainer(config, cfg.device, cfg.dtype)
      tb = [th.device_batch(h) for h in host]
      th.step(tb[0])  # warm-up
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError: report it, time JAX alone
      torch_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      log(f"[train] torch re-statement failed, timing JAX only: {torch_error}")
      th = tb = None
      import gc
      gc.collect()
      import torch
      if torch.cuda.is_available():
        torch.cuda.empty_cache()
  t_jax, t_ref, ratios = [], [], []
  for r in range(cfg.reps):
    order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
    times = {}
    for who in order:
      if who == "torch" and th is None:
        continue
      t0 = time.perf_counter()
      for i in range(cfg.steps_per_rep):
        (jx.step(jb[i]) if who == "jax" else th.step(tb[i]))
      if who == "torch" and th.device.type == "cuda":
        th.torch.cuda.synchronize()
      times[who] = (time.perf_counter() - t0) / cfg.steps_per_rep
    t_jax.append(times["jax"])
    if th is not None:
      t_ref.append(times["torch"])
      ratios.append(times["torch"] / times["jax"])
    log(f"[train] rep {r}: " + " ".join(f"{k} {v:.3f}s/step" for k, v in times.items()))
  peak = train.PEAK_FLOPS.get(next((k for k in train.PEAK_FLOPS if jax.devices()[0].device_kind.startswith(k)), ""),
                              0.0)
  res = dict(size=cfg.size, dropout_rate=cfg.dropout_rate, global_batch=cfg.global_batch,
             query_length=cfg.query_length, doc_length=cfg.doc_length,
             num_negatives=cfg.num_negatives, dtype=cfg.dtype, remat=cfg.remat, grad_cache_chunk=cfg.grad_cache_chunk,
             backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind, compile_s=compile_s,
             flops_per_step=jx.flops, jax_step_s=stats(t_jax), jax_steps_per_s=stats([1 / t for t in t_jax]),
             jax_tflops=stats([jx.flops / t / 1e12 for t in t_jax]))
  # MFU counts model FLOPs only (3 forward passes); HFU counts recomputation too (gradient caching, full remat).
  res["model_flops_per_step"] = jx.model_flops
  res["attention"] = config.model.attention
  res["prng"] = str(jax.config.jax_default_prng_impl)
  if peak:
    res["peak_flops"] = peak
    res["mfu"] = stats([res["model_flops_per_step"] / t / peak for t in t_jax])
    res["hfu"] = stats([jx.flops / t / peak for t in t_jax])
  if torch_error:
    res["torch_error"] = torch_error
  if th is not None:
    res.update(torch_step_s=stats(t_ref), torch_steps_per_s=stats([1 / t for t in t_ref]), ratio=stats(ratios))
  return res


def table(res: dict) -> str:
  head = (f"train step {res['size']} B={res['global_batch']} Lq={res['query_length']} Ld={res['doc_length']} "
          f"N={res['num_negatives']} {res['dtype']} remat={res['remat']} grad_cache={res['grad_cache_chunk']} "
          f"dropout={res.get('dropout_rate', 0.1)} attention={res.get('attention', 'xla')} prng={res.get('prng', '')} "
          f"({res['flops_per_step'] / 1e9:.0f} GFLOP/step)")
  lines = [head, f"  steps/s  jax {fmt(res['jax_steps_per_s'])}" +
           (f"   torch {fmt(res['torch_steps_per_s'])}" if "torch_steps_per_s" in res else ""),
           f"  jax TFLOP/s {fmt(res['jax_tflops'])}" +
           (f"   MFU {fmt(res['mfu'])}   HFU {fmt(res['hfu'])}" if "mfu" in res else "") +
           f"   compile {res['compile_s']:.1f}s"]
  if "ratio" in res:
    lines.append(f"  ratio jax/torch (paired) {fmt(res['ratio'])}")
  if "torch_error" in res:
    lines.append(f"  torch: {res['torch_error']}")
  return "\n".join(lines)
