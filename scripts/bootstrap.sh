#!/usr/bin/env bash
# Create .venv and install claraseg with its dev extras. Idempotent: re-runs only when pyproject changes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.claraseg-installed
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch: keep a CUDA build if one is installed; otherwise the CPU build 2.13.0 (a plain `torch` would
# pull a multi-GB CUDA build on CPU-only machines).
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "bootstrap: GPU found, installing CUDA torch"
    .venv/bin/python -m pip install -q "torch>=2.2"
  else
    echo "bootstrap: installing CPU torch==2.13.0"
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
fi
echo "bootstrap: installing claraseg[dev] (editable)"
.venv/bin/python -m pip install -q -e ".[dev]"
# MONAI Label's own pip client for the compatibility tests (tests/server/test_monailabel.py), without its
# dependencies: they would replace torch, monai, numpy and fastapi. Its client needs only requests.
.venv/bin/python -m pip install -q --no-deps "monailabel==0.8.5"
echo "$want" > "$stamp"
