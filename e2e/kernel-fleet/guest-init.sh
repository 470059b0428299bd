#!/bin/sh
# /init of a kernel-fleet VM (busybox sh): a Kubernetes node without a kubelet. It loads
# the drivers of the running kernel, brings up the network, mounts the persistent state
# disk, starts kpersist-agent in node mode (the DaemonSet's code path) and serves the
# harness's commands on the second serial port.
#
# Network: qemu user networking with restrict=on forwards only 10.0.2.100:<port> to the
# host's 127.0.0.1:<port>, for the API server and repository ports named on the kernel
# command line (kpersist.ports=). A relay (busybox nc) listens on 127.0.0.1:<port> in the
# guest and forwards to 10.0.2.100:<port>, so the agent uses the very URLs the host uses
# and the API server's certificate (IP:127.0.0.1) matches.
#
# The state disk (/dev/vda, ext4, made by the harness) holds config/node,
# config/kubeconfig and the agent's state directory kpersist/, mounted on
# /var/lib/kpersist. It outlives reboots and crashes of the VM.
#
# Commands on /dev/ttyS1, one per line, each followed by a tag the harness picks (`status
# #7`); every answer ends with "CTL: done <the line>":
#   status        CTL: lp <name> <enabled> <transition>, CTL: module <name> (kpersist's and
#                 the foreign one), CTL: cmdline <text>, CTL: agent up|down
#   kill-agent    SIGKILL the agent (the kernel keeps its patches)
#   start-agent   start it again
#   load-foreign  insmod the foreign (non-kpersist) livepatch
#   load-helper   insmod the stall helper, whose kthread holds a stall patch's transition
#   reboot        stop the agent cleanly, unmount, reboot
#   poweroff      the same, then power off (the harness boots it again, maybe on another
#                 kernel)
#   read-version  read /proc/version a second after answering: the crash release's
#                 patched version_proc_show panics there (panic=5 then reboots the VM)

export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo 1 >/proc/sys/kernel/printk
# Read before any livepatch can change what /proc/cmdline shows.
CMDLINE=$(cat /proc/cmdline)
arg() { for word in $CMDLINE; do case "$word" in "$1="*) echo "${word#*=}" ;; esac; done; }
KREL=$(uname -r)
console() { echo "KERNEL-FLEET-GUEST: $*" >/dev/console; }

while read -r module; do
	insmod "/e2e/drivers/$KREL/$module" 2>/dev/null || console "insmod $module failed"
done <"/e2e/drivers/$KREL/order"

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
for port in $(arg kpersist.ports | tr , ' '); do
	printf '#!/bin/sh\nexec nc 10.0.2.100 %s\n' "$port" >"/tmp/relay-$port"
	chmod 0755 "/tmp/relay-$port"
	nc -ll -p "$port" -e "/tmp/relay-$port" &
done

mkdir -p /persist /var/lib/kpersist
mount -t ext4 /dev/vda /persist || console "cannot mount the state disk"
mkdir -p /persist/kpersist
mount --bind /persist/kpersist /var/lib/kpersist
NODE=$(cat /persist/config/node)
console "node $NODE on $KREL"

AGENT_PID=
start_agent() {
	KUBECONFIG=/persist/config/kubeconfig KPERSIST_LOG_FORMAT=text RUST_LOG=info \
		/bin/kpersist-agent --node-name "$NODE" --state-dir /var/lib/kpersist \
		--metrics-addr 0.0.0.0:9102 >>/persist/agent.log 2>&1 &
	AGENT_PID=$!
}
start_agent

# Held open, raw and without echo: the harness reads only the answers.
exec 3<>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo
answer() { echo "CTL: $*" >&3; }
status() {
	for lp in /sys/kernel/livepatch/*; do
		[ -d "$lp" ] || continue
		answer "lp $(basename "$lp") $(cat "$lp/enabled") $(cat "$lp/transition")"
	done
	for module in /sys/module/kpersist_* /sys/module/foreign_patch; do
		[ -d "$module" ] && answer "module $(basename "$module")"
	done
	answer "cmdline $(cat /proc/cmdline)"
	if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then answer "agent up"; else answer "agent down"; fi
}

while read -r line <&3; do
	# shellcheck disable=SC2086 # split the line into the command and its tag
	set -- $line
	command=${1:-}
	case "$command" in
	status) status ;;
	kill-agent)
		kill -9 "$AGENT_PID" 2>/dev/null
		wait "$AGENT_PID" 2>/dev/null
		AGENT_PID=
		;;
	start-agent) start_agent ;;
	load-foreign) insmod "/e2e/modules/$KREL/foreign_patch.ko" || answer "error insmod failed" ;;
	load-helper) insmod "/e2e/modules/$KREL/kpersist_stall_helper.ko" || answer "error insmod failed" ;;
	reboot | poweroff)
		kill -TERM "$AGENT_PID" 2>/dev/null
		wait "$AGENT_PID" 2>/dev/null
		sync
		umount /var/lib/kpersist /persist
		answer "done $line"
		"$command" -f
		;;
	read-version)
		# Read a second later, so the answer has left the serial port before a panic.
		(sleep 1 && cat /proc/version >/dev/null) &
		;;
	"") continue ;;
	*) answer "error unknown command $command" ;;
	esac
	answer "done $line"
done
