# Shared by the real-kernel suites (e2e/kernel/run.sh, e2e/kernel-fleet/run.sh): their
# frame (verdict lines, scratch directory, traps), Debian's kernel images and headers from
# apt, the livepatch modules built against them, and the static agent. Everything slow is
# cached under $KCACHE (kernel images by release and package version, modules by source
# hash) and $CACHE/target-static.
#
# The caller sets ROOT (checkout), CACHE, KCACHE and START ($SECONDS at its start), then
# calls suite_frame.

# Starts a suite whose verdict lines begin with $1 (e.g. KERNEL-E2E) and whose progress
# lines with $2: say, ok and fatal print them, $WORK is a fresh scratch directory, and a
# run that stops anywhere else (a failed command under set -e, a signal) still ends with
# the FAIL line. A `stop_vms` function the caller defines runs first.
suite_frame() {
	SUITE=$1 SUITE_LOG=$2
	VERDICT= ERR_LINE=
	# Failures inside functions (most steps) report their line too.
	set -o errtrace
	mkdir -p "$KCACHE"
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/kpersist-$SUITE_LOG.XXXXXX")
	trap suite_cleanup EXIT
	trap 'ERR_LINE="${BASH_SOURCE[0]##*/}:$LINENO"' ERR
	trap 'exit 130' INT TERM
}
say() { printf '%s: [%3ds] %s\n' "$SUITE_LOG" $((SECONDS - START)) "$*"; }
ok() { echo "$SUITE: $1: ok${2:+ ($2)}"; }
# A host step failed: nothing after it can run.
fatal() {
	echo "$SUITE: $1: FAIL $2"
	VERDICT=FAIL
	echo "$SUITE: FAIL"
	exit 1
}
suite_cleanup() {
	local rc=$?
	if declare -F stop_vms >/dev/null; then stop_vms; fi
	rm -rf "$WORK"
	if [ -z "$VERDICT" ]; then
		echo "$SUITE: run.sh: FAIL stopped unexpectedly (status $rc${ERR_LINE:+, at line $ERR_LINE})"
		echo "$SUITE: FAIL"
		[ "$rc" != 0 ] || rc=1
	fi
	exit "$rc"
}

# The newest kernel release matching the extended regex $2 (e.g. `6\.1\.0-[0-9]+-amd64`),
# among the linux-headers-$1* packages, whose headers and image are both in apt's lists;
# or $3 when given.
kernel_pick() {
	local prefix=$1 pattern=$2 wanted=${3:-} rel
	if [ -n "$wanted" ]; then
		echo "$wanted"
		return
	fi
	for rel in $(apt-cache pkgnames "linux-headers-$prefix" | sed 's/^linux-headers-//' |
		grep -E "^$pattern\$" | sort -V -r); do
		if apt-cache show --no-all-versions "linux-image-$rel" >/dev/null 2>&1; then
			echo "$rel"
			return
		fi
	done
}

# Sets variable $1 to kernel_pick of the rest, running apt-get update once when the lists
# have no such kernel. (Functions here set variables rather than print: a `fatal` inside
# a command substitution would only end the subshell.)
kernel_pick_or_update() {
	local var=$1 rel
	shift
	rel=$(kernel_pick "$@")
	if [ -z "$rel" ]; then
		say "no $1 kernel packages in apt's lists; running apt-get update"
		apt-get update >"$WORK/apt-update.log" 2>&1 || true
		rel=$(kernel_pick "$@")
	fi
	[ -n "$rel" ] || fatal packages "no linux-headers-$1* matching $2 with a matching linux-image in apt's lists (see apt-get update)"
	printf -v "$var" '%s' "$rel"
}

# Installs the packages the suites need that are missing, plus the headers of each kernel
# release given.
install_missing() {
	local want=() pkg rel
	command -v qemu-system-x86_64 >/dev/null || want+=(qemu-system-x86)
	dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || want+=(busybox-static)
	command -v cpio >/dev/null || want+=(cpio)
	command -v xz >/dev/null || want+=(xz-utils)
	command -v zstd >/dev/null || want+=(zstd)
	command -v readelf >/dev/null && command -v objcopy >/dev/null || want+=(binutils)
	command -v gcc >/dev/null || want+=(gcc)
	command -v make >/dev/null || want+=(make)
	command -v python3 >/dev/null || want+=(python3)
	command -v depmod >/dev/null || want+=(kmod)
	command -v mke2fs >/dev/null || want+=(e2fsprogs)
	for rel in "$@"; do
		[ -f "/usr/src/linux-headers-$rel/include/generated/utsrelease.h" ] || want+=("linux-headers-$rel")
	done
	[ ${#want[@]} -eq 0 ] && return 0
	say "installing ${want[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}" >"$WORK/apt.log" 2>&1; then
		say "apt-get install failed; updating package lists and retrying"
		apt-get update >>"$WORK/apt.log" 2>&1 || true
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}" >>"$WORK/apt.log" 2>&1 ||
			fatal packages "apt-get install ${want[*]} failed: $(tail -n 3 "$WORK/apt.log" | tr '\n' ' ')"
	fi
	for pkg in "${want[@]}"; do say "installed $pkg"; done
}

# Downloads linux-image-$2 once and keeps, in a directory whose path goes to variable $1:
# vmlinuz, build-id (computed from vmlinuz) and the package itself (image.deb, for driver
# modules).
kernel_image() {
	local var=$1 rel=$2 ver dir
	ver=$(apt-cache show --no-all-versions "linux-image-$rel" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
	dir=$KCACHE/image-$rel-${ver:-unknown}
	if [ ! -s "$dir/vmlinuz" ] || [ ! -s "$dir/build-id" ] || [ ! -s "$dir/image.deb" ]; then
		say "downloading linux-image-$rel ${ver}"
		mkdir -p "$WORK/deb-$rel" "$dir"
		(cd "$WORK/deb-$rel" && apt-get download "linux-image-$rel" >"$WORK/download.log" 2>&1) ||
			fatal kernel-image "apt-get download linux-image-$rel failed: $(tail -n 2 "$WORK/download.log" | tr '\n' ' ')"
		mv "$WORK/deb-$rel"/linux-image-*.deb "$dir/image.deb"
		dpkg-deb --fsys-tarfile "$dir/image.deb" |
			tar -x -O "./boot/vmlinuz-$rel" >"$dir/vmlinuz.part"
		mv "$dir/vmlinuz.part" "$dir/vmlinuz"
		rm -rf "$WORK/deb-$rel"
		say "computing the build id of $rel from vmlinuz"
		"$ROOT/e2e/kernel/vmlinuz-build-id.sh" "$dir/vmlinuz" >"$dir/build-id.part" ||
			fatal build-id "cannot read the build id from $dir/vmlinuz"
		mv "$dir/build-id.part" "$dir/build-id"
	fi
	printf -v "$var" '%s' "$dir"
}

# Builds kmod/livepatch against the headers of release $2 once per source hash; sets
# variable $1 to the directory holding the .ko files.
livepatch_modules() {
	local var=$1 rel=$2 hash dir
	hash=$( (cd "$ROOT/kmod/livepatch" && cat Kbuild Makefile ./*.c; echo "$rel") | sha256sum | cut -c1-16)
	dir=$KCACHE/modules-$rel-$hash
	if [ ! -f "$dir/done" ]; then
		say "building the livepatch modules against /usr/src/linux-headers-$rel"
		rm -rf "$dir"
		make -C "$ROOT/kmod/livepatch" KDIR="/usr/src/linux-headers-$rel" BUILD="$dir/build" >"$WORK/kbuild-$rel.log" 2>&1 ||
			fatal modules "make -C kmod/livepatch for $rel failed: $(grep -m 3 -i 'error' "$WORK/kbuild-$rel.log" | tr '\n' ' ')"
		touch "$dir/done"
	fi
	printf -v "$var" '%s' "$dir/build"
}

# Static (glibc, crt-static) builds, so the binaries run in a bare initramfs; release
# without debug info keeps the initramfs small. The target dir is cached.
static_build() {
	(cd "$ROOT" && CARGO_TARGET_DIR="$CACHE/target-static" CARGO_PROFILE_RELEASE_DEBUG=false \
		RUSTFLAGS="-C target-feature=+crt-static" \
		cargo build --release --target x86_64-unknown-linux-gnu "$@")
}
STATIC_BIN=$CACHE/target-static/x86_64-unknown-linux-gnu/release

# A busybox root in $1: /bin with every applet, /dev/console and /dev/null.
busybox_root() {
	local r=$1 applet
	mkdir -p "$r/bin" "$r/dev" "$r/proc" "$r/sys" "$r/tmp"
	cp /bin/busybox "$r/bin/busybox"
	for applet in $("$r/bin/busybox" --list); do
		[ "$applet" = busybox ] || ln -s busybox "$r/bin/$applet"
	done
	mknod "$r/dev/console" c 5 1
	mknod "$r/dev/null" c 1 3
}
