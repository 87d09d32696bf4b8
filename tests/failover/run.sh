#!/usr/bin/env bash
# Runs a two-node scenario of the web app (tests/web/failover.mjs unless FAILOVER_SCENARIO names
# another file of tests/web, e.g. promotion.mjs) against two `stoa serve` nodes sharing one
# redis-server, inside a private network namespace:
#
#   unshare -n bash tests/failover/run.sh target/debug/stoa
#
# Brings up loopback, starts redis-server on 127.0.0.1:6390 and two nodes of STOA_BINARY
# (`serve --dev`: HTTP/WebSocket on 127.0.0.1:7880 and :7881, each its own public URL, UDP media
# on :7882 and :7892, node records expiring 2 s after their last heartbeat, each carrying
# FAILOVER_NODE_CAPACITY participants when set), waits for both, runs the scenario (which
# drains, lifts and kills nodes through FAILOVER_SERVER_TOKEN, a server token the caller signed
# with the dev key), stops everything and exits with the scenario's status. The logs are
# printed when it fails. Every wait is bounded; the whole run is capped at 200 s.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: unshare -n $0 STOA_BINARY" >&2
    exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
web="$here/../web"
stoa=$(realpath "$1")

if [ -z "${STOA_FAILOVER_CAPPED:-}" ]; then
    STOA_FAILOVER_CAPPED=1 exec timeout --kill-after=5 200 bash "$0" "$@"
fi

if ip -o link show | grep -qv ': lo:'; then
    echo "run.sh: this network namespace has interfaces other than lo;" \
        "run it as: unshare -n bash $0 STOA_BINARY" >&2
    exit 2
fi
ip link set lo up

scenario=${FAILOVER_SCENARIO:-failover.mjs}
case "$scenario" in
*/*) scenario= ;;
esac
if [ ! -f "$web/$scenario" ]; then
    echo "run.sh: FAILOVER_SCENARIO must name a file of tests/web, not '${FAILOVER_SCENARIO:-}'" >&2
    exit 2
fi
capacity=${FAILOVER_NODE_CAPACITY:-}
if [ -n "$capacity" ] && ! [[ "$capacity" =~ ^[1-9][0-9]*$ ]]; then
    echo "run.sh: FAILOVER_NODE_CAPACITY must be a positive number, not '$capacity'" >&2
    exit 2
fi

if [ ! -d "$web/node_modules/playwright-core" ]; then
    echo "run.sh: $web/node_modules is missing: run ./test.sh (it runs npm ci there)" >&2
    exit 2
fi

work=$(mktemp -d -t stoa-failover-run.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

print_logs() {
    for log in "$work"/*.log; do
        echo "----- $log -----" >&2
        cat "$log" >&2 || true
    done
}

# Only the settings given here: drop any STOA_* inherited from the caller.
while IFS= read -r name; do
    case "$name" in
    STOA_FAILOVER_CAPPED) ;;
    STOA_*) unset "$name" ;;
    esac
done < <(compgen -e)

redis-server --bind 127.0.0.1 --port 6390 --save '' --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 </dev/null &
pids+=($!)
# The nodes refuse to start without their store: wait (10 s at most) until Redis answers.
redis_up=0
for _ in $(seq 100); do
    if [ "$(redis-cli -h 127.0.0.1 -p 6390 ping 2>/dev/null)" = PONG ]; then
        redis_up=1
        break
    fi
    sleep 0.1
done
if [ "$redis_up" -ne 1 ]; then
    echo "run.sh: redis-server did not answer within 10 s" >&2
    print_logs
    exit 1
fi

printf '[control]\npresence_ttl = 2\n' >"$work/stoa.toml"
if [ -n "$capacity" ]; then
    printf 'node_capacity = %s\n' "$capacity" >>"$work/stoa.toml"
fi
for i in 0 1; do
    http=$((7880 + i))
    mkdir -p "$work/data$i"
    STOA_DATA_DIR="$work/data$i" STOA_HTTP_PORT=$http STOA_RTC_UDP_PORT=$((7882 + 10 * i)) \
        STOA_PUBLIC_URL="ws://127.0.0.1:$http" STOA_REDIS_URL=redis://127.0.0.1:6390 \
        STOA_DRAIN_SECONDS=1 RUST_BACKTRACE=1 \
        "$stoa" serve --dev --config "$work/stoa.toml" >"$work/stoa$i.log" 2>&1 </dev/null &
    pid=$!
    pids+=("$pid")
    echo "$pid" >"$work/stoa$i.pid"
done
export FAILOVER_NODE_PIDS
FAILOVER_NODE_PIDS="$(cat "$work/stoa0.pid"),$(cat "$work/stoa1.pid")"

for port in 7880 7881; do
    up=0
    for _ in $(seq 150); do # 150 x 0.2 s = 30 s
        if node -e "fetch('http://127.0.0.1:$port/healthz', { signal: AbortSignal.timeout(1000) })
            .then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))" 2>/dev/null; then
            up=1
            break
        fi
        sleep 0.2
    done
    if [ "$up" -ne 1 ]; then
        echo "run.sh: the node on :$port did not answer /healthz within 30 s" >&2
        print_logs
        exit 1
    fi
done

status=0
node "$web/$scenario" || status=$?
if [ "$status" -ne 0 ]; then
    print_logs
    echo "run.sh: $scenario FAILED (exit $status)" >&2
else
    echo "run.sh: $scenario passed" >&2
fi
exit "$status"
