#!/usr/bin/env bash
# Prints the GNU build id of the kernel inside an x86 bzImage (vmlinuz): the same value
# the running kernel shows in /sys/kernel/notes, which repository releases are keyed by.
# The payload location comes from the boot protocol header (setup_sects at 0x1f1,
# payload_offset at 0x248, payload_length at 0x24c); Debian compresses it with xz (6.1)
# or zstd (6.12).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 VMLINUZ" >&2; exit 2; }
image=$1
u() { od -An -t"u$2" -j "$1" -N "$2" "$image" | tr -d ' '; }
[ "$(od -An -c -j $((0x202)) -N 4 "$image" | tr -d ' ')" = HdrS ] ||
	{ echo "$image: not an x86 bzImage (no HdrS boot header)" >&2; exit 1; }
setup_sects=$(u $((0x1f1)) 1)
payload_offset=$(u $((0x248)) 4)
payload_length=$(u $((0x24c)) 4)
start=$(((setup_sects + 1) * 512 + payload_offset))
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
payload() { dd if="$image" iflag=skip_bytes,count_bytes skip="$start" count="$payload_length" bs=1M status=none; }
case "$(payload | od -An -tx1 -N 4 | tr -d ' ')" in
fd377a58) payload | xz -dc --single-stream >"$tmp" ;;
# The kernel appends the uncompressed size (4 bytes) after the zstd frame.
28b52ffd) payload_length=$((payload_length - 4)) && payload | zstd -dcq >"$tmp" ;;
*) false ;;
esac ||
	{ echo "$image: payload at $start is neither xz nor zstd, which Debian's kernels use" >&2; exit 1; }
id=$(readelf -n "$tmp" | sed -n 's/^ *Build ID: *\([0-9a-f]*\)$/\1/p' | head -n 1)
[ -n "$id" ] || { echo "$image: the kernel has no GNU build-id note" >&2; exit 1; }
echo "$id"
