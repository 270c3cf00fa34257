#!/usr/bin/env bash
# Lint the result schema (client/fashionbox/v1/*.proto) with buf and check it for breaking changes
# against the last released schema. buf comes from npm, pinned, installed under .venv/ (git-ignored);
# node and npm are installed with apt-get where they are missing and we may.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=1.75.0
# The schema as released: the last commit in which it lived in proto/ (it moved to client/ in the
# next one; unchanged since it was written). Breaking changes are checked against this file; move the
# reference (commit and subdir) forward only together with a release of the schema.
SCHEMA_REFERENCE=da762a1ddb4bda64dcd651ca205fb75aec05dc4b
SCHEMA_REFERENCE_DIR=proto

if ! command -v npm >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing nodejs and npm for buf ..."
        apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
    else
        echo "error: npm is needed to install buf (apt-get install nodejs npm)" >&2
        exit 2
    fi
fi

prefix=.venv/buf-$BUF_VERSION
buf=$prefix/node_modules/.bin/buf
if [ ! -x "$buf" ] || [ "$("$buf" --version)" != "$BUF_VERSION" ]; then
    npm install --silent --no-audit --no-fund --prefix "$prefix" "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi

# A shallow CI checkout may lack the reference commit: fetch just that one.
if ! git cat-file -e "$SCHEMA_REFERENCE^{commit}" 2>/dev/null; then
    git fetch --quiet --depth=1 origin "$SCHEMA_REFERENCE"
fi

"$buf" lint
"$buf" breaking client --against ".git#ref=$SCHEMA_REFERENCE,subdir=$SCHEMA_REFERENCE_DIR"
echo "buf $BUF_VERSION: schema lint clean, no breaking change against ${SCHEMA_REFERENCE:0:12}:$SCHEMA_REFERENCE_DIR"
