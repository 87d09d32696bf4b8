#!/usr/bin/env bash
# Installs what the build needs, then runs every check CI runs: formatting, lints, the sans-IO
# core build without the tokio shell, and the tests.
set -euo pipefail
cd "$(dirname "$0")"

# shellcheck source=scripts/need_pkg.sh
source scripts/need_pkg.sh

# Add new system dependencies here, one line each.
need_pkg pkg-config pkg-config
# stoa-bench builds libopus from the source audiopus_sys ships (.cargo/config.toml), with cmake.
need_pkg cmake cmake
need_pkg node nodejs
need_pkg npm npm
need_pkg chromium chromium # browser end-to-end test (tests/browser.rs)
if ! fc-list 2>/dev/null | grep -qi emoji; then
    # The web app's reactions and icons in the walk-through's screenshots (tests/web.rs).
    need_pkg stoa-emoji-font-check fonts-noto-color-emoji
fi
need_pkg turnutils_uclient coturn # TURN relay tests (turn/tests/uclient.rs); its service is never started
need_pkg openssl openssl # test certificates for TURN over TLS
need_pkg redis-server redis-server # control-plane store tests (control/tests, tests/control.rs)
need_pkg janus janus # the comparison SFU of stoa-bench (tests/bench_smoke.rs); its service is never started
# The container image and docker/compose.yml, built and run with podman (tests/container.rs):
# runc (crun refuses this VM's hybrid cgroups), debootstrap for the locally made Debian base
# image (no registry is reachable), iptables for podman's port publishing (and for cutting a
# browser's network path in its namespace, tests/browser.rs's resume run).
need_pkg podman podman
need_pkg runc runc
need_pkg debootstrap debootstrap
need_pkg iptables iptables
need_pkg pebble pebble # ACME test server and its DNS (tests/acme.rs); never started as a service
need_pkg opusdec opus-tools # the reference Ogg/Opus reader the recordings are checked with (egress/tests/files.rs)

# npm packages of the browser end-to-end test and of tests/relay_browser.rs (playwright-core,
# livekit-client, livekit-server-sdk), pinned by tests/browser/package-lock.json. `npm ci` only when
# node_modules was not installed from this exact lock file.
browser_lock=tests/browser/package-lock.json
browser_stamp=tests/browser/node_modules/.stoa-installed-package-lock.json
if ! cmp -s "$browser_lock" "$browser_stamp" 2>/dev/null; then
    echo "test.sh: npm ci in tests/browser"
    (cd tests/browser && npm ci --no-audit --no-fund)
    cp "$browser_lock" "$browser_stamp"
fi

# npm packages of the web app walk-through (playwright-core), pinned by tests/web/package-lock.json.
web_test_lock=tests/web/package-lock.json
web_test_stamp=tests/web/node_modules/.stoa-installed-package-lock.json
if ! cmp -s "$web_test_lock" "$web_test_stamp" 2>/dev/null; then
    echo "test.sh: npm ci in tests/web"
    (cd tests/web && npm ci --no-audit --no-fund)
    cp "$web_test_lock" "$web_test_stamp"
fi

# npm packages of the client-SDK conformance test (@livekit/rtc-node with its prebuilt FFI
# library, livekit-server-sdk), pinned by tests/sdk/package-lock.json.
sdk_lock=tests/sdk/package-lock.json
sdk_stamp=tests/sdk/node_modules/.stoa-installed-package-lock.json
if ! cmp -s "$sdk_lock" "$sdk_stamp" 2>/dev/null; then
    echo "test.sh: npm ci in tests/sdk"
    (cd tests/sdk && npm ci --no-audit --no-fund)
    cp "$sdk_lock" "$sdk_stamp"
fi

# The web app (web/ -> web/dist), embedded into the stoa binary by build.rs, so that the tests
# (tests/web.rs) run against the real app. Rebuilt only when a source changed.
bash web/build.sh

# PyPI packages of the server-SDK test (livekit-api, tests/python/livekit_api_test.py) and of the
# client-SDK conformance test (livekit, numpy; tests/sdk/python_sdk.py), pinned by
# tests/python/requirements.txt, in a virtualenv; reinstalled only when that file changed.
need_pkg python3 python3
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian splits venv/ensurepip out of python3; need_pkg's command check cannot see them.
    need_pkg stoa-python3-venv-check python3-venv
fi
py_reqs=tests/python/requirements.txt
py_stamp=tests/python/.venv/.stoa-installed-requirements.txt
if ! cmp -s "$py_reqs" "$py_stamp" 2>/dev/null; then
    echo "test.sh: pip install in tests/python/.venv"
    rm -rf tests/python/.venv
    python3 -m venv tests/python/.venv
    tests/python/.venv/bin/pip install --quiet --disable-pip-version-check -r "$py_reqs"
    cp "$py_reqs" "$py_stamp"
fi

# cargo-fuzz for the fuzz build below (from crates.io, pinned).
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "test.sh: installing cargo-fuzz"
    cargo install --locked cargo-fuzz --version 0.13.2
fi

set -x
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The API documentation builds without broken or private links.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
cargo check -p stoa-sfu --no-default-features
cargo check -p stoa-turn --no-default-features
cargo check -p stoa-egress --no-default-features
test_log=$(mktemp -t stoa-test.XXXXXX)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace 2>&1 | tee "$test_log"
cargo check -p stoa-signaling --no-default-features

# Fuzz targets (fuzz/): build them and run each briefly, bounded in runs and time. cargo-fuzz
# needs nightly-only compiler flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
# Longer campaigns: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none -O signal_request
for target in signal_request engine_datagram turn_message signaling_core egress_input; do
    # signaling_core's input is a sequence of 3-byte actions: start with sequences, not bytes.
    lengths=""
    [ "$target" = signaling_core ] && lengths="-len_control=0 -max_len=96"
    # shellcheck disable=SC2086
    RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none -O "$target" -- \
        -runs=3000 -max_total_time=60 -rss_limit_mb=4096 $lengths
done

set +x
# One closing line over every test binary of the run.
awk '/^test result:/ { p += $4; f += $6 } END { printf "summary: %d passed, %d failed\n", p, f }' "$test_log"
