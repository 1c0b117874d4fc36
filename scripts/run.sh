#!/usr/bin/env bash
# `make run`: starts the persister in the background and the edge in the
# foreground on :8080 with a development HS256 secret, after printing the demo
# page URL and a dev token. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${EDGE_JWT_HS256_SECRET:=dev-only-secret-change-me-0123456789abcdef}"
export EDGE_JWT_HS256_SECRET
export EDGE_DATABASE_URL="${EDGE_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/stompgate?sslmode=disable}"
listen="${EDGE_LISTEN:-:8080}"
port="${listen##*:}"
# The demo chat's scopes: read rooms (and their /api/history), write them only
# through the journal (/app/), and presence on amq.direct (not archived).
scopes="subscribe:/topic/room.* send:/app/room.* subscribe:/exchange/amq.direct/presence.* send:/exchange/amq.direct/presence.*"
token=$(bin/edgectl token --sub alice --ttl 24h --scope "$scopes")
token_bob=$(bin/edgectl token --sub bob --ttl 24h --scope "$scopes")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
if [ -x bin/persister ]; then
  bin/persister >> bin/persister.log 2>&1 &
  pids+=($!)
  # Wait for its /healthz (PERSIST_METRICS_LISTEN, default :9091) so that a
  # persister that cannot start is reported here, not found later in a log.
  metrics_port="${PERSIST_METRICS_LISTEN-:9091}"
  health="http://127.0.0.1:${metrics_port##*:}/healthz"
  for ((i = 0; i < 100; i++)); do
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then
      echo "persister exited at start; the end of bin/persister.log:" >&2
      tail -n 20 bin/persister.log >&2
      exit 1
    fi
    if [ -z "${PERSIST_METRICS_LISTEN-x}" ] || curl -fsS -o /dev/null "$health" 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "persister started (log: bin/persister.log)"
fi
cat <<MSG

  stompgate chat (alice): http://localhost:${port}/?token=${token}&autoconnect=1
  a second user (bob):    http://localhost:${port}/?token=${token_bob}&autoconnect=1
  (open bob's in another browser or a private window: a browser profile keeps one token)

  dev token (sub=alice, 24h):
  ${token}

  more tokens:  EDGE_JWT_HS256_SECRET=${EDGE_JWT_HS256_SECRET} bin/edgectl token --sub carol --scope "${scopes}"
  RabbitMQ management UI: http://localhost:15672 (guest/guest), vhost "stompgate"
  metrics: http://localhost:${port}/metrics   readiness: http://localhost:${port}/readyz

MSG
bin/edge &
pids+=($!)
wait "${pids[-1]}"
