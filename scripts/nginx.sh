#!/usr/bin/env bash
# Installs Debian's nginx when it is missing, for the test that puts a real
# nginx in front of two edges (cmd/edge/nginx_test.go, docs/nginx.conf).
# Idempotent; used by `make test`. The test starts its own nginx on loopback
# ports with a private prefix and stops it; nothing here starts a service
# (on a Debian host with systemd, the package's own nginx.service may start
# on :80: `systemctl disable --now nginx` if you do not want it).
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "nginx: installing Debian's nginx" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)
"$nginx" -v 2>&1 | sed 's/^/nginx: /' >&2
