#!/usr/bin/env bash
# Lint, type-check and run the whole test suite (integration tests start a real Triton).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m mypy
.venv/bin/lint-imports
.venv/bin/python -m fashionbox.contract.protogen --check
# A missing server-side dependency fails the run here instead of skipping its tests (tests/require_all.py).
# The slowest tests at the end of the report: where the suite's time goes.
FASHIONBOX_REQUIRE_ALL=${FASHIONBOX_REQUIRE_ALL:-1} .venv/bin/python -m pytest -q --durations=25 "$@"
./scripts/client_compat.sh
