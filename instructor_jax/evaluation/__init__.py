"""Evaluation with MTEB (``python -m instructor_jax.eval``): ``readers`` (offline file formats), ``tasks`` (our task
classes on mteb's abstract tasks, data injection), ``local`` (folder -> task), ``model`` (loading, identity),
``encoder`` (instructions, embedding cache, the mteb encoder and its ModelMeta)."""
