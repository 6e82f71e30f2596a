#!/usr/bin/env bash
# Tunnel benchmark (the tunnel issue's numbers), every figure next to a reference measured in
# the same run on the same machine:
#   1. requests/s for 1 KiB responses: wrk straight to nginx, wrk through one nginx proxy hop,
#      and wrk through relay + tether-bridge to the same nginx;
#   2. added latency for one connection: wrk -c1 p50 through the tunnel minus straight;
#   3. one stream's throughput: curl downloading a 1 GiB file through the tunnel vs straight.
# Usage: Benchmarks/tunnel.sh [DURATION_SECONDS] (default 10). Writes Benchmarks/results/tunnel.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${1:-10}
CONNS=${CONNS:-50}
WORKERS=${WORKERS:-1}
command -v wrk >/dev/null || die "wrk is needed (apt-get install wrk)"
[ -x /usr/sbin/nginx ] || die "nginx is needed (apt-get install nginx-light)"

log "building tether-relay and tether-bridge (release)"
swift_build "$ROOT_DIR" -c release --product tether-relay || die "build failed"
swift_build "$ROOT_DIR" -c release --product tether-bridge || die "build failed"

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do stop_process "$p"; done; rm -rf "$WORK"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap "cat $WORK/relay.log $WORK/bridge.log >&2; cleanup" EXIT

start_nginx "$WORK"  # sets NGINX_PORT (1 KiB and 1 GiB files) and PROXY_PORT (one proxy hop)

RELAY_PORT=$(free_port)
SECRET="bench-secret-0123456789"
# Per-session quotas off (a benchmark is one user at full speed); admin listener on a free port.
"$ROOT_BIN/tether-relay" --port "$RELAY_PORT" --workers "$WORKERS" --jwt-secret "$SECRET" --log-level warning \
    --rate-limit 0 --max-streams 4096 --bandwidth-limit 0 --session-memory 1073741824 --admin-port 0 \
    --audit-log off > "$WORK/relay.log" 2>&1 &
PIDS+=($!)
RELAY_PID=$!
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$RELAY_PORT/health" && break; sleep 0.05; done
"$ROOT_BIN/tether-relay" token --sub bench --ttl 1h --jwt-secret "$SECRET" > "$WORK/token"
TOKEN=$(cat "$WORK/token")
"$ROOT_BIN/tether-bridge" --relay "ws://127.0.0.1:$RELAY_PORT" --token-file "$WORK/token" \
    --target "http://127.0.0.1:$NGINX_PORT" --status-file "$WORK/bridge.json" --log-level warning \
    > "$WORK/bridge.log" 2>&1 &
PIDS+=($!)
BRIDGE_PID=$!
for _ in $(seq 200); do grep -q '"connected"' "$WORK/bridge.json" 2>/dev/null && break; sleep 0.05; done
grep -q '"connected"' "$WORK/bridge.json" || die "bridge did not connect: $(tail -5 "$WORK/bridge.log")"
AUTH="Authorization: Bearer $TOKEN"
TUNNEL="http://127.0.0.1:$RELAY_PORT/api/ollama"
curl -fsS -H "$AUTH" -o /dev/null "$TUNNEL/1k" || die "request through the tunnel failed: $(curl -s -H "$AUTH" "$TUNNEL/1k"; tail -n 5 "$WORK/bridge.log" "$WORK/relay.log")"

rps() { awk '/Requests\/sec/ { print $2 }'; }
p50() { awk '$1 == "50%" { v = $2; if (v ~ /us$/) { sub(/us/, "", v); print v } else if (v ~ /ms$/) { sub(/ms/, "", v); print v * 1000 } else { sub(/s$/, "", v); print v * 1000000 } }'; }
errors() { awk '/Non-2xx|Socket errors/ { print }'; }

log "wrk straight to nginx (${DURATION}s, $CONNS connections)"
wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$NGINX_PORT/1k" > "$WORK/direct.txt"
log "wrk through one nginx proxy hop"
wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PROXY_PORT/1k" > "$WORK/proxy.txt"
log "wrk through relay + bridge"
r0=$(cpu_ticks "$RELAY_PID"); b0=$(cpu_ticks "$BRIDGE_PID")
wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "$AUTH" "$TUNNEL/1k" > "$WORK/tunnel.txt"
r1=$(cpu_ticks "$RELAY_PID"); b1=$(cpu_ticks "$BRIDGE_PID")
log "latency, one connection"
wrk -t1 -c1 -d"${DURATION}s" --latency "http://127.0.0.1:$NGINX_PORT/1k" > "$WORK/direct1.txt"
wrk -t1 -c1 -d"${DURATION}s" --latency -H "$AUTH" "$TUNNEL/1k" > "$WORK/tunnel1.txt"
log "1 GiB download, one stream"
speed() { curl -s -o /dev/null -w '%{speed_download}' "$@"; }
direct_bps=$(speed "http://127.0.0.1:$NGINX_PORT/1g")
tunnel_bps=$(speed -H "$AUTH" "$TUNNEL/1g")

D=$(rps < "$WORK/direct.txt"); P=$(rps < "$WORK/proxy.txt"); T=$(rps < "$WORK/tunnel.txt")
L0=$(p50 < "$WORK/direct1.txt"); L1=$(p50 < "$WORK/tunnel1.txt")
TICKS=$(getconf CLK_TCK)
OUT="$BENCH_DIR/results/tunnel.md"
{
    echo "# Tunnel benchmark ($(date -u +%Y-%m-%d))"
    echo
    machine_description
    echo
    echo "Command: \`Benchmarks/tunnel.sh $DURATION\` (CONNS=$CONNS WORKERS=$WORKERS); wrk -t1, nginx 1 worker, relay $WORKERS worker(s), one bridge. All on one machine."
    echo
    echo "| path | requests/s | ratio to straight |"
    echo "|---|---|---|"
    echo "| wrk → nginx | $D | 1.00 |"
    echo "| wrk → nginx proxy hop → nginx | $P | $(awk -v a="$P" -v b="$D" 'BEGIN { printf "%.2f", a / b }') |"
    echo "| wrk → relay → tunnel → bridge → nginx | $T | $(awk -v a="$T" -v b="$D" 'BEGIN { printf "%.2f", a / b }') |"
    echo
    echo "CPU during the tunnel run: relay $(awk -v t=$((r1 - r0)) -v h="$TICKS" -v d="$DURATION" 'BEGIN { printf "%.0f%%", 100 * t / h / d }'), bridge $(awk -v t=$((b1 - b0)) -v h="$TICKS" -v d="$DURATION" 'BEGIN { printf "%.0f%%", 100 * t / h / d }') of one core."
    echo
    echo "| one connection (wrk -c1) | p50 |"
    echo "|---|---|"
    echo "| straight to nginx | ${L0} µs |"
    echo "| through the tunnel | ${L1} µs |"
    echo "| added by the tunnel | $(awk -v a="$L1" -v b="$L0" 'BEGIN { printf "%.0f", a - b }') µs |"
    echo
    echo "| 1 GiB download, one stream (curl) | MB/s |"
    echo "|---|---|"
    echo "| straight to nginx | $(awk -v v="$direct_bps" 'BEGIN { printf "%.0f", v / 1e6 }') |"
    echo "| through the tunnel | $(awk -v v="$tunnel_bps" 'BEGIN { printf "%.0f", v / 1e6 }') |"
    echo
    echo "Errors reported by wrk (none listed = none):"
    cat "$WORK/direct.txt" "$WORK/proxy.txt" "$WORK/tunnel.txt" | errors | sed 's/^/    /'
} > "$OUT"
cat "$OUT"
