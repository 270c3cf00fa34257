#!/usr/bin/env bash
# The client installs beside today's stacks: build the fashionbox-client wheel, install it into two
# fresh venvs, one with the oldest releases its pyproject allows and one with the newest of every
# dependency, and run the client's unit, schema and integration tests in each against a real Triton
# serving the test ensemble (started from .venv, which has the server parts). Also lints the schema
# (scripts/proto_lint.sh). Fails when any test fails.
#
#   ./scripts/client_compat.sh            # venvs in a temporary folder, removed at the end
#   CLIENT_COMPAT_DIR=/tmp/cc ./scripts/client_compat.sh   # keep the venvs (re-created each run)
#
# pip downloads are cached (~/.cache/pip); a warm run takes about a minute and a half on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
# The floor of every range in client/pyproject.toml.
OLDEST=(numpy==1.24.0 protobuf==4.21.1 "tritonclient[grpc]==2.50.0" grpcio==1.66.1 pillow==10.0.0)
# Whatever is newest; the majors are checked below so a resolver that backs off is noticed.
NEWEST=("numpy>=2" "protobuf>=6" "tritonclient[grpc]" grpcio pillow)
TESTS=(tests/test_client_unit.py tests/test_client_async_unit.py tests/test_client_masks.py tests/test_proto.py
       tests/test_client_integration.py)

started=$SECONDS
if [ -n "${CLIENT_COMPAT_DIR:-}" ]; then
    work=$CLIENT_COMPAT_DIR
    rm -rf "$work"
    mkdir -p "$work"
else
    work=$(mktemp -d -t fashionbox-client-compat.XXXXXX)
fi
server_pid=
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ -z "${CLIENT_COMPAT_DIR:-}" ]; then
        rm -rf "$work"
    fi
}
trap cleanup EXIT

step() { printf '\n== %s (%ds)\n' "$1" $((SECONDS - started)); }

step "schema: buf lint and breaking"
./scripts/proto_lint.sh

step "server: the client test ensemble, from .venv"
.venv/bin/python tests/client_serve.py --folder "$work/served" >"$work/server.log" 2>&1 &
server_pid=$!

step "wheel: fashionbox-client"
# From a clean copy: setuptools' build/ folder in the checkout may hold files deleted since.
mkdir -p "$work/src"
tar -C client --exclude=build --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$work/src" -xf -
.venv/bin/python -m build --wheel --outdir "$work/dist" "$work/src" >"$work/build.log"
wheel=$(ls "$work"/dist/fashionbox_client-*.whl)
echo "$(basename "$wheel")"

make_venv() {  # name, requirements...
    local name=$1
    shift
    "$PYTHON" -m venv "$work/$name"
    "$work/$name/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel" pytest "$@"
}

step "venvs: oldest and newest (in parallel)"
make_venv oldest "${OLDEST[@]}" >"$work/oldest.log" 2>&1 &
oldest_pid=$!
make_venv newest "${NEWEST[@]}" >"$work/newest.log" 2>&1 &
newest_pid=$!
failed=0
wait "$oldest_pid" || { echo "installing the oldest set failed:"; cat "$work/oldest.log"; failed=1; }
wait "$newest_pid" || { echo "installing the newest set failed:"; cat "$work/newest.log"; failed=1; }
[ "$failed" = 0 ] || exit 1

step "server: waiting until ready"
for _ in $(seq 1 240); do
    [ -f "$work/served/url" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "the server exited:"; cat "$work/server.log"; exit 1
    fi
    sleep 0.5
done
[ -f "$work/served/url" ] || { echo "the server was not ready after 120 s:"; cat "$work/server.log"; exit 1; }
url=$(cat "$work/served/url")
echo "serving at $url"

report() {  # venv
    "$1/bin/python" - <<'PY'
import importlib.metadata as md
import importlib.util
import platform

from google.protobuf.internal import api_implementation

import fashionbox.client

names = ["fashionbox-client", "numpy", "protobuf", "tritonclient", "grpcio", "pillow", "pytest"]
print(f"python {platform.python_version()}: " + ", ".join(f"{n} {md.version(n)}" for n in names)
      + f" (protobuf implementation: {api_implementation.Type()})")
assert "site-packages" in fashionbox.client.__file__, f"the client comes from {fashionbox.client.__file__}"
server_parts = [p for p in ("core", "server", "converter", "models", "commands")
                if importlib.util.find_spec(f"fashionbox.{p}") is not None]
assert not server_parts, f"server parts installed beside the client: {server_parts}"
PY
}

status=0
for name in oldest newest; do
    step "tests: $name"
    venv=$work/$name
    report "$venv"
    if [ "$name" = newest ]; then
        "$venv/bin/python" -c 'import numpy, google.protobuf as p
assert numpy.__version__.startswith("2."), numpy.__version__
assert p.__version__.startswith("6."), p.__version__'
    fi
    # --noconftest: tests/conftest.py starts embedded servers and imports the server parts.
    FASHIONBOX_CLIENT_TEST_URL=$url "$venv/bin/python" -m pytest -q -p no:cacheprovider --noconftest \
        "${TESTS[@]}" || status=1
    # The committed schema module once more on protobuf's pure-Python implementation (the other runtime).
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python "$venv/bin/python" -m pytest -q -p no:cacheprovider --noconftest \
        tests/test_proto.py || status=1
done

step "done"
if [ "$status" != 0 ]; then
    echo "client tests failed in a venv above (server log: $work/server.log)"
fi
exit "$status"
