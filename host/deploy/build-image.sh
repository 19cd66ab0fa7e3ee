#!/usr/bin/env bash
# Builds the tidecast container image from scratch with podman, needing no registry: it
# assembles the image's root file system here from a built binary (the binary, the shared
# libraries it links as ldd lists them, the CA bundle, /etc/passwd and /etc/group lines for the
# unprivileged user 65532, /tmp, and the data directory /var/lib/tidecast owned by that user),
# then runs `podman build --runtime runc` on host/deploy/Containerfile.scratch.
#
# Usage: host/deploy/build-image.sh [--tag TAG] [BINARY]
#          builds localhost/tidecast:TAG (default: latest) from BINARY (default: the release
#          binary, $CARGO_TARGET_DIR/release/tidecast or target/release/tidecast)
#        host/deploy/build-image.sh --root-only DIR [BINARY]
#          only assembles the root in DIR (which must not exist yet), data directory included,
#          for `chroot --userspec=65532:65532 DIR /usr/local/bin/tidecast serve ...`
# Run it as root (podman's root storage; chown of the data directory). It prints the image's
# name last. The image runs as tests/deploy.rs runs it:
#   podman --runtime runc run -d --network host --ulimit nofile=4096:4096 \
#     --ulimit nproc=1024:1024 -v tidecast:/var/lib/tidecast \
#     -e TIDECAST_ADMIN_PASSWORD=... localhost/tidecast:latest
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
tag=latest
root_only=""
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --root-only) root_only=${2:?--root-only needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "build-image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
binary=${1:-${CARGO_TARGET_DIR:-$top/target}/release/tidecast}
[ -x "$binary" ] || { echo "build-image.sh: no binary at $binary (cargo build --release --locked --bin tidecast, or name one)" >&2; exit 1; }
cabundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$cabundle" ] || { echo "build-image.sh: no CA bundle at $cabundle (Debian's ca-certificates)" >&2; exit 1; }
command -v ldd >/dev/null || { echo "build-image.sh: ldd is missing (Debian's libc-bin)" >&2; exit 1; }

# The root file system: what the binary needs to run, nothing else (no shell).
assemble() {
  local root=$1 lib
  install -D -m 0755 "$binary" "$root/usr/local/bin/tidecast"
  install -D -m 0644 "$cabundle" "$root$cabundle"
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)";
  # linux-vdso.so.1 has no file. A static binary needs none ("not a dynamic executable").
  local libs
  libs=$(ldd "$binary" 2>/dev/null || true)
  for lib in $(printf '%s\n' "$libs" | grep -o '/[^ ]*' || true); do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
  mkdir -p "$root/etc"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/tidecast:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  install -d -m 1777 "$root/tmp"
}

if [ -n "$root_only" ]; then
  [ ! -e "$root_only" ] || { echo "build-image.sh: $root_only exists already" >&2; exit 1; }
  assemble "$root_only"
  install -d -m 0700 -o 65532 -g 65532 "$root_only/var/lib/tidecast"
  echo "$root_only"
  exit 0
fi

command -v podman >/dev/null || { echo "build-image.sh: podman is missing (Debian's podman and runc)" >&2; exit 1; }
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
assemble "$context/root"
# Copied with --chown=65532:65532 by the Containerfile: the user's one writable place.
install -d -m 0700 "$context/data"
image=localhost/tidecast:$tag
podman build --runtime runc --pull=never --layers=false -f "$here/Containerfile.scratch" -t "$image" "$context" >&2
echo "$image"
