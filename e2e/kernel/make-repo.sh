#!/usr/bin/env bash
# Builds the signed repository the kernel e2e guest applies from, with kpersist-repo:
#   version 1  kpersist_v1            version 3  kpersist_fail (cannot be enabled)
#   version 2  kpersist_v2            version 4  kpersist_stall_patch
#   version 5  kpersist_badvermagic   (module claims another kernel release)
#   version 6  kpersist_stack         (built without .replace: stacks, NotCumulative)
# `kpersist-repo add` rightly refuses a module whose vermagic names another release, so
# version 5 is written into index.json directly, the way a publisher who bypassed the
# tool would, and only then is the index signed: the agent must refuse it on its own.
# Version 6 is a livepatch like any other to the tool (nothing in its modinfo says it
# would stack): only the kernel shows it, after the load. foreign_patch is in no release:
# it is another tool's.
#
# usage: make-repo.sh KPERSIST_REPO MODULES_DIR WORK_DIR KERNEL_RELEASE BUILD_ID
# writes WORK_DIR/repo (signed) and WORK_DIR/repo.pub.
set -euo pipefail
[ $# -eq 5 ] || { echo "usage: $0 KPERSIST_REPO MODULES_DIR WORK_DIR KERNEL_RELEASE BUILD_ID" >&2; exit 2; }
tool=$1 mods=$2 work=$3 release=$4 build_id=$5
repo=$work/repo keys=$work/keys

rm -rf "$repo" "$keys"
"$tool" keygen --out-dir "$keys"
"$tool" init --repo "$repo"
add() {
	"$tool" add "$mods/$2.ko" --repo "$repo" --kernel-release "$release" \
		--build-id "$build_id" --version "$1" --cve "CVE-2026-1000$1" --channel stable
}
add 1 kpersist_v1
add 2 kpersist_v2
add 3 kpersist_fail
add 4 kpersist_stall_patch

bad=$mods/kpersist_badvermagic.ko
sha=$(sha256sum "$bad" | cut -d' ' -f1)
cp "$bad" "$repo/modules/$sha.ko"
python3 - "$repo/index.json" "$sha" "$(stat -c %s "$bad")" <<'PY'
import json, sys
path, sha, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path) as f:
    index = json.load(f)
release = dict(index["releases"][0])
release.update(version=5, module=f"modules/{sha}.ko", sha256=sha, size=size,
               moduleName="kpersist_badvermagic", cves=["CVE-2026-10005"])
index["releases"].append(release)
with open(path, "w") as f:
    json.dump(index, f, indent=2)
    f.write("\n")
PY
add 6 kpersist_stack

"$tool" sign --repo "$repo" --key "$keys/kpersist.key"
cp "$keys/kpersist.pub" "$work/repo.pub"
"$tool" verify --repo "$repo" --pubkey "$work/repo.pub"
