#!/usr/bin/env bash
# Operator memory benchmark: resident memory of the real kpersist-operator on a local
# kube-apiserver + etcd (e2e/controlplane/up.sh) holding realistic Node + LivePatchNode
# pairs, with its watch stores trimmed (as shipped) and untrimmed (the operator's
# `untrimmed-stores` feature, which exists only for this), printed as a markdown table.
#
# Usage: e2e/bench/operator-memory.sh [--nodes N ...] [--quick] [--debug|--release] [flags]
#   --nodes N ...   fleet sizes (default 1000 10000); the cluster grows from one to the next
#   --quick         200 nodes, short settle, debug builds: the CI smoke run
#   --debug         measure debug builds (default for --quick); --release otherwise
#   other flags go to the benchmark binary, see:
#   cargo run -p kpersist-e2e --bin bench-operator-memory -- --help
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
log() { printf '[bench/operator-memory] %s\n' "$*" >&2; }

profile=""
quick=0
args=()
for arg in "$@"; do
  case "$arg" in
    --debug) profile=debug ;;
    --release) profile=release ;;
    --quick) quick=1; args+=("$arg") ;;
    *) args+=("$arg") ;;
  esac
done
if [ -z "$profile" ]; then
  if [ "$quick" = 1 ]; then profile=debug; else profile=release; fi
fi
cargo_profile=()
[ "$profile" = release ] && cargo_profile=(--release)

# Both binaries are copied aside so that builds running meanwhile cannot swap them. The
# untrimmed one is built first: the default build after it puts the shipped binary back
# in place under $TARGET/$profile.
OUT="$TARGET/bench-operator-memory"
mkdir -p "$OUT"
cd "$ROOT"
log "building kpersist-operator ($profile) with --features untrimmed-stores"
cargo build -q "${cargo_profile[@]}" -p kpersist-operator --features untrimmed-stores
cp "$TARGET/$profile/kpersist-operator" "$OUT/kpersist-operator-untrimmed-$profile"
log "building kpersist-operator ($profile) as shipped"
cargo build -q "${cargo_profile[@]}" -p kpersist-operator
cp "$TARGET/$profile/kpersist-operator" "$OUT/kpersist-operator-$profile"
log "building the benchmark"
cargo build -q -p kpersist-e2e --bin bench-operator-memory

exec "$TARGET/debug/bench-operator-memory" \
  --operator "$OUT/kpersist-operator-$profile" \
  --untrimmed-operator "$OUT/kpersist-operator-untrimmed-$profile" \
  --profile "$profile" "${args[@]}"
