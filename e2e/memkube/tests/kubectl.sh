#!/usr/bin/env bash
# The real kubectl against memkube (KUBECONFIG points at it). Each step checks what a user sees.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fail() { echo "FAILED: $*" >&2; exit 1; }
expect() { # expect WHAT PATTERN OUTPUT
  grep -Eq -- "$2" <<<"$3" || fail "$1: expected /$2/ in:"$'\n'"$3"
}

out=$(kubectl version 2>&1); expect "server version" "Server Version: v1\.32" "$out"
out=$(kubectl apply -f "$here/widget-crd.yaml"); expect "CRD applied" "widgets.example.dev created" "$out"
printf 'apiVersion: example.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n' >"$TMPDIR/w1.yaml"
out=$(kubectl apply -f "$TMPDIR/w1.yaml"); expect "object applied" "widget.example.dev/w1 created" "$out"
out=$(kubectl get wd); expect "short name and printer columns" "^NAME +SIZE +AGE" "$out"; expect "row" "^w1 +3 " "$out"
sed -i 's/size: 3/size: 4/' "$TMPDIR/w1.yaml"
out=$(kubectl apply -f "$TMPDIR/w1.yaml"); expect "re-apply" "configured" "$out"
out=$(kubectl get wd w1 -o yaml); expect "-o yaml" "size: 4" "$out"; expect "generation" "generation: 2" "$out"
kubectl patch wd w1 --type merge -p '{"spec":{"size":5}}' >/dev/null
out=$(kubectl get wd w1 -o jsonpath='{.spec.size}'); [ "$out" = 5 ] || fail "merge patch: size is $out"
kubectl patch wd w1 --subresource status --type merge -p '{"status":{"ready":"yes"}}' >/dev/null
out=$(kubectl wait wd/w1 --for=jsonpath='{.status.ready}'=yes --timeout=10s); expect "wait" "condition met" "$out"
kubectl patch wd w1 --type merge -p '{"metadata":{"finalizers":["example.dev/hold"]}}' >/dev/null
kubectl delete wd w1 --wait=false >/dev/null
out=$(kubectl get wd w1 -o jsonpath='{.metadata.deletionTimestamp}'); [ -n "$out" ] || fail "a pending finalizer must leave the object, marked"
kubectl patch wd w1 --type json -p '[{"op":"remove","path":"/metadata/finalizers"}]' >/dev/null
out=$(kubectl get wd 2>&1); expect "deleted once the finalizer went" "No resources found" "$out"
printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n' | kubectl apply -f - >/dev/null
out=$(kubectl get ns); expect "namespace applied" "^team " "$out"
printf 'apiVersion: v1\nkind: Event\nmetadata: {name: e1, namespace: team}\ninvolvedObject: {kind: Widget, name: w1, namespace: team}\nreason: Tested\nmessage: hello\ntype: Normal\n' | kubectl apply -f - >/dev/null
out=$(kubectl get events -n team -o jsonpath='{.items[0].reason}'); [ "$out" = Tested ] || fail "get events: $out"
out=$(kubectl create namespace ops); expect "create namespace (protobuf body)" "namespace/ops created" "$out"
out=$(kubectl get ns ops -o jsonpath='{.status.phase}'); [ "$out" = Active ] || fail "new namespace phase: $out"
printf 'apiVersion: example.dev/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: -1}\n' >"$TMPDIR/bad.yaml"
out=$(kubectl apply -f "$TMPDIR/bad.yaml" 2>&1) && fail "a schema violation must be refused"
expect "schema violation named" 'spec.size: Invalid value: -1: spec.size in body should be greater than or equal to 1' "$out"
printf 'apiVersion: example.dev/v1\nkind: Widget\nmetadata: {name: odd}\nspec: {size: 1, colour: red}\n' >"$TMPDIR/odd.yaml"
out=$(kubectl apply -f "$TMPDIR/odd.yaml" 2>&1) && fail "an unknown field must be refused under kubectl's strict validation"
expect "unknown field named" 'unknown field "spec.colour"' "$out"
out=$(kubectl get pods -A 2>&1); expect "pods table" "No resources found|^NAMESPACE +NAME +READY +STATUS +RESTARTS +AGE" "$out"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa, namespace: team}\ndata: {owner: first}\n' >"$TMPDIR/ssa.yaml"
out=$(kubectl apply --server-side -f "$TMPDIR/ssa.yaml"); expect "server-side apply" "configmap/ssa serverside-applied" "$out"
sed -i 's/first/second/' "$TMPDIR/ssa.yaml"
out=$(kubectl apply --server-side --field-manager=intruder -f "$TMPDIR/ssa.yaml" 2>&1) && fail "a conflicting apply must be refused"
expect "apply conflict" 'conflict with "kubectl"' "$out"
out=$(kubectl apply --server-side --field-manager=intruder --force-conflicts -f "$TMPDIR/ssa.yaml"); expect "forced apply" "serverside-applied" "$out"
echo "kubectl checks passed"
