#!/usr/bin/env bash
# Set up the browser test (tests/test_browser.py): Chromium from apt (no browser downloads work
# on closed networks), node >= 20 for playwright-core, and the locked driver package.
# Idempotent: apt runs only when something is missing; npm ci reinstalls the lock.
set -euo pipefail
cd "$(dirname "$0")"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
    || { echo "tests/browser needs node >= 20 (playwright-core 1.65); found node $(node --version)" >&2; exit 1; }
npm ci --no-audit --no-fund --loglevel=error
