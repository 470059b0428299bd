#!/usr/bin/env bash
# Builds the kpersist-operator and kpersist-agent images without a container daemon
# (buildah, chroot isolation) from static binaries, and writes them as OCI archives.
#
# Usage: images/build.sh [--binaries DIR] [--tag TAG] [--out DIR]
#   --binaries DIR  take kpersist-operator and kpersist-agent from DIR (built before with
#                   RUSTFLAGS="-C target-feature=+crt-static" --target x86_64-unknown-linux-gnu);
#                   without it they are built that way here, in $KPERSIST_CACHE/target-static
#                   (the kernel suite's static build directory, so the two share one compile)
#   --tag TAG       image tag (default: dev); images are localhost/kpersist-{operator,agent}:TAG
#   --out DIR       where kpersist-operator.tar and kpersist-agent.tar go
#                   (default: $KPERSIST_CACHE/images)
# Prints the output directory on its last line. Import an archive with
#   ctr -n k8s.io images import DIR/kpersist-agent.tar   or   podman load -i DIR/...
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${KPERSIST_CACHE:-/var/cache/kpersist}"
BINARIES=""
TAG=dev
OUT="$CACHE/images"

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --binaries) BINARIES="${2:?--binaries needs a directory}"; shift 2 ;;
    --tag) TAG="${2:?--tag needs a value}"; shift 2 ;;
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1'; see --help" ;;
  esac
done

command -v buildah >/dev/null 2>&1 || die "buildah is not installed; apt-get install -y buildah"

if [ -z "$BINARIES" ]; then
  log "building static release binaries in $CACHE/target-static (cargo output follows)"
  (cd "$ROOT" && CARGO_TARGET_DIR="$CACHE/target-static" \
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo build --release --target x86_64-unknown-linux-gnu \
      -p kpersist-operator -p kpersist-agent --bin kpersist-operator --bin kpersist-agent) \
    || die "static cargo build of kpersist-operator / kpersist-agent failed (output above)"
  BINARIES="$CACHE/target-static/x86_64-unknown-linux-gnu/release"
fi

# An image FROM scratch has no dynamic loader: refuse a binary that asks for one
# (an ELF program header of type PT_INTERP) instead of shipping an image that cannot start.
is_static() {
  python3 - "$1" <<'PY'
import struct, sys
with open(sys.argv[1], "rb") as f:
    elf = f.read(64)
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        sys.exit(1)
    phoff, = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    f.seek(phoff)
    for _ in range(phnum):
        if struct.unpack("<I", f.read(phentsize)[:4])[0] == 3:
            sys.exit(1)
PY
}

CTX="$(mktemp -d)"
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/out/bin" "$OUT"
for bin in kpersist-operator kpersist-agent; do
  [ -x "$BINARIES/$bin" ] || die "$BINARIES/$bin is missing; build it or drop --binaries"
  is_static "$BINARIES/$bin" || die "$BINARIES/$bin is not a static x86-64 ELF binary; build it with RUSTFLAGS=\"-C target-feature=+crt-static\" --target x86_64-unknown-linux-gnu"
  cp "$BINARIES/$bin" "$CTX/out/bin/"
done
CA=/etc/ssl/certs/ca-certificates.crt
[ -r "$CA" ] || die "$CA is missing; apt-get install -y ca-certificates"
cp "$CA" "$CTX/out/ca-certificates.crt"

# Storage of our own under the cache: nothing lands in the host's container storage, and
# vfs works wherever overlay mounts are not allowed.
STORE=(--root "$CACHE/buildah/storage" --runroot "$CACHE/buildah/run" --storage-driver vfs)
for target in operator agent; do
  image="localhost/kpersist-$target:$TAG"
  log "building $image"
  buildah "${STORE[@]}" bud --isolation chroot --layers=false --quiet \
    --build-arg BINARIES=prebuilt --target "$target" \
    -f "$ROOT/images/Dockerfile" -t "$image" "$CTX" >/dev/null
  # The image must start: run the binary in it (chroot isolation, so no runtime needed).
  ctr="$(buildah "${STORE[@]}" from --quiet "$image")"
  version="$(buildah "${STORE[@]}" run --isolation chroot "$ctr" -- "/usr/local/bin/kpersist-$target" --version 2>&1)" \
    || { buildah "${STORE[@]}" rm "$ctr" >/dev/null; die "kpersist-$target --version failed inside $image: $version"; }
  buildah "${STORE[@]}" rm "$ctr" >/dev/null
  log "$image runs: $version"
  rm -f "$OUT/kpersist-$target.tar"
  buildah "${STORE[@]}" push --quiet "$image" "oci-archive:$OUT/kpersist-$target.tar:$image"
  buildah "${STORE[@]}" rmi "$image" >/dev/null
  log "wrote $OUT/kpersist-$target.tar ($(du -h "$OUT/kpersist-$target.tar" | cut -f1))"
done
echo "$OUT"
