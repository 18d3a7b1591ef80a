#!/usr/bin/env bash
# `make sandbox-down`: stops the controller, the control plane and ZooKeeper, in that order.
# etcd's and ZooKeeper's data and every log stay in DIR; nothing outside DIR is touched (the sandbox's kubeconfig
# is DIR/kubeconfig, never ~/.kube/config).
set -uo pipefail
dir=$1
stop() {
  local name=$1 pidfile=$2 pid
  if [ -f "$pidfile" ] && pid=$(cat "$pidfile") && kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "==> $name stopped"
  else
    echo "==> $name was not running"
  fi
  rm -f "$pidfile"
}
stop "lockkeeper controller" "$dir/controller/pid"
stop "the Kubernetes control plane (etcd data kept in $dir/controlplane)" "$dir/controlplane/pid"
stop "ZooKeeper (data kept in $dir/zookeeper)" "$dir/zookeeper/pid"
