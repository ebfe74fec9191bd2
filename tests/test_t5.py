"""The Flax T5 encoder against transformers' PyTorch T5EncoderModel."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from instructor_jax.models import hf
from instructor_jax.models.t5 import T5Config, T5Encoder, relative_position_buckets


def _encoder(folder, **overrides):
  f = hf.read_folder(folder)
  cfg = T5Config.from_hf(f.hf_config, **overrides)
  return cfg, hf.to_flax(f.state, cfg, f.dense)["encoder"]


def _random_batch(rng, batch, length, vocab=32100):
  lengths = rng.integers(1, length + 1, size=batch)
  lengths[0] = length
  tokens = np.zeros((batch, length), np.int32)
  mask = np.zeros((batch, length), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(2, vocab, size=n)
    tokens[i, n - 1] = 1
    mask[i, :n] = 1
  return tokens, mask


def _torch_hidden(folder, tokens, mask):
  import torch
  from transformers import T5EncoderModel
  model = T5EncoderModel.from_pretrained(folder).eval()
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                 attention_mask=torch.tensor(mask)).last_hidden_state.numpy()


@pytest.mark.parametrize("length", [7, 40])
def test_hidden_states_match_transformers(instructor_dir, length):
  cfg, params = _encoder(instructor_dir)
  tokens, mask = _random_batch(np.random.default_rng(length), 5, length)
  ours = np.asarray(T5Encoder(cfg).apply({"params": params}, tokens, mask))
  theirs = _torch_hidden(instructor_dir, tokens, mask)
  valid = mask.astype(bool)
  assert np.abs(ours - theirs)[valid].max() <= 1e-5


def test_lengths_beyond_512(relu_dir):
  """Relative positions: 600 tokens work and match transformers (buckets beyond max_distance saturate)."""
  cfg, params = _encoder(relu_dir)
  tokens, mask = _random_batch(np.random.default_rng(0), 2, 600)
  ours = np.asarray(T5Encoder(cfg).apply({"params": params}, tokens, mask))
  theirs = _torch_hidden(relu_dir, tokens, mask)
  assert np.abs(ours - theirs)[mask.astype(bool)].max() <= 1e-5


def test_relative_position_buckets_equal_transformers():
  import torch
  from transformers.models.t5.modeling_t5 import T5Attention
  for num_buckets, max_distance, length in [(32, 128, 1100), (64, 256, 700), (16, 32, 80)]:
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    theirs = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=num_buckets,
                                                   max_distance=max_distance).numpy()
    np.testing.assert_array_equal(relative_position_buckets(length, length, num_buckets, max_distance), theirs)


def test_bf16_compute_close_to_fp32(relu_dir):
  cfg, params = _encoder(relu_dir)
  cfg16 = T5Config.from_hf(hf.read_folder(relu_dir).hf_config, dtype=jnp.bfloat16)
  tokens, mask = _random_batch(np.random.default_rng(1), 4, 24)
  a = np.asarray(T5Encoder(cfg).apply({"params": params}, tokens, mask))
  b = np.asarray(T5Encoder(cfg16).apply({"params": params}, tokens, mask), np.float32)
  valid = mask.astype(bool)
  cos = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  assert cos[valid].min() >= 0.99


def test_dropout_only_in_training(relu_dir):
  cfg, params = _encoder(relu_dir)
  tokens, mask = _random_batch(np.random.default_rng(2), 2, 16)
  model = T5Encoder(cfg)
  eval1 = model.apply({"params": params}, tokens, mask, deterministic=True)
  eval2 = model.apply({"params": params}, tokens, mask, deterministic=True)
  np.testing.assert_array_equal(eval1, eval2)
  tr1 = model.apply({"params": params}, tokens, mask, deterministic=False, rngs={"dropout": jax.random.key(0)})
  tr2 = model.apply({"params": params}, tokens, mask, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert np.abs(np.asarray(tr1) - np.asarray(tr2)).max() > 1e-3
  assert np.abs(np.asarray(tr1) - np.asarray(eval1)).max() > 1e-3


@pytest.mark.slow
def test_bf16_params_and_remat_run(relu_dir):
  base = hf.read_folder(relu_dir).hf_config
  tokens, mask = _random_batch(np.random.default_rng(3), 2, 16)
  ref_cfg, params = _encoder(relu_dir)
  ref = np.asarray(T5Encoder(ref_cfg).apply({"params": params}, tokens, mask))
  for remat in ("full", "dots"):
    cfg = T5Config.from_hf(base, remat=remat)
    def loss(p):
      return jnp.sum(T5Encoder(cfg).apply({"params": p}, tokens, mask) ** 2)
    def loss_ref(p):
      return jnp.sum(T5Encoder(ref_cfg).apply({"params": p}, tokens, mask) ** 2)
    g, g_ref = jax.grad(loss)(params), jax.grad(loss_ref)(params)
    # remat runs the blocks under lax.scan: the same math, fp32 sums in another order.
    def close(a, b):
      a, b = np.asarray(a), np.asarray(b)
      assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b) + 1e-7, np.linalg.norm(a - b) / np.linalg.norm(b)
    jax.tree.map(close, g, g_ref)
  cfg = T5Config.from_hf(base, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  out = T5Encoder(cfg).apply({"params": p16}, tokens, mask)
  assert out.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(out, np.float32)).all()
  assert np.corrcoef(np.asarray(out, np.float32)[mask.astype(bool)].ravel(), ref[mask.astype(bool)].ravel())[0, 1] > 0.99


def test_every_param_has_logical_axes():
  import flax.linen as nn
  for proj in ("relu", "gated-gelu"):
    cfg = T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=16, num_layers=2, num_heads=2, feed_forward_proj=proj)
    shapes = jax.eval_shape(lambda: T5Encoder(cfg).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32),
                                                         jnp.ones((1, 4), jnp.int32)))
    specs = nn.get_partition_spec(shapes)["params"]
    leaves = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert leaves
    allowed = {"vocab", "embed", "mlp", "heads", "kv", "rel_buckets"}
    for path, spec in leaves:
      assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) > 0, path
      assert set(spec) <= allowed, (path, spec)


def test_random_init_shapes_match_hf_names():
  """A randomly initialised model converts to exactly the tensor names and shapes of HF T5EncoderModel."""
  for proj in ("relu", "gated-gelu"):
    cfg = T5Config(vocab_size=100, d_model=16, d_kv=4, d_ff=32, num_layers=3, num_heads=4, feed_forward_proj=proj)
    params = T5Encoder(cfg).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))
    import flax.linen as nn
    state, _ = hf.from_flax({"encoder": nn.unbox(params)["params"]}, cfg)
    hf.check_state(state, cfg, where="random init")


def test_attention_option_validated():
  with pytest.raises(ValueError, match="attention must be xla|cudnn"):
    T5Config(attention="flash")
  cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, attention="cudnn")
  tokens = jnp.ones((2, 8), jnp.int32)
  with pytest.raises(ValueError, match="needs bf16/fp16 compute"):
    T5Encoder(cfg).init(jax.random.PRNGKey(0), tokens, tokens > 0)


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_saves_memory(remat):
  """XLA's buffer assignment of the gradient: remat must cut activation memory (an unrolled loop of
  ``nn.remat`` blocks did not: XLA hoisted the recomputation and kept every activation, see t5.run_layers)."""
  def temp_bytes(r):
    cfg = T5Config(vocab_size=128, d_model=128, d_kv=32, d_ff=512, num_layers=6, num_heads=4, dropout_rate=0.1,
                   remat=r)
    enc = T5Encoder(cfg)
    tokens = jax.ShapeDtypeStruct((32, 128), jnp.int32)
    params = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32),
                                             jnp.ones((1, 8), jnp.int32))["params"])
    def loss(p, t, key):
      out = enc.apply({"params": p}, t, t > 0, deterministic=False, rngs={"dropout": key})
      return jnp.sum(out.astype(jnp.float32) ** 2)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    return jax.jit(jax.grad(loss)).lower(params, tokens, key).compile().memory_analysis().temp_size_in_bytes
  none, saved = temp_bytes("none"), temp_bytes(remat)
  # Measured (jax 0.10.2, CPU): dots 0.55x and full 0.36x of none (217 / 142 of 397 MB); with threefry dropout masks
  # (flax nn.Dropout) none was 649 MB and dots 0.43x. The bug this guards against kept every activation (~1.0x).
  assert saved < {"dots": 0.65, "full": 0.5}[remat] * none, (remat, saved, none)
