"""The model and its training state: ``build_model`` (random, pretrained folder or checkpoint), AdamW, shardings.

- ``build_model(config)`` -> ``ModelSpec``: ``InstructorModel`` (T5 or BERT) and, unless random init, its host
  parameters, from ``config.model.init_checkpoint`` (a workdir), ``config.model.init_from`` (any folder
  ``models.loader.load`` reads) or the HF-style ``config.model.t5`` / ``config.model.bert`` dict.
- ``make_optimizer(config)``: AdamW with linear warmup then linear decay to 0 (HF ``linear``), optional clipping.
- ``state_shardings``: the abstract state ``{'params', 'opt_state', 'rng', 'step'}`` and its ``NamedSharding`` tree
  from the model's logical axis names and the mesh's rules; ``create_state`` puts pretrained parameters onto those
  shardings or compiles random init straight onto them.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from instructor_jax.storage import paths
from instructor_jax.core import errors
from instructor_jax.data.tokenization import T5_VOCAB
from instructor_jax.models import loader, registry
from instructor_jax.models.embedder import InstructorModel
from instructor_jax.storage import checkpoints
from instructor_jax.training import sharding

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
  params, max_len, pad_id = None, None, 0
  backbone = mc.get("backbone", "t5")
  if mc.get("init_checkpoint", "") or (
      mc.get("init_from", "") and (load_weights or backbone != "t5" or not mc.get("t5", None))):
    key = "init_checkpoint" if mc.get("init_checkpoint", "") else "init_from"
    src = _load_init(key, mc[key], params_dtype=overrides["param_dtype"] if load_weights else None, **overrides)
    params = src.params if load_weights else None  # compile_only: shapes and meta only
    cfg, out_features, normalize, pad_id = src.config, src.out_features, src.normalize, src.pad_id
    tok_dir, max_len = src.tokenizer_dir, src.max_seq_length
  elif backbone in registry.BACKBONES and mc.get(backbone, None) is not None:
    cfg = registry.get(backbone).Config.from_hf(dict(mc[backbone]), **overrides)
    out_features, normalize = mc.get("out_features", None), mc.get("normalize", True)
    tok_dir = mc.get("tokenizer_dir", "") or (ASSETS_VOCAB if backbone == "t5" else "")
    if not tok_dir:
      raise errors.ConfigError(f"config.model.tokenizer_dir: a random-init {backbone} model needs the folder of its "
                               "tokenizer; the bundled default vocabulary is T5's")
  else:
    raise errors.ConfigError(f"config.model.backbone must be one of {', '.join(registry.BACKBONES)} (with a "
                             f"config.model.<backbone> dict), got {backbone!r}")
  model = InstructorModel(cfg, out_features=out_features, normalize=normalize, pad_id=pad_id)
  return ModelSpec(model, params, tok_dir, max_len)


def _load_init(key: str, path: str, **kw) -> loader.Loaded:
  """``config.model.init_checkpoint`` (a workdir or ``WORKDIR/STEP``) or ``config.model.init_from`` (any folder or
  hub id the loader reads); a missing path is a one-line ``ConfigError`` naming the key."""
  path = os.fspath(path)
  where = f"config.model.{key}: {path}"
  if paths.scheme(path):
    path = paths.check(path, f"config.model.{key}")
  if (key == "init_checkpoint" or loader.looks_local(path) or paths.scheme(path)) and not paths.exists(path):
    raise errors.ConfigError(f"{where}: no such folder")
  if key == "init_checkpoint" and not checkpoints.is_checkpoint(path):
    raise errors.ConfigError(f"{where}: not a training workdir or WORKDIR/STEP (a model folder goes in "
                             "config.model.init_from)")
  try:
    return loader.load(path, **kw)
  except FileNotFoundError as e:
    raise errors.ConfigError(f"{where}: {e.strerror or e}") from None


def init_variables(model: InstructorModel, rng, config):
  """Boxed (logically partitioned) trainable tree ``{'model': params[, 'log_temperature']}``."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  tokens = tokens.at[:, 0].set(1)
  trainable = {"model": model.init({"params": rng}, tokens, jnp.zeros((1,), jnp.int32))["params"]}
  if config.loss.learnable_temperature:
    trainable["log_temperature"] = jnp.log(jnp.float32(config.loss.temperature))
  return trainable


def make_optimizer(config):
  """AdamW with linear warmup (``warmup_ratio``) then linear decay to 0 (HF ``linear`` schedule), clipping."""
  oc = config.optim
  total = int(config.num_train_steps)
  warmup = int(math.ceil(oc.warmup_ratio * total)) if oc.warmup_steps is None else int(oc.warmup_steps)
  lr = float(oc.learning_rate)
  if oc.schedule == "constant":
    schedule = optax.constant_schedule(lr)
  else:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.linear_schedule(lr, 0.0, max(total - warmup, 1))],
        [warmup])
  parts = []
  if oc.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(float(oc.grad_clip_norm)))
  parts.append(optax.adamw(schedule, b1=oc.b1, b2=oc.b2, eps=oc.eps, weight_decay=float(oc.weight_decay)))
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
    if config.loss.learnable_temperature:
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
