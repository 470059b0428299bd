#!/usr/bin/env bash
# Builds the Kubernetes control-plane binaries the end-to-end suites run, from Debian's
# `kubernetes` source package, and caches them outside the checkout.
#
# Usage: e2e/controlplane/build.sh [COMPONENT...]
#   COMPONENT: kube-apiserver (default), kube-controller-manager, kube-scheduler, kubelet.
# Output:  $KPERSIST_CACHE/kubernetes-1.20.2/bin/<component>  (KPERSIST_CACHE defaults to
#          /var/cache/kpersist). The last line printed is that bin directory.
# Each binary is cached on its own, so asking for more components later builds only
# those (reusing the unpacked tree and Go's build cache). When every requested binary is
# cached, the script returns at once without touching apt.
#
# No kube-apiserver binary can be downloaded on these machines; Debian ships the whole
# source (with vendor/) and a Go toolchain that builds it. See shared notes E2E-CLUSTER.md.
set -euo pipefail

K8S_VERSION=1.20.2
CACHE="${KPERSIST_CACHE:-/var/cache/kpersist}"
ROOT="$CACHE/kubernetes-$K8S_VERSION"
BIN="$ROOT/bin"
COMPONENTS=("$@")
[ ${#COMPONENTS[@]} -gt 0 ] || COMPONENTS=(kube-apiserver)

log() { printf '[controlplane/build] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for c in "${COMPONENTS[@]}"; do
  case "$c" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet) ;;
    *) die "unknown component '$c'; expected kube-apiserver, kube-controller-manager, kube-scheduler or kubelet" ;;
  esac
done

missing() {
  local out=() c
  for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || out+=("$c"); done
  command -v etcd >/dev/null 2>&1 || out+=(etcd)
  echo "${out[@]:-}"
}

if [ -z "$(missing)" ]; then
  log "cached: ${COMPONENTS[*]} in $BIN"
  echo "$BIN"
  exit 0
fi

mkdir -p "$ROOT"
# One build at a time per cache: parallel test runs wait here instead of racing.
exec 9>"$ROOT/.lock"
log "waiting for the build lock $ROOT/.lock"
flock 9
if [ -z "$(missing)" ]; then
  log "built meanwhile by another run: ${COMPONENTS[*]} in $BIN"
  echo "$BIN"
  exit 0
fi

SUDO=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "installing Debian packages needs root; run as root or install sudo"
  SUDO=(sudo)
fi

# 1. deb-src lines, derived from the machine's own Debian sources (its mirror, its
#    snapshot): every `Types: deb` stanza is copied with `Types: deb-src`.
SRC_LIST=/etc/apt/sources.list.d/kpersist-deb-src.sources
if ! apt-get source --print-uris -qq kubernetes >/dev/null 2>&1; then
  log "adding deb-src entries derived from /etc/apt/sources.list.d/*.sources"
  tmp=$(mktemp)
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    [ "$f" = "$SRC_LIST" ] && continue
    # Stanzas are separated by blank lines; keep those that carry binary packages.
    awk 'BEGIN { RS=""; ORS="\n\n" }
         /(^|\n)Types:[^\n]*(^|[ \t])deb([ \t]|$|\n)/ {
           gsub(/(^|\n)Types:[^\n]*/, "\nTypes: deb-src"); sub(/^\n/, ""); print }' "$f" >>"$tmp"
  done
  [ -s "$tmp" ] || die "no 'Types: deb' stanza found in /etc/apt/sources.list.d/*.sources; add a Debian source entry"
  "${SUDO[@]}" install -m 0644 "$tmp" "$SRC_LIST"
  rm -f "$tmp"
  log "apt-get update"
  "${SUDO[@]}" apt-get update -qq
fi

# 2. Toolchain and etcd from Debian.
PKGS=(golang-go rsync jq etcd-server golang-github-modern-go-reflect2-dev openssl make)
need=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

build=()
for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || build+=("$c"); done
if [ ${#build[@]} -eq 0 ]; then
  echo "$BIN"
  exit 0
fi

# 3. Source, unpacked once into the cache.
SRC="$ROOT/src"
if [ ! -f "$SRC/.unpacked" ]; then
  mkdir -p "$ROOT/dl"
  if ! ls "$ROOT"/dl/kubernetes_*"$K8S_VERSION"*.orig.tar.* >/dev/null 2>&1; then
    log "downloading the Debian source package kubernetes $K8S_VERSION"
    (cd "$ROOT/dl" && apt-get source --download-only -qq kubernetes >&2)
  fi
  orig=$(ls "$ROOT"/dl/kubernetes_*"$K8S_VERSION"*.orig.tar.* 2>/dev/null | head -n1 || true)
  [ -n "$orig" ] || die "no kubernetes_*${K8S_VERSION}*.orig.tar.* in $ROOT/dl; Debian's source package is another version: $(ls "$ROOT/dl")"
  log "unpacking $(basename "$orig")"
  rm -rf "$SRC"
  mkdir -p "$SRC"
  tar -xf "$orig" -C "$SRC" --strip-components=1
  # Kubernetes 1.20 vendors reflect2 1.0.1, which crashes under Go >= 1.18; Debian's
  # 1.0.2 is API-compatible and works.
  r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -d "$r2" ] || die "$r2 is missing; install golang-github-modern-go-reflect2-dev"
  rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
  cp -r "$r2" "$SRC/vendor/github.com/modern-go/reflect2"
  rm -f "$SRC/vendor/github.com/modern-go/reflect2/go.mod"
  mkdir -p "$SRC/.go/src/k8s.io"
  ln -sfn ../../.. "$SRC/.go/src/k8s.io/kubernetes"
  touch "$SRC/.unpacked"
fi

# 4. Build. Kubernetes' build scripts keep Go's build cache under the unpacked tree
#    (_output/), so adding components later only compiles what they add.
whats=()
for c in "${build[@]}"; do whats+=("cmd/$c"); done
log "building ${build[*]} (about 8 minutes on 2 cores for the API server; progress every 30 s)"
mkdir -p "$ROOT/home"
start=$(date +%s)
(
  while sleep 30; do
    log "still building ${build[*]}: $(( $(date +%s) - start )) s"
  done
) &
ticker=$!
trap 'kill "$ticker" 2>/dev/null || true' EXIT
(
  cd "$SRC"
  nice -n 10 env GOPATH="$SRC/.go" CGO_ENABLED=0 HOME="$ROOT/home" GOFLAGS= \
    make WHAT="${whats[*]}" >&2
) || die "make WHAT=\"${whats[*]}\" failed in $SRC (see output above)"
kill "$ticker" 2>/dev/null || true

mkdir -p "$BIN"
for c in "${build[@]}"; do
  out="$SRC/_output/bin/$c"
  [ -x "$out" ] || die "make finished but $out is missing"
  install -m 0755 "$out" "$BIN/.$c.tmp"
  mv -f "$BIN/.$c.tmp" "$BIN/$c"
done
log "built ${build[*]} in $(( $(date +%s) - start )) s into $BIN"
echo "$BIN"
