#!/usr/bin/env bash
# Prepares the local services stompgate needs, idempotently: installs
# RabbitMQ and PostgreSQL when missing (Debian), starts them when stopped,
# enables the STOMP/management/Prometheus (and, for benchmarks, Web-STOMP)
# plugins and imports rabbitmq/definitions.json. Safe to run any number of
# times; used by `make run`, `make test` and `.ci/run`.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'services: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_pkgs=()
command -v rabbitmq-server >/dev/null 2>&1 || need_pkgs+=(rabbitmq-server)
command -v pg_ctlcluster >/dev/null 2>&1 || need_pkgs+=(postgresql)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

wait_port() { # host port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "port $1:$2 did not open within $3s"; return 1
}

# PostgreSQL
pgver=$(ls /etc/postgresql | sort -V | tail -n1)
if ! pg_lsclusters -h 2>/dev/null | awk '{print $4}' | grep -q online; then
  log "starting PostgreSQL $pgver"
  as_root pg_ctlcluster --skip-systemctl-redirect "$pgver" main start || true
fi
wait_port 127.0.0.1 5432 30
# trust auth on loopback is how this machine kind ships; on a fresh Debian
# install make the postgres role reachable over TCP without a password.
if ! psql -h 127.0.0.1 -U postgres -Atc 'select 1' >/dev/null 2>&1; then
  hba=/etc/postgresql/$pgver/main/pg_hba.conf
  log "enabling trust auth for loopback in $hba (development machine)"
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect "$pgver" main reload
fi

# RabbitMQ
if ! as_root rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached
  for ((i = 0; i < 120; i++)); do
    as_root rabbitmqctl -q status >/dev/null 2>&1 && break
    sleep 0.5
  done
fi
as_root rabbitmqctl -q await_startup >/dev/null
want=(rabbitmq_stomp rabbitmq_management rabbitmq_prometheus rabbitmq_web_stomp)
enabled=$(as_root rabbitmq-plugins -q list -e -m 2>/dev/null || true)
missing=()
for p in "${want[@]}"; do grep -qx "$p" <<<"$enabled" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "enabling plugins ${missing[*]}"
  as_root rabbitmq-plugins -q enable "${missing[@]}" >/dev/null
fi
wait_port 127.0.0.1 5672 60
wait_port 127.0.0.1 61613 60
wait_port 127.0.0.1 15672 60
wait_port 127.0.0.1 15674 60
as_root rabbitmqctl -q import_definitions "$PWD/rabbitmq/definitions.json" >/dev/null
# import is asynchronous: wait until the vhost exists.
for ((i = 0; i < 100; i++)); do
  as_root rabbitmqctl -q list_vhosts 2>/dev/null | grep -qx stompgate && break
  sleep 0.1
done
# The local guest (loopback only) may use the product vhost for
# development; definitions.json itself grants nothing to guest.
as_root rabbitmqctl -q set_permissions -p stompgate guest '.*' '.*' '.*' >/dev/null
log "RabbitMQ and PostgreSQL ready"
