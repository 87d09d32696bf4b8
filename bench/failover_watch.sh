#!/usr/bin/env bash
# Where the origin's listeners' pause during an edge's failover comes from: the origin's
# forwarding, or the harness's reading.
#
#   unshare -n bash bench/failover_watch.sh target/release/stoa-bench target/release/stoa [OUT]
#
# Inside a private network namespace (loopback only) it runs `stoa-bench failover --kill edge`
# (1,000 listeners, capacity 501: 500 on the origin, 500 on an edge, the third node empty) and
# beside it samples, ten times a second and bounded by the run, every node's
# `sfu_rtp_packets_forwarded_total` (GET /metrics on each `stoa` process's loopback port) and
# the namespace's UDP counters (`/proc/net/snmp`: datagrams delivered to sockets, and those
# dropped because a socket's receive buffer was full). The harness's listeners all live in this
# namespace, so a datagram the origin sent that was not delivered would show as a receive-buffer
# drop. It prints the failover report and, per 100 ms from 1 s before the kill to 6 s after, the
# origin's forwarding rate and the namespace's delivered and dropped rates.
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: unshare -n $0 STOA_BENCH STOA [OUT_DIR]" >&2
    exit 2
fi
bench=$(realpath "$1")
stoa=$(realpath "$2")
out=${3:-$(mktemp -d /tmp/failover-watch.XXXXXX)}
mkdir -p "$out"

if ip -o link show | grep -qv ': lo:'; then
    echo "failover_watch.sh: run it in a private network namespace: unshare -n bash $0 ..." >&2
    exit 2
fi
ip link set lo up

touch "$out/on"
python3 - "$out" <<'PY' &
# The sampler: until OUT/on is removed, at most 10 minutes.
import os, re, subprocess, sys, time, urllib.request
out = sys.argv[1]
log = open(os.path.join(out, 'samples.txt'), 'w')
ports, scanned, start = set(), 0.0, time.time()
while os.path.exists(os.path.join(out, 'on')) and time.time() - start < 600:
    now = time.time()
    if now - scanned > 1:
        ss = subprocess.run(['ss', '-ltnpH'], capture_output=True, text=True).stdout
        ports = {m.group(1) for m in re.finditer(r'127\.0\.0\.1:(\d+)\s.*"stoa"', ss)}
        scanned = now
    for port in sorted(ports):
        try:
            body = urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=0.5).read().decode()
        except OSError:
            continue
        m = re.search(r'^sfu_rtp_packets_forwarded_total (\S+)', body, re.M)
        if m:
            log.write(f'{time.time():.3f} {port} {m.group(1)}\n')
    lines = [l.split() for l in open('/proc/net/snmp') if l.startswith('Udp:')]
    if len(lines) >= 2:
        row = dict(zip(lines[0], lines[1]))
        log.write(f"{time.time():.3f} udp {row['InDatagrams']} {row['RcvbufErrors']}\n")
    log.flush()
    time.sleep(max(0.0, 0.1 - (time.time() - now)))
PY
sampler=$!
RUST_LOG=stoa_bench=info timeout 600 "$bench" failover --listeners 1000 --join-rate 100 \
    --capacity 501 --kill edge --spawn "$stoa" --server-cpus 0 --bench-cpus 1 --give-up 40 \
    >"$out/run.txt" 2>&1 || status=$?
rm -f "$out/on"
wait "$sampler"
sed -i 's/\x1b\[[0-9;]*m//g' "$out/run.txt"
grep '^|' "$out/run.txt" || true

python3 - "$out" <<'PY'
import datetime, os, re, sys
out = sys.argv[1]
text = open(os.path.join(out, 'run.txt')).read()
m = re.search(r'(\d{4}-\d\d-\d\dT[\d:.]+)Z.*killing a node.*?origin=\S+:(\d+)', text)
if not m:
    sys.exit('failover_watch.sh: no kill in the run (see run.txt)')
kill = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
origin = m.group(2)
fwd, udp = [], []
for line in open(os.path.join(out, 'samples.txt')):
    f = line.split()
    if f[1] == origin:
        fwd.append((float(f[0]), float(f[2])))
    elif f[1] == 'udp':
        udp.append((float(f[0]), int(f[2]), int(f[3])))
def rates(xs):
    return [((b[0] + a[0]) / 2 - kill, [(y - x) / (b[0] - a[0]) for x, y in zip(a[1:], b[1:])])
            for a, b in zip(xs, xs[1:]) if b[0] > a[0]]
print('t after kill (s) | origin forwarded/s | delivered to sockets/s | receive-buffer drops/s')
f, u = rates(fwd), rates(udp)
for t, r in u:
    if -1 <= t <= 6:
        near = min(f, key=lambda x: abs(x[0] - t)) if f else (t, [float('nan')])
        print(f'{t:+.1f} | {near[1][0]:.0f} | {r[0]:.0f} | {r[1]:.0f}')
PY
exit "${status:-0}"
