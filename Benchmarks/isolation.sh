#!/usr/bin/env bash
# Docker isolation benchmark (issue 7), against a real Docker engine:
#   1. cold start: SESSIONS parked sessions (bridges connected, containers stopped for idleness)
#      get a request at the same moment; time from sending it to the first response byte, p50
#      and p99 over ROUNDS rounds (targets: p50 < 250 ms, p99 < 1 s with 20 sessions);
#   2. host memory per idle container: the worker's cgroup (memory.current), the engine's
#      containerd-shim for it, and the drop of MemAvailable per container;
#   3. one session's throughput, docker-isolated vs in-process: wrk with 1 KiB and 64 KiB
#      responses and one 1 GiB download, relay + tether-bridge + nginx, same flags otherwise.
# Usage: Benchmarks/isolation.sh [DURATION_SECONDS] (default 10); SESSIONS=20 ROUNDS=5 CONNS=50
# MAX_STARTS=8 (isolation.max_concurrent_starts) IDLE=4 (sessions.idle_timeout, seconds).
# Starts its own dockerd on a private socket and data root (like the tests) and builds the
# session image with deploy/docker/build-image.sh. Writes Benchmarks/results/isolation.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${1:-10}
SESSIONS=${SESSIONS:-20}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-50}
IDLE=${IDLE:-4}
MAX_STARTS=${MAX_STARTS:-8}
command -v wrk >/dev/null || die "wrk is needed (apt-get install wrk)"
command -v dockerd >/dev/null || die "dockerd is needed (apt-get install docker.io)"
[ -x /usr/sbin/nginx ] || die "nginx is needed (apt-get install nginx-light)"

log "building tether-relay and tether-bridge (release)"
swift_build "$ROOT_DIR" -c release --product tether-relay || die "build failed"
swift_build "$ROOT_DIR" -c release --product tether-bridge || die "build failed"

WORK=$(mktemp -d /tmp/tib.XXXXXX)
PIDS=()
DOCKERD_PID=""
cleanup() {
    for p in "${PIDS[@]}"; do stop_process "$p"; done
    if [ -n "$DOCKERD_PID" ]; then
        docker rm -f $(docker ps -aq) >/dev/null 2>&1 || true
        stop_process "$DOCKERD_PID"
        umount -R "$WORK/exec" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# -- origin ------------------------------------------------------------------------------------
start_nginx "$WORK"
head -c 65536 /dev/urandom > "$WORK/www/64k"
chmod a+r "$WORK/www/64k"

# -- engine and image --------------------------------------------------------------------------
export DOCKER_HOST="unix://$WORK/docker.sock"
log "starting dockerd ($DOCKER_HOST)"
dockerd --host "$DOCKER_HOST" --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/docker.pid" \
    --storage-driver overlay2 --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    --userland-proxy=false > "$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 200); do curl -s --unix-socket "$WORK/docker.sock" http://docker/_ping 2>/dev/null | grep -q OK && break; sleep 0.05; done
"$ROOT_DIR/deploy/docker/build-image.sh" "$ROOT_BIN/tether-relay" tether-session:bench >&2

SECRET="bench-secret-0123456789"
COMMON=(--workers 2 --jwt-secret "$SECRET" --log-level warning --audit-log off --rate-limit 0 --bandwidth-limit 0
        --max-streams 4096 --max-bridges 8)

# Sets RELAY_PID (not a subshell: the cleanup must know every process started).
start_relay() {  # NAME PORT ADMIN_PORT ARGS...
    local name=$1 port=$2 admin=$3; shift 3
    "$ROOT_BIN/tether-relay" --port "$port" --admin-port "$admin" "${COMMON[@]}" "$@" > "$WORK/$name.log" 2>&1 &
    RELAY_PID=$!
    PIDS+=($RELAY_PID)
    for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$port/health" && return 0; sleep 0.05; done
    die "relay $name did not start: $(tail -5 "$WORK/$name.log")"
}

declare -A BRIDGE_PID
start_bridge() {  # RELAY_PORT USER
    local dir="$WORK/bridges/$2"
    mkdir -p "$dir"
    "$ROOT_BIN/tether-relay" token --sub "$2" --ttl 2h --jwt-secret "$SECRET" > "$dir/token"
    "$ROOT_BIN/tether-bridge" --relay "ws://127.0.0.1:$1" --token-file "$dir/token" \
        --target "http://127.0.0.1:$NGINX_PORT" --status-file "$dir/status.json" --log-level warning \
        > "$dir/bridge.log" 2>&1 &
    PIDS+=($!)
    BRIDGE_PID[$2]=$!
}

wait_bridges() {  # USERS...
    local u
    for u in "$@"; do
        for _ in $(seq 400); do grep -q '"connected"' "$WORK/bridges/$u/status.json" 2>/dev/null && break; sleep 0.05; done
        grep -q '"connected"' "$WORK/bridges/$u/status.json" || die "bridge $u did not connect: $(tail -3 "$WORK/bridges/$u/bridge.log")"
    done
}

containers() { docker ps -aq --filter label=tether.relay=bench | wc -l; }
wait_containers() {  # COUNT
    for _ in $(seq 600); do [ "$(containers)" -eq "$1" ] && return 0; sleep 0.1; done
    die "expected $1 containers, have $(containers)"
}
mem_available_kib() { awk '/MemAvailable/ { print $2 }' /proc/meminfo; }
# Bytes charged to a process's memory cgroup (v2 memory.current, or v1 memory.usage_in_bytes).
cgroup_memory() {  # PID
    local v2 v1
    v2=$(awk -F: '$1 == "0" && $2 == "" { print $3 }' "/proc/$1/cgroup")
    if [ -n "$v2" ] && [ -r "/sys/fs/cgroup$v2/memory.current" ]; then cat "/sys/fs/cgroup$v2/memory.current"; return; fi
    v1=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ { print $3 }' "/proc/$1/cgroup")
    if [ -n "$v1" ] && [ -r "/sys/fs/cgroup/memory$v1/memory.usage_in_bytes" ]; then cat "/sys/fs/cgroup/memory$v1/memory.usage_in_bytes"; return; fi
    echo 0
}

# The engine alone, no Tether: SESSIONS containers of the same definition created and started
# at once through the API, until each worker's socket exists. The floor of any cold start.
# With "precreated", every container is created beforehand and only the starts are timed: the
# floor even if a session's next container were created ahead of its next request.
engine_baseline() {  # fresh|precreated
    python3 - "$WORK/docker.sock" "$SESSIONS" "$WORK/baseline-$1" "$1" <<'PY'
import http.client, json, os, socket, sys, threading, time, hashlib
sock, n, run, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.makedirs(run, exist_ok=True)
class C(http.client.HTTPConnection):
    def __init__(self): super().__init__("docker", timeout=120)
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sock)
def call(method, path, body=None):
    c = C(); c.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
    r = c.getresponse(); data = r.read(); c.close(); return r.status, data
times, ids = [], []
def create(i):
    sid = hashlib.sha256(f"baseline-{mode}-{i}".encode()).hexdigest()
    d = f"{run}/{sid}"; os.makedirs(d); os.chown(d, -1, 1001); os.chmod(d, 0o770)
    spec = {"Image": "tether-session:bench", "User": "1001:1001", "NetworkDisabled": True,
            "Cmd": ["/tether-relay", "session-worker", "--socket", "/run/tether/worker.sock", "--session", sid],
            "Labels": {"tether.relay": "baseline"},
            "HostConfig": {"NetworkMode": "none", "ReadonlyRootfs": True, "CapDrop": ["ALL"],
                           "SecurityOpt": ["no-new-privileges"], "Memory": 512 << 20, "MemorySwap": 512 << 20,
                           "NanoCpus": 500000000, "PidsLimit": 64, "IpcMode": "private",
                           "Ulimits": [{"Name": "nofile", "Soft": 4096, "Hard": 4096}], "Binds": [f"{d}:/run/tether"]}}
    _, data = call("POST", f"/v1.41/containers/create?name=baseline-{mode}-{i}", spec)
    cid = json.loads(data)["Id"]; ids.append(cid)
    return cid, d
created = {i: create(i) for i in range(n)} if mode == "precreated" else {}
def one(i):
    t0 = time.monotonic()
    cid, d = created[i] if i in created else create(i)
    call("POST", f"/v1.41/containers/{cid}/start")
    while not os.path.exists(f"{d}/worker.sock"):
        time.sleep(0.001)
    times.append((time.monotonic() - t0) * 1000)
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
for cid in ids: call("DELETE", f"/v1.41/containers/{cid}?force=true")
times.sort()
print(f"{times[len(times) // 2]:.0f} {times[-1]:.0f}")
PY
}

# -- 1. cold start -----------------------------------------------------------------------------
log "engine baseline: $SESSIONS containers created and started at once, no Tether"
read -r BASE_P50 BASE_MAX <<< "$(engine_baseline fresh)"
log "engine baseline: $SESSIONS containers created beforehand, started at once"
read -r PRE_P50 PRE_MAX <<< "$(engine_baseline precreated)"
ISO_PORT=$(free_port); ISO_ADMIN=$(free_port)
start_relay isolated "$ISO_PORT" "$ISO_ADMIN" --isolation docker --docker-socket "$WORK/docker.sock" \
    --isolation-image tether-session:bench --isolation-run-dir "$WORK/run" --isolation-instance bench \
    --isolation-max-starts "$MAX_STARTS" --session-idle-timeout "$IDLE"
ISO_PID=$RELAY_PID
USERS=()
for i in $(seq 1 "$SESSIONS"); do USERS+=("bench-$i"); start_bridge "$ISO_PORT" "bench-$i"; done
wait_bridges "${USERS[@]}"
log "$SESSIONS bridges connected; their containers start, then park after ${IDLE}s idle"
wait_containers "$SESSIONS"
wait_containers 0
MEM_BEFORE=$(mem_available_kib)
: > "$WORK/ttfb.txt"
for round in $(seq 1 "$ROUNDS"); do
    CURLS=()
    for u in "${USERS[@]}"; do
        curl -s -o /dev/null -w '%{time_starttransfer} %{http_code}\n' \
            -H "Authorization: Bearer $(cat "$WORK/bridges/$u/token")" "http://127.0.0.1:$ISO_PORT/api/ollama/1k" \
            >> "$WORK/ttfb.txt" &
        CURLS+=($!)
    done
    for j in "${CURLS[@]}"; do wait "$j" || true; done
    log "cold-start round $round/$ROUNDS done"
    if [ "$round" -eq 1 ]; then
        # -- 2. memory of idle containers (measured now, between requests and the park) ---------
        sleep 0.5
        MEM_WITH=$(mem_available_kib)
        WORKER_KIB=0; SHIM_KIB=0; N=0
        for id in $(docker ps -q --no-trunc --filter label=tether.relay=bench); do
            pid=$(docker inspect --format '{{.State.Pid}}' "$id" 2>/dev/null) || continue
            [ "$pid" -gt 0 ] 2>/dev/null || continue
            cur=$(cgroup_memory "$pid")
            WORKER_KIB=$((WORKER_KIB + cur / 1024))
            shim=$(ps -eo pid=,rss=,args= | awk -v id="$id" 'index($0, "containerd-shim") && index($0, id) { s += $2 } END { print s + 0 }')
            SHIM_KIB=$((SHIM_KIB + shim))
            N=$((N + 1))
        done
    fi
    [ "$round" -lt "$ROUNDS" ] && wait_containers 0
done
STATS=$(python3 - "$WORK/ttfb.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
ok = sorted(float(t) * 1000 for t, code in rows if code == "200")
bad = sum(1 for _, code in rows if code != "200")
def pct(p):
    return ok[min(len(ok) - 1, max(0, int(round(p / 100 * len(ok) + 0.5)) - 1))]
print(f"{len(ok)} {bad} {pct(50):.0f} {pct(90):.0f} {pct(99):.0f} {ok[-1]:.0f} {ok[0]:.0f}")
PY
)
read -r TTFB_N TTFB_BAD TTFB_P50 TTFB_P90 TTFB_P99 TTFB_MAX TTFB_MIN <<< "$STATS"
START_P=$(curl -s "http://127.0.0.1:$ISO_ADMIN/metrics" | awk '/^tether_isolation_starts_in_progress_max / { print $2 }')

log "cold start of one session alone ($ROUNDS rounds)"
: > "$WORK/ttfb1.txt"
for round in $(seq 1 "$ROUNDS"); do
    wait_containers 0
    curl -s -o /dev/null -w '%{time_starttransfer} %{http_code}\n' \
        -H "Authorization: Bearer $(cat "$WORK/bridges/bench-1/token")" "http://127.0.0.1:$ISO_PORT/api/ollama/1k" >> "$WORK/ttfb1.txt"
done
SINGLE=$(python3 -c 'import sys; v = sorted(float(l.split()[0]) * 1000 for l in open(sys.argv[1]) if l.strip()); print(f"{v[len(v) // 2]:.0f} {v[-1]:.0f}")' "$WORK/ttfb1.txt")
read -r SINGLE_P50 SINGLE_MAX <<< "$SINGLE"

# -- 3. throughput: one session, isolated vs in process ----------------------------------------
rps() { awk '/Requests\/sec/ { print $2 }'; }
run_throughput() {  # LABEL PORT TOKEN_FILE PID
    local auth="Authorization: Bearer $(cat "$3")" url="http://127.0.0.1:$2/api/ollama" c0 c1 w0 w1
    curl -fsS -o /dev/null -H "$auth" "$url/1k" || die "$1: request failed"
    c0=$(cpu_ticks "$4"); w0=$(worker_ticks)
    wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "$auth" "$url/1k" > "$WORK/$1-1k.txt"
    c1=$(cpu_ticks "$4"); w1=$(worker_ticks)
    echo "$(rps < "$WORK/$1-1k.txt") $((c1 - c0)) $((w1 - w0))" > "$WORK/$1-1k.sum"
    wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "$auth" "$url/64k" > "$WORK/$1-64k.txt"
    curl -s -o /dev/null -w '%{speed_download}' -H "$auth" "$url/1g" > "$WORK/$1-1g.txt"
}
SOLO_SESSION=$(python3 -c 'import hashlib, sys; s = sys.argv[1].encode(); print(hashlib.sha256(b"tether-session-v1\0" + (0).to_bytes(4, "big") + len(s).to_bytes(4, "big") + s).hexdigest())' bench-1)
worker_ticks() {  # CPU of bench-1's worker (0 when not isolated)
    local pid
    pid=$(docker inspect --format '{{.State.Pid}}' "tether-session-$SOLO_SESSION" 2>/dev/null) || { echo 0; return; }
    [ "$pid" -gt 0 ] 2>/dev/null || { echo 0; return; }
    cpu_ticks "$pid"
}
# Only bench-1 stays: the other bridges go, their sessions and containers after them.
log "throughput through one docker-isolated session"
for u in "${USERS[@]:1}"; do stop_process "${BRIDGE_PID[$u]}"; done
curl -fsS -o /dev/null -H "Authorization: Bearer $(cat "$WORK/bridges/bench-1/token")" "http://127.0.0.1:$ISO_PORT/api/ollama/1k"
wait_containers 1
run_throughput isolated "$ISO_PORT" "$WORK/bridges/bench-1/token" "$ISO_PID"
stop_process "$ISO_PID"

log "throughput through the same session in process"
PROC_PORT=$(free_port); PROC_ADMIN=$(free_port)
start_relay inprocess "$PROC_PORT" "$PROC_ADMIN"
PROC_PID=$RELAY_PID
start_bridge "$PROC_PORT" solo
wait_bridges solo
run_throughput inprocess "$PROC_PORT" "$WORK/bridges/solo/token" "$PROC_PID"

read -r ISO_1K ISO_CPU ISO_WCPU < "$WORK/isolated-1k.sum"
read -r PROC_1K PROC_CPU _ < "$WORK/inprocess-1k.sum"
ISO_64K=$(rps < "$WORK/isolated-64k.txt"); PROC_64K=$(rps < "$WORK/inprocess-64k.txt")
ISO_1G=$(cat "$WORK/isolated-1g.txt"); PROC_1G=$(cat "$WORK/inprocess-1g.txt")
TICKS=$(getconf CLK_TCK)
pct_core() { awk -v t="$1" -v h="$TICKS" -v d="$DURATION" 'BEGIN { printf "%.0f%%", 100 * t / h / d }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v k="$1" -v n="$2" 'BEGIN { printf "%.1f MiB", k / n / 1024 }'; }

OUT="$BENCH_DIR/results/isolation.md"
{
    echo "# Docker isolation benchmark ($(date -u +%Y-%m-%d))"
    echo
    machine_description
    echo "- Docker: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
    echo
    echo "Command: \`Benchmarks/isolation.sh $DURATION\` (SESSIONS=$SESSIONS ROUNDS=$ROUNDS CONNS=$CONNS IDLE=$IDLE MAX_STARTS=$MAX_STARTS);"
    echo "relay 2 workers, release build; one tether-bridge per session, nginx as the local service; isolation defaults"
    echo "(512 MiB, 0.5 CPU) with $MAX_STARTS container starts at once. All on one machine."
    echo
    echo "## Cold start: $SESSIONS parked sessions, one request each at the same moment"
    echo
    echo "Request sent → first response byte (curl time_starttransfer), $TTFB_N requests over $ROUNDS rounds ($TTFB_BAD not 200):"
    echo
    echo "| p50 | p90 | p99 | max | min |"
    echo "|---|---|---|---|---|"
    echo "| ${TTFB_P50} ms | ${TTFB_P90} ms | ${TTFB_P99} ms | ${TTFB_MAX} ms | ${TTFB_MIN} ms |"
    echo
    echo "Most container starts in flight at once: ${START_P:-?} (cap $MAX_STARTS)."
    echo
    echo "One parked session alone, $ROUNDS times: median ${SINGLE_P50} ms, slowest ${SINGLE_MAX} ms."
    echo
    echo "The engine alone, same container definition, $SESSIONS created and started at once through the API"
    echo "until each worker's socket exists (no Tether, no cap): median ${BASE_P50} ms, slowest ${BASE_MAX} ms."
    echo "The same $SESSIONS created beforehand, only started at once: median ${PRE_P50} ms, slowest ${PRE_MAX} ms."
    echo
    echo "## Host memory per idle container ($N containers)"
    echo
    echo "| worker (cgroup memory.current) | containerd-shim RSS | MemAvailable drop |"
    echo "|---|---|---|"
    echo "| $(mib "$WORKER_KIB" "$N") | $(mib "$SHIM_KIB" "$N") | $(mib $((MEM_BEFORE - MEM_WITH)) "$N") |"
    echo
    echo "## One session's throughput (wrk -t1 -c$CONNS, ${DURATION}s)"
    echo
    echo "| | docker-isolated | in process | ratio |"
    echo "|---|---|---|---|"
    echo "| 1 KiB responses, requests/s | $ISO_1K | $PROC_1K | $(ratio "$ISO_1K" "$PROC_1K") |"
    echo "| 64 KiB responses, requests/s | $ISO_64K | $PROC_64K | $(ratio "$ISO_64K" "$PROC_64K") |"
    echo "| 1 GiB download, MB/s | $(awk -v b="$ISO_1G" 'BEGIN { printf "%.0f", b / 1e6 }') | $(awk -v b="$PROC_1G" 'BEGIN { printf "%.0f", b / 1e6 }') | $(ratio "$ISO_1G" "$PROC_1G") |"
    echo "| CPU during the 1 KiB run | relay $(pct_core "$ISO_CPU") + worker $(pct_core "$ISO_WCPU") | relay $(pct_core "$PROC_CPU") | |"
} > "$OUT"
cat "$OUT"
