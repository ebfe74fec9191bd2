"""Offline evaluation helpers for ``python -m instructor_jax.eval --data-dir``: local task formats (``local``)."""
