#!/usr/bin/env bash
# The main job of kpersist, shown end to end on one machine: a local kube-apiserver, a
# signed patch repository, the operator and a simulated fleet of 20 nodes; a rollout in
# waves, a persistent update, and a bad release reverted on the canary.
#   ./demo.sh [--nodes N] [--bake 5s] [--keep-running]     (./demo.sh --help for more)
set -euo pipefail
cd "$(dirname "$0")"

# Slow builds are cached outside the checkout, as test.sh does, so a fresh clone reuses them.
export KPERSIST_CACHE="${KPERSIST_CACHE:-/var/cache/kpersist}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KPERSIST_CACHE/target}"
mkdir -p "$KPERSIST_CACHE"

exec cargo run -q -p kpersist-e2e --bin kpersist-demo -- "$@"
