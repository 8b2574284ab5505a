//! The in-apiserver guards: ValidatingAdmissionPolicies (and their bindings) that enforce the
//! most important rules a second time, in the apiserver itself, independent of kube-pim's
//! admission webhook (SPEC invariants 1, 2 and 8). If the webhook configurations are removed
//! or misconfigured, forged requesters, edited specs and forged status are still refused.
//!
//! - `kube-pim-requester`: a created ActivationRequest's `spec.requester` is the caller
//!   exactly (username, uid, groups, extra), as `request.userInfo` says;
//! - `kube-pim-request-spec`: an UPDATE changes the spec only by `deactivate` false -> true
//!   (every field compared with presence parity, generated from [`SPEC_FIELDS`]);
//! - `kube-pim-request-status`: a status write appends exactly one approval, by the caller,
//!   and changes nothing else (generated from [`STATUS_FIELDS`]; a write without `status`
//!   counts as a change);
//! - `kube-pim-standing-access`: with `standingAccess: Deny`, no RoleBinding or
//!   ClusterRoleBinding to a governed ClusterRole is created or updated except by the operator
//!   or the break-glass group. Its parameter is a ConfigMap in the operator's namespace that
//!   the operator keeps in sync with the RoleSettings ([`STANDING_ACCESS_PARAMS`]).
//!
//! - `kube-pim-managed-bindings`: nobody but the operator creates or edits a binding labelled
//!   `app.kubernetes.io/managed-by: kube-pim` (deleting one only removes access, and kube-pim
//!   restores it while the activation lasts), so its labels, subjects and expiry annotation
//!   stay kube-pim's.
//!
//! - `kube-pim-operator-state`: nobody but the operator creates or edits the standing-access
//!   ConfigMap or the leader Lease in the operator's namespace (a deleted one is re-created by
//!   the operator; deletes stay possible so the namespace can be removed on uninstall).
//!
//! The operator's user name is the only exemption (a matchCondition), the same setting as in
//! the webhook configurations. Every policy fails closed (`failurePolicy: Fail`).

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use serde_json::{Value, json};

use crate::api::activation_request::{SPEC_FIELDS, STATUS_FIELDS, cel_field};

/// The ConfigMap (in the operator's namespace) that lists the ClusterRoles governed with
/// `standingAccess: Deny`, comma-separated under `data.roles`.
pub const STANDING_ACCESS_PARAMS: &str = "kube-pim-standing-access";

/// The operator's identity as every guard recognises it (SPEC invariant 9): its user name and,
/// optionally, the requirement that it authenticates with a pod-bound ServiceAccount token
/// (`authentication.kubernetes.io/pod-name` in `userInfo.extra`), so a token minted for the
/// ServiceAccount outside a pod is not exempt.
#[derive(Clone, Debug)]
pub struct Operator {
    /// The operator's user name.
    pub username: String,
    /// Require a pod-bound token for the exemption.
    pub require_pod_bound_token: bool,
}

/// The extra key the apiserver sets for pod-bound ServiceAccount tokens.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

impl Operator {
    /// The CEL matchCondition that is true for everyone but the operator.
    pub fn not_operator_expression(&self) -> String {
        let name = format!("request.userInfo.username != {}", lit(&self.username));
        if self.require_pod_bound_token {
            format!(
                "{name} || !has(request.userInfo.extra) || !({} in request.userInfo.extra)",
                lit(POD_NAME_EXTRA)
            )
        } else {
            name
        }
    }
}

/// The operator's default user name (the chart's ServiceAccount in `kube-pim-system`).
pub const DEFAULT_OPERATOR_USERNAME: &str = "system:serviceaccount:kube-pim-system:kube-pim";

/// What the policies need to know.
#[derive(Clone, Debug)]
pub struct Options {
    /// The operator (the only exemption).
    pub operator: Operator,
    /// The operator's namespace (where the standing-access ConfigMap lives).
    pub namespace: String,
    /// Members of this group may still bind governed roles directly (break glass).
    pub break_glass_group: Option<String>,
}

/// A CEL string literal for `s` (JSON string syntax is valid CEL).
fn lit(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// `x.f` with presence parity against `y.f`, and equality when present.
fn unchanged(new: &str, old: &str, field: &str) -> String {
    let f = cel_field(field);
    format!("has({new}.{f}) == has({old}.{f}) && (!has({new}.{f}) || {new}.{f} == {old}.{f})")
}

/// `value` of `o.field` or `default` when absent.
fn or(o: &str, field: &str, default: &str) -> String {
    format!("(has({o}.{field}) ? {o}.{field} : {default})")
}

/// The caller's identity compared with a recorded one at `who` (username, uid).
fn is_caller(who: &str) -> String {
    format!(
        "{who}.username == request.userInfo.username && {} == {}",
        or(who, "uid", "''"),
        or("request.userInfo", "uid", "''")
    )
}

/// The expression of `kube-pim-requester`.
pub fn requester_expression() -> String {
    let r = "object.spec.requester";
    format!(
        "has(object.spec.requester) && {} && {} == {} && {} == {}",
        is_caller(r),
        or(r, "groups", "[]"),
        or("request.userInfo", "groups", "[]"),
        or(r, "extra", "{}"),
        or("request.userInfo", "extra", "{}"),
    )
}

/// The expression of `kube-pim-request-spec`.
pub fn spec_expression() -> String {
    let mut parts: Vec<String> = SPEC_FIELDS
        .iter()
        .map(|f| format!("({})", unchanged("object.spec", "oldObject.spec", f)))
        .collect();
    parts.push(
        "((has(object.spec.deactivate) && object.spec.deactivate) || !has(oldObject.spec.deactivate) || !oldObject.spec.deactivate)".into(),
    );
    parts.join(" && ")
}

/// The expressions of `kube-pim-request-status`, each with its message.
pub fn status_expressions() -> Vec<(String, String)> {
    let others = STATUS_FIELDS
        .iter()
        .map(|f| format!("({})", unchanged("object.status", "oldObject.status", f)))
        .collect::<Vec<_>>()
        .join(" && ");
    let n = "size(oldObject.status.approvals)";
    vec![
        (
            "has(object.status) && has(oldObject.status)".into(),
            "status cannot be removed, and there is nothing to decide before kube-pim has written it: append one entry to status.approvals".into(),
        ),
        (
            others,
            "only kube-pim changes status fields other than approvals: append one entry to status.approvals and change nothing else".into(),
        ),
        (
            format!(
                "has(oldObject.status.approvals) && has(object.status.approvals) && size(object.status.approvals) == {n} + 1 && object.status.approvals.slice(0, {n}) == oldObject.status.approvals"
            ),
            "append exactly one approval at the end (op add, path /status/approvals/-); existing decisions cannot change".into(),
        ),
                (
            {
                let a = format!("object.status.approvals[{n}].approver");
                format!(
                    "{} && (!has({a}.viaGroup) || (has(request.userInfo.groups) && {a}.viaGroup in request.userInfo.groups))",
                    is_caller(&a)
                )
            },
            "an approval is recorded for the caller only, through a group the caller is in: leave approver out, kube-pim's webhook fills it in".into(),
        ),
    ]
}

fn not_operator(o: &Options) -> Value {
    json!({"name": "not-the-operator", "expression": o.operator.not_operator_expression()})
}

fn meta(name: &str) -> Value {
    json!({"name": name, "labels": {"app.kubernetes.io/name": "kube-pim"}})
}

fn requests(operations: &[&str], resource: &str) -> Value {
    json!({"resourceRules": [{"apiGroups": ["kubepim.io"], "apiVersions": ["v1alpha1"],
        "operations": operations, "resources": [resource]}]})
}

fn policy(name: &str, spec: Value) -> ValidatingAdmissionPolicy {
    serde_json::from_value(json!({"metadata": meta(name), "spec": spec}))
        .expect("a well-formed ValidatingAdmissionPolicy")
}

fn binding(name: &str, param_ref: Option<Value>) -> ValidatingAdmissionPolicyBinding {
    let mut spec = json!({"policyName": name, "validationActions": ["Deny"]});
    if let Some(p) = param_ref {
        spec["paramRef"] = p;
    }
    serde_json::from_value(json!({"metadata": meta(name), "spec": spec}))
        .expect("a well-formed ValidatingAdmissionPolicyBinding")
}

/// Every policy with its binding.
pub fn all(o: &Options) -> Vec<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    let requester = policy(
        "kube-pim-requester",
        json!({
            "failurePolicy": "Fail",
            "matchConstraints": requests(&["CREATE"], "activationrequests"),
            "matchConditions": [not_operator(o)],
            "validations": [{"expression": requester_expression(), "reason": "Forbidden",
                "message": "spec.requester must be the caller exactly as authenticated: it is set by kube-pim, leave it out"}],
        }),
    );
    let spec = policy(
        "kube-pim-request-spec",
        json!({
            "failurePolicy": "Fail",
            "matchConstraints": requests(&["UPDATE"], "activationrequests"),
            "matchConditions": [not_operator(o)],
            "validations": [{"expression": spec_expression(), "reason": "Forbidden",
                "message": "spec is immutable except deactivate (false -> true): create a new ActivationRequest instead of editing this one"}],
        }),
    );
    let status = policy(
        "kube-pim-request-status",
        json!({
            "failurePolicy": "Fail",
            "matchConstraints": requests(&["UPDATE"], "activationrequests/status"),
            "matchConditions": [not_operator(o)],
            "validations": status_expressions().into_iter().map(|(e, m)| json!({
                "expression": e, "message": m, "reason": "Forbidden"})).collect::<Vec<_>>(),
        }),
    );
    let mut conditions = vec![
        not_operator(o),
        // Only bindings to ClusterRoles can grant a governed role.
        json!({"name": "cluster-role", "expression": "object.roleRef.kind == 'ClusterRole'"}),
    ];
    if let Some(g) = &o.break_glass_group {
        conditions.push(json!({"name": "not-break-glass",
            "expression": format!("!has(request.userInfo.groups) || !({} in request.userInfo.groups)", lit(g))}));
    }
    let standing = policy(
        "kube-pim-standing-access",
        json!({
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "matchConstraints": {"resourceRules": [{"apiGroups": ["rbac.authorization.k8s.io"],
                "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                "resources": ["rolebindings", "clusterrolebindings"]}]},
            "matchConditions": conditions,
            "validations": [{
                "expression": "!has(params.data) || !('roles' in params.data) || !(object.roleRef.name in params.data.roles.split(','))",
                "reason": "Forbidden",
                "messageExpression": "'ClusterRole ' + object.roleRef.name + ' is governed by kube-pim with standingAccess: Deny, so it is not bound directly: make the people eligible (EligibleAssignment) and let them activate it (ActivationRequest)'",
            }],
        }),
    );
    let managed = |o: &str| {
        format!(
            "has({o}.metadata.labels) && {label} in {o}.metadata.labels && {o}.metadata.labels[{label}] == {value}",
            label = lit(crate::decide::bindings::MANAGED_BY.0),
            value = lit(crate::decide::bindings::MANAGED_BY.1)
        )
    };
    let managed_bindings = policy(
        "kube-pim-managed-bindings",
        json!({
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["rbac.authorization.k8s.io"],
                "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                "resources": ["rolebindings", "clusterrolebindings"]}]},
            "matchConditions": [not_operator(o)],
            "validations": [{
                "expression": format!(
                    "!({}) && (request.operation != 'UPDATE' || !({}))",
                    managed("object"),
                    managed("oldObject")
                ),
                "reason": "Forbidden",
                "message": "bindings labelled app.kubernetes.io/managed-by=kube-pim are written only by kube-pim: end, extend or request an activation instead (deleting one is allowed; kube-pim restores it while the activation lasts)",
            }],
        }),
    );
    // The operator's own state: the standing-access parameter and the leader Lease. Anyone
    // else who could write them could switch Deny off or keep every replica from leading.
    // DELETE is not matched: the namespace controller must be able to empty the namespace on
    // uninstall (it deletes collections, which policies cannot tell from an attack), and a
    // deleted ConfigMap or Lease is re-created by the operator within moments.
    let name = "object.metadata.name";
    let operator_state = policy(
        "kube-pim-operator-state",
        json!({
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [
                                {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["configmaps"]},
                {"apiGroups": ["coordination.k8s.io"], "apiVersions": ["v1"],
                 "operations": ["CREATE", "UPDATE"], "resources": ["leases"]}]},
            "matchConditions": [
                not_operator(o),
                {"name": "operator-namespace", "expression": format!("request.namespace == {}", lit(&o.namespace))},
            ],
            "validations": [{
                "expression": format!(
                    "!((request.resource.resource == 'configmaps' && {name} == {}) || (request.resource.resource == 'leases' && {name} == {}))",
                    lit(STANDING_ACCESS_PARAMS),
                    lit(crate::leader::LEASE_NAME)
                ),
                "reason": "Forbidden",
                "message": "this ConfigMap or Lease is kube-pim's own state (the standing-access parameter, the leader Lease): only the operator writes it",
            }],
        }),
    );
    // A missing parameter lets bindings through rather than refusing every binding in the
    // cluster (the apiserver's own RBAC bootstrap creates bindings at every start); the
    // operator re-creates the ConfigMap, and discovery still reports standing access.
    let params = json!({"name": STANDING_ACCESS_PARAMS, "namespace": o.namespace,
        "parameterNotFoundAction": "Allow"});
    vec![
        (requester, binding("kube-pim-requester", None)),
        (spec, binding("kube-pim-request-spec", None)),
        (status, binding("kube-pim-request-status", None)),
        (standing, binding("kube-pim-standing-access", Some(params))),
        (managed_bindings, binding("kube-pim-managed-bindings", None)),
        (operator_state, binding("kube-pim-operator-state", None)),
    ]
}

impl Default for Options {
    /// The defaults of `kube-pim run` and the chart: the operator as ServiceAccount `kube-pim`
    /// in `kube-pim-system`, no break-glass group, no pod-bound token requirement.
    fn default() -> Self {
        Self {
            operator: Operator {
                username: DEFAULT_OPERATOR_USERNAME.into(),
                require_pod_bound_token: false,
            },
            namespace: "kube-pim-system".into(),
            break_glass_group: None,
        }
    }
}

/// Every policy and binding as one multi-document YAML stream.
pub fn all_yaml(o: &Options) -> String {
    let mut out = String::new();
    for (p, b) in all(o) {
        for doc in [
            serde_json::to_value(&p).expect("serializes"),
            serde_json::to_value(&b).expect("serializes"),
        ] {
            let mut doc = doc;
            // k8s-openapi leaves apiVersion/kind to the client; a file needs them.
            let kind = if doc["spec"].get("policyName").is_some() {
                "ValidatingAdmissionPolicyBinding"
            } else {
                "ValidatingAdmissionPolicy"
            };
            let mut v = serde_json::Map::new();
            v.insert(
                "apiVersion".into(),
                json!("admissionregistration.k8s.io/v1"),
            );
            v.insert("kind".into(), json!(kind));
            if let Value::Object(m) = doc.take() {
                v.extend(m);
            }
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&Value::Object(v)).expect("serializes"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            operator: Operator {
                username: "system:serviceaccount:kube-pim-system:kube-pim".into(),
                require_pod_bound_token: false,
            },
            namespace: "kube-pim-system".into(),
            break_glass_group: Some("break-glass".into()),
        }
    }

    #[test]
    fn the_spec_guard_compares_every_spec_field_with_presence_parity() {
        let e = spec_expression();
        for f in SPEC_FIELDS {
            let f = cel_field(f);
            assert!(
                e.contains(&format!("has(object.spec.{f}) == has(oldObject.spec.{f})")),
                "{f}"
            );
            assert!(
                e.contains(&format!("object.spec.{f} == oldObject.spec.{f}")),
                "{f}"
            );
        }
        assert!(e.contains("oldObject.spec.deactivate"));
    }

    #[test]
    fn the_status_guard_compares_every_status_field_but_approvals() {
        let all: String = status_expressions()
            .into_iter()
            .map(|(e, _)| e)
            .collect::<Vec<_>>()
            .join(" && ");
        for f in STATUS_FIELDS {
            assert!(
                all.contains(&format!(
                    "has(object.status.{f}) == has(oldObject.status.{f})"
                )),
                "{f}"
            );
        }
        assert!(all.contains("has(object.status) && has(oldObject.status)"));
        assert!(all.contains("object.status.approvals[size(oldObject.status.approvals)].approver.username == request.userInfo.username"));
    }

    /// No guard may be made optional by a top-level `||` (`&&` binds tighter).
    #[test]
    fn a_pod_bound_token_can_be_required_of_the_operator() {
        let mut o = opts().operator;
        assert_eq!(
            o.not_operator_expression(),
            "request.userInfo.username != \"system:serviceaccount:kube-pim-system:kube-pim\""
        );
        o.require_pod_bound_token = true;
        let e = o.not_operator_expression();
        assert!(
            e.ends_with("|| !has(request.userInfo.extra) || !(\"authentication.kubernetes.io/pod-name\" in request.userInfo.extra)"),
            "{e}"
        );
    }

    #[test]
    fn every_clause_is_required() {
        let mut exprs = vec![requester_expression(), spec_expression()];
        exprs.extend(status_expressions().into_iter().map(|(e, _)| e));
        for e in exprs {
            let mut depth = 0i32;
            let b = e.as_bytes();
            for (i, c) in e.char_indices() {
                match c {
                    '(' | '[' => depth += 1,
                    ')' | ']' => depth -= 1,
                    '|' if depth == 0 && b.get(i + 1) == Some(&b'|') => {
                        panic!("top-level || in {e}")
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn the_operator_is_the_only_exemption_and_break_glass_only_for_standing_access() {
        let all = all(&opts());
        assert_eq!(all.len(), 6);
        for (p, b) in &all {
            let spec = p.spec.as_ref().unwrap();
            assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
            let conds = spec.match_conditions.as_ref().unwrap();
            assert!(conds.iter().any(|c| c.expression
                == "request.userInfo.username != \"system:serviceaccount:kube-pim-system:kube-pim\""));
            let name = p.metadata.name.as_deref().unwrap();
            let glass = conds.iter().any(|c| c.expression.contains("break-glass"));
            assert_eq!(glass, name == "kube-pim-standing-access", "{name}");
            let bs = &b.spec;
            assert_eq!(bs.policy_name, name);
            assert_eq!(bs.validation_actions, ["Deny"]);
        }
        let yaml = all_yaml(&opts());
        assert_eq!(yaml.matches("kind: ValidatingAdmissionPolicy\n").count(), 6);
        assert_eq!(
            yaml.matches("kind: ValidatingAdmissionPolicyBinding\n")
                .count(),
            6
        );
    }
}
