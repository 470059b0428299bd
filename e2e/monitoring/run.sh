#!/usr/bin/env bash
# The monitoring suite: a real Prometheus (Debian's package) scrapes the real operator and
# agents of a simulated fleet on a real API server. The health gate queries it (a wave
# failed by real series; a wave held while Prometheus is down), the chart's alerting
# rules run in it (promtool checks them, one fires on a real revert), every dashboard
# query is asked of it, and promtool checks both binaries' /metrics. The harness is
# `cargo test -p kpersist-e2e --test monitoring`; this script installs Prometheus, renders
# the chart's PrometheusRule with helm and passes it in KPERSIST_MONITORING_RULE.
#
# Every step prints "MONITORING-E2E: <step>: ok|FAIL <why>"; the last line is
# "MONITORING-E2E: PASS" or "MONITORING-E2E: FAIL" and the exit status matches.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
START=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kpersist-monitoring.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
say() { printf 'monitoring: [%3ds] %s\n' $((SECONDS - START)) "$*"; }
fail() {
	echo "MONITORING-E2E: $1: FAIL $2"
	echo "MONITORING-E2E: FAIL"
	exit 1
}

say "installing Prometheus (Debian's prometheus package carries promtool)"
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
	apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; }
	# The package would start its own service where services can start: not here.
	POLICY_RC=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		POLICY_RC=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
		chmod 0755 "$POLICY_RC"
	fi
	installed=yes
	apt_install >"$WORK/apt.log" 2>&1 ||
		{ apt-get update >>"$WORK/apt.log" 2>&1 && apt_install >>"$WORK/apt.log" 2>&1; } || installed=
	[ -z "$POLICY_RC" ] || rm -f "$POLICY_RC"
	[ -n "$installed" ] ||
		fail packages "apt-get install prometheus failed: $(tail -n 3 "$WORK/apt.log" | tr '\n' ' ')"
fi
echo "MONITORING-E2E: packages: ok ($(prometheus --version 2>&1 | head -n 1))"

say "rendering the chart's PrometheusRule with helm"
TOOLS=$("$ROOT/e2e/tools/helm.sh" | tail -n 1) || fail helm "could not get helm (e2e/tools/helm.sh, output above)"
export HELM_CACHE_HOME="$WORK/helm-cache" HELM_CONFIG_HOME="$WORK/helm-config" HELM_DATA_HOME="$WORK/helm-data"
RULE=$WORK/prometheusrule.yaml
"$TOOLS/helm" template kpersist "$ROOT/helm/kpersist" -n kpersist \
	--set metrics.prometheusRule.enabled=true --show-only templates/prometheusrule.yaml >"$RULE" ||
	fail render "helm template of the PrometheusRule failed (output above)"
echo "MONITORING-E2E: render: ok ($(grep -c -- '- alert:' "$RULE") alerts)"
# The operator's RBAC with a Secret for the gate's Authorization header listed.
RBAC=$WORK/gate-rbac.yaml
"$TOOLS/helm" template kpersist "$ROOT/helm/kpersist" -n kpersist \
	--set-json 'operator.gateSecrets=[{"namespace":"kpersist","name":"kpersist-gate"}]' \
	--show-only templates/operator/rbac.yaml >"$RBAC" ||
	fail render "helm template of the operator's RBAC with operator.gateSecrets failed (output above)"

say "TLS and basic auth for the secured Prometheus"
SECURED=$WORK/secured
mkdir -p "$SECURED"
(
	cd "$SECURED"
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kpersist-monitoring-ca" \
		-keyout ca.key -out ca.crt 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
	printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
	openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
		-extfile server.ext -out server.crt 2>/dev/null
	password=$(openssl rand -hex 12)
	echo "$password" >password
	# Prometheus keeps bcrypt hashes of its users' passwords.
	hash=$(python3 -W ignore -c 'import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))' "$password")
	printf 'tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  kpersist: %s\n' \
		"$SECURED/server.crt" "$SECURED/server.key" "'$hash'" >web.yml
	printf 'Basic %s\n' "$(printf 'kpersist:%s' "$password" | base64 -w0)" >authorization
	printf 'Basic %s\n' "$(printf 'kpersist:wrong-%s' "$password" | base64 -w0)" >authorization-wrong
) || fail secured "making the CA, certificate and password failed"
promtool check web-config "$SECURED/web.yml" >/dev/null || fail secured "promtool refused $SECURED/web.yml"
echo "MONITORING-E2E: secured: ok (a CA, a certificate for 127.0.0.1, a bcrypt-hashed user)"

say "running the harness (cargo test -p kpersist-e2e --test monitoring)"
"$ROOT/e2e/controlplane/build.sh" || fail apiserver "e2e/controlplane/build.sh failed (output above)"
cd "$ROOT"
cargo clippy -p kpersist-e2e --test monitoring -- -D warnings || fail harness "clippy refused the harness (output above)"
if KPERSIST_MONITORING_RULE=$RULE KPERSIST_MONITORING_RBAC=$RBAC KPERSIST_MONITORING_SECURED=$SECURED cargo test -p kpersist-e2e --test monitoring -- --nocapture 2>&1 |
	tee "$WORK/harness.log" | grep --line-buffered -E '^(MONITORING-E2E|monitoring)'; then
	:
fi
# The one test ran (not filtered out) and every step of it said ok.
STEPS=$(grep -c 'report(' "$ROOT/e2e/tests/monitoring/main.rs")
if grep -q '^test result: ok. 1 passed' "$WORK/harness.log" &&
	[ "$(grep -c '^MONITORING-E2E: [a-z-]*: ok' "$WORK/harness.log")" = "$STEPS" ]; then
	say "wall time $((SECONDS - START)) s"
	echo "MONITORING-E2E: PASS"
else
	tail -n 40 "$WORK/harness.log" | sed 's/^/    | /'
	echo "MONITORING-E2E: FAIL"
	exit 1
fi
