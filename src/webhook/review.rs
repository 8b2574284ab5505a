//! The admission decisions, pure: (the request's objects, the caller, what the caches hold,
//! now) -> allow, allow with a patch, or deny with a message that names the fix.
//!
//! Mutation only stamps identities (the requester; an approver's identity and time; who wrote
//! an assignment), working on raw JSON because what clients send lacks exactly those required
//! fields. Every decision is in the validating functions, which run after mutation on typed
//! objects. The operator's own writes never reach here (the webhook configurations exclude its
//! user name with matchConditions), so nothing below needs an exemption for it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation, jsonptr::PointerBuf};
use k8s_openapi::api::authentication::v1::UserInfo;
use serde_json::{Value, json};

use crate::{
    api::{
        ActivationRequest, ApprovalDecision, EligibleAssignment, RequestPhase, RoleSetting,
        SubjectKind,
    },
    controller::FINALIZER,
    decide::{eligibility, policy, request::is_terminal, service_account_username},
};

pub use crate::authz::AUTHORIZED_BY;
/// The annotation that records who set `deactivate: true` on a request (stamped once).
pub const DEACTIVATED_BY: &str = crate::decide::request::DEACTIVATED_BY;

/// What admission answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Let it through unchanged.
    Allow,
    /// Let it through with this JSON patch applied.
    Patch(Patch),
    /// Refuse, for this reason, with this message.
    Deny(Reason, String),
}

/// Why admission refused, as a stable code: the label of `kube_pim_webhook_denials_total` and
/// the `code` field of the "admission denied" log line. Messages are for people and may be
/// reworded; these codes are for alerts and dashboards and do not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The object does not match the schema kube-pim reads it with.
    Malformed,
    /// `spec.requester` is not the caller as authenticated (invariant 1).
    RequesterMismatch,
    /// kube-pim's finalizer, owner references, `kubepim.io/*` labels or annotations, or the
    /// authorized-by stamp changed by someone else (invariant 2).
    ProtectedMetadata,
    /// The requester already has the most open requests allowed.
    TooManyOpenRequests,
    /// The RoleSetting named does not exist (any more).
    RoleSettingNotFound,
    /// The RoleSetting's roles can create their own persistence and it is not acknowledged.
    PersistenceRiskUnacknowledged,
    /// The RoleSetting does not allow the scope.
    ScopeNotAllowed,
    /// Cluster scope outside the cluster-scope namespace.
    WrongNamespaceForClusterScope,
    /// The duration exceeds the RoleSetting's maxDuration.
    DurationTooLong,
    /// startTime is more than maxScheduleAhead ahead.
    StartTooFarAhead,
    /// The RoleSetting requires a justification.
    JustificationRequired,
    /// The RoleSetting requires a ticket.
    TicketRequired,
    /// The ticket does not match the RoleSetting's ticketPattern.
    TicketMismatch,
    /// The RoleSetting's ticketPattern is not a valid regular expression.
    InvalidTicketPattern,
    /// A notification webhook's URL is not an allowed target.
    NotificationTargetRefused,
    /// The RoleSetting requires MFA and the requester's login carries none.
    MfaRequired,
    /// No EligibleAssignment makes the requester eligible.
    NotEligible,
    /// The request extended already has an open extension.
    ExtensionAlreadyOpen,
    /// `extends` names no Active or Scheduled request of the requester's own.
    ExtensionInvalid,
    /// The spec changed other than `deactivate` false -> true.
    ImmutableSpec,
    /// The caller may not deactivate this request.
    DeactivateNotAllowed,
    /// A status write that changes more than appending one approval (or drops status).
    ForbiddenStatusChange,
    /// A decision on a request that is not (yet) Pending with approvals initialised.
    NotPending,
    /// The approval names someone other than the caller.
    ApproverMismatch,
    /// The requester deciding on their own request.
    SelfApproval,
    /// The caller is not an approver of the RoleSetting.
    NotApprover,
    /// A decision after the approval timeout.
    ApprovalTimeout,
    /// A second decision by the same approver.
    AlreadyDecided,
    /// A Deny, or a RoleSetting with requireReason, without a reason.
    ReasonRequired,
    /// Deleting an ended request whose last transition is not on the audit stream yet.
    NotYetAudited,
    /// Deleting an open request without break glass (invariant 7).
    OpenRequestDelete,
    /// The writer may not bind the roles where the object grants them (invariant 3).
    BindNotAllowed,
    /// An EligibleAssignment the RoleSetting's assignment policy forbids.
    AssignmentPolicy,
    /// Deleting the last assignment of a RoleSetting with protectLastAssignment.
    LastAssignment,
    /// A SubjectAccessReview kube-pim needed was not answered (fail closed).
    AuthorizationCheckFailed,
    /// kube-pim could not build its own answer (fail closed).
    Internal,
    /// A refusal without a more specific code.
    Other,
}

impl Reason {
    /// Every reason code.
    pub const ALL: [Reason; 37] = [
        Reason::Malformed,
        Reason::RequesterMismatch,
        Reason::ProtectedMetadata,
        Reason::TooManyOpenRequests,
        Reason::RoleSettingNotFound,
        Reason::PersistenceRiskUnacknowledged,
        Reason::ScopeNotAllowed,
        Reason::WrongNamespaceForClusterScope,
        Reason::DurationTooLong,
        Reason::StartTooFarAhead,
        Reason::JustificationRequired,
        Reason::TicketRequired,
        Reason::TicketMismatch,
        Reason::InvalidTicketPattern,
        Reason::NotificationTargetRefused,
        Reason::MfaRequired,
        Reason::NotEligible,
        Reason::ExtensionAlreadyOpen,
        Reason::ExtensionInvalid,
        Reason::ImmutableSpec,
        Reason::DeactivateNotAllowed,
        Reason::ForbiddenStatusChange,
        Reason::NotPending,
        Reason::ApproverMismatch,
        Reason::SelfApproval,
        Reason::NotApprover,
        Reason::ApprovalTimeout,
        Reason::AlreadyDecided,
        Reason::ReasonRequired,
        Reason::NotYetAudited,
        Reason::OpenRequestDelete,
        Reason::BindNotAllowed,
        Reason::AssignmentPolicy,
        Reason::LastAssignment,
        Reason::AuthorizationCheckFailed,
        Reason::Internal,
        Reason::Other,
    ];

    /// The code (snake_case).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::RequesterMismatch => "requester_mismatch",
            Reason::ProtectedMetadata => "protected_metadata",
            Reason::TooManyOpenRequests => "too_many_open_requests",
            Reason::RoleSettingNotFound => "role_setting_not_found",
            Reason::PersistenceRiskUnacknowledged => "persistence_risk_unacknowledged",
            Reason::ScopeNotAllowed => "scope_not_allowed",
            Reason::WrongNamespaceForClusterScope => "wrong_namespace_for_cluster_scope",
            Reason::DurationTooLong => "duration_too_long",
            Reason::StartTooFarAhead => "start_too_far_ahead",
            Reason::JustificationRequired => "justification_required",
            Reason::TicketRequired => "ticket_required",
            Reason::TicketMismatch => "ticket_mismatch",
            Reason::InvalidTicketPattern => "invalid_ticket_pattern",
            Reason::NotificationTargetRefused => "notification_target_refused",
            Reason::MfaRequired => "mfa_required",
            Reason::NotEligible => "not_eligible",
            Reason::ExtensionAlreadyOpen => "extension_already_open",
            Reason::ExtensionInvalid => "extension_invalid",
            Reason::ImmutableSpec => "immutable_spec",
            Reason::DeactivateNotAllowed => "deactivate_not_allowed",
            Reason::ForbiddenStatusChange => "forbidden_status_change",
            Reason::NotPending => "not_pending",
            Reason::ApproverMismatch => "approver_mismatch",
            Reason::SelfApproval => "self_approval",
            Reason::NotApprover => "not_approver",
            Reason::ApprovalTimeout => "approval_timeout",
            Reason::AlreadyDecided => "already_decided",
            Reason::ReasonRequired => "reason_required",
            Reason::NotYetAudited => "not_yet_audited",
            Reason::OpenRequestDelete => "open_request_delete",
            Reason::BindNotAllowed => "bind_not_allowed",
            Reason::AssignmentPolicy => "assignment_policy",
            Reason::LastAssignment => "last_assignment",
            Reason::AuthorizationCheckFailed => "authorization_check_failed",
            Reason::Internal => "internal",
            Reason::Other => "other",
        }
    }

    /// The code of a policy [`crate::decide::Violation`] (its CamelCase reason, as in the
    /// conditions of a request the controller fails); [`Reason::Other`] for one not known here.
    pub fn of_violation(reason: &str) -> Self {
        match reason {
            "ScopeNotAllowed" => Reason::ScopeNotAllowed,
            "WrongNamespaceForClusterScope" => Reason::WrongNamespaceForClusterScope,
            "DurationTooLong" => Reason::DurationTooLong,
            "StartTooFarAhead" => Reason::StartTooFarAhead,
            "JustificationRequired" => Reason::JustificationRequired,
            "TicketRequired" => Reason::TicketRequired,
            "TicketMismatch" => Reason::TicketMismatch,
            "InvalidTicketPattern" => Reason::InvalidTicketPattern,
            "MFARequired" => Reason::MfaRequired,
            "PolicyViolation" => Reason::AssignmentPolicy,
            _ => Reason::Other,
        }
    }
}

/// The webhook's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The only namespace for Cluster scope.
    pub cluster_scope_namespace: String,
    /// How MFA is proven.
    pub mfa: policy::MfaConfig,
    /// A group whose members may delete open requests (break glass), if any.
    pub break_glass_group: Option<String>,
    /// The most open (not yet ended) requests one requester may have at a time.
    pub max_open_requests: usize,
    /// Where RoleSettings' notification webhooks may point.
    pub notification_targets: crate::notify::TargetPolicy,
}

fn op_add(path: &str, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::parse(path).expect("valid pointer"),
        value,
    })
}

fn op_replace(path: &str, value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation {
        path: PointerBuf::parse(path).expect("valid pointer"),
        value,
    })
}

/// The caller as kube-pim records it: username, uid, groups, extra.
pub fn identity(user: &UserInfo) -> Value {
    let mut v = json!({
        "username": user.username.clone().unwrap_or_default(),
        "groups": user.groups.clone().unwrap_or_default(),
        "extra": user.extra.clone().unwrap_or_default(),
    });
    if let Some(uid) = user.uid.as_ref().filter(|u| !u.is_empty()) {
        v["uid"] = json!(uid);
    }
    v
}

fn username(user: &UserInfo) -> &str {
    user.username.as_deref().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Mutation: stamping identities.
// ---------------------------------------------------------------------------------------------

/// ActivationRequest CREATE: `spec.requester` is the authenticated caller, whatever was sent,
/// and the request carries kube-pim's finalizer from birth (so the operator's first write can
/// be the binding, not the finalizer: a request can never hold access without it).
pub fn stamp_requester(object: &Value, user: &UserInfo) -> Verdict {
    let op = if object.pointer("/spec/requester").is_some() {
        op_replace
    } else {
        op_add
    };
    let mut ops = vec![op("/spec/requester", identity(user))];
    match object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
    {
        Some(f) if f.iter().any(|f| f == FINALIZER) => {}
        Some(_) => ops.push(op_add("/metadata/finalizers/-", json!(FINALIZER))),
        None => ops.push(op_add("/metadata/finalizers", json!([FINALIZER]))),
    }
    Verdict::Patch(Patch(ops))
}

/// ActivationRequest UPDATE: when `deactivate` goes false -> true, record who did it in the
/// `kubepim.io/deactivated-by` annotation (the history names them, not the requester).
pub fn stamp_deactivated_by(old: &Value, new: &Value, user: &UserInfo) -> Verdict {
    let flag = |v: &Value| {
        v.pointer("/spec/deactivate")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    if flag(old) || !flag(new) {
        return Verdict::Allow;
    }
    let mut ops = Vec::new();
    if new
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_none()
    {
        ops.push(op_add("/metadata/annotations", json!({})));
    }
    ops.push(op_add(
        &format!(
            "/metadata/annotations/{}",
            DEACTIVATED_BY.replace('/', "~1")
        ),
        json!(username(user)),
    ));
    Verdict::Patch(Patch(ops))
}

/// The approver Group through which `user` qualifies (None when listed directly).
fn via_group(rs: &RoleSetting, user: &UserInfo) -> Option<String> {
    let name = username(user);
    let a = &rs.spec.approval;
    let direct = a.approvers.iter().any(|s| match s.kind {
        SubjectKind::User => s.name == name,
        SubjectKind::ServiceAccount => {
            s.namespace
                .as_deref()
                .map(|ns| service_account_username(ns, &s.name))
                .as_deref()
                == Some(name)
        }
        SubjectKind::Group => false,
    });
    if direct {
        return None;
    }
    let groups = user.groups.clone().unwrap_or_default();
    a.approvers
        .iter()
        .filter(|s| s.kind == SubjectKind::Group)
        .find(|s| groups.contains(&s.name))
        .map(|s| s.name.clone())
}

/// ActivationRequest status UPDATE: when exactly one approval was appended, its `approver` is
/// the caller (and the Group it qualifies through) and its `time` is now. Anything else is
/// left for validation to refuse.
pub fn stamp_approval(
    old: &Value,
    new: &Value,
    user: &UserInfo,
    rs: Option<&RoleSetting>,
    now: DateTime<Utc>,
) -> Verdict {
    let (Some(old_list), Some(new_list)) = (
        old.pointer("/status/approvals").and_then(Value::as_array),
        new.pointer("/status/approvals").and_then(Value::as_array),
    ) else {
        return Verdict::Allow;
    };
    if new_list.len() != old_list.len() + 1 {
        return Verdict::Allow;
    }
    let i = old_list.len();
    let mut approver = json!({"username": username(user)});
    if let Some(uid) = user.uid.as_ref().filter(|u| !u.is_empty()) {
        approver["uid"] = json!(uid);
    }
    if let Some(g) = rs.and_then(|rs| via_group(rs, user)) {
        approver["viaGroup"] = json!(g);
    }
    let time = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // `add` on an object member replaces it: whatever the client sent is overwritten.
    Verdict::Patch(Patch(vec![
        op_add(&format!("/status/approvals/{i}/approver"), approver),
        op_add(&format!("/status/approvals/{i}/time"), json!(time)),
    ]))
}

/// EligibleAssignment CREATE/UPDATE: record who wrote it (the identity whose `bind` permission
/// the controller re-checks), replacing any value sent.
pub fn stamp_authorized_by(object: &Value, user: &UserInfo) -> Verdict {
    let value = Value::String(identity(user).to_string());
    let mut ops = Vec::new();
    if object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_none()
    {
        ops.push(op_add("/metadata/annotations", json!({})));
    }
    ops.push(op_add(
        &format!("/metadata/annotations/{}", AUTHORIZED_BY.replace('/', "~1")),
        value,
    ));
    Verdict::Patch(Patch(ops))
}

// ---------------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------------

/// What the webhook knows when a request is created.
#[derive(Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The RoleSetting the request names, if it exists.
    pub role_setting: Option<&'a RoleSetting>,
    /// The assignments of the request's namespace.
    pub assignments: &'a [&'a EligibleAssignment],
    /// The requests of the request's namespace (for `extends`).
    pub requests: &'a [&'a ActivationRequest],
    /// The persistence risks of the RoleSetting's roles.
    pub role_risks: &'a [(String, Vec<String>)],
    /// How many open requests the requester has already, in every namespace.
    pub open_by_requester: usize,
}

/// ActivationRequest CREATE: everything policy forbids, refused at once.
pub fn validate_request_create(
    ar: &ActivationRequest,
    user: &UserInfo,
    facts: &RequestFacts<'_>,
    s: &Settings,
    now: DateTime<Utc>,
) -> Verdict {
    let RequestFacts {
        role_setting: rs,
        assignments,
        requests,
        role_risks,
        open_by_requester,
    } = *facts;
    let ns = ar.metadata.namespace.as_deref().unwrap_or_default();
    // Mutation stamped the requester; refuse if anything changed it since (defence in depth).
    // Mutation stamped the whole identity; refuse if anything changed any part of it since
    // (another mutating webhook, say): groups and extra decide eligibility and MFA.
    if serde_json::to_value(&ar.spec.requester).ok() != Some(identity(user)) {
        return Verdict::Deny(
            Reason::RequesterMismatch,
            "spec.requester must be the caller exactly as authenticated: it is set by kube-pim, leave it out".into(),
        );
    }
    // What only kube-pim may set, on a new request as on an existing one: an owner reference
    // would let garbage collection delete the record, a finalizer would pin it. kube-pim's own
    // finalizer is the one the mutation above stamps on every new request.
    let mut stamped = ar.metadata.clone();
    if let Some(f) = stamped.finalizers.as_mut() {
        f.retain(|f| f != FINALIZER);
    }
    if let Some(msg) = protected_metadata(&Default::default(), &stamped, "ActivationRequest", None)
    {
        return Verdict::Deny(Reason::ProtectedMetadata, msg);
    }
    if open_by_requester >= s.max_open_requests {
        return Verdict::Deny(
            Reason::TooManyOpenRequests,
            format!(
                "{} already has {open_by_requester} open ActivationRequests, the most one person may have: end some (spec.deactivate: true) or wait for them to be decided",
                ar.spec.requester.username
            ),
        );
    }
    let Some(rs) = rs else {
        return Verdict::Deny(
            Reason::RoleSettingNotFound,
            format!(
                "RoleSetting {} does not exist: check the name (kubectl get rolesettings)",
                ar.spec.role_setting
            ),
        );
    };
    if let Some(msg) = crate::decide::unacknowledged_persistence(rs, role_risks) {
        return Verdict::Deny(
            Reason::PersistenceRiskUnacknowledged,
            format!(
                "RoleSetting {} cannot be activated until an administrator acknowledges its risk: {msg}",
                ar.spec.role_setting
            ),
        );
    }
    let pctx = policy::Context {
        namespace: ns,
        cluster_scope_namespace: &s.cluster_scope_namespace,
        mfa: &s.mfa,
        now,
    };
    let violations = policy::request_violations(rs, &ar.spec, &pctx);
    if !violations.is_empty() {
        return Verdict::Deny(
            Reason::of_violation(violations[0].reason),
            violations
                .iter()
                .map(|v| v.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    if eligibility::select(
        &eligibility::Wanted::of(ar),
        Some(rs),
        assignments.iter().copied(),
        &s.cluster_scope_namespace,
        now,
    )
    .is_none()
    {
        return Verdict::Deny(
            Reason::NotEligible,
            format!(
                "{} is not eligible for RoleSetting {} ({:?} scope) in namespace {ns} now: no EligibleAssignment matches (see kubectl get eligibleassignments -n {ns}); ask an administrator for one",
                ar.spec.requester.username, ar.spec.role_setting, ar.spec.scope
            ),
        );
    }
    if let Some(target) = &ar.spec.extends {
        let own_open = requests
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(target.as_str()))
            .filter(|r| {
                r.spec.requester.username == ar.spec.requester.username
                    && r.spec.requester.uid == ar.spec.requester.uid
                    && r.spec.role_setting == ar.spec.role_setting
                    && r.spec.scope == ar.spec.scope
                    && r.status.as_ref().and_then(|st| st.phase).is_some_and(|p| {
                        matches!(p, RequestPhase::Active | RequestPhase::Scheduled)
                    })
            });
        let open = |r: &&&ActivationRequest| {
            r.status
                .as_ref()
                .and_then(|st| st.phase)
                .is_none_or(|p| !is_terminal(p))
        };
        if let Some(other) = requests
            .iter()
            .filter(open)
            .find(|r| r.spec.extends.as_deref() == Some(target.as_str()))
        {
            return Verdict::Deny(
                Reason::ExtensionAlreadyOpen,
                format!(
                    "{target} already has an open extension, {}: wait for it to be decided, or deactivate it first",
                    other.metadata.name.as_deref().unwrap_or_default()
                ),
            );
        }
        if own_open.is_none() {
            return Verdict::Deny(
                Reason::ExtensionInvalid,
                format!(
                    "extends: {target} is not your own Active or Scheduled request for {} ({:?} scope) in {ns}: name one of yours (kubectl get ar -n {ns})",
                    ar.spec.role_setting, ar.spec.scope
                ),
            );
        }
    }
    Verdict::Allow
}

fn kubepim_keys(m: &Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    m.iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("kubepim.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Metadata only the operator may change on kube-pim's objects: its finalizer, owner
/// references, and `kubepim.io/*` labels and annotations.
fn protected_metadata(
    old: &kube::api::ObjectMeta,
    new: &kube::api::ObjectMeta,
    kind: &str,
    allowed_stamp: Option<&str>,
) -> Option<String> {
    let had = old.finalizers.iter().flatten().any(|f| f == FINALIZER);
    let has = new.finalizers.iter().flatten().any(|f| f == FINALIZER);
    if had && !has {
        return Some(format!(
            "only kube-pim removes the {FINALIZER} finalizer (it does so once access is removed): end the {kind} instead"
        ));
    }
    if has && !had {
        return Some(format!(
            "only kube-pim adds the {FINALIZER} finalizer: remove it from your change"
        ));
    }
    // Others' finalizers may be removed (to unblock a deletion), never added: an added one
    // would hold the audit record past its retention, or the namespace past its deletion.
    let before: Vec<&String> = old.finalizers.iter().flatten().collect();
    if let Some(f) = new
        .finalizers
        .iter()
        .flatten()
        .find(|f| !before.contains(f))
    {
        return Some(format!(
            "finalizers cannot be added to a {kind} (found {f}): remove it from your change"
        ));
    }
    if old.owner_references != new.owner_references {
        return Some(format!(
            "ownerReferences of a {kind} are kube-pim's: remove them from your change"
        ));
    }
    let mut new_annotations = kubepim_keys(&new.annotations);
    if let Some(by) = allowed_stamp {
        // The one annotation the caller's own change may carry (stamped by kube-pim's
        // mutating webhook with the caller's name).
        if new_annotations.get(DEACTIVATED_BY) == Some(&by.to_string())
            && !kubepim_keys(&old.annotations).contains_key(DEACTIVATED_BY)
        {
            new_annotations.remove(DEACTIVATED_BY);
        }
    }
    if kubepim_keys(&old.labels) != kubepim_keys(&new.labels)
        || kubepim_keys(&old.annotations) != new_annotations
    {
        return Some(format!(
            "kubepim.io/* labels and annotations of a {kind} are kube-pim's: remove them from your change"
        ));
    }
    None
}

/// Whether `user` may act as an approver of `rs` (listed by name, as a ServiceAccount when
/// allowed, or through one of their groups).
fn is_approver(rs: &RoleSetting, user: &UserInfo) -> bool {
    let a = &rs.spec.approval;
    let name = username(user);
    // A ServiceAccount approves only where ServiceAccounts may, also through a Group.
    if crate::decide::parse_service_account(name).is_some() && !a.allow_service_account_approvers {
        return false;
    }
    let groups = user.groups.clone().unwrap_or_default();
    a.approvers.iter().any(|s| match s.kind {
        SubjectKind::User => s.name == name,
        SubjectKind::ServiceAccount => {
            a.allow_service_account_approvers
                && s.namespace
                    .as_deref()
                    .map(|ns| service_account_username(ns, &s.name))
                    .as_deref()
                    == Some(name)
        }
        SubjectKind::Group => groups.contains(&s.name),
    })
}

fn is_requester(ar: &ActivationRequest, user: &UserInfo) -> bool {
    let r = &ar.spec.requester;
    username(user) == r.username
        || matches!((&user.uid, &r.uid), (Some(a), Some(b)) if !a.is_empty() && a == b)
}

/// Whether this update deactivates the request and the caller is neither its requester nor
/// an approver: only then does the webhook ask the apiserver whether the caller may `bind`
/// the request's roles (the third kind of person allowed to end it).
pub fn deactivation_needs_bind_check(
    old: &ActivationRequest,
    new: &ActivationRequest,
    user: &UserInfo,
    rs: Option<&RoleSetting>,
) -> bool {
    !old.spec.deactivate
        && new.spec.deactivate
        && !is_requester(old, user)
        && !rs.is_some_and(|rs| is_approver(rs, user))
}

/// ActivationRequest UPDATE (main resource): the spec only by `deactivate` false -> true, and
/// only by the requester, an approver, or someone who may `bind` its roles at its scope
/// (`may_bind`, from a SubjectAccessReview as the caller); kube-pim's metadata untouched.
pub fn validate_request_update(
    old: &ActivationRequest,
    new: &ActivationRequest,
    user: &UserInfo,
    rs: Option<&RoleSetting>,
    may_bind: bool,
) -> Verdict {
    let deactivating = !old.spec.deactivate && new.spec.deactivate;
    let stamp = deactivating.then(|| username(user));
    if let Some(msg) = protected_metadata(&old.metadata, &new.metadata, "ActivationRequest", stamp)
    {
        return Verdict::Deny(Reason::ProtectedMetadata, msg);
    }
    let mut a = old.spec.clone();
    a.deactivate = new.spec.deactivate;
    if a != new.spec {
        return Verdict::Deny(Reason::ImmutableSpec, "spec is immutable except deactivate (false -> true): create a new ActivationRequest instead of editing this one".into());
    }
    match (old.spec.deactivate, new.spec.deactivate) {
        (true, false) => Verdict::Deny(
            Reason::ImmutableSpec,
            "deactivate cannot go back to false: create a new ActivationRequest".into(),
        ),
        (false, true)
            if !may_bind
                && !is_requester(old, user)
                && !rs.is_some_and(|rs| is_approver(rs, user)) =>
        {
            Verdict::Deny(
                Reason::DeactivateNotAllowed,
                format!(
                    "only the requester ({}), an approver of RoleSetting {}, or someone who may bind its roles may deactivate this request",
                    old.spec.requester.username, old.spec.role_setting
                ),
            )
        }
        _ => Verdict::Allow,
    }
}

/// ActivationRequest status UPDATE by anyone but the operator: exactly one approval appended,
/// by the caller (as stamped), who is an approver, not the requester, and has not decided
/// before, while the request is Pending; a reason for a Deny and when the policy requires one.
/// Nothing else in status may change, and status may not be dropped.
pub fn validate_decision(
    old: &ActivationRequest,
    new: &ActivationRequest,
    user: &UserInfo,
    rs: Option<&RoleSetting>,
    now: DateTime<Utc>,
) -> Verdict {
    let name = old.metadata.name.as_deref().unwrap_or_default();
    let (Some(os), Some(ns)) = (old.status.as_ref(), new.status.as_ref()) else {
        return Verdict::Deny(
            Reason::ForbiddenStatusChange,
            format!(
                "{name} has no status to decide on yet, or the change removes it: append one approval to status.approvals"
            ),
        );
    };
    let phase = os.phase;
    if phase != Some(RequestPhase::Pending) {
        return Verdict::Deny(
            Reason::NotPending,
            format!(
                "{name} is {}: decisions are only taken while it is Pending",
                phase.map_or("not yet initialised".to_string(), |p| format!("{p:?}"))
            ),
        );
    }
    let Some(old_list) = os.approvals.as_ref() else {
        return Verdict::Deny(
            Reason::NotPending,
            format!("{name} is not ready for decisions yet: try again in a moment"),
        );
    };
    let new_list = ns.approvals.clone().unwrap_or_default();
    let (mut a, mut b) = (os.clone(), ns.clone());
    a.approvals = None;
    b.approvals = None;
    if a != b {
        return Verdict::Deny(Reason::ForbiddenStatusChange, "approvers may only append one entry to status.approvals; nothing else in status may change".into());
    }
    if new_list.len() != old_list.len() + 1 || new_list[..old_list.len()] != old_list[..] {
        return Verdict::Deny(Reason::ForbiddenStatusChange, "append exactly one approval at the end (op add, path /status/approvals/-); existing decisions cannot change".into());
    }
    let d = &new_list[old_list.len()];
    let in_group = d
        .approver
        .via_group
        .as_ref()
        .is_none_or(|g| user.groups.iter().flatten().any(|x| x == g));
    if d.approver.username != username(user) || !in_group {
        return Verdict::Deny(
            Reason::ApproverMismatch,
            "an approval is recorded for the caller only: leave approver out, kube-pim fills it in"
                .into(),
        );
    }
    let Some(rs) = rs else {
        return Verdict::Deny(
            Reason::RoleSettingNotFound,
            format!(
                "RoleSetting {} no longer exists: nothing to decide",
                old.spec.role_setting
            ),
        );
    };
    if is_requester(old, user) {
        return Verdict::Deny(Reason::SelfApproval, "you cannot decide your own request: ask another approver (to withdraw it, set spec.deactivate: true)".into());
    }
    if !is_approver(rs, user) {
        return Verdict::Deny(
            Reason::NotApprover,
            format!(
                "{} is not an approver of RoleSetting {}: its approvers are {}",
                username(user),
                old.spec.role_setting,
                rs.spec
                    .approval
                    .approvers
                    .iter()
                    .map(|s| format!("{:?} {}", s.kind, s.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let created = old
        .metadata
        .creation_timestamp
        .as_ref()
        .map(crate::time::from_k8s);
    if created.is_some_and(|c| now >= c + rs.spec.approval.timeout.as_delta()) {
        return Verdict::Deny(
            Reason::ApprovalTimeout,
            format!(
                "the approval timeout ({}) of RoleSetting {} has passed: this request times out; the requester can ask again",
                rs.spec.approval.timeout, old.spec.role_setting
            ),
        );
    }
    if old_list
        .iter()
        .any(|p| p.approver.username == d.approver.username)
    {
        return Verdict::Deny(
            Reason::AlreadyDecided,
            "you have already decided on this request; a decision cannot be changed".into(),
        );
    }
    let no_reason = d.reason.as_deref().is_none_or(|r| r.trim().is_empty());
    if no_reason && d.decision == ApprovalDecision::Denied {
        return Verdict::Deny(
            Reason::ReasonRequired,
            "a Deny needs a reason: add \"reason\" to the approval".into(),
        );
    }
    if no_reason && rs.spec.approval.require_reason {
        return Verdict::Deny(
            Reason::ReasonRequired,
            format!(
                "RoleSetting {} requires a reason for every decision: add \"reason\" to the approval",
                old.spec.role_setting
            ),
        );
    }
    // The separation-of-duties checks that need the apiserver (impersonation, token minting)
    // are made by the controller, which re-verifies every approval it counts.
    Verdict::Allow
}

/// ActivationRequest DELETE: an open request is deleted only by the break-glass group or with
/// its namespace; the finalizer still makes the operator revoke and record it first.
pub fn validate_request_delete(
    old: &ActivationRequest,
    user: &UserInfo,
    s: &Settings,
    namespace_terminating: bool,
) -> Verdict {
    let phase = old.status.as_ref().and_then(|st| st.phase);
    let open = phase.is_none_or(|p| !is_terminal(p));
    let break_glass = s
        .break_glass_group
        .as_ref()
        .is_some_and(|g| user.groups.iter().flatten().any(|x| x == g));
    let recorded = old
        .status
        .as_ref()
        .is_none_or(|st| usize::try_from(st.audited_through).unwrap_or(0) >= st.history.len());
    if !open && !recorded && !namespace_terminating {
        return Verdict::Deny(
            Reason::NotYetAudited,
            format!(
                "{} has ended but its last transition is still being recorded: delete it in a moment",
                old.metadata.name.as_deref().unwrap_or_default()
            ),
        );
    }
    if open && !break_glass && !namespace_terminating {
        return Verdict::Deny(
            Reason::OpenRequestDelete,
            format!(
                "{} is {} and is the audit record of that access: end it with spec.deactivate: true (kubectl pim deactivate {}); ended requests can be deleted",
                old.metadata.name.as_deref().unwrap_or_default(),
                phase.map_or("new".to_string(), |p| format!("{p:?}")),
                old.metadata.name.as_deref().unwrap_or_default()
            ),
        );
    }
    Verdict::Allow
}

/// EligibleAssignment CREATE/UPDATE: what the RoleSetting forbids (a RoleSetting that does not
/// exist yet is fine: GitOps order; the assignment is Invalid until it does), Cluster scope
/// only in the cluster-scope namespace, and the authorized-by stamp is the caller's.
///
/// `unbindable` is the first role of the RoleSetting the caller may not bind where the
/// assignment grants (from SubjectAccessReviews as the caller; SPEC invariant 3).
pub fn validate_assignment(
    old: Option<&EligibleAssignment>,
    ea: &EligibleAssignment,
    user: &UserInfo,
    rs: Option<&RoleSetting>,
    unbindable: Option<&str>,
    s: &Settings,
    now: DateTime<Utc>,
) -> Verdict {
    let ns = ea.metadata.namespace.as_deref().unwrap_or_default();
    // kube-pim's finalizer (on type Active assignments), owner references and kubepim.io/*
    // metadata are kube-pim's; authorized-by is re-stamped on every write and checked below.
    let without_stamp = |m: &kube::api::ObjectMeta| {
        let mut m = m.clone();
        if let Some(a) = m.annotations.as_mut() {
            a.remove(AUTHORIZED_BY);
        }
        m
    };
    let before = old.map(|o| without_stamp(&o.metadata)).unwrap_or_default();
    if let Some(msg) = protected_metadata(
        &before,
        &without_stamp(&ea.metadata),
        "EligibleAssignment",
        None,
    ) {
        return Verdict::Deny(Reason::ProtectedMetadata, msg);
    }
    let stamped = ea
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUTHORIZED_BY));
    if stamped.map(String::as_str) != Some(identity(user).to_string().as_str()) {
        return Verdict::Deny(
            Reason::ProtectedMetadata,
            format!(
                "the {AUTHORIZED_BY} annotation is set by kube-pim: remove it from your change"
            ),
        );
    }
    if ea.spec.scope == crate::api::Scope::Cluster && ns != s.cluster_scope_namespace {
        return Verdict::Deny(
            Reason::WrongNamespaceForClusterScope,
            format!(
                "Cluster-scope assignments live only in namespace {}: create it there, or use scope Namespace",
                s.cluster_scope_namespace
            ),
        );
    }
    if let Some(role) = unbindable {
        let at = match ea.spec.scope {
            crate::api::Scope::Namespace => format!("in namespace {ns}"),
            crate::api::Scope::Cluster => "cluster-wide".to_string(),
        };
        let flag = match ea.spec.scope {
            crate::api::Scope::Namespace => format!(" -n {ns}"),
            crate::api::Scope::Cluster => String::new(),
        };
        return Verdict::Deny(
            Reason::BindNotAllowed,
            format!(
                "{} may not bind ClusterRole {role} {at}, so cannot make anyone eligible for RoleSetting {} there (kube-pim never grants more than its writer could): ask someone who may (kubectl auth can-i bind clusterroles/{role}{flag})",
                username(user),
                ea.spec.role_setting
            ),
        );
    }
    if let Some(rs) = rs {
        let v = policy::assignment_violations(rs, ea, ns, &s.cluster_scope_namespace, now);
        if !v.is_empty() {
            return Verdict::Deny(
                Reason::of_violation(v[0].reason),
                v.iter()
                    .map(|x| x.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
    }
    Verdict::Allow
}

/// EligibleAssignment DELETE: `protectLastAssignment` keeps the last one (unless its namespace
/// is being deleted).
pub fn validate_assignment_delete(
    old: &EligibleAssignment,
    rs: Option<&RoleSetting>,
    others: usize,
    namespace_terminating: bool,
) -> Verdict {
    if rs.is_some_and(|rs| rs.spec.protect_last_assignment) && others == 0 && !namespace_terminating
    {
        return Verdict::Deny(
            Reason::LastAssignment,
            format!(
                "{} is the last EligibleAssignment of RoleSetting {}, which sets protectLastAssignment: create another one first, or turn protectLastAssignment off",
                old.metadata.name.as_deref().unwrap_or_default(),
                old.spec.role_setting
            ),
        );
    }
    Verdict::Allow
}

/// RoleSetting CREATE/UPDATE: the writer may bind every role cluster-wide (`unbindable` is the
/// first one they may not, from SubjectAccessReviews as the caller; SPEC invariant 3), and
/// what CEL cannot check on its own (the ticket pattern compiles).
///
/// `risks` are the persistence risks of its roles ([`crate::decide::persistence`]): they need
/// `acknowledgePersistenceRisk: true`.
pub fn validate_role_setting(
    rs: &RoleSetting,
    user: &UserInfo,
    unbindable: Option<&str>,
    risks: &[(String, Vec<String>)],
    targets: &crate::notify::TargetPolicy,
) -> Verdict {
    if let Some(role) = unbindable {
        return Verdict::Deny(
            Reason::BindNotAllowed,
            format!(
                "{} may not bind ClusterRole {role} cluster-wide, so cannot write RoleSetting {} that governs it (kube-pim never grants more than its writer could): ask someone who may (kubectl auth can-i bind clusterroles/{role})",
                username(user),
                rs.metadata.name.as_deref().unwrap_or_default()
            ),
        );
    }
    if let Some(msg) = crate::decide::unacknowledged_persistence(rs, risks) {
        return Verdict::Deny(Reason::PersistenceRiskUnacknowledged, msg);
    }
    if let Some(p) = &rs.spec.activation.ticket_pattern
        && let Err(e) = regex::Regex::new(p)
    {
        return Verdict::Deny(
            Reason::InvalidTicketPattern,
            format!(
                "activation.ticketPattern {p:?} is not a valid regular expression ({e}): fix the pattern"
            ),
        );
    }
    for hook in rs.spec.notifications.iter().flat_map(|n| &n.webhooks) {
        if let Err(e) = targets.check_url(&hook.url) {
            return Verdict::Deny(Reason::NotificationTargetRefused, e);
        }
    }
    Verdict::Allow
}

#[cfg(test)]
mod tests;
