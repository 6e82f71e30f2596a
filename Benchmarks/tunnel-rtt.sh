#!/usr/bin/env bash
# One stream over a 50 ms round trip: the tunnel between bridge and relay goes through a delay
# line (Benchmarks/tools/delay_proxy.py, 25 ms each way). Measures a 256 MiB download through
# relay + bridge from nginx with small windows and with windows sized for bandwidth × RTT, to
# show that flow control, not buffering, sets the pace. Writes Benchmarks/results/tunnel-rtt.md.
# Usage: Benchmarks/tunnel-rtt.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ -x /usr/sbin/nginx ] || die "nginx is needed (apt-get install nginx)"
log "building tether-relay and tether-bridge (release)"
swift_build "$ROOT_DIR" -c release --product tether-relay || die "build failed"
swift_build "$ROOT_DIR" -c release --product tether-bridge || die "build failed"

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do stop_process "$p"; done; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/www"
truncate -s 256M "$WORK/www/big"
chmod -R a+rX "$WORK"
NGINX_PORT=$(free_port)
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx-error.log warn;
events { worker_connections 1024; }
http { access_log off; sendfile on; client_body_temp_path $WORK/body; proxy_temp_path $WORK/proxy;
       fastcgi_temp_path $WORK/fcgi; uwsgi_temp_path $WORK/uwsgi; scgi_temp_path $WORK/scgi;
       server { listen 127.0.0.1:$NGINX_PORT; root $WORK/www; } }
CONF
/usr/sbin/nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" &
PIDS+=($!)

SECRET="rtt-bench-secret-0123456789"
run_case() {  # NAME STREAM_WINDOW TUNNEL_WINDOW
    local slug=$2
    local relay_port proxy_port relay_pid bridge_pid proxy_pid token bps
    relay_port=$(free_port); proxy_port=$(free_port)
    "$ROOT_BIN/tether-relay" --port "$relay_port" --workers 1 --jwt-secret "$SECRET" --log-level warning \
        --stream-window "$2" --tunnel-window "$3" --rate-limit 0 --bandwidth-limit 0 --session-memory 1073741824 \
        --admin-port 0 --audit-log off > "$WORK/relay-$slug.log" 2>&1 &
    relay_pid=$!
    python3 "$BENCH_DIR/tools/delay_proxy.py" "$proxy_port" "$relay_port" 0.025 > "$WORK/proxy-$slug.log" 2>&1 &
    proxy_pid=$!
    for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$relay_port/health" && grep -q listening "$WORK/proxy-$slug.log" && break; sleep 0.05; done
    "$ROOT_BIN/tether-relay" token --sub rtt --ttl 1h --jwt-secret "$SECRET" > "$WORK/token"
    "$ROOT_BIN/tether-bridge" --relay "ws://127.0.0.1:$proxy_port" --token-file "$WORK/token" \
        --target "http://127.0.0.1:$NGINX_PORT" --status-file "$WORK/bridge-$slug.json" --log-level warning \
        --stream-window "$2" --tunnel-window "$3" > "$WORK/bridge-$slug.log" 2>&1 &
    bridge_pid=$!
    for _ in $(seq 200); do grep -q '"connected"' "$WORK/bridge-$slug.json" 2>/dev/null && break; sleep 0.05; done
    token=$(cat "$WORK/token")
    bps=$(curl -s -o /dev/null -w '%{speed_download}' -H "Authorization: Bearer $token" \
        "http://127.0.0.1:$relay_port/api/ollama/big")
    stop_process "$bridge_pid"; stop_process "$proxy_pid"; stop_process "$relay_pid"
    echo "| $1 | $2 | $3 | $(awk -v v="$bps" 'BEGIN { printf "%.1f", v / 1e6 }') | $(awk -v w="$2" 'BEGIN { printf "%.1f", w / 0.05 / 1e6 }') |"
}

OUT="$BENCH_DIR/results/tunnel-rtt.md"
{
    echo "# One stream over a 50 ms round trip ($(date -u +%Y-%m-%d))"
    echo
    machine_description
    echo
    echo "Command: \`Benchmarks/tunnel-rtt.sh\`. curl downloads 256 MiB from nginx through relay → delay line (25 ms each way) → bridge."
    echo
    echo "| case | stream window | tunnel window | MB/s measured | window / RTT (MB/s) |"
    echo "|---|---|---|---|---|"
    run_case "default windows" 1048576 8388608
    run_case "windows for 100 MB/s" 8388608 16777216
} > "$OUT"
cat "$OUT"
