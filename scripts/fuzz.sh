#!/usr/bin/env bash
# Fuzz the decode/preprocess path for a time budget (CI runs a bounded share: tests/test_fuzz_decode.py).
#   ./scripts/fuzz.sh [--seconds 600] [--seed 1] [--max-pixels 64000000] [--crash-dir artifacts/fuzz]
# Exits 1 on the first input that is neither served nor refused with InvalidImageError (saved to --crash-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python tests/fuzz_decode.py "$@"
