#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv from requirements.txt.
# Idempotent: re-installs only when requirements.txt changed. Needs only the package registry (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.requirements.sha256 2>/dev/null || true)" != "$want" ]; then
  # torch first and pinned: on the CPU machines we test on this is the local CPU wheel; an unpinned torch would
  # pull several GB of CUDA packages.
  .venv/bin/pip install -q --disable-pip-version-check "$(grep -E '^torch==' requirements.txt)"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  # The package itself, editable, so `python -m instructor_jax.*` and `import tasks` work from any folder.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > .venv/.requirements.sha256
fi
