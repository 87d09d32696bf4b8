#!/usr/bin/env bash
# TURN relay throughput, Stoa next to coturn, in one run on one machine:
#
#   unshare -n bash bench/turn_relay.sh target/release/stoa [CLIENTS] [MESSAGES] [ROUNDS]
#
# Inside a private network namespace (loopback only) it starts coturn's `turnserver` and
# `stoa turn`, each on its own ports with TURN REST credentials, and loads each in turn with
# coturn's `turnutils_uclient -y` (CLIENTS client pairs relaying to each other, MESSAGES
# 160-byte messages each, one per millisecond per client). Every message crosses the relay twice
# (client -> relay A -> relay B -> client). Per run it reads the server's CPU time from
# /proc/PID/stat and prints messages delivered, lost, wall time and delivered messages per
# server CPU-second. Rounds alternate between the servers so that drift hits both alike.
# Every wait is bounded; the servers are stopped by PID.
set -euo pipefail

if [ "$#" -lt 1 ]; then
    echo "usage: unshare -n $0 STOA_BINARY [CLIENTS] [MESSAGES] [ROUNDS]" >&2
    exit 2
fi
stoa=$(realpath "$1")
clients=${2:-50}
messages=${3:-2000}
rounds=${4:-3}

if ip -o link show | grep -qv ': lo:'; then
    echo "turn_relay.sh: run it in a private network namespace: unshare -n bash $0 ..." >&2
    exit 2
fi
ip link set lo up

secret=bench-secret
work=$(mktemp -d -t stoa-turn-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port=13478 \
    --min-port=49160 --max-port=49460 --use-auth-secret --static-auth-secret="$secret" \
    --realm=bench --no-tls --no-dtls --no-cli --allow-loopback-peers --fingerprint \
    --pidfile="$work/turnserver.pid" --log-file="$work/coturn.log" --simple-log --no-stdout-log &
coturn_pid=$!
pids+=("$coturn_pid")

cat >"$work/stoa.toml" <<EOF
[turn]
udp_port = 23478
tcp_port = 23478
relay_port_range_start = 23500
relay_port_range_end = 23800
secret = "$secret"
realm = "bench"
allowed_peers = ["127.0.0.1"]
max_allocations_per_user = 1000
allocate_burst = 10000
allocate_per_second = 10000
EOF
"$stoa" turn --dev --config "$work/stoa.toml" --log-level warn >"$work/stoa.log" 2>&1 &
stoa_pid=$!
pids+=("$stoa_pid")
sleep 1

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() {
    local name=$1 pid=$2 port=$3
    local before after start end out
    before=$(cpu_ticks "$pid")
    start=$(date +%s.%N)
    out=$(timeout 300 turnutils_uclient -y -c -z 1 -m "$clients" -n "$messages" -l 160 \
        -W "$secret" -u bench -p "$port" 127.0.0.1 2>&1 || true)
    end=$(date +%s.%N)
    after=$(cpu_ticks "$pid")
    local sent recv lost
    # A run that failed (no totals printed) is reported as such instead of ending the script.
    sent=$(grep -o 'tot_send_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2 || true)
    recv=$(grep -o 'tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2 || true)
    lost=$(grep -o 'Total lost packets [0-9]*' <<<"$out" | tail -1 | awk '{ print $4 }' || true)
    awk -v n="$name" -v s="${sent:-0}" -v r="${recv:-0}" -v l="${lost:-?}" -v t0="$start" \
        -v t1="$end" -v c0="$before" -v c1="$after" -v hz="$hz" 'BEGIN {
        cpu = (c1 - c0) / hz; wall = t1 - t0;
        printf "%-7s sent %8d recv %8d lost %6s wall %6.2f s server-cpu %6.2f s  %8.0f msg/s  %8.0f msg per cpu-s\n",
            n, s, r, l, wall, cpu, r / wall, (cpu > 0 ? r / cpu : 0) }'
}

echo "clients=$clients messages=$messages size=160 rounds=$rounds (uclient -y -c -z 1)"
for round in $(seq "$rounds"); do
    run coturn "$coturn_pid" 13478
    run stoa "$stoa_pid" 23478
done
