#!/usr/bin/env bash
# Starts a local single-node Kubernetes 1.20 cluster on loopback: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd + runc and a kubelet, with the
# settings shared/E2E-CLUSTER.md ("Pods for real") found necessary on a machine without
# systemd, with hybrid cgroups and without CAP_SYS_RESOURCE. Pods run with host networking
# only (CNI is loopback-only).
#
# Usage: e2e/cluster/up.sh DIR BIN_DIR PAUSE_ARCHIVE
#   DIR            scratch directory (created); everything the cluster writes goes here,
#                  except what the kubelet insists on (see down.sh, which undoes it)
#   BIN_DIR        kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
#   PAUSE_ARCHIVE  OCI archive of the pause image localhost/kpersist-pause:e2e
# Writes DIR/cluster.env (SERVER, API_HOST, API_PORT, KUBECONFIG, NODE, CONTAINERD_SOCK).
# Stop with e2e/cluster/down.sh DIR, also after a failed start.
set -euo pipefail

log() { printf '[cluster/up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ $# -eq 3 ] || die "usage: up.sh DIR BIN_DIR PAUSE_ARCHIVE"
DIR="$1" BIN="$2" PAUSE="$3"
NODE=kpersist-node
PAUSE_IMAGE=localhost/kpersist-pause:e2e
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
PKI="$DIR/pki"
mkdir -p "$PKI" "$DIR/cni" "$DIR/kubelet" "$DIR/containerd"
ETCD="$(command -v etcd)" || die "etcd is not installed (apt-get install etcd-server)"

# Host state the kubelet changes outside DIR, recorded before it starts so down.sh
# restores exactly that and removes only what did not exist before.
: >"$DIR/host-created"
for p in /var/log/pods /var/log/containers /var/lib/kubelet/device-plugins /var/lib/kubelet \
  /usr/libexec/kubernetes /run/containerd /run/netns; do
  [ -e "$p" ] || echo "$p" >>"$DIR/host-created"
done
for s in vm.overcommit_memory kernel.panic kernel.panic_on_oops; do
  echo "$s=$(sysctl -n "$s")"
done >"$DIR/sysctl.saved"

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 12768 ))
    if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ] && ! grep -qx "$p" "$DIR/.ports" 2>/dev/null; then
      echo "$p" | tee -a "$DIR/.ports"
      return 0
    fi
  done
  die "no free loopback port found in 20000-32767"
}

# Own session per process, pid recorded for down.sh.
start() {
  local name="$1"; shift
  setsid "$@" >"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

wait_for() {
  local name="$1" timeout="$2"; shift 2
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null ||
      die "$name exited during start; last lines of $DIR/$name.log:
$(tail -n 20 "$DIR/$name.log")"
    [ $(( SECONDS - t0 )) -lt "$timeout" ] ||
      die "$name not ready after ${timeout}s; last lines of $DIR/$name.log:
$(tail -n 20 "$DIR/$name.log")"
    sleep 0.5
  done
  log "$name ready after $(( SECONDS - t0 ))s"
}

# --- certificates: one CA for every serving and client certificate ---------------------
log "generating certificates in $PKI"
openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj "/CN=kpersist-cluster-ca" \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
cert() { # name subject ext-lines
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$PKI/$1.key" -out "$PKI/$1.csr" 2>/dev/null
  printf '%b' "$3" >"$PKI/$1.ext"
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3 -extfile "$PKI/$1.ext" -out "$PKI/$1.crt" 2>/dev/null
}
SERVING='basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n'
CLIENT='basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n'
cert apiserver "/CN=kube-apiserver" "${SERVING}subjectAltName=IP:127.0.0.1,DNS:localhost\n"
cert kubelet "/CN=$NODE" "${SERVING}subjectAltName=IP:127.0.0.1,DNS:$NODE\n"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$CLIENT"
cert kubelet-client "/O=system:nodes/CN=system:node:$NODE" "$CLIENT"
cert admin "/O=system:masters/CN=admin" "$CLIENT"
openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
chmod 600 "$PKI"/*.key

ETCD_PORT=$(free_port); PEER_PORT=$(free_port); API_PORT=$(free_port)
KUBELET_PORT=$(free_port); KUBELET_HEALTHZ=$(free_port)
SERVER="https://127.0.0.1:$API_PORT"

kubeconfig() { # file user cert-name
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kpersist
  cluster: {server: "$SERVER", certificate-authority: "$PKI/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$PKI/$3.crt", client-key: "$PKI/$3.key"}
contexts:
- name: $2
  context: {cluster: kpersist, user: $2}
current-context: $2
EOF
  chmod 600 "$1"
}
kubeconfig "$DIR/admin.kubeconfig" admin admin
kubeconfig "$DIR/kubelet.kubeconfig" "system:node:$NODE" kubelet-client

# --- etcd and the API server -------------------------------------------------------------
log "starting etcd on 127.0.0.1:$ETCD_PORT"
start etcd "$ETCD" --name kpersist-cluster --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "kpersist-cluster=http://127.0.0.1:$PEER_PORT"
wait_for etcd 60 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

log "starting kube-apiserver on $SERVER"
# Node authorization lets the kubelet's own identity (system:node:<name>) do what a node
# may; privileged pods are what the agent's DaemonSet asks for.
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
  --secure-port="$API_PORT" --insecure-port=0 --cert-dir="$DIR/apiserver-certs" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --authorization-mode=Node,RBAC --allow-privileged=true \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" \
  --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range=10.96.0.0/16
wait_for kube-apiserver 180 curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" \
  --key "$PKI/admin.key" "$SERVER/readyz"

# --- controllers and scheduler -------------------------------------------------------------
log "starting kube-controller-manager and kube-scheduler"
start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$DIR/admin.kubeconfig" --bind-address=127.0.0.1 --port=0 --secure-port=0 \
  --leader-elect=false --use-service-account-credentials \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --controllers='*,-nodeipam,-service,-route,-cloud-node-lifecycle'
start kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig="$DIR/admin.kubeconfig" --bind-address=127.0.0.1 --port=0 --secure-port=0 \
  --leader-elect=false

# --- containerd ------------------------------------------------------------------------------
SOCK="$DIR/containerd/containerd.sock"
cat >"$DIR/cni/10-lo-only.conflist" <<'EOF'
{"cniVersion":"0.4.0","name":"lo-only","plugins":[{"type":"loopback"}]}
EOF
# restrict_oom_score_adj: without CAP_SYS_RESOURCE the default -998 cannot be set.
# The loopback-only CNI config makes the node Ready (1.20 schedules no DaemonSet pod on
# a node whose network is not ready); pods use host networking.
cat >"$DIR/containerd/config.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni"
EOF
log "starting containerd ($SOCK)"
start containerd containerd --config "$DIR/containerd/config.toml"
wait_for containerd 30 ctr --address "$SOCK" version
ctr --address "$SOCK" -n k8s.io images import "$PAUSE" >/dev/null
grep -qx "$PAUSE_IMAGE" <<<"$(ctr --address "$SOCK" -n k8s.io images ls -q)" ||
  die "importing $PAUSE did not give the image $PAUSE_IMAGE; images: $(ctr --address "$SOCK" -n k8s.io images ls -q | tr '\n' ' ')"

# --- kubelet ------------------------------------------------------------------------------------
cat >"$DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ
readOnlyPort: 0
cgroupDriver: cgroupfs
failSwapOn: false
makeIPTablesUtilChains: false
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
volumePluginDir: $DIR/kubelet/volume-plugins
resolvConf: /etc/resolv.conf
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
# No image garbage collection: the images are imported, no registry can give them back,
# and on a machine whose disk is shared the kubelet may see it as nearly full.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
log "starting the kubelet (node $NODE)"
start kubelet "$BIN/kubelet" \
  --config="$DIR/kubelet/config.yaml" --kubeconfig="$DIR/kubelet.kubeconfig" \
  --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" \
  --root-dir="$DIR/kubelet/root" --cert-dir="$DIR/kubelet/pki" \
  --hostname-override="$NODE" --node-ip=127.0.0.1
wait_for kubelet 60 curl -fsS "http://127.0.0.1:$KUBELET_HEALTHZ/healthz"

cat >"$DIR/cluster.env" <<EOF
SERVER=$SERVER
API_HOST=127.0.0.1
API_PORT=$API_PORT
KUBECONFIG=$DIR/admin.kubeconfig
NODE=$NODE
CONTAINERD_SOCK=$SOCK
EOF
log "cluster up: $SERVER, node $NODE (stop with e2e/cluster/down.sh $DIR)"
