#!/usr/bin/env bash
# Reboot-based patching (kured at its defaults) next to kpersist's live patching, for 100,
# 1,000 and 10,000 nodes: wall time and number of reboots, with the model's assumptions
# printed under the table (see e2e/src/bin/bench-kured-compare).
#
# Usage: e2e/bench/kured-compare.sh --rollout-seconds S [--reboot-minutes 5]
#            [--period-minutes 60] [--concurrency 1] [--node-apply-seconds 1]
#            [--max-in-flight 10] [--bake-minutes 20] [--nodes 100,1000,10000]
#   --rollout-seconds S   measured wall time of the 1,000-node zero-bake rollout
#                         (e2e/bench/rollout.sh); the one measured input
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/kpersist/target}
cd "$ROOT"
cargo build -q -p kpersist-e2e --bin bench-kured-compare
exec "$CARGO_TARGET_DIR/debug/bench-kured-compare" "$@"
