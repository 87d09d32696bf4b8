#!/usr/bin/env bash
# Runs the browser end-to-end test against a stoa binary, inside a private network namespace:
#
#   unshare -n bash tests/browser/run.sh target/debug/stoa
#
# Brings up loopback, starts `STOA_BINARY serve --dev` (127.0.0.1:7880 HTTP/WebSocket,
# 127.0.0.1:7882 UDP media), waits for /healthz, runs e2e.mjs (headless Chromium with
# livekit-client), stops the server and exits with the test's status. The server's log is
# printed when the test fails. Every wait is bounded; the whole run is capped at 120 s.
#
# With STOA_E2E_RELAY=udp|tcp|tls the server also runs its TURN relay (127.0.0.1:3478 UDP/TCP,
# 127.0.0.1:5349 TLS with a certificate made here by openssl), the JoinResponse names only the
# relay URL of that transport, and both pages are relay-only (e2e.mjs, E2E_RELAY). Chromium gets
# --ignore-certificate-errors for the test certificate.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: unshare -n $0 STOA_BINARY" >&2
    exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
stoa=$(realpath "$1")

# Re-exec under an overall cap, unless already under it.
if [ -z "${STOA_E2E_CAPPED:-}" ]; then
    STOA_E2E_CAPPED=1 exec timeout --kill-after=5 120 bash "$0" "$@"
fi

# Refuse to run outside a private namespace: the test must never reach anything but loopback.
if ip -o link show | grep -qv ': lo:'; then
    echo "run.sh: this network namespace has interfaces other than lo;" \
        "run it as: unshare -n bash $0 STOA_BINARY" >&2
    exit 2
fi
ip link set lo up

if [ ! -x "$stoa" ]; then
    echo "run.sh: $stoa is not an executable" >&2
    exit 2
fi
if [ ! -d "$here/node_modules/livekit-client" ]; then
    echo "run.sh: $here/node_modules is missing: run ./test.sh (it runs npm ci there)" >&2
    exit 2
fi

work=$(mktemp -d -t stoa-e2e-run.XXXXXX)
server_log="$work/stoa.log"
server_pid=

cleanup() {
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

# Only the server's own STOA_* settings from dev mode: drop any inherited from the caller.
while IFS= read -r name; do
    case "$name" in
    STOA_E2E_CAPPED | STOA_E2E_RELAY | STOA_URL | STOA_API_KEY | STOA_API_SECRET) ;;
    STOA_*) unset "$name" ;;
    esac
done < <(compgen -e)

config_args=()
relay=${STOA_E2E_RELAY:-}
if [ -n "$relay" ]; then
    case "$relay" in
    udp) url="turn:127.0.0.1:3478?transport=udp" ;;
    tcp) url="turn:127.0.0.1:3478?transport=tcp" ;;
    tls) url="turns:127.0.0.1:5349?transport=tcp" ;;
    *)
        echo "run.sh: STOA_E2E_RELAY must be udp, tcp or tls, not $relay" >&2
        exit 2
        ;;
    esac
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$work/turn.key" -out "$work/turn.crt" 2>/dev/null
    # The relay reaches only the media engine's own address (127.0.0.1:7882 in dev mode).
    cat >"$work/stoa.toml" <<EOF
[turn]
enabled = true
tls_certificate = "$work/turn.crt"
tls_private_key = "$work/turn.key"
urls = ["$url"]
EOF
    config_args=(--config "$work/stoa.toml")
    export E2E_RELAY="$relay"
    export E2E_CHROMIUM_ARGS="${E2E_CHROMIUM_ARGS:-} --ignore-certificate-errors"
fi

echo "run.sh: starting $stoa serve --dev ${config_args[*]} (relay: ${relay:-none})" >&2
# A store of its own, so that runs never share (or lock) a store file.
STOA_DATA_DIR=$(mktemp -d -t stoa-e2e-data.XXXXXX)
export STOA_DATA_DIR
RUST_BACKTRACE=1 "$stoa" serve --dev "${config_args[@]}" --log-level "${STOA_E2E_SERVER_LOG:-info,stoa=debug,stoa_signaling=debug,stoa_sfu=debug}" \
    >"$server_log" 2>&1 </dev/null &
server_pid=$!

healthy=0
for _ in $(seq 150); do # 150 x 0.2 s = 30 s
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "run.sh: stoa exited before answering /healthz" >&2
        print_server_log
        exit 1
    fi
    if node -e "fetch('http://127.0.0.1:7880/healthz', { signal: AbortSignal.timeout(1000) })
        .then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))" 2>/dev/null; then
        healthy=1
        break
    fi
    sleep 0.2
done
if [ "$healthy" -ne 1 ]; then
    echo "run.sh: stoa did not answer http://127.0.0.1:7880/healthz within 30 s" >&2
    print_server_log
    exit 1
fi
echo "run.sh: stoa is up (pid $server_pid)" >&2

status=0
E2E_TIMEOUT_MS="${E2E_TIMEOUT_MS:-80000}" node "$here/e2e.mjs" || status=$?

if [ "$status" -ne 0 ]; then
    print_server_log
    echo "run.sh: browser e2e test FAILED (exit $status)" >&2
else
    echo "run.sh: browser e2e test passed" >&2
fi
exit "$status"
