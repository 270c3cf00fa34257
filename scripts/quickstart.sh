#!/usr/bin/env bash
# Fresh machine -> served detections: install, build the model repository from the shipped
# weights, start the embedded Triton, detect sample images, short load test, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/fashionbox demo "$@"
