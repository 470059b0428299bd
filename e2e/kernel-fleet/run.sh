#!/usr/bin/env bash
# The real-kernel fleet: the operator rolls real livepatch modules out through the API
# server to kpersist-agent in node mode on qemu VMs (TCG) running Debian's kernels of two
# lines (6.1 and 6.12). This script prepares what the VMs boot (kernels, their driver
# modules, the livepatch modules built against each kernel's headers, one shared
# initramfs with the static agent) and runs the harness, `cargo test -p kpersist-e2e
# --test kernel_fleet`, which starts the control plane, the repository, the operator and
# the VMs, and drives every scenario. Every step prints
# "KERNEL-FLEET-E2E: <step>: ok|FAIL <why>"; the last line is "KERNEL-FLEET-E2E: PASS" or
# "KERNEL-FLEET-E2E: FAIL" and the exit status matches.
#
# Cached under ${KPERSIST_CACHE:-/var/cache/kpersist}: kernel images and packages, driver
# modules, livepatch modules (kernel/), the static agent (target-static/).
#
# Environment: KPERSIST_CACHE; KPERSIST_KERNEL_61 and KPERSIST_KERNEL_612 pick the kernel
# releases (default: the newest 6.1.0-N-amd64 and 6.12.N+deb12-amd64 in apt).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/e2e/kernel-fleet
CACHE=${KPERSIST_CACHE:-/var/cache/kpersist}
KCACHE=$CACHE/kernel
START=$SECONDS

# shellcheck source=e2e/kernel/lib.sh
. "$ROOT/e2e/kernel/lib.sh"
suite_frame KERNEL-FLEET-E2E kernel-fleet
[ "$(id -u)" = 0 ] || fatal packages "run as root: it installs Debian packages and creates device nodes"

# --- kernels --------------------------------------------------------------------------------
say "choosing the kernels"
kernel_pick_or_update K61 6.1.0- '6\.1\.0-[0-9]+-amd64' "${KPERSIST_KERNEL_61:-}"
kernel_pick_or_update K612 6.12. '6\.12\.[0-9]+\+deb[0-9]+-amd64' "${KPERSIST_KERNEL_612:-}"
install_missing "$K61" "$K612"
ok packages "kernels $K61 and $K612, qemu, busybox-static, headers"

# The drivers a VM loads (virtio PCI, network and block, ext4), decompressed, with the order
# to insmod them in, from the kernel's own package.
guest_drivers() {
	local var=$1 rel=$2 image=$3 dir tree module line
	dir=$image/drivers
	if [ ! -f "$dir/order" ]; then
		say "extracting the virtio and ext4 drivers of $rel"
		rm -rf "$dir" "$WORK/tree"
		mkdir -p "$dir" "$WORK/tree"
		dpkg-deb --fsys-tarfile "$image/image.deb" | tar -x -C "$WORK/tree" ./lib/modules
		depmod -b "$WORK/tree" "$rel"
		for module in virtio_pci virtio_net virtio_blk ext4; do
			modprobe -d "$WORK/tree" -S "$rel" --show-depends "$module" |
				sed -n 's/^insmod \([^ ]*\).*/\1/p'
		done | awk '!seen[$0]++' >"$WORK/drivers.list"
		: >"$dir/order.part"
		while read -r line; do
			module=$(basename "$line")
			case "$module" in
			*.xz) module=${module%.xz} && xz -dc "$line" >"$dir/$module" ;;
			*.zst) module=${module%.zst} && zstd -dcq "$line" >"$dir/$module" ;;
			*) cp "$line" "$dir/$module" ;;
			esac || fatal drivers "cannot unpack $line"
			echo "$module" >>"$dir/order.part"
		done <"$WORK/drivers.list"
		mv "$dir/order.part" "$dir/order"
		rm -rf "$WORK/tree"
	fi
	printf -v "$var" '%s' "$dir"
}

ENV_FILE=$WORK/kernels.env
: >"$ENV_FILE"
R=$WORK/root
busybox_root "$R"
for line in 61 612; do
	if [ "$line" = 61 ]; then rel=$K61; else rel=$K612; fi
	kernel_image image "$rel"
	livepatch_modules mods "$rel"
	guest_drivers drivers "$rel" "$image"
	mkdir -p "$R/e2e/drivers/$rel" "$R/e2e/modules/$rel"
	cp "$drivers"/* "$R/e2e/drivers/$rel/"
	cp "$mods"/*.ko "$R/e2e/modules/$rel/"
	{
		echo "KPERSIST_KERNEL_FLEET_${line}_RELEASE=$rel"
		echo "KPERSIST_KERNEL_FLEET_${line}_BUILD_ID=$(cat "$image/build-id")"
		echo "KPERSIST_KERNEL_FLEET_${line}_VMLINUZ=$image/vmlinuz"
		echo "KPERSIST_KERNEL_FLEET_${line}_MODULES=$mods"
	} >>"$ENV_FILE"
	ok "kernel-$line" "$rel, build id $(cat "$image/build-id"), $(wc -l <"$drivers/order") drivers"
done

# --- agent and initramfs --------------------------------------------------------------------
say "building static kpersist-agent (cargo output follows; the first build takes minutes)"
static_build -p kpersist-agent --bin kpersist-agent ||
	fatal agent "cargo build of kpersist-agent failed (output above)"
strip -o "$R/bin/kpersist-agent" "$STATIC_BIN/kpersist-agent"
cp "$HERE/guest-init.sh" "$R/init"
chmod 0755 "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet) >"$WORK/initramfs.cpio"
echo "KPERSIST_KERNEL_FLEET_INITRAMFS=$WORK/initramfs.cpio" >>"$ENV_FILE"
ok initramfs "$(du -h "$WORK/initramfs.cpio" | cut -f1), shared by every VM"

# --- the harness ----------------------------------------------------------------------------
say "running the harness (cargo test -p kpersist-e2e --test kernel_fleet)"
set -a
# shellcheck source=/dev/null
. "$ENV_FILE"
set +a
cd "$ROOT"
cargo clippy -p kpersist-e2e --test kernel_fleet -- -D warnings ||
	fatal harness "clippy refused the harness (output above)"
if cargo test -p kpersist-e2e --test kernel_fleet -- --nocapture --test-threads 1 2>&1 |
	tee "$WORK/harness.log" | grep --line-buffered -E '^(KERNEL-FLEET-E2E|kernel-fleet)'; then
	:
fi
# The one test ran (not filtered out) and every step of it said ok.
STEPS=$(grep -c 'report(' "$ROOT/e2e/tests/kernel_fleet/main.rs")
if grep -q '^test result: ok. 1 passed' "$WORK/harness.log" &&
	[ "$(grep -c '^KERNEL-FLEET-E2E: [a-z0-9-]*: ok' "$WORK/harness.log")" = "$STEPS" ]; then
	VERDICT=PASS
	say "wall time $((SECONDS - START)) s"
	echo "KERNEL-FLEET-E2E: PASS"
else
	tail -n 40 "$WORK/harness.log" | sed 's/^/    | /'
	VERDICT=FAIL
	echo "KERNEL-FLEET-E2E: FAIL"
	exit 1
fi
