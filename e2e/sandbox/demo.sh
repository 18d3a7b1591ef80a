#!/usr/bin/env bash
# The sandbox's demo, in namespace lockkeeper-demo: the Jobs of examples/job-with-claim and
# the gated pods of examples/gated-pod contend for their locks. The control plane has no node,
# so this script plays the kubelet: it ends each Job's pod once the Job runs (the real Job
# controller then completes the Job), and runs each pod's `lockkeeper gate` init container as
# a local process with the downward-API variables and the pod's ServiceAccount token.
# Usage: demo.sh DIR (KUBECONFIG set)
set -euo pipefail
dir=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/debug
ns=lockkeeper-demo
log=$dir/demo.log
k() { kubectl --namespace "$ns" "$@"; }
step() { echo "==> $*"; }
fail() { echo "!! $1; see $log and $dir/controller/controller.log" >&2; exit 1; }
show() {
  echo "\$ kubectl get locks"
  k get locks
  echo "\$ kubectl get claims -o wide"
  k get claims -o wide
}
# wait_phase CLAIM PHASE
wait_phase() {
  k wait --for=jsonpath='{.status.phase}'="$2" --timeout=60s "lockclaim/$1" >>"$log" 2>&1 ||
    fail "claim $1 did not become $2"
}
# wait_holders LOCK CLAIMS: until the lock's status names these holders (space-separated, may
# be empty); a lock's status follows its claims within a fraction of a second.
wait_holders() {
  for _ in $(seq 1 300); do
    [ "$(k get lock "$1" -o jsonpath='{.status.holders[*].claim}' 2>>"$log")" = "$2" ] && return 0
    sleep 0.1
  done
  fail "lock $1 did not show holders '$2'"
}
# job_pod JOB: the name of the pod the Job controller made for JOB.
job_pod() {
  local pod
  for _ in $(seq 1 300); do
    pod=$(k get pods -l "batch.kubernetes.io/job-name=$1" -o jsonpath='{.items[0].metadata.name}' 2>>"$log")
    [ -n "$pod" ] && { echo "$pod"; return 0; }
    sleep 0.1
  done
  fail "the Job controller made no pod for Job $1"
}
# wait_queued CLAIM: until the claim exists and is in line (Waiting) or holds (Granted).
wait_queued() {
  for _ in $(seq 1 300); do
    case "$(k get lockclaim "$1" -o jsonpath='{.status.phase}' 2>>"$log")" in
      Waiting | Granted) return 0 ;;
    esac
    sleep 0.1
  done
  fail "claim $1 was not queued"
}

: >"$log"
if kubectl get namespace "$ns" >/dev/null 2>&1; then
  step "removing the previous demo (namespace $ns)"
  kubectl delete namespace "$ns" --wait=true --timeout=60s >>"$log" 2>&1 || fail "deleting namespace $ns failed"
fi
kubectl create namespace "$ns" >>"$log"

step "demo 1: three migration Jobs, created suspended, each with a LockClaim on one Mutex (examples/job-with-claim)"
k apply -f "$root/examples/job-with-claim/lock.yaml" >>"$log"
for job in orders billing search; do
  k apply -f "$root/examples/job-with-claim/migrate-$job.yaml" >>"$log"
  wait_queued "migrate-$job" # queued in this order, so the demo always reads the same way
done
for job in orders billing search; do
  wait_phase "migrate-$job" Granted
  suspended=$(k get job "migrate-$job" -o jsonpath='{.spec.suspend}')
  step "migrate-$job holds the lock and runs (spec.suspend: $suspended); the others wait, suspended"
  wait_holders schema-migrations "migrate-$job"
  show
  sleep 1
  pod=$(job_pod "migrate-$job")
  step "migrate-$job's pod $pod succeeds (the demo plays the kubelet); the Job controller completes the Job"
  k patch pod "$pod" --subresource status --type merge -p '{"status":{"phase":"Succeeded"}}' >>"$log"
  k wait --for=condition=Complete --timeout=60s "job/migrate-$job" >>"$log" 2>&1 || fail "Job migrate-$job did not complete"
  wait_phase "migrate-$job" Released
done
wait_holders schema-migrations ""
show

step "demo 2: two pods gated by the lockkeeper gate init container (examples/gated-pod)"
k apply -f "$root/examples/gated-pod/" >>"$log"
# The init container's credentials: a token of the pod's ServiceAccount (examples/gated-pod/rbac.yaml).
gate_kubeconfig=$dir/demo/gate.kubeconfig
mkdir -p "$dir/demo"
sed "s/^    token: .*/    token: $(k create token lockkeeper-gate)/" "$KUBECONFIG" >"$gate_kubeconfig"
gates=()
for pod in report-1 report-2; do
  uid=$(k get pod "$pod" -o jsonpath='{.metadata.uid}')
  KUBECONFIG=$gate_kubeconfig POD_NAME=$pod POD_NAMESPACE=$ns POD_UID=$uid "$bin/lockkeeper" gate --lock report-writer \
    --token-file "$dir/demo/$pod/token" >>"$log" 2>"$dir/demo-$pod-gate.log" &
  gates+=($!)
  wait_queued "$pod-report-writer"
done
for i in 0 1; do
  pod=report-$((i + 1))
  wait "${gates[$i]}" || fail "the gate of $pod failed (see $dir/demo-$pod-gate.log)"
  step "$pod: its init container exited 0 with fencing token $(cat "$dir/demo/$pod/token"); its main container runs"
  k patch pod "$pod" --subresource status --type merge -p '{"status":{"phase":"Running"}}' >>"$log"
  wait_holders report-writer "$pod-report-writer"
  show
  sleep 1
  step "$pod succeeds (the demo plays the kubelet); the lock moves on"
  k patch pod "$pod" --subresource status --type merge -p '{"status":{"phase":"Succeeded"}}' >>"$log"
  wait_phase "$pod-report-writer" Released
done
wait_holders report-writer ""
show
step "demo done: every claim was granted in order and released when its holder ended"
