"""One exception per meaning. A ``UserError`` is something the user can fix; every command prints it as one line
and exits 2 (``core/cli.py``). Any other exception is an internal error and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
  """Base class of the errors a user can fix: bad input, config or state."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work (named as ``config.KEY``)."""


class DataError(UserError, ValueError):
  """Training or evaluation data that cannot be used as it is (names the file and line, or the task)."""


class CheckpointError(UserError, ValueError):
  """A checkpoint or model folder that cannot be read as asked (missing, damaged, changed, wrong shapes)."""


class ExportError(UserError, ValueError):
  """An export that cannot be written as asked (exists, not writable, unsupported layout)."""


class VerificationError(RuntimeError):
  """A written export does not reproduce the source model: an internal error, never a user's."""
