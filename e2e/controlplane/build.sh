#!/usr/bin/env bash
# Builds the control planes that the end-to-end tests and the sandbox run on — etcd,
# kube-apiserver and kube-controller-manager, from the Go modules pinned beside this script —
# into the cache directory, and only what is missing there. Nothing can be downloaded as a
# release binary on the project's machines, so they are built, as envtest would download them.
# Usage: build.sh [CACHE_DIR]   (default: .tools/controlplane in the repository)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-$here/../../.tools/controlplane}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

command -v go >/dev/null 2>&1 || { echo "!! go is not installed: the control plane is built from Go modules" >&2; exit 1; }

# module_version DIR MODULE: the version of MODULE that DIR's go.mod pins.
module_version() {
  (cd "$1" && go list -m -f '{{.Version}}' "$2")
}

# build DIR OUT_DIR LDFLAGS PACKAGE…: builds each PACKAGE whose binary is missing from OUT_DIR.
build() {
  local dir=$1 out=$2 ldflags=$3; shift 3
  local package name started
  for package in "$@"; do
    name=${package##*/}
    [ "$package" = . ] && name=etcd
    if [ -x "$out/$name" ]; then
      continue
    fi
    mkdir -p "$out"
    started=$SECONDS
    echo "==> building $name into $out (the first build takes several minutes)"
    (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/$name.partial" "$package")
    mv "$out/$name.partial" "$out/$name"
    echo "==> built $name in $((SECONDS - started)) s"
  done
}

etcd_version=$(module_version "$here/etcd" go.etcd.io/etcd/server/v3)
build "$here/etcd" "$cache/etcd-$etcd_version" "-s -w" .

for dir in "$here"/kubernetes-*/; do
  dir=${dir%/}
  version=$(module_version "$dir" k8s.io/kubernetes)
  minor=${version#v1.}
  minor=${minor%%.*}
  # What `kubectl version` and discovery report; without it the server says v0.0.0-master.
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  build "$dir" "$cache/kubernetes-$version" "$ldflags" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
  ln -sfn "../etcd-$etcd_version/etcd" "$cache/kubernetes-$version/etcd"
done
echo "==> control planes ready in $cache: $(cd "$cache" && ls -d kubernetes-* | tr '\n' ' ')"
