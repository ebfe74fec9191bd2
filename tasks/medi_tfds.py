"""The TFDS builder ``medi`` (``instructor_jax.data.medi_tfds``): one split per MEDI task."""
from instructor_jax.data.medi_tfds import *  # noqa: F401,F403
