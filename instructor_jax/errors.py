"""User errors: bad input, config or state the user can fix. Every CLI prints them as one line and exits 2.

``python -m instructor_jax.*`` entry points print ``error: MESSAGE`` (the message names the file and line, the
config key, or the path) and exit with status 2 for a ``UserError``; the traceback appears only with ``--debug`` or
``INSTRUCTOR_JAX_DEBUG=1``. Any other exception is an internal error and keeps its traceback.
"""
from __future__ import annotations

import os
import sys


class UserError(Exception):
  """Base class of the errors a user can fix (see the module docstring)."""


class DataError(UserError, ValueError):
  """Training data that cannot be used as it is (too many invalid records, no task left, data changed)."""


def debug_enabled(argv=None) -> bool:
  argv = sys.argv if argv is None else argv
  return os.environ.get("INSTRUCTOR_JAX_DEBUG", "") not in ("", "0") or "--debug" in argv


def one_line(e: BaseException) -> str:
  text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
  return text or type(e).__name__


def report(e: BaseException) -> int:
  """Prints ``error: ...`` for a user error and returns the exit status 2."""
  print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
  return 2


def run(main, argv=None) -> int:
  """``main(argv)`` with user errors reported as one line (exit 2), unless debugging."""
  args = sys.argv[1:] if argv is None else list(argv)
  debug = debug_enabled(args)
  if "--debug" in args:
    args = [a for a in args if a != "--debug"]
  try:
    return main(args)
  except (UserError, FileNotFoundError) as e:
    if debug:
      raise
    return report(e)
