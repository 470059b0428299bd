#!/usr/bin/env bash
# The chart suite: lints and renders helm/kpersist with a real helm, checks every rendered
# manifest against its Kubernetes type (cargo test --test chart_manifests), applies the
# CRDs and RBAC to a real API server and asks it what each identity may do, and builds the
# two images from static binaries when asked.
#
# Usage: e2e/chart/run.sh
# Environment:
#   KPERSIST_CACHE               cache directory (default /var/cache/kpersist): helm, images
#   KPERSIST_CHART_CONTROLPLANE  0 skips the API server step (default: run it)
#   KPERSIST_CHART_IMAGES        1 also builds both images with buildah (default: 0; the
#                                static release build takes about ten minutes cold)
# Last line: CHART-E2E: PASS or CHART-E2E: FAIL, and the exit code to match.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CHART="$ROOT/helm/kpersist"
CACHE="${KPERSIST_CACHE:-/var/cache/kpersist}"
# The npm package that carries a Linux helm and kubectl; pinned so every run uses the same.
WORK="$(mktemp -d /tmp/kpersist-chart.XXXXXX)"
RENDERED="$WORK/rendered"
CP_DIR="$WORK/controlplane"
FAILED=()

say() { printf '[chart] %s\n' "$*"; }
fail() { say "FAIL: $*"; FAILED+=("$1"); }

cleanup() {
  if [ -f "$CP_DIR/kube-apiserver.pid" ]; then
    "$ROOT/e2e/controlplane/down.sh" "$CP_DIR" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

finish() {
  echo
  if [ ${#FAILED[@]} -eq 0 ]; then
    echo "CHART-E2E: PASS"
    exit 0
  fi
  say "failed steps: ${FAILED[*]}"
  echo "CHART-E2E: FAIL"
  exit 1
}

say "step 1: helm"
if ! TOOLS="$("$ROOT/e2e/tools/helm.sh" | tail -n1)"; then
  fail tools "could not get helm and kubectl (e2e/tools/helm.sh, output above)"
  finish
fi
HELM="$TOOLS/helm"
KUBECTL="$TOOLS/kubectl"
export HELM_CACHE_HOME="$WORK/helm-cache" HELM_CONFIG_HOME="$WORK/helm-config" HELM_DATA_HOME="$WORK/helm-data"
say "$("$HELM" version --short), kubectl $("$KUBECTL" version --client 2>/dev/null | head -n1)"

# Values for the non-default rendering, and the API versions a 1.31 cluster with the
# Prometheus Operator serves.
FULL_VALUES="$ROOT/e2e/chart/values-full.yaml"
FULL_ARGS=(-f "$FULL_VALUES" --kube-version 1.31.0
  --api-versions admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy
  --api-versions monitoring.coreos.com/v1)

# --- lint -------------------------------------------------------------------------------------
say "step 2: helm lint --strict"
lint() {
  local out
  out="$("$HELM" lint --strict "$CHART" "$@" 2>&1)"
  local rc=$?
  printf '%s\n' "$out" | sed 's/^/  /'
  # --strict fails on warnings; INFO lines (e.g. a missing icon) would pass it, so they
  # count as failures here too: the chart should lint silent.
  if [ $rc -ne 0 ] || printf '%s\n' "$out" | grep -qE '^\[(INFO|WARNING|ERROR)\]'; then
    return 1
  fi
}
lint || fail lint "helm lint --strict with default values reported something"
# helm lint has no --api-versions: the parts gated on API versions are linted as rendered
# by step 3 and checked by step 4.
lint -f "$FULL_VALUES" --kube-version 1.31.0 || fail lint-full "helm lint --strict with $FULL_VALUES reported something"

# --- render -----------------------------------------------------------------------------------
say "step 3: helm template"
mkdir -p "$RENDERED"
# Release and namespace `kpersist` give the service account names the control plane's
# tokens carry (system:serviceaccount:kpersist:kpersist-{operator,agent}).
if "$HELM" template kpersist "$CHART" -n kpersist --include-crds >"$RENDERED/default.yaml" 2>"$WORK/err"; then
  say "default values: $(grep -c '^kind:' "$RENDERED/default.yaml") manifests"
else
  cat "$WORK/err"; fail render "helm template with default values failed"
fi
if "$HELM" template kp "$CHART" -n kpersist "${FULL_ARGS[@]}" >"$RENDERED/full.yaml" 2>"$WORK/err"; then
  say "$(basename "$FULL_VALUES"), Kubernetes 1.31: $(grep -c '^kind:' "$RENDERED/full.yaml") manifests"
else
  cat "$WORK/err"; fail render-full "helm template with $FULL_VALUES failed"
fi
# Agents found pod by pod (fleets past 1,000 nodes), with a metric relabeling.
if "$HELM" template kp "$CHART" -n kpersist "${FULL_ARGS[@]}" --set metrics.serviceMonitor.agentsByPod=true \
  --set-json 'metrics.serviceMonitor.metricRelabelings=[{"action":"drop","sourceLabels":["__name__"],"regex":"kpersist_agent_drift_found_total"}]' \
  >"$RENDERED/by-pod.yaml" 2>"$WORK/err"; then
  say "agents scraped by pod: $(grep -c '^kind: PodMonitor' "$RENDERED/by-pod.yaml") PodMonitor"
else
  cat "$WORK/err"; fail render-by-pod "helm template with metrics.serviceMonitor.agentsByPod failed"
fi

# What the chart must refuse or leave out.
expect_refused() {
  local what="$1"; shift
  if "$HELM" template kp "$CHART" "$@" >/dev/null 2>"$WORK/err"; then
    fail schema "values.schema.json accepted $what"
  else
    say "refused $what: $(grep -m1 -E '^- at ' "$WORK/err" || head -n1 "$WORK/err")"
  fi
}
expect_refused "operator.replicas=0" --set operator.replicas=0
expect_refused "agent.log.format=xml" --set agent.log.format=xml
expect_refused "an unknown top-level key" --set operatr.replicas=2
expect_refused "a relative agent.stateDir" --set agent.stateDir=var/lib/kpersist
expect_refused "an image digest that is no digest" --set operator.image.digest=latest
expect_refused "a trusted-keys Secret without a name" \
  --set-json 'operator.trustedKeysSecrets=[{"namespace":"security"}]'
expect_refused "a gate Secret without a name" \
  --set-json 'operator.gateSecrets=[{"namespace":"monitoring"}]'
expect_refused "a namespace-wide Secret grant (the former trustedKeysSecretNamespaces)" \
  --set-json 'operator.trustedKeysSecretNamespaces=["security"]'
if "$HELM" template kp "$CHART" --set admissionPolicy.enabled=true --kube-version 1.29.0 \
  --api-versions admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy 2>&1 | grep -q 'kind: ValidatingAdmissionPolicy'; then
  fail vap-gate "the ValidatingAdmissionPolicy rendered for Kubernetes 1.29"
fi
if "$HELM" template kp "$CHART" --set admissionPolicy.enabled=true 2>&1 | grep -q 'kind: ValidatingAdmissionPolicy'; then
  fail vap-gate "the ValidatingAdmissionPolicy rendered for a cluster that does not serve it"
fi

# --- typed checks -----------------------------------------------------------------------------
say "step 4: rendered manifests as Kubernetes types, and the args as the binaries' flags"
# Debug builds: the same profile as the workspace's tests, so little is compiled anew.
if ! (cd "$ROOT" && cargo build -q -p kpersist-operator -p kpersist-agent \
  --bin kpersist-operator --bin kpersist-agent); then
  fail binaries "cargo build of kpersist-operator / kpersist-agent failed (output above)"
fi
BINARIES="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
if ! (cd "$ROOT" && KPERSIST_CHART_RENDERED="$RENDERED" KPERSIST_CHART_BINARIES="$BINARIES" \
  cargo test -q -p kpersist-e2e --test chart_manifests 2>&1 | sed 's/^/  /'; exit "${PIPESTATUS[0]}"); then
  fail typed "chart_manifests tests failed (output above)"
fi

# --- a real API server ------------------------------------------------------------------------
apply_to_controlplane() {
  local cp="$ROOT/e2e/controlplane"
  "$cp/up.sh" "$CP_DIR" --owner $$ 2>&1 | sed 's/^/  /'
  [ "${PIPESTATUS[0]}" -eq 0 ] || { say "control plane did not start"; return 1; }
  local admin=(--kubeconfig "$CP_DIR/admin.kubeconfig")
  local operator=(--kubeconfig "$CP_DIR/operator.kubeconfig")
  local agent=(--kubeconfig "$CP_DIR/agent.kubeconfig")
  local ok=0

  "$KUBECTL" "${admin[@]}" create namespace kpersist --dry-run=client -o yaml \
    | "$KUBECTL" "${admin[@]}" apply --server-side -f - >/dev/null || return 1
  # CRDs, service accounts and RBAC exactly as the chart renders them for the fleet
  # suite's identities; the workloads need a kubelet and are not applied here.
  "$KUBECTL" "${admin[@]}" apply --server-side --field-manager=helm -f "$CHART/crds/" || return 1
  # Polled rather than `kubectl wait`, which errors out while a new CRD has no conditions.
  local crd t0=$SECONDS
  for crd in livepatchpolicies.kpersist.io livepatchnodes.kpersist.io; do
    until [ "$("$KUBECTL" "${admin[@]}" get crd "$crd" \
      -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ]; do
      [ $(( SECONDS - t0 )) -lt 60 ] || { say "CRD $crd not Established after 60s"; return 1; }
      sleep 0.5
    done
  done
  # One named Secret of trusted keys, as a policy would name it; its namespace must exist
  # for the Role. `other` next to it and `keys` in another namespace must stay unreadable.
  local ns
  for ns in security elsewhere; do
    "$KUBECTL" "${admin[@]}" create namespace "$ns" --dry-run=client -o yaml \
      | "$KUBECTL" "${admin[@]}" apply --server-side -f - >/dev/null || return 1
  done
  local secret
  for secret in security/keys security/other elsewhere/keys kpersist/keys; do
    "$KUBECTL" "${admin[@]}" -n "${secret%%/*}" create secret generic "${secret#*/}" \
      --from-literal=publisher=not-a-real-key --dry-run=client -o yaml \
      | "$KUBECTL" "${admin[@]}" apply --server-side -f - >/dev/null || return 1
  done
  "$HELM" template kpersist "$CHART" -n kpersist \
    --set-json 'operator.trustedKeysSecrets=[{"namespace":"security","name":"keys"}]' \
    --show-only templates/operator/serviceaccount.yaml --show-only templates/operator/rbac.yaml \
    --show-only templates/agent/serviceaccount.yaml --show-only templates/agent/rbac.yaml \
    >"$WORK/rbac.yaml" || return 1
  "$KUBECTL" "${admin[@]}" apply --server-side --field-manager=helm -f "$WORK/rbac.yaml" || return 1
  # The workloads cannot run without a kubelet, but the API server validates them: a
  # server-side dry run (PodDisruptionBudget is policy/v1, newer than this server, and the
  # monitoring kinds need the Prometheus Operator: left out). This server does not allow
  # privileged pods, so the privileged agent is checked in its simulated, unprivileged form.
  local operator_parts=(--show-only templates/operator/deployment.yaml --show-only templates/operator/service.yaml)
  local agent_parts=(--show-only templates/agent/daemonset.yaml --show-only templates/agent/service.yaml)
  "$HELM" template kpersist "$CHART" -n kpersist "${operator_parts[@]}" >"$WORK/workloads.yaml" || return 1
  "$KUBECTL" "${admin[@]}" apply --server-side --dry-run=server -f "$WORK/workloads.yaml" || return 1
  "$HELM" template kp "$CHART" -n kpersist -f "$FULL_VALUES" "${operator_parts[@]}" "${agent_parts[@]}" \
    >"$WORK/workloads.yaml" || return 1
  "$KUBECTL" "${admin[@]}" apply --server-side --dry-run=server -f "$WORK/workloads.yaml" || return 1
  # The sample policy must pass the real API server's schema validation.
  "$KUBECTL" "${admin[@]}" apply --server-side -f "$CHART/examples/livepatchpolicy.yaml" || return 1

  # What each identity may and may not do, asked of the API server itself.
  can() { # expect kubeconfig-args... -- can-i args...
    local want="$1"; shift
    local who=() ; while [ "$1" != "--" ]; do who+=("$1"); shift; done; shift
    local got
    got="$("$KUBECTL" "${who[@]}" auth can-i "$@" 2>/dev/null)"
    if [ "$got" != "$want" ]; then
      say "  expected '$want' for $(basename "${who[1]}" .kubeconfig): can-i $*, got '${got:-error}'"
      ok=1
    fi
  }
  for a in "list livepatchpolicies" "watch livepatchpolicies" "patch livepatchpolicies" \
    "patch livepatchpolicies --subresource=status" "update livepatchpolicies --subresource=finalizers" \
    "watch livepatchnodes" "patch livepatchnodes" "list nodes" "create events" \
    "create events.events.k8s.io" "create leases -n kpersist" \
    "update leases/kpersist-operator -n kpersist" "get secrets/keys -n security"; do
    can yes "${operator[@]}" -- $a
  done
  # Secrets: only the one named in values, by name; never a list or watch.
  for a in "create livepatchpolicies" "delete livepatchpolicies" "create livepatchnodes" \
    "delete livepatchnodes" "patch livepatchnodes --subresource=status" \
    "get secrets -n security" "get secrets/other -n security" "get secrets/keys -n elsewhere" \
    "get secrets/keys -n kpersist" "list secrets -n security" "watch secrets -n security" \
    "list secrets -A" "watch secrets -A" "update secrets/keys -n security" \
    "patch nodes" "update leases/other -n kpersist" \
    "create leases -n default" "create pods -n kpersist"; do
    can no "${operator[@]}" -- $a
  done
  # The agent's job. `create` cannot be limited to its own node's name, and `/status` patch
  # cannot either: on this 1.20 server that is what RBAC leaves open (the chart's
  # ValidatingAdmissionPolicy closes it on 1.30+); asserted so that a change shows.
  for a in "create livepatchnodes" "get livepatchnodes" "watch livepatchnodes" \
    "patch livepatchnodes --subresource=status" "patch livepatchnodes/node-b --subresource=status" \
    "get nodes" "get livepatchpolicies"; do
    can yes "${agent[@]}" -- $a
  done
  # Never another node's spec (nor its own), never a policy beyond reading one by name (to
  # verify a request against its signed index), never a Secret, never a Node.
  for a in "delete livepatchnodes" "update livepatchnodes" "patch livepatchnodes" \
    "update livepatchnodes/node-b" "patch livepatchnodes/node-b" "delete livepatchnodes/node-b" \
    "deletecollection livepatchnodes" "update livepatchnodes --subresource=status" \
    "list livepatchpolicies" "watch livepatchpolicies" "create livepatchpolicies" \
    "update livepatchpolicies" "patch livepatchpolicies" "delete livepatchpolicies" \
    "patch livepatchpolicies --subresource=status" "update livepatchpolicies --subresource=status" \
    "get secrets -n kpersist" "list secrets -n kpersist" "watch secrets -n kpersist" \
    "get secrets/keys -n security" "list secrets -A" "watch secrets -A" \
    "list nodes" "patch nodes" "update nodes" "patch nodes --subresource=status" \
    "create events" "create leases -n kpersist"; do
    can no "${agent[@]}" -- $a
  done
  # And for real: the operator reads its named Secret and nothing next to it.
  "$KUBECTL" "${operator[@]}" -n security get secret keys -o name >/dev/null \
    || { say "  the operator could not read the Secret named in values"; ok=1; }
  local refused
  for refused in "-n security get secret other" "-n elsewhere get secret keys" \
    "-n security get secrets" "get secrets -A"; do
    # shellcheck disable=SC2086 # word splitting of the kubectl arguments is intended
    if "$KUBECTL" "${operator[@]}" $refused -o name >/dev/null 2>&1; then
      say "  the operator could: kubectl $refused"; ok=1
    fi
    # shellcheck disable=SC2086
    if "$KUBECTL" "${agent[@]}" $refused -o name >/dev/null 2>&1; then
      say "  the agent could: kubectl $refused"; ok=1
    fi
  done
  if "$KUBECTL" "${agent[@]}" -n security get secret keys -o name >/dev/null 2>&1; then
    say "  the agent read a Secret"; ok=1
  fi
  # And for real: the operator and the agent read the sample policy by name; the agent
  # cannot list policies.
  "$KUBECTL" "${operator[@]}" get livepatchpolicy workers -o name >/dev/null \
    || { say "  the operator could not read the sample policy"; ok=1; }
  "$KUBECTL" "${agent[@]}" get livepatchpolicy workers -o name >/dev/null \
    || { say "  the agent could not read the sample policy by name"; ok=1; }
  if "$KUBECTL" "${agent[@]}" get livepatchpolicies -o name >/dev/null 2>&1; then
    say "  the agent listed LivePatchPolicies"; ok=1
  fi
  return $ok
}

if [ "${KPERSIST_CHART_CONTROLPLANE:-1}" = 0 ]; then
  say "step 5: API server skipped (KPERSIST_CHART_CONTROLPLANE=0)"
elif [ ! -x "$ROOT/e2e/controlplane/up.sh" ]; then
  say "step 5: API server skipped: e2e/controlplane/up.sh is not there"
else
  say "step 5: CRDs and RBAC on a real API server"
  if apply_to_controlplane; then
    say "CRDs, RBAC and the sample policy applied; every permission as expected"
  else
    fail controlplane "applying to the API server or a permission check failed (output above)"
  fi
fi

# --- images -----------------------------------------------------------------------------------
if [ "${KPERSIST_CHART_IMAGES:-0}" = 1 ]; then
  say "step 6: images (buildah, FROM scratch)"
  if ! command -v buildah >/dev/null 2>&1; then
    say "installing buildah"
    apt-get install -y -qq buildah >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq buildah >/dev/null 2>&1)
  fi
  if "$ROOT/images/build.sh" --out "$CACHE/images"; then
    say "images written to $CACHE/images"
  else
    fail images "images/build.sh failed (output above)"
  fi
else
  say "step 6: images skipped (KPERSIST_CHART_IMAGES=1 builds them)"
fi

finish
