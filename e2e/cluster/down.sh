#!/usr/bin/env bash
# Stops a cluster started by e2e/cluster/up.sh and undoes what it changed outside DIR:
# containers and their shims (by pid), the /kubepods cgroups in every cgroup v1 hierarchy,
# mounts under DIR, the sysctls the kubelet sets, and the host directories the kubelet
# and containerd create when they did not exist before. Logs stay in DIR.
#
# Usage: e2e/cluster/down.sh DIR
set -uo pipefail

log() { printf '[cluster/down] %s\n' "$*" >&2; }
[ $# -eq 1 ] || { log "usage: down.sh DIR"; exit 2; }
[ -d "$1" ] || { log "$1 is not a directory; nothing to stop"; exit 0; }
DIR="$(cd "$1" && pwd)"
SOCK="$DIR/containerd/containerd.sock"

# No `| grep -q` here or below: with pipefail, grep leaving early can fail the pipeline.
ours() { # pid -> true when it is alive and its command line names DIR
  [ -r "/proc/$1/cmdline" ] && [[ "$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" == *"$DIR"* ]]
}

stop() { # name: stops DIR/name.pid, TERM then KILL after 5 s
  local f="$DIR/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 25); do ours "$pid" || break; sleep 0.2; done
    ours "$pid" && { log "$1 (pid $pid) did not stop within 5s; killing it"; kill -KILL "$pid" 2>/dev/null; }
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}

# The kubelet first, so it restarts nothing; then every container, while containerd runs.
stop kubelet
if [ -S "$SOCK" ]; then
  for t in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr --address "$SOCK" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1
  done
  sleep 1
  for t in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr --address "$SOCK" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1
  done
fi
stop kube-scheduler
stop kube-controller-manager
stop containerd

# Shims outlive containerd by design; ours name DIR's socket on their command line.
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  [ "$(cat "$p/comm" 2>/dev/null)" = containerd-shim ] || [ "$(cat "$p/comm" 2>/dev/null)" = containerd-shim-runc-v2 ] || continue
  ours "$pid" || continue
  kill -KILL "$pid" 2>/dev/null && log "killed containerd shim pid $pid"
done

# Whatever still runs in the pods' cgroups is ours; then the cgroups go, deepest first.
for h in /sys/fs/cgroup/*/; do
  cg="${h}kubepods"
  [ -d "$cg" ] || continue
  find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do
    kill -KILL "$pid" 2>/dev/null
  done
done
sleep 0.5
for h in /sys/fs/cgroup/*/; do
  [ -d "${h}kubepods" ] || continue
  find "${h}kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
  [ -d "${h}kubepods" ] && log "could not remove ${h}kubepods (processes left in it?)"
done

# Mounts under DIR (the kubelet bind-mounts its root dir; volumes, rootfs, netns), deepest first.
findmnt -rn -o TARGET | grep -F "$DIR" | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
done

stop kube-apiserver
stop etcd

if [ -f "$DIR/sysctl.saved" ]; then
  while IFS= read -r kv; do
    sysctl -q -w "$kv" >/dev/null || log "could not restore sysctl $kv"
  done <"$DIR/sysctl.saved"
  rm -f "$DIR/sysctl.saved"
fi
if [ -f "$DIR/host-created" ]; then
  while IFS= read -r p; do
    [ -n "$p" ] && [ -e "$p" ] && { rm -rf "$p" && log "removed $p"; }
  done <"$DIR/host-created"
  rm -f "$DIR/host-created"
fi
log "cluster in $DIR stopped"
