#!/usr/bin/env bash
# Stops a control plane started by up.sh: every process recorded in DIR/*.pid, by pid,
# and only if that pid still runs a command naming DIR (a recycled pid is left alone).
# Logs and data stay in DIR for reading; remove DIR yourself.
#
# Usage: e2e/controlplane/down.sh DIR
set -uo pipefail

log() { printf '[controlplane/down] %s\n' "$*" >&2; }
[ $# -eq 1 ] || { log "usage: down.sh DIR"; exit 2; }
[ -d "$1" ] || { log "$1 is not a directory; nothing to stop"; exit 0; }
DIR="$(cd "$1" && pwd)"

ours() { # pid -> true when it is alive and was started for DIR
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$DIR"
}

# The API server before etcd, so it does not spend its last seconds retrying etcd.
for name in owner-watch kube-apiserver etcd; do
  f="$DIR/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  # The owner watch runs this script as its last act; it must not stop itself.
  if [ "$pid" = "$$" ] || ! ours "$pid"; then
    rm -f "$f"
    continue
  fi
  kill -TERM "$pid" 2>/dev/null
  # The scratch data is thrown away, so a short grace period is enough; the API server
  # would otherwise spend up to a minute draining watches.
  for _ in $(seq 1 25); do
    ours "$pid" || break
    sleep 0.2
  done
  if ours "$pid"; then
    log "$name (pid $pid) did not stop within 5s; killing it"
    kill -KILL "$pid" 2>/dev/null
  fi
  log "stopped $name (pid $pid)"
  rm -f "$f"
done
