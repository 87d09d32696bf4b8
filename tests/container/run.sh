#!/usr/bin/env bash
# Runs the image tests/container.rs built (localhost/stoa:ci) inside a private network namespace,
# so every container network, bridge and published port lives in that namespace and nothing but
# its loopback is reached:
#
#   unshare -n bash tests/container/run.sh STOA_BINARY        (STOA_CONTAINER_SCENARIO=...)
#
# STOA_CONTAINER_SCENARIO=image (default):
#   1. the container starts with a config file and a named volume at /var/lib/stoa, publishes
#      127.0.0.1:7880/tcp and 127.0.0.1:7882/udp, and answers /healthz;
#   2. its process runs as uid 10001, not root;
#   3. a room created through /api is stored on the volume;
#   4. livekit-client in Chromium (tests/browser/e2e.mjs) joins a room through the published
#      ports and hears audio;
#   5. `podman stop` (SIGTERM) with a signaling session open: the client is asked to leave, the
#      drain waits for it (it leaves after 3 s) and the container exits with status 0;
#   6. a new container on the same volume still has the room.
# STOA_CONTAINER_SCENARIO=compose: docker/compose.yml's services as the podman commands
#   tests/container.rs derives from it (STOA_COMPOSE_SCRIPT), with the CI image and a second Stoa
#   node on other ports: Redis and two Stoa containers sharing it; a room created through one
#   node is read through the other.
#
# STOA_BINARY (passed by the chromium runner) mints tokens on the host side. The last stdout
# line is a JSON summary. Every wait is bounded; the whole run is capped at 150 s.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: unshare -n $0 STOA_BINARY" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
stoa=$(realpath "$1")
scenario=${STOA_CONTAINER_SCENARIO:-image}
image=${STOA_CONTAINER_IMAGE:-localhost/stoa:ci}

if [ -z "${STOA_CONTAINER_CAPPED:-}" ]; then
    STOA_CONTAINER_CAPPED=1 exec timeout --kill-after=10 150 bash "$0" "$@"
fi

# The namespace must be private before anything is started in it.
if ip -o link show | grep -qv ': lo:'; then
    echo "run.sh: this network namespace has interfaces other than lo;" \
        "run it as: unshare -n bash $0 STOA_BINARY" >&2
    exit 2
fi
ip link set lo up

export CONTAINERS_CONF="$here/containers.conf"
work=$(mktemp -d -t stoa-container-run.XXXXXX)
tag="stoa-ci-$$"
started=$(date +%s)

log() { echo "run.sh [+$(($(date +%s) - started))s]: $*" >&2; }

cleanup() {
    local status=$?
    if [ -n "${compose_started:-}" ]; then
        compose_down
    fi
    for name in "$tag-1" "$tag-2"; do
        podman rm -f -v -t 0 "$name" >/dev/null 2>&1 || true
    done
    podman volume rm -f "$tag-data" >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# http METHOD URL [TOKEN] [JSON]: prints "STATUS BODY" (Node's fetch; 3 s per request).
http() {
    node -e '
        const [method, url, token, body] = process.argv.slice(1);
        const headers = {};
        if (token) headers.authorization = `Bearer ${token}`;
        if (body) headers["content-type"] = "application/json";
        fetch(url, { method, headers, body: body || undefined, signal: AbortSignal.timeout(3000) })
            .then(async (r) => console.log(r.status, await r.text()))
            .catch((e) => { console.log(0, String(e)); });
    ' "$@"
}

# wait_healthy URL NAME: 30 s at most.
wait_healthy() {
    for _ in $(seq 150); do
        if [ "$(http GET "$1/healthz")" = "200 ok" ]; then
            return 0
        fi
        sleep 0.2
    done
    log "$2 did not answer $1/healthz within 30 s"
    podman logs "$2" >&2 2>&1 || true
    exit 1
}

# json FIELD: reads a JSON object on stdin, prints FIELD.
json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s)[process.argv[1]] ?? ""))' "$1"; }

fail() {
    log "FAILED: $*"
    echo "{\"ok\":false,\"scenario\":\"$scenario\",\"error\":\"$*\"}"
    exit 1
}

# user_token ID: a control-API user token signed with the containers' key (devkey).
user_token() {
    env -u STOA_CONFIG STOA_KEYS="devkey: secret" "$stoa" token --user --identity "$1" --name "$1"
}

case "$scenario" in
image)
    cat >"$work/stoa.toml" <<EOF
# Inside the container's own network namespace Stoa listens on every interface; podman
# publishes the ports on this namespace's 127.0.0.1, which is what clients reach and what
# the ICE candidates name.
bind_ip = "0.0.0.0"
advertise_ip = "127.0.0.1"
[rtc]
udp_port = 7882
[keys]
devkey = "secret"
[shutdown]
drain_seconds = 20
EOF
    chmod 644 "$work/stoa.toml"
    podman volume create "$tag-data" >/dev/null
    run_container() {
        podman run -d --name "$1" \
            -p 127.0.0.1:7880:7880/tcp -p 127.0.0.1:7882:7882/udp \
            -v "$work/stoa.toml:/etc/stoa/stoa.toml:ro" \
            -v "$tag-data:/var/lib/stoa" \
            "$image" >/dev/null
    }

    log "starting $image"
    run_container "$tag-1"
    wait_healthy http://127.0.0.1:7880 "$tag-1"
    log "1. /healthz answers through the published port"

    uid=$(podman exec "$tag-1" id -u)
    [ "$uid" = 10001 ] || fail "the container runs as uid $uid, not 10001"
    proc_user=$(podman top "$tag-1" user comm | awk '$2 == "stoa" { print $1 }')
    [ "$proc_user" = stoa ] || fail "the stoa process runs as '$proc_user', not stoa"
    log "2. stoa runs as uid 10001 (user stoa)"

    host_token=$(user_token host-ci)
    created=$(http POST http://127.0.0.1:7880/api/rooms "$host_token" \
        '{"title":"Container volume check","kind":"stage"}')
    [ "${created%% *}" = 201 ] || [ "${created%% *}" = 200 ] || fail "create room: $created"
    room_id=$(echo "${created#* }" | json id)
    [ -n "$room_id" ] || fail "no room id in: $created"
    log "3. room $room_id created (stored on volume $tag-data)"

    log "4. livekit-client in Chromium joins through 127.0.0.1:7880/tcp and 127.0.0.1:7882/udp"
    e2e_status=0
    STOA_URL=ws://127.0.0.1:7880 STOA_API_KEY=devkey STOA_API_SECRET=secret \
        E2E_TIMEOUT_MS=70000 node "$repo/tests/browser/e2e.mjs" >"$work/e2e.out" || e2e_status=$?
    tail -n 1 "$work/e2e.out" >&2
    if [ "$e2e_status" -ne 0 ]; then
        cat "$work/e2e.out" >&2
        podman logs "$tag-1" 2>&1 | tail -40 >&2
        fail "the browser scenario failed against the container (exit $e2e_status)"
    fi
    grep -q '"ok":true' "$work/e2e.out" || fail "the browser scenario did not report ok"

    # A signaling session that stays 3 s, then closes: the drain must wait for it.
    probe_token=$(env -u STOA_CONFIG STOA_KEYS="devkey: secret" "$stoa" token --identity drain-probe --room drain-room)
    node -e '
        const net = require("node:net");
        const s = net.connect(7880, "127.0.0.1", () => s.write(
            `GET /rtc?access_token=${process.argv[1]}&protocol=16 HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"));
        let head = "";
        s.on("data", (d) => {
            if (head.includes("\r\n\r\n")) return;
            head += d.toString("latin1");
            if (!head.startsWith("HTTP/1.1 101")) { console.error("upgrade refused:", head); process.exit(1); }
            if (head.includes("\r\n\r\n")) {
                require("node:fs").writeFileSync(process.argv[2], "joined");
                // Leave after 3 s with a masked close frame, as a client does.
                setTimeout(() => { s.end(Buffer.from([0x88, 0x80, 0, 0, 0, 0])); }, 3000);
            }
        });
        s.on("error", () => {});
        setTimeout(() => process.exit(0), 10000);' "$probe_token" "$work/probe.joined" &
    probe_pid=$!
    for _ in $(seq 50); do [ -f "$work/probe.joined" ] && break; sleep 0.1; done
    [ -f "$work/probe.joined" ] || fail "the drain probe could not join"
    stop_started=$(date +%s%N)
    podman stop -t 30 "$tag-1" >/dev/null
    stop_ms=$((($(date +%s%N) - stop_started) / 1000000))
    kill "$probe_pid" 2>/dev/null || true
    exit_code=$(podman inspect "$tag-1" --format '{{.State.ExitCode}}')
    [ "$exit_code" = 0 ] || fail "the container exited with $exit_code after SIGTERM"
    stop_log=$(podman logs "$tag-1" 2>&1)
    grep -q 'shutting down signal="SIGTERM"' <<<"$stop_log" || fail "no SIGTERM in the log"
    grep -q 'asked clients to leave sessions=1' <<<"$stop_log" || fail "the connected client was not asked to leave"
    grep -q 'drained: every room is empty' <<<"$stop_log" || fail "the drain did not wait for the room to empty"
    grep -q 'INFO stoa::serve: stopped' <<<"$stop_log" || fail "no clean stop in the log"
    [ "$stop_ms" -ge 1500 ] || fail "stopped in ${stop_ms} ms, before the connected client left"
    log "5. SIGTERM: asked the connected client to leave, waited for it, exited 0 in ${stop_ms} ms"

    podman rm -v "$tag-1" >/dev/null
    run_container "$tag-2"
    wait_healthy http://127.0.0.1:7880 "$tag-2"
    card=$(http GET "http://127.0.0.1:7880/api/rooms/$room_id/card")
    [ "${card%% *}" = 200 ] || fail "room $room_id lost after the restart: $card"
    echo "$card" | grep -q 'Container volume check' || fail "room card without its title: $card"
    log "6. a new container on the same volume still has room $room_id"
    podman stop -t 30 "$tag-2" >/dev/null
    echo "{\"ok\":true,\"scenario\":\"image\",\"stop_ms\":$stop_ms,\"seconds\":$(($(date +%s) - started))}"
    ;;

compose)
    # docker/compose.yml as podman commands (tests/container.rs writes them: compose_up,
    # compose_down), beside the config it mounts (./stoa.toml = $work/stoa.toml).
    [ -f "${STOA_COMPOSE_SCRIPT:-}" ] || fail "STOA_COMPOSE_SCRIPT is not set (tests/container.rs sets it)"
    project=${STOA_COMPOSE_PROJECT:?}
    # shellcheck source=/dev/null
    source "$STOA_COMPOSE_SCRIPT"
    compose_started=1
    cat >"$work/stoa.toml" <<EOF
# Host networking (in this private namespace): both nodes on 127.0.0.1, each on its own ports
# (the second one's come from STOA_HTTP_PORT / STOA_RTC_UDP_PORT), sharing Redis through
# STOA_REDIS_URL from compose.yml.
bind_ip = "127.0.0.1"
advertise_ip = "127.0.0.1"
[rtc]
udp_port = 7882
[keys]
devkey = "secret"
[shutdown]
drain_seconds = 5
EOF
    chmod 644 "$work/stoa.toml"
    log "compose_up: redis, stoa, stoa2"
    compose_up >"$work/compose.log" 2>&1 || {
        cat "$work/compose.log" >&2
        fail "podman run of a compose service failed"
    }
    wait_healthy http://127.0.0.1:7880 "$project-stoa"
    wait_healthy http://127.0.0.1:7881 "$project-stoa2"
    for node in stoa stoa2; do
        grep -q 'store=Redis' <<<"$(podman logs "$project-$node" 2>&1)" || fail "$node does not use Redis"
    done
    [ "$(podman exec "$project-redis" redis-cli ping)" = PONG ] || fail "redis does not answer"

    host_token=$(user_token host-compose)
    created=$(http POST http://127.0.0.1:7880/api/rooms "$host_token" \
        '{"title":"Shared through Redis","kind":"stage"}')
    room_id=$(echo "${created#* }" | json id)
    [ -n "$room_id" ] || fail "create room on node 1: $created"
    seen=$(http GET "http://127.0.0.1:7881/api/rooms/$room_id" "$host_token")
    [ "${seen%% *}" = 200 ] || fail "node 2 does not see room $room_id: $seen"
    grep -q 'Shared through Redis' <<<"$seen" || fail "node 2 sees another room: $seen"
    log "a room created through node 1 is read through node 2 (shared Redis)"
    echo "{\"ok\":true,\"scenario\":\"compose\",\"seconds\":$(($(date +%s) - started))}"
    ;;
*)
    echo "run.sh: STOA_CONTAINER_SCENARIO must be image or compose, not $scenario" >&2
    exit 2
    ;;
esac
