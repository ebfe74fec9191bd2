#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command on every worker, jax.distributed.initialize() auto-detects the
# slice (process count, coordinator); process 0 logs, writes metrics.jsonl / tensorboard and the tokenizer copy.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=/mnt/shared/runs/base \
#     scripts/launch_tpu_pod.sh configs/instructor_base.py:v4-32 [--config.key=value ...]
#
# WORKDIR must be one filesystem that every worker sees (Filestore/NFS, or a gcsfuse mount of a bucket): orbax
# writes each host's shards there and process 0 finalises the step. Rerunning the same command resumes from the
# latest complete checkpoint; TPU maintenance (SIGTERM) saves and exits 0, so rerun after it.
# Setup (once): REPO_URL=... SETUP=1 scripts/launch_tpu_pod.sh ...  clones the repo and installs requirements.
set -euo pipefail
CONFIG=${1:?usage: launch_tpu_pod.sh CONFIG[:variant] [--config.key=value ...]}
shift
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (shared by all workers)}"
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
