#!/usr/bin/env bash
# The cluster suite: `helm install` of helm/kpersist into a real single-node Kubernetes
# cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet 1.20.2
# built from Debian's source; containerd + runc from Debian), with the operator and agent
# images built here from static binaries. Asserted from the API: the operator Deployment
# is available and holds the leader Lease; the agent DaemonSet has a Ready pod; that agent
# created the node's LivePatchNode, which reports Unsupported with the real (read-only)
# kernel interface; with agent.simulate a LivePatchPolicy rolls out and shows Applied;
# /metrics answers on both pods; a `helm upgrade` restarts the agent and the patch stays
# applied; `kubectl wait`, `-o wide` and the events command work as the chart's README and
# NOTES print them; `helm uninstall` leaves only the CRDs, and the README's steps remove
# those too with no operator left to clear its finalizer.
#
# This machine's kernel is never patched: the real-kernel agent runs before any policy
# exists and only reads (no /sys/kernel/livepatch here: Unsupported); the policy is applied
# only once the simulated agent has replaced it.
#
# Usage: e2e/cluster/run.sh          (as root: it runs containerd and a kubelet)
# Environment:
#   KPERSIST_CACHE         cache directory (default /var/cache/kpersist)
#   KPERSIST_CLUSTER_KEEP  1 keeps the scratch directory (logs) after a passing run
# Last line: CLUSTER-E2E: PASS or CLUSTER-E2E: FAIL, and the exit code to match.
# The check functions are called through wait_until, which shellcheck cannot follow.
# shellcheck disable=SC2317
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${KPERSIST_CACHE:-/var/cache/kpersist}"
WORK="$(mktemp -d /tmp/kpersist-cluster.XXXXXX)"
CL="$WORK/cluster"
NS=kpersist
REL=kpersist
SIM_KERNEL=6.1.0-56-amd64
SIM_BUILD_ID=5eedc0ffee5eedc0ffee5eedc0ffee5eedc0ffee
T0=$SECONDS
PASSED=0

say() { printf '[cluster %4ds] %s\n' $(( SECONDS - T0 )) "$*"; }
ok() { say "ok: $*"; }
# The verdict is printed by cleanup, after the teardown, as the last line.
finish() {
  if [ "$PASSED" = 1 ]; then
    say "all steps passed"
    exit 0
  fi
  exit 1
}
fail() {
  say "FAIL: $*"
  if [ -f "$CL/cluster.env" ]; then
    say "state at failure:"
    k get nodes -o wide 2>&1 | sed 's/^/    /'
    k get pods -A -o wide 2>&1 | sed 's/^/    /'
    k get livepatchnodes,livepatchpolicies -o yaml 2>&1 | tail -n 60 | sed 's/^/    /'
    for f in "$CL"/kubelet.log "$CL"/containerd.log; do
      say "last lines of $f:"; tail -n 15 "$f" | sed 's/^/    /'
    done
    for p in $(k -n "$NS" get pods -o name 2>/dev/null); do
      say "logs of $p:"; k -n "$NS" logs "$p" --tail=20 2>&1 | sed 's/^/    /'
    done
  fi
  KEEP=1
  finish
}
KEEP="${KPERSIST_CLUSTER_KEEP:-0}"

cleanup() {
  [ -n "${REPO_PID:-}" ] && kill "$REPO_PID" 2>/dev/null
  if [ -d "$CL" ]; then
    say "tearing the cluster down"
    "$HERE/down.sh" "$CL" 2>&1 | sed 's/^/    /'
    local left
    left="$(findmnt -rn -o TARGET | grep -F "$WORK"; ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null
      for f in /proc/[0-9]*/cmdline; do
        [[ "$(tr '\0' ' ' <"$f" 2>/dev/null)" == *"$CL"* ]] && echo "process ${f//[!0-9]/}"
      done)"
    if [ -n "$left" ]; then
      say "FAIL: the teardown left behind: $left"
      PASSED=0 KEEP=1
    fi
  fi
  if [ "$KEEP" = 1 ]; then
    say "logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  echo
  if [ "$PASSED" = 1 ]; then
    echo "CLUSTER-E2E: PASS"
    exit 0
  fi
  echo "CLUSTER-E2E: FAIL"
  exit 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until DESCRIPTION TIMEOUT_S COMMAND...: polls every second.
wait_until() {
  local what="$1" timeout="$2" t0=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $(( SECONDS - t0 )) -lt "$timeout" ] || fail "$what: not within ${timeout}s"
    sleep 1
  done
  ok "$what ($(( SECONDS - t0 ))s)"
}

[ "$(id -u)" = 0 ] || fail "run as root: the suite starts containerd and a kubelet"

# --- 1. packages -----------------------------------------------------------------------------
say "step 1: Debian packages"
PKGS=(containerd runc buildah containernetworking-plugins gcc libc6-dev openssl curl iproute2 python3)
need=()
for p in "${PKGS[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    fail "apt-get install ${need[*]} failed"
fi
ok "packages installed"

# --- 2. Kubernetes binaries ----------------------------------------------------------------------
say "step 2: Kubernetes 1.20.2 binaries (built once from Debian's source, then cached)"
BIN="$("$ROOT/e2e/controlplane/build.sh" kube-apiserver kube-controller-manager kube-scheduler kubelet | tail -n1)" ||
  fail "building the Kubernetes binaries failed (output above)"
K8S_SRC="$(dirname "$BIN")/src"
ok "binaries in $BIN"

# --- 3. helm and kubectl -----------------------------------------------------------------------
say "step 3: helm and kubectl"
TOOLS="$("$ROOT/e2e/tools/helm.sh" | tail -n1)" || fail "could not get helm and kubectl (e2e/tools/helm.sh, output above)"
HELM="$TOOLS/helm"
KUBECTL="$TOOLS/kubectl"
export HELM_CACHE_HOME="$WORK/helm-cache" HELM_CONFIG_HOME="$WORK/helm-config" HELM_DATA_HOME="$WORK/helm-data"
k() { "$KUBECTL" --kubeconfig "$CL/admin.kubeconfig" "$@"; }
ok "$("$HELM" version --short), kubectl $("$KUBECTL" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"

# --- 4. images -------------------------------------------------------------------------------------
say "step 4: static binaries and images (cargo output follows; cached in $CACHE/target-static)"
STATIC="$CACHE/target-static"
(cd "$ROOT" && CARGO_TARGET_DIR="$STATIC" RUSTFLAGS="-C target-feature=+crt-static" \
  CARGO_PROFILE_RELEASE_DEBUG=false cargo build -q --release --target x86_64-unknown-linux-gnu \
  -p kpersist-kmod --bin kpersist-repo) || fail "static build of kpersist-repo failed"
REPO_TOOL="$STATIC/x86_64-unknown-linux-gnu/release/kpersist-repo"
IMAGES="$("$ROOT/images/build.sh" --tag e2e --out "$WORK/images" | tail -n1)" ||
  fail "images/build.sh failed (output above)"
ok "operator and agent images in $IMAGES"

# The sandbox ("pause") image, from Kubernetes' own pause.c, static, on an empty base.
PAUSE_DIR="$CACHE/pause"
PAUSE_TAR="$PAUSE_DIR/kpersist-pause-e2e.tar"
if [ ! -f "$PAUSE_TAR" ]; then
  say "building the pause image from $K8S_SRC/build/pause/linux/pause.c"
  mkdir -p "$PAUSE_DIR/ctx"
  gcc -Os -static -o "$PAUSE_DIR/ctx/pause" "$K8S_SRC/build/pause/linux/pause.c" || fail "compiling pause.c failed"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$PAUSE_DIR/ctx/Containerfile"
  STORE=(--root "$CACHE/buildah/storage" --runroot "$CACHE/buildah/run" --storage-driver vfs)
  buildah "${STORE[@]}" bud --isolation chroot --layers=false --quiet -f "$PAUSE_DIR/ctx/Containerfile" \
    -t localhost/kpersist-pause:e2e "$PAUSE_DIR/ctx" >/dev/null || fail "buildah bud of the pause image failed"
  buildah "${STORE[@]}" push --quiet localhost/kpersist-pause:e2e \
    "oci-archive:$PAUSE_TAR.part:localhost/kpersist-pause:e2e" || fail "exporting the pause image failed"
  buildah "${STORE[@]}" rmi localhost/kpersist-pause:e2e >/dev/null
  mv "$PAUSE_TAR.part" "$PAUSE_TAR"
fi
ok "pause image $PAUSE_TAR"

# --- 5. the cluster -------------------------------------------------------------------------------
say "step 5: cluster up"
"$HERE/up.sh" "$CL" "$BIN" "$PAUSE_TAR" || fail "cluster start failed (output above)"
# shellcheck disable=SC1091
. "$CL/cluster.env"
for img in operator agent; do
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$IMAGES/kpersist-$img.tar" >/dev/null ||
    fail "ctr images import $IMAGES/kpersist-$img.tar failed"
  # Listed first, then searched: `ctr ... | grep -q` fails under pipefail when grep exits early.
  grep -qx "localhost/kpersist-$img:e2e" <<<"$(ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q)" ||
    fail "localhost/kpersist-$img:e2e is not in containerd after the import"
done
ok "images imported into containerd (namespace k8s.io)"
wait_until "node $NODE registered" 60 k get node "$NODE"
# The kubelet registers no address for a loopback node IP; logs, exec, probes and
# host-network pod IPs need one.
k patch node "$NODE" --subresource=status --type=merge -p \
  "{\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"127.0.0.1\"},{\"type\":\"Hostname\",\"address\":\"$NODE\"}]}}" >/dev/null ||
  fail "patching the addresses of node $NODE failed"
node_ready() { [ "$(k get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
wait_until "node $NODE Ready" 120 node_ready

# --- 6. a signed repository on loopback ------------------------------------------------------------
say "step 6: signed patch repository"
REPO="$WORK/repo"
FIXTURE="$ROOT/kmod/tests/fixtures/kpersist_v1.ko"
{
  "$REPO_TOOL" keygen --out-dir "$WORK/keys" &&
    "$REPO_TOOL" init --repo "$REPO" &&
    "$REPO_TOOL" add "$FIXTURE" --repo "$REPO" --kernel-release "$SIM_KERNEL" --build-id "$SIM_BUILD_ID" \
      --version 1 --cve CVE-2026-20001 --channel stable &&
    "$REPO_TOOL" sign --repo "$REPO" --key "$WORK/keys/kpersist.key"
} >"$WORK/repo.log" 2>&1 || fail "building the repository failed: $(tail -n 5 "$WORK/repo.log")"
REPO_PORT=$(( 20000 + RANDOM % 12768 ))
while [ -n "$(ss -Htln "sport = :$REPO_PORT")" ]; do REPO_PORT=$(( 20000 + RANDOM % 12768 )); done
python3 -m http.server "$REPO_PORT" --bind 127.0.0.1 --directory "$REPO" >"$WORK/repo-server.log" 2>&1 &
REPO_PID=$!
wait_until "repository served on 127.0.0.1:$REPO_PORT" 20 curl -fsS "http://127.0.0.1:$REPO_PORT/index.json"

# --- 7. helm install, real kernel interface -----------------------------------------------------
# Two adjacent free ports: host-network pods listen on the node's ports.
while :; do
  OPERATOR_PORT=$(( 20000 + RANDOM % 12768 )) AGENT_PORT=$(( OPERATOR_PORT + 1 ))
  [ -z "$(ss -Htln "sport = :$OPERATOR_PORT or sport = :$AGENT_PORT")" ] &&
    [ "$AGENT_PORT" != "$REPO_PORT" ] && [ "$OPERATOR_PORT" != "$REPO_PORT" ] && break
done
# Pods here have host networking only (no CNI beyond loopback, no kube-proxy), so both
# components use hostNetwork and reach the API server through its loopback address.
cat >"$WORK/values.yaml" <<EOF
operator:
  image: {repository: localhost/kpersist-operator, tag: e2e, pullPolicy: Never}
  replicas: 1
  hostNetwork: true
  metricsPort: $OPERATOR_PORT
  log: {format: text, filter: info}
  extraEnv:
    - {name: KUBERNETES_SERVICE_HOST, value: "$API_HOST"}
    - {name: KUBERNETES_SERVICE_PORT, value: "$API_PORT"}
agent:
  image: {repository: localhost/kpersist-agent, tag: e2e, pullPolicy: Never}
  hostNetwork: true
  metricsPort: $AGENT_PORT
  stateDir: $WORK/agent-state
  log: {format: text, filter: info}
  simulate: {enabled: false, kernelRelease: $SIM_KERNEL, buildId: $SIM_BUILD_ID}
  extraEnv:
    - {name: KUBERNETES_SERVICE_HOST, value: "$API_HOST"}
    - {name: KUBERNETES_SERVICE_PORT, value: "$API_PORT"}
EOF
say "step 7: helm install (agent on the real kernel interface, read only)"
# Two replicas render the PodDisruptionBudget, which must take the API version this
# cluster serves (policy/v1beta1 on 1.20) and pass its validation.
"$HELM" --kubeconfig "$CL/admin.kubeconfig" install "$REL" "$ROOT/helm/kpersist" -n "$NS" \
  --dry-run=server -f "$WORK/values.yaml" --set operator.replicas=2 >"$WORK/helm-dry-run.yaml" 2>&1 ||
  fail "helm install --dry-run=server with two operator replicas failed: $(tail -n 5 "$WORK/helm-dry-run.yaml")"
grep -qx 'apiVersion: policy/v1beta1' <<<"$(grep -B1 -x 'kind: PodDisruptionBudget' "$WORK/helm-dry-run.yaml")" ||
  fail "the PodDisruptionBudget is not policy/v1beta1 on this 1.20 cluster"
ok "server-side dry run with two replicas: PodDisruptionBudget as policy/v1beta1"
"$HELM" --kubeconfig "$CL/admin.kubeconfig" install "$REL" "$ROOT/helm/kpersist" -n "$NS" \
  --create-namespace -f "$WORK/values.yaml" >"$WORK/helm-install.log" 2>&1 ||
  fail "helm install failed: $(cat "$WORK/helm-install.log")"
ok "helm install"
deploy_available() {
  [ "$(k -n "$NS" get deploy "$REL-operator" -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ]
}
wait_until "operator Deployment available" 120 deploy_available
OP_POD=$(k -n "$NS" get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[0].metadata.name}')
lease_held() { [ "$(k -n "$NS" get lease kpersist-operator -o jsonpath='{.spec.holderIdentity}')" = "$OP_POD" ]; }
wait_until "operator pod $OP_POD holds the Lease $NS/kpersist-operator" 60 lease_held

agent_pod() { k -n "$NS" get pods -l app.kubernetes.io/component=agent --field-selector spec.nodeName="$NODE" \
  -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.uid}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}'; }
agent_ready_not() { # UID: one agent pod, Ready, and not the pod with that UID
  local pods; pods=$(agent_pod)
  [ "$(wc -l <<<"$pods")" = 1 ] && [[ "$pods" == *" True" ]] && [[ "$pods" != *" $1 "* ]]
}
ds_ready() { [ "$(k -n "$NS" get ds "$REL-agent" -o jsonpath='{.status.numberReady}')" = 1 ] && agent_ready_not none; }
wait_until "agent DaemonSet has a Ready pod on $NODE" 120 ds_ready
AGENT1=$(agent_pod | awk '{print $1" "$2}')
nodestatus() { k get livepatchnode "$NODE" -o jsonpath="$1"; }
wait_until "the agent created LivePatchNode $NODE" 60 nodestatus '{.metadata.name}'
unsupported() { [ "$(nodestatus '{.status.state}')" = Unsupported ]; }
wait_until "LivePatchNode $NODE reports Unsupported" 60 unsupported
say "LivePatchNode status: $(nodestatus '{.status}')"
# The reason: the kernel the agent read is this machine's, and it has no livepatch support
# (no /sys/kernel/livepatch), said in the LivepatchSupported condition.
[ "$(nodestatus '{.status.livepatchSupported}')" = false ] || fail "status.livepatchSupported is not false"
support='{.status.conditions[?(@.type=="LivepatchSupported")]'
[ "$(nodestatus "$support.reason}")" = NoLivepatchSupport ] ||
  fail "condition LivepatchSupported has reason '$(nodestatus "$support.reason}")', not NoLivepatchSupport"
say "reason: $(nodestatus "$support.message}")"
[ "$(nodestatus '{.status.kernelRelease}')" = "$(uname -r)" ] ||
  fail "status.kernelRelease $(nodestatus '{.status.kernelRelease}') is not this machine's kernel $(uname -r)"
ok "Unsupported (NoLivepatchSupport) on kernel $(uname -r)"

# --- 8. simulated kernel: a policy rolls out -------------------------------------------------------
say "step 8: helm upgrade to the simulated agent, then a LivePatchPolicy"
sed -i 's/simulate: {enabled: false/simulate: {enabled: true/' "$WORK/values.yaml"
"$HELM" --kubeconfig "$CL/admin.kubeconfig" upgrade "$REL" "$ROOT/helm/kpersist" -n "$NS" \
  -f "$WORK/values.yaml" >"$WORK/helm-upgrade1.log" 2>&1 || fail "helm upgrade failed: $(cat "$WORK/helm-upgrade1.log")"
wait_until "the simulated agent replaced pod ${AGENT1% *}" 120 agent_ready_not "${AGENT1#* }"
sim_kernel() { [ "$(nodestatus '{.status.kernelRelease}')" = "$SIM_KERNEL" ]; }
wait_until "LivePatchNode reports the simulated kernel $SIM_KERNEL" 60 sim_kernel
PUBKEY=$(cat "$WORK/keys/kpersist.pub")
cat >"$WORK/policy.yaml" <<EOF
apiVersion: kpersist.io/v1alpha1
kind: LivePatchPolicy
metadata:
  name: e2e
spec:
  nodeSelector: {}
  repository:
    url: http://127.0.0.1:$REPO_PORT
    channel: stable
    trustedKeys: ["$PUBKEY"]
    checkInterval: 1m
  rollout:
    waves:
      - {percent: 100, bake: 0s}
    maxInFlight: 1
    maxFailures: 0
    failurePolicy: Pause
  health:
    transitionTimeout: 60s
    nodeReady: true
    kmsgChecks: true
EOF
k apply -f "$WORK/policy.yaml" >/dev/null || fail "kubectl apply of the policy failed"
RELEASE_ID="$SIM_KERNEL/v1"
applied() { [ "$(nodestatus '{.status.state}')" = Applied ] && [ "$(nodestatus '{.status.applied.id}')" = "$1" ]; }
wait_until "LivePatchNode $NODE Applied $RELEASE_ID" 180 applied "$RELEASE_ID"
policy_complete() { [ "$(k get livepatchpolicy e2e -o jsonpath='{.status.phase} {.status.patchedSummary}')" = "Complete 1/1" ]; }
wait_until "LivePatchPolicy e2e Complete, 1/1 nodes patched" 120 policy_complete

say "step 8b: kubectl as the chart's README and NOTES show it"
# kubectl wait understands the policy's Ready condition.
k wait --for=condition=Ready lpp/e2e --timeout=60s >"$WORK/wait.txt" 2>&1 ||
  fail "kubectl wait --for=condition=Ready lpp/e2e: $(cat "$WORK/wait.txt")"
ok "kubectl wait --for=condition=Ready lpp/e2e: $(cat "$WORK/wait.txt")"
k get lpp,lpn -o wide >"$WORK/wide.txt" 2>&1 || fail "kubectl get lpp,lpn -o wide: $(cat "$WORK/wide.txt")"
sed 's/^/  | /' "$WORK/wide.txt"
lpp_header=$(grep -m1 '^NAME  *PHASE' "$WORK/wide.txt") || fail "kubectl get lpp -o wide printed no header"
lpn_header=$(grep -m1 '^NAME  *KERNEL' "$WORK/wide.txt") || fail "kubectl get lpn -o wide printed no header"
for column in READY REASON FAILED WAVE PROBLEMS BAD; do
  grep -qw "$column" <<<"$lpp_header" || fail "kubectl get lpp -o wide has no $column column: $lpp_header"
done
for column in APPLIED DESIRED REASON POLICY WAVE RELEASE; do
  grep -qw "$column" <<<"$lpn_header" || fail "kubectl get lpn -o wide has no $column column: $lpn_header"
done
grep -q "^livepatchpolicy.kpersist.io/e2e  *Complete  *True " "$WORK/wide.txt" ||
  fail "the policy's row does not read Complete, Ready True"
ok "kubectl get lpp,lpn -o wide: Ready, Reason, Failed on the policy; Policy, Wave, Release in wide"
# The label filters, exactly as the chart's README prints them: no node has failed, and the
# node (on 6.1.0-56-amd64) has applied.
grep -o '^kubectl get lpn -l [^#]*' "$ROOT/helm/kpersist/README.md" | sed 's/ *$//' >"$WORK/filters.txt"
[ "$(wc -l <"$WORK/filters.txt")" -eq 2 ] || fail "the chart's README shows $(wc -l <"$WORK/filters.txt") label filters, not 2"
# The operator writes the labels one reconcile after the agent's status.
lists() { [ "$(k "$@" -o name 2>&1)" = "$want" ]; }
while read -r printed <&3; do
  read -ra words <<<"${printed#kubectl }"
  case $printed in
    *state=Failed*) want="" ;;
    *) want="livepatchnode.kpersist.io/$NODE" ;;
  esac
  wait_until "$printed -o name lists '${want:-nothing}'" 30 lists "${words[@]}"
done 3<"$WORK/filters.txt"
# NOTES' first checks, exactly as `helm install` printed them for this release.
grep -E '^ +kubectl .*get (deploy,ds|livepatchnodes)' "$WORK/helm-install.log" | sed 's/#.*//; s/^ *//; s/ *$//' >"$WORK/notes-commands.txt"
[ "$(wc -l <"$WORK/notes-commands.txt")" -eq 2 ] || fail "helm install's NOTES show $(wc -l <"$WORK/notes-commands.txt") of its 2 checks: $(cat "$WORK/helm-install.log")"
while read -r printed <&3; do
  read -ra words <<<"${printed#kubectl }"
  k "${words[@]}" >"$WORK/notes-out.txt" 2>&1 || fail "$printed (from NOTES): $(cat "$WORK/notes-out.txt")"
  case $printed in
    *deploy,ds*) wants=("deployment.apps/$REL-operator" "daemonset.apps/$REL-agent") ;;
    *) wants=("$NODE") ;;
  esac
  for want in "${wants[@]}"; do
    grep -q "^$want " "$WORK/notes-out.txt" || fail "$printed (from NOTES) lists no $want: $(cat "$WORK/notes-out.txt")"
  done
  ok "$printed (from NOTES): lists ${wants[*]}"
done 3<"$WORK/notes-commands.txt"
# The events command, exactly as the chart's README and NOTES print it.
for doc in "$ROOT/helm/kpersist/README.md" "$ROOT/helm/kpersist/templates/NOTES.txt"; do
  printed=$(grep -o 'kubectl get events [^#]*' "$doc" | head -n1 | sed 's/ *$//')
  [ -n "$printed" ] || fail "$doc shows no kubectl get events command"
  read -ra words <<<"${printed#kubectl }"
  k "${words[@]}" >"$WORK/events.txt" 2>&1 || fail "$printed: $(cat "$WORK/events.txt")"
  grep -q "livepatchpolicy/e2e" "$WORK/events.txt" ||
    fail "$printed (from $(basename "$doc")) lists no Event of policy e2e: $(cat "$WORK/events.txt")"
  ok "$printed (from $(basename "$doc")): $(grep -c "livepatchpolicy/e2e" "$WORK/events.txt") events of policy e2e"
done

# --- 9. metrics ---------------------------------------------------------------------------------
say "step 9: /metrics of both pods at their pod IPs"
for c in operator:$OPERATOR_PORT agent:$AGENT_PORT; do
  comp=${c%:*} port=${c#*:}
  ip=$(k -n "$NS" get pods -l app.kubernetes.io/component="$comp" -o jsonpath='{.items[0].status.podIP}')
  [ -n "$ip" ] || fail "the $comp pod has no IP"
  curl -fsS "http://$ip:$port/metrics" >"$WORK/metrics-$comp.txt" 2>&1 || fail "$comp /metrics at $ip:$port did not answer"
  grep -q '^kpersist_' "$WORK/metrics-$comp.txt" || fail "$comp /metrics has no kpersist_ series"
  ok "$comp /metrics at $ip:$port ($(grep -c '^kpersist_' "$WORK/metrics-$comp.txt") kpersist_ samples)"
done

# --- 10. helm upgrade restarts the agent; the patch stays ------------------------------------------
say "step 10: helm upgrade restarting the agent"
AGENT2=$(agent_pod | awk '{print $1" "$2}')
"$HELM" --kubeconfig "$CL/admin.kubeconfig" upgrade "$REL" "$ROOT/helm/kpersist" -n "$NS" -f "$WORK/values.yaml" \
  --set-string "agent.podAnnotations.kpersist\.io/restarted-by=e2e-upgrade" >"$WORK/helm-upgrade2.log" 2>&1 ||
  fail "helm upgrade failed: $(cat "$WORK/helm-upgrade2.log")"
wait_until "a new agent pod replaced ${AGENT2% *}" 120 agent_ready_not "${AGENT2#* }"
wait_until "LivePatchNode $NODE still Applied $RELEASE_ID" 60 applied "$RELEASE_ID"
# The status above may still be the old pod's; the new process's own metrics are not.
new_agent_applied() {
  curl -fsS "http://127.0.0.1:$AGENT_PORT/metrics" >"$WORK/metrics-agent-new.txt" &&
    grep -q "^kpersist_agent_applied_info{.*release=\"$RELEASE_ID\".*} 1" "$WORK/metrics-agent-new.txt"
}
wait_until "the new agent process reports $RELEASE_ID live (kpersist_agent_applied_info)" 60 new_agent_applied
# The chart's simulate value keeps the simulated kernel in an emptyDir, which a new pod
# does not inherit; the chart gives each pod's simulated kernel its own boot id, so the new
# agent sees a reboot and applies the release again. Say which happened.
if grep -q '^kpersist_agent_applies_total{.*action="Apply"' "$WORK/metrics-agent-new.txt"; then
  say "note: the new agent pod applied $RELEASE_ID again (its simulated kernel starts empty)"
else
  say "the new agent pod found $RELEASE_ID live without applying it again"
fi

# --- 11. helm uninstall ---------------------------------------------------------------------------
say "step 11: helm uninstall"
"$HELM" --kubeconfig "$CL/admin.kubeconfig" uninstall "$REL" -n "$NS" --wait >"$WORK/helm-uninstall.log" 2>&1 ||
  fail "helm uninstall failed: $(cat "$WORK/helm-uninstall.log")"
KINDS=deployments,daemonsets,replicasets,pods,services,serviceaccounts,configmaps,secrets,roles,rolebindings,clusterroles,clusterrolebindings,poddisruptionbudgets
left() { k get "$KINDS" -A -l "app.kubernetes.io/instance=$REL" -o name 2>/dev/null; }
no_objects() { [ -z "$(left)" ] && [ -z "$(k -n "$NS" get pods -o name 2>/dev/null)" ]; }
wait_until "no object of release $REL and no pod in $NS is left" 90 no_objects
for crd in livepatchpolicies.kpersist.io livepatchnodes.kpersist.io; do
  k get crd "$crd" >/dev/null 2>&1 || fail "CRD $crd is gone after helm uninstall; Helm keeps CRDs"
done
ok "only the CRDs remain (and the objects users and agents made: $(k get livepatchpolicies,livepatchnodes -o name | tr '\n' ' '))"

say "step 12: removing everything after the chart is gone, as the chart's README says"
# With no operator left, the policy's finalizer would hold its deletion and the CRD's for
# ever; the README's loop removes it. Each command runs exactly as printed.
README="$ROOT/helm/kpersist/README.md"
unblock=$(grep -m1 '^for p in $(kubectl get livepatchpolicies' "$README") || fail "$README shows no finalizer removal"
remove=$(grep -m1 '^kubectl delete crd ' "$README") || fail "$README shows no CRD deletion"
finalizers() { k get livepatchpolicies -o jsonpath='{.items[*].metadata.finalizers}'; }
[[ "$(finalizers)" == *kpersist.io/clear-desired* ]] ||
  fail "policy e2e should still hold the finalizer kpersist.io/clear-desired: $(finalizers)"
kubectl() { k "$@"; }
eval "$unblock" >"$WORK/unblock.log" 2>&1 || fail "$unblock: $(cat "$WORK/unblock.log")"
unset -f kubectl
[ -z "$(finalizers)" ] || fail "$unblock left finalizers: $(finalizers)"
ok "the README's loop removed the finalizer no operator is left to clear"
read -ra words <<<"${remove#kubectl }"
timeout 120 "$KUBECTL" --kubeconfig "$CL/admin.kubeconfig" "${words[@]}" >"$WORK/remove.log" 2>&1 ||
  fail "$remove did not finish within 120s: $(cat "$WORK/remove.log")"
no_crds() { ! k get crd livepatchpolicies.kpersist.io livepatchnodes.kpersist.io >/dev/null 2>&1; }
wait_until "the CRDs, the policy and the node records are gone" 30 no_crds

PASSED=1
finish
