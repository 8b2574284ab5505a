//! `ActivationRequest` (namespaced, short name `ar`): one activation of a RoleSetting by one
//! requester, and the audit record of what happened to it.
//!
//! The spec is immutable except `deactivate` going false -> true. The rule that enforces it is
//! built from [`SPEC_FIELDS`] with presence parity, so removing and re-adding a field is no way
//! around immutability; a unit test checks that the list names every field of the spec.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema, core::Rule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Duration, Scope, is_zero};

/// The longest name of a request: bindings and Events carry it in labels (63 characters).
pub const MAX_NAME_LENGTH: usize = 63;

/// Every field of [`ActivationRequestSpec`] by its JSON name, except `deactivate`, which has
/// its own one-way rule. The immutability rule is generated from this list.
pub const SPEC_FIELDS: &[&str] = &[
    "roleSetting",
    "scope",
    "duration",
    "startTime",
    "justification",
    "ticket",
    "extends",
    "requester",
];

/// Every field of [`ActivationRequestStatus`] by its JSON name, except `approvals`, which
/// approvers append to. The in-apiserver guard on status writes
/// ([`crate::policies`]) is generated from this list; a unit test checks it is complete.
pub const STATUS_FIELDS: &[&str] = &[
    "phase",
    "assignment",
    "activationTime",
    "expirationTime",
    "bindings",
    "conditions",
    "history",
    "auditedThrough",
    "observedGeneration",
];

/// The CEL rule on `spec` that keeps it immutable except `deactivate` false -> true. Each
/// field is compared with presence parity: `has(self.f) == has(oldSelf.f)` and, when present,
/// equality.
pub fn spec_immutability_rule() -> String {
    let mut parts: Vec<String> = SPEC_FIELDS
        .iter()
        .map(|f| {
            let f = cel_field(f);
            format!(
                "has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})"
            )
        })
        .collect();
    // deactivate is defaulted to false, so it is always present; it may only go false -> true.
    // The clause is parenthesised as a whole: `&&` binds tighter than `||`, and without the
    // parentheses a request whose deactivate is false would accept any edit.
    parts.push(
        "((has(self.deactivate) && self.deactivate) || !has(oldSelf.deactivate) || !oldSelf.deactivate)"
            .to_string(),
    );
    parts.join(" && ")
}

/// CEL escapes property names that are reserved words (`namespace` -> `__namespace__`).
pub fn cel_field(f: &str) -> String {
    const RESERVED: &[&str] = &[
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ];
    if RESERVED.contains(&f) {
        format!("__{f}__")
    } else {
        f.to_string()
    }
}

fn spec_rule() -> Rule {
    Rule::new(spec_immutability_rule()).message(
        "spec is immutable except deactivate (false -> true): create a new ActivationRequest instead of editing this one",
    )
}

/// A request to activate a RoleSetting for a bounded time. Create it with kubectl (or
/// `kubectl pim activate`); kube-pim stamps the requester, checks policy, collects approvals,
/// creates the bindings and removes them at expiry. It then stays as the audit record.
// clippy reads the repeated `type_`/`selectable` arguments of separate printcolumn(...) groups
// as duplicated attributes; they are distinct columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "kubepim.io",
    version = "v1alpha1",
    kind = "ActivationRequest",
    plural = "activationrequests",
    shortname = "ar",
    category = "pim",
    namespaced,
    status = "ActivationRequestStatus",
    doc = "ActivationRequest asks to activate a RoleSetting for a bounded time, with a justification and, where the policy says so, approval. It is the audit record of that activation.",
    printcolumn(name = "Requester", type_ = "string", json_path = ".spec.requester.username"),
    printcolumn(name = "RoleSetting", type_ = "string", json_path = ".spec.roleSetting"),
    printcolumn(name = "Scope", type_ = "string", json_path = ".spec.scope"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expirationTime", description = "When access ends"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    selectable = ".spec.roleSetting",
    selectable = ".spec.requester.username",
    selectable = ".status.phase",
    validation = Rule::new("size(self.metadata.name) <= 63")
        .message("ActivationRequest names are at most 63 characters: use a shorter name or generateName"),
    validation = Rule::new("!has(oldSelf.status) || has(self.status)")
        .message("status cannot be removed: it is the audit record")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = spec_rule())]
pub struct ActivationRequestSpec {
    /// The RoleSetting to activate.
    #[schemars(length(min = 1, max = 253))]
    pub role_setting: String,

    /// Namespace: RoleBindings in this namespace. Cluster: ClusterRoleBindings (the request
    /// must then be in the operator's cluster-scope namespace).
    #[serde(default)]
    pub scope: Scope,

    /// How long access should last (Go-style, e.g. 1h, 90m). Absent: the RoleSetting's
    /// defaultDuration. Never beyond maxDuration or the assignment's endTime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,

    /// When access should start (RFC 3339), at most maxScheduleAhead ahead. Absent: as soon
    /// as the request is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,

    /// Why access is needed; required unless the RoleSetting says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub justification: Option<String>,

    /// A ticket reference (e.g. INC-4711); checked against the RoleSetting's ticketPattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub ticket: Option<String>,

    /// The name of one's own Active or Scheduled request (same namespace, RoleSetting and
    /// scope) that this request extends without a gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub extends: Option<String>,

    /// Set to true to end the request early: Canceled before access started, Deactivated
    /// after. The only field that may change, and only from false to true.
    #[serde(default)]
    pub deactivate: bool,

    /// Who asked. Written by kube-pim's admission webhook from the authenticated user;
    /// whatever a client sends is replaced.
    pub requester: Requester,
}

/// The authenticated identity that created a request, as the apiserver saw it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Requester {
    /// The user name.
    #[schemars(length(min = 1))]
    pub username: String,
    /// The user's UID, when the authenticator provides one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The user's groups at the time of the request.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra attributes of the authentication (e.g. the MFA marker).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, Vec<String>>")]
    pub extra: Extra,
}

/// A requester's `userInfo.extra` (a map from key to values on the wire and in the schema).
///
/// Held as a short list, not a `BTreeMap`: the operator caches every request, and a map's first
/// node takes 544 bytes even for the one key most users have (the apiserver's `credential-id`),
/// 5 MB at 10,000 requests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(
    from = "BTreeMap<String, Vec<String>>",
    into = "BTreeMap<String, Vec<String>>"
)]
pub struct Extra(Box<[(String, Vec<String>)]>);

impl Extra {
    /// The values under `key`.
    pub fn get(&self, key: &str) -> Option<&Vec<String>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets the values under `key`.
    pub fn insert(&mut self, key: String, values: Vec<String>) {
        let mut map = self.to_map();
        map.insert(key, values);
        *self = map.into();
    }

    /// Every key and its values, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<String>)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// As a map (as Kubernetes' `UserInfo` holds it).
    pub fn to_map(&self) -> BTreeMap<String, Vec<String>> {
        self.0.iter().cloned().collect()
    }
}

impl From<BTreeMap<String, Vec<String>>> for Extra {
    fn from(map: BTreeMap<String, Vec<String>>) -> Self {
        // From a map: sorted by key, each key once.
        Self(map.into_iter().collect())
    }
}

impl From<Extra> for BTreeMap<String, Vec<String>> {
    fn from(extra: Extra) -> Self {
        extra.0.into_vec().into_iter().collect()
    }
}

/// The observed state and the audit record of a request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivationRequestStatus {
    /// Pending, Scheduled, Active, or a terminal phase: Expired, Denied, TimedOut, Canceled,
    /// Deactivated, Revoked, Superseded, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RequestPhase>,

    /// The EligibleAssignment currently matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<String>,

    /// Decisions by approvers, in order. Initialised to [] by the operator; approvers append
    /// one entry each with a JSON patch to the status subresource, and the webhook writes the
    /// approver's identity and the time. Existing entries never change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("size(self) >= size(oldSelf) && oldSelf.all(a, a in self)").message("approvals are append-only: add one entry at the end (op add, path /status/approvals/-)"))]
    pub approvals: Option<Vec<Approval>>,

    /// When access started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_time: Option<DateTime<Utc>>,

    /// When access ends (or ended). Never after the assignment's endTime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<DateTime<Utc>>,

    /// The RoleBindings or ClusterRoleBindings kube-pim made for this request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub bindings: Vec<BindingRef>,

    /// Approved, Active, and Failed with its reason (e.g. QuorumUnreachable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// State-machine transitions, oldest first; append-only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("size(self) >= size(oldSelf) && oldSelf.all(h, h in self)").message("history is append-only"))]
    pub history: Vec<HistoryEntry>,

    /// How many history entries have been written to the audit stream.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0))]
    pub audited_through: i64,

    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Where a request stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RequestPhase {
    /// Waiting for approval.
    Pending,
    /// Approved (or needing none), waiting for startTime.
    Scheduled,
    /// Access granted until expirationTime.
    Active,
    /// Access ended at expirationTime.
    Expired,
    /// An approver denied it.
    Denied,
    /// No decision within the approval timeout.
    TimedOut,
    /// Deactivated before access started.
    Canceled,
    /// Deactivated while access was granted.
    Deactivated,
    /// Eligibility or policy was withdrawn.
    Revoked,
    /// An extension took over its access.
    Superseded,
    /// It cannot be carried out (the reason is in conditions).
    Failed,
}

/// One approver's decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// Who decided; written by the admission webhook, never by the client.
    pub approver: Approver,
    /// Approved or Denied.
    pub decision: ApprovalDecision,
    /// Why; required for a Deny, and for an approval when the policy says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// When the decision was made; written by the admission webhook.
    pub time: DateTime<Utc>,
}

/// The authenticated identity of an approver.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approver {
    /// The approver's user name.
    #[schemars(length(min = 1))]
    pub username: String,
    /// The approver's UID, when the authenticator provides one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The approver Group through which this user qualified, if not named directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_group: Option<String>,
}

/// An approver's decision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ApprovalDecision {
    /// Counts toward minApprovals.
    Approved,
    /// Ends the request.
    Denied,
}

/// A binding kube-pim made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingRef {
    /// RoleBinding or ClusterRoleBinding.
    pub kind: BindingKind,
    /// The RoleBinding's namespace (absent for a ClusterRoleBinding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The binding's name (`kubepim-` and 12 hex digits).
    pub name: String,
}

/// The kind of a binding.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum BindingKind {
    /// A namespaced RoleBinding.
    RoleBinding,
    /// A ClusterRoleBinding.
    ClusterRoleBinding,
}

/// One state-machine transition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// 1, 2, 3, ... in order; with the request's uid, the audit stream's idempotency key.
    #[schemars(range(min = 1))]
    pub seq: i64,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// Who caused it: the requester, an approver, or the operator.
    pub actor: String,
    /// What happened.
    pub action: HistoryAction,
    /// A human-readable account of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// A transition of a request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum HistoryAction {
    /// The request was created.
    Requested,
    /// The quorum was reached.
    Approved,
    /// An approver denied it.
    Denied,
    /// Approved, waiting for startTime.
    Scheduled,
    /// Bindings were created; access started.
    Activated,
    /// Another assignment now backs the request.
    AssignmentSwitched,
    /// Access ended at expirationTime.
    Expired,
    /// No decision within the approval timeout.
    TimedOut,
    /// Deactivated before access started.
    Canceled,
    /// Deactivated while Active.
    Deactivated,
    /// Eligibility or policy was withdrawn.
    Revoked,
    /// An extension took over.
    Superseded,
    /// It could not be carried out.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn extra_is_a_map_on_the_wire() {
        let wire = serde_json::json!({"b": ["2"], "a": ["1", "one"]});
        let mut extra: Extra = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(
            extra.get("a"),
            Some(&vec!["1".to_string(), "one".to_string()])
        );
        assert_eq!(extra.get("c"), None);
        assert_eq!(serde_json::to_value(&extra).unwrap(), wire);
        let keys: Vec<&String> = extra.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b"], "sorted, as a map is");
        extra.insert("a".into(), vec!["x".into()]);
        extra.insert("0".into(), vec![]);
        assert_eq!(
            serde_json::to_value(&extra).unwrap(),
            serde_json::json!({"0": [], "a": ["x"], "b": ["2"]})
        );
        assert_eq!(extra.to_map().len(), 3);
        let empty: Requester =
            serde_json::from_value(serde_json::json!({"username": "u"})).unwrap();
        assert_eq!(empty.extra, Extra::default());
    }

    /// The immutability rule must name every spec field, or a new field would be mutable.
    #[test]
    fn immutability_rule_names_every_spec_field() {
        let crd = serde_json::to_value(ActivationRequest::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let props: Vec<&String> = spec["properties"].as_object().unwrap().keys().collect();
        let rule = spec_immutability_rule();
        for p in &props {
            let f = cel_field(p);
            if *p == "deactivate" {
                assert!(rule.contains("oldSelf.deactivate"), "rule lacks deactivate");
                continue;
            }
            assert!(
                rule.contains(&format!("has(self.{f}) == has(oldSelf.{f})")),
                "rule lacks presence parity for {p}"
            );
            assert!(
                rule.contains(&format!("self.{f} == oldSelf.{f}")),
                "rule lacks equality for {p}"
            );
        }
        assert_eq!(
            props.len(),
            SPEC_FIELDS.len() + 1,
            "SPEC_FIELDS is out of date: {props:?}"
        );
        // And the rule is actually attached to spec.
        let rules = spec["x-kubernetes-validations"]
            .as_array()
            .expect("spec has CEL rules");
        assert!(rules.iter().any(|r| r["rule"] == rule));
    }

    /// Every clause is joined with `&&` at the top level, so one failing clause fails the rule.
    #[test]
    fn immutability_rule_clauses_are_all_required() {
        let rule = spec_immutability_rule();
        let mut depth = 0i32;
        let bytes = rule.as_bytes();
        for (i, c) in rule.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                '|' if depth == 0 && bytes.get(i + 1) == Some(&b'|') => {
                    panic!("top-level || at {i} makes the other clauses optional: {rule}")
                }
                _ => {}
            }
        }
        assert_eq!(depth, 0);
    }

    /// The status guard must compare every status field but approvals, or a forged field
    /// would pass it.
    #[test]
    fn status_fields_name_every_status_field_but_approvals() {
        let crd = serde_json::to_value(ActivationRequest::crd()).unwrap();
        let status =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        let mut props: Vec<&str> = status["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|p| *p != "approvals")
            .collect();
        props.sort();
        let mut listed = STATUS_FIELDS.to_vec();
        listed.sort();
        assert_eq!(props, listed, "STATUS_FIELDS is out of date");
    }

    #[test]
    fn reserved_words_are_escaped() {
        assert_eq!(cel_field("namespace"), "__namespace__");
        assert_eq!(cel_field("ticket"), "ticket");
    }
}
