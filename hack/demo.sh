#!/usr/bin/env bash
# `make demo`: starts a real local control plane (etcd, kube-apiserver, kube-controller-manager)
# with the kube-pim operator running under its own user, then walks through kube-pim as the
# people who use it. The control plane stays up afterwards until Ctrl-C, for you to explore.
#
# DEMO_NONINTERACTIVE=1 stops it after the walkthrough instead (used by the test suite).
set -euo pipefail
DIR="${1:-$PWD/.demo}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TESTENV="$ROOT/target/debug/kube-pim-testenv"
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
run admin apply -f "$ROOT/examples/rolesetting.yaml" -f "$ROOT/examples/eligibleassignment.yaml"
run admin get rset
run admin get elig -n payments
run admin create rolebinding alice-requester -n payments --clusterrole kube-pim-requester --user alice

bold "alice asks for access with a justification"
run alice create -f "$ROOT/examples/activationrequest.yaml"
run alice get ar -n payments

bold "Policy the apiserver enforces by itself (CEL on the CRDs)"
say "A request's spec cannot be changed after it is made (only deactivate, false -> true):"
AR=$("$DIR/bin/kubectl" --kubeconfig "$DIR/alice.kubeconfig" get ar -n payments -o name | head -1)
run alice patch "$AR" -n payments --type=merge -p '{"spec":{"duration":"8h"}}'
say "A policy that contradicts itself is refused with what to fix:"
printf 'apiVersion: kubepim.io/v1alpha1\nkind: RoleSetting\nmetadata: {name: broken}\nspec: {roleRefs: [{name: admin}], activation: {maxDuration: 1h, defaultDuration: 2h}, approval: {required: true}}\n' >"$DIR/broken.yaml"
run admin apply -f "$DIR/broken.yaml"
run admin explain ar.spec.requester

bold "What comes next"
say "Approval, activation (RoleBindings created and removed at expiry) and the audit trail are the"
say "activation-flow work (issue #3); this demo grows as they land."

if [ "${DEMO_NONINTERACTIVE:-}" = 1 ]; then
  bold "Done (DEMO_NONINTERACTIVE=1): stopping the control plane"
  exit 0
fi
bold "The control plane keeps running. In another shell:"
say "export KUBECONFIG=$DIR/admin.kubeconfig    # or alice.kubeconfig, bob.kubeconfig, mallory.kubeconfig"
say "$DIR/bin/kubectl get pim -A"
say "Press Ctrl-C to stop everything."
wait "$PID"
