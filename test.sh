#!/usr/bin/env bash
# Runs every test suite of kpersist: formatting, lints, unit and property tests, and the
# end-to-end suites on real parts. This is the one command the README names and CI runs.
set -euo pipefail
cd "$(dirname "$0")"

# Slow builds are cached outside the checkout so a fresh clone reuses them: one target
# directory per checkout path, because test binaries embed the path of their sources
# (env!("CARGO_MANIFEST_DIR")) and cargo would reuse one built in another checkout.
export KPERSIST_CACHE="${KPERSIST_CACHE:-/var/cache/kpersist}"
checkout=$(pwd -P | sha256sum | cut -c1-12)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KPERSIST_CACHE/target-$checkout}"
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

step "bad input: every malformed index, signature, module and policy field is refused (catalogue)"
e2e/tools/bad-input-catalogue.sh --no-api

step "fuzzing: each parser of outside input for 20 s (cargo fuzz; RELIABILITY.md has the long run)"
fuzz/run.sh --seconds 20

step "dependency audit: licences, bans, sources (cargo deny)"
e2e/audit/run.sh

step "benchmark smoke runs: they run and print their figures (BENCHMARKS.md has the full runs)"
e2e/bench/engine.sh --quick
e2e/bench/kured-compare.sh --rollout-seconds 73.6

step "chart suite: helm lint, rendered manifests, RBAC on a real API server"
e2e/chart/run.sh

step "real-kernel suite: the agent live-patches Debian's 6.1 kernel in qemu"
e2e/kernel/run.sh

step "real-kernel fleet: the operator drives livepatches on VMs of Debian's 6.1 and 6.12 kernels"
e2e/kernel-fleet/run.sh

step "fleet suite: operator and simulated agents on a real kube-apiserver"
# Builds kube-apiserver from Debian's source on the first run only (cached, ~8-13 min).
e2e/controlplane/build.sh
# The suite is `test = false` (it is not part of `cargo test`), so lint it here.
cargo clippy -p kpersist-e2e --test fleet -- -D warnings
cargo test -p kpersist-e2e --test fleet

step "fault matrix: each fault once, invariants checked on every recorded object version"
cargo clippy -p kpersist-e2e --test fault_matrix -- -D warnings
cargo test -p kpersist-e2e --test fault_matrix -- --nocapture

step "monitoring suite: a real Prometheus gates waves, runs the chart's rules and dashboard queries"
e2e/monitoring/run.sh

step "benchmark smoke runs on the real API server (operator memory, rollout overhead, idle agent)"
e2e/bench/operator-memory.sh --quick
e2e/bench/rollout.sh --quick
e2e/bench/agent-idle.sh --seconds 10

step "cluster suite: helm install on a local single-node cluster (kubelet, containerd, our images)"
e2e/cluster/run.sh

echo
echo "ALL SUITES: PASS"
