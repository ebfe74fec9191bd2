"""The ``medi`` seqio Tasks and Mixture (``instructor_jax.data.seqio_tasks``): importing registers them from MEDI_PATH."""
from instructor_jax.data.seqio_tasks import *  # noqa: F401,F403
from instructor_jax.data.seqio_tasks import register_medi  # noqa: F401
