#!/usr/bin/env bash
# Runs every test suite of kpersist: formatting, lints, unit and property tests, and the
# end-to-end suites on real parts. This is the one command the README names and CI runs.
#
#   ./test.sh              every step, in order
#   ./test.sh fast         the checks that need no API server, VM or Prometheus
#   ./test.sh fleet chart  only the steps named (see ./test.sh --list)
#
# Each step's wall time is printed when it ends, and all of them at the end.
set -euo pipefail
cd "$(dirname "$0")"

# Slow builds are cached outside the checkout so a fresh clone reuses them: one target
# directory per checkout path, because test binaries embed the path of their sources
# (env!("CARGO_MANIFEST_DIR")) and cargo would reuse one built in another checkout.
export KPERSIST_CACHE="${KPERSIST_CACHE:-/var/cache/kpersist}"
checkout=$(pwd -P | sha256sum | cut -c1-12)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KPERSIST_CACHE/target-$checkout}"
mkdir -p "$KPERSIST_CACHE"

# name | what it proves; the step runs the function step_<name> (dashes as underscores).
STEPS=(
	"fmt|cargo fmt --check"
	"clippy|cargo clippy (warnings are errors)"
	"unit|unit and property tests (the rollout engine's property test runs 10,000 cases)"
	"crds|CRD manifests match the API types"
	"bad-input|bad input: every malformed index, signature, module and policy field is refused (catalogue)"
	"fuzz|fuzzing: each parser of outside input for 20 s (cargo fuzz; RELIABILITY.md has the long run)"
	"audit|dependency audit: licences, bans, sources (cargo deny)"
	"bench|benchmark smoke runs: they run and print their figures (BENCHMARKS.md has the full runs)"
	"chart|chart suite: helm lint, rendered manifests, RBAC on a real API server"
	"kernel|real-kernel suite: the agent live-patches Debian's 6.1 kernel in qemu"
	"kernel-fleet|real-kernel fleet: the operator drives livepatches on VMs of Debian's 6.1 and 6.12 kernels"
	"fleet|fleet suite: operator and simulated agents on a real kube-apiserver"
	"fault-matrix|fault matrix: each fault once, invariants checked on every recorded object version"
	"monitoring|monitoring suite: a real Prometheus gates waves, runs the chart's rules and dashboard queries"
	"bench-api|benchmark smoke runs on the real API server (operator memory, rollout overhead, idle agent)"
	"cluster|cluster suite: helm install on a local single-node cluster (kubelet, containerd, our images)"
)
FAST=(fmt clippy unit crds bad-input)

step_fmt() { cargo fmt --all -- --check; }
step_clippy() { cargo clippy --workspace --all-targets -- -D warnings; }
step_unit() { cargo test --workspace; }
step_crds() { cargo run -q -p kpersist-crds --bin crdgen -- --check; }
step_bad_input() { e2e/tools/bad-input-catalogue.sh --no-api; }
step_fuzz() { fuzz/run.sh --seconds 20; }
step_audit() { e2e/audit/run.sh; }
step_bench() {
	e2e/bench/engine.sh --quick
	e2e/bench/kured-compare.sh --rollout-seconds 73.6
}
step_chart() { e2e/chart/run.sh; }
step_kernel() { e2e/kernel/run.sh; }
step_kernel_fleet() { e2e/kernel-fleet/run.sh; }
step_fleet() {
	# Builds kube-apiserver from Debian's source on the first run only (cached, ~8-13 min).
	e2e/controlplane/build.sh
	# The suite is `test = false` (it is not part of `cargo test`), so lint it here.
	cargo clippy -p kpersist-e2e --test fleet -- -D warnings
	cargo test -p kpersist-e2e --test fleet
}
step_fault_matrix() {
	cargo clippy -p kpersist-e2e --test fault_matrix -- -D warnings
	cargo test -p kpersist-e2e --test fault_matrix -- --nocapture
}
step_monitoring() { e2e/monitoring/run.sh; }
step_bench_api() {
	e2e/bench/operator-memory.sh --quick
	e2e/bench/rollout.sh --quick
	e2e/bench/agent-idle.sh --seconds 10
}
step_cluster() { e2e/cluster/run.sh; }

describe() {
	local entry
	for entry in "${STEPS[@]}"; do
		[ "${entry%%|*}" = "$1" ] && { echo "${entry#*|}"; return 0; }
	done
	return 1
}

usage() {
	echo "usage: ./test.sh [fast | STEP...]   (no argument: every step)"
	echo "steps, in the order they run:"
	local entry
	for entry in "${STEPS[@]}"; do printf '  %-13s %s\n' "${entry%%|*}" "${entry#*|}"; done
	echo "fast: ${FAST[*]}"
}

chosen=()
every=0
case "${1:-}" in
-h | --help | --list) usage; exit 0 ;;
"")
	every=1
	for entry in "${STEPS[@]}"; do chosen+=("${entry%%|*}"); done
	;;
*)
	for name in "$@"; do
		if [ "$name" = fast ]; then
			chosen+=("${FAST[@]}")
			continue
		fi
		describe "$name" >/dev/null || { echo "test.sh: no step named '$name'" >&2; usage >&2; exit 2; }
		chosen+=("$name")
	done
	;;
esac

timings=()
started_all=$SECONDS
current=""
summary() {
	local status=$?
	echo
	echo "step times:"
	local line
	for line in "${timings[@]}"; do echo "  $line"; done
	if [ "$status" -ne 0 ] && [ -n "$current" ]; then
		printf '  %-13s FAILED after %ss\n' "$current" "$((SECONDS - step_started))"
	fi
	printf '  %-13s %ss (%s min)\n' total "$((SECONDS - started_all))" "$(((SECONDS - started_all + 30) / 60))"
}
trap summary EXIT

for name in "${chosen[@]}"; do
	current=$name
	step_started=$SECONDS
	printf '\n==> %s\n' "$(describe "$name")"
	"step_${name//-/_}"
	elapsed=$((SECONDS - step_started))
	timings+=("$(printf '%-13s %ss' "$name" "$elapsed")")
	printf '==> %s: %ss\n' "$name" "$elapsed"
	current=""
done

# The verdict is the last line.
trap - EXIT
summary
echo
if [ "$every" = 1 ]; then
	echo "ALL SUITES: PASS"
else
	echo "STEPS PASSED: ${chosen[*]}"
fi
