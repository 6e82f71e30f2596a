# Shared helpers for the benchmark scripts (sourced, not run).

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$BENCH_DIR/.." && pwd)
BENCH_BIN="$BENCH_DIR/.build/release"
ROOT_BIN="$ROOT_DIR/.build/release"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# swift build, retried when a source file changed under it (the tree is edited concurrently).
swift_build() {  # DIR ARGS...
    local dir=$1; shift
    local out attempt
    out=$(mktemp)
    for attempt in 1 2 3 4 5; do
        if (cd "$dir" && swift build "$@") >"$out" 2>&1; then
            grep -E "warning:" "$out" | sort -u >&2 || true
            rm -f "$out"
            return 0
        fi
        if grep -q "modified during the build" "$out"; then
            log "sources changed during the build; retrying ($attempt)"
            sleep 5
            continue
        fi
        grep -v '^\[' "$out" | tail -40 >&2
        rm -f "$out"
        return 1
    done
    rm -f "$out"
    return 1
}

# Waits for "listening on HOST:PORT" in a server's log and prints PORT.
wait_for_listen() {  # LOGFILE PID
    local i port
    for i in $(seq 1 200); do
        port=$(grep -o 'listening on [0-9.]*:[0-9]*' "$1" 2>/dev/null | head -1 | sed 's/.*://')
        if [ -n "$port" ]; then echo "$port"; return 0; fi
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# utime+stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat; the command name,
# field 2, may contain spaces, so count from the closing parenthesis).
cpu_ticks() {  # PID
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# A TCP port that was free a moment ago.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_process() {  # PID
    kill -TERM "$1" 2>/dev/null || true
    local i
    for i in $(seq 1 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

machine_description() {
    local model
    model=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*:[[:space:]]*//')
    echo "- nproc: $(nproc)"
    echo "- kernel: $(uname -sr)"
    echo "- CPU: ${model:-unknown} ($(grep -c '^processor' /proc/cpuinfo) logical CPUs in /proc/cpuinfo)"
    echo "- memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "- Swift: $(swift --version 2>&1 | grep -m1 -o 'Swift version [^ ]*')"
    echo "- tether commit: $(git -C "$ROOT_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT_DIR" status --porcelain 2>/dev/null | grep -q . && echo ' (work tree has uncommitted changes)')"
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# nginx (1 worker) serving $1/www/1k and a sparse 1 GiB file, plus a second server that is one
# reverse-proxy hop in front of it: the references every tunnel figure is a ratio to.
# Sets NGINX_PORT and PROXY_PORT and appends nginx's pid to PIDS.
start_nginx() {  # WORK
    local work=$1
    mkdir -p "$work/www" "$work/nginx"
    head -c 1024 /dev/urandom > "$work/www/1k"
    truncate -s 1G "$work/www/1g"
    chmod -R a+rX "$work"  # nginx workers run unprivileged
    NGINX_PORT=$(free_port)
    PROXY_PORT=$(free_port)
    cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream origin { server 127.0.0.1:$NGINX_PORT; keepalive 64; }
    server { listen 127.0.0.1:$NGINX_PORT; root $work/www; }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
    }
}
CONF
    /usr/sbin/nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
    PIDS+=($!)
    local i
    for i in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$NGINX_PORT/1k" && return 0; sleep 0.05; done
    die "nginx did not start: $(tail -5 "$work/nginx/error.log")"
}
