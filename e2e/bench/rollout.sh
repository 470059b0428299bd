#!/usr/bin/env bash
# The rollout overhead benchmark: N simulated nodes (the real agent code, many agents in
# one process) through W zero-bake waves on a local kube-apiserver + etcd, with the real
# kpersist-operator and a signed repository over HTTP. Prints a Markdown table: wall time
# from policy create to Complete, the theoretical minimum, and API requests per node from
# the API server's apiserver_request_total.
#
# Usage: e2e/bench/rollout.sh [--nodes N] [--waves W] [--quick] [--max-in-flight M]
#                             [--require-targets]
#   --quick  50 nodes, 2 waves: the CI smoke run (under two minutes with a warm build)
# KPERSIST_BENCH_METRICS_DIR=DIR keeps both raw /metrics scrapes in DIR.
# etcd, the API server's files and the agents' state go to a temporary directory on tmpfs
# (/dev/shm) when there is one: on a shared VM the disk's fsync latency otherwise sets the
# pace of every write. KPERSIST_BENCH_TMPDIR=DIR picks another place (e.g. /tmp for disk).
# The control plane, the repository and the agents' state live in temporary directories
# and are removed at the end; set KPERSIST_KEEP=1 to keep the control plane's logs.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/kpersist/target}"

echo "[bench-rollout] building kpersist-operator and bench-rollout (debug)" >&2
cargo build -q --manifest-path "$ROOT/Cargo.toml" -p kpersist-operator -p kpersist-e2e --bin kpersist-operator --bin bench-rollout

BASE="${KPERSIST_BENCH_TMPDIR:-}"
if [ -z "$BASE" ]; then
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then BASE=/dev/shm; else BASE="${TMPDIR:-/tmp}"; fi
fi
SCRATCH="$(mktemp -d "$BASE/kpersist-bench-rollout.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
echo "[bench-rollout] temporary files in $SCRATCH" >&2
TMPDIR="$SCRATCH" "$CARGO_TARGET_DIR/debug/bench-rollout" "$@"
