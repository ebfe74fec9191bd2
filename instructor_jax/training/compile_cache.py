"""The persistent XLA compilation cache: a restarted run loads its step variants instead of compiling them again.

``enable(config.compilation_cache_dir)`` points ``jax_compilation_cache_dir`` at a folder that survives restarts
(local or ``gs://``, which JAX reads and writes through etils itself) and caches every entry, however quick its
compile (XLA:CPU compiles take seconds, under JAX's default one-second floor for small ones). The first thing to
know: the key covers the HLO, the devices, the XLA flags and the jax / jaxlib versions, so a stale entry is never
used, only missed; what a warm start still pays is tracing and lowering (BENCHMARKS.md, "vs sentence-transformers").

Which folder: the config value; ``""`` = ``$JAX_COMPILATION_CACHE_DIR`` if JAX was already given one (the tests give
every subprocess a shared one), else ``$INSTRUCTOR_JAX_COMPILATION_CACHE``, else ``~/.cache/instructor_jax/jax``;
``"none"`` turns it off.
"""
from __future__ import annotations

import os

import jax

from instructor_jax.core import log

ENV = "INSTRUCTOR_JAX_COMPILATION_CACHE"
DEFAULT = os.path.join("~", ".cache", "instructor_jax", "jax")


def resolve(setting: str) -> str:
  """The folder ``setting`` names (``""`` for off); see the module docstring for the defaults."""
  setting = str(setting or "").strip()
  if setting.lower() == "none":
    return ""
  if not setting:
    setting = (jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")
               or os.environ.get(ENV) or DEFAULT)
  return setting if setting.startswith("gs://") else os.path.abspath(os.path.expanduser(setting))


def enable(setting: str) -> str:
  """Turns the cache on at ``resolve(setting)`` (before the first compile); returns the folder, ``""`` if off.

  A local folder that cannot be created leaves the cache off with a warning: a cache is never a reason to fail.
  """
  folder = resolve(setting)
  if not folder:
    jax.config.update("jax_enable_compilation_cache", False)
    return ""
  if not folder.startswith("gs://"):
    try:
      os.makedirs(folder, exist_ok=True)
    except OSError as e:
      log.warn("compilation cache off: cannot create %s (%s)", folder, e)
      jax.config.update("jax_enable_compilation_cache", False)
      return ""
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder
