#!/usr/bin/env bash
# Create .venv (if needed) with the pinned environment and the engine installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.uxnet-installed
if [ ! -f "$stamp" ] || [ requirements/test-lock.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements/test-lock.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps liver-ct-segmentation-package==1.6.0
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  touch "$stamp"
fi
