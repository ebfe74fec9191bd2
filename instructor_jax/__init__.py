"""instructor_jax: INSTRUCTOR instruction-conditioned text embeddings in JAX/Flax (TPU-first)."""
from instructor_jax.data.tokenization import Tokenizer, instruction_length, join_instruction

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
