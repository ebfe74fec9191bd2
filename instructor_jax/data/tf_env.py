"""TensorFlow's environment for the input pipeline: quiet on hosts without an NVIDIA GPU, and off the accelerators.

Import this module before TensorFlow: on a host without an NVIDIA GPU it sets ``TF_CPP_MIN_LOG_LEVEL=3`` (unless
set), because TF's import reports ``failed call to cuInit`` as an error there, which is noise on a CPU or TPU host.
Errors of the input pipeline still reach Python as exceptions.
"""
import glob
import os

if not glob.glob("/dev/nvidia[0-9]*"):
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def hide_gpus_from_tf() -> None:
  """Keeps TensorFlow (seqio / TFDS input pipelines) off the accelerators JAX uses.

  TF grabs most of every visible GPU's memory at start-up; the input pipeline only needs the CPU. Must run before
  TF executes its first op, so the task modules call it on import.
  """
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices: too late to change, nothing else to do
    pass
