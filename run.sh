#!/usr/bin/env bash
# Builds the web app when needed, then runs `stoa serve --dev` with it embedded:
#
#   ./run.sh                  # http://127.0.0.1:7880/
#   ./run.sh --log-level debug
#
# Installs Node.js and npm with apt when missing, runs `npm ci` in web/ when its lock file
# changed and `npm run build` when a source changed, then `cargo run --release -- serve --dev`
# with any arguments passed on. Set STOA_SKIP_WEB=1 to skip the web build.
set -euo pipefail
cd "$(dirname "$0")"

apt_updated=0

# need_pkg COMMAND DEBIAN_PACKAGE: installs the package when the command is missing.
need_pkg() {
    local command=$1 package=$2
    if command -v "$command" >/dev/null 2>&1; then
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    if [ "$apt_updated" -eq 0 ]; then
        "${sudo[@]}" apt-get update -qq
        apt_updated=1
    fi
    echo "run.sh: installing $package (for $command)"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$package"
}

if [ -z "${STOA_SKIP_WEB:-}" ]; then
    need_pkg node nodejs
    need_pkg npm npm
    bash web/build.sh
fi

exec cargo run --release -- serve --dev "$@"
