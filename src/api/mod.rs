//! The kube-pim API (`kubepim.io/v1alpha1`): one file per kind, plus the value types they share.
//!
//! These types are pure data. They are the single source of the CRD schemas (`kube-pim crds`),
//! so every field's `///` doc is what `kubectl explain` shows, every default lives in the schema
//! (serde defaults mirror them so the domain sees the same values), and everything that can be
//! checked on one object alone is a CEL rule the apiserver enforces.

pub mod activation_request;
pub mod duration;
pub mod eligible_assignment;
pub mod role_setting;

pub use activation_request::{
    ActivationRequest, ActivationRequestSpec, ActivationRequestStatus, Approval, ApprovalDecision,
    Approver, BindingKind, BindingRef, HistoryAction, HistoryEntry, RequestPhase, Requester,
};
pub use duration::Duration;
pub use eligible_assignment::{
    AssignmentPhase, AssignmentType, EligibleAssignment, EligibleAssignmentSpec,
    EligibleAssignmentStatus,
};
pub use role_setting::{
    ActivationPolicy, ApprovalPolicy, AssignmentPolicy, NotificationEvent, NotificationFormat,
    NotificationWebhook, Notifications, RoleRef, RoleSetting, RoleSettingSpec, RoleSettingStatus,
    SecretKeyRef, StandingAccess, UnmanagedBinding,
};

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every kube-pim resource.
pub const GROUP: &str = "kubepim.io";
/// The API version served and stored.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get pim` category shared by the three kinds.
pub const CATEGORY: &str = "pim";

/// Where an activation grants its roles.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Scope {
    /// RoleBindings in one namespace (the namespace of the assignment and request).
    #[default]
    Namespace,
    /// ClusterRoleBindings across the cluster; such assignments and requests live only in the
    /// operator's cluster-scope namespace.
    Cluster,
}

/// What kind of identity a subject or an approver is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SubjectKind {
    /// A user name as the apiserver authenticates it.
    User,
    /// A group: any authenticated member qualifies.
    Group,
    /// A ServiceAccount, named with its namespace.
    ServiceAccount,
}

/// An identity: a User, a Group, or a ServiceAccount (with its namespace).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.kind != 'ServiceAccount' || (has(self.__namespace__) && size(self.__namespace__) > 0)")
        .message("a ServiceAccount needs its namespace: set namespace"),
    validation = Rule::new("self.kind == 'ServiceAccount' || !has(self.__namespace__)")
        .message("namespace is only for kind ServiceAccount: remove it"),
    validation = Rule::new("self.kind != 'Group' || !self.name.startsWith('system:')")
        .message("system:* groups (such as system:authenticated) cannot be named: name a group of real people"),
    validation = Rule::new("self.kind != 'User' || !self.name.startsWith('system:serviceaccount:')")
        .message("write a ServiceAccount as kind ServiceAccount with name and namespace, not as a User")
)]
pub struct Subject {
    /// User, Group or ServiceAccount.
    pub kind: SubjectKind,
    /// The user name, group name, or ServiceAccount name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The ServiceAccount's namespace; required for kind ServiceAccount, forbidden otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn is_zero(n: &i64) -> bool {
    *n == 0
}

pub(crate) fn yes() -> bool {
    true
}
