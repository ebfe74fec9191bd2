"""The one command-line wrapper: every ``python -m instructor_jax.X`` runs its ``main`` through ``cli.run``.

What a user sees: a user error (``UserError``, a missing or unwritable path, a full disk, a second Ctrl-C) is one
line ``error: ...`` on stderr and exit status 2 (130 for an interrupt); ``--debug`` on any command, or
``INSTRUCTOR_JAX_DEBUG=1``, shows the traceback instead. Any other exception is an internal error and keeps its
traceback. ``| head`` closing the pipe is not an error.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable, Optional, Sequence

from instructor_jax.core.errors import UserError

# OSErrors that say something about the user's paths or machine, not about our code.
USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR,
               errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ENOTEMPTY, errno.EXDEV, errno.ELOOP}


def debug_enabled(argv: Optional[Sequence[str]] = None) -> bool:
  argv = sys.argv if argv is None else argv
  return os.environ.get("INSTRUCTOR_JAX_DEBUG", "") not in ("", "0") or "--debug" in argv


def one_line(e: BaseException) -> str:
  text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
  return text or type(e).__name__


def describe(e: BaseException) -> str:
  """The one line a user sees for ``e``."""
  if isinstance(e, OSError) and not isinstance(e, UserError) and e.strerror:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror}"
  return one_line(e)


def is_user_error(e: BaseException) -> bool:
  if isinstance(e, UserError):
    return True
  if isinstance(e, UnicodeError):  # a path or argument that is not valid in the file system's encoding
    return True
  return isinstance(e, OSError) and e.errno in USER_ERRNOS


def report(e: BaseException) -> int:
  """Prints ``error: ...`` for a user error and returns the exit status 2."""
  print(f"error: {describe(e)}", file=sys.stderr, flush=True)
  return 2


def run(main: Callable[[list], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
  """``main(args)`` (``--debug`` removed from ``args``) with user errors as one line (exit 2), unless debugging."""
  args = list(sys.argv[1:] if argv is None else argv)
  debug = debug_enabled(args)
  args = [a for a in args if a != "--debug"]
  try:
    return int(main(args) or 0)
  except KeyboardInterrupt:
    if debug:
      raise
    print("error: interrupted", file=sys.stderr, flush=True)
    return 130
  except BrokenPipeError:  # `| head`
    try:
      sys.stdout = open(os.devnull, "w")  # no second error while Python flushes stdout at exit
    except OSError:
      pass
    return 0
  except BaseException as e:  # SystemExit passes through below
    if isinstance(e, SystemExit) or debug or not is_user_error(e):
      raise
    return report(e)


def main_of(main: Callable[[list], Optional[int]]) -> None:
  """``if __name__ == "__main__": cli.main_of(main)``: runs ``main`` through ``run`` and exits with its status."""
  sys.exit(run(main))
