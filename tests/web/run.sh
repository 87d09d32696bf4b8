#!/usr/bin/env bash
# Runs the web app walk-through (walkthrough.mjs) against a stoa binary, inside a private network namespace:
#
#   unshare -n bash tests/web/run.sh target/debug/stoa
#
# Brings up loopback, starts `STOA_BINARY serve --dev` (127.0.0.1:7880 HTTP/WebSocket,
# 127.0.0.1:7882 UDP media, webhooks to 127.0.0.1:7890, where walkthrough.mjs receives them), waits for /healthz, checks that / serves the built web app (not
# the fallback page), runs walkthrough.mjs (headless Chromium, up to three browsers at once), stops the server and exits with the test's status. The server's log is
# printed when the test fails. Every wait is bounded; the whole run is capped at 430 s.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: unshare -n $0 STOA_BINARY" >&2
    exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
stoa=$(realpath "$1")

# Re-exec under an overall cap, unless already under it.
if [ -z "${STOA_WEB_CAPPED:-}" ]; then
    STOA_WEB_CAPPED=1 exec timeout --kill-after=5 430 bash "$0" "$@"
fi

work=$(mktemp -d -t stoa-web-run.XXXXXX)
# shellcheck source=../support/serve.sh
source "$here/../support/serve.sh"
require_loopback_only

if [ ! -x "$stoa" ]; then
    echo "run.sh: $stoa is not an executable" >&2
    exit 2
fi
if [ ! -d "$here/node_modules/playwright-core" ]; then
    echo "run.sh: $here/node_modules is missing: run ./test.sh (it runs npm ci there)" >&2
    exit 2
fi

# Only the server's own STOA_* settings from dev mode: drop any inherited from the caller.
while IFS= read -r name; do
    case "$name" in
    STOA_WEB_CAPPED | STOA_WEB_URL) ;;
    STOA_*) unset "$name" ;;
    esac
done < <(compgen -e)

# Webhooks (the media plane's and the control plane's) go to walkthrough.mjs's receiver.
export WEB_HOOK_PORT=7890
printf '[webhook]\nurls = ["http://127.0.0.1:%s/hook"]\n' "$WEB_HOOK_PORT" >"$work/stoa.toml"
start_server --config "$work/stoa.toml" --log-level "${STOA_WEB_SERVER_LOG:-info}"

# The binary must embed the built app, not the page that says how to build it.
if ! node -e "fetch('http://127.0.0.1:7880/rooms/x', { signal: AbortSignal.timeout(5000) })
    .then((r) => r.text()).then((t) => process.exit(t.includes('/assets/') ? 0 : 1), () => process.exit(1))"; then
    echo "run.sh: $stoa serves no built web app at / (web/dist was missing when it was built);" \
        "run ./test.sh or bash web/build.sh, then rebuild" >&2
    exit 1
fi

status=0
WEB_TIMEOUT_MS="${WEB_TIMEOUT_MS:-400000}" node "$here/walkthrough.mjs" || status=$?

if [ "$status" -ne 0 ]; then
    print_server_log
    echo "run.sh: web walk-through FAILED (exit $status)" >&2
else
    echo "run.sh: web walk-through passed" >&2
fi
exit "$status"
