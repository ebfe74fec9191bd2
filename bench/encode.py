"""Encode throughput: ``Instructor.encode`` (JAX) vs the PyTorch reference path, same weights, inputs and threads.

The reference path is what ``InstructorEmbedding`` / sentence-transformers do: inputs sorted by length (longest
first, by characters as sentence-transformers' ``_text_length``), batches tokenised with ``padding=True`` (pad to the
longest in the batch), ``transformers.T5EncoderModel`` under ``torch.inference_mode``, the INSTRUCTOR pooling (skip
the first ``n`` instruction tokens, masked mean), the Dense layer and L2 normalisation, results back in input order.

Both sides are timed end to end (list of ``[instruction, sentence]`` pairs in, float32 numpy ``[N, D]`` out,
tokenisation included), interleaved A B B A ... in one process so load changes hit both; the ratio of each adjacent
pair is the figure that counts. JAX compilation is measured separately (``jax.monitoring`` compile events during a
warm-up pass over the same inputs, which compiles every bucket shape) and never included in the throughput.

Experiment variants of the JAX side (``--variant``, '+'-joined options; bench-only re-statements of the shipped
code, see ``JaxEncoder``): ``default`` is the shipped ``Instructor.encode``; ``async``, ``b8``, ``hfirst``,
``pack64``, ``pack128`` are the attempts recorded in BENCHMARKS.md.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
import time

import numpy as np

from bench import DATA_DIR, INSTRUCTION, REPO, SIZES, CompileTimer, fmt, log, stats

DEFAULT_CACHE = os.path.join(tempfile.gettempdir(), "instructor_jax_bench")
FINE_BUCKETS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 192, 256, 384, 512)


def load_sentences(n: int = 600) -> list[str]:
  """``n`` STS-B test sentences (bundled; see bench/data/README.md), cycled if more are asked for."""
  with open(os.path.join(DATA_DIR, "stsb_test_600.txt"), encoding="utf-8") as f:
    sents = [line.rstrip("\n") for line in f if line.strip()]
  return [sents[i % len(sents)] for i in range(n)]


def _reference_module():
  spec = importlib.util.spec_from_file_location("bench_tests_reference", os.path.join(REPO, "tests", "reference.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def checkpoint(size: str, cache_dir: str = DEFAULT_CACHE, seed: int = 0) -> str:
  """A random INSTRUCTOR-layout checkpoint of ``size`` with the real T5 vocabulary (built once, then cached)."""
  out = os.path.join(cache_dir, f"instructor-{size}-relu-s{seed}")
  if os.path.exists(os.path.join(out, "modules.json")):
    return out
  kw = dict(SIZES[size])
  out_features = kw.pop("out_features")
  tmp = out + f".tmp{os.getpid()}"
  log(f"[encode] building a random {size} checkpoint in {out}")
  _reference_module().make_checkpoint(tmp, "relu", layout="instructor", seed=seed, out_features=out_features,
                                      **kw)
  os.makedirs(cache_dir, exist_ok=True)
  try:
    os.rename(tmp, out)
  except OSError:  # built concurrently by another process
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
  return out


# ----------------------------------------------------------------------------------------------------------------
# The PyTorch reference path
# ----------------------------------------------------------------------------------------------------------------
class TorchReference:
  """transformers ``T5EncoderModel`` + INSTRUCTOR pooling + Dense + Normalize, sentence-transformers batching."""

  def __init__(self, folder: str, max_length: int = 512, device: str = "cpu", dtype: str = "float32"):
    import json
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, T5EncoderModel
    self.torch = torch
    self.device = torch.device(device)
    self.dtype = getattr(torch, dtype)
    self.tok = AutoTokenizer.from_pretrained(folder)
    self.model = T5EncoderModel.from_pretrained(folder, dtype=self.dtype).eval().to(self.device)
    modules = json.load(open(os.path.join(folder, "modules.json")))
    dense = [m for m in modules if m["type"].endswith("Dense")]
    self.dense = None
    if dense:
      w = load_file(os.path.join(folder, dense[0]["path"], "model.safetensors"))["linear.weight"]
      self.dense = w.to(self.device, torch.float32)
    self.max_length = max_length

  def tokenize(self, pairs):
    """The 1.0.1 rule (see ``instructor_jax/tokenization.py``), batched as the reference tokenizer call."""
    joined = [(i + t.strip()).strip() for i, t in pairs]
    feats = self.tok(joined, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
    instr = self.tok([i.strip() for i, _ in pairs], truncation=True, max_length=self.max_length)["input_ids"]
    n = [0 if len(x) - 1 <= 1 else len(x) - 1 for x in instr]
    return feats, n

  def encode(self, pairs, batch_size: int = 32) -> np.ndarray:
    torch = self.torch
    order = np.argsort([-sum(len(s) for s in p) for p in pairs], kind="stable")
    out = [None] * len(pairs)
    self.padded_tokens = 0
    with torch.inference_mode():
      for start in range(0, len(pairs), batch_size):
        idx = order[start:start + batch_size]
        feats, n = self.tokenize([pairs[i] for i in idx])
        ids = feats["input_ids"].to(self.device)
        mask = feats["attention_mask"].to(self.device)
        self.padded_tokens += ids.numel()
        h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        pmask = mask.clone()
        for row, k in enumerate(n):
          pmask[row, :k] = 0
        m = pmask.unsqueeze(-1).to(torch.float32)
        pooled = (h.to(torch.float32) * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
        if self.dense is not None:
          pooled = pooled @ self.dense.T
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()
        for row, i in enumerate(idx):
          out[i] = pooled[row]
    return np.stack(out)

  def forward_only(self, tokens: np.ndarray) -> float:
    """Seconds for one encoder forward on a full ``[B, L]`` batch (no tokenisation, no pooling)."""
    torch = self.torch
    ids = torch.from_numpy(tokens).to(self.device)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
      t0 = time.perf_counter()
      self.model(input_ids=ids, attention_mask=mask)
      if self.device.type == "cuda":
        torch.cuda.synchronize()
      return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------------
# The JAX side
# ----------------------------------------------------------------------------------------------------------------
VARIANT_OPTIONS = ("default", "async", "b8", "hfirst", "pack64", "pack128", "big", "half")


def parse_variant(variant: str) -> set:
  opts = set(variant.split("+")) - {""}
  bad = opts - set(VARIANT_OPTIONS)
  if bad or ("default" in opts and len(opts) > 1):
    raise ValueError(f"unknown JAX encode variant {variant!r}: '+'-joined options of {VARIANT_OPTIONS}")
  return opts or {"default"}


def patch_heads_first_attention():
  """Experiment ``hfirst``: the two attention einsums on heads-first ``[b, h, l, d]`` operands (explicit transposes).

  Patches, in this process only, the ``jnp`` that ``instructor_jax.t5`` sees with a proxy whose ``einsum`` rewrites
  exactly ``bqhd,bkhd->bhqk`` (scores) and ``bhqk,bkhd->bqhd`` (weights x values); everything else is
  ``jax.numpy``. Same parameters, same math (only the operand layouts XLA sees change). The proposed change to
  ``t5.py`` is the same transposes in ``SelfAttention`` (see BENCHMARKS.md).
  """
  import jax.numpy as jnp
  from instructor_jax.models import t5

  if isinstance(t5.jnp, _HeadsFirstJnp):
    return
  t5.jnp = _HeadsFirstJnp(jnp)


class _HeadsFirstJnp:
  def __init__(self, jnp):
    self._jnp = jnp

  def __getattr__(self, name):
    return getattr(self._jnp, name)

  def einsum(self, eq, *ops, **kw):
    jnp = self._jnp
    if eq == "bqhd,bkhd->bhqk":
      q, k = ops
      return jnp.einsum("bhqd,bhkd->bhqk", jnp.transpose(q, (0, 2, 1, 3)), jnp.transpose(k, (0, 2, 1, 3)), **kw)
    if eq == "bhqk,bkhd->bqhd":
      w, v = ops
      return jnp.transpose(jnp.einsum("bhqk,bhkd->bhqd", w, jnp.transpose(v, (0, 2, 1, 3)), **kw), (0, 2, 1, 3))
    return jnp.einsum(eq, *ops, **kw)


class JaxEncoder:
  """``Instructor.from_pretrained(folder).encode`` (variant ``default``) or a bench-only re-statement of it.

  Variant options ('+'-joined): ``async`` (dispatch every batch before fetching any result; the shipped code
  converts each batch to numpy before dispatching the next), ``b8`` (buckets at multiples of 8 up to 64, then
  16 up to 128, then 192, 256, 384, 512 instead of 16, 32, 64, ...), ``hfirst`` (heads-first attention layout),
  ``pack64`` / ``pack128`` (sentences packed into rows of 64 / 128 tokens, ``batch_size * 32 // N`` rows per call,
  i.e. the token budget of ``batch_size`` rows of 32; sentences longer than N fall back to bucketed rows),
  ``big`` / ``half`` (twice / half as many packed rows per call).
  """

  def __init__(self, folder: str, dtype: str = "float32", variant: str = "default", max_length: int = 512,
               attention: str = "xla"):
    import jax.numpy as jnp
    self.opts = parse_variant(variant)
    if "hfirst" in self.opts:
      patch_heads_first_attention()
    from instructor_jax.models.embedder import Instructor
    self.inst = Instructor.from_pretrained(folder, dtype=getattr(jnp, dtype), max_length=max_length)
    if attention != "xla":  # same weights, other attention kernel (t5.py: T5Config.attention)
      inst = self.inst
      model = inst.model.clone(config=dataclasses.replace(inst.model.config, attention=attention))
      self.inst = Instructor(model, inst.params, inst.tokenizer, source=inst.source)
    self.variant = variant
    self.pack = next((int(o[4:]) for o in self.opts if o.startswith("pack")), 0)
    if self.opts <= {"default", "hfirst"}:  # the shipped encode packs (plan only: `encode` calls it directly)
      from instructor_jax.models.embedder import PACK_LENGTH
      self.pack = min(PACK_LENGTH, max_length)

  def _bucket(self, length: int) -> int:
    if "b8" in self.opts:
      for b in FINE_BUCKETS:
        if length <= b:
          return min(b, self.inst.max_length)
      return self.inst.max_length
    return self.inst.bucket(length)

  def _plan(self, encoded, batch_size):
    """[(kind, [indices...], rows, length)] calls: ``bucket`` rows of one sentence or ``packed`` rows."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
    calls = []
    if self.pack:
      long = [i for i in order if len(encoded[i].ids) > self.pack]
      short = [i for i in order if len(encoded[i].ids) <= self.pack]
      from instructor_jax.data.packing import best_fit_decreasing
      rows = [[short[j] for j in r] for r in
              best_fit_decreasing([len(encoded[i].ids) for i in short], self.pack, max(1, self.pack // 8))]
      per_call = max(1, batch_size * 32 // self.pack) * (2 if "big" in self.opts else 1)
      per_call = max(1, per_call // 2) if "half" in self.opts else per_call
      for s in range(0, len(rows), per_call):
        chunk = rows[s:s + per_call]
        n_rows = per_call if len(chunk) == per_call else min(per_call, 1 << (len(chunk) - 1).bit_length())
        calls.append(("packed", chunk, n_rows, self.pack))
      order = long
    for s in range(0, len(order), batch_size):
      idx = order[s:s + batch_size]
      rows = batch_size if len(idx) == batch_size else min(batch_size, 1 << (len(idx) - 1).bit_length())
      calls.append(("bucket", idx, rows, self._bucket(len(encoded[idx[0]].ids))))
    return calls

  def padded_tokens(self, pairs, batch_size: int) -> int:
    """Tokens the encoder computes for ``pairs`` with this variant (row and batch padding included)."""
    return sum(rows * length for _, _, rows, length in self._plan(self.inst.tokenizer.encode(pairs), batch_size))

  def encode(self, pairs, batch_size: int = 32) -> np.ndarray:
    if self.opts == {"default"} or self.opts == {"hfirst"}:
      return self.inst.encode(pairs, batch_size=batch_size, show_progress_bar=False)
    from instructor_jax.models.embedder import bucket_arrays, packed_arrays
    inst = self.inst
    pad = inst.tokenizer.pad_id
    encoded = inst.tokenizer.encode(pairs)
    out = np.zeros((len(encoded), inst.dim), np.float32)
    pending = []
    for kind, idx, rows, length in self._plan(encoded, batch_size):
      if kind == "packed":
        tokens, mask, seg, pool, where = packed_arrays(encoded, idx, rows, length, max(1, self.pack // 8), pad)
        emb = inst._apply({"params": inst.params}, tokens, np.zeros((rows,), np.int32), mask, segment_ids=seg,
                          pool=pool)
      else:
        tokens, mask, instr = bucket_arrays(encoded, idx, rows, length, pad)
        emb = inst._apply({"params": inst.params}, tokens, instr, mask)
        where = [(i, row) for row, i in enumerate(idx)]
      fetch = lambda e, where=where: [(i, e[at]) for i, at in where]
      if "async" in self.opts:
        pending.append((fetch, emb))
      else:
        for i, e in fetch(np.asarray(emb, np.float32)):
          out[i] = e
    for fetch, emb in pending:
      for i, e in fetch(np.asarray(emb, np.float32)):
        out[i] = e
    return out

  def forward_only(self, tokens: np.ndarray) -> float:
    import jax
    inst = self.inst
    mask = np.ones_like(tokens)
    instr = np.zeros((tokens.shape[0],), np.int32)
    jax.block_until_ready(inst._apply({"params": inst.params}, tokens, instr, mask))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(inst._apply({"params": inst.params}, tokens, instr, mask))
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EncodeConfig:
  size: str = "base"
  num_sentences: int = 600
  batch_size: int = 32
  reps: int = 5
  dtype: str = "float32"
  device: str = "cpu"          # torch device; JAX uses its default backend
  variant: str = "default"
  shape_lengths: tuple = ()    # forward-only [batch, L] comparisons (profiling); () = skip
  cache_dir: str = DEFAULT_CACHE
  torch_dtype: str | None = None  # defaults to dtype
  attention: str = "xla"       # JAX attention kernel (T5Config.attention: xla | cudnn)


def run(cfg: EncodeConfig) -> dict:
  import jax
  folder = checkpoint(cfg.size, cfg.cache_dir)
  pairs = [[INSTRUCTION, s] for s in load_sentences(cfg.num_sentences)]
  t0 = time.perf_counter()
  ref = TorchReference(folder, device=cfg.device, dtype=cfg.torch_dtype or cfg.dtype)
  jx = JaxEncoder(folder, dtype=cfg.dtype, variant=cfg.variant, attention=cfg.attention)
  log(f"[encode] loaded {cfg.size} in {time.perf_counter() - t0:.1f}s; {len(pairs)} pairs, batch {cfg.batch_size}, "
      f"{cfg.dtype}, variant {cfg.variant}")
  real_tokens = sum(len(e.ids) for e in jx.inst.tokenizer.encode(pairs))

  # Warm-up: JAX compiles every bucket shape of this input set (timed separately); torch warms its allocator.
  with CompileTimer() as ct:
    t0 = time.perf_counter()
    e_jax = jx.encode(pairs, cfg.batch_size)
    first_call = time.perf_counter() - t0
  e_ref = ref.encode(pairs, cfg.batch_size)
  max_diff = float(np.max(np.abs(e_jax - e_ref)))
  cos_min = float(np.min(np.sum(e_jax * e_ref, axis=-1)))
  log(f"[encode] compile {ct.seconds:.1f}s ({ct.compiles} executables); first call {first_call:.1f}s; "
      f"max |jax - torch| = {max_diff:.2e}")

  t_jax, t_ref, ratios = [], [], []
  for r in range(cfg.reps):
    order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
    times = {}
    for who in order:
      t0 = time.perf_counter()
      (jx if who == "jax" else ref).encode(pairs, cfg.batch_size)
      times[who] = time.perf_counter() - t0
    t_jax.append(times["jax"])
    t_ref.append(times["torch"])
    ratios.append(times["torch"] / times["jax"])
    log(f"[encode] rep {r}: jax {times['jax']:.2f}s torch {times['torch']:.2f}s ratio {ratios[-1]:.3f}")

  n = len(pairs)
  res = dict(
      size=cfg.size, batch_size=cfg.batch_size, dtype=cfg.dtype, variant=cfg.variant, num_sentences=n,
      attention=cfg.attention, torch_dtype=cfg.torch_dtype or cfg.dtype,
      backend=jax.default_backend(), torch_device=cfg.device,
      real_tokens=real_tokens, padded_tokens_jax=jx.padded_tokens(pairs, cfg.batch_size),
      padded_tokens_torch=int(ref.padded_tokens),
      compile_s=ct.seconds, compiled_executables=ct.compiles, first_call_s=first_call,
      max_abs_diff=max_diff, min_cosine=cos_min,
      jax_s=stats(t_jax), torch_s=stats(t_ref),
      jax_sent_per_s=stats([n / t for t in t_jax]), torch_sent_per_s=stats([n / t for t in t_ref]),
      jax_tok_per_s=stats([real_tokens / t for t in t_jax]), torch_tok_per_s=stats([real_tokens / t for t in t_ref]),
      ratio=stats(ratios))
  if cfg.shape_lengths:
    rng = np.random.default_rng(0)
    shapes = []
    for length in cfg.shape_lengths:
      tokens = rng.integers(2, 32000, size=(cfg.batch_size, length)).astype(np.int32)
      tj, tt = [], []
      jx.forward_only(tokens)  # compile
      ref.forward_only(tokens)
      for r in range(cfg.reps):
        tj.append(jx.forward_only(tokens))
        tt.append(ref.forward_only(tokens))
      shapes.append(dict(length=length, jax_s=stats(tj), torch_s=stats(tt),
                         ratio=stats([b / a for a, b in zip(tj, tt)])))
      log(f"[encode] forward [{cfg.batch_size}, {length}]: jax {fmt(shapes[-1]['jax_s'])}s "
          f"torch {fmt(shapes[-1]['torch_s'])}s")
    res["forward_shapes"] = shapes
  return res


def table(res: dict) -> str:
  lines = [
      f"encode {res['size']} batch {res['batch_size']} {res['dtype']} ({res['num_sentences']} sentences, "
      f"{res['real_tokens']} tokens; padded: jax {res['padded_tokens_jax']}, torch {res['padded_tokens_torch']}; "
      f"variant {res['variant']}, attention {res.get('attention', 'xla')})",
      f"  sentences/s  jax {fmt(res['jax_sent_per_s'])}   torch {fmt(res['torch_sent_per_s'])}",
      f"  tokens/s     jax {fmt(res['jax_tok_per_s'])}   torch {fmt(res['torch_tok_per_s'])}",
      f"  ratio jax/torch (paired) {fmt(res['ratio'])}   compile {res['compile_s']:.1f}s "
      f"({res['compiled_executables']} executables)   max|diff| {res['max_abs_diff']:.1e}",
  ]
  for s in res.get("forward_shapes", []):
    lines.append(f"  forward [{res['batch_size']}, {s['length']}]: jax {fmt(s['jax_s'])}s torch {fmt(s['torch_s'])}s "
                 f"ratio {fmt(s['ratio'])}")
  return "\n".join(lines)
