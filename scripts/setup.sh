#!/usr/bin/env bash
# Create .venv and install every FashionBox part (editable) and the dev tools, pinned by constraints.txt.
# Idempotent: a second run only reinstalls when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}

# The python-backend stub of the wheel's tritonserver links the system libpython3.11
# (docs/FIELD_NOTES.md); install it when missing and we are allowed to.
if ! ldconfig -p 2>/dev/null | grep -q 'libpython3\.11\.so\.1\.0'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing libpython3.11 for the Triton python backend ..."
        apt-get update -qq && apt-get install -y -qq libpython3.11 >/dev/null
    else
        echo "warning: libpython3.11.so.1.0 not found; the Triton python backend will not start" >&2
    fi
fi

# The client README's shell examples are run by a test and use jq.
if ! command -v jq >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq jq >/dev/null
fi

# The catalog's browser test drives Debian's headless Chromium through its chromedriver (Selenium);
# Playwright's own browser download does not work here (docs/FIELD_NOTES.md).
if ! { command -v chromium && command -v chromedriver; } >/dev/null && [ "$(id -u)" = 0 ] \
        && command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver for the catalog's browser test ..."
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.fashionbox-installed
digest=$(cat pyproject.toml constraints.txt requirements-dev.txt ./*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # torch is pinned to 2.13.0 (a local CPU wheel); the constraints keep pip from pulling CUDA builds.
    .venv/bin/python -m pip install -q -c constraints.txt -r requirements-dev.txt
    # Ultralytics (tests/benchmarks of the ultralytics family only) without its declared dependencies:
    # they pull torchvision, which does not load against this CPU torch, and opencv-python; what it
    # needs is in requirements-dev.txt (docs/FIELD_NOTES.md).
    .venv/bin/python -m pip install -q -c constraints.txt --no-deps ultralytics
    echo "$digest" > "$stamp"
fi
