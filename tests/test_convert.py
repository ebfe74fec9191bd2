"""instructor_jax.convert: HF / sentence-transformers exports (both layouts), self-verification, atomicity and
round trips. Offline: tiny random checkpoints from tests/reference.py."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from instructor_jax.core import errors
from instructor_jax import convert as convert_cli
from instructor_jax.export import folder as folder_lib
from instructor_jax.export import verify as verify_lib
from instructor_jax.export.to_hf import export_folder
from instructor_jax.models import loader
from instructor_jax.models import hf
from instructor_jax.models.embedder import Instructor
from reference import PAIRS, ReferenceInstructor, assert_same_folders, make_checkpoint

MAX_LEN = 512


@pytest.fixture(scope="module")
def src(tmp_path_factory):
  return make_checkpoint(str(tmp_path_factory.mktemp("src") / "instructor"), "relu", layout="instructor", seed=1)


@pytest.fixture(scope="module")
def exports(src, tmp_path_factory):
  """The default and the legacy export of `src`, through the command line."""
  root = tmp_path_factory.mktemp("exports")
  default, legacy = str(root / "st"), str(root / "legacy")
  assert convert_cli.main(["to-hf", "--model", src, "--out", default]) == 0
  assert convert_cli.main(["to-hf", "--model", src, "--out", legacy, "--legacy-instructor"]) == 0
  return default, legacy


@pytest.fixture(scope="module")
def reference(src):
  return ReferenceInstructor(src, max_length=MAX_LEN).encode(PAIRS)


def test_default_layout_files(exports):
  default, _ = exports
  for f in ("config.json", "model.safetensors", "spiece.model", "tokenizer.json", "modules.json",
            "sentence_bert_config.json", "config_sentence_transformers.json", "README.md",
            "1_Pooling/config.json", "2_Dense/config.json", "2_Dense/model.safetensors"):
    assert os.path.exists(os.path.join(default, f)), f
  assert os.path.isdir(os.path.join(default, "3_Normalize"))
  assert json.load(open(os.path.join(default, "config.json")))["architectures"] == ["T5EncoderModel"]
  pooling = json.load(open(os.path.join(default, "1_Pooling", "config.json")))
  assert pooling["include_prompt"] is False and pooling["pooling_mode_mean_tokens"] is True
  from safetensors import safe_open
  with safe_open(os.path.join(default, "2_Dense", "model.safetensors"), "np") as f:
    assert list(f.keys()) == ["linear.weight"] and f.get_tensor("linear.weight").shape == (24, 32)
  card = open(os.path.join(default, "README.md")).read()
  assert "include_prompt" in card and "one-token" in card and "prompt=" in card
  assert oct(os.stat(default).st_mode & 0o777) != oct(0o700)  # not left with mkdtemp's mode


def test_legacy_layout_files(exports):
  _, legacy = exports
  modules = json.load(open(os.path.join(legacy, "modules.json")))
  assert modules[0] == {"idx": 0, "name": "0", "path": "", "type": "InstructorEmbedding.INSTRUCTOR_Transformer"}
  assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense", "3_Normalize"]
  pooling = json.load(open(os.path.join(legacy, "1_Pooling", "config.json")))
  assert "include_prompt" not in pooling  # INSTRUCTOR_Pooling.__init__ rejects it
  assert sorted(os.listdir(os.path.join(legacy, "2_Dense"))) == ["config.json", "pytorch_model.bin"]
  assert json.load(open(os.path.join(legacy, "sentence_bert_config.json"))) == {"max_seq_length": 512,
                                                                                "do_lower_case": False}
  assert set(json.load(open(os.path.join(legacy, "2_Dense", "config.json")))) == {
      "in_features", "out_features", "bias", "activation_function"}


@pytest.mark.parametrize("which", [0, 1], ids=["default", "legacy"])
def test_loaders_agree_on_fixture_pairs(exports, reference, which):
  folder = exports[which]
  ours = Instructor.from_pretrained(folder, max_length=MAX_LEN).encode(PAIRS)
  np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
  torch_ref = ReferenceInstructor(folder, max_length=MAX_LEN).encode(PAIRS)
  np.testing.assert_allclose(torch_ref, reference, atol=1e-5, rtol=0)


def test_sentence_transformers_prompt_matches_except_one_token_instructions(exports, reference):
  default, _ = exports
  st, comparable = verify_lib.sentence_transformers_encode(default, PAIRS, max_length=MAX_LEN)
  np.testing.assert_allclose(st[comparable], reference[comparable], atol=1e-5, rtol=0)
  one_token = [p for p, c in zip(PAIRS, comparable) if not c]
  assert one_token and all(isinstance(p, list) for p in one_token)
  # The documented difference is real: those rows differ.
  assert np.abs(st[~comparable] - reference[~comparable]).max() > 1e-4


@pytest.mark.parametrize("proj,layout", [("relu", "instructor"), ("gated-gelu", "gtr"), ("relu", "t5")])
def test_hf_jax_hf_bit_exact(tmp_path, proj, layout):
  src = make_checkpoint(str(tmp_path / "src"), proj, layout=layout, seed=2)
  m = loader.load(src)
  params, hf_config, normalize, tok = m.params, m.hf_config, m.normalize, m.tokenizer_dir
  out = export_folder(params, hf_config, str(tmp_path / "out"), tokenizer_dir=tok, normalize=normalize,
                              log=lambda *a: None)
  assert_same_folders(src, out)


def test_bf16_params_export_as_fp32_and_half_option(tmp_path, src):
  import jax
  import ml_dtypes
  m = loader.load(src)
  params, hf_config, normalize, tok = m.params, m.hf_config, m.normalize, m.tokenizer_dir
  bf16 = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16), params)
  out = export_folder(bf16, hf_config, str(tmp_path / "fp32"), tokenizer_dir=tok, log=lambda *a: None,
                              verify=False)  # checked bit for bit below
  got = hf.read_folder(out)
  want, _ = hf.from_flax(jax.tree.map(lambda x: np.asarray(x, np.float32), bf16), got.config)
  assert all(got.state[k].dtype == np.float32 and np.array_equal(got.state[k], want[k]) for k in want)
  half = export_folder(params, hf_config, str(tmp_path / "fp16"), tokenizer_dir=tok, dtype="float16",
                               log=lambda *a: None)
  from safetensors import safe_open
  with safe_open(os.path.join(half, "model.safetensors"), "pt") as f:
    assert str(f.get_tensor("shared.weight").dtype) == "torch.float16"


def _tmp_leftovers(parent):
  return [n for n in os.listdir(parent) if ".tmp-" in n or ".old-" in n]


def test_interrupted_export_leaves_nothing(tmp_path, src, monkeypatch):
  m = loader.load(src)
  params, hf_config, normalize, tok = m.params, m.hf_config, m.normalize, m.tokenizer_dir
  real = folder_lib._save_tensors
  calls = []

  def interrupted(*a, **k):
    calls.append(1)
    if len(calls) == 2:  # after model.safetensors, while writing 2_Dense
      raise KeyboardInterrupt
    return real(*a, **k)

  monkeypatch.setattr(folder_lib, "_save_tensors", interrupted)
  with pytest.raises(KeyboardInterrupt):
    export_folder(params, hf_config, str(tmp_path / "out"), tokenizer_dir=tok, log=lambda *a: None)
  assert os.listdir(tmp_path) == []


def test_verification_failure_exits_nonzero_and_keeps_previous(tmp_path, src, monkeypatch, capsys):
  out = str(tmp_path / "out")
  assert convert_cli.main(["to-hf", "--model", src, "--out", out]) == 0
  before = open(os.path.join(out, "model.safetensors"), "rb").read()
  real = folder_lib.write_folder

  def corrupt(folder, state, dense, *a, **k):  # a writer bug: a wrong Dense matrix
    return real(folder, state, dense * 1.01, *a, **k)

  monkeypatch.setattr(folder_lib, "write_folder", corrupt)
  assert convert_cli.main(["to-hf", "--model", src, "--out", out, "--overwrite"]) == 2
  assert "verification failed" in capsys.readouterr().err
  assert open(os.path.join(out, "model.safetensors"), "rb").read() == before
  assert _tmp_leftovers(tmp_path) == []
  # Without --overwrite an existing folder is an error before any work.
  monkeypatch.setattr(folder_lib, "write_folder", real)
  assert convert_cli.main(["to-hf", "--model", src, "--out", out]) == 2


def test_vocab_smaller_than_tokenizer_is_refused(tmp_path):
  src = make_checkpoint(str(tmp_path / "small"), "relu", layout="instructor", vocab_size=512)
  m = loader.load(src)
  params, hf_config, normalize, tok = m.params, m.hf_config, m.normalize, m.tokenizer_dir
  with pytest.raises(errors.CheckpointError, match="vocab_size is 512"):
    export_folder(params, hf_config, str(tmp_path / "out"), tokenizer_dir=tok, log=lambda *a: None)
  assert sorted(os.listdir(tmp_path)) == ["small"]


@pytest.mark.slow
def test_reexport_of_exports(exports, tmp_path, reference):
  """Our exports are valid sources: default -> legacy and legacy -> default keep the embeddings."""
  default, legacy = exports
  a = str(tmp_path / "from_default")
  b = str(tmp_path / "from_legacy")
  assert convert_cli.main(["to-hf", "--model", default, "--out", a, "--legacy-instructor"]) == 0
  assert convert_cli.main(["to-hf", "--model", legacy, "--out", b]) == 0
  for folder in (a, b):
    np.testing.assert_allclose(Instructor.from_pretrained(folder).encode(PAIRS), reference, atol=1e-5, rtol=0)


def test_orbax_round_trip(tmp_path, src):
  """from-hf -> orbax -> to-hf --checkpoint is bit-exact (needs the trainer's checkpoints.py)."""
  checkpoints = pytest.importorskip("instructor_jax.storage.checkpoints")
  if not (hasattr(checkpoints, "save_params") and hasattr(checkpoints, "restore_params")):
    pytest.skip("checkpoints.py has no save_params / restore_params yet")
  work = str(tmp_path / "work")
  assert convert_cli.main(["from-hf", "--model", src, "--out", work]) == 0
  assert convert_cli.main(["from-hf", "--model", src, "--out", work]) == 2  # refuses a workdir with checkpoints
  out = str(tmp_path / "back")
  assert convert_cli.main(["to-hf", "--checkpoint", work, "--out", out]) == 0
  a, b = hf.read_folder(src), hf.read_folder(out)
  for k in a.state:
    assert np.array_equal(a.state[k], b.state[k]), k
  assert np.array_equal(a.dense, b.dense)


LEGACY_SCRIPT = """
import json, sys, numpy as np
from InstructorEmbedding import INSTRUCTOR
pairs = json.load(open(sys.argv[2]))
np.save(sys.argv[3], INSTRUCTOR(sys.argv[1], device="cpu").encode(pairs, batch_size=8))
"""


@pytest.mark.skipif(not os.environ.get("INSTRUCTOR_REFENV"),
                    reason="set INSTRUCTOR_REFENV to a venv with InstructorEmbedding 1.0.1 "
                           "(scripts/requirements-reference.txt) to run")
def test_legacy_export_with_instructor_embedding_1_0_1(exports, reference, tmp_path):
  """Opt-in: the --legacy-instructor folder loads in InstructorEmbedding 1.0.1 / sentence-transformers 2.2.2."""
  import subprocess
  _, legacy = exports
  idx = [i for i, p in enumerate(PAIRS) if isinstance(p, list)]  # 1.0.1 cannot mix strings and pairs in a batch
  json.dump([PAIRS[i] for i in idx], open(tmp_path / "pairs.json", "w"))
  (tmp_path / "run.py").write_text(LEGACY_SCRIPT)
  python = os.path.join(os.environ["INSTRUCTOR_REFENV"], "bin", "python")
  subprocess.run([python, str(tmp_path / "run.py"), legacy, str(tmp_path / "pairs.json"), str(tmp_path / "e.npy")],
                 check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  np.testing.assert_allclose(np.load(tmp_path / "e.npy"), reference[idx], atol=1e-5, rtol=0)
