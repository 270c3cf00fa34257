#!/usr/bin/env bash
# Lint, type-check and run the whole test suite (integration tests start a real Triton).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python scripts/typecheck.py
.venv/bin/python -m fashionbox.protogen --check
.venv/bin/python -m pytest -q "$@"
