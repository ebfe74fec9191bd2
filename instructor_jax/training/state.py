"""The model and its training state: ``build_model`` (random, pretrained folder or checkpoint), AdamW, shardings.

- ``build_model(config)`` -> ``ModelSpec``: ``InstructorModel`` (T5 or BERT) and, unless random init, its host
  parameters, from ``config.model.init_checkpoint`` (a workdir), ``config.model.init_from`` (any folder
  ``Instructor.from_pretrained`` loads) or the HF-style ``config.model.t5`` / ``config.model.bert`` dict.
- ``make_optimizer(config)``: AdamW with linear warmup then linear decay to 0 (HF ``linear``), optional clipping.
- ``state_shardings``: the abstract state ``{'params', 'opt_state', 'rng', 'step'}`` and its ``NamedSharding`` tree
  from the model's logical axis names and the mesh's rules; ``create_state`` puts pretrained parameters onto those
  shardings or compiles random init straight onto them.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from instructor_jax.storage import checkpoints
from instructor_jax.models import hf
from instructor_jax.training import sharding
from instructor_jax.models.bert import BertConfig
from instructor_jax.models.embedder import InstructorModel
from instructor_jax.models.t5 import T5Config
from instructor_jax.data.tokenization import T5_VOCAB

ASSETS_VOCAB = T5_VOCAB


@dataclasses.dataclass
class ModelSpec:
  model: InstructorModel
  params: Any            # host numpy tree (pretrained) or None (random init)
  tokenizer_dir: str
  max_seq_length: int | None = None

  def meta(self) -> dict:
    """What ``checkpoints.restore_params`` returns as ``meta`` (besides step / config): the backbone-tagged HF
    config (``backbone``, ``model_config``, and ``t5_config`` for T5) and the embedding head."""
    return dict(**checkpoints.backbone_meta(self.model.config.to_hf()), out_features=self.model.out_features,
                normalize=self.model.normalize, pad_id=self.model.pad_id, max_seq_length=self.max_seq_length,
                tokenizer_dir=checkpoints.TOKENIZER_SUBDIR)


def _dtype(name):
  return jnp.dtype(name) if isinstance(name, str) else name


def build_model(config, load_weights: bool = True) -> ModelSpec:
  """The model and (unless random init or ``load_weights=False``) its host parameters.

  The backbone (T5 or BERT) comes from the checkpoint's meta (``init_checkpoint``), the folder's ``config.json``
  (``init_from``, e.g. GTR or all-MiniLM-L6-v2), or, for random init, ``config.model.backbone`` (``"t5"``, the
  default: HF-style ``config.model.t5`` dict; ``"bert"``: ``config.model.bert`` dict with HF ``BertConfig`` fields
  and ``config.model.tokenizer_dir`` naming a BERT tokenizer folder). ``load_weights=False`` (``--compile_only``)
  with ``init_from`` takes the shapes from ``config.model.t5`` without reading the folder when the backbone is
  ``t5``; with ``backbone="bert"`` the folder is read.
  """
  mc = config.model
  overrides = dict(dtype=_dtype(mc.get("dtype", "float32")), param_dtype=_dtype(mc.get("param_dtype", "float32")),
                   remat=mc.get("remat", "none"))
  if mc.get("dropout_rate", None) is not None:
    overrides["dropout_rate"] = float(mc.dropout_rate)
  if mc.get("attention", None):  # "xla" | "cudnn" (T5Config.attention; BERT has xla only)
    overrides["attention"] = mc.attention
  params, max_len = None, None
  if mc.get("init_checkpoint", ""):
    restored, meta = checkpoints.restore_params(mc.init_checkpoint)
    params = restored if load_weights else None  # compile_only: meta only
    cfg = hf.match_params(hf.config_from_hf(checkpoints.model_config(meta), **overrides), restored)
    out_features, normalize, pad_id = meta["out_features"], meta["normalize"], meta.get("pad_id", 0)
    tok_dir, max_len = meta["tokenizer_dir"], meta.get("max_seq_length")
  elif mc.get("init_from", "") and (load_weights or mc.get("backbone", "t5") != "t5" or not mc.get("t5", None)):
    from instructor_jax.models import embedder
    folder = hf.read_folder(embedder._resolve(mc.init_from))
    cfg = hf.with_overrides(folder.config, **overrides)
    out_features = None if folder.dense is None else int(folder.dense.shape[0])
    normalize, pad_id, tok_dir, max_len = folder.normalize, 0, folder.model_dir, folder.max_seq_length
    if load_weights:
      params = hf.to_flax(folder.state, cfg, folder.dense, dtype=np.dtype(cfg.param_dtype))
  elif mc.get("backbone", "t5") == "bert":
    cfg = BertConfig.from_hf(dict(mc.bert), **overrides)
    out_features, normalize, pad_id = mc.get("out_features", None), mc.get("normalize", True), 0
    tok_dir = mc.get("tokenizer_dir", "")
    if not tok_dir:
      raise ValueError("config.model.tokenizer_dir: a random-init BERT needs the folder of a BERT (WordPiece) "
                       "tokenizer; the bundled default vocabulary is T5's")
  elif mc.get("backbone", "t5") == "t5":
    cfg = T5Config.from_hf(dict(mc.t5), **overrides)
    out_features, normalize, pad_id = mc.get("out_features", None), mc.get("normalize", True), 0
    tok_dir = mc.get("tokenizer_dir", "") or ASSETS_VOCAB
  else:
    raise ValueError(f"config.model.backbone must be t5 or bert, got {mc.backbone!r}")
  model = InstructorModel(cfg, out_features=out_features, normalize=normalize, pad_id=pad_id)
  return ModelSpec(model, params, tok_dir, max_len)


def init_variables(model: InstructorModel, rng, config):
  """Boxed (logically partitioned) trainable tree ``{'model': params[, 'log_temperature']}``."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  tokens = tokens.at[:, 0].set(1)
  trainable = {"model": model.init({"params": rng}, tokens, jnp.zeros((1,), jnp.int32))["params"]}
  if config.loss.get("learnable_temperature", False):
    trainable["log_temperature"] = jnp.log(jnp.float32(config.loss.temperature))
  return trainable


def make_optimizer(config):
  """AdamW with linear warmup (``warmup_ratio``) then linear decay to 0 (HF ``linear`` schedule), clipping."""
  oc = config.optim
  total = int(config.num_train_steps)
  warmup = int(math.ceil(oc.get("warmup_ratio", 0.0) * total)) if oc.get("warmup_steps", None) is None \
      else int(oc.warmup_steps)
  lr = float(oc.learning_rate)
  if oc.get("schedule", "linear") == "constant":
    schedule = optax.constant_schedule(lr)
  else:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.linear_schedule(lr, 0.0, max(total - warmup, 1))],
        [warmup])
  parts = []
  if oc.get("grad_clip_norm", 0.0):
    parts.append(optax.clip_by_global_norm(float(oc.grad_clip_norm)))
  parts.append(optax.adamw(schedule, b1=oc.get("b1", 0.9), b2=oc.get("b2", 0.999), eps=oc.get("eps", 1e-8),
                           weight_decay=float(oc.get("weight_decay", 0.0))))
  return optax.chain(*parts), schedule


# ----------------------------------------------------------------------------------------------------------------
# Putting it together
# ----------------------------------------------------------------------------------------------------------------
def state_shardings(model, tx, config, mesh, rules):
  """Abstract (ShapeDtypeStruct) state and its shardings, from the model's logical axis names."""
  boxed = jax.eval_shape(functools.partial(init_variables, model, config=config), jax.random.PRNGKey(0))
  boxed_opt = jax.eval_shape(tx.init, boxed)
  params_sh = sharding.logical_shardings(mesh, boxed, rules)
  opt_sh = sharding.logical_shardings(mesh, boxed_opt, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shardings = dict(params=params_sh, opt_state=opt_sh, rng=replicated, step=replicated)
  abstract = dict(params=nn.unbox(boxed), opt_state=nn.unbox(boxed_opt),
                  rng=jax.eval_shape(lambda: jax.random.PRNGKey(0)), step=jax.ShapeDtypeStruct((), jnp.int32))
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return abstract, shardings


def _put_global(x: np.ndarray, sh):
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])


def create_state(spec: ModelSpec, tx, config, abstract, shardings):
  """Fresh state: pretrained params put onto their shardings, or random init compiled straight onto them."""
  rng = jax.random.PRNGKey(int(config.seed))
  init_rng, train_rng = jax.random.split(rng)
  if spec.params is not None:
    trainable = {"model": spec.params}
    if config.loss.get("learnable_temperature", False):
      trainable["log_temperature"] = np.log(np.float32(config.loss.temperature))
    want = jax.tree.structure(abstract["params"])
    if jax.tree.structure(trainable) != want:
      raise ValueError(f"loaded parameters do not match the model: {jax.tree.structure(trainable)} vs {want}")
    params = jax.tree.map(lambda x, a: _put_global(np.asarray(x, a.dtype), a.sharding), trainable,
                          abstract["params"])
  else:
    params = jax.jit(lambda r: nn.unbox(init_variables(spec.model, r, config)),
                     out_shardings=shardings["params"])(init_rng)
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
  return dict(params=params, opt_state=opt_state, rng=_put_global(np.asarray(train_rng), shardings["rng"]),
              step=_put_global(np.int32(0), shardings["step"]))


def bytes_per_device(abstract) -> int:
  total = 0
  for a in jax.tree.leaves(abstract):
    shard = a.sharding.shard_shape(a.shape)
    total += math.prod(shard) * jnp.dtype(a.dtype).itemsize
  return total
