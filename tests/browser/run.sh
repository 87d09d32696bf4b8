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
#
# With STOA_E2E_SIGNALING=legacy both pages use livekit-client's two-connection protocol on /rtc
# (`singlePeerConnection: false`) instead of its default, one connection on /rtc/v1 (e2e.mjs,
# E2E_SIGNALING); either way e2e.mjs checks which path each page spoke.
#
# With STOA_E2E_SCENARIO=hostile e2e.mjs runs hostile.mjs's attempts instead (a listener and a
# hard-muted speaker trying to publish and to send data, through the product's API).
# With STOA_E2E_CUT=1, page B's network path (its signaling connection, through a relay in
# e2e.mjs, and its media UDP ports) is cut with iptables rules inside this namespace for a few
# seconds and restored; B must resume its session (e2e.mjs, E2E_CUT).
#
# With STOA_E2E_RESTART=1 the server runs with `[shutdown] clients = "reconnect"`, and once B
# hears A, e2e.mjs runs $work/restart.sh: SIGTERM to the server, wait for it to exit, start the
# same binary with the same config and data directory, check that a control-plane room created
# before the restart is still there. The pages must reconnect by themselves and B hear A again.
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

work=$(mktemp -d -t stoa-e2e-run.XXXXXX)
# shellcheck source=../support/serve.sh
source "$here/../support/serve.sh"
require_loopback_only

if [ ! -x "$stoa" ]; then
    echo "run.sh: $stoa is not an executable" >&2
    exit 2
fi
if [ ! -d "$here/node_modules/livekit-client" ]; then
    echo "run.sh: $here/node_modules is missing: run ./test.sh (it runs npm ci there)" >&2
    exit 2
fi

# Only the server's own STOA_* settings from dev mode: drop any inherited from the caller.
while IFS= read -r name; do
    case "$name" in
    STOA_E2E_CAPPED | STOA_E2E_RELAY | STOA_E2E_RESTART | STOA_E2E_CUT | STOA_E2E_SCENARIO | STOA_E2E_SIGNALING | STOA_URL | STOA_API_KEY | STOA_API_SECRET) ;;
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

if [ "${STOA_E2E_RESTART:-}" = 1 ]; then
    [ -z "$relay" ] || { echo "run.sh: STOA_E2E_RESTART and STOA_E2E_RELAY do not combine" >&2; exit 2; }
    cat >"$work/stoa.toml" <<EOF
[shutdown]
clients = "reconnect"
EOF
    config_args=(--config "$work/stoa.toml")
fi

if [ "${STOA_E2E_CUT:-}" = 1 ]; then
    [ -z "$relay" ] && [ "${STOA_E2E_RESTART:-}" != 1 ] || { echo "run.sh: STOA_E2E_CUT runs alone" >&2; exit 2; }
    iptables_bin=$(command -v iptables || echo /usr/sbin/iptables)
    if [ ! -x "$iptables_bin" ]; then
        echo "run.sh: iptables is missing: run ./test.sh (it installs it)" >&2
        exit 2
    fi
    export E2E_CUT=1 E2E_IPTABLES="$iptables_bin"
fi

if [ "${STOA_E2E_SIGNALING:-}" = legacy ]; then
    export E2E_SIGNALING=legacy
fi

echo "run.sh: signaling: ${STOA_E2E_SIGNALING:-v1}, relay: ${relay:-none}, restart: ${STOA_E2E_RESTART:-0}, cut: ${STOA_E2E_CUT:-0}" >&2
server_args=("${config_args[@]}" --log-level "${STOA_E2E_SERVER_LOG:-info,stoa=debug,stoa_signaling=debug,stoa_sfu=debug}")
start_server "${server_args[@]}"

if [ "${STOA_E2E_RESTART:-}" = 1 ]; then
    # Control-plane state to find again after the restart: a live room with its host.
    host_token=$(env -u STOA_CONFIG "$stoa" token --dev --user --identity host-restart --name Host)
    room_json=$(node -e '
        fetch("http://127.0.0.1:7880/api/rooms", { method: "POST",
            headers: { authorization: `Bearer ${process.argv[1]}`, "content-type": "application/json" },
            body: JSON.stringify({ title: "Through a restart", kind: "stage" }),
            signal: AbortSignal.timeout(3000) })
          .then(async (r) => { const t = await r.text(); if (!r.ok) { console.error(r.status, t); process.exit(1); } console.log(t); })
          .catch((e) => { console.error(String(e)); process.exit(1); });' "$host_token")
    room_id=$(node -e 'console.log(JSON.parse(process.argv[1]).id)' "$room_json")
    echo "run.sh: control room $room_id created before the restart" >&2
    {
        printf '%s\n' '#!/usr/bin/env bash' 'set -euo pipefail'
        printf 'work=%q; stoa=%q; server_log=%q; room_id=%q; host_token=%q\n' \
            "$work" "$stoa" "$server_log" "$room_id" "$host_token"
        printf 'server_args=(' && printf '%q ' "${server_args[@]}" && printf ')\n'
        cat <<'EOF'
old=$(cat "$work/stoa.pid")
echo "restart: SIGTERM to $old"
kill -TERM "$old"
for _ in $(seq 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$old" 2>/dev/null; then echo "restart: the old server did not exit within 10 s" >&2; exit 1; fi
echo "----- restart -----" >>"$server_log"
RUST_BACKTRACE=1 "$stoa" serve --dev "${server_args[@]}" >>"$server_log" 2>&1 </dev/null &
echo $! >"$work/stoa.pid"
for _ in $(seq 150); do
    if node -e "fetch('http://127.0.0.1:7880/healthz', { signal: AbortSignal.timeout(1000) })
        .then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))" 2>/dev/null; then
        break
    fi
    sleep 0.2
done
node -e '
    fetch(`http://127.0.0.1:7880/api/rooms/${process.argv[1]}`, {
        headers: { authorization: `Bearer ${process.argv[2]}` }, signal: AbortSignal.timeout(3000) })
      .then(async (r) => {
        const room = await r.json();
        if (!r.ok || room.title !== "Through a restart" || room.state !== "live" || room.host !== "host-restart") {
          console.error("control state lost:", r.status, JSON.stringify(room)); process.exit(1);
        }
        console.log(`room ${room.id} is still ${room.state}, hosted by ${room.host}`);
      })
      .catch((e) => { console.error(String(e)); process.exit(1); });' "$room_id" "$host_token"
echo "restart: new server $(cat "$work/stoa.pid") is up"
EOF
    } >"$work/restart.sh"
    export E2E_RESTART_COMMAND="bash $work/restart.sh"
fi

if [ -n "${STOA_E2E_SCENARIO:-}" ]; then
    # The scenario takes user tokens from the same binary (`stoa token --dev --user`).
    export E2E_SCENARIO="$STOA_E2E_SCENARIO" STOA_BINARY="$stoa"
fi

status=0
E2E_TIMEOUT_MS="${E2E_TIMEOUT_MS:-80000}" node "$here/e2e.mjs" || status=$?

if [ "$status" -ne 0 ]; then
    print_server_log
    echo "run.sh: browser e2e test FAILED (exit $status)" >&2
else
    echo "run.sh: browser e2e test passed" >&2
fi
exit "$status"
