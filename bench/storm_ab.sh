#!/usr/bin/env bash
# Two builds of `stoa` side by side under the same join storm, alternating, in one run:
#
#   unshare -n bash bench/storm_ab.sh BASE_STOA NEW_STOA [ROUNDS] [LISTENERS] [RATE]
#
# Each round runs `stoa-bench run --scenario join-storm` (1 speaker, LISTENERS listeners joining
# at RATE per second, 3 s of play) against BASE_STOA, then against NEW_STOA, server pinned to
# CPU 0 and harness to CPU 1, and prints join-to-first-audio, server CPU and RSS per client.
# Build the base from an older commit in a worktree of its own, e.g.
#   git worktree add /tmp/base OLD && (cd /tmp/base && cargo build --release -p stoa)
# Runs in a private network namespace (loopback only); every run is bounded by stoa-bench.
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: unshare -n $0 BASE_STOA NEW_STOA [ROUNDS] [LISTENERS] [RATE]" >&2
    exit 2
fi
base=$(realpath "$1")
new=$(realpath "$2")
rounds=${3:-2}
listeners=${4:-1000}
rate=${5:-200}

if ip -o link show | grep -qv ': lo:'; then
    echo "storm_ab.sh: run it in a private network namespace: unshare -n bash $0 ..." >&2
    exit 2
fi
ip link set lo up
cd "$(dirname "$0")/.."
bench=target/release/stoa-bench
[ -x "$bench" ] || cargo build --release -p stoa-bench

for round in $(seq "$rounds"); do
    for which in base new; do
        if [ "$which" = base ]; then stoa=$base; else stoa=$new; fi
        echo "== round $round: $which ($stoa)"
        "$bench" run --scenario join-storm --speakers 1 --listeners "$listeners" \
            --join-rate "$rate" --duration 3 --spawn "$stoa" --server-cpus 0 --bench-cpus 1 \
            --quiet | grep -E 'clients|join→audio|server cpu|server rss'
    done
done
