//! `RoleSetting` (cluster-scoped, short name `rset`): the activation policy for a bundle of
//! ClusterRoles — how long, how far ahead, with what justification, approved by whom, and what
//! assignments of it may look like.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Duration, Scope, Subject, is_false, yes};

/// The activation policy for a bundle of ClusterRoles. Requests and assignments name it;
/// it decides how long access may last and who must approve it.
// clippy reads the repeated `type_`/`selectable` arguments of separate printcolumn(...) groups
// as duplicated attributes; they are distinct columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "kubepim.io",
    version = "v1alpha1",
    kind = "RoleSetting",
    plural = "rolesettings",
    shortname = "rset",
    category = "pim",
    status = "RoleSettingStatus",
    doc = "RoleSetting is the activation policy for a bundle of ClusterRoles: duration limits, justification, ticket and MFA requirements, approval, and what EligibleAssignments of it may look like.",
    printcolumn(
        name = "Roles",
        type_ = "string",
        json_path = ".spec.roleRefs[*].name",
        description = "The ClusterRoles one activation grants"
    ),
    printcolumn(
        name = "Approval",
        type_ = "boolean",
        json_path = ".spec.approval.required",
        description = "Whether activation needs approval"
    ),
    printcolumn(
        name = "MaxDuration",
        type_ = "string",
        json_path = ".spec.activation.maxDuration",
        description = "Longest activation"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RoleSettingSpec {
    /// The ClusterRoles granted together by one activation (one binding each).
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(o, o.name == r.name))").message("each ClusterRole may be listed once: remove the duplicate"))]
    pub role_refs: Vec<RoleRef>,

    /// Where activations may grant the roles: Namespace (RoleBindings in the request's
    /// namespace) and/or Cluster (ClusterRoleBindings).
    #[serde(default = "default_scopes")]
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub scopes: Vec<Scope>,

    /// Limits and requirements for each activation.
    #[serde(default)]
    pub activation: ActivationPolicy,

    /// Whether activations need approval, and from whom.
    #[serde(default)]
    pub approval: ApprovalPolicy,

    /// What EligibleAssignments of this RoleSetting may look like.
    #[serde(default)]
    pub assignment: AssignmentPolicy,

    /// Audit: report bindings of these roles that kube-pim did not make. Deny: also refuse
    /// creating such bindings (except by the operator and the break-glass group).
    #[serde(default)]
    pub standing_access: StandingAccess,

    /// Must be true when a role in roleRefs can create its own persistence (bind, escalate,
    /// impersonate, write Roles or bindings, create tokens): an activated user could then keep
    /// access past expiry. Setting it records that this risk was accepted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub acknowledge_persistence_risk: bool,

    /// Refuse deleting the last EligibleAssignment of this RoleSetting (so nobody can lock the
    /// organisation out of a break-glass role by accident).
    #[serde(default, skip_serializing_if = "is_false")]
    pub protect_last_assignment: bool,

    /// Where to announce requests, decisions, activations and expiries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Notifications>,
}

/// A ClusterRole granted by an activation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    /// The name of the ClusterRole (also used for RoleBindings in Namespace scope).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Limits and requirements for each activation of a RoleSetting.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.defaultDuration) || duration(self.defaultDuration) <= duration(self.maxDuration)")
        .message("defaultDuration must not exceed maxDuration: shorten defaultDuration or raise maxDuration")
        .field_path(".defaultDuration"),
    validation = Rule::new("!has(self.maxContinuous) || duration(self.maxContinuous) >= duration(self.maxDuration)")
        .message("maxContinuous must be at least maxDuration: raise maxContinuous or remove it (default 3x maxDuration)")
        .field_path(".maxContinuous")
)]
pub struct ActivationPolicy {
    /// The longest activation; longer requests are refused at admission.
    #[serde(default = "default_max_duration")]
    pub max_duration: Duration,

    /// The duration of a request that names none. Absent means maxDuration. Must not exceed
    /// maxDuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_duration: Option<Duration>,

    /// How far in the future a request's startTime may be.
    #[serde(default = "default_max_schedule_ahead")]
    pub max_schedule_ahead: Duration,

    /// The longest unbroken access a chain of extensions may give, counted from the start of
    /// the first activation. Absent means 3x maxDuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_continuous: Option<Duration>,

    /// Requests must carry a justification.
    #[serde(default = "yes")]
    pub require_justification: bool,

    /// Requests must carry a ticket reference.
    #[serde(default)]
    pub require_ticket: bool,

    /// A regular expression every ticket must match when one is given, e.g. `^INC-[0-9]+$`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub ticket_pattern: Option<String>,

    /// The requester's authentication must carry proof of MFA (the operator's configured
    /// `extra` key and values, default `kubepim.io/amr: mfa`). ServiceAccounts never satisfy it.
    #[serde(default, rename = "requireMFA")]
    pub require_mfa: bool,
}

impl Default for ActivationPolicy {
    fn default() -> Self {
        Self {
            max_duration: default_max_duration(),
            default_duration: None,
            max_schedule_ahead: default_max_schedule_ahead(),
            max_continuous: None,
            require_justification: true,
            require_ticket: false,
            ticket_pattern: None,
            require_mfa: false,
        }
    }
}

/// Whether activations need approval, and from whom.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.required || size(self.approvers) > 0")
        .message("approval.required is true but no approvers are listed: add approvers")
        .field_path(".approvers"),
    validation = Rule::new("self.allowServiceAccountApprovers || self.approvers.all(a, a.kind != 'ServiceAccount')")
        .message("a ServiceAccount approver needs allowServiceAccountApprovers: true, or list a User or Group instead")
        .field_path(".approvers")
)]
pub struct ApprovalPolicy {
    /// Activation needs minApprovals approvals from the approvers.
    #[serde(default)]
    pub required: bool,

    /// Who may approve or deny: Users, Groups (any member), and ServiceAccounts (only with
    /// allowServiceAccountApprovers). system:* groups are refused.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub approvers: Vec<Subject>,

    /// How many distinct valid approvers must approve. One valid Deny ends the request.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 16))]
    pub min_approvals: i32,

    /// Approvers must give a reason when approving (a Deny always needs one).
    #[serde(default)]
    pub require_reason: bool,

    /// A request still Pending (or Scheduled and not started) after this long is TimedOut.
    #[serde(default = "default_approval_timeout")]
    pub timeout: Duration,

    /// Allow ServiceAccounts as approvers (off by default: automation should not approve).
    #[serde(default)]
    pub allow_service_account_approvers: bool,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        Self {
            required: false,
            approvers: Vec::new(),
            min_approvals: 1,
            require_reason: false,
            timeout: default_approval_timeout(),
            allow_service_account_approvers: false,
        }
    }
}

/// What EligibleAssignments of a RoleSetting may look like.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentPolicy {
    /// May assignments have no endTime (permanent eligibility)?
    #[serde(default = "yes")]
    pub allow_permanent: bool,

    /// The longest window (startTime to endTime) of a time-bound assignment. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<Duration>,

    /// May assignments be of type Active (access held for the whole window, no activation)?
    #[serde(default)]
    pub allow_active: bool,
}

impl Default for AssignmentPolicy {
    fn default() -> Self {
        Self {
            allow_permanent: true,
            max_duration: None,
            allow_active: false,
        }
    }
}

/// How kube-pim treats bindings of governed roles that it did not make.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StandingAccess {
    /// Report them in status.unmanagedBindings.
    #[default]
    Audit,
    /// Report them, and refuse creating or updating them.
    Deny,
}

/// Where a RoleSetting's events are announced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notifications {
    /// HTTP endpoints that receive events, asynchronously and with retries.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub webhooks: Vec<NotificationWebhook>,
    /// How long before an activation's expirationTime the Expiring event is sent (once; at
    /// activation if the activation is shorter).
    #[serde(default = "default_expiring_before")]
    pub expiring_before: Duration,
}

/// One notification endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationWebhook {
    /// The endpoint. https only; loopback, link-local and cluster-internal addresses are refused
    /// unless the operator is started with a flag that allows them.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http']").message("url must be an absolute https:// URL"))]
    pub url: String,

    /// CloudEvents (structured JSON, CloudEvents 1.0) or Slack (incoming-webhook JSON).
    #[serde(default)]
    pub format: NotificationFormat,

    /// Which events to send. Default: all of them.
    #[serde(default = "all_events")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub events: Vec<NotificationEvent>,

    /// A key in a Secret in the operator's own namespace whose value signs each delivery
    /// (HMAC-SHA256). Secrets in other namespaces are never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// The body format of a notification.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NotificationFormat {
    /// CloudEvents 1.0 structured JSON.
    #[default]
    CloudEvents,
    /// Slack-compatible incoming-webhook JSON.
    Slack,
}

/// An event a notification webhook can subscribe to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum NotificationEvent {
    /// A request was created and awaits a decision.
    Requested,
    /// A request reached its quorum.
    Approved,
    /// A request was denied.
    Denied,
    /// Access was granted.
    Activated,
    /// Access ends soon.
    Expiring,
    /// Access ended at its expiration time.
    Expired,
    /// Access was withdrawn before its expiration time.
    Revoked,
    /// Permissions were still present after a revocation.
    ResidualAccess,
}

/// A key in a Secret of the operator's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name (in the operator's namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What the operator observed about a RoleSetting.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleSettingStatus {
    /// RolesFound (every roleRef exists), QuorumReachable (minApprovals can be met), Ready.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many EligibleAssignments name this RoleSetting.
    #[serde(default)]
    pub assignments: i64,
    /// How many activations of this RoleSetting are Active now.
    #[serde(default)]
    pub active_activations: i64,
    /// Bindings of the governed ClusterRoles that kube-pim did not make (standing access).
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub unmanaged_bindings: Vec<UnmanagedBinding>,
}

/// A RoleBinding or ClusterRoleBinding of a governed role that kube-pim did not make.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedBinding {
    /// RoleBinding or ClusterRoleBinding.
    pub kind: String,
    /// The RoleBinding's namespace (absent for a ClusterRoleBinding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The binding's name.
    pub name: String,
    /// The governed ClusterRole it binds.
    pub role: String,
    /// Its subjects, as kind:name (or ServiceAccount:namespace/name).
    #[serde(default)]
    pub subjects: Vec<String>,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Namespace]
}

fn default_max_duration() -> Duration {
    "1h".parse().expect("valid literal")
}

fn default_max_schedule_ahead() -> Duration {
    "24h".parse().expect("valid literal")
}

impl Default for Notifications {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            expiring_before: default_expiring_before(),
        }
    }
}

fn default_expiring_before() -> Duration {
    "10m".parse().expect("valid literal")
}

fn default_approval_timeout() -> Duration {
    "24h".parse().expect("valid literal")
}

fn one() -> i32 {
    1
}

fn all_events() -> Vec<NotificationEvent> {
    use NotificationEvent::*;
    vec![
        Requested,
        Approved,
        Denied,
        Activated,
        Expiring,
        Expired,
        Revoked,
        ResidualAccess,
    ]
}
