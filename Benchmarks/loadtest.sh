#!/usr/bin/env bash
# The load-test issue's numbers in one run, each next to references measured in the same run:
#   references  wrk -> nginx, wrk -> nginx proxy hop -> nginx (1 KiB responses)
#   tunnel      wrk -> relay -> tether-bridge -> nginx (the real bridge)
#   rps         tether-loadtest rps: saturation with bridges forwarding to nginx, then p99 at 70%
#   stream      2,000 concurrent streams x 20 tokens/s (embedded fake service)
#   idle        15,000 plaintext and 15,000 TLS tunnels: relay RSS per tunnel
#   connect     plaintext and TLS bridge handshakes per second with HS256 tokens
#   churn       100 reconnects/s for CHURN seconds with requests on stable bridges
#   bulk        4 x 8 MiB transfers both ways
# Usage: Benchmarks/loadtest.sh [SECONDS] (default 10; churn runs 60 s unless CHURN=...).
# Writes Benchmarks/results/loadtest-run.md (summary + every raw output).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${1:-10}
CHURN=${CHURN:-60}
IDLE=${IDLE:-15000}
STREAMS=${STREAMS:-2000}
command -v wrk >/dev/null || die "wrk is needed (apt-get install wrk)"
[ -x /usr/sbin/nginx ] || die "nginx is needed (apt-get install nginx-light)"
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge 20000 ] || log "warning: descriptor limit $(ulimit -n): idle at $IDLE tunnels may not fit"

log "building tether-relay, tether-bridge and tether-loadtest (release)"
for product in tether-relay tether-bridge tether-loadtest; do
    swift_build "$ROOT_DIR" -c release --product "$product" || die "build of $product failed"
done

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do stop_process "$p"; done; rm -rf "$WORK"; }
trap cleanup EXIT
RAW="$WORK/raw.md"
: > "$RAW"
machine_description > "$WORK/machine.md"

start_nginx "$WORK"
export TETHER_JWT_SECRET="loadtest-secret-0123456789abcdef"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

RELAY_PID=""
# A fresh relay per scenario: quotas off (a load test is not one user's fair share), audit off.
start_relay() {  # extra flags...
    [ -n "$RELAY_PID" ] && stop_process "$RELAY_PID"
    RELAY_PORT=$(free_port); RELAY_TLS_PORT=$(free_port)
    "$ROOT_BIN/tether-relay" --port "$RELAY_PORT" --tls-port "$RELAY_TLS_PORT" --tls-cert "$WORK/cert.pem" \
        --tls-key "$WORK/key.pem" --rate-limit 0 --max-streams 4096 --max-bridges 64 --bandwidth-limit 0 \
        --session-memory 1073741824 --max-body-size 64MiB --audit-log off --admin-port 0 --log-level warning "$@" \
        > "$WORK/relay.log" 2>&1 &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    local i
    for i in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$RELAY_PORT/readyz" && return 0; sleep 0.05; done
    die "relay did not become ready: $(tail -5 "$WORK/relay.log")"
}

# Runs one driver scenario, keeps its table and JSON, appends both to the raw outputs.
drive() {  # NAME SCENARIO ARGS...
    local name=$1; shift
    log "loadtest $name"
    {
        echo "### $name"
        echo
        echo '```'
        echo "\$ tether-loadtest $*"
        echo "(load average $(cut -d' ' -f1-3 /proc/loadavg))"
    } >> "$RAW"
    "$ROOT_BIN/tether-loadtest" "$@" --json "$WORK/$name.json" > "$WORK/$name.txt" 2>"$WORK/$name.err" || true
    cat "$WORK/$name.txt" >> "$RAW"
    printf '```\n\n' >> "$RAW"
}

rps_of() { awk '/Requests\/sec/ { print $2 }'; }

log "wrk references (${DURATION}s, 50 connections, 1 KiB)"
wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$NGINX_PORT/1k" > "$WORK/wrk-direct.txt"
wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$PROXY_PORT/1k" > "$WORK/wrk-proxy.txt"

log "wrk through relay + tether-bridge"
start_relay --workers 1
"$ROOT_BIN/tether-relay" token --sub bench --ttl 1h > "$WORK/token"
"$ROOT_BIN/tether-bridge" --relay "ws://127.0.0.1:$RELAY_PORT" --token-file "$WORK/token" \
    --target "http://127.0.0.1:$NGINX_PORT" --status-file "$WORK/bridge.json" --log-level warning \
    > "$WORK/bridge.log" 2>&1 &
BRIDGE_PID=$!
PIDS+=("$BRIDGE_PID")
for _ in $(seq 200); do grep -q '"connected"' "$WORK/bridge.json" 2>/dev/null && break; sleep 0.05; done
AUTH="Authorization: Bearer $(cat "$WORK/token")"
curl -fsS -o /dev/null -H "$AUTH" "http://127.0.0.1:$RELAY_PORT/api/ollama/1k" || die "tunnel request failed"
wrk -t1 -c50 -d"${DURATION}s" -H "$AUTH" "http://127.0.0.1:$RELAY_PORT/api/ollama/1k" > "$WORK/wrk-tunnel.txt"
stop_process "$BRIDGE_PID"
for f in direct proxy tunnel; do
    { echo "### wrk $f"; echo; echo '```'; cat "$WORK/wrk-$f.txt"; printf '```\n\n'; } >> "$RAW"
done

log "rps: saturation (offered rate raised until the relay stops following it), then 70% of it"
# The driver's bridges answer from their embedded service (1 KiB bodies): this measures the relay
# itself; the wrk run above measures the whole path with the real bridge and nginx.
SAT=0
for RATE in 10000 20000 30000 40000 50000 60000 80000; do
    start_relay
    drive "rps-$RATE" rps --target "127.0.0.1:$RELAY_PORT" --rate "$RATE" --duration 5 --bridges 20 \
        --connections 256 --size 1024 --relay-pid "$RELAY_PID"
    GOT=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1])).get("achieved_rate", 0)))' \
        "$WORK/rps-$RATE.json" 2>/dev/null || echo 0)
    [ "$GOT" -gt "$SAT" ] && SAT=$GOT
    [ "$GOT" -lt $((RATE * 95 / 100)) ] && break
done
[ "$SAT" -gt 0 ] || die "rps runs failed: $(cat "$WORK"/rps-*.err | tail -5)"
echo "$SAT" > "$WORK/rps-saturation.txt"
start_relay
drive rps-70 rps --target "127.0.0.1:$RELAY_PORT" --rate $((SAT * 7 / 10)) --duration "$DURATION" --bridges 20 \
    --connections 256 --size 1024 --relay-pid "$RELAY_PID"

start_relay
drive stream stream --target "127.0.0.1:$RELAY_PORT" --streams "$STREAMS" --token-rate 20 --duration "$DURATION" \
    --bridges 20 --ramp 2 --relay-pid "$RELAY_PID"

start_relay
drive idle-plain idle --target "127.0.0.1:$RELAY_PORT" --connections "$IDLE" --sources 2 --hold 5 --relay-pid "$RELAY_PID"
start_relay
drive idle-tls idle --target "127.0.0.1:$RELAY_TLS_PORT" --tls --ca "$WORK/cert.pem" --connections "$IDLE" --sources 2 \
    --hold 5 --relay-pid "$RELAY_PID"

start_relay
drive connect-plain connect --target "127.0.0.1:$RELAY_PORT" --duration "$DURATION" --concurrency 32 --relay-pid "$RELAY_PID"
start_relay
drive connect-tls connect --target "127.0.0.1:$RELAY_TLS_PORT" --tls --ca "$WORK/cert.pem" --duration "$DURATION" \
    --concurrency 32 --relay-pid "$RELAY_PID"

start_relay
drive churn churn --target "127.0.0.1:$RELAY_PORT" --duration "$CHURN" --stable-bridges 20 --churn-bridges 200 \
    --churn-rate 100 --rate 1000 --relay-pid "$RELAY_PID"

start_relay
drive bulk bulk --target "127.0.0.1:$RELAY_PORT" --streams 4 --direction both --duration "$DURATION" --relay-pid "$RELAY_PID"

OUT="$BENCH_DIR/results/loadtest-run.md"
python3 - "$WORK" "$DURATION" "$CHURN" > "$OUT" <<'PY'
import json, re, sys, pathlib
work, duration, churn = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def j(name):
    try:
        return json.loads((work / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
def wrk(name):
    m = re.search(r"Requests/sec:\s+([\d.]+)", (work / f"wrk-{name}.txt").read_text())
    return float(m.group(1)) if m else 0.0
def pct(d, key, p):
    return (d.get(key) or {}).get(p, float("nan"))
direct, proxy, tunnel = wrk("direct"), wrk("proxy"), wrk("tunnel")
sat = {"achieved_rate": float((work / "rps-saturation.txt").read_text())}
r70, stream = j("rps-70"), j("stream")
ip, it, cp, ct, churn_d, bulk = j("idle-plain"), j("idle-tls"), j("connect-plain"), j("connect-tls"), j("churn"), j("bulk")
print(f"# Load-test run ({duration} s per scenario, churn {churn} s)\n")
print((work / "machine.md").read_text())
print("Command: `Benchmarks/loadtest.sh " + duration + "`. Relay: release build, fresh per scenario, quotas off,"
      " audit off, 2 workers unless said. Driver: `tether-loadtest`, one worker. All on one machine.\n")
print("| figure | reference (same run) | measured | ratio / target |")
print("|---|---|---|---|")
print(f"| wrk → nginx, 1 KiB | {direct:,.0f} req/s | | 1.00 |")
print(f"| wrk → nginx proxy hop → nginx | | {proxy:,.0f} req/s | {proxy / direct:.2f} |")
print(f"| wrk → relay (1 worker) → tether-bridge → nginx | | {tunnel:,.0f} req/s | {tunnel / direct:.2f} (target ≥ 0.60) |")
print(f"| rps saturation: driver bridges (embedded 1 KiB service) through the relay | | {sat.get('achieved_rate', 0):,.0f} req/s | {sat.get('achieved_rate', 0) / direct:.2f} |")
print(f"| rps at 70% ({r70.get('achieved_rate', 0):,.0f} req/s): p50 / p99 / p99.9 | | "
      f"{pct(r70, 'latency_us', 'p50') / 1000:.2f} / {pct(r70, 'latency_us', 'p99') / 1000:.2f} / "
      f"{pct(r70, 'latency_us', 'p99_9') / 1000:.2f} ms | p99 < 5 ms |")
print(f"| stream {stream.get('parameters', {}).get('streams', '?')} × 20 tok/s: added delay p50 / p99 / max | | "
      f"{pct(stream, 'chunk_delay_us', 'p50') / 1000:.2f} / {pct(stream, 'chunk_delay_us', 'p99') / 1000:.2f} / "
      f"{pct(stream, 'chunk_delay_us', 'max') / 1000:.2f} ms | p99 < 2 ms |")
print(f"| stream chunks sent / received / missing / reordered | | {stream.get('chunks_sent', '?')} / "
      f"{stream.get('chunks_received', '?')} / {stream.get('chunks_missing', '?')} / {stream.get('chunks_reordered', '?')} | 0 lost |")
for name, d, target in (("plaintext", ip, 8192), ("TLS", it, 32768)):
    per = d.get("rss_per_tunnel_bytes", float("nan"))
    print(f"| idle {d.get('connections_established', '?')} {name} tunnels: relay RSS per tunnel | | "
          f"{per / 1024:.2f} KiB | ≤ {target // 1024} KiB |")
print(f"| connect, plaintext, HS256 | | {cp.get('handshakes_per_second', 0):,.0f} /s | ≥ 5,000 /s |")
print(f"| connect, TLS | | {ct.get('handshakes_per_second', 0):,.0f} /s | |")
print(f"| churn: reconnects / failed on stable bridges | | {churn_d.get('reconnects', '?')} / "
      f"{churn_d.get('failed_requests_stable', '?')} | 100/s, 0 failed |")
print(f"| bulk 4 × 8 MiB both ways | | {bulk.get('total_mb_per_second', 0):,.0f} MB/s | |")
print("\n## Raw outputs\n")
print((work / "raw.md").read_text())
PY
sed -n '1,40p' "$OUT"
