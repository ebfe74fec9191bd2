#!/usr/bin/env python
"""Compares instructor_jax with the real InstructorEmbedding 1.0.1 package (the numerical reference).

InstructorEmbedding 1.0.1 needs sentence-transformers 2.2.2, transformers 4.x and a huggingface_hub that still has
``cached_download``; our environment (transformers 5) cannot import it. So the check runs in three phases and the
two environments never meet: they exchange plain files (checkpoints, JSON, .npy) under ``--out DIR``.

  # 0. our venv: tiny random checkpoints (tests/reference.py make_checkpoint, INSTRUCTOR layout) + pairs.json
  .venv/bin/python scripts/check_instructor_reference.py make --out /tmp/instructor_ref
  # 1. the reference venv (scripts/requirements-reference.txt): INSTRUCTOR(folder).encode(...) -> .npy
  /tmp/refenv/bin/python scripts/check_instructor_reference.py reference --out /tmp/instructor_ref
  # 2. our venv: Instructor.from_pretrained(folder, max_length=...).encode(...) vs the .npy; exit 1 on mismatch
  .venv/bin/python scripts/check_instructor_reference.py compare --out /tmp/instructor_ref

Layout of DIR: ``manifest.json`` (checkpoints, max lengths, batch sizes, number of PAIRS), ``pairs.json`` (the
inputs: ``tests/reference.py`` PAIRS followed by a few extra crash probes), ``checkpoints/<name>/`` and
``reference/<name>/L<max_length>_bs<batch_size>.npy`` + ``reference/<name>/L<max_length>.json`` (token ids, pooling
offsets and crashes as the reference computed them).

Reference quirks handled here (all reported, none hidden):
* ``INSTRUCTOR_Transformer.__init__`` hard-codes ``max_seq_length = 512``; the reduced lengths are set afterwards
  with ``model.max_seq_length = L``.
* 1.0.1 decides "pairs or strings" from the first item of a batch only, so a list mixing plain strings and pairs
  is mis-tokenised for batch_size > 1. The reference encodes pairs and plain strings in two separate calls (ours
  gets the mixed list, in the original order).
* ``INSTRUCTOR_Transformer.forward`` asserts ``tokens(joined) >= n``; inputs that trip it are encoded one by one
  to find them, printed, and left out of the comparison.
* sentence-transformers 2.2.2's ``Dense.load`` reads only ``2_Dense/pytorch_model.bin``; phase 0 writes it next to
  ``model.safetensors`` (same tensor). The T5 ``model.safetensors`` written by transformers 5 loads as is in
  transformers 4.x; phase 1 checks every loaded tensor bit for bit against the file and stops if one differs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MAX_LENGTHS = (512, 32, 12)
DEFAULT_BATCH_SIZES = (1, 4, 32)
CHECKPOINTS = ("relu", "gated-gelu")

# Extra inputs (not in tests/reference.py) that split a word between instruction and text: the instruction alone
# has more tokens than the joined text, which trips InstructorEmbedding 1.0.1's assertion in forward().
PROBES = [
    ["Represent the titl", "e"],
    ["Wikipedi", "a"],
    ["Represent the Wikiped", "ia"],
    ["Represent the Wikipe", "dia article about llamas"],
]


def _dump(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f, indent=1, ensure_ascii=False)


def _load(path):
  with open(path) as f:
    return json.load(f)


def _label(i, num_pairs):
  return f"PAIRS[{i}]" if i < num_pairs else f"PROBES[{i - num_pairs}]"


def _short(item, width=60):
  s = repr(item)
  return s if len(s) <= width else s[:width - 3] + "..."


# ---------------------------------------------------------------------------------------------------- phase 0: make
def make(out: str, max_lengths, batch_sizes) -> None:
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import torch
  import transformers
  from reference import PAIRS, make_checkpoint
  from safetensors.torch import load_file

  os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
  for name in CHECKPOINTS:
    folder = os.path.join(out, "checkpoints", name)
    make_checkpoint(folder, name, layout="instructor")
    # Compatibility for sentence-transformers 2.2.2 (Dense.load reads pytorch_model.bin only): same tensor.
    dense_dir = os.path.join(folder, "2_Dense")
    w = load_file(os.path.join(dense_dir, "model.safetensors"))["linear.weight"]
    torch.save({"linear.weight": w}, os.path.join(dense_dir, "pytorch_model.bin"))
    print(f"wrote {folder}")
  inputs = [list(p) if not isinstance(p, str) else p for p in PAIRS] + PROBES
  _dump(os.path.join(out, "pairs.json"), inputs)
  _dump(os.path.join(out, "manifest.json"), {
      "checkpoints": list(CHECKPOINTS), "max_lengths": list(max_lengths), "batch_sizes": list(batch_sizes),
      "num_pairs": len(PAIRS), "num_probes": len(PROBES), "made_with_transformers": transformers.__version__})
  print(f"wrote {out}/pairs.json ({len(PAIRS)} PAIRS + {len(PROBES)} probes) and manifest.json")


# ----------------------------------------------------------------------------------------------- phase 1: reference
def _check_weights(model, folder: str) -> None:
  """Every tensor of the checkpoint files must be what transformers 4.x / ST 2.2.2 actually loaded."""
  import torch
  from safetensors.torch import load_file
  auto_model = model[0].auto_model
  sd = auto_model.state_dict()
  saved = load_file(os.path.join(folder, "model.safetensors"))
  bad = [k for k, v in saved.items() if k not in sd or not torch.equal(sd[k], v)]
  if "encoder.embed_tokens.weight" in sd and not torch.equal(sd["encoder.embed_tokens.weight"], saved["shared.weight"]):
    bad.append("encoder.embed_tokens.weight (tied to shared.weight)")
  missing = [k for k in sd if k not in saved and k != "encoder.embed_tokens.weight"]
  dense_saved = load_file(os.path.join(folder, "2_Dense", "model.safetensors"))["linear.weight"]
  if not torch.equal(model[2].linear.weight.detach(), dense_saved):
    bad.append("2_Dense linear.weight")
  if bad or missing:
    raise SystemExit(f"{folder}: transformers {__import__('transformers').__version__} did not load the saved "
                     f"weights faithfully: differing {bad}, not in the file {missing}")
  print(f"  weights: all {len(saved)} T5 tensors + Dense loaded bit-exact from model.safetensors "
        f"(transformers-5 file, read by transformers {__import__('transformers').__version__})")


def reference(out: str) -> None:
  import numpy as np
  import torch
  import transformers
  import sentence_transformers
  from InstructorEmbedding import INSTRUCTOR
  torch.set_num_threads(1)
  manifest = _load(os.path.join(out, "manifest.json"))
  inputs = _load(os.path.join(out, "pairs.json"))
  num_pairs = manifest["num_pairs"]
  pair_idx = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
  str_idx = [i for i, x in enumerate(inputs) if isinstance(x, str)]
  print(f"reference: InstructorEmbedding 1.0.1, sentence-transformers {sentence_transformers.__version__}, "
        f"transformers {transformers.__version__}, torch {torch.__version__}")
  for name in manifest["checkpoints"]:
    folder = os.path.join(out, "checkpoints", name)
    ref_dir = os.path.join(out, "reference", name)
    os.makedirs(ref_dir, exist_ok=True)
    model = INSTRUCTOR(folder, device="cpu")
    print(f"[{name}] modules: {[type(m).__name__ for m in model]}")
    _check_weights(model, folder)
    for L in manifest["max_lengths"]:
      model.max_seq_length = L
      assert model[0].max_seq_length == L
      # Token ids and pooling offsets exactly as 1.0.1 computes them (one input at a time: no padding).
      ids, n, crashed = [], [], {}
      for i, x in enumerate(inputs):
        feats = model.tokenize([x])
        ids.append(feats["input_ids"][0].tolist())
        n.append(int(feats["context_masks"][0]) if "context_masks" in feats else 0)
        if not isinstance(x, str):
          try:
            model.encode([x], batch_size=1)
          except AssertionError:
            crashed[str(i)] = (f"AssertionError in INSTRUCTOR_Transformer.forward (sum(attention_mask) >= "
                               f"context_masks): n={n[-1]} > {len(ids[-1])} tokens of the joined text")
      ok_pairs = [i for i in pair_idx if str(i) not in crashed]
      for bs in manifest["batch_sizes"]:
        emb = None
        for idx in (ok_pairs, str_idx):  # two calls: 1.0.1 cannot mix strings and pairs in one batch
          if not idx:
            continue
          e = model.encode([inputs[i] for i in idx], batch_size=bs, convert_to_numpy=True)
          if emb is None:
            emb = np.full((len(inputs), e.shape[1]), np.nan, np.float32)
          emb[idx] = e
        np.save(os.path.join(ref_dir, f"L{L}_bs{bs}.npy"), emb)
      note = None
      if L == manifest["max_lengths"][0] and max(manifest["batch_sizes"]) > 1:
        # Documents the mixing quirk: the same (non-crashing) inputs in ONE list, original order.
        mixed = [i for i in range(len(inputs)) if str(i) not in crashed]
        bs = max(manifest["batch_sizes"])
        try:
          e = model.encode([inputs[i] for i in mixed], batch_size=bs)
          d = float(np.abs(e - emb[mixed]).max())
          note = f"one mixed list (strings + pairs), batch_size={bs}: max|diff| vs separate calls = {d:.3g}"
        except Exception as ex:  # noqa: BLE001 - recorded, not hidden
          note = f"one mixed list (strings + pairs), batch_size={bs}: {type(ex).__name__}: {str(ex)[:120]}"
        print(f"  note: {note}")
      _dump(os.path.join(ref_dir, f"L{L}.json"), {"ids": ids, "n": n, "crashed": crashed, "mixed_note": note})
      for i, why in crashed.items():
        print(f"  L={L}: {_label(int(i), num_pairs)} {_short(inputs[int(i)], 50)} CRASHES the reference: {why}")
      print(f"  L={L}: saved batch sizes {manifest['batch_sizes']} "
            f"({len(ok_pairs)} pairs, {len(str_idx)} strings, {len(crashed)} crashing pairs left out)")


# ------------------------------------------------------------------------------------------------- phase 2: compare
def compare(out: str, tol: float) -> int:
  import numpy as np
  sys.path.insert(0, ROOT)
  from instructor_jax import Instructor
  manifest = _load(os.path.join(out, "manifest.json"))
  inputs = _load(os.path.join(out, "pairs.json"))
  num_pairs = manifest["num_pairs"]
  rows, failures, notes, crash_notes, ours_norms = [], 0, [], {}, {}
  for name in manifest["checkpoints"]:
    folder = os.path.join(out, "checkpoints", name)
    ref_dir = os.path.join(out, "reference", name)
    for L in manifest["max_lengths"]:
      meta = _load(os.path.join(ref_dir, f"L{L}.json"))
      crashed = {int(k): v for k, v in meta["crashed"].items()}
      model = Instructor.from_pretrained(folder, max_length=L)
      enc = model.tokenizer.encode(inputs)
      tok_bad = [i for i, e in enumerate(enc) if list(e.ids) != meta["ids"][i] or e.instr_len != meta["n"][i]]
      for i in tok_bad:
        notes.append(f"[{name} L={L}] token/offset mismatch {_label(i, num_pairs)} {_short(inputs[i])}: "
                     f"ours n={enc[i].instr_len} len={len(enc[i].ids)}, ref n={meta['n'][i]} "
                     f"len={len(meta['ids'][i])}")
      for i, why in sorted(crashed.items()):
        crash_notes.setdefault((i, why), []).append((name, L, enc[i].instr_len, len(enc[i].ids)))
      if meta.get("mixed_note"):
        notes.append(f"[{name} L={L}] reference, {meta['mixed_note']}")
      keep = [i for i in range(len(inputs)) if i not in crashed]
      for bs in manifest["batch_sizes"]:
        ref = np.load(os.path.join(ref_dir, f"L{L}_bs{bs}.npy"))
        ours = model.encode(inputs, batch_size=bs, show_progress_bar=False)  # one mixed list, original order
        for i in crashed:
          ours_norms.setdefault(i, set()).add(round(float(np.linalg.norm(ours[i])), 6))
        diff = np.abs(ours[keep].astype(np.float64) - ref[keep].astype(np.float64)).max(axis=1)
        worst = keep[int(np.argmax(diff))]
        d = float(diff.max())
        ok = bool(np.isfinite(d)) and d <= tol and not tok_bad
        failures += not ok
        rows.append((name, L, bs, len(keep), len(crashed), len(tok_bad), d, _label(worst, num_pairs),
                     "ok" if ok else "MISMATCH"))
  header = ("checkpoint", "max_len", "batch", "compared", "excluded", "tok_diff", "max|diff|", "worst input", "")
  widths = [max(len(str(r[k])) if k != 6 else 9 for r in rows + [header]) for k in range(len(header))]
  fmt = lambda r: "  ".join((f"{r[k]:.2e}" if k == 6 and not isinstance(r[k], str) else str(r[k])).ljust(widths[k])
                            for k in range(len(r)))
  print(fmt(header))
  for r in rows:
    print(fmt(r))
  for (i, why), where in sorted(crash_notes.items()):
    ours = sorted({(k, t) for _, _, k, t in where})
    print(f"excluded: {_label(i, num_pairs)} {_short(inputs[i])}: the reference crashes ({why}) for "
          f"{', '.join(f'{c}/L={L}' for c, L, _, _ in where)}; instructor_jax does not crash (n, tokens = "
          f"{ours}) and returns vectors of norm {sorted(ours_norms.get(i, ()))} (nothing left to pool)")
  for n in notes:
    print("note:", n)
  print(f"{len(rows) - failures} passed, {failures} failed (bar: max|diff| <= {tol:g} fp32, token ids and pooling "
        f"offsets identical)")
  return 1 if failures else 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("phase", choices=("make", "reference", "compare"))
  p.add_argument("--out", required=True, help="working folder shared by the three phases")
  p.add_argument("--max-lengths", type=int, nargs="+", default=list(DEFAULT_MAX_LENGTHS), help="make only")
  p.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES), help="make only")
  p.add_argument("--tol", type=float, default=1e-5, help="compare only: max abs difference allowed")
  a = p.parse_args(argv)
  os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never touch the hub
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  if a.phase == "make":
    make(a.out, a.max_lengths, a.batch_sizes)
  elif a.phase == "reference":
    reference(a.out)
  else:
    return compare(a.out, a.tol)
  return 0


if __name__ == "__main__":
  sys.exit(main())
