#!/bin/sh
# /init of the kernel e2e guest (busybox sh). It drives kpersist-agent's one-shot local
# mode against the real kernel and prints one line per step on the serial console:
#   KERNEL-E2E: <step>: ok|FAIL <why>
# then "KERNEL-E2E-GUEST: done" and powers off. run.sh on the host reads the lines.
#
# /e2e/env (written by run.sh) sets:
#   EXPECT_RELEASE   the kernel release the repository was signed for
#   EXPECT_BUILD_ID  the kernel build id computed on the host from vmlinuz
#   V_V1 V_V2 V_BAD V_FAIL V_STALL V_STACK  repository versions of the test modules

export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# devtmpfs provides /dev/kmsg, which the agent reads, as on any real node.
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /var/lib/kpersist
# Keep kernel messages off the console so they cannot split a verdict line; the kernel's
# livepatch messages are printed from dmesg at the end instead.
echo 1 >/proc/sys/kernel/printk
# shellcheck source=/dev/null
. /e2e/env

REPO=/e2e/repo
PUBKEY=/e2e/repo.pub
STATE=/var/lib/kpersist
AGENT=/bin/kpersist-agent
LP=/sys/kernel/livepatch
OUT=/tmp/out

ok() { echo "KERNEL-E2E: $1: ok${2:+ ($2)}"; }
fail() { echo "KERNEL-E2E: $1: FAIL $2"; }
# Print the gist of the last command's output (its summary line, errors, warnings)
# indented, so a failure can be read in the serial log; run.sh relays these lines.
show() {
	{ grep -E '^state=|ERROR|WARN' "$OUT" || tail -n 5 "$OUT"; } |
		tail -n 8 | sed "s/$ESC\[[0-9;]*m//g; s/^/    | /"
}
ESC=$(printf '\033')

# apply VERSION [agent args...]: the agent's exit status; its output in $OUT.
apply() {
	v=$1
	shift
	"$AGENT" local apply --repo "$REPO" --pubkey "$PUBKEY" --state-dir "$STATE" \
		--version "$v" "$@" >"$OUT" 2>&1
	RC=$?
	return $RC
}

# revert [VERSION]: back to VERSION, or disable every kpersist patch without one.
revert() {
	"$AGENT" local revert --repo "$REPO" --pubkey "$PUBKEY" --state-dir "$STATE" \
		${1:+--version "$1"} >"$OUT" 2>&1
	RC=$?
	return $RC
}

# The agent's after_download_ms= line of the last run: from the module fetched and verified
# to Applied (load, transition done, health checks), printed as a figure for run.sh.
figure() {
	ms=$(sed -n 's/^after_download_ms=//p' "$OUT")
	echo "KERNEL-E2E-FIGURE: download end to Applied, $1: ${ms:-none} ms"
}

cmdline() { cat /proc/cmdline; }
loaded() { lsmod | awk '{print $1}' | grep -qx "$1"; }
# shellcheck disable=SC2012 # livepatch names are module names: no blanks or newlines
patches() { ls "$LP" | tr '\n' ' '; }
enabled() { [ "$(cat "$LP/$1/enabled" 2>/dev/null)" = 1 ]; }
# settled NAME: waits up to 10 s until livepatch NAME has no transition under way.
settled() {
	n=100
	while [ "$(cat "$LP/$1/transition" 2>/dev/null)" != 0 ] && [ $n -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
	[ "$(cat "$LP/$1/transition" 2>/dev/null)" = 0 ]
}

echo "KERNEL-E2E-GUEST: start"
ORIG_CMDLINE=$(cmdline)

# --- boot: the kernel under test and its livepatch interface ----------------------------
if [ "$(uname -r)" = "$EXPECT_RELEASE" ] && [ -d "$LP" ]; then
	ok boot "$(uname -r)"
else
	fail boot "release $(uname -r), expected $EXPECT_RELEASE; $LP present: $([ -d $LP ] && echo yes || echo no)"
fi

# The GNU build-id note of the running kernel: namesz 4, descsz 20, type 3, "GNU\0".
GUEST_BUILD_ID=$(od -An -v -tx1 /sys/kernel/notes | tr -d ' \n' |
	sed -n 's/.*040000001400000003000000474e5500\([0-9a-f]\{40\}\).*/\1/p')
if [ "$GUEST_BUILD_ID" = "$EXPECT_BUILD_ID" ]; then
	ok build-id "$GUEST_BUILD_ID"
else
	fail build-id "guest reports '$GUEST_BUILD_ID', host computed '$EXPECT_BUILD_ID'"
fi

# --- apply v1 ------------------------------------------------------------------------------
if ! apply "$V_V1"; then
	fail apply-v1 "apply exited $RC"; show
elif [ "$(cmdline)" != "kpersist v1" ] || [ ! -d "$LP/kpersist_v1" ]; then
	fail apply-v1 "/proc/cmdline '$(cmdline)', livepatches: $(patches)"; show
else
	ok apply-v1 "/proc/cmdline reads '$(cmdline)'"
	figure "first patch (v1)"
fi

# --- apply v2: atomic replace ---------------------------------------------------------------
if ! apply "$V_V2"; then
	fail apply-v2 "apply exited $RC"; show
elif [ "$(cmdline)" != "kpersist v2" ] || ! grep -q '^kpersist v2 ' /proc/version; then
	fail apply-v2 "/proc/cmdline '$(cmdline)', /proc/version '$(cat /proc/version)'"; show
elif [ -d "$LP/kpersist_v1" ]; then
	fail apply-v2 "v1's livepatch entry still present after atomic replace: $(patches)"
else
	ok apply-v2 "replaced v1 atomically; livepatches: $(patches)"
	figure "atomic replace (v2 over v1)"
fi

# --- status reads the applied release back from the kernel --------------------------------
if ! "$AGENT" local status --state-dir "$STATE" >"$OUT" 2>&1; then
	fail status "local status exited non-zero"; show
elif ! grep -q "^state=Applied release=$EXPECT_RELEASE/v$V_V2\b" "$OUT"; then
	fail status "expected state=Applied release=$EXPECT_RELEASE/v$V_V2"; show
else
	ok status "$(grep '^state=' "$OUT")"
fi

# --- revert to v1 ---------------------------------------------------------------------------
if ! revert "$V_V1"; then
	fail revert-v1 "revert exited $RC"; show
elif [ "$(cmdline)" != "kpersist v1" ] || [ -d "$LP/kpersist_v2" ] || grep -q kpersist /proc/version; then
	fail revert-v1 "/proc/cmdline '$(cmdline)', livepatches: $(patches)"; show
else
	ok revert-v1 "/proc/cmdline reads '$(cmdline)'"
fi

# --- disable every patch --------------------------------------------------------------------
if ! revert; then
	fail disable "revert exited $RC"; show
elif [ "$(cmdline)" != "$ORIG_CMDLINE" ] || [ -n "$(patches)" ]; then
	fail disable "/proc/cmdline '$(cmdline)', livepatches: $(patches)"; show
elif lsmod | grep -q '^kpersist_'; then
	fail disable "kpersist modules still loaded: $(lsmod | grep '^kpersist_' | awk '{print $1}')"
else
	ok disable "original /proc/cmdline back, no patch loaded"
fi

# --- a module built for another kernel release ---------------------------------------------
if apply "$V_BAD"; then
	fail bad-vermagic "apply of a module claiming another release succeeded"; show
elif ! grep -q 'reason=VermagicMismatch' "$OUT"; then
	fail bad-vermagic "refused, but not as VermagicMismatch"; show
elif loaded kpersist_badvermagic || [ -d "$LP/kpersist_badvermagic" ]; then
	fail bad-vermagic "refused, yet the module is loaded"
else
	ok bad-vermagic "$(grep -o 'reason=VermagicMismatch.*' "$OUT" | head -n 1)"
fi

# --- a patch the kernel refuses to enable ---------------------------------------------------
if apply "$V_FAIL"; then
	fail enable-fails "apply of a patch naming a missing symbol succeeded"; show
elif loaded kpersist_fail; then
	fail enable-fails "failed, yet kpersist_fail is loaded"
elif ! grep -q 'state=Failed' "$OUT"; then
	fail enable-fails "no state=Failed in the agent's summary"; show
elif ! grep -qi 'invalid argument\|EINVAL\|errno 22\|os error 22' "$OUT"; then
	fail enable-fails "the kernel's error (EINVAL) is not in the report"; show
else
	ok enable-fails "$(grep -o 'reason=[A-Za-z]*.*' "$OUT" | head -n 1)"
fi

# --- a transition that cannot finish --------------------------------------------------------
# The helper's kthread sleeps inside kpersist_stall_target(), which the patch replaces.
HELPER=/sys/module/kpersist_stall_helper/parameters
insmod /e2e/modules/kpersist_stall_helper.ko
n=50
while [ "$(cat $HELPER/inside 2>/dev/null)" != Y ] && [ $n -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
if [ "$(cat $HELPER/inside 2>/dev/null)" != Y ]; then
	fail stall-reversed "the helper's kthread never entered kpersist_stall_target()"
elif apply "$V_STALL" --transition-timeout 5s; then
	fail stall-reversed "apply succeeded while the helper held the transition open"; show
elif ! grep -q 'reason=TransitionStalled' "$OUT"; then
	fail stall-reversed "failed, but not as TransitionStalled"; show
elif [ -d "$LP/kpersist_stall_patch" ] || loaded kpersist_stall_patch; then
	fail stall-reversed "the stalled patch is still registered or loaded: $(patches)"
else
	ok stall-reversed "$(grep -o 'reason=TransitionStalled.*' "$OUT" | head -n 1)"
fi

# Apply again, and let the helper go while the transition waits.
apply "$V_STALL" --transition-timeout 60s &
APPLY_PID=$!
n=100
while [ ! -e "$LP/kpersist_stall_patch/transition" ] && [ $n -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
STALLED=$(cat "$LP/kpersist_stall_patch/transition" 2>/dev/null)
sleep 2
STILL=$(cat "$LP/kpersist_stall_patch/transition" 2>/dev/null)
echo 1 >$HELPER/release
if ! wait $APPLY_PID; then
	fail stall-applied "apply after the helper let go exited non-zero"; show
elif [ "$STALLED" != 1 ] || [ "$STILL" != 1 ]; then
	fail stall-applied "the transition was not held open before release (transition: '$STALLED' then '$STILL')"
elif [ "$(cat "$LP/kpersist_stall_patch/transition")" != 0 ] || [ "$(cat "$LP/kpersist_stall_patch/enabled")" != 1 ]; then
	fail stall-applied "patch not fully applied: $(patches)"
else
	ok stall-applied "transition held open 2 s, completed after release"
fi
revert >/dev/null 2>&1
rmmod kpersist_stall_helper

# --- a module built without atomic replace -------------------------------------------------
# v1 is live; kpersist_stack (.replace = false) stacks on it. 6.1 shows no replace flag in
# sysfs, so the agent sees v1 still enabled after the transition, takes the new patch back
# out (disable, unload) and fails the apply: v1 stays live, as it was.
if ! apply "$V_V1"; then
	fail not-cumulative "applying v1 first exited $RC"; show
elif apply "$V_STACK"; then
	fail not-cumulative "apply of a module built without .replace succeeded: $(patches)"; show
elif ! grep -q 'reason=NotCumulative' "$OUT"; then
	fail not-cumulative "refused, but not as NotCumulative"; show
elif [ -d "$LP/kpersist_stack" ] || loaded kpersist_stack; then
	fail not-cumulative "kpersist_stack still registered or loaded: $(patches)"; show
elif ! enabled kpersist_v1 || [ "$(cmdline)" != "kpersist v1" ]; then
	fail not-cumulative "v1 not live after the undo: /proc/cmdline '$(cmdline)', livepatches: $(patches)"; show
elif ! "$AGENT" local status --state-dir "$STATE" >"$OUT" 2>&1 ||
	! grep -q "^state=Applied release=$EXPECT_RELEASE/v$V_V1\b" "$OUT"; then
	fail not-cumulative "undone, but local status does not read v1 back as applied"; show
else
	ok not-cumulative "stacked on kpersist_v1, undone; v1 still live"
fi

# --- another tool's livepatch ---------------------------------------------------------------
# foreign_patch, in no kpersist repository, is loaded by hand beside v1 (.replace = false),
# as a vendor's livepatch service would. v2's atomic replace would disable it, so the agent
# must refuse before loading anything.
insmod /e2e/modules/foreign_patch.ko
if ! enabled foreign_patch || ! settled foreign_patch || ! grep -q '^foreign_patch' /proc/loadavg; then
	fail foreign-refused "foreign_patch did not go live beside v1: $(patches); /proc/loadavg '$(cat /proc/loadavg)'"
elif apply "$V_V2"; then
	fail foreign-refused "apply of v2 over another tool's livepatch succeeded: $(patches)"; show
elif ! grep -q 'reason=ForeignLivepatch' "$OUT"; then
	fail foreign-refused "refused, but not as ForeignLivepatch"; show
elif ! grep 'reason=ForeignLivepatch' "$OUT" | grep -q foreign_patch; then
	fail foreign-refused "ForeignLivepatch does not name foreign_patch"; show
elif [ -d "$LP/kpersist_v2" ] || loaded kpersist_v2; then
	fail foreign-refused "refused, yet kpersist_v2 is loaded: $(patches)"
elif ! enabled foreign_patch || ! grep -q '^foreign_patch' /proc/loadavg; then
	fail foreign-refused "foreign_patch no longer live: $(patches)"
elif ! enabled kpersist_v1 || [ "$(cmdline)" != "kpersist v1" ]; then
	fail foreign-refused "v1 no longer live: /proc/cmdline '$(cmdline)', livepatches: $(patches)"
else
	ok foreign-refused "nothing loaded; foreign_patch and kpersist_v1 still live"
fi
# Take the other tool's patch out by hand, then every kpersist patch.
echo 0 >"$LP/foreign_patch/enabled" 2>/dev/null
n=100
while [ -d "$LP/foreign_patch" ] && [ $n -gt 0 ]; do sleep 0.1; n=$((n - 1)); done
n=20
until rmmod foreign_patch 2>/dev/null || [ $n -eq 0 ]; do sleep 0.1; n=$((n - 1)); done
revert >/dev/null 2>&1

# --- a crash marker from an earlier boot ----------------------------------------------------
# A marker the agent would have left had this node gone down while loading v2 on an
# earlier boot: only bootId and release.id are needed (node-agent/src/state.rs).
printf '{"bootId": "00000000-0000-4000-8000-000000000000", "release": {"id": "%s/v%s"}}\n' \
	"$EXPECT_RELEASE" "$V_V2" >"$STATE/apply-in-progress.json"
if apply "$V_V2"; then
	fail crash-suspected "apply succeeded despite a crash marker from another boot"; show
elif ! grep -q CrashSuspected "$OUT"; then
	fail crash-suspected "refused, but CrashSuspected is not reported"; show
elif [ -d "$LP/kpersist_v2" ] || loaded kpersist_v2; then
	fail crash-suspected "reported, yet kpersist_v2 is loaded"
elif apply "$V_V2"; then
	fail crash-suspected "the suspected release was applied on the next attempt"; show
elif [ -d "$LP/kpersist_v2" ] || loaded kpersist_v2; then
	fail crash-suspected "kpersist_v2 loaded on the next attempt"
else
	ok crash-suspected "$(grep -o 'state=[A-Za-z]*.*CrashSuspected.*' "$OUT" | head -n 1); still refused on retry"
fi

if dmesg | grep -q -E 'Oops|BUG:|Kernel panic|WARNING:'; then
	fail kernel-log "$(dmesg | grep -E 'Oops|BUG:|Kernel panic|WARNING:' | head -n 3)"
else
	ok kernel-log "no oops, BUG or WARNING"
fi

dmesg | grep -E 'livepatch|kpersist' | sed 's/^/    dmesg| /'
echo "KERNEL-E2E-GUEST: done"
poweroff -f
