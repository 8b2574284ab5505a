//! `EligibleAssignment` (namespaced, short name `elig`): who may activate a RoleSetting, at
//! which scope, and during which window.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Scope, Subject, is_zero};

/// Makes a subject eligible to activate a RoleSetting in this namespace (Namespace scope) or
/// cluster-wide (Cluster scope, only in the operator's cluster-scope namespace).
// clippy reads the repeated `type_`/`selectable` arguments of separate printcolumn(...) groups
// as duplicated attributes; they are distinct columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "kubepim.io",
    version = "v1alpha1",
    kind = "EligibleAssignment",
    plural = "eligibleassignments",
    shortname = "elig",
    category = "pim",
    namespaced,
    status = "EligibleAssignmentStatus",
    doc = "EligibleAssignment makes a User, Group or ServiceAccount eligible to activate a RoleSetting, in this namespace or (Cluster scope) cluster-wide, during a window.",
    printcolumn(
        name = "Subject",
        type_ = "string",
        json_path = ".spec.subject.name",
        description = "Who is eligible"
    ),
    printcolumn(
        name = "RoleSetting",
        type_ = "string",
        json_path = ".spec.roleSetting"
    ),
    printcolumn(name = "Scope", type_ = "string", json_path = ".spec.scope"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "End",
        type_ = "string",
        json_path = ".spec.endTime",
        description = "End of the window (empty: permanent)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.roleSetting",
    selectable = ".spec.subject.name",
    selectable = ".status.phase"
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.startTime) || !has(self.endTime) || self.endTime > self.startTime")
        .message("endTime must be after startTime: move endTime later or startTime earlier")
        .field_path(".endTime")
)]
pub struct EligibleAssignmentSpec {
    /// The RoleSetting this assignment makes the subject eligible for. It may not exist yet
    /// (GitOps order): the assignment is then Invalid until it exists.
    #[schemars(length(min = 1, max = 253))]
    pub role_setting: String,

    /// Who is eligible: a User, a Group (any member may activate) or a ServiceAccount.
    pub subject: Subject,

    /// Namespace: RoleBindings in this namespace. Cluster: ClusterRoleBindings (allowed only in
    /// the operator's cluster-scope namespace).
    #[serde(default)]
    pub scope: Scope,

    /// Eligible: the subject must activate. Active: access is held for the whole window
    /// without activation (only when the RoleSetting allows it).
    #[serde(default, rename = "type")]
    pub type_: AssignmentType,

    /// Start of the window (RFC 3339). Absent: the assignment's creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,

    /// End of the window (RFC 3339). Absent: permanent, if the RoleSetting allows it.
    /// Activations never outlast it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<DateTime<Utc>>,

    /// Why the subject is eligible (e.g. "Q1 on-call rotation"), for the audit record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub justification: Option<String>,
}

/// Whether an assignment must be activated or holds access for its whole window.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AssignmentType {
    /// The subject may activate the role for a bounded time.
    #[default]
    Eligible,
    /// The subject holds the role for the whole window.
    Active,
}

/// Where an assignment stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AssignmentPhase {
    /// Before startTime.
    Scheduled,
    /// Inside the window; the subject may activate.
    Eligible,
    /// Inside the window of a type Active assignment; access is held.
    Active,
    /// After endTime.
    Expired,
    /// Unusable; the reason (RoleSettingNotFound, NotAuthorizedToBind, PolicyViolation) is in
    /// the conditions.
    Invalid,
}

/// What the operator observed about an assignment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EligibleAssignmentStatus {
    /// Scheduled, Eligible, Active, Expired or Invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<AssignmentPhase>,
    /// Valid (with reason RoleSettingNotFound, NotAuthorizedToBind or PolicyViolation when
    /// False) and others.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When an activation through this assignment last became Active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activation_time: Option<DateTime<Utc>>,
    /// How many activations through this assignment became Active.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub activations: i64,
}
