#!/usr/bin/env bash
# End-to-end benchmark: the stompgate edge against RabbitMQ's own Web-STOMP,
# on the same broker, in the same run, measured by the same stompload.
#
#   bash scripts/bench.sh            # or: make bench
#
# Scenarios (each run alternately through the edge and through Web-STOMP,
# edge, webstomp, edge, webstomp, ... ROUNDS times; medians are reported):
#   closed  topic 1→1, SIZE-byte bodies, at most INFLIGHT in flight: throughput
#   closedb the closed loop again with stompload itself under SCHED_BATCH
#           (chrt -b) for both targets: the control that gives Web-STOMP the
#           same batching the edge's default EDGE_SCHED_POLICY=batch brings
#   rate    topic 1→1, RATE msgs/s steady: latency percentiles
#
# Knobs (environment): EDGE_GOMAXPROCS (nproc; the edge's Go threads),
# EDGE_SCHED_POLICY (batch; "other" for the kernel default), SCENARIOS
# ("closed closedb rate"), TARGETS ("edge webstomp proxy"; proxy is
# Web-STOMP behind internal/benchproxy, a do-nothing TCP relay),
# DURATION (20s), WARMUP (3s), ROUNDS (3), SIZE (256),
# INFLIGHT (100), RATE (1000), PAIRS (1), OUT (results directory, default a
# new temp dir), PROFILE=1 (perf-record the edge during its first closed run;
# needs perf). Loopback only; it stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-256}
INFLIGHT=${INFLIGHT:-100}
RATE=${RATE:-1000}
PAIRS=${PAIRS:-1}
PROFILE=${PROFILE:-0}
SCENARIOS=${SCENARIOS:-closed closedb rate}
TARGETS=${TARGETS:-edge webstomp proxy}
WEBSTOMP_URL=${WEBSTOMP_URL:-ws://127.0.0.1:15674/ws}
OUT=${OUT:-$(mktemp -d /tmp/stompgate-bench.XXXXXX)}
mkdir -p "$OUT"

log() { printf 'bench: %s\n' "$*" >&2; }

log "building"
mkdir -p bin
go build -o bin/ ./cmd/... ./internal/benchproxy
log "preparing services"
bash scripts/services.sh

# The edge: guest on vhost / (what Web-STOMP uses for guest), port chosen by
# the kernel and read back from the "listening on" line.
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
EDGE_LISTEN=127.0.0.1:0 \
  EDGE_JWT_HS256_SECRET=$secret \
  EDGE_BROKER_ADDRS=127.0.0.1:61613 \
  EDGE_BROKER_LOGIN=guest EDGE_BROKER_PASSCODE=guest EDGE_BROKER_VHOST=/ \
  EDGE_DRAIN_DELAY=0s EDGE_DRAIN_PERIOD=1s \
  LOG_LEVEL=warn \
  EDGE_SCHED_POLICY="${EDGE_SCHED_POLICY:-batch}" \
  GOMAXPROCS="${EDGE_GOMAXPROCS:-$(nproc)}" \
  bin/edge >"$OUT/edge.log" 2>&1 &
edge_pid=$!
# The third target: Web-STOMP behind a do-nothing TCP relay, the cost of
# one extra process hop on this machine (the floor of any separate relay).
bin/benchproxy 127.0.0.1:0 "$(sed -E 's#^ws://([^/]+).*#\1#' <<<"$WEBSTOMP_URL")" >"$OUT/proxy.log" 2>&1 &
proxy_pid=$!
cleanup() {
  kill "$proxy_pid" 2>/dev/null || true
  if kill -0 "$edge_pid" 2>/dev/null; then
    kill -TERM "$edge_pid" 2>/dev/null || true
    wait "$edge_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
# listen_addr LOG PID NAME: the address from the "listening on" line.
listen_addr() {
  local a=
  for ((i = 0; i < 100; i++)); do
    a=$(sed -n 's/^listening on //p' "$1" | head -n1)
    [ -n "$a" ] && break
    kill -0 "$2" 2>/dev/null || { cat "$1" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$a" ] || { log "$3 did not start"; cat "$1" >&2; exit 1; }
  echo "$a"
}
addr=$(listen_addr "$OUT/edge.log" "$edge_pid" edge)
EDGE_URL="ws://$addr/ws"
PROXY_URL="ws://$(listen_addr "$OUT/proxy.log" "$proxy_pid" benchproxy)/ws"
log "edge pid $edge_pid at $EDGE_URL, Web-STOMP via benchproxy at $PROXY_URL; results in $OUT"

beam_pid=$(pgrep -o -f 'beam.smp.*rabbit' || true)

# cpu_ticks PID: user+system clock ticks the process has used so far.
cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# busy_ticks: "busy total" clock ticks of the whole machine (every process,
# including whatever else runs on it).
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat; }
hz=$(getconf CLK_TCK)
ncpu=$(nproc)

# one TARGET SCENARIO ROUND: one stompload run, its JSON line saved.
one() {
  local target=$1 scenario=$2 round=$3 url creds mode prefix=()
  case $target in
    edge) url=$EDGE_URL creds=(--token-secret "$secret") ;;
    webstomp) url=$WEBSTOMP_URL creds=(--login guest --passcode guest --vhost /) ;;
    proxy) url=$PROXY_URL creds=(--login guest --passcode guest --vhost /) ;;
  esac
  case $scenario in
    closed) mode=(--mode closed --inflight "$INFLIGHT") ;;
    closedb) mode=(--mode closed --inflight "$INFLIGHT") prefix=(chrt -b 0) ;;
    rate) mode=(--mode rate --rate "$RATE") ;;
  esac
  local name="$scenario-$round-$target" perf_pid=
  if [ "$PROFILE" = 1 ] && [ "$target" = edge ] && [ "$scenario" = closed ] && [ "$round" = 1 ]; then
    perf record -F 499 -g -p "$edge_pid" -o "$OUT/edge.perf.data" -- sleep "${DURATION%s}" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  local e0 b0 t0 m0
  e0=$(cpu_ticks "$edge_pid") b0=$(cpu_ticks "$beam_pid") t0=$(date +%s.%N) m0=$(busy_ticks)
  log "run $name"
  STOMPLOAD_TOKEN_SECRET= /usr/bin/time -f '%e %U %S' -o "$OUT/$name.time" \
    "${prefix[@]}" bin/stompload --url "$url" "${creds[@]}" "${mode[@]}" \
    --size "$SIZE" --pairs "$PAIRS" --duration "$DURATION" --warmup "$WARMUP" \
    --run-id "$name-$$" >"$OUT/$name.txt"
  local e1 b1 t1 m1
  e1=$(cpu_ticks "$edge_pid") b1=$(cpu_ticks "$beam_pid") t1=$(date +%s.%N) m1=$(busy_ticks)
  [ -n "$perf_pid" ] && wait "$perf_pid" || true
  # CPU cores used over the run (user+system seconds per wall second).
  local ecpu bcpu lcpu mbusy
  ecpu=$(awk -v a="$e0" -v b="$e1" -v h="$hz" -v s="$t0" -v e="$t1" 'BEGIN{printf "%.3f", (b-a)/h/(e-s)}')
  bcpu=$(awk -v a="$b0" -v b="$b1" -v h="$hz" -v s="$t0" -v e="$t1" 'BEGIN{printf "%.3f", (b-a)/h/(e-s)}')
  lcpu=$(awk '{printf "%.3f", ($2 + $3) / $1}' "$OUT/$name.time")
  mbusy=$(printf '%s %s\n' "$m0" "$m1" | awk -v n="$ncpu" '{printf "%.3f", ($3 - $1) / ($4 - $2) * n}')
  tail -n1 "$OUT/$name.txt" | jq -c --arg t "$target" --arg s "$scenario" --argjson r "$round" \
    --argjson ecpu "$ecpu" --argjson bcpu "$bcpu" --argjson lcpu "$lcpu" --argjson mbusy "$mbusy" \
    '. + {target: $t, scenario: $s, round: $r, edge_cpu_cores: $ecpu, broker_cpu_cores: $bcpu,
          loadgen_cpu_cores: $lcpu, machine_busy_cores: $mbusy}' >>"$OUT/results.jsonl"
  tail -n 6 "$OUT/$name.txt" | head -n 5 >&2
}

: >"$OUT/results.jsonl"
for scenario in $SCENARIOS; do
  for ((round = 1; round <= ROUNDS; round++)); do
    for target in $TARGETS; do
      one "$target" "$scenario" "$round"
    done
  done
done

if [ "$PROFILE" = 1 ] && [ -f "$OUT/edge.perf.data" ]; then
  perf report -i "$OUT/edge.perf.data" --no-children --sort dso,symbol -g none --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -n 60 >"$OUT/edge.perf.txt" || true
  log "edge CPU profile: $OUT/edge.perf.txt"
fi

# Medians per target and scenario, and the table.
jq -rs --arg ncpu "$ncpu" --arg size "$SIZE" --arg inflight "$INFLIGHT" --arg rate "$RATE" --arg dur "$DURATION" --arg pairs "$PAIRS" '
  def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def med(s; t; f): [.[] | select(.scenario == s and .target == t) | f] | median;
  def r2: . * 100 | round / 100;
  def r3: . * 1000 | round / 1000;
  def yes(c): if c then "yes" else "**no**" end;
  def opt(x; f): if x == null then "–" else (x | f | tostring) end;
  . as $all |
  ($all | med("closed"; "edge"; .throughput_msgs_per_s)) as $te |
  ($all | med("closed"; "webstomp"; .throughput_msgs_per_s)) as $tw |
  ($all | med("closedb"; "edge"; .throughput_msgs_per_s)) as $teb |
  ($all | med("closedb"; "webstomp"; .throughput_msgs_per_s)) as $twb |
  ($all | med("closed"; "proxy"; .throughput_msgs_per_s)) as $tp |
  ($all | med("closedb"; "proxy"; .throughput_msgs_per_s)) as $tpb |
  ($all | med("rate"; "proxy"; .latency_ms.p50)) as $p50p |
  ($all | med("rate"; "proxy"; .latency_ms.p99)) as $p99p |
  ($all | med("closed"; "edge"; .latency_ms.p99)) as $cpe |
  ($all | med("closed"; "webstomp"; .latency_ms.p99)) as $cpw |
  ($all | med("rate"; "edge"; .latency_ms.p50)) as $p50e |
  ($all | med("rate"; "webstomp"; .latency_ms.p50)) as $p50w |
  ($all | med("rate"; "edge"; .latency_ms.p99)) as $p99e |
  ($all | med("rate"; "webstomp"; .latency_ms.p99)) as $p99w |
  ($all | med("rate"; "edge"; .latency_ms.max)) as $maxe |
  ($all | med("rate"; "webstomp"; .latency_ms.max)) as $maxw |
  ($all | med("closed"; "edge"; .edge_cpu_cores)) as $ecpu |
  ($all | med("closed"; "edge"; .broker_cpu_cores)) as $bcpue |
  ($all | med("closed"; "webstomp"; .broker_cpu_cores)) as $bcpuw |
  ($all | med("closed"; "edge"; .loadgen_cpu_cores)) as $lcpue |
  ($all | med("closed"; "webstomp"; .loadgen_cpu_cores)) as $lcpuw |
  ($all | med("closed"; "edge"; .machine_busy_cores)) as $busye |
  ($all | med("closed"; "webstomp"; .machine_busy_cores)) as $busyw |
  ([$all[] | .errors + .lost] | add) as $errs |
  "| scenario (medians of \($all | map(select(.scenario == "closed" and .target == "edge")) | length) runs each) | edge | Web-STOMP | edge vs Web-STOMP | target | met | Web-STOMP via benchproxy |",
  "|---|---:|---:|---:|---|---|---:|",
  "| closed loop 1→\($pairs)×1, \($size) B, ≤\($inflight) in flight, \($dur): throughput msgs/s | \($te | round) | \($tw | round) | \(($te / $tw) | r2)× | ≥ 0.90× | \(yes($te / $tw >= 0.9)) | \(opt($tp; round)) |",
  (if $teb then "| same, stompload under SCHED_BATCH for both targets: throughput msgs/s | \($teb | round) | \($twb | round) | \(($teb / $twb) | r2)× | control, no target | – | \(opt($tpb; round)) |" else empty end),
  "| closed loop: p99 latency ms | \($cpe | r3) | \($cpw | r3) | \(($cpe - $cpw) | r3) ms | – | – | – |",
  "| closed loop: CPU cores used by edge / broker / stompload (machine busy, of \($ncpu)) | \($ecpu) / \($bcpue) / \($lcpue) (\($busye)) | – / \($bcpuw) / \($lcpuw) (\($busyw)) | – | – | – | – |",
  "| steady \($rate) msgs/s, \($dur): p50 latency ms | \($p50e | r3) | \($p50w | r3) | \(($p50e - $p50w) | r3) ms | – | – | \(opt($p50p; r3)) |",
  "| steady \($rate) msgs/s: p99 latency ms | \($p99e | r3) | \($p99w | r3) | \(($p99e - $p99w) | r3) ms | ≤ +1 ms | \(yes($p99e - $p99w <= 1)) | \(opt($p99p; r3)) |",
  "| steady \($rate) msgs/s: max latency ms | \($maxe | r3) | \($maxw | r3) | \(($maxe - $maxw) | r3) ms | – | – | – |",
  "| errors + lost messages, all runs | \([$all[] | select(.target == "edge") | .errors + .lost] | add) | \([$all[] | select(.target == "webstomp") | .errors + .lost] | add) | – | 0 | \(yes($errs == 0)) | \([$all[] | select(.target == "proxy") | .errors + .lost] | add // "–") |",
  "",
  "Every run, in order:",
  "",
  "| run | target | throughput msgs/s | p50 ms | p99 ms | max ms | errors | lost | CPU cores: edge | broker | stompload | machine busy |",
  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ($all[] | "| \(.scenario) \(.round) | \(.target) | \(.throughput_msgs_per_s) | \(.latency_ms.p50) | \(.latency_ms.p99) | \(.latency_ms.max) | \(.errors) | \(.lost) | \(.edge_cpu_cores) | \(.broker_cpu_cores) | \(.loadgen_cpu_cores) | \(.machine_busy_cores) |")
' "$OUT/results.jsonl" | tee "$OUT/table.md"
log "raw results: $OUT/results.jsonl"
