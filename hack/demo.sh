#!/usr/bin/env bash
# `make demo`: starts a real local control plane (etcd, kube-apiserver, kube-controller-manager)
# with the kube-pim operator running under its own user, then walks through kube-pim as the
# people who use it. The control plane stays up afterwards until Ctrl-C, for you to explore.
#
# DEMO_NONINTERACTIVE=1 stops it after the walkthrough instead (used by the test suite).
set -euo pipefail
DIR="${1:-$PWD/.demo}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TESTENV="${KUBE_PIM_TESTENV:-$ROOT/target/debug/kube-pim-testenv}"
[ -x "$TESTENV" ] || { echo "demo: build first: cargo build --bins" >&2; exit 1; }

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
run() { # run AS CMD...: show the command as the user would type it, then its output
  local who="$1"; shift
  printf '\033[36m[%s]$ kubectl %s\033[0m\n' "$who" "$*"
  "$DIR/bin/kubectl" --kubeconfig "$DIR/$who.kubeconfig" "$@" 2>&1 | sed 's/^/   /' || true
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
say "The kube-pim operator runs as its own user ($(grep -o 'kube-pim-operator' "$DIR/operator.kubeconfig" | head -1)), not as admin."
run admin get crd
run admin api-resources --categories pim

bold "Identities are real: each person has a client certificate"
run alice auth whoami
run bob auth whoami

bold "Nobody holds standing access: alice cannot read Secrets in payments"
run admin create namespace payments
run alice get secrets -n payments

bold "The platform admin declares the policy (RoleSetting) and the eligibility (EligibleAssignment)"
say "namespace-admin: admin in one namespace, at most 2h, approval by the sre-leads group or bob."
run admin apply -f "$ROOT/examples/rolesetting.yaml" -f "$ROOT/examples/eligibleassignment.yaml"
run admin create rolebinding requesters -n payments --clusterrole kube-pim-requester --user alice --user mallory
run admin create rolebinding approvers -n payments --clusterrole kube-pim-approver --group sre-leads --user mallory
run admin get rset
run admin get elig -n payments

bold "alice asks for access (the request claims to come from bob: kube-pim records who really asked)"
sed 's/username: alice/username: bob/' "$ROOT/examples/activationrequest.yaml" >"$DIR/forged.yaml"
run alice create -f "$DIR/forged.yaml"
AR=$("$DIR/bin/kubectl" --kubeconfig "$DIR/alice.kubeconfig" get ar -n payments -o name | head -1 | cut -d/ -f2)
sleep 1
run alice get ar "$AR" -n payments -o custom-columns=NAME:.metadata.name,REQUESTER:.spec.requester.username,PHASE:.status.phase
say "Asking for more than the policy allows is refused at once, with the fix:"
sed 's/duration: 1h/duration: 3h/' "$ROOT/examples/activationrequest.yaml" >"$DIR/too-long.yaml"
run alice create -f "$DIR/too-long.yaml"
say "Pending: alice still has no access."
run alice get secrets -n payments

bold "Decisions: only approvers, never the requester, each once"
UID_=$("$DIR/bin/kubectl" --kubeconfig "$DIR/admin.kubeconfig" get ar "$AR" -n payments -o jsonpath='{.metadata.uid}')
APPROVE="[{\"op\":\"test\",\"path\":\"/metadata/uid\",\"value\":\"$UID_\"},{\"op\":\"add\",\"path\":\"/status/approvals/-\",\"value\":{\"decision\":\"Approved\",\"reason\":\"INC-4711 is real\"}}]"
say "mallory holds the approver role but is not an approver of namespace-admin:"
run mallory patch ar "$AR" -n payments --subresource=status --type=json -p "$APPROVE"
say "bob (in sre-leads) approves with plain kubectl, exactly as the docs show:"
run bob patch ar "$AR" -n payments --subresource=status --type=json -p "$APPROVE"
sleep 1
run admin get ar "$AR" -n payments -o jsonpath='{range .status.approvals[*]}{.decision} by {.approver.username} {.approver.viaGroup} at {.time}: {.reason}{"\n"}{end}'
run admin get ar -n payments

bold "Access is real now, and it is a binding kube-pim owns and will remove"
run alice get secrets -n payments
run admin get rolebindings -n payments -l app.kubernetes.io/managed-by=kube-pim -o 'custom-columns=NAME:.metadata.name,ROLE:.roleRef.name,USER:.subjects[0].name,EXPIRES:.metadata.annotations.kubepim\.io/expires-at'

bold "alice is done early: she deactivates, and the access is gone"
run alice patch ar "$AR" -n payments --type=merge -p '{"spec":{"deactivate":true}}'
sleep 1
run alice get secrets -n payments
run admin get ar "$AR" -n payments -o jsonpath='{range .status.history[*]}{.seq} {.action} by {.actor}: {.message}{"\n"}{end}'

bold "Expiry: a 10s activation (no approval needed for view access)"
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
spec: {roleSetting: namespace-view, duration: 10s, justification: "look at the pods", requester: {username: alice}}
YAML
run admin apply -f "$DIR/view.yaml" --server-side
run alice create -f "$DIR/peek.yaml"
sleep 2
run alice get pods -n payments
say "... 10 seconds later:"
sleep 10
run admin get ar alice-peek -n payments
run alice get pods -n payments

bold "The audit trail: one JSON line per transition (and per policy write), outside Kubernetes"
say "Transitions of the 10s activation:"
grep '"ActivationRequestTransition"' "$DIR/audit.log" | tail -n 4 | sed 's/^/   /'
say "Writes to the policy, with who made them:"
grep '"PolicyWrite"' "$DIR/audit.log" | tail -n 2 | sed 's/^/   /'
run admin get events -n payments --field-selector involvedObject.kind=ActivationRequest

if [ "${DEMO_NONINTERACTIVE:-}" = 1 ]; then
  bold "Done (DEMO_NONINTERACTIVE=1): stopping the control plane"
  exit 0
fi
bold "The control plane keeps running. In another shell:"
say "export KUBECONFIG=$DIR/admin.kubeconfig    # or alice.kubeconfig, bob.kubeconfig, mallory.kubeconfig"
say "$DIR/bin/kubectl get pim -A"
say "Press Ctrl-C to stop everything."
wait "$PID"
