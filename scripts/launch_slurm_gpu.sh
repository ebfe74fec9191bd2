#!/usr/bin/env bash
# Train on GPUs: one process per node, each driving all its GPUs; jax.distributed.initialize() reads the SLURM
# environment (coordinator = first node, process id = SLURM_PROCID).
#
#   sbatch --nodes=2 scripts/launch_slurm_gpu.sh configs/instructor_xl.py:gpu8 /shared/runs/xl [--config.key=value]
#   # one 8-GPU host without SLURM:
#   python -m instructor_jax.train --config configs/instructor_large.py:gpu8 --workdir /data/runs/large
#
# The workdir must be on a filesystem every node sees. mesh_shape's -1 entry absorbs the total GPU count
# (nodes x 8); global_batch_size must divide by it. Requeue-friendly: SIGTERM (preemption / time limit with
# --signal) saves a checkpoint and exits 0; resubmitting resumes from the latest complete one.
#SBATCH --job-name=instructor-jax
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=instructor-jax-%j.out
set -euo pipefail
CONFIG=${1:?usage: launch_slurm_gpu.sh CONFIG[:variant] WORKDIR [--config.key=value ...]}
WORKDIR=${2:?usage: launch_slurm_gpu.sh CONFIG[:variant] WORKDIR [--config.key=value ...]}
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PY=${PY:-.venv/bin/python}   # needs jax[cuda12]==0.10.2 installed in this environment
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
DIST=()
if [[ "${SLURM_NNODES:-1}" -gt 1 ]]; then DIST=(--distributed); fi
# `exec` so SIGTERM reaches python (srun forwards it to every task).
exec srun --kill-on-bad-exit=1 "$PY" -m instructor_jax.train --config "$CONFIG" --workdir "$WORKDIR" "${DIST[@]}" "$@"
