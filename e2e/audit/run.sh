#!/usr/bin/env bash
# The dependency audit: cargo-deny over the whole workspace with deny.toml. Licences
# (permissive, Apache-2.0 compatible), bans (duplicates reported, wildcards reported),
# sources (crates.io only), and advisories (RustSec) when the advisory database can be had.
#
# Usage: e2e/audit/run.sh
# Environment:
#   KPERSIST_CACHE                  cache directory (default /var/cache/kpersist); cargo-deny
#                                   is installed into $KPERSIST_CACHE/tools when not on PATH
#   KPERSIST_AUDIT_REQUIRE_ADVISORIES  1 fails the run when the advisory database cannot be
#                                   fetched (default 0: says so plainly and passes)
# Last line: AUDIT: PASS or AUDIT: FAIL, and the exit code to match.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${KPERSIST_CACHE:-/var/cache/kpersist}"
TOOLS="$CACHE/tools"
# The version the audit was written against; --locked builds it with its own lock file.
DENY_VERSION="0.20.2"
ADVISORY_DB="https://github.com/rustsec/advisory-db"
FAILED=()

say() { printf '[audit] %s\n' "$*"; }
fail() { say "FAIL: $*"; FAILED+=("$1"); }
finish() {
  echo
  if [ ${#FAILED[@]} -eq 0 ]; then
    echo "AUDIT: PASS"
    exit 0
  fi
  say "failed steps: ${FAILED[*]}"
  echo "AUDIT: FAIL"
  exit 1
}

say "step 1: cargo-deny"
DENY="$(command -v cargo-deny || true)"
[ -n "$DENY" ] || DENY="$TOOLS/bin/cargo-deny"
if [ ! -x "$DENY" ]; then
  say "installing cargo-deny $DENY_VERSION into $TOOLS (a few minutes to build)"
  mkdir -p "$TOOLS"
  if ! CARGO_TARGET_DIR="$TOOLS/build" nice cargo install cargo-deny --version "$DENY_VERSION" \
    --locked --root "$TOOLS" >"$TOOLS/install.log" 2>&1; then
    tail -n 20 "$TOOLS/install.log"
    fail install "cargo install cargo-deny failed (log: $TOOLS/install.log)"
    finish
  fi
fi
say "$("$DENY" --version)"

cd "$ROOT" || exit 1
say "step 2: licences, bans, sources (deny.toml)"
if "$DENY" --locked check --show-stats licenses bans sources; then
  say "licences, bans and sources as deny.toml allows"
else
  fail deny "cargo deny check licenses bans sources refused the graph (output above)"
fi

say "step 3: advisories (RustSec)"
if timeout 30 git ls-remote --exit-code "$ADVISORY_DB" HEAD >/dev/null 2>&1; then
  if "$DENY" --locked check advisories; then
    say "no advisory applies"
  else
    fail advisories "cargo deny check advisories found advisories (output above)"
  fi
else
  # This machine reaches crates.io but not GitHub, where the only copy of the database is.
  say "advisories NOT CHECKED: $ADVISORY_DB cannot be reached from this machine"
  say "run e2e/audit/run.sh where GitHub is reachable, or KPERSIST_AUDIT_REQUIRE_ADVISORIES=1 to fail here"
  if [ "${KPERSIST_AUDIT_REQUIRE_ADVISORIES:-0}" = 1 ]; then
    fail advisories "the advisory database is required and could not be fetched"
  fi
fi

finish
