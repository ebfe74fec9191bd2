"""INSTRUCTOR-xl: the paper's recipe from sentence-transformers/gtr-t5-xl (see instructor_base.py for the recipe
and the variants: "", v4-32, v5e-64, gpu8).

    python -m instructor_jax.train --config configs/instructor_xl.py:v4-32 --workdir DIR
    python -m instructor_jax.train --config configs/instructor_xl.py:v5e-64 --workdir /tmp/c --compile_only
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "instructor_base_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "instructor_base.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(variant: str = ""):
  return _base.make_config("xl", variant)
