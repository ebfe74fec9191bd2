"""INSTRUCTOR embeddings against a PyTorch re-statement of the 1.0.1 rule, layouts, errors, batching."""
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import reference
from instructor_jax.models import hf
from instructor_jax.models.embedder import Instructor


@pytest.mark.parametrize("max_length", [512, 12, 40])
def test_embeddings_match_reference(instructor_dir, max_length):
  assert len(reference.PAIRS) >= 30
  ref = reference.ReferenceInstructor(instructor_dir, max_length=max_length).encode(reference.PAIRS, batch_size=6)
  model = Instructor.from_pretrained(instructor_dir, max_length=max_length)
  for batch_size in (1, 7, 32):
    ours = model.encode(reference.PAIRS, batch_size=batch_size)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-5, batch_size


def test_rule_corners(relu_dir):
  """The corners of the rule are really exercised: n <= 1 keeps everything, merges, truncation."""
  model = Instructor.from_pretrained(relu_dir, max_length=12)
  tok = model.tokenizer
  # a one-token instruction (n = 1) masks nothing (n <= 1 rule); two tokens mask two
  pairs = [["Title", " t"], ["Represent", " t"], ["Query: ", " t"], ["", " t"]]
  assert [e.instr_len for e in tok.encode(pairs)] == [0, 2, 3, 0]
  np.testing.assert_allclose(model.encode([["Title ", "of the text"]]), model.encode(["Title of the text"]),
                             atol=1e-7)
  # a word that merges across the boundary: n comes from the instruction alone
  (merged,) = tok.encode([["Represent the", "m"]])
  alone = tok.encode_texts(["Represent the"])[0]
  assert merged.instr_len == len(alone) - 1
  assert tok.encode_texts(["Represent them"])[0] == list(merged.ids)
  # truncation keeps </s> inside max_length, for the text and for the instruction count
  (long,) = tok.encode([["Represent the " + "very " * 50 + "long instruction: ", "text"]])
  assert len(long.ids) == 12 and long.ids[-1] == tok.eos_id and long.instr_len == 11
  # an instruction covering everything gives a zero vector before normalisation -> zero output, no NaN
  emb = model.encode([["Represent the " + "very " * 50 + "long instruction: ", "text"]])
  assert np.isfinite(emb).all()


def test_plain_strings_pool_everything(relu_dir):
  model = Instructor.from_pretrained(relu_dir)
  a = model.encode(["  hello world  "])
  b = model.encode([["", "hello world"]])
  np.testing.assert_allclose(a, b, atol=1e-7)
  assert model.tokenizer.encode(["hello world"])[0].instr_len == 0


def test_results_do_not_depend_on_bucket_or_batch(relu_dir):
  model = Instructor.from_pretrained(relu_dir)
  base = model.encode(reference.PAIRS, batch_size=4)
  import instructor_jax.models.embedder as emb
  old = emb.BUCKETS
  try:
    emb.BUCKETS = (512,)
    padded = model.encode(reference.PAIRS, batch_size=13)
  finally:
    emb.BUCKETS = old
  assert np.abs(base - padded).max() <= 1e-6


def test_input_order_and_empty(relu_dir):
  model = Instructor.from_pretrained(relu_dir)
  pairs = reference.PAIRS[:9]
  fwd = model.encode(pairs, batch_size=3)
  rev = model.encode(pairs[::-1], batch_size=3)[::-1]
  assert np.abs(fwd - rev).max() <= 1e-6
  assert model.encode([]).shape == (0, model.dim)
  with pytest.raises(TypeError):
    model.encode("a single string")
  with pytest.raises(ValueError, match="input 1"):
    model.encode(["ok", ["only one"]])


def test_bf16_embeddings_close_to_fp32(instructor_dir):
  a = Instructor.from_pretrained(instructor_dir).encode(reference.PAIRS)
  b = Instructor.from_pretrained(instructor_dir, dtype=jnp.bfloat16).encode(reference.PAIRS)
  assert b.dtype == np.float32
  nonzero = np.linalg.norm(a, axis=-1) > 0
  cos = np.sum(a * b, -1)[nonzero]
  assert cos.min() >= 0.999


@pytest.mark.parametrize("layout", ["gtr", "t5", "t5-full"])
def test_other_layouts(tmp_path, layout):
  folder = reference.make_checkpoint(str(tmp_path / layout), "relu", layout=layout, seed=3)
  model = Instructor.from_pretrained(folder)
  expected_dim = 24 if layout == "gtr" else 32
  assert model.dim == expected_dim
  ref = reference.ReferenceInstructor(folder).encode(reference.PAIRS)
  assert np.abs(model.encode(reference.PAIRS) - ref).max() <= 1e-5


def test_pytorch_bin_weights(tmp_path):
  folder = reference.make_checkpoint(str(tmp_path / "bin"), "gated-gelu", safetensors=False, seed=5)
  assert os.path.exists(os.path.join(folder, "pytorch_model.bin"))
  assert os.path.exists(os.path.join(folder, "2_Dense", "pytorch_model.bin"))
  ref = reference.ReferenceInstructor(folder).encode(reference.PAIRS)
  assert np.abs(Instructor.from_pretrained(folder).encode(reference.PAIRS) - ref).max() <= 1e-5


def test_flax_hf_round_trip_is_exact(relu_dir):
  f = hf.read_folder(relu_dir)
  params = hf.to_flax(f.state, f.config, f.dense)
  state, dense = hf.from_flax(params, f.config)
  assert set(state) == set(f.state)
  for k in state:
    np.testing.assert_array_equal(state[k], f.state[k])
  np.testing.assert_array_equal(dense, f.dense)


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_errors_name_the_tensor(relu_dir, tmp_path):
  from safetensors.numpy import load_file, save_file
  bad = _copy(relu_dir, tmp_path / "shape")
  st = load_file(os.path.join(bad, "model.safetensors"))
  st["encoder.block.1.layer.0.SelfAttention.q.weight"] = np.zeros((3, 3), np.float32)
  save_file(st, os.path.join(bad, "model.safetensors"))
  with pytest.raises(hf.CheckpointError, match=r"encoder\.block\.1\.layer\.0\.SelfAttention\.q\.weight"):
    Instructor.from_pretrained(bad)

  bad = _copy(relu_dir, tmp_path / "unknown")
  st = load_file(os.path.join(bad, "model.safetensors"))
  st["encoder.block.0.layer.2.Mystery.weight"] = np.zeros((3,), np.float32)
  save_file(st, os.path.join(bad, "model.safetensors"))
  with pytest.raises(hf.CheckpointError, match="Mystery"):
    Instructor.from_pretrained(bad)

  bad = _copy(relu_dir, tmp_path / "missing")
  st = load_file(os.path.join(bad, "model.safetensors"))
  del st["encoder.final_layer_norm.weight"]
  save_file(st, os.path.join(bad, "model.safetensors"))
  with pytest.raises(hf.CheckpointError, match="final_layer_norm"):
    Instructor.from_pretrained(bad)

  bad = _copy(relu_dir, tmp_path / "dense")
  from safetensors.numpy import save_file as save
  save({"linear.weight": np.zeros((24, 7), np.float32)}, os.path.join(bad, "2_Dense", "model.safetensors"))
  with pytest.raises(hf.CheckpointError, match="linear.weight"):
    Instructor.from_pretrained(bad)


def test_missing_folder_offline_message(tmp_path):
  with pytest.raises(ValueError, match="not a local folder.*hub"):
    Instructor.from_pretrained("nobody/does-not-exist-instructor")
  (tmp_path / "f").write_text("x")
  with pytest.raises(ValueError, match="found a file"):
    Instructor.from_pretrained(str(tmp_path / "f"))


def test_packed_rows_equal_unpacked(relu_dir):
  """Several short inputs share a 128-token row (segment-masked attention, per-segment pooling): same embeddings."""
  from instructor_jax.data.packing import best_fit_decreasing
  model = Instructor.from_pretrained(relu_dir)
  lengths = [len(e.ids) for e in model.tokenizer.encode(reference.PAIRS)]
  short = sorted([i for i, n in enumerate(lengths) if n <= 128], key=lambda i: -lengths[i])
  rows = [[short[j] for j in r] for r in best_fit_decreasing([lengths[i] for i in short], 128, max_segments=16)]
  assert sorted(i for r in rows for i in r) == sorted(short)
  assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
  assert len(rows) < len(short) / 3  # really packed
  packed = model.encode(reference.PAIRS, batch_size=8, pack=True)
  unpacked = model.encode(reference.PAIRS, batch_size=8, pack=False)
  assert np.abs(packed - unpacked).max() <= 1e-6
