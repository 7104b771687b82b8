#!/usr/bin/env bash
# Runs the whole test suite headless (pytest-xvfb starts a virtual X server for the napari tests).
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
