#!/usr/bin/env bash
# Installs what tests/browser.rs drives (idempotent, quiet): Debian's chromium (only when missing,
# and only where apt-get can run as root; elsewhere the test says it skipped and why), and npm
# playwright-core + @sentry/browser into target/sdk/browser. Never `playwright install`: the test
# drives the system chromium, so no browser is ever downloaded.
# @sentry/browser 11 ships only ES modules on npm (its ready-made bundles live on Sentry's CDN), so
# esbuild bundles it here into sentry.bundle.js, an IIFE defining `window.Sentry` as the CDN's does.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dest="${SDK_DIR:-$root/target/sdk}/browser"
mkdir -p "$dest"

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "installing chromium with apt-get failed: tests/browser.rs will skip" >&2
  else
    echo "chromium missing and apt-get cannot run here: tests/browser.rs will skip" >&2
  fi
fi

if [ ! -d "$dest/node_modules/playwright-core" ] || [ ! -d "$dest/node_modules/@sentry/browser" ] \
  || [ ! -x "$dest/node_modules/.bin/esbuild" ]; then
  (cd "$dest" && { [ -f package.json ] || echo '{"name":"browser-peers","private":true}' > package.json; })
  (cd "$dest" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund \
    'playwright-core@1.65.1' '@sentry/browser@11.12.0' 'esbuild@0.28.2' >/dev/null)
  rm -f "$dest/sentry.bundle.js"
fi
if [ ! -s "$dest/sentry.bundle.js" ]; then
  (cd "$dest" && echo "export * from '@sentry/browser';" > entry.mjs \
    && node_modules/.bin/esbuild entry.mjs --bundle --minify --format=iife --global-name=Sentry \
      --platform=browser --target=es2020 --log-level=warning --outfile=sentry.bundle.js.tmp \
    && mv sentry.bundle.js.tmp sentry.bundle.js)
fi
echo "browser peers ready in $dest"
