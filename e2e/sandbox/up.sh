#!/usr/bin/env bash
# `make sandbox`: ZooKeeper, a real Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, built by `make deps`), `lockkeeper controller`, the CRDs and a
# demo, all on loopback, all left running. State and logs live in DIR.
# Usage: up.sh DIR ZOOKEEPER_PORT API_PORT METRICS_PORT
set -euo pipefail
dir=$1 zk_port=$2 api_port=$3 metrics_port=$4
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/debug
export KUBECONFIG=$dir/kubeconfig
mkdir -p "$dir/zookeeper" "$dir/controlplane" "$dir/controller"

step() { echo "==> $*"; }
fail() { echo "!! $1; see $2" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
listening() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
ruok() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$zk_port; echo ruok >&3; cat <&3" 2>/dev/null; }
zk_ready() { [ "$(ruok)" = imok ]; }
kubectl_answers() { kubectl get namespaces --request-timeout=1s >/dev/null 2>&1; }
# wait_for SECONDS WHAT LOG COMMAND…: retries COMMAND every 0.1 s.
wait_for() {
  local seconds=$1 what=$2 log=$3; shift 3
  for _ in $(seq 1 $((seconds * 10))); do "$@" && return 0; sleep 0.1; done
  fail "$what did not come up within ${seconds}s" "$log"
}

if zk_ready; then
  step "ZooKeeper already answers on 127.0.0.1:$zk_port"
else
  step "starting ZooKeeper on 127.0.0.1:$zk_port (log: $dir/zookeeper/server.log)"
  nohup "$bin/zookeeper-sandbox" "$dir/zookeeper" "$zk_port" >"$dir/zookeeper/server.log" 2>&1 &
  echo $! >"$dir/zookeeper/pid"
  wait_for 60 ZooKeeper "$dir/zookeeper/server.log" zk_ready
fi

if alive "$dir/controlplane/pid" && listening "$api_port"; then
  step "the Kubernetes control plane already serves on 127.0.0.1:$api_port"
else
  step "starting the Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on 127.0.0.1:$api_port (log: $dir/controlplane/controlplane.log)"
  rm -f "$KUBECONFIG"
  nohup "$bin/controlplane" "$dir/controlplane" "$api_port" "${KUBERNETES:-newest}" \
    >"$dir/controlplane/controlplane.log" 2>&1 &
  echo $! >"$dir/controlplane/pid"
  # The control plane writes its kubeconfig once kube-apiserver is ready.
  kubeconfig_written() { [ -s "$dir/controlplane/kubeconfig" ] && grep -q 'serves on' "$dir/controlplane/controlplane.log"; }
  wait_for 180 "the control plane" "$dir/controlplane/controlplane.log" kubeconfig_written
  cp "$dir/controlplane/kubeconfig" "$KUBECONFIG"
  step "$(kubectl version 2>/dev/null | grep 'Server Version')"
fi

step "applying the CRDs from crds/"
kubectl apply -f "$root/crds/" >"$dir/crds.log" 2>&1 || fail "kubectl apply -f crds/ failed" "$dir/crds.log"
kubectl wait --for=condition=Established --timeout=30s \
  crd/distributedlocks.lockkeeper.dev crd/lockclaims.lockkeeper.dev >>"$dir/crds.log" 2>&1 ||
  fail "the CRDs were not established" "$dir/crds.log"

if alive "$dir/controller/pid"; then
  step "lockkeeper controller already runs (log: $dir/controller/controller.log)"
else
  step "starting lockkeeper controller (metrics on 127.0.0.1:$metrics_port, log: $dir/controller/controller.log)"
  LOCKKEEPER_LOG=${LOCKKEEPER_LOG:-info,zookeeper_client=error} nohup "$bin/lockkeeper" controller \
    --zookeeper "127.0.0.1:$zk_port" --metrics-addr "127.0.0.1:$metrics_port" --identity sandbox \
    >"$dir/controller/controller.log" 2>&1 &
  echo $! >"$dir/controller/pid"
  wait_for 30 "the controller" "$dir/controller/controller.log" listening "$metrics_port"
fi

bash "$root/e2e/sandbox/demo.sh" "$dir"

cat <<EOF

==> The sandbox keeps running. Explore it with kubectl:
    export KUBECONFIG=$KUBECONFIG
    kubectl get locks,claims -A
    kubectl describe claim -n lockkeeper-demo migrate-orders
    $bin/lockkeeper run --lock schema-migrations -n lockkeeper-demo -- echo holding the lock
    curl -s 127.0.0.1:$metrics_port/metrics | grep lockkeeper_
    stop it with: make sandbox-down
EOF
