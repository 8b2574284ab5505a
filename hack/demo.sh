#!/usr/bin/env bash
# `make demo`: starts a real local control plane (etcd, kube-apiserver, kube-controller-manager)
# with the kube-pim operator running under its own user, then walks through kube-pim as the
# people who use it, mostly with the kubectl plugin (`kubectl pim`). Every command is printed
# before it runs, as the person who runs it. The control plane stays up afterwards until
# Ctrl-C, for you to explore.
#
# DEMO_NONINTERACTIVE=1 stops it after the walkthrough instead (used by the test suite).
set -euo pipefail
DIR="${1:-$PWD/.demo}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TESTENV="${KUBE_PIM_TESTENV:-$ROOT/target/debug/kube-pim-testenv}"
PLUGIN="${KUBECTL_PIM:-$ROOT/target/debug/kubectl-pim}"
[ -x "$TESTENV" ] && [ -x "$PLUGIN" ] || { echo "demo: build first: cargo build --bins" >&2; exit 1; }

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
run() { # run WHO ARGS...: `kubectl ARGS` as WHO, shown as typed, then its output
  local who="$1"; shift
  printf '\033[36m[%s]$ kubectl %s\033[0m\n' "$who" "$*"
  KUBECONFIG="$DIR/$who.kubeconfig" PATH="$DIR/bin:$PATH" "$DIR/bin/kubectl" "$@" 2>&1 | tee "$DIR/last.out" | sed 's/^/   /' || true
}
pim() { # pim WHO ARGS...: `kubectl pim ARGS` as WHO (kubectl finds the plugin on PATH)
  local who="$1"; shift
  run "$who" pim "$@"
}

rm -rf "$DIR"
mkdir -p "$DIR"
"$TESTENV" up --dir "$DIR" --operator --user alice:team-payments --user bob:sre-leads --user mallory \
  >"$DIR.log" 2>&1 &
PID=$!
stop() { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap stop EXIT INT TERM
for _ in $(seq 1 600); do
  [ -f "$DIR/ready" ] && break
  kill -0 "$PID" 2>/dev/null || { echo "demo: the control plane failed to start:"; cat "$DIR.log"; exit 1; }
  sleep 0.5
done
[ -f "$DIR/ready" ] || { echo "demo: control plane not ready; see $DIR.log"; exit 1; }

bold "A real control plane is up at $(cat "$DIR/ready")"
say "etcd, kube-apiserver and kube-controller-manager built from the Kubernetes sources, RBAC on."
say "The kube-pim operator runs as its own user, not as admin. kubectl-pim is on PATH as a kubectl plugin."
ln -sf "$PLUGIN" "$DIR/bin/kubectl-pim"
run admin api-resources --categories pim

bold "Identities are real: each person has a client certificate"
pim alice whoami
pim bob whoami

bold "Nobody holds standing access: alice cannot read Secrets in payments"
run admin create namespace payments
run alice get secrets -n payments

bold "The platform admin declares policy and eligibility in Git; Argo CD applies them server-side"
say "namespace-admin: admin in one namespace, at most 2h, approved by the sre-leads group or bob."
run admin apply --server-side --field-manager=argocd-controller -f "$ROOT/examples/rolesetting.yaml" -f "$ROOT/examples/eligibleassignment.yaml"
run admin create rolebinding requesters -n payments --clusterrole kube-pim-requester --user alice --user mallory
run admin create rolebinding approvers -n payments --clusterrole kube-pim-approver --group sre-leads --user mallory

bold "alice: what may I activate?"
pim alice eligible -n payments

bold "alice asks for access"
say "More than the policy allows is refused at once, with the fix:"
pim alice activate namespace-admin -n payments --for 3h --reason "INC-4711 failover of the payments DB"
pim alice activate namespace-admin -n payments --for 1h --reason "INC-4711 failover of the payments DB" --ticket INC-4711
AR=$(sed -n 's|^activationrequest payments/\(.*\) created$|\1|p' "$DIR/last.out")
say "Pending: alice still has no access."
run alice get secrets -n payments

bold "Approvers see what waits for them, and decide"
pim bob pending -n payments
say "mallory holds the approver role but is not an approver of namespace-admin:"
pim mallory approve "payments/$AR" --reason "sure"
pim bob approve "payments/$AR" --reason "INC-4711 is real"
sleep 1

bold "Access is real now, and it is a binding kube-pim owns and will remove"
pim alice list -n payments
run alice get secrets -n payments
run admin get rolebindings -n payments -l app.kubernetes.io/managed-by=kube-pim -o 'custom-columns=NAME:.metadata.name,ROLE:.roleRef.name,USER:.subjects[0].name,EXPIRES:.metadata.annotations.kubepim\.io/expires-at'

bold "alice is done early: she deactivates, and the access is gone"
pim alice deactivate "$AR" -n payments --wait
run alice get secrets -n payments

bold "Expiry: a 10s activation with no approval, asked for with plain kubectl"
cat >"$DIR/view.yaml" <<YAML
apiVersion: kubepim.io/v1alpha1
kind: RoleSetting
metadata: {name: namespace-view}
spec: {roleRefs: [{name: view}], activation: {maxDuration: 15m}}
---
apiVersion: kubepim.io/v1alpha1
kind: EligibleAssignment
metadata: {name: alice-view, namespace: payments}
spec: {roleSetting: namespace-view, subject: {kind: User, name: alice}}
YAML
cat >"$DIR/peek.yaml" <<YAML
apiVersion: kubepim.io/v1alpha1
kind: ActivationRequest
metadata: {name: alice-peek, namespace: payments}
spec: {roleSetting: namespace-view, duration: 10s, justification: "look at the pods", requester: {username: bob}}
YAML
run admin apply --server-side --field-manager=argocd-controller -f "$DIR/view.yaml"
say "The file claims the request comes from bob; kube-pim records who really asked:"
run alice create -f "$DIR/peek.yaml"
sleep 2
run alice get ar alice-peek -n payments -o custom-columns=NAME:.metadata.name,REQUESTER:.spec.requester.username,PHASE:.status.phase
run alice get pods -n payments
say "... 10 seconds later:"
sleep 10
pim alice list -n payments
run alice get pods -n payments

bold "The audit trail: exported by the auditor, the same records as the operator's audit stream"
pim admin audit -n payments
say "As CSV for a spreadsheet (kubectl pim audit -A --since 720h -o csv > audit.csv):"
pim admin audit -n payments -o csv
say "Writes to the policy, with who made them (audit stream):"
grep '"PolicyWrite"' "$DIR/audit.log" | tail -n 2 | sed 's/^/   /'

if [ "${DEMO_NONINTERACTIVE:-}" = 1 ]; then
  bold "Done (DEMO_NONINTERACTIVE=1): stopping the control plane"
  exit 0
fi
bold "The control plane keeps running. In another shell:"
say "export KUBECONFIG=$DIR/admin.kubeconfig    # or alice.kubeconfig, bob.kubeconfig, mallory.kubeconfig"
say "export PATH=$DIR/bin:\$PATH    # kubectl and the kubectl-pim plugin"
say "kubectl pim eligible -n payments; kubectl get pim -A"
say "Press Ctrl-C to stop everything."
wait "$PID"
