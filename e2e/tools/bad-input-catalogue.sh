#!/usr/bin/env bash
# Prints the bad-input catalogue of RELIABILITY.md: every bad input kpersist is tested
# against, the component that refused it, and its message, as one markdown table. The rows
# are printed by the tests themselves as they assert each refusal, so the table is what the
# code does, not what someone wrote down; a test that fails stops the script.
#
#   e2e/tools/bad-input-catalogue.sh            every case, including the CRD schema
#                                               cases on a real kube-apiserver
#   e2e/tools/bad-input-catalogue.sh --no-api   without the API server (CI's short form)
set -euo pipefail
cd "$(dirname "$0")/../.."
export KPERSIST_CACHE="${KPERSIST_CACHE:-/var/cache/kpersist}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KPERSIST_CACHE/target}"

with_api=1
[[ "${1:-}" == "--no-api" ]] && with_api=0

runs=(
    "-p kpersist-kmod --test bad_input"
    "-p kpersist-agent --test bad_input"
    "-p kpersist-operator --test bad_input_policy"
    "-p kpersist-operator --test bad_input_repository"
)
if ((with_api)); then
    runs+=("-p kpersist-e2e --test fleet schema::")
fi

out="$(mktemp)"
trap 'rm -f "$out" "$out.rows"' EXIT
for run in "${runs[@]}"; do
    # shellcheck disable=SC2086 # each run is a list of cargo arguments
    if ! cargo test -q $run -- --nocapture --test-threads 1 >"$out" 2>&1; then
        cat "$out" >&2
        echo "bad-input catalogue: cargo test $run failed" >&2
        exit 1
    fi
    # Only the rows; temp directories are replaced so the table is the same on every run.
    grep -o '| .* |$' "$out" | sed -E 's#/tmp/\.tmp[A-Za-z0-9]+#<tmp>#g' >>"$out.rows"
done

echo "| input | component | outcome |"
echo "| --- | --- | --- |"
cat "$out.rows"
echo "$(wc -l <"$out.rows") bad inputs, every one refused" >&2
rm -f "$out.rows"
