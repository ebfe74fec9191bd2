#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every worker, jax.distributed.initialize() auto-detects the
# slice (process count, coordinator); process 0 logs, writes metrics.jsonl / tensorboard and the tokenizer copy.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=gs://my-bucket/runs/base \
#     scripts/launch_tpu_pod.sh configs/instructor_base.py:v4-32 \
#     --config.data.source=prepared --config.data.prepared=gs://my-bucket/medi-prepared [--config.key=value ...]
#
# WORKDIR is a Cloud Storage path (gs://BUCKET/...; a local path works on one host only). No shared file system is
# needed: orbax / tensorstore write each host's shards to gs:// and process 0 commits the step; the workdir lock is
# a conditional create, so a second launch on a live run is refused. Credentials come from the TPU VM's service
# account (it needs storage read/write on the bucket). Prepare the data once from any machine with
# `python -m instructor_jax.data prepare --config CONFIG --out gs://my-bucket/medi-prepared`; each host keeps a local
# copy of the store (~/.cache/instructor_jax, or INSTRUCTOR_JAX_CACHE). Rerunning the same command resumes from the
# latest complete checkpoint; TPU maintenance (SIGTERM) saves and exits 0, so rerun after it.
# Setup (once): REPO_URL=... SETUP=1 scripts/launch_tpu_pod.sh ...  clones the repo and installs requirements.
set -euo pipefail
CONFIG=${1:?usage: launch_tpu_pod.sh CONFIG[:variant] [--config.key=value ...]}
shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (gs://BUCKET/PATH)}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO_DIR=${REPO_DIR:-instructor_jax}
EXTRA=$(printf ' %q' "$@")

if [[ "${SETUP:-0}" == 1 ]]; then
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="
    set -e; [ -d $REPO_DIR ] || git clone ${REPO_URL:?set REPO_URL} $REPO_DIR; cd $REPO_DIR
    python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]==0.10.2'"
fi

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="
  cd $REPO_DIR && .venv/bin/python -m instructor_jax.train --config $CONFIG --workdir $WORKDIR --distributed $EXTRA \
    2>&1 | tee -a \$HOME/train_\$(hostname).log"
