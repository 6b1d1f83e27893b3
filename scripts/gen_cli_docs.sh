#!/usr/bin/env bash
# Regenerate docs/cli.md from the Typer app (typer's own docs generator).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" -m typer tokensurgeon.cli utils docs --name tokensurgeon --output docs/cli.md
