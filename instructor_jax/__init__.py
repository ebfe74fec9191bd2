"""instructor_jax: INSTRUCTOR instruction-conditioned text embeddings in JAX/Flax (TPU-first)."""
import os

# gs:// goes through etils.epath's fsspec backend (gcsfs) in every process, ours and orbax's: epath would otherwise
# pick TensorFlow's GCS client whenever TF is installed, which imports TF and ignores STORAGE_EMULATOR_HOST. Set
# before anything uses epath (it decides once per process); EPATH_USE_TF=true in the environment keeps TF's client.
os.environ.setdefault("EPATH_USE_TF", "false")

from instructor_jax.data.tokenization import Tokenizer, instruction_length, join_instruction  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import instructor_jax` should not pull in JAX for the data tools
  if name in ("Instructor", "InstructorModel"):
    from instructor_jax.models import embedder
    return getattr(embedder, name)
  if name == "load":  # the one model loader: models/loader.py
    from instructor_jax.models.loader import load
    return load
  if name == "T5Config":
    from instructor_jax.models.t5 import T5Config
    return T5Config
  raise AttributeError(name)


__all__ = ["Instructor", "InstructorModel", "T5Config", "load", "Tokenizer", "instruction_length", "join_instruction"]
