//! The ActivationRequest state machine (SPEC sections 2 and 3): given the request, its
//! RoleSetting, the assignment that backs it, the tally of approvals and `now`, what to do
//! next — which bindings must exist, the new status, and when to look again.
//!
//! Ordering (no lost decisions) is built into the plans: a decision is committed (condition
//! `Approved=True`) by a plan without bindings; only a later plan, made from that committed
//! state, creates bindings, and its status write (`Active`) happens after them. The operator
//! applies a plan as: bindings (ensure or remove), then the status, under a precondition; and
//! goes on to the next plan at once, from the object its write returned, when the plan is due
//! again now. Every plan says which bindings must exist: a request that is not Active holds
//! none. Plans never touch `status.approvals` except to initialise it to `[]`.

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::{
    api::{
        ActivationRequest, ActivationRequestStatus, EligibleAssignment, HistoryAction,
        HistoryEntry, RequestPhase, RoleSetting,
    },
    decide::{
        Violation, approval,
        bindings::{self, Binding},
        human, policy,
    },
};

/// Who set `deactivate: true`, stamped by the admission webhook.
pub const DEACTIVATED_BY: &str = "kubepim.io/deactivated-by";
/// The actor recorded for the operator's own transitions.
pub const OPERATOR_ACTOR: &str = "kube-pim";
/// Condition: the decision to grant has been committed.
pub const CONDITION_APPROVED: &str = "Approved";
/// Condition: access is granted now.
pub const CONDITION_ACTIVE: &str = "Active";
/// History is bounded by the schema; keep the last slots for the final transition.
const HISTORY_CAPACITY: usize = 32;

/// What the state machine looks at.
pub struct Inputs<'a> {
    /// Now.
    pub now: DateTime<Utc>,
    /// The request.
    pub request: &'a ActivationRequest,
    /// Its RoleSetting, if it exists.
    pub role_setting: Option<&'a RoleSetting>,
    /// The assignment that backs it now ([`crate::decide::eligibility::select`]).
    pub assignment: Option<&'a EligibleAssignment>,
    /// The approvals as counted by [`approval::tally`].
    pub tally: &'a approval::Tally,
    /// Namespace, cluster-scope namespace and MFA settings for the policy checks.
    pub policy: &'a policy::Context<'a>,
    /// How long terminal, fully audited requests are kept.
    pub retention: TimeDelta,
    /// The request this one extends (`spec.extends`), if it exists.
    pub extended: Option<&'a ActivationRequest>,
    /// When the chain of extensions that `extended` belongs to first became Active
    /// ([`chain_start`]), for `maxContinuous`.
    pub chain_start: Option<DateTime<Utc>>,
    /// An Active extension of this request, which has taken over its access.
    pub successor: Option<&'a ActivationRequest>,
}

/// What [`chain_start`] reads of a request: the typed object, or what a cache keeps of one.
pub trait Link {
    /// `spec.extends`.
    fn extends(&self) -> Option<&str>;
    /// `status.phase`.
    fn phase(&self) -> Option<RequestPhase>;
    /// `status.activationTime`.
    fn activation_time(&self) -> Option<DateTime<Utc>>;
}

impl Link for ActivationRequest {
    fn extends(&self) -> Option<&str> {
        self.spec.extends.as_deref()
    }
    fn phase(&self) -> Option<RequestPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }
    fn activation_time(&self) -> Option<DateTime<Utc>> {
        self.status.as_ref().and_then(|s| s.activation_time)
    }
}

/// When a chain of extensions started: the activation time of `x`, or of the request it
/// extended if that one was Superseded by it, and so on back (at most 32 links).
pub fn chain_start<'a, L: Link + 'a>(
    x: &'a impl Link,
    lookup: impl Fn(&str) -> Option<&'a L>,
) -> Option<DateTime<Utc>> {
    let mut start = x.activation_time()?;
    let mut extends = x.extends();
    for _ in 0..32 {
        let Some(prev) = extends.and_then(&lookup) else {
            break;
        };
        match (prev.phase(), prev.activation_time()) {
            (Some(RequestPhase::Superseded), Some(t)) => {
                start = t;
                extends = prev.extends();
            }
            _ => break,
        }
    }
    Some(start)
}

/// Whether `x` is a request `req` may extend: the same requester (name and uid), RoleSetting
/// and scope.
fn extendable_by(x: &ActivationRequest, req: &ActivationRequest) -> bool {
    let (a, b) = (&x.spec, &req.spec);
    a.requester.username == b.requester.username
        && a.requester.uid == b.requester.uid
        && a.role_setting == b.role_setting
        && a.scope == b.scope
}

fn phase_of(r: &ActivationRequest) -> Option<RequestPhase> {
    r.status.as_ref().and_then(|s| s.phase)
}

/// The extended request, when it is this requester's and in `phase`.
fn extending<'a>(i: &Inputs<'a>, phase: RequestPhase) -> Option<&'a ActivationRequest> {
    i.extended
        .filter(|x| extendable_by(x, i.request) && phase_of(x) == Some(phase))
}

/// What to do about the bindings.
#[derive(Clone, Debug, PartialEq)]
pub enum Bindings {
    /// These must exist exactly so (create, or restore drift).
    Ensure(Vec<Binding>),
    /// None may exist.
    Remove,
}

/// The next step for one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Bindings first...
    pub bindings: Bindings,
    /// ...then this status (`approvals` excluded unless `initialize_approvals`).
    pub status: Option<ActivationRequestStatus>,
    /// Write `approvals: []` with this status (the first status write only).
    pub initialize_approvals: bool,
    /// Delete the request (terminal, fully audited, past retention).
    pub delete: bool,
    /// Look again at this time at the latest (expiry, start, approval timeout, retention).
    pub requeue_at: Option<DateTime<Utc>>,
}

/// Whether a phase is final.
pub fn is_terminal(p: RequestPhase) -> bool {
    !matches!(
        p,
        RequestPhase::Pending | RequestPhase::Scheduled | RequestPhase::Active
    )
}

/// Whether `plan` ends `before`, an open request, for a reason read from its RoleSetting or
/// the assignments: Failed (not eligible, policy, quorum out of reach), Revoked (eligibility or
/// policy withdrawn) or TimedOut (the RoleSetting's approval timeout). The controller decides
/// from caches, which can lag the apiserver by a moment (an assignment applied just before its
/// request arrives on another watch): it confirms these endings from live reads first.
/// Endings the request itself decides (expiry, deactivation, denial, an extension taking over)
/// need no confirmation.
pub fn withdraws(before: &ActivationRequest, plan: &Plan) -> bool {
    let was_open = before
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_none_or(|p| !is_terminal(p));
    let ends = plan.status.as_ref().and_then(|s| s.phase);
    was_open
        && matches!(
            ends,
            Some(RequestPhase::Failed | RequestPhase::Revoked | RequestPhase::TimedOut)
        )
}

/// Whether `ar`'s decision is committed (the Approved condition, or any later phase): from
/// then on it may have bindings, made before `Active` is written.
pub fn decision_committed(ar: &ActivationRequest) -> bool {
    ar.status.as_ref().is_some_and(|s| {
        condition_true(s, CONDITION_APPROVED) || s.phase.is_some_and(|p| p != RequestPhase::Pending)
    })
}

/// Sets a condition, keeping its lastTransitionTime when the status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let since = previous
        .map(|i| &conditions[i])
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| crate::time::to_k8s(now));
    let c = Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: generation,
    };
    match previous {
        Some(i) => conditions[i] = c,
        None => conditions.push(c),
    }
}

/// Whether condition `type_` of `s` is True.
pub fn condition_true(s: &ActivationRequestStatus, type_: &str) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// A status change in progress: the current status plus transitions.
struct Next<'a> {
    now: DateTime<Utc>,
    request: &'a ActivationRequest,
    status: ActivationRequestStatus,
}

impl<'a> Next<'a> {
    fn new(inputs: &'a Inputs<'a>) -> Self {
        Self::at(inputs.request, inputs.now)
    }

    fn at(request: &'a ActivationRequest, now: DateTime<Utc>) -> Self {
        let mut status = request.status.clone().unwrap_or_default();
        status.observed_generation = request.metadata.generation;
        Self {
            now,
            request,
            status,
        }
    }

    fn record(&mut self, action: HistoryAction, actor: &str, message: String) {
        let h = &mut self.status.history;
        // Leave room for a final transition: intermediate ones are dropped when nearly full.
        let final_transition = matches!(
            action,
            HistoryAction::Expired
                | HistoryAction::Denied
                | HistoryAction::TimedOut
                | HistoryAction::Canceled
                | HistoryAction::Deactivated
                | HistoryAction::Revoked
                | HistoryAction::Superseded
                | HistoryAction::Failed
        );
        if h.len() >= HISTORY_CAPACITY || (!final_transition && h.len() >= HISTORY_CAPACITY - 1) {
            return;
        }
        let seq = h.last().map_or(1, |e| e.seq + 1);
        h.push(HistoryEntry {
            seq,
            time: self.now,
            actor: actor.into(),
            action,
            message: Some(message),
        });
    }

    fn condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        set_condition(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            message,
            self.now,
            self.request.metadata.generation,
        );
    }

    /// Ends the request in `phase`.
    fn end(
        mut self,
        phase: RequestPhase,
        action: HistoryAction,
        actor: &str,
        reason: &str,
        message: String,
    ) -> Plan {
        self.status.phase = Some(phase);
        self.record(action, actor, message.clone());
        if !matches!(
            phase,
            RequestPhase::Expired
                | RequestPhase::Deactivated
                | RequestPhase::Revoked
                | RequestPhase::Superseded
        ) {
            // It never became (or was never again) a decision to grant.
            if !condition_true(&self.status, CONDITION_APPROVED) || phase == RequestPhase::Denied {
                self.condition(CONDITION_APPROVED, false, reason, &message);
            }
        }
        self.condition(CONDITION_ACTIVE, false, reason, &message);
        Plan {
            bindings: Bindings::Remove,
            status: Some(self.status),
            initialize_approvals: false,
            delete: false,
            requeue_at: Some(self.now),
        }
    }

    fn plan(self, bindings: Bindings, requeue_at: Option<DateTime<Utc>>) -> Plan {
        let changed = self.request.status.as_ref() != Some(&self.status);
        Plan {
            bindings,
            status: changed.then_some(self.status),
            initialize_approvals: false,
            delete: false,
            requeue_at,
        }
    }
}

/// Decides what to do about a request now: the steps of the state machine that change only
/// the status, taken one after the other in one plan, until one waits, ends the request, or
/// would grant (a grant is always a plan of its own, made from a committed decision).
///
/// So a new request whose RoleSetting needs no approval is recorded and approved in one
/// status write (history Requested, Approved), not two: every status write before the
/// bindings is on the path to access.
pub fn decide(i: &Inputs<'_>) -> Plan {
    let mut plan = step(i);
    let mut initialize_approvals = plan.initialize_approvals;
    // Requested -> Approved -> (Scheduled) is at most three steps; never a loop.
    for _ in 0..4 {
        let continues = plan.bindings == Bindings::Remove
            && !plan.delete
            && plan.requeue_at.is_some_and(|t| t <= i.now);
        let Some(status) = plan
            .status
            .clone()
            .filter(|s| continues && s.phase.is_some_and(|p| !is_terminal(p)))
        else {
            break;
        };
        let mut request = i.request.clone();
        let approvals = request.status.as_ref().and_then(|s| s.approvals.clone());
        request.status = Some(ActivationRequestStatus {
            approvals: if initialize_approvals {
                Some(Vec::new())
            } else {
                approvals
            },
            ..status
        });
        let next = step(&Inputs {
            request: &request,
            ..*i
        });
        if matches!(next.bindings, Bindings::Ensure(_)) {
            // A grant is a plan of its own, made from the committed decision: bindings first,
            // then `Active` (SPEC section 3's order). The operator goes on to it at once.
            break;
        }
        initialize_approvals |= next.initialize_approvals;
        plan = Plan {
            // The composed plan writes the last status only if anything changed overall.
            status: next
                .status
                .or(Some(plan.status.expect("checked above")))
                .filter(|s| i.request.status.as_ref() != Some(s)),
            initialize_approvals,
            ..next
        };
    }
    plan
}

/// One step of the state machine.
fn step(i: &Inputs<'_>) -> Plan {
    let req = i.request;
    let spec = &req.spec;
    let requester = spec.requester.username.as_str();
    let rs_name = spec.role_setting.as_str();
    let status = req.status.clone().unwrap_or_default();

    // First write: approvals initialised to [] and the request recorded.
    let Some(phase) = status.phase.filter(|_| status.approvals.is_some()) else {
        let mut next = Next::new(i);
        next.status.phase = Some(RequestPhase::Pending);
        let how_long = i
            .role_setting
            .map(|rs| human(policy::requested_duration(rs, spec)));
        next.record(
            HistoryAction::Requested,
            requester,
            format!(
                "{requester} requested {rs_name} ({:?} scope){}: {}",
                spec.scope,
                how_long.map(|d| format!(" for {d}")).unwrap_or_default(),
                spec.justification.as_deref().unwrap_or("no justification")
            ),
        );
        let mut plan = next.plan(Bindings::Remove, Some(i.now));
        plan.initialize_approvals = status.approvals.is_none();
        return plan;
    };

    if is_terminal(phase) {
        return terminal(i, &status);
    }

    let next = Next::new(i);
    // The requester (or an approver, or someone who may bind the roles) may end it at any
    // time; the admission webhook records who in an annotation.
    if spec.deactivate {
        let by = req
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEACTIVATED_BY))
            .map_or(requester, String::as_str);
        return match phase {
            RequestPhase::Active => next.end(
                RequestPhase::Deactivated,
                HistoryAction::Deactivated,
                by,
                "Deactivated",
                format!("{by} ended the activation early"),
            ),
            _ => next.end(
                RequestPhase::Canceled,
                HistoryAction::Canceled,
                by,
                "Canceled",
                format!("{by} canceled the request before access started"),
            ),
        };
    }

    let Some(rs) = i.role_setting else {
        let msg = format!("RoleSetting {rs_name} no longer exists");
        return withdraw(next, phase, "RoleSettingNotFound", msg);
    };
    let continuing = policy::continuing_violations(
        rs,
        spec,
        i.policy.namespace,
        i.policy.cluster_scope_namespace,
    );
    if let Some(v) = continuing.first() {
        return withdraw(next, phase, v.reason, v.message.clone());
    }
    let Some(ea) = i.assignment else {
        let msg = format!(
            "no EligibleAssignment in namespace {} makes {requester} eligible for {rs_name} ({:?} scope) now: ask an administrator for one",
            i.policy.namespace, spec.scope
        );
        return withdraw(next, phase, "NotEligible", msg);
    };

    match phase {
        RequestPhase::Pending => pending(i, next, rs, ea),
        RequestPhase::Scheduled => match start_after(i) {
            Some(start) if start > i.now => next.plan(Bindings::Remove, Some(start)),
            _ => activate(i, next, rs, ea),
        },
        RequestPhase::Active => active(i, next, ea),
        _ => unreachable!("terminal phases returned above"),
    }
}

/// The status of a request deleted while it held or awaited access: Revoked, with the
/// reason recorded (SPEC invariant 7: access is revoked and recorded before it goes).
pub fn revoke_on_delete(req: &ActivationRequest, now: DateTime<Utc>) -> ActivationRequestStatus {
    let next = Next::at(req, now);
    let plan = next.end(
        RequestPhase::Revoked,
        HistoryAction::Revoked,
        OPERATOR_ACTOR,
        "RequestDeleted",
        "the request was deleted while it held or awaited access; access removed".into(),
    );
    plan.status.expect("ending always writes a status")
}

fn floor_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// Eligibility or policy went away: a request not yet granted fails, a granted one is revoked.
fn withdraw(next: Next<'_>, phase: RequestPhase, reason: &str, message: String) -> Plan {
    match phase {
        RequestPhase::Pending => next.end(
            RequestPhase::Failed,
            HistoryAction::Failed,
            OPERATOR_ACTOR,
            reason,
            message,
        ),
        _ => next.end(
            RequestPhase::Revoked,
            HistoryAction::Revoked,
            OPERATOR_ACTOR,
            reason,
            message,
        ),
    }
}

fn pending(i: &Inputs<'_>, mut next: Next<'_>, rs: &RoleSetting, ea: &EligibleAssignment) -> Plan {
    let spec = &i.request.spec;
    if condition_true(&next.status, CONDITION_APPROVED) {
        // The decision is committed: carry it out.
        return match start_after(i) {
            Some(start) if start > i.now => {
                next.status.phase = Some(RequestPhase::Scheduled);
                next.record(
                    HistoryAction::Scheduled,
                    OPERATOR_ACTOR,
                    format!(
                        "access starts at {}",
                        start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                );
                next.plan(Bindings::Remove, Some(start))
            }
            _ => activate(i, next, rs, ea),
        };
    }
    // Request-time policy: the webhook refuses these at once; this is the source of truth.
    if let Some(v) = policy::request_violations(rs, spec, i.policy)
        .into_iter()
        .next()
    {
        return next.end(
            RequestPhase::Failed,
            HistoryAction::Failed,
            OPERATOR_ACTOR,
            v.reason,
            v.message,
        );
    }
    let a = &rs.spec.approval;
    if !a.required {
        next.condition(
            CONDITION_APPROVED,
            true,
            "ApprovalNotRequired",
            "RoleSetting does not require approval",
        );
        next.record(
            HistoryAction::Approved,
            OPERATOR_ACTOR,
            "no approval required".into(),
        );
        return next.plan(Bindings::Remove, Some(i.now));
    }
    let t = i.tally;
    if let Some((who, why)) = &t.denied_by {
        let msg = format!("denied by {who}: {why}");
        return next.end(
            RequestPhase::Denied,
            HistoryAction::Denied,
            who,
            "Denied",
            msg,
        );
    }
    if t.reached(a.min_approvals) {
        let msg = format!("approved by {}", t.approved_by.join(", "));
        next.condition(CONDITION_APPROVED, true, "Approved", &msg);
        let last = t.approved_by.last().cloned().unwrap_or_default();
        next.record(HistoryAction::Approved, &last, msg);
        return next.plan(Bindings::Remove, Some(i.now));
    }
    if !approval::quorum_reachable(a, Some(&spec.requester), &t.ignored) {
        let v = quorum_unreachable(rs, t);
        return next.end(
            RequestPhase::Failed,
            HistoryAction::Failed,
            OPERATOR_ACTOR,
            v.reason,
            v.message,
        );
    }
    let created = i
        .request
        .metadata
        .creation_timestamp
        .as_ref()
        .map(crate::time::from_k8s)
        .unwrap_or(i.now);
    let deadline = created + a.timeout.as_delta();
    if i.now >= deadline {
        let msg = format!(
            "no decision within approval.timeout {} of RoleSetting {}",
            a.timeout, spec.role_setting
        );
        return next.end(
            RequestPhase::TimedOut,
            HistoryAction::TimedOut,
            OPERATOR_ACTOR,
            "TimedOut",
            msg,
        );
    }
    let mut waiting = format!(
        "waiting for {} more approval(s) from {}",
        usize::try_from(a.min_approvals)
            .unwrap_or(0)
            .saturating_sub(t.approved_by.len()),
        approver_list(rs)
    );
    if !t.ignored.is_empty() {
        let ignored: Vec<String> = t
            .ignored
            .iter()
            .map(|(w, why)| format!("{w} ({why})"))
            .collect();
        waiting.push_str(&format!("; not counted: {}", ignored.join(", ")));
    }
    next.condition(CONDITION_APPROVED, false, "Pending", &waiting);
    next.plan(Bindings::Remove, Some(deadline))
}

fn approver_list(rs: &RoleSetting) -> String {
    rs.spec
        .approval
        .approvers
        .iter()
        .map(|a| format!("{:?} {}", a.kind, a.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn quorum_unreachable(rs: &RoleSetting, t: &approval::Tally) -> Violation {
    let name = rs.metadata.name.as_deref().unwrap_or("?");
    let ignored: Vec<String> = t
        .ignored
        .iter()
        .map(|(w, why)| format!("{w} ({why})"))
        .collect();
    Violation::new(
        "QuorumUnreachable",
        format!(
            "RoleSetting {name} needs {} approval(s) but not enough eligible approvers remain{}: add approvers (or a Group) to the RoleSetting or lower approval.minApprovals, then request again",
            rs.spec.approval.min_approvals,
            if ignored.is_empty() {
                String::new()
            } else {
                format!("; not counted: {}", ignored.join(", "))
            }
        ),
    )
}

/// When an approved request may start: its own startTime, or, when it extends a request that
/// has not started yet, that request's start.
fn start_after(i: &Inputs<'_>) -> Option<DateTime<Utc>> {
    let own = i.request.spec.start_time;
    let pred = extending(i, RequestPhase::Scheduled).and_then(|x| x.spec.start_time);
    match (own, pred) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn activate(i: &Inputs<'_>, mut next: Next<'_>, rs: &RoleSetting, ea: &EligibleAssignment) -> Plan {
    let duration = policy::requested_duration(rs, &i.request.spec);
    // An extension continues its predecessor's access without a gap; otherwise (no
    // predecessor, or it is no longer Active) it is a plain activation from now.
    let predecessor = extending(i, RequestPhase::Active);
    let from = predecessor
        .and_then(|x| x.status.as_ref()?.expiration_time)
        .map_or(i.now, |e| e.max(i.now));
    // Whole seconds, rounded down: the time people read is the time access ends, and it is
    // never later than asked for.
    let mut expires = floor_seconds(from + duration);
    if let Some(end) = ea.spec.end_time {
        expires = expires.min(end);
    }
    if let Some(start) = predecessor.and(i.chain_start) {
        expires = expires.min(floor_seconds(start + policy::max_continuous(rs)));
    }
    let roles: Vec<String> = rs.spec.role_refs.iter().map(|r| r.name.clone()).collect();
    let desired = bindings::for_request(i.request, &roles, expires);
    next.status.phase = Some(RequestPhase::Active);
    next.status.activation_time = Some(i.now);
    next.status.expiration_time = Some(expires);
    next.status.assignment = ea.metadata.name.clone();
    next.status.bindings = desired.iter().map(Binding::reference).collect();
    let until = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut msg = format!(
        "granted {} to {} until {until} (assignment {})",
        roles.join(", "),
        i.request.spec.requester.username,
        ea.metadata.name.as_deref().unwrap_or("?")
    );
    if let Some(x) = predecessor {
        msg.push_str(&format!(
            ", extending {}",
            x.metadata.name.as_deref().unwrap_or("?")
        ));
    }
    next.condition(CONDITION_ACTIVE, true, "Activated", &msg);
    next.record(HistoryAction::Activated, OPERATOR_ACTOR, msg);
    next.plan(Bindings::Ensure(desired), Some(expires))
}

fn active(i: &Inputs<'_>, mut next: Next<'_>, ea: &EligibleAssignment) -> Plan {
    // An extension is Active (its bindings exist): hand over (make-before-break).
    if let Some(succ) = i
        .successor
        .filter(|e| extendable_by(e, i.request) && phase_of(e) == Some(RequestPhase::Active))
    {
        let msg = format!(
            "extended by {}: its bindings took over",
            succ.metadata.name.as_deref().unwrap_or("?")
        );
        return next.end(
            RequestPhase::Superseded,
            HistoryAction::Superseded,
            OPERATOR_ACTOR,
            "Superseded",
            msg,
        );
    }
    let Some(mut expires) = next.status.expiration_time else {
        // Cannot happen for a request this operator activated; end it rather than guess.
        return next.end(
            RequestPhase::Revoked,
            HistoryAction::Revoked,
            OPERATOR_ACTOR,
            "NoExpiration",
            "Active without an expirationTime".into(),
        );
    };
    if i.now >= expires {
        let msg = format!(
            "access ended at {}",
            expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        return next.end(
            RequestPhase::Expired,
            HistoryAction::Expired,
            OPERATOR_ACTOR,
            "Expired",
            msg,
        );
    }
    let ea_name = ea.metadata.name.clone();
    if next.status.assignment != ea_name {
        let msg = format!(
            "now backed by assignment {} (was {})",
            ea_name.as_deref().unwrap_or("?"),
            next.status.assignment.as_deref().unwrap_or("none")
        );
        next.status.assignment = ea_name;
        next.record(HistoryAction::AssignmentSwitched, OPERATOR_ACTOR, msg);
    }
    if let Some(end) = ea.spec.end_time.filter(|e| *e < expires) {
        // Access never outlasts the assignment.
        expires = end;
        next.status.expiration_time = Some(end);
    }
    // Re-derive the bindings (drift: edited or deleted ones are restored; roles the RoleSetting
    // no longer lists lose theirs, since only these may exist).
    let roles = i
        .role_setting
        .map(|rs| {
            rs.spec
                .role_refs
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let desired = bindings::for_request(i.request, &roles, expires);
    next.status.bindings = desired.iter().map(Binding::reference).collect();
    next.plan(Bindings::Ensure(desired), Some(expires))
}

fn terminal(i: &Inputs<'_>, status: &ActivationRequestStatus) -> Plan {
    let ended = status.history.last().map_or(i.now, |h| h.time);
    let audited = usize::try_from(status.audited_through).unwrap_or(0) >= status.history.len();
    let keep_until = ended + i.retention;
    Plan {
        bindings: Bindings::Remove,
        status: None,
        initialize_approvals: false,
        delete: audited && i.now >= keep_until,
        requeue_at: Some(keep_until),
    }
}

#[cfg(test)]
mod tests;
