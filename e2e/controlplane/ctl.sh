#!/usr/bin/env bash
# Stops or starts one process of a control plane started by up.sh, keeping its data
# directory, ports and certificates: how the fault matrix restarts the API server and
# takes etcd away for a few seconds.
#
# Usage: e2e/controlplane/ctl.sh DIR stop|kill|start etcd|kube-apiserver
#   stop   SIGTERM, then SIGKILL after 10 s
#   kill   SIGKILL, as a crash would
#   start  start it again with the command line up.sh recorded (NAME.cmd) and wait until
#          it answers (etcd /health, the API server's /readyz)
set -euo pipefail

log() { printf '[controlplane/ctl] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage="usage: ctl.sh DIR stop|kill|start etcd|kube-apiserver"

[ $# -eq 3 ] || die "$usage"
[ -d "$1" ] || die "$1 is not a directory; start a control plane there with up.sh first"
DIR="$(cd "$1" && pwd)"
ACTION="$2"
NAME="$3"
case "$NAME" in etcd|kube-apiserver) ;; *) die "unknown process '$NAME'; $usage" ;; esac
PID_FILE="$DIR/$NAME.pid"
CMD_FILE="$DIR/$NAME.cmd"
LOG_FILE="$DIR/$NAME.log"

ours() { # pid -> true when it is alive and was started for DIR (as in down.sh)
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$DIR"
}

env_value() { # KEY -> its value in controlplane.env
  sed -n "s/^$1=//p" "$DIR/controlplane.env"
}

ready() {
  case "$NAME" in
    etcd) curl -fsS "$(env_value ETCD)/health" ;;
    kube-apiserver)
      local token
      token=$(sed -n 's/^\([^,]*\),admin,.*/\1/p' "$DIR/pki/tokens.csv")
      curl -fsS --cacert "$DIR/pki/ca.crt" -H "Authorization: Bearer $token" \
        "$(env_value SERVER)/readyz"
      ;;
  esac
}

case "$ACTION" in
  stop|kill)
    [ -f "$PID_FILE" ] || die "$NAME is not running in $DIR (no $NAME.pid)"
    pid=$(cat "$PID_FILE")
    ours "$pid" || die "$NAME (pid $pid) is not running in $DIR"
    if [ "$ACTION" = kill ]; then kill -KILL "$pid"; else kill -TERM "$pid"; fi
    for _ in $(seq 1 50); do
      ours "$pid" || break
      sleep 0.2
    done
    if ours "$pid"; then
      log "$NAME (pid $pid) did not stop within 10s; killing it"
      kill -KILL "$pid"
      sleep 0.2
    fi
    rm -f "$PID_FILE"
    log "$ACTION $NAME (pid $pid): done"
    ;;
  start)
    [ -f "$CMD_FILE" ] || die "no $NAME.cmd in $DIR; start the control plane with this up.sh"
    if [ -f "$PID_FILE" ] && ours "$(cat "$PID_FILE")"; then
      die "$NAME already runs in $DIR (pid $(cat "$PID_FILE"))"
    fi
    # NAME.cmd holds the words up.sh started it with, each quoted by printf %q.
    eval "setsid $(cat "$CMD_FILE") >>\"\$LOG_FILE\" 2>&1 </dev/null &"
    echo $! >"$PID_FILE"
    t0=$SECONDS
    until ready >/dev/null 2>&1; do
      kill -0 "$(cat "$PID_FILE")" 2>/dev/null || die "$NAME exited during start; last lines of $LOG_FILE:
$(tail -n 20 "$LOG_FILE")"
      [ $(( SECONDS - t0 )) -lt 120 ] || die "$NAME not ready after 120s; see $LOG_FILE"
      sleep 0.2
    done
    log "$NAME started again (pid $(cat "$PID_FILE")), ready after $(( SECONDS - t0 ))s"
    ;;
  *) die "unknown action '$ACTION'; $usage" ;;
esac
