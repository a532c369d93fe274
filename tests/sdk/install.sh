#!/usr/bin/env bash
# Installs the real SDKs the end-to-end tests drive, into target/sdk (idempotent, cached).
# Python: sentry-sdk and raven in a venv. Node: @sentry/node. Browser: chromium, playwright-core and
# @sentry/browser (tests/sdk/browser.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dest="${SDK_DIR:-$root/target/sdk}"
mkdir -p "$dest"

if [ ! -x "$dest/venv/bin/python" ] || ! "$dest/venv/bin/python" -c 'import sentry_sdk, raven' 2>/dev/null; then
  python3 -m venv "$dest/venv"
  "$dest/venv/bin/pip" install --quiet --disable-pip-version-check \
    'sentry-sdk==2.75.0' 'raven==6.10.0'
fi

if [ ! -d "$dest/node/node_modules/@sentry/node" ]; then
  mkdir -p "$dest/node"
  (cd "$dest/node" && [ -f package.json ] || echo '{"name":"sdk-peers","private":true}' > package.json)
  (cd "$dest/node" && npm install --silent --no-audit --no-fund '@sentry/node@11.12.0' >/dev/null)
fi
bash "$here/browser.sh"
echo "sdk peers ready in $dest"
