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


def _text(message: str, args) -> str:
  return message % args if args else message


def info(message: str, *args, all_hosts: bool = False) -> None:
  """A status line (``message % args`` when args are given, as Python's logging formats)."""
  if all_hosts or _is_main_process():
    print(_text(message, args), file=sys.stderr, flush=True)


def warn(message: str, *args, all_hosts: bool = False) -> None:
  info(f"warning: {_text(message, args)}", all_hosts=all_hosts)


warning = warn
