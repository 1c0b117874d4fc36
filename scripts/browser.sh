#!/usr/bin/env bash
# Installs Debian's Chromium for the real-browser e2e tests when it is
# missing (the tests drive /usr/bin/chromium with playwright-core and never
# download a browser). Idempotent; used by `make test` and `.ci/run`.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  echo "browser: installing Debian's chromium" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# The first start after an install builds caches and took longer than the
# tests' 15 s launch timeout here once: start it once now.
timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --dump-dom about:blank >/dev/null 2>&1 || true
