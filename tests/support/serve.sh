# Shared by tests/browser/run.sh and tests/web/run.sh (sourced, not run): the private network
# namespace check and a `stoa serve --dev` child with a store of its own, stopped on exit.
#
# The sourcing script sets `stoa` (the binary) and `work` (a scratch directory, removed on exit).

# Refuses to run outside a private namespace: the tests must never reach anything but loopback.
require_loopback_only() {
    if ip -o link show | grep -qv ': lo:'; then
        echo "run.sh: this network namespace has interfaces other than lo;" \
            "run it as: unshare -n bash $0 STOA_BINARY" >&2
        exit 2
    fi
    ip link set lo up
}

server_log="$work/stoa.log"
server_pid=

cleanup() {
    # A restart (tests/browser/run.sh, STOA_E2E_RESTART=1) leaves the new server's pid here.
    if [ -f "$work/stoa.pid" ]; then
        server_pid=$(cat "$work/stoa.pid")
    fi
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

print_server_log() {
    echo "----- stoa server log ($server_log) -----" >&2
    cat "$server_log" >&2 || true
    echo "----- end of stoa server log -----" >&2
}

# start_server ARGS...: `stoa serve --dev ARGS...` with a store of its own (so runs never share
# or lock a store file), then waits (30 s at most) until it answers /healthz on 127.0.0.1:7880.
start_server() {
    echo "run.sh: starting $stoa serve --dev $*" >&2
    STOA_DATA_DIR="$work/data"
    mkdir -p "$STOA_DATA_DIR"
    export STOA_DATA_DIR
    RUST_BACKTRACE=1 "$stoa" serve --dev "$@" >"$server_log" 2>&1 </dev/null &
    server_pid=$!
    echo "$server_pid" >"$work/stoa.pid"
    for _ in $(seq 150); do # 150 x 0.2 s = 30 s
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "run.sh: stoa exited before answering /healthz" >&2
            print_server_log
            exit 1
        fi
        if node -e "fetch('http://127.0.0.1:7880/healthz', { signal: AbortSignal.timeout(1000) })
            .then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))" 2>/dev/null; then
            echo "run.sh: stoa is up (pid $server_pid)" >&2
            return 0
        fi
        sleep 0.2
    done
    echo "run.sh: stoa did not answer http://127.0.0.1:7880/healthz within 30 s" >&2
    print_server_log
    exit 1
}
