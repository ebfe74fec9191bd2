"""Matryoshka embeddings (issue 25): the loss against numpy, the config checks, gradient caching == the plain step
with MRL on, 1 vs 8 fake devices (``@slow``: this file run as a script, ``python tests/test_matryoshka.py
sharded``), and the truncated embeddings of the export (sentence-transformers ``truncate_dim``), ``encode`` and
``eval --truncate-dim``."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

if __name__ == "__main__":  # the 8-device check: XLA_FLAGS before jax starts
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructor_jax.core import errors
from instructor_jax.training import losses, run_config

HERE = os.path.dirname(os.path.abspath(__file__))
DIMS, WEIGHTS = (32, 16, 8), (1.0, 0.5, 2.0)


# ----------------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------------
def _unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _logsumexp(x):
  m = x.max()
  return m + np.log(np.sum(np.exp(x - m)))


def numpy_mrl(q, p, n, tau, variant, dims, weights):
  """Sum over d of w_d * (INSTRUCTOR / GTR loss of the first d dimensions, re-normalised), in float64, row by row;
  also the per-d losses and top-1 accuracies."""
  total, per = 0.0, {}
  for d, w in zip(dims, weights):
    qd, pd, nd = (_unit(np.asarray(x, np.float64)[..., :d]) for x in (q, p, n.reshape(-1, n.shape[-1])))
    b = len(q)
    first, second, hits = [], [], 0
    for i in range(b):
      others = [pd[j] for j in range(b) if j != i] if variant == "gtr" else []
      scores = np.array([qd[i] @ c for c in [pd[i], *others, *nd]]) / tau
      first.append(_logsumexp(scores) - scores[0])
      hits += int(scores[0] > scores[1:].max(initial=-np.inf))
      back = np.array([pd[i] @ qd[i]] + [pd[i] @ qd[j] for j in range(b) if j != i]) / tau
      second.append(_logsumexp(back) - back[0])
    loss = np.mean(first) + np.mean(second)
    per[d] = (loss, hits / b)
    total += w * loss
  return total, per


@pytest.mark.parametrize("variant", losses.VARIANTS)
@pytest.mark.parametrize("weights", [(), WEIGHTS])
@pytest.mark.parametrize("b,num_neg,tau", [(6, 2, 0.05), (4, 0, 0.5)])
def test_loss_matches_numpy(variant, weights, b, num_neg, tau):
  rng = np.random.default_rng(b + num_neg)
  q = rng.normal(size=(b, 32)).astype(np.float32) * 3
  p = (q + rng.normal(size=(b, 32)) * 0.8).astype(np.float32)
  n = rng.normal(size=(b, num_neg, 32)).astype(np.float32)
  loss, m = jax.jit(losses.matryoshka_loss, static_argnums=(4, 5, 6))(q, p, n, tau, variant, DIMS, weights)
  want, per = numpy_mrl(q, p, n, tau, variant, DIMS, weights or (1.0,) * len(DIMS))
  np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-5)
  np.testing.assert_allclose(float(m["loss_q"]) + float(m["loss_p"]), want, rtol=2e-5, atol=1e-5)
  for d, (loss_d, acc_d) in per.items():
    np.testing.assert_allclose(float(m[f"loss_d{d}"]), loss_d, rtol=2e-5, atol=1e-5)
    assert float(m[f"accuracy_d{d}"]) == pytest.approx(acc_d)
  assert float(m["accuracy"]) == float(m["accuracy_d32"])


def test_learnable_temperature_gradient_matches_numpy():
  """The temperature's gradient through the summed loss (learnable temperature) vs a central difference."""
  rng = np.random.default_rng(0)
  q, p, n = (rng.normal(size=s).astype(np.float32) for s in ((5, 32), (5, 32), (5, 1, 32)))
  f = lambda log_t: losses.matryoshka_loss(q, p, n, jnp.exp(log_t), "instructor", DIMS, WEIGHTS)[0]
  g = float(jax.grad(f)(jnp.float32(np.log(0.3))))
  eps = 1e-3
  fd = (numpy_mrl(q, p, n, np.exp(np.log(0.3) + eps), "instructor", DIMS, WEIGHTS)[0]
        - numpy_mrl(q, p, n, np.exp(np.log(0.3) - eps), "instructor", DIMS, WEIGHTS)[0]) / (2 * eps)
  np.testing.assert_allclose(g, fd, rtol=1e-3)


def test_no_dims_is_the_plain_loss():
  rng = np.random.default_rng(1)
  q, p, n = (rng.normal(size=s).astype(np.float32) for s in ((4, 16), (4, 16), (4, 2, 16)))
  a = losses.matryoshka_loss(q, p, n, 0.1, "gtr")
  b = losses.contrastive_loss(q, p, n, 0.1, "gtr")
  assert float(a[0]) == float(b[0]) and set(a[1]) == set(b[1])
  # the full width as the only dimension is the plain loss too
  c = losses.matryoshka_loss(q, p, n, 0.1, "gtr", (16,))
  np.testing.assert_allclose(float(c[0]), float(b[0]), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Config checks
# ----------------------------------------------------------------------------------------------------------------
def _config(**loss):
  import tiny_config
  c = tiny_config.get_config()
  for k, v in loss.items():
    c.loss[k] = v
  return c


@pytest.mark.parametrize("loss,match", [
    (dict(matryoshka_dims=(32, 0)), ">= 1"),
    (dict(matryoshka_dims=(16, 16)), "distinct"),
    (dict(matryoshka_dims=(64, 16)), "larger than the model's embedding size 32"),
    (dict(matryoshka_dims=(32, 16), matryoshka_weights=(1.0,)), "one per dimension"),
    (dict(matryoshka_dims=(32, 16), matryoshka_weights=(1.0, -1.0)), "positive"),
])
def test_bad_config_is_one_line(loss, match):
  with pytest.raises(errors.ConfigError, match=match) as e:
    run_config.validate(_config(**loss))
  assert "\n" not in str(e.value) and "matryoshka" in str(e.value)


def test_good_config_passes():
  run_config.validate(_config(matryoshka_dims=(32, 16, 8), matryoshka_weights=(1.0, 1.0, 0.5)))


# ----------------------------------------------------------------------------------------------------------------
# Gradient caching == the plain step, with MRL on (one device; 8 devices below)
# ----------------------------------------------------------------------------------------------------------------
def grads(config, mesh):
  """Gradients and metrics of the first synthetic batch through the trainer's own setup (jitted, sharded)."""
  from instructor_jax.data import stream as data
  from instructor_jax.training import sharding, trainer
  s = trainer.setup(config, mesh)
  state = trainer.create_state(s.spec, s.tx, config, s.abstract, s.shardings)
  stream = data.make_stream(config, "", s.spec.model.config.vocab_size, s.packer)
  batch = sharding.global_batch(mesh, stream.get(0))
  fn = jax.jit(s.grad_fn, in_shardings=(s.shardings["params"], s.batch_shardings, None),
               out_shardings=(s.shardings["params"], None))
  g, m = fn(state["params"], batch, jax.random.PRNGKey(3))
  return jax.tree.map(np.asarray, g), {k: float(v) for k, v in m.items()}


def rel_l2(a, b):
  num = math.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))
  return num / math.sqrt(sum(float(np.sum(y ** 2)) for y in jax.tree.leaves(b)))


def mrl_config(backbone="t5", pack=True):
  import tiny_config
  from instructor_jax.training import state
  c = tiny_config.get_config()
  c.global_batch_size = 16
  c.model.dropout_rate = 0.0
  c.loss.learnable_temperature = True
  c.loss.matryoshka_dims, c.loss.matryoshka_weights = DIMS, WEIGHTS
  c.data.pack = pack
  if backbone == "bert":
    c.model.backbone, c.model.tokenizer_dir = "bert", state.ASSETS_VOCAB  # not read: synthetic data
    c.model.bert = dict(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
  return c


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_grad_cache_matches_plain_step(pack):
  from instructor_jax.training import sharding
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  c = mrl_config(pack=pack)
  g_ref, m_ref = grads(c, mesh)
  c.grad_cache_chunk = 4
  g, m = grads(c, mesh)
  assert rel_l2(g, g_ref) < 1e-5
  assert set(g) == {"model", "log_temperature"}
  for key in ("loss", "loss_d32", "loss_d16", "loss_d8", "accuracy_d8"):
    np.testing.assert_allclose(m[key], m_ref[key], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["loss"], sum(w * m_ref[f"loss_d{d}"] for d, w in zip(DIMS, WEIGHTS)), rtol=1e-5)


def sharded_main() -> dict:
  """1 vs 8 fake devices with MRL on: data, data x fsdp and data x tensor meshes, plain and cached, packed and
  padded, T5 and BERT; every gradient against the plain step on one device."""
  from instructor_jax.training import sharding
  devs = jax.devices()
  out = {"devices": len(devs)}
  for backbone in ("t5", "bert"):
    for pack in (False, True):
      c = mrl_config(backbone, pack)
      g_ref, m_ref = grads(c, sharding.make_mesh((1, 1, 1), devs[:1]))
      for shape in ((8, 1, 1), (2, 4, 1), (2, 1, 4)):
        for chunk in (0, 8):
          c.grad_cache_chunk = chunk
          g, m = grads(c, sharding.make_mesh(shape, devs))
          out[f"{backbone}_{'packed' if pack else 'padded'}_{'x'.join(map(str, shape))}_chunk{chunk}"] = dict(
              rel_l2=rel_l2(g, g_ref),
              loss_rel=max(abs(m[k] - m_ref[k]) / abs(m_ref[k]) for k in m_ref if k.startswith("loss")))
  return out


@pytest.mark.slow
def test_one_vs_eight_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "sharded"], cwd=os.path.dirname(HERE), env=env,
                        capture_output=True, text=True, timeout=1800)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-4000:]
  out = json.loads(lines[-1][len("RESULT "):])
  assert out.pop("devices") == 8
  assert len(out) == 24
  for name, r in out.items():
    assert r["rel_l2"] < 1e-4 and r["loss_rel"] < 1e-5, (name, r)


# ----------------------------------------------------------------------------------------------------------------
# Export (sentence-transformers truncate_dim), encode and eval at a truncated dimension
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  """A tiny random INSTRUCTOR checkpoint (24-dim Dense head) exported with Matryoshka dimensions (24, 16, 8)."""
  from reference import make_checkpoint
  from instructor_jax.export.to_hf import export_model
  root = tmp_path_factory.mktemp("mrl")
  src = make_checkpoint(str(root / "src"), "relu", layout="instructor", seed=2)
  return export_model(str(root / "export"), model=src, matryoshka_dims=(24, 16, 8), verify=False)


def test_export_records_dims_and_sentence_transformers_truncates_as_we_do(export_dir):
  """``SentenceTransformer(DIR, truncate_dim=k)`` gives our k-dim embeddings. sentence-transformers truncates
  after its Normalize module, so its truncated vectors are ours times ``|x[:k]| / |x|``: equal to ours (1e-5) with
  ``normalize_embeddings=True`` (applied after the truncation) or once normalised; same cosine similarities."""
  from sentence_transformers import SentenceTransformer
  from reference import PAIRS
  from instructor_jax.models.embedder import Instructor
  with open(os.path.join(export_dir, "config_sentence_transformers.json")) as f:
    assert json.load(f)["matryoshka_dims"] == [24, 16, 8]
  with open(os.path.join(export_dir, "README.md")) as f:
    card = f.read()
  assert "Matryoshka loss at 24, 16, 8 dimensions" in card and "truncate_dim=8" in card
  ours = Instructor.from_pretrained(export_dir).encode(PAIRS, truncate_dim=16)
  assert ours.shape == (len(PAIRS), 16)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
  st = SentenceTransformer(export_dir, truncate_dim=16, device="cpu")
  # pairs with stripped, non-empty texts and instructions of more than one token (a one-token instruction is the
  # documented INSTRUCTOR / sentence-transformers difference, card.ONE_TOKEN_NOTE)
  usable = [i for i, p in enumerate(PAIRS) if not isinstance(p, str) and p[1].strip() and p[1] == p[1].strip()
            and len(st.tokenizer(p[0].strip(), add_special_tokens=False)["input_ids"]) > 1]
  assert len(usable) >= 3
  for ins in sorted({PAIRS[i][0] for i in usable}):
    idx = [i for i in usable if PAIRS[i][0] == ins]
    texts = [PAIRS[i][1] for i in idx]
    unit = st.encode(texts, prompt=ins, normalize_embeddings=True)
    raw = st.encode(texts, prompt=ins)
    assert unit.shape == (len(idx), 16)
    np.testing.assert_allclose(unit, ours[idx], atol=1e-5)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), ours[idx], atol=1e-5)


def test_truncate_dim_out_of_range_is_one_line(export_dir):
  from instructor_jax.models.embedder import Instructor
  model = Instructor.from_pretrained(export_dir)
  for k in (0, 25):
    with pytest.raises(errors.UserError, match="truncate_dim") as e:
      model.encode(["a"], truncate_dim=k)
    assert "\n" not in str(e.value)


def test_encode_cli_truncate_dim(export_dir, tmp_path):
  from instructor_jax import encode
  src = tmp_path / "in.jsonl"
  src.write_text('{"instruction": "Represent the sentence: ", "text": "a cat sat"}\n{"text": "hello"}\n')
  assert encode.main(["--model", export_dir, "--input", str(src), "--output", str(tmp_path / "e.npy"),
                      "--truncate-dim", "8"]) == 0
  e = np.load(tmp_path / "e.npy")
  assert e.shape == (2, 8)
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
  assert encode.main(["--model", export_dir, "--input", str(src), "--output", str(tmp_path / "f.npy"),
                      "--truncate-dim", "99"]) == 2
  assert not (tmp_path / "f.npy").exists()


def test_eval_one_result_set_per_dimension(export_dir, tmp_path):
  import mteb
  from instructor_jax import eval as eval_cli
  out = str(tmp_path / "eval")
  data = os.path.join(HERE, "fixtures", "eval", "stsbenchmark")
  assert eval_cli.main(["--model", export_dir, "--data-dir", data, "--output", out, "--truncate-dim", "16,8",
                        "--truncate-dim", "24", "--max-length", "64", "--model-name", "org/mrl"]) == 0
  results = mteb.ResultCache(out).load_results()
  scores = {m.model_name: m.task_results[0].get_score() for m in results.model_results}
  assert set(scores) == {"org/mrl-d16", "org/mrl-d8", "org/mrl-d24"}
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  assert summary["dims"] == [16, 8, 24]
  assert {(t["task"], t["dim"]) for t in summary["tasks"]} == {("STSBenchmark", d) for d in (16, 8, 24)}
  for t in summary["tasks"]:
    assert t["score"] == pytest.approx(scores[f"org/mrl-d{t['dim']}"], abs=1e-5)  # mteb stores 6 digits
  with open(os.path.join(out, "summary.md")) as f:
    assert "| task | d=16 | d=8 | d=24 |" in f.read()
  assert eval_cli.main(["--model", export_dir, "--data-dir", data, "--output", str(tmp_path / "bad"),
                        "--truncate-dim", "25"]) == 2


if __name__ == "__main__":
  print("RESULT " + json.dumps(sharded_main()), flush=True)
