#!/usr/bin/env bash
# Sidecar overhead in one run: a trivial upstream reached directly, through
# tether-ingress, and through nginx (proxy_pass, keep-alive pool), each driven
# by wrk with the same connections. Everything runs on this machine; ports are
# free ones picked at start; every process started here is stopped at the end.
#
#   loadtest/proxy-bench.sh [DURATION_SECONDS=10] [CONNECTIONS=64] [ROUNDS=3]
#
# The ingress and nginx are run alternately ROUNDS times (the machine is
# noisy); the ratios printed are the medians of the per-round ratios. The
# overhead a proxy adds is the mean latency it adds per request at these
# connections: CONNECTIONS/rps(proxy) - CONNECTIONS/rps(direct).
#   INGRESS_BIN=/path/to/other/build loadtest/proxy-bench.sh   # A/B of two builds
#   SERVING_THREADS=0 loadtest/proxy-bench.sh                  # server.serving_threads (default "auto")
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cargo
ensure_redis
for tool in wrk nginx; do
    command -v $tool >/dev/null 2>&1 || { echo "$tool is missing: apt-get install wrk nginx" >&2; exit 1; }
done
DURATION=${1:-10}
CONNS=${2:-64}
ROUNDS=${3:-3}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() {
    # Newest first: the ingress goes before the Redis it talks to.
    # Each is waited for, so the ingress has drained before Redis goes away.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet --bin tether-ingress --example comparator
UP=$(free_port); ING=$(free_port); NGX=$(free_port); RDS=$(free_port)

redis-server --port "$RDS" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize no >/dev/null &
pids+=($!)
./target/release/examples/comparator ok "127.0.0.1:$UP" &
up_pid=$!
pids+=($up_pid)
if [ -n "${SERVING_THREADS:-}" ]; then
    printf '[server]\nserving_threads = %d\n' "$SERVING_THREADS" > "$work/ingress.toml"
else
    : > "$work/ingress.toml"
fi
TETHER_INGRESS_LISTEN="127.0.0.1:$ING" TETHER_INGRESS_REDIS_URL="redis://127.0.0.1:$RDS" \
TETHER_INGRESS_UPSTREAM_URL="http://127.0.0.1:$UP" TETHER_INGRESS_LOG=warn "${INGRESS_BIN:-./target/release/tether-ingress}" --config "$work/ingress.toml" &
ingress_pid=$!
pids+=($ingress_pid)
cat > "$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream backend { server 127.0.0.1:$UP; keepalive 128; }
    server {
        listen 127.0.0.1:$NGX;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" -g "daemon on;"

for i in $(seq 100); do
    curl -sf "http://127.0.0.1:$ING/readyz" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$NGX/x" >/dev/null 2>&1 && break
    sleep 0.1
done

# CPU seconds (user+sys) used so far by the given pids.
cpu_of() {
    local ticks=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$ticks"
}
proxy_pids() { # name
    case $1 in
        tether-ingress) echo "$ingress_pid" ;;
        nginx) pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' ' ;;
        *) echo "$up_pid" ;;
    esac
}
run() { # name url
    local out rps p50 p99 before after
    local pp; pp=$(proxy_pids "$1")
    # shellcheck disable=SC2086
    before=$(cpu_of $pp)
    out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$2")
    # shellcheck disable=SC2086
    after=$(cpu_of $pp)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    # CPU microseconds per request of the proxy (or of the upstream, for direct).
    cpu_us=$(awk -v t="$((after - before))" -v n="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    echo "$1 $rps $p50 $p99 ${non2xx:-0} $cpu_us"
}
echo "wrk -t2 -c$CONNS -d${DURATION}s, GET /api/leads?page=1 (upstream answers 200 \"ok\"), $ROUNDS alternating rounds" >&2
results=$(
    run direct "http://127.0.0.1:$UP/api/leads?page=1"
    for _ in $(seq "$ROUNDS"); do
        run tether-ingress "http://127.0.0.1:$ING/api/leads?page=1"
        run nginx "http://127.0.0.1:$NGX/api/leads?page=1"
    done
)
awk -v c="$CONNS" '
    function median(a, n,    i, j, t) {
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { name[NR]=$1; rps[NR]=$2; p50[NR]=$3; p99[NR]=$4; bad[NR]=$5; cpu[NR]=$6 }
    END {
        printf "%-16s %12s %10s %10s %8s %24s %18s\n", "path", "requests/s", "p50", "p99", "non-2xx", "proxy CPU/request (us)", "added latency (us)"
        for (i = 1; i <= NR; i++) {
            extra = (i == 1) ? "-" : sprintf("%.1f", (c / rps[i] - c / rps[1]) * 1e6)
            printf "%-16s %12.0f %10s %10s %8s %24s %18s\n", name[i], rps[i], p50[i], p99[i], bad[i], (i == 1) ? "-" : cpu[i], extra
        }
        n = 0
        for (i = 2; i + 1 <= NR; i += 2) {
            n++
            tr[n] = rps[i] / rps[i + 1]
            cr[n] = cpu[i] / cpu[i + 1]
            added[n] = (c / rps[i] - c / rps[1]) / (c / rps[i + 1] - c / rps[1])
        }
        printf "\ningress/nginx over %d rounds (medians): throughput %.2fx, added latency %.2fx, proxy CPU per request %.2fx (below 1 = the ingress costs less)\n", n, median(tr, n), median(added, n), median(cr, n)
    }' <<<"$results"
