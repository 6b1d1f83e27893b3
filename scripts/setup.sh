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
# Debian's chromium renders report.html in tests/report/test_html.py (skipped without it); never fatal.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; } \
    || echo "setup: could not install chromium; the headless report test will be skipped" >&2
fi
