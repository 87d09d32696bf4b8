#!/usr/bin/env bash
# Builds the web app into web/dist (embedded into the stoa binary by build.rs), only when needed:
# `npm ci` when package-lock.json changed since the last install, `npm run build` when any
# source is newer than the last build. Used by ../run.sh and ../test.sh; needs node and npm.
set -euo pipefail
cd "$(dirname "$0")"

stamp=node_modules/.stoa-installed-package-lock.json
installed=0
if ! cmp -s package-lock.json "$stamp" 2>/dev/null; then
    echo "web/build.sh: npm ci"
    npm ci --no-audit --no-fund
    cp package-lock.json "$stamp"
    installed=1
fi

if [ "$installed" -eq 0 ] && [ -f dist/index.html ] &&
    [ -z "$(find index.html package-lock.json tsconfig.json vite.config.ts src public \
        -newer dist/index.html -print -quit)" ]; then
    exit 0
fi
echo "web/build.sh: npm run build"
npm run build
