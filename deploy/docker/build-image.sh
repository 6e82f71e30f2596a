#!/usr/bin/env bash
# Builds the image of Docker-isolated session containers (docs/ISOLATION.md) from a
# tether-relay binary, offline: FROM scratch with the binary and the shared libraries `ldd`
# lists (the Swift runtime, OpenSSL, liburing, jemalloc, glibc and its loader), nothing else:
# no shell, no package manager, no network tools.
#
#   deploy/docker/build-image.sh [BINARY] [TAG]
#
# BINARY defaults to .build/release/tether-relay, TAG to tether-session:latest (the default of
# isolation.image). The engine is the one `docker` talks to (DOCKER_HOST); the legacy builder is
# used (DOCKER_BUILDKIT=0), so no BuildKit and no registry are involved.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BINARY="${1:-$ROOT/.build/release/tether-relay}"
TAG="${2:-tether-session:latest}"
DOCKER="${DOCKER:-docker}"

[ -x "$BINARY" ] || { echo "error: $BINARY is not an executable (swift build -c release first)" >&2; exit 1; }
command -v ldd >/dev/null || { echo "error: ldd is needed" >&2; exit 1; }

CONTEXT="$(mktemp -d "${TMPDIR:-/tmp}/tether-image.XXXXXX")"
trap 'rm -rf "$CONTEXT"' EXIT
ROOTFS="$CONTEXT/rootfs"
mkdir -p "$ROOTFS/run/tether"
cp "$BINARY" "$ROOTFS/tether-relay"
chmod 0755 "$ROOTFS/tether-relay"

# Every library the loader would map, at the path the binary (and its RUNPATH) expects, with
# symbolic links resolved into real files.
ldd "$BINARY" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(0x/ { print $1 }' | sort -u | while read -r lib; do
    [ -e "$lib" ] || { echo "error: ldd lists $lib, which does not exist" >&2; exit 1; }
    mkdir -p "$ROOTFS$(dirname "$lib")"
    cp -L "$lib" "$ROOTFS$lib"
done
# The loader also looks for itself under /lib64 (x86_64) whatever ldd printed.
if [ -e /lib64/ld-linux-x86-64.so.2 ] && [ ! -e "$ROOTFS/lib64/ld-linux-x86-64.so.2" ]; then
    mkdir -p "$ROOTFS/lib64"
    cp -L /lib64/ld-linux-x86-64.so.2 "$ROOTFS/lib64/"
fi

cat > "$CONTEXT/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
USER 1001:1001
ENTRYPOINT []
CMD ["/tether-relay", "session-worker", "--help"]
LABEL org.opencontainers.image.title="tether-session" \
      org.opencontainers.image.description="Tether session worker: one Docker-isolated session (tether-relay session-worker)"
DOCKERFILE

echo "==> building $TAG from $BINARY ($(du -sh "$ROOTFS" | cut -f1) of files)"
DOCKER_BUILDKIT=0 "$DOCKER" build --quiet --tag "$TAG" "$CONTEXT" >/dev/null 2>"$CONTEXT/build.log" \
    || { cat "$CONTEXT/build.log" >&2; exit 1; }
echo "==> $TAG: $("$DOCKER" image inspect --format '{{.Id}} {{.Size}} bytes' "$TAG")"
