#!/usr/bin/env bash
# Echo CPU benchmark: server CPU time per message, Tether's io_uring core vs. SwiftNIO.
#
# For each server (echo-server-tether, echo-server-nio) and each thread count in THREADS_LIST, the
# server runs pinned to core SERVER_CPU and `tether-loadtest echo` runs pinned to core DRIVER_CPU:
# CONNECTIONS connections doing closed-loop ping-pong of MESSAGE_SIZE-byte messages, WARMUP seconds
# unmeasured, then DURATION seconds measured. The server's CPU time (utime+stime) over the measured
# window comes from the driver (--server-pid: it reads /proc/PID/stat when the warmup ends and when
# the measured window ends). This script also samples /proc/PID/stat itself at about the same
# moments, as a cross-check, and falls back to that sample if the driver reports no CPU time.
# Each configuration runs REPEATS times, alternating which server goes first; medians are reported.
#
# Usage: Benchmarks/echo-cpu.sh        (environment variables below override the defaults)
# Output: a Markdown report on stdout and in Benchmarks/results/echo-cpu.md (OUT_MD).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNECTIONS=${CONNECTIONS:-1000}
MESSAGE_SIZE=${MESSAGE_SIZE:-64}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
REPEATS=${REPEATS:-3}
THREADS_LIST=${THREADS_LIST:-"1 2"}
# RATE=N: open loop, N messages/s in total (paced by the driver), so both servers carry the
# same load; empty: closed loop (as fast as echoes come back).
RATE=${RATE:-}
SERVER_CPU=${SERVER_CPU:-0}
DRIVER_CPU=${DRIVER_CPU:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT_MD=${OUT_MD:-$BENCH_DIR/results/echo-cpu.md}

LOADTEST="$ROOT_BIN/tether-loadtest"
WORK=$(mktemp -d /tmp/tether-echo-cpu.XXXXXX)
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && stop_process "$SERVER_PID"; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n "$(ulimit -Hn)"

if [ "$SKIP_BUILD" != 1 ]; then
    log "building echo-server-tether and echo-server-nio (release)"
    swift_build "$BENCH_DIR" -c release --scratch-path "$BENCH_DIR/.build" || die "benchmark build failed"
    log "building tether-loadtest (release)"
    swift_build "$ROOT_DIR" -c release --product tether-loadtest || die "tether-loadtest build failed"
fi
for bin in "$BENCH_BIN/echo-server-tether" "$BENCH_BIN/echo-server-nio" "$LOADTEST"; do
    [ -x "$bin" ] || die "missing $bin"
done
"$LOADTEST" echo --help >/dev/null 2>&1 || die "tether-loadtest has no 'echo' subcommand"
DRIVER_HAS_PID=0
"$LOADTEST" echo --help 2>&1 | grep -q -- '--server-pid' && DRIVER_HAS_PID=1

CLK_TCK=$(getconf CLK_TCK)
MACHINE=$(machine_description)
STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
RUNS="$WORK/runs.tsv"
printf 'threads\trep\tserver\tstatus\tjson\tscript_cpu_s\tdriver_cpu_s\tloadavg\n' >"$RUNS"

run_one() {  # SERVER THREADS REP
    local server=$1 threads=$2 rep=$3 flag port json drvlog srvlog status=ok
    case $server in
        tether) flag=--workers ;;
        nio) flag=--threads ;;
    esac
    srvlog="$WORK/$server-$threads-$rep.server.log"
    drvlog="$WORK/$server-$threads-$rep.driver.log"
    json="$WORK/$server-$threads-$rep.json"
    taskset -c "$SERVER_CPU" "$BENCH_BIN/echo-server-$server" --port 0 "$flag" "$threads" >"$srvlog" 2>&1 &
    SERVER_PID=$!
    port=$(wait_for_listen "$srvlog" "$SERVER_PID") || { cat "$srvlog" >&2; die "echo-server-$server did not start"; }
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    log "$server threads=$threads rep=$rep: port $port, pid $SERVER_PID, load $load"

    local pidflag=()
    [ "$DRIVER_HAS_PID" = 1 ] && pidflag=(--server-pid "$SERVER_PID")
    [ -n "$RATE" ] && pidflag+=(--rate "$RATE")
    local rc=0 driver
    taskset -c "$DRIVER_CPU" "$LOADTEST" echo --target "127.0.0.1:$port" --connections "$CONNECTIONS" \
        --message-size "$MESSAGE_SIZE" --duration "$DURATION" --warmup "$WARMUP" "${pidflag[@]}" \
        --json "$json" >"$drvlog" 2>&1 &
    driver=$!

    # The script's own sample of the server's (and the driver's) CPU over about the measured
    # window: a cross-check of the driver's figure, and the fallback if it reports none.
    local cpu0="$WORK/cpu0" cpu1="$WORK/cpu1"
    rm -f "$cpu0" "$cpu1"
    ( sleep "$WARMUP"; echo "$(cpu_ticks "$SERVER_PID") $(cpu_ticks "$driver")" >"$cpu0"
      sleep "$DURATION"; echo "$(cpu_ticks "$SERVER_PID") $(cpu_ticks "$driver")" >"$cpu1" ) 2>/dev/null &
    local sampler=$!
    wait "$driver" || rc=$?
    if [ "$rc" != 0 ]; then
        status="driver-exit-$rc"
        log "driver failed ($status); last lines:"; tail -5 "$drvlog" >&2
    fi
    wait "$sampler" 2>/dev/null || true
    kill -0 "$SERVER_PID" 2>/dev/null || { status="server-died"; log "echo-server-$server died:"; tail -5 "$srvlog" >&2; }
    stop_process "$SERVER_PID"
    SERVER_PID=""
    grep -v '^\[echo' "$drvlog" | sed 's/^/    /' >&2 || true

    local script_cpu="" driver_cpu=""
    if [ -s "$cpu0" ] && [ -s "$cpu1" ]; then
        script_cpu=$(paste -d' ' "$cpu0" "$cpu1" | awk -v hz="$CLK_TCK" 'NF == 4 { printf "%.2f", ($3 - $1) / hz }')
        driver_cpu=$(paste -d' ' "$cpu0" "$cpu1" | awk -v hz="$CLK_TCK" 'NF == 4 { printf "%.2f", ($4 - $2) / hz }')
    fi
    [ -s "$json" ] || { status="${status/ok/no-json}"; json=""; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$threads" "$rep" "$server" "$status" "$json" "$script_cpu" "$driver_cpu" "$load" >>"$RUNS"
}

for threads in $THREADS_LIST; do
    for rep in $(seq 1 "$REPEATS"); do
        if [ $((rep % 2)) = 1 ]; then order="tether nio"; else order="nio tether"; fi
        for server in $order; do
            run_one "$server" "$threads" "$rep"
            sleep 1  # let TIME_WAIT sockets and the scheduler settle
        done
    done
done

mkdir -p "$(dirname "$OUT_MD")"
python3 - "$RUNS" >"$OUT_MD" <<PY
import csv, json, statistics, sys

runs = []
for row in csv.DictReader(open(sys.argv[1]), delimiter="\t"):
    r = dict(row)
    data = json.load(open(r["json"])) if r["json"] else {}
    r["data"] = data
    r["messages"] = data.get("messages")
    r["seconds"] = data.get("seconds")
    r["errors"] = data.get("errors")
    r["failed"] = data.get("failed_connects")
    r["established"] = data.get("established", data.get("connections_established"))
    cpu = data.get("server_cpu_seconds")
    r["cpu_source"] = "driver"
    if cpu is None and r["script_cpu_s"]:
        cpu, r["cpu_source"] = float(r["script_cpu_s"]), "script"
    r["cpu"] = cpu
    ok = r["status"] == "ok" and r["messages"] and cpu is not None
    r["ok"] = bool(ok)
    r["rate"] = r["messages"] / r["seconds"] if r["messages"] and r["seconds"] else None
    r["us"] = cpu * 1e6 / r["messages"] if ok else None
    runs.append(r)

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def f(x, fmt):
    return "n/a" if x is None else format(x, fmt)

print("# Echo CPU per message: Tether (io_uring) vs. SwiftNIO")
print()
print("Run ${STARTED} by \`Benchmarks/echo-cpu.sh\`.")
print()
print("## Machine")
print()
print("""${MACHINE}""")
print()
print("## Setup")
print()
print("- ${CONNECTIONS} connections, " + ("open loop at ${RATE} messages/s in total (driver-paced), " if "${RATE}" else "closed-loop ping-pong, ") + "${MESSAGE_SIZE}-byte messages, ${WARMUP} s warmup + ${DURATION} s measured, ${REPEATS} runs per configuration alternating which server goes first; medians below.")
print("- Server pinned to CPU ${SERVER_CPU}, load driver pinned to CPU ${DRIVER_CPU} (with 2 threads, both server threads share CPU ${SERVER_CPU}).")
src = {r["cpu_source"] for r in runs if r["ok"]}
print("- Server CPU = utime+stime from /proc/PID/stat over the measured window, " +
      ("as reported by the driver (\`server_cpu_seconds\`, read by the driver when the warmup ends and when the window ends)." if src == {"driver"}
       else "sampled by the script around the window (the driver reported none)." if src == {"script"} else "mixed sources, see the runs table."))
print("  The script's own /proc sample (taken WARMUP s after the driver starts and DURATION s later) is listed in the runs table as a cross-check.")
print()
print("Commands, from the repository root (PORT is the port the server printed, PID its process id):")
print()
print("\`\`\`")
print("(cd Benchmarks && swift build -c release --scratch-path .build)")
print("swift build -c release --product tether-loadtest")
print("taskset -c ${SERVER_CPU} Benchmarks/.build/release/echo-server-tether --port 0 --workers N")
print("taskset -c ${SERVER_CPU} Benchmarks/.build/release/echo-server-nio --port 0 --threads N")
pid = " --server-pid PID" if "${DRIVER_HAS_PID}" == "1" else ""
print(f"taskset -c ${DRIVER_CPU} .build/release/tether-loadtest echo --target 127.0.0.1:PORT --connections ${CONNECTIONS} --message-size ${MESSAGE_SIZE} --duration ${DURATION} --warmup ${WARMUP}{pid}" + (" --rate ${RATE}" if "${RATE}" else "") + " --json OUT.json")
print("\`\`\`")
print()
print("## Results (medians)")
print()
print("| threads | server | messages/s | server CPU s | server core use | driver core use | CPU µs/message | tether/nio CPU per message |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for threads in sorted({r["threads"] for r in runs}, key=int):
    per = {}
    for server in ("tether", "nio"):
        rs = [r for r in runs if r["threads"] == threads and r["server"] == server and r["ok"]]
        per[server] = dict(
            n=len(rs),
            rate=med([r["rate"] for r in rs]),
            cpu=med([r["cpu"] for r in rs]),
            use=med([r["cpu"] / r["seconds"] for r in rs]),
            duse=med([float(r["driver_cpu_s"]) / r["seconds"] for r in rs if r["driver_cpu_s"]]),
            us=med([r["us"] for r in rs]))
    ratio = per["tether"]["us"] / per["nio"]["us"] if per["tether"]["us"] and per["nio"]["us"] else None
    for server in ("tether", "nio"):
        p = per[server]
        print(f"| {threads} | {server} ({p['n']} runs) | {f(p['rate'], ',.0f')} | {f(p['cpu'], '.2f')} | {f(p['use'] and p['use'] * 100, '.0f')}% | {f(p['duse'] and p['duse'] * 100, '.0f')}% | {f(p['us'], '.2f')} | {f(ratio, '.2f') if server == 'tether' else ''} |")
print()
print("tether/nio = median tether CPU µs/message ÷ median nio CPU µs/message (below 1: Tether spends less server CPU per echoed message).")
print()
print("\"server core use\" is server CPU seconds / measured seconds: near 100% means the server's core was saturated (throughput is server-bound). \"driver core use\" is the same for the load driver (script's /proc sample): near 100% means the driver limited throughput, and then messages/s says little about the server while CPU µs/message still does.")
print()
print("## All runs")
print()
print("| threads | rep | server | status | messages | seconds | messages/s | errors | failed connects | established | server CPU s (driver) | server CPU s (script) | driver CPU s (script) | CPU µs/message | load avg |")
print("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in runs:
    d = r["data"]
    print(f"| {r['threads']} | {r['rep']} | {r['server']} | {r['status']} | {f(r['messages'], 'd')} | {f(r['seconds'], '.2f')} | {f(r['rate'], ',.0f')} | {f(r['errors'], 'd')} | {f(r['failed'], 'd')} | {f(r['established'], 'd')} | {f(d.get('server_cpu_seconds'), '.2f')} | {r['script_cpu_s'] or 'n/a'} | {r['driver_cpu_s'] or 'n/a'} | {f(r['us'], '.2f')} | {r['loadavg']} |")
PY
cat "$OUT_MD"
log "wrote $OUT_MD"
