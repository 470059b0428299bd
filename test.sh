#!/usr/bin/env bash
# Runs every test suite of kpersist: formatting, lints, unit and property tests, and the
# end-to-end suites on real parts. This is the one command the README names and CI runs.
set -euo pipefail
cd "$(dirname "$0")"

# Slow builds are cached outside the checkout so a fresh clone reuses them.
export KPERSIST_CACHE="${KPERSIST_CACHE:-/var/cache/kpersist}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KPERSIST_CACHE/target}"
mkdir -p "$KPERSIST_CACHE"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "unit and property tests (the rollout engine's property test runs 10,000 cases)"
cargo test --workspace

step "CRD manifests match the API types"
cargo run -q -p kpersist-crds --bin crdgen -- --check

step "chart suite: helm lint, rendered manifests, RBAC on a real API server"
e2e/chart/run.sh

step "real-kernel suite: the agent live-patches Debian's 6.1 kernel in qemu"
e2e/kernel/run.sh

step "fleet suite: operator and simulated agents on a real kube-apiserver"
# Builds kube-apiserver from Debian's source on the first run only (cached, ~8-13 min).
e2e/controlplane/build.sh
# The suite is `test = false` (it is not part of `cargo test`), so lint it here.
cargo clippy -p kpersist-e2e --test fleet -- -D warnings
cargo test -p kpersist-e2e --test fleet

step "cluster suite: helm install on a local single-node cluster (kubelet, containerd, our images)"
e2e/cluster/run.sh

echo
echo "ALL SUITES: PASS"
