#!/usr/bin/env bash
# Create .venv with tokensurgeon and its test tools. Installs torch==2.13.0 first when the venv has
# no torch, so pip takes the local CPU wheel instead of downloading a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
