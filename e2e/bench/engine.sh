#!/usr/bin/env bash
# The rollout engine benchmark: decision time per reconcile for fleets of 100, 1,000,
# 10,000 and 50,000 nodes in the middle of a rollout. Prints per size the median, p99 and
# max, the median per node, the growth against the size before (time ratio over size
# ratio: 1.00 is linear) and the size of the policy status a decision writes.
#
# Usage: e2e/bench/engine.sh [--quick]
#   (none)   the full run on a release build (the first release build takes 10+ minutes)
#   --quick  100 to 10,000 nodes with few samples on the debug build `cargo test` already
#            made: the CI smoke run (seconds with a warm build). It checks that the
#            benchmark runs and prints its figures, not that the machine is fast.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/kpersist/target}"
MANIFEST="$ROOT/Cargo.toml"

case "${1:-}" in
    --quick)
        echo "[bench-engine] quick run on the debug build" >&2
        exec cargo test -q --manifest-path "$MANIFEST" -p kpersist-operator --bench engine -- --quick
        ;;
    "")
        echo "[bench-engine] full run on the release build" >&2
        echo "[bench-engine] machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/^Mem:/ {print $2}') GiB" >&2
        exec cargo bench -q --manifest-path "$MANIFEST" -p kpersist-operator --bench engine
        ;;
    *)
        echo "usage: $0 [--quick]" >&2
        exit 2
        ;;
esac
