#!/usr/bin/env bash
# Builds the web app when needed, then runs `stoa serve --dev` with it embedded:
#
#   ./run.sh                  # http://127.0.0.1:7880/
#   ./run.sh --log-level debug
#
# Installs cmake and a C compiler (the recorder's bundled libopus and the crypto backend are
# built from source) and Node.js and npm with apt when missing, runs `npm ci` in web/ when its lock file
# changed and `npm run build` when a source changed, then `cargo run --release -- serve --dev`
# with any arguments passed on. Set STOA_SKIP_WEB=1 to skip the web build.
set -euo pipefail
cd "$(dirname "$0")"

# shellcheck source=scripts/need_pkg.sh
source scripts/need_pkg.sh

# The recorder links libopus built from the source audiopus_sys ships (.cargo/config.toml).
need_pkg cmake cmake
need_pkg cc gcc

if [ -z "${STOA_SKIP_WEB:-}" ]; then
    need_pkg node nodejs
    need_pkg npm npm
    bash web/build.sh
fi

exec cargo run --release -- serve --dev "$@"
