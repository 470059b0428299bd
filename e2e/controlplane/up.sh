#!/usr/bin/env bash
# Starts a local Kubernetes control plane (etcd + kube-apiserver 1.20.2 built by build.sh)
# on free loopback ports, with RBAC and token authentication, for the end-to-end suites
# and the demo.
#
# Usage: e2e/controlplane/up.sh DIR [--owner PID]
#   DIR      scratch directory (created; must not hold a running control plane)
#   --owner  tear everything down when process PID exits (a test harness passes its own
#            pid, so nothing outlives it even when it is killed)
# Writes into DIR:
#   admin.kubeconfig     user `admin`, group system:masters
#   operator.kubeconfig  system:serviceaccount:kpersist:kpersist-operator
#   agent.kubeconfig     system:serviceaccount:kpersist:kpersist-agent (every agent; the
#                        chart runs all agents under this one service account)
#   controlplane.env     SERVER=, ETCD=, *_KUBECONFIG= lines (shell- and Rust-readable)
#   *.pid, *.log         processes started and their output
#   *.cmd                their command lines, for ctl.sh
# Stop with: e2e/controlplane/down.sh DIR; stop or start one process with ctl.sh
# KPERSIST_APISERVER_FLAGS="-v=3 ..." adds flags to kube-apiserver (split on spaces), e.g.
# to see each request and the watch cache's messages in its log.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
log() { printf '[controlplane/up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ $# -ge 1 ] || die "usage: up.sh DIR [--owner PID]"
DIR="$1"; shift
OWNER=""
while [ $# -gt 0 ]; do
  case "$1" in
    --owner) OWNER="${2:?--owner needs a pid}"; shift 2 ;;
    *) die "unknown argument '$1'; usage: up.sh DIR [--owner PID]" ;;
  esac
done

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
for p in "$DIR"/*.pid; do
  [ -e "$p" ] || continue
  pid=$(cat "$p")
  if kill -0 "$pid" 2>/dev/null; then
    die "$DIR already runs a control plane ($(basename "$p" .pid) pid $pid); stop it with down.sh $DIR"
  fi
done

BIN="$("$HERE/build.sh" kube-apiserver | tail -n1)"
ETCD="$(command -v etcd)" || die "etcd is not installed; run build.sh"

# Anything that fails from here on stops what was started.
trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed; stopping what was started"; "$HERE/down.sh" "$DIR" >&2 || true; fi' EXIT

# A port in 20000-32767 that nothing listens on: below Linux's ephemeral range, so
# outgoing connections do not take it meanwhile.
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 12768 ))
    if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ] && ! grep -qx "$p" "$DIR/.ports" 2>/dev/null; then
      echo "$p" >>"$DIR/.ports"
      echo "$p"
      return 0
    fi
  done
  die "no free loopback port found in 20000-32767"
}

# Runs a command in its own session (so a terminal's signals do not reach it) and records
# its pid; down.sh stops it by that pid. The command line is kept in NAME.cmd so that
# ctl.sh can start it again on the same ports and data.
start() {
  local name="$1"; shift
  printf '%q ' "$@" >"$DIR/$name.cmd"
  setsid "$@" >"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

wait_for() {
  local what="$1" log_file="$2" pid_file="$3" timeout="$4"; shift 4
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    kill -0 "$(cat "$pid_file")" 2>/dev/null || die "$what exited during start; last lines of $log_file:
$(tail -n 20 "$log_file")"
    [ $(( SECONDS - t0 )) -lt "$timeout" ] || die "$what not ready after ${timeout}s; last lines of $log_file:
$(tail -n 20 "$log_file")"
    sleep 0.5
  done
  log "$what ready after $(( SECONDS - t0 ))s"
}

rm -f "$DIR/.ports"
mkdir -p "$DIR/pki"
PKI="$DIR/pki"

# Certificates: one CA signs the API server's serving certificate (SAN 127.0.0.1) so
# clients verify TLS for real; the service-account key pair signs and checks tokens.
log "generating a CA, the serving certificate and the service-account key in $PKI"
openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj "/CN=kpersist-e2e-ca" \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$PKI/apiserver.ext"
openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
  -CAcreateserial -days 3 -extfile "$PKI/apiserver.ext" -out "$PKI/apiserver.crt" 2>/dev/null
openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

# Tokens: token,user,uid,"group1,group2".
token() { openssl rand -hex 24; }
ADMIN_TOKEN=$(token); OPERATOR_TOKEN=$(token); AGENT_TOKEN=$(token)
SA_GROUPS="system:serviceaccounts,system:serviceaccounts:kpersist"
cat >"$PKI/tokens.csv" <<EOF
$ADMIN_TOKEN,admin,admin,"system:masters"
$OPERATOR_TOKEN,system:serviceaccount:kpersist:kpersist-operator,kpersist-operator,"$SA_GROUPS"
$AGENT_TOKEN,system:serviceaccount:kpersist:kpersist-agent,kpersist-agent,"$SA_GROUPS"
EOF
chmod 600 "$PKI/tokens.csv" "$PKI"/*.key

ETCD_PORT=$(free_port); PEER_PORT=$(free_port); API_PORT=$(free_port)
ETCD_URL="http://127.0.0.1:$ETCD_PORT"
SERVER="https://127.0.0.1:$API_PORT"

log "starting etcd on $ETCD_URL"
start etcd "$ETCD" --name kpersist-e2e --data-dir "$DIR/etcd" \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "kpersist-e2e=http://127.0.0.1:$PEER_PORT"
wait_for etcd "$DIR/etcd.log" "$DIR/etcd.pid" 60 curl -fsS "$ETCD_URL/health"

log "starting kube-apiserver on $SERVER"
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers="$ETCD_URL" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
  --secure-port="$API_PORT" --insecure-port=0 \
  --cert-dir="$DIR/certs" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --token-auth-file="$PKI/tokens.csv" \
  --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range=10.96.0.0/16 \
  ${KPERSIST_APISERVER_FLAGS:-}
wait_for kube-apiserver "$DIR/kube-apiserver.log" "$DIR/kube-apiserver.pid" 180 \
  curl -fsS --cacert "$PKI/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" "$SERVER/readyz"

CA_DATA=$(base64 -w0 <"$PKI/ca.crt")
kubeconfig() {
  local file="$1" user="$2" tok="$3"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kpersist-e2e
  cluster:
    server: $SERVER
    certificate-authority-data: $CA_DATA
users:
- name: $user
  user:
    token: $tok
contexts:
- name: $user
  context:
    cluster: kpersist-e2e
    user: $user
current-context: $user
EOF
  chmod 600 "$file"
}
kubeconfig "$DIR/admin.kubeconfig" admin "$ADMIN_TOKEN"
kubeconfig "$DIR/operator.kubeconfig" kpersist-operator "$OPERATOR_TOKEN"
kubeconfig "$DIR/agent.kubeconfig" kpersist-agent "$AGENT_TOKEN"

cat >"$DIR/controlplane.env" <<EOF
SERVER=$SERVER
ETCD=$ETCD_URL
ADMIN_KUBECONFIG=$DIR/admin.kubeconfig
OPERATOR_KUBECONFIG=$DIR/operator.kubeconfig
AGENT_KUBECONFIG=$DIR/agent.kubeconfig
OPERATOR_USER=system:serviceaccount:kpersist:kpersist-operator
AGENT_USER=system:serviceaccount:kpersist:kpersist-agent
EOF

if [ -n "$OWNER" ]; then
  # Stops the control plane once the owner is gone, however it went.
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" "$3"' \
    owner-watch "$OWNER" "$HERE/down.sh" "$DIR" >"$DIR/owner-watch.log" 2>&1 </dev/null &
  echo $! >"$DIR/owner-watch.pid"
fi

log "control plane up: $SERVER (kubeconfigs in $DIR; stop with e2e/controlplane/down.sh $DIR)"
echo "$DIR/controlplane.env"
