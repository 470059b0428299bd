#!/usr/bin/env bash
# Idle cost of one kpersist-agent on the local real API server: RSS, CPU and API requests
# over a window after its node reports Applied (see e2e/src/bin/bench-agent-idle).
#
# Usage: e2e/bench/agent-idle.sh [--seconds N] [--settle N] [--agent PATH] [--no-apply]
#   --seconds N    length of the idle window (default 60; CI runs 10)
#   --agent PATH   another agent binary, e.g. the static release build of the kernel suite:
#                  /var/cache/kpersist/target-static/x86_64-unknown-linux-gnu/release/kpersist-agent
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/kpersist/target}
cd "$ROOT"
cargo build -q -p kpersist-e2e --bin bench-agent-idle
exec "$CARGO_TARGET_DIR/debug/bench-agent-idle" "$@"
