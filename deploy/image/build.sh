#!/usr/bin/env bash
# Builds Berth's container image (the Dockerfile at the repository's root)
# with no base image to pull: a release build of the binary, then a context
# holding it, the shared libraries it links (as `ldd` lists them: glibc's
# loader, libc, libm, libgcc_s), CA certificates for an HTTPS object store or
# upstream, /etc/passwd and /etc/group with the unprivileged user 10001, and
# config/berth.toml as /etc/berth/berth.toml.
#
#   deploy/image/build.sh [TAG]        TAG defaults to berth:latest
#
# BERTH_BIN names a binary to use instead of building one; ENGINE picks the
# builder (default: podman, else buildah, else docker).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TAG="${1:-berth:latest}"
if [ -z "${BERTH_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked --bin berth)
  BERTH_BIN="$ROOT/target/release/berth"
fi
if [ -z "${ENGINE:-}" ]; then
  for candidate in podman buildah docker; do
    if command -v "$candidate" >/dev/null; then ENGINE="$candidate" && break; fi
  done
fi
[ -n "${ENGINE:-}" ] || { echo "build.sh: no podman, buildah or docker" >&2; exit 1; }

CTX="$(mktemp -d)"
trap 'rm -rf "$CTX"' EXIT
ROOTFS="$CTX/rootfs"
mkdir -p "$ROOTFS/usr/local/bin" "$ROOTFS/etc/berth" "$ROOTFS/etc/ssl/certs" "$CTX/data"
# The release profile keeps line tables for profiling; the image does not need them.
strip -o "$ROOTFS/usr/local/bin/berth" "$BERTH_BIN"
# Each library at the path the binary's loader looks for it.
ldd "$BERTH_BIN" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
  while read -r lib; do
    mkdir -p "$ROOTFS$(dirname "$lib")"
    cp -L "$lib" "$ROOTFS$lib"
  done
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\nberth:x:10001:10001:berth:/var/lib/berth:/sbin/nologin\n' \
  >"$ROOTFS/etc/passwd"
printf 'root:x:0:\nberth:x:10001:\n' >"$ROOTFS/etc/group"
printf 'hosts: files dns\n' >"$ROOTFS/etc/nsswitch.conf"
cp "$ROOT/config/berth.toml" "$ROOTFS/etc/berth/berth.toml"
mkdir -m 1777 "$ROOTFS/tmp"
cp "$ROOT/Dockerfile" "$CTX/Dockerfile"

case "$ENGINE" in
  buildah) buildah bud -q -t "$TAG" -f "$CTX/Dockerfile" "$CTX" ;;
  *) "$ENGINE" build -q -t "$TAG" -f "$CTX/Dockerfile" "$CTX" ;;
esac
echo "built $TAG with $ENGINE"
