#!/usr/bin/env bash
# Set up (idempotent) and run every test: the suite, then the architecture matrix (its own step:
# ~35 tiny transplants). With arguments, runs just `pytest ARGS`. Skips are listed (-rs), never silent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report test renders report.html in Debian's chromium; the deploy test runs llama.cpp's converter.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
    || echo "test: apt-get could not install chromium (above); tests/report/test_html.py will be skipped" >&2
fi
export TOKENSURGEON_LLAMA_CPP="${TOKENSURGEON_LLAMA_CPP:-$(bash scripts/llama_cpp_converter.sh)}"
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q -rs "$@"
fi
.venv/bin/python -m pytest -q -rs -m "not matrix"
.venv/bin/python -m pytest -q -rs -m matrix
