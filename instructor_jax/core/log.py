"""The one logger: status lines of every stage go through ``log.info`` / ``log.warn`` (stderr, flushed).

On a multi-host run only process 0 speaks unless ``all_hosts=True``; JAX is never imported for that, so the data
tools stay light. Metrics go to ``metrics.jsonl`` and tensorboard (``training/metrics.py``), not here.
"""
from __future__ import annotations

import sys


def _is_main_process() -> bool:
  jax = sys.modules.get("jax")
  if jax is None:
    return True
  try:
    return jax.process_index() == 0
  except Exception:  # backend not initialised yet: say it
    return True


def info(message: str, all_hosts: bool = False) -> None:
  if all_hosts or _is_main_process():
    print(message, file=sys.stderr, flush=True)


def warn(message: str, all_hosts: bool = False) -> None:
  info(f"warning: {message}", all_hosts=all_hosts)
