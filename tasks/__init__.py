"""Dataset registrations for instructor_jax.

* ``tasks.medi``: one seqio Task per MEDI dataset plus a Mixture (``register_medi``), the shared tokenising
  preprocessor and ``MediFeatureConverter``.
* ``tasks.medi_tfds``: the TFDS builder that converts a MEDI file into sharded TFRecords (one split per task).

Importing ``tasks`` itself imports neither TensorFlow nor seqio; import the submodules when needed.
"""
