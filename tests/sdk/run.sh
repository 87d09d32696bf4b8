#!/usr/bin/env bash
# Runs the client-SDK conformance scenarios against a stoa binary, inside a private network
# namespace:
#
#   unshare -n bash tests/sdk/run.sh target/debug/stoa [python|node]...
#
# (or with the scenarios in STOA_SDK_SCENARIOS, space-separated).
# Brings up loopback and a veth pair whose end holds 127.0.0.2: the SDKs built on libwebrtc
# (Python `livekit`, `@livekit/rtc-node`) gather no ICE candidates on a loopback interface, and a
# loopback-range address on another interface fixes that (the server still binds and advertises
# 127.0.0.1 only). Then starts `STOA_BINARY serve --dev`, runs each named scenario (default: all)
# against it, stops the server and exits non-zero if any scenario failed. Every wait is bounded;
# the whole run is capped at 300 s. Each scenario's last stdout line is its JSON summary.
set -euo pipefail

if [ "$#" -lt 1 ]; then
    echo "usage: unshare -n $0 STOA_BINARY [python|node]..." >&2
    exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
stoa=$(realpath "$1")
shift
scenarios=("$@")
if [ "${#scenarios[@]}" -eq 0 ]; then
    read -r -a scenarios <<<"${STOA_SDK_SCENARIOS:-python node}"
fi

# Re-exec under an overall cap, unless already under it.
if [ -z "${STOA_SDK_CAPPED:-}" ]; then
    STOA_SDK_CAPPED=1 exec timeout --kill-after=5 300 bash "$0" "$stoa" "${scenarios[@]}"
fi

work=$(mktemp -d -t stoa-sdk-run.XXXXXX)
# shellcheck source=../support/serve.sh
source "$here/../support/serve.sh"
require_loopback_only

# libwebrtc skips loopback interfaces when gathering: give it 127.0.0.2 on a veth.
ip link add stoa-sdk0 type veth peer name stoa-sdk1
for dev in stoa-sdk0 stoa-sdk1; do
    echo 1 >"/proc/sys/net/ipv6/conf/$dev/disable_ipv6" 2>/dev/null || true
done
ip addr add 127.0.0.2/32 dev stoa-sdk0
ip link set stoa-sdk1 up
ip link set stoa-sdk0 up

# Only the server's own STOA_* settings from dev mode: drop any inherited from the caller.
while IFS= read -r name; do
    case "$name" in
    STOA_SDK_CAPPED) ;;
    STOA_*) unset "$name" ;;
    esac
done < <(compgen -e)

start_server --log-level "${STOA_SDK_SERVER_LOG:-info,stoa_signaling=debug}"

export STOA_URL=ws://127.0.0.1:7880 STOA_API_KEY=devkey STOA_API_SECRET=secret
failed=()
for scenario in "${scenarios[@]}"; do
    echo "run.sh: scenario $scenario" >&2
    status=0
    case "$scenario" in
    python)
        py="$repo/tests/python/.venv/bin/python"
        if [ ! -x "$py" ]; then
            echo "run.sh: $py is missing: run ./test.sh (it installs tests/python/requirements.txt)" >&2
            exit 2
        fi
        timeout --kill-after=5 170 "$py" "$here/python_sdk.py" || status=$?
        ;;
    node)
        if [ ! -d "$here/node_modules/@livekit/rtc-node" ]; then
            echo "run.sh: $here/node_modules is missing: run ./test.sh (it runs npm ci there)" >&2
            exit 2
        fi
        # NODE_ENV=production: the SDK's logger at info, not debug.
        NODE_ENV=production timeout --kill-after=5 170 node "$here/node_sdk.mjs" || status=$?
        ;;
    *)
        echo "run.sh: unknown scenario $scenario" >&2
        exit 2
        ;;
    esac
    # Which signaling path the SDK's joins took, from the server's counter (tests/sdk.rs checks
    # this line): `/rtc/v1` (one peer connection) or the legacy `/rtc`.
    joins=$(node -e '
        const n = (text, path) => {
            const line = text.split("\n").find((l) => l.startsWith(`signaling_joins_total{path="${path}"}`));
            return line ? Number(line.trim().split(" ").pop()) : 0;
        };
        fetch("http://127.0.0.1:7880/metrics", { signal: AbortSignal.timeout(3000) })
            .then((r) => r.text())
            .then((t) => console.log(`v1=${n(t, "v1")} legacy=${n(t, "legacy")}`), () => console.log("unknown"));
        ' 2>/dev/null || echo unknown)
    echo "run.sh: signaling joins after $scenario: $joins" >&2
    if [ "$status" -ne 0 ]; then
        echo "run.sh: scenario $scenario FAILED (exit $status)" >&2
        failed+=("$scenario")
    else
        echo "run.sh: scenario $scenario passed" >&2
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    print_server_log
    echo "run.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "run.sh: every SDK scenario passed" >&2
