"""seqio / TFDS registrations, thin: the code lives in ``instructor_jax.data``.

* ``tasks.medi``: importing it registers the ``medi`` Mixture when ``MEDI_PATH`` / ``MEDI_TFDS_DIR`` is set
  (``instructor_jax.data.seqio_tasks``).
* ``tasks.medi_tfds``: the TFDS builder ``medi`` (``instructor_jax.data.medi_tfds``).
* ``tasks.pairs_tsv``: the example of a user's own Task (a TSV of query / positive pairs).
"""
