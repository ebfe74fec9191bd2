"""bench/quality.py's pieces on a tiny random BERT (the real all-MiniLM-L6-v2 run is in QUALITY.md).

The PyTorch re-statement of the fine-tuning must be the same training problem as the JAX trainer: same loss, same
batches in the same order, same schedule. Checked here with dropout off: the per-step losses of a few steps agree.
"""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import reference
from bench import quality
from instructor_jax.training import losses
from instructor_jax.training import finish, trainer as train
from instructor_jax.models.embedder import Instructor

from helpers import SMALL as MEDI, losses as losses_of


@pytest.mark.parametrize("num_neg", [1, 2])
def test_torch_loss_equals_jax_loss(num_neg):
  rng = np.random.default_rng(num_neg)
  b, d = 6, 8
  q, p = rng.normal(size=(b, d)), rng.normal(size=(b, d))
  n = rng.normal(size=(b, num_neg, d))
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  ref, _ = losses.contrastive_loss(jnp.asarray(q), jnp.asarray(p), jnp.asarray(n), 0.05)
  got = quality.instructor_loss_torch(torch.tensor(unit(q)), torch.tensor(unit(p)),
                                      torch.tensor(unit(n.reshape(b * num_neg, d))), 0.05)
  np.testing.assert_allclose(float(got), float(ref), rtol=1e-6)


def test_noinstr_and_unseen_filters(tmp_path):
  src = tmp_path / "derived.json"
  recs = [{"query": ["Represent the claim;", f"q{i}"], "pos": ["Represent the abstract;", f"p{i}"],
           "neg": ["Represent the abstract;", f"n{i}"], "task_name": name}
          for i, name in enumerate(["scifact_train_x", "banking77_train_y", "stsb_train_z", "sick_train_w"])]
  src.write_text(json.dumps(recs))
  assert quality.make_noinstr(str(src), str(tmp_path / "noinstr.json")) == 4
  out = json.loads((tmp_path / "noinstr.json").read_text())
  assert all(r[s][0] == "" and r[s][1] == orig[s][1] for r, orig in zip(out, recs) for s in ("query", "pos", "neg"))
  kept = [r for r in quality._read_records(str(src)) if not r["task_name"].startswith(quality.UNSEEN)]
  assert [r["task_name"] for r in kept] == ["stsb_train_z", "sick_train_w"]


@pytest.mark.slow
def test_torch_restatement_matches_jax_trainer(tmp_path):
  """Dropout off, 3 steps from the same tiny BERT on the same MEDI batches: per-step losses agree, and both exports
  load with Instructor.from_pretrained."""
  model_dir = reference.make_bert_checkpoint(str(tmp_path / "bert"), hidden_dropout_prob=0.0,
                                             attention_probs_dropout_prob=0.0)
  steps = 3
  c = quality._config().get_config()
  c.model.init_from = model_dir
  c.model.dropout_rate = 0.0
  c.data.medi_path = MEDI
  c.num_train_steps = steps
  c.global_batch_size = 4
  c.checkpoint_every_steps = steps
  c.log_every_steps = 1
  c.optim.learning_rate = 1e-3  # large enough that later steps see visibly updated weights
  c.async_checkpoints = False
  workdir = str(tmp_path / "jax")
  train.train(c, workdir)
  finish.finish(c, workdir)
  jax_losses = losses_of(workdir)
  assert len(jax_losses) == steps

  out = str(tmp_path / "q")
  export, _ = quality.train_torch("torch", MEDI, model_dir, out, steps, 0, dropout=0.0, config=c)
  torch_losses = json.load(open(os.path.join(out, "runs", "torch", "losses.json")))
  np.testing.assert_allclose(torch_losses, jax_losses, rtol=2e-4)
  assert torch_losses[0] != torch_losses[-1]  # the weights did move
  for folder in (os.path.join(workdir, "export"), export):
    emb = Instructor.from_pretrained(folder).encode([["Represent the sentence;", "a b c"], "d e"])
    assert emb.shape[0] == 2 and np.all(np.isfinite(emb))
