#!/usr/bin/env bash
# Idle-connection memory benchmark: the relay's resident memory per held WebSocket connection,
# plaintext and TLS.
#
# Starts `tether-relay --workers WORKERS` with a plaintext listener and a TLS listener (throwaway
# self-signed ECDSA P-256 certificate for localhost/127.0.0.1, made with the openssl CLI in a temp
# dir), waits for /healthz, then runs `tether-loadtest idle`: CONNECTIONS WebSocket connections to
# /ws/echo, completed handshakes held for HOLD seconds. The driver reads the relay's VmRSS from
# /proc/PID/status before connecting and while holding, and reports the difference per connection.
# The relay is restarted between the plaintext and the TLS run so each starts from an empty relay.
# Each mode runs REPEATS times (a fresh relay each time).
#
# Usage: Benchmarks/idle-rss.sh        (environment variables below override the defaults)
# Output: a Markdown report on stdout and in Benchmarks/results/idle-rss.md (OUT_MD).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNECTIONS=${CONNECTIONS:-10000}
HOLD=${HOLD:-5}
WORKERS=${WORKERS:-2}
REPEATS=${REPEATS:-1}
MODES=${MODES:-"plaintext tls"}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT_MD=${OUT_MD:-$BENCH_DIR/results/idle-rss.md}

RELAY="$ROOT_BIN/tether-relay"
LOADTEST="$ROOT_BIN/tether-loadtest"
WORK=$(mktemp -d /tmp/tether-idle-rss.XXXXXX)
RELAY_PID=""
cleanup() { [ -n "$RELAY_PID" ] && stop_process "$RELAY_PID"; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# 10,000 connections need 10,000+ descriptors in the relay and in the driver: raise the soft
# limit to the hard one for this shell and so for both children.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
[ "$NOFILE" -gt "$((CONNECTIONS + 100))" ] || log "warning: open-file limit $NOFILE is tight for $CONNECTIONS connections"

if [ "$SKIP_BUILD" != 1 ]; then
    log "building tether-relay and tether-loadtest (release)"
    swift_build "$ROOT_DIR" -c release --product tether-relay || die "tether-relay build failed"
    swift_build "$ROOT_DIR" -c release --product tether-loadtest || die "tether-loadtest build failed"
fi
for bin in "$RELAY" "$LOADTEST"; do [ -x "$bin" ] || die "missing $bin"; done
"$LOADTEST" idle --help >/dev/null 2>&1 || die "tether-loadtest has no 'idle' subcommand"

CERT="$WORK/cert.pem"
KEY="$WORK/key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$KEY" -out "$CERT" >/dev/null 2>&1 || die "openssl could not make a certificate"

MACHINE=$(machine_description)
STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
RUNS="$WORK/runs.tsv"
printf 'mode\trep\tstatus\tjson\trelay_threads\trelay_hwm\n' >"$RUNS"

start_relay() {  # LOGFILE; sets RELAY_PID, PORT, TLS_PORT
    PORT=$(free_port)
    TLS_PORT=$(free_port)
    "$RELAY" --port "$PORT" --workers "$WORKERS" --tls-port "$TLS_PORT" --tls-cert "$CERT" --tls-key "$KEY" \
        --log-level warning --admin-port 0 --audit-log off >"$1" 2>&1 &
    RELAY_PID=$!
    local i
    for i in $(seq 1 200); do
        curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && return 0
        kill -0 "$RELAY_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -20 "$1" >&2
    die "tether-relay did not become healthy on port $PORT"
}

run_one() {  # MODE REP
    local mode=$1 rep=$2 status=ok rc=0
    local relaylog="$WORK/relay-$mode-$rep.log" drvlog="$WORK/driver-$mode-$rep.log" json="$WORK/$mode-$rep.json"
    start_relay "$relaylog"
    local target="127.0.0.1:$PORT" tlsflags=()
    if [ "$mode" = tls ]; then target="127.0.0.1:$TLS_PORT"; tlsflags=(--tls --ca "$CERT"); fi
    log "$mode rep=$rep: relay pid $RELAY_PID, target $target"
    "$LOADTEST" idle --target "$target" --path /ws/echo --connections "$CONNECTIONS" --hold "$HOLD" \
        --relay-pid "$RELAY_PID" "${tlsflags[@]}" --json "$json" >"$drvlog" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then status="driver-exit-$rc"; log "driver failed ($status):"; tail -5 "$drvlog" >&2; fi
    local threads="" hwm=""
    if kill -0 "$RELAY_PID" 2>/dev/null; then
        threads=$(awk '/^Threads:/ { print $2 }' "/proc/$RELAY_PID/status")
        hwm=$(awk '/^VmHWM:/ { print $2 * 1024 }' "/proc/$RELAY_PID/status")
    else
        status="relay-died"; log "tether-relay died:"; tail -5 "$relaylog" >&2
    fi
    stop_process "$RELAY_PID"
    RELAY_PID=""
    grep -v '^\[idle\]' "$drvlog" | sed 's/^/    /' >&2 || true
    [ -s "$json" ] || { status="${status/ok/no-json}"; json=""; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$rep" "$status" "$json" "$threads" "$hwm" >>"$RUNS"
    sleep 1
}

for rep in $(seq 1 "$REPEATS"); do
    for mode in $MODES; do run_one "$mode" "$rep"; done
done

mkdir -p "$(dirname "$OUT_MD")"
python3 - "$RUNS" >"$OUT_MD" <<PY
import csv, json, statistics, sys

runs = []
for row in csv.DictReader(open(sys.argv[1]), delimiter="\t"):
    r = dict(row)
    r["data"] = json.load(open(r["json"])) if r["json"] else {}
    runs.append(r)

def f(x, fmt):
    return "n/a" if x is None else format(x, fmt)

def mib(x):
    return None if x is None else x / 1048576

print("# Idle WebSocket connections: relay memory per connection")
print()
print("Run ${STARTED} by \`Benchmarks/idle-rss.sh\`.")
print()
print("## Machine")
print()
print("""${MACHINE}""")
print()
print("## Setup")
print()
print("- tether-relay with ${WORKERS} workers, a plaintext and a TLS listener (self-signed ECDSA P-256 certificate for localhost, TLS as negotiated by the relay and the driver), restarted before every run.")
print("- tether-loadtest idle: ${CONNECTIONS} WebSocket connections to /ws/echo (upgrade completed), held ${HOLD} s. Open-file limit ${NOFILE} for both.")
print("- RSS = VmRSS of the relay from /proc/PID/status, read by the driver before connecting (\"before\") and while holding (\"held\": the larger of a read 1 s after the last handshake and one after the hold). Per connection = (held - before) / connections established.")
print()
print("Commands, from the repository root (P/P2 are free ports picked by the script, PID the relay's process id):")
print()
print("\`\`\`")
print("swift build -c release --product tether-relay && swift build -c release --product tether-loadtest")
print("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout KEY -out CERT")
print("ulimit -n \$(ulimit -Hn)")
print(".build/release/tether-relay --port P --workers ${WORKERS} --tls-port P2 --tls-cert CERT --tls-key KEY --log-level warning")
print("curl -fsS http://127.0.0.1:P/healthz")
print(".build/release/tether-loadtest idle --target 127.0.0.1:P --path /ws/echo --connections ${CONNECTIONS} --hold ${HOLD} --relay-pid PID --json OUT.json")
print(".build/release/tether-loadtest idle --target 127.0.0.1:P2 --path /ws/echo --connections ${CONNECTIONS} --hold ${HOLD} --relay-pid PID --tls --ca CERT --json OUT.json   # after restarting the relay")
print("\`\`\`")
print()
print("## Results")
print()
print("| mode | run | status | established | failed | connect s | handshakes/s | RSS before MiB | RSS held MiB | RSS per connection | relay peak RSS MiB | relay threads |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in runs:
    d = r["data"]
    per = d.get("rss_per_connection_bytes")
    hwm = int(r["relay_hwm"]) if r["relay_hwm"] else None
    print(f"| {r['mode']} | {r['rep']} | {r['status']} | {f(d.get('connections_established'), 'd')} | {f(d.get('connections_failed'), 'd')} "
          f"| {f(d.get('connect_seconds'), '.2f')} | {f(d.get('handshakes_per_second'), ',.0f')} "
          f"| {f(mib(d.get('relay_rss_before_bytes')), '.1f')} | {f(mib(d.get('relay_rss_after_bytes')), '.1f')} "
          f"| {f(per, ',.0f')} B ({f(per and per / 1024, '.2f')} KiB) | {f(mib(hwm), '.1f')} | {r['relay_threads'] or 'n/a'} |")
modes = sorted({r["mode"] for r in runs})
if int("${REPEATS}") > 1:
    print()
    print("Median RSS per connection: " + ", ".join(
        f"{m}: {f(statistics.median([r['data']['rss_per_connection_bytes'] for r in runs if r['mode'] == m and r['data'].get('rss_per_connection_bytes') is not None] or [0]), ',.0f')} B"
        for m in modes))
print()
print("RSS per connection includes everything the relay holds per open connection: kernel-side socket buffers are not in RSS, but the relay's connection objects, HTTP/WebSocket state, TLS session (SSL object and its buffers) and allocator overhead are. \"relay peak RSS\" is VmHWM read after the run, before the relay is stopped (the kernel updates it lazily, so it can trail the held VmRSS by a few hundred KiB).")
PY
cat "$OUT_MD"
log "wrote $OUT_MD"
