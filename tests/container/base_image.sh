#!/usr/bin/env bash
# Makes the Debian base image the container tests build on, unless podman already has it:
# no registry is reachable in CI, so `FROM debian:bookworm-slim` must resolve locally.
#
#   bash tests/container/base_image.sh
#
# debootstrap --variant=minbase bookworm from the machine's own Debian mirror (40-60 s), imported
# as localhost/debian:bookworm-slim and tagged docker.io/library/debian:bookworm-slim so that an
# unmodified `FROM debian:bookworm-slim` finds it without a pull. podman keeps it between runs.
# A Redis image (docker.io/library/redis:7-bookworm: Debian's redis-server on that base) is made
# the same way for docker/compose.yml.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF="$here/containers.conf"

base=docker.io/library/debian:bookworm-slim
if ! podman image exists "$base"; then
    mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    work=$(mktemp -d -t stoa-base-image.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    echo "base_image.sh: debootstrap bookworm from $mirror" >&2
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log" >&2
        exit 1
    }
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    tar --numeric-owner -C "$work/rootfs" -cf "$work/rootfs.tar" .
    podman import --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" localhost/debian:bookworm-slim >/dev/null
    podman tag localhost/debian:bookworm-slim "$base"
fi

redis=docker.io/library/redis:7-bookworm
if ! podman image exists "$redis"; then
    echo "base_image.sh: building $redis from Debian's redis-server" >&2
    podman build --quiet -t "$redis" -f - "$here" <<'DOCKERFILE' >/dev/null
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no"]
DOCKERFILE
fi
