#!/usr/bin/env bash
# Real-kernel end-to-end suite: boots Debian's 6.1 kernel in qemu (TCG, no network) and
# drives kpersist-agent's one-shot local mode through apply, atomic replace, revert,
# disable, refusals, a stalled transition, a module that would stack, another tool's
# livepatch and a crash marker, against the real livepatch interface. Every step prints
# "KERNEL-E2E: <step>: ok|FAIL <why>"; the last line is "KERNEL-E2E: PASS" or
# "KERNEL-E2E: FAIL" and the exit status matches.
#
# Slow things are cached under ${KPERSIST_CACHE:-/var/cache/kpersist}/kernel (kernel image
# by release and package version, modules by source hash) and target-static (the static
# agent build), so a second run only repacks the initramfs and boots.
#
# Environment: KPERSIST_CACHE, KPERSIST_KERNEL_RELEASE (e.g. 6.1.0-56-amd64; default: the
# newest 6.1.0-N-amd64 with both headers and image in apt), KPERSIST_VM_TIMEOUT (seconds,
# default 300).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/e2e/kernel
CACHE=${KPERSIST_CACHE:-/var/cache/kpersist}
KCACHE=$CACHE/kernel
VM_TIMEOUT=${KPERSIST_VM_TIMEOUT:-300}
START=$SECONDS

# Repository versions of the test modules; the guest maps them back the same way.
V_V1=1 V_V2=2 V_FAIL=3 V_STALL=4 V_BAD=5 V_STACK=6
GUEST_STEPS="boot build-id apply-v1 apply-v2 status revert-v1 disable bad-vermagic enable-fails
stall-reversed stall-applied not-cumulative foreign-refused crash-suspected kernel-log"

# shellcheck source=e2e/kernel/lib.sh
. "$HERE/lib.sh"
suite_frame KERNEL-E2E kernel-e2e
QEMU_PID=
stop_vms() { if [ -n "$QEMU_PID" ]; then kill "$QEMU_PID" 2>/dev/null || true; fi; }

# --- packages -------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fatal packages "run as root: it installs Debian packages and creates device nodes"

say "choosing the kernel"
kernel_pick_or_update KREL 6.1.0- '6\.1\.0-[0-9]+-amd64' "${KPERSIST_KERNEL_RELEASE:-}"
install_missing "$KREL"
KDIR=/usr/src/linux-headers-$KREL
ok packages "kernel $KREL, qemu, busybox-static, cpio, headers"

# --- kernel image and build id --------------------------------------------------------------
kernel_image IMAGE_DIR "$KREL"
VMLINUZ=$IMAGE_DIR/vmlinuz
BUILD_ID=$(cat "$IMAGE_DIR/build-id")
ok kernel-image "$VMLINUZ, build id $BUILD_ID"

# --- livepatch modules ----------------------------------------------------------------------
livepatch_modules MODS "$KREL"
ok modules "$MODS"

# --- static agent and repository tool -------------------------------------------------------
BIN=$STATIC_BIN
AGENT=$BIN/kpersist-agent
REPO_TOOL=$BIN/kpersist-repo
say "building kpersist-repo (cargo output follows)"
static_build -p kpersist-kmod --bin kpersist-repo ||
	fatal repo-tool "cargo build of kpersist-repo failed (output above)"
ok repo-tool "$REPO_TOOL"
say "building static kpersist-agent (cargo output follows; the first build takes minutes)"
static_build -p kpersist-agent --bin kpersist-agent ||
	fatal agent "cargo build of kpersist-agent failed (output above)"
case "$("$AGENT" local --help 2>&1 || true)" in
*apply*) ok agent "$AGENT (static)" ;;
*) fatal agent "$AGENT has no 'local apply' subcommand (kpersist-agent local --help)" ;;
esac

# --- signed repository ----------------------------------------------------------------------
say "creating and signing the repository"
"$HERE/make-repo.sh" "$REPO_TOOL" "$MODS" "$WORK" "$KREL" "$BUILD_ID" >"$WORK/repo.log" 2>&1 ||
	fatal repository "$(tail -n 5 "$WORK/repo.log" | tr '\n' ' ')"
ok repository "signed with a fresh key, verified with kpersist-repo verify"

# --- initramfs ------------------------------------------------------------------------------
say "packing the initramfs"
R=$WORK/root
busybox_root "$R"
mkdir -p "$R/e2e/modules"
strip -o "$R/bin/kpersist-agent" "$AGENT"
cp "$MODS"/*.ko "$R/e2e/modules/"
cp -r "$WORK/repo" "$R/e2e/repo"
cp "$WORK/repo.pub" "$R/e2e/repo.pub"
cp "$HERE/guest-init.sh" "$R/init"
chmod 0755 "$R/init"
cat >"$R/e2e/env" <<EOF
EXPECT_RELEASE=$KREL
EXPECT_BUILD_ID=$BUILD_ID
V_V1=$V_V1 V_V2=$V_V2 V_BAD=$V_BAD V_FAIL=$V_FAIL V_STALL=$V_STALL V_STACK=$V_STACK
EOF
(cd "$R" && find . | cpio -o -H newc --quiet) >"$WORK/initramfs.cpio"
ok initramfs "$(du -h "$WORK/initramfs.cpio" | cut -f1)"

# --- boot -----------------------------------------------------------------------------------
SERIAL=$WORK/serial.log
: >"$SERIAL"
say "booting $KREL under qemu TCG (limit ${VM_TIMEOUT}s); guest verdicts follow"
timeout -k 5 "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 512 -nic none \
	-no-reboot -nographic -monitor none -display none -kernel "$VMLINUZ" \
	-initrd "$WORK/initramfs.cpio" -append "console=ttyS0 panic=-1 quiet" \
	-serial "file:$SERIAL" </dev/null >"$WORK/qemu.log" 2>&1 &
QEMU_PID=$!
# Relay the guest's verdict lines as they arrive.
tail -n +1 -F --pid="$QEMU_PID" "$SERIAL" 2>/dev/null | sed -u 's/\r//g' |
	grep --line-buffered -o -E 'KERNEL-E2E: .*|^    (dmesg)?[|] .*' &
RELAY_PID=$!
set +e
wait "$QEMU_PID"
QEMU_RC=$?
set -e
QEMU_PID=
wait "$RELAY_PID" 2>/dev/null || true
cp "$SERIAL" "$KCACHE/last-serial.log"
# Without carriage returns and terminal escapes (SeaBIOS clears the screen), ending in a
# newline, so its tail prints cleanly.
{ tr -d '\r' <"$SERIAL" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g'; echo; } >"$WORK/serial.txt"

FAILED=0
if [ "$QEMU_RC" = 124 ] || [ "$QEMU_RC" = 137 ]; then
	echo "KERNEL-E2E: vm: FAIL did not finish within ${VM_TIMEOUT}s and was killed; last serial lines:"
	tail -n 40 "$WORK/serial.txt" | sed 's/^/    | /'
	FAILED=1
elif [ "$QEMU_RC" != 0 ]; then
	echo "KERNEL-E2E: vm: FAIL qemu exited $QEMU_RC: $(tail -n 3 "$WORK/qemu.log" | tr '\n' ' ')"
	FAILED=1
elif ! grep -q 'KERNEL-E2E-GUEST: done' "$WORK/serial.txt"; then
	echo "KERNEL-E2E: vm: FAIL the guest stopped before its last step; last serial lines:"
	tail -n 40 "$WORK/serial.txt" | sed 's/^/    | /'
	FAILED=1
else
	ok vm "guest finished"
fi

for step in $GUEST_STEPS; do
	line=$(grep -o "KERNEL-E2E: $step: .*" "$WORK/serial.txt" | head -n 1 || true)
	case "$line" in
	"KERNEL-E2E: $step: ok"*) ;;
	"") echo "KERNEL-E2E: $step: FAIL no verdict from the guest"; FAILED=1 ;;
	*) FAILED=1 ;;
	esac
done

# Figures the guest measured (the agent's own clock, inside the TCG guest).
grep -o 'KERNEL-E2E-FIGURE: .*' "$WORK/serial.txt" | sed 's/^KERNEL-E2E-FIGURE: /kernel-e2e: figure: /' || true
say "serial log kept at $KCACHE/last-serial.log"
if [ "$FAILED" = 0 ]; then
	VERDICT=PASS
	echo "KERNEL-E2E: PASS"
else
	VERDICT=FAIL
	echo "KERNEL-E2E: FAIL"
	exit 1
fi
