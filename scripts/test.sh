#!/usr/bin/env bash
# The test command: lint, byte-compile the Slicer module files, then pytest. Used by ./clara test and .ci/run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/.venv/bin:$PATH"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
echo "== ruff"
ruff check .
echo "== byte-compile Slicer modules"
mods=$(ls -d Clara*/ Testing 2>/dev/null || true)
if [ -n "$mods" ]; then python -m compileall -q $mods; fi
echo "== pytest"
python -m pytest "$@"
