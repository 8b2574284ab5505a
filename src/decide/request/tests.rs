//! The state machine, transition by transition, at fixed times.

use chrono::TimeDelta;

use super::*;
use crate::{
    api::{Approval, ApprovalDecision::*, Scope},
    decide::{approval::Tally, policy::MfaConfig, test_fixtures::*},
};

struct World {
    rs: RoleSetting,
    ea: EligibleAssignment,
    req: ActivationRequest,
    tally: Tally,
    mfa: MfaConfig,
    assignment_gone: bool,
    rs_gone: bool,
    extended: Option<ActivationRequest>,
    chain_start: Option<DateTime<Utc>>,
    successor: Option<ActivationRequest>,
}

impl World {
    fn new() -> Self {
        Self {
            rs: role_setting("namespace-admin"),
            ea: assignment("alice-admin", "payments", "namespace-admin", user("alice")),
            req: request(
                "alice-x",
                "payments",
                "namespace-admin",
                requester("alice", &["team"]),
            ),
            tally: Tally::default(),
            mfa: MfaConfig::default(),
            assignment_gone: false,
            rs_gone: false,
            extended: None,
            chain_start: None,
            successor: None,
        }
    }

    fn decide_at(&self, now: DateTime<Utc>) -> Plan {
        let ctx = policy::Context {
            namespace: "payments",
            cluster_scope_namespace: "kube-pim-system",
            mfa: &self.mfa,
            now,
        };
        decide(&Inputs {
            now,
            request: &self.req,
            role_setting: (!self.rs_gone).then_some(&self.rs),
            assignment: (!self.assignment_gone).then_some(&self.ea),
            tally: &self.tally,
            policy: &ctx,
            retention: TimeDelta::days(30),
            extended: self.extended.as_ref(),
            chain_start: self.chain_start,
            successor: self.successor.as_ref(),
        })
    }

    /// Decides at `now` and applies the status part of the plan, as the operator would.
    fn step(&mut self, now: DateTime<Utc>) -> Plan {
        let plan = self.decide_at(now);
        if let Some(mut s) = plan.status.clone() {
            let old = self.req.status.as_ref().and_then(|s| s.approvals.clone());
            s.approvals = if plan.initialize_approvals {
                Some(vec![])
            } else {
                old
            };
            self.req.status = Some(s);
        }
        plan
    }

    fn approve(&mut self, a: Approval) {
        self.req
            .status
            .as_mut()
            .unwrap()
            .approvals
            .as_mut()
            .unwrap()
            .push(a);
        self.tally = approval::tally(&self.rs.spec.approval, &self.req, |_| None);
    }

    fn phase(&self) -> RequestPhase {
        self.req.status.as_ref().unwrap().phase.unwrap()
    }

    fn actions(&self) -> Vec<HistoryAction> {
        self.req
            .status
            .as_ref()
            .unwrap()
            .history
            .iter()
            .map(|h| h.action)
            .collect()
    }

    fn last_message(&self) -> String {
        self.req
            .status
            .as_ref()
            .unwrap()
            .history
            .last()
            .unwrap()
            .message
            .clone()
            .unwrap()
    }
}

fn ensured(p: &Plan) -> &[Binding] {
    match &p.bindings {
        Bindings::Ensure(b) => b,
        other => panic!("expected Ensure, got {other:?}"),
    }
}

#[test]
fn first_write_initialises_approvals_and_records_the_request() {
    let mut w = World::new();
    w.rs = with_approval(w.rs.clone(), vec![user("bob")], 1);
    let p = w.step(t0());
    assert!(p.initialize_approvals);
    assert_eq!(p.bindings, Bindings::Remove);
    assert_eq!(w.phase(), RequestPhase::Pending);
    assert_eq!(w.actions(), [HistoryAction::Requested]);
    let h = &w.req.status.as_ref().unwrap().history[0];
    assert_eq!((h.seq, h.actor.as_str()), (1, "alice"));
    assert_eq!(
        h.message.as_deref(),
        Some("alice requested namespace-admin (Namespace scope) for 1h: INC-1 on fire")
    );
}

#[test]
fn without_approval_the_decision_is_committed_with_the_request_then_granted() {
    let mut w = World::new();
    // Requested and Approved in one status write, no bindings yet; due again at once.
    let p = w.step(t0());
    assert!(p.initialize_approvals);
    assert_eq!(p.bindings, Bindings::Remove);
    assert_eq!(p.requeue_at, Some(t0()));
    assert_eq!(w.phase(), RequestPhase::Pending);
    assert!(condition_true(
        w.req.status.as_ref().unwrap(),
        CONDITION_APPROVED
    ));
    assert_eq!(w.req.status.as_ref().unwrap().approvals, Some(vec![]));
    assert_eq!(
        w.actions(),
        [HistoryAction::Requested, HistoryAction::Approved]
    );
    // Then, from the committed decision, bindings and Active in one plan (bindings first).
    let now = t0() + TimeDelta::milliseconds(1500);
    let p = w.step(now);
    assert_eq!(ensured(&p).len(), 1);
    assert_eq!(w.phase(), RequestPhase::Active);
    let s = w.req.status.as_ref().unwrap();
    assert_eq!(s.activation_time, Some(now));
    // Expiry is in whole seconds, never later than asked for, and scheduled precisely.
    let exp = t0() + TimeDelta::seconds(1) + TimeDelta::hours(1);
    assert_eq!(s.expiration_time, Some(exp));
    assert_eq!(s.assignment.as_deref(), Some("alice-admin"));
    assert_eq!(s.bindings.len(), 1);
    assert_eq!(p.requeue_at, Some(exp));
    assert_eq!(
        w.actions(),
        [
            HistoryAction::Requested,
            HistoryAction::Approved,
            HistoryAction::Activated
        ]
    );
}

#[test]
fn active_requests_keep_their_bindings_and_expire_on_time() {
    let mut w = World::new();
    for _ in 0..3 {
        w.step(t0());
    }
    let exp = t0() + TimeDelta::hours(1);
    // A reconcile before expiry ensures the bindings (drift) and changes no status.
    let p = w.step(exp - TimeDelta::milliseconds(1));
    assert_eq!(ensured(&p).len(), 1);
    assert_eq!(p.status, None);
    assert_eq!(p.requeue_at, Some(exp));
    // At expiry: removed, Expired.
    let p = w.step(exp);
    assert_eq!(p.bindings, Bindings::Remove);
    assert_eq!(w.phase(), RequestPhase::Expired);
    let s = w.req.status.as_ref().unwrap();
    let active = s
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_ACTIVE)
        .unwrap();
    assert_eq!(
        (active.status.as_str(), active.reason.as_str()),
        ("False", "Expired")
    );
    // Terminal: bindings stay removed; nothing else changes.
    let p = w.step(exp + TimeDelta::hours(1));
    assert_eq!(p.bindings, Bindings::Remove);
    assert_eq!(p.status, None);
}

#[test]
fn expiration_never_exceeds_the_assignment_end() {
    let mut w = World::new();
    w.ea.spec.end_time = Some(t0() + TimeDelta::minutes(10));
    for _ in 0..3 {
        w.step(t0());
    }
    assert_eq!(
        w.req.status.as_ref().unwrap().expiration_time,
        Some(t0() + TimeDelta::minutes(10))
    );
    // If the assignment's end moves earlier while Active, expiry follows it.
    w.ea.spec.end_time = Some(t0() + TimeDelta::minutes(5));
    let p = w.step(t0() + TimeDelta::minutes(1));
    assert_eq!(
        w.req.status.as_ref().unwrap().expiration_time,
        Some(t0() + TimeDelta::minutes(5))
    );
    assert_eq!(p.requeue_at, Some(t0() + TimeDelta::minutes(5)));
    let b = ensured(&p);
    let Binding::Role(rb) = &b[0] else { panic!() };
    assert_eq!(
        rb.metadata.annotations.as_ref().unwrap()[bindings::ANNOTATION_EXPIRES_AT],
        "2026-12-01T12:05:00Z"
    );
}

fn approval_world(min: i32) -> World {
    let mut w = World::new();
    w.rs = with_approval(
        role_setting("namespace-admin"),
        vec![group("sre-leads"), user("bob"), user("carol")],
        min,
    );
    w.step(t0());
    w
}

#[test]
fn pending_until_the_quorum_then_committed() {
    let mut w = approval_world(2);
    let p = w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Pending);
    assert_eq!(
        p.requeue_at,
        Some(t0() + TimeDelta::hours(24)),
        "look again at the approval timeout"
    );
    let approved = w
        .req
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_APPROVED)
        .unwrap()
        .clone();
    assert_eq!(approved.status, "False");
    assert!(
        approved.message.starts_with(
            "waiting for 2 more approval(s) from Group sre-leads, User bob, User carol"
        ),
        "{}",
        approved.message
    );
    w.approve(approval("bob", Approved, None));
    w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Pending);
    w.approve(approval("dave", Approved, Some("sre-leads")));
    // The quorum: the commit comes first, alone, and is due again at once.
    let p = w.step(t0() + TimeDelta::minutes(1));
    assert_eq!(
        p.bindings,
        Bindings::Remove,
        "the commit comes first, alone"
    );
    assert_eq!(p.requeue_at, Some(t0() + TimeDelta::minutes(1)));
    assert!(condition_true(
        w.req.status.as_ref().unwrap(),
        CONDITION_APPROVED
    ));
    assert_eq!(w.last_message(), "approved by bob, dave");
    assert_eq!(
        w.req.status.as_ref().unwrap().history.last().unwrap().actor,
        "dave"
    );
    let p = w.step(t0() + TimeDelta::minutes(1));
    assert_eq!(ensured(&p).len(), 1);
    assert_eq!(w.phase(), RequestPhase::Active);
}

#[test]
fn a_request_that_is_not_active_holds_no_bindings() {
    // Waiting for approval, and scheduled: any binding (one made for a plan whose status
    // write lost a race) is removed.
    let mut w = approval_world(1);
    assert_eq!(w.step(t0()).bindings, Bindings::Remove);
    assert_eq!(w.phase(), RequestPhase::Pending);
    let mut w = World::new();
    w.req.spec.start_time = Some(t0() + TimeDelta::hours(2));
    assert_eq!(w.step(t0()).bindings, Bindings::Remove);
    assert_eq!(w.phase(), RequestPhase::Scheduled);
}

#[test]
fn a_commit_whose_status_write_lost_the_race_is_decided_again() {
    // No approval needed: one plan records Requested and Approved, with no bindings.
    let mut w = World::new();
    let p = w.decide_at(t0());
    assert_eq!(p.bindings, Bindings::Remove);
    // Its status write was refused (someone wrote first): meanwhile the RoleSetting came to
    // require approval. The next pass, from the unchanged request, waits for approval.
    w.rs = with_approval(w.rs.clone(), vec![user("bob")], 1);
    let p = w.step(t0());
    assert_eq!(p.bindings, Bindings::Remove);
    assert_eq!(w.phase(), RequestPhase::Pending);
    assert_eq!(w.actions(), [HistoryAction::Requested]);
    // Or the request was deactivated meanwhile: Canceled, nothing kept.
    let mut w = World::new();
    w.req.spec.deactivate = true;
    let p = w.step(t0());
    assert_eq!(p.bindings, Bindings::Remove);
    assert_eq!(w.phase(), RequestPhase::Canceled);
}

#[test]
fn a_valid_deny_ends_it_and_decisions_after_the_commit_change_nothing() {
    let mut w = approval_world(1);
    w.approve(approval("carol", Denied, None));
    let p = w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Denied);
    assert_eq!(p.bindings, Bindings::Remove);
    assert_eq!(w.last_message(), "denied by carol: checked");
    assert_eq!(
        w.req.status.as_ref().unwrap().history.last().unwrap().actor,
        "carol"
    );

    let mut w = approval_world(1);
    w.approve(approval("bob", Approved, None));
    w.step(t0()); // committed
    w.approve(approval("carol", Denied, None)); // too late
    w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Active);
}

#[test]
fn approve_and_deny_together_the_first_valid_deny_wins_before_the_commit() {
    // Both decisions are in before the operator looks: never Active.
    let mut w = approval_world(1);
    w.approve(approval("bob", Approved, None));
    w.approve(approval("carol", Denied, None));
    w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Denied);
}

#[test]
fn self_approval_does_not_count_and_can_make_quorum_unreachable() {
    let mut w = World::new();
    w.rs = with_approval(
        role_setting("namespace-admin"),
        vec![user("alice"), user("bob")],
        2,
    );
    w.step(t0());
    let p = w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Failed, "{p:?}");
    let cond = w
        .req
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_ACTIVE)
        .unwrap()
        .clone();
    assert_eq!(cond.reason, "QuorumUnreachable");
    assert!(
        w.last_message().contains(
            "add approvers (or a Group) to the RoleSetting or lower approval.minApprovals"
        )
    );
}

#[test]
fn timeout() {
    let mut w = approval_world(1);
    w.step(t0() + TimeDelta::hours(23));
    assert_eq!(w.phase(), RequestPhase::Pending);
    w.step(t0() + TimeDelta::hours(24));
    assert_eq!(w.phase(), RequestPhase::TimedOut);
    assert!(w.last_message().contains("approval.timeout 24h"));
}

#[test]
fn cancel_before_and_deactivate_after_access() {
    let mut w = approval_world(1);
    w.req.spec.deactivate = true;
    w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Canceled);
    assert_eq!(
        w.req.status.as_ref().unwrap().history.last().unwrap().actor,
        "alice"
    );

    let mut w = World::new();
    for _ in 0..3 {
        w.step(t0());
    }
    w.req.spec.deactivate = true;
    let p = w.step(t0() + TimeDelta::minutes(5));
    assert_eq!(w.phase(), RequestPhase::Deactivated);
    assert_eq!(p.bindings, Bindings::Remove);
}

#[test]
fn scheduled_start() {
    let mut w = World::new();
    w.req.spec.start_time = Some(t0() + TimeDelta::hours(2));
    let p = w.step(t0()); // requested, approved (none required), scheduled
    assert_eq!(w.phase(), RequestPhase::Scheduled);
    assert_eq!(p.requeue_at, Some(t0() + TimeDelta::hours(2)));
    assert_eq!(p.bindings, Bindings::Remove);
    let p = w.step(t0() + TimeDelta::hours(1));
    assert_eq!(p.status, None);
    let start = t0() + TimeDelta::hours(2);
    let p = w.step(start);
    assert_eq!(w.phase(), RequestPhase::Active);
    assert_eq!(p.requeue_at, Some(start + TimeDelta::hours(1)));
    assert_eq!(
        w.actions(),
        [
            HistoryAction::Requested,
            HistoryAction::Approved,
            HistoryAction::Scheduled,
            HistoryAction::Activated
        ]
    );
}

#[test]
fn revocation_when_eligibility_or_policy_goes_away() {
    for cause in ["assignment", "rolesetting", "scope"] {
        let mut w = World::new();
        for _ in 0..3 {
            w.step(t0());
        }
        match cause {
            "assignment" => w.assignment_gone = true,
            "rolesetting" => w.rs_gone = true,
            _ => w.rs.spec.scopes = vec![Scope::Cluster],
        }
        let p = w.step(t0() + TimeDelta::minutes(1));
        assert_eq!(w.phase(), RequestPhase::Revoked, "{cause}");
        assert_eq!(p.bindings, Bindings::Remove, "{cause}");
        assert_eq!(
            w.req.status.as_ref().unwrap().history.last().unwrap().actor,
            OPERATOR_ACTOR
        );
    }
    // Before access, the same causes fail the request.
    let mut w = approval_world(1);
    w.assignment_gone = true;
    w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Failed);
    assert!(w.last_message().contains("ask an administrator for one"));
}

#[test]
fn policy_violations_fail_a_pending_request_with_the_message() {
    let mut w = World::new();
    w.rs.spec.activation.max_duration = "30m".parse().unwrap();
    w.step(t0());
    w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Failed);
    assert_eq!(
        w.last_message(),
        "duration 1h exceeds maxDuration 30m of RoleSetting namespace-admin: ask for 30m or less"
    );
}

#[test]
fn an_assignment_switch_is_recorded() {
    let mut w = World::new();
    for _ in 0..3 {
        w.step(t0());
    }
    w.ea.metadata.name = Some("alice-admin-2".into());
    w.step(t0() + TimeDelta::minutes(1));
    assert_eq!(w.phase(), RequestPhase::Active);
    assert_eq!(w.actions().last(), Some(&HistoryAction::AssignmentSwitched));
    assert_eq!(
        w.req.status.as_ref().unwrap().assignment.as_deref(),
        Some("alice-admin-2")
    );
}

#[test]
fn retention_deletes_only_fully_audited_requests() {
    let mut w = World::new();
    w.req.spec.deactivate = true;
    w.step(t0());
    w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Canceled);
    let later = t0() + TimeDelta::days(31);
    assert!(!w.decide_at(later).delete, "not audited yet");
    w.req.status.as_mut().unwrap().audited_through = 2;
    assert!(w.decide_at(later).delete);
    assert!(!w.decide_at(t0() + TimeDelta::days(29)).delete);
    assert_eq!(
        w.decide_at(t0()).requeue_at,
        Some(t0() + TimeDelta::days(30))
    );
}

#[test]
fn history_is_sequential_and_bounded() {
    let mut w = World::new();
    for _ in 0..3 {
        w.step(t0());
    }
    for i in 0..40 {
        w.ea.metadata.name = Some(format!("switch-{i}"));
        w.step(t0() + TimeDelta::seconds(i + 1));
    }
    w.req.spec.deactivate = true;
    w.step(t0() + TimeDelta::minutes(2));
    let h = &w.req.status.as_ref().unwrap().history;
    assert_eq!(h.len(), HISTORY_CAPACITY);
    assert!(h.iter().enumerate().all(|(i, e)| e.seq == i as i64 + 1));
    assert_eq!(
        h.last().unwrap().action,
        HistoryAction::Deactivated,
        "the final transition always fits"
    );
}

#[test]
fn conditions_keep_their_transition_time_while_unchanged() {
    let mut conds = Vec::new();
    set_condition(&mut conds, "Active", true, "A", "m", t0(), Some(1));
    set_condition(
        &mut conds,
        "Active",
        true,
        "A",
        "m2",
        t0() + TimeDelta::hours(1),
        Some(2),
    );
    assert_eq!(conds.len(), 1);
    assert_eq!(crate::time::from_k8s(&conds[0].last_transition_time), t0());
    assert_eq!(conds[0].message, "m2");
    set_condition(
        &mut conds,
        "Active",
        false,
        "B",
        "m3",
        t0() + TimeDelta::hours(2),
        Some(2),
    );
    assert_eq!(
        crate::time::from_k8s(&conds[0].last_transition_time),
        t0() + TimeDelta::hours(2)
    );
}

#[test]
fn deleting_an_open_request_records_its_revocation() {
    let mut w = World::new();
    for _ in 0..3 {
        w.step(t0());
    }
    let s = revoke_on_delete(&w.req, t0() + TimeDelta::minutes(1));
    assert_eq!(s.phase, Some(RequestPhase::Revoked));
    assert_eq!(s.history.last().unwrap().action, HistoryAction::Revoked);
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_ACTIVE)
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "RequestDeleted")
    );
}

/// An Active request of alice's, activated at t0 for 1h (expires t0+1h).
fn active_world() -> World {
    let mut w = World::new();
    for _ in 0..3 {
        w.step(t0());
    }
    assert_eq!(w.phase(), RequestPhase::Active);
    w
}

#[test]
fn an_extension_continues_without_a_gap_and_supersedes_its_predecessor() {
    let x = active_world();
    let mut e = World::new();
    e.req = request(
        "alice-ext",
        "payments",
        "namespace-admin",
        requester("alice", &["team"]),
    );
    e.req.spec.extends = Some("alice-x".into());
    e.req.spec.duration = Some("30m".parse().unwrap());
    e.extended = Some(x.req.clone());
    e.chain_start = chain_start::<ActivationRequest>(&x.req, |_| None);
    assert_eq!(e.chain_start, Some(t0()));
    let later = t0() + TimeDelta::minutes(50);
    e.step(later);
    e.step(later);
    let p = e.step(later);
    assert_eq!(e.phase(), RequestPhase::Active);
    assert_eq!(ensured(&p).len(), 1);
    // From the predecessor's expiry, not from now.
    assert_eq!(
        e.req.status.as_ref().unwrap().expiration_time,
        Some(t0() + TimeDelta::minutes(90))
    );
    assert!(e.last_message().ends_with("extending alice-x"));

    // The predecessor hands over once the extension is Active.
    let mut x = x;
    x.successor = Some(e.req.clone());
    let p = x.step(later + TimeDelta::seconds(1));
    assert_eq!(x.phase(), RequestPhase::Superseded);
    assert_eq!(p.bindings, Bindings::Remove);
    let x_binding = &x.req.status.as_ref().unwrap().bindings[0].name;
    let e_binding = &e.req.status.as_ref().unwrap().bindings[0].name;
    assert_ne!(
        x_binding, e_binding,
        "removing the predecessor's bindings leaves the extension's"
    );
}

#[test]
fn max_continuous_caps_a_chain_of_extensions() {
    let x = active_world();
    let mut e = World::new();
    e.rs.spec.activation.max_continuous = Some("80m".parse().unwrap());
    e.req = request(
        "alice-ext",
        "payments",
        "namespace-admin",
        requester("alice", &["team"]),
    );
    e.req.spec.extends = Some("alice-x".into());
    e.extended = Some(x.req.clone());
    e.chain_start = Some(t0());
    for _ in 0..3 {
        e.step(t0() + TimeDelta::minutes(50));
    }
    assert_eq!(
        e.req.status.as_ref().unwrap().expiration_time,
        Some(t0() + TimeDelta::minutes(80))
    );
}

#[test]
fn extending_an_ended_request_is_a_plain_activation() {
    let mut x = active_world();
    x.req.spec.deactivate = true;
    x.step(t0() + TimeDelta::minutes(10));
    assert_eq!(x.phase(), RequestPhase::Deactivated);
    let mut e = World::new();
    e.req = request(
        "alice-ext",
        "payments",
        "namespace-admin",
        requester("alice", &["team"]),
    );
    e.req.spec.extends = Some("alice-x".into());
    e.extended = Some(x.req.clone());
    let now = t0() + TimeDelta::minutes(20);
    for _ in 0..3 {
        e.step(now);
    }
    assert_eq!(
        e.req.status.as_ref().unwrap().expiration_time,
        Some(now + TimeDelta::hours(1))
    );
    assert!(!e.last_message().contains("extending"));
}

#[test]
fn someone_elses_request_is_never_extended_or_superseded() {
    let x = active_world();
    let mut e = World::new();
    e.req = request(
        "bob-ext",
        "payments",
        "namespace-admin",
        requester("bob", &[]),
    );
    e.req.spec.extends = Some("alice-x".into());
    e.extended = Some(x.req.clone());
    e.chain_start = Some(t0());
    let later = t0() + TimeDelta::minutes(50);
    for _ in 0..3 {
        e.step(later);
    }
    assert_eq!(
        e.req.status.as_ref().unwrap().expiration_time,
        Some(later + TimeDelta::hours(1)),
        "no carry-over"
    );
    let mut x = x;
    x.successor = Some(e.req.clone());
    x.step(later);
    assert_eq!(
        x.phase(),
        RequestPhase::Active,
        "bob's request does not end alice's"
    );
}

#[test]
fn an_extension_of_a_scheduled_request_waits_for_it_to_start() {
    let mut x = World::new();
    x.req.spec.start_time = Some(t0() + TimeDelta::hours(2));
    for _ in 0..3 {
        x.step(t0());
    }
    assert_eq!(x.phase(), RequestPhase::Scheduled);
    let mut e = World::new();
    e.req = request(
        "alice-ext",
        "payments",
        "namespace-admin",
        requester("alice", &["team"]),
    );
    e.req.spec.extends = Some("alice-x".into());
    e.extended = Some(x.req.clone());
    e.step(t0());
    e.step(t0());
    let p = e.step(t0());
    assert_eq!(e.phase(), RequestPhase::Scheduled);
    assert_eq!(p.requeue_at, Some(t0() + TimeDelta::hours(2)));
}

#[test]
fn chain_start_follows_superseded_links() {
    let mut w1 = active_world();
    w1.req.metadata.name = Some("first".into());
    w1.req.status.as_mut().unwrap().phase = Some(RequestPhase::Superseded);
    let mut w2 = active_world();
    w2.req.metadata.name = Some("second".into());
    w2.req.spec.extends = Some("first".into());
    w2.req.status.as_mut().unwrap().activation_time = Some(t0() + TimeDelta::minutes(55));
    let first = w1.req.clone();
    let lookup = |n: &str| (n == "first").then_some(&first);
    assert_eq!(chain_start(&w2.req, lookup), Some(t0()));
    // A predecessor that simply expired breaks the chain.
    let mut expired = first.clone();
    expired.status.as_mut().unwrap().phase = Some(RequestPhase::Expired);
    assert_eq!(
        chain_start(&w2.req, |n| (n == "first").then_some(&expired)),
        Some(t0() + TimeDelta::minutes(55))
    );
}

#[test]
fn whoever_deactivated_is_the_actor() {
    let mut w = active_world();
    w.req.spec.deactivate = true;
    w.req.metadata.annotations = Some([(DEACTIVATED_BY.to_string(), "bob".to_string())].into());
    w.step(t0() + TimeDelta::minutes(1));
    assert_eq!(w.phase(), RequestPhase::Deactivated);
    let last = w
        .req
        .status
        .as_ref()
        .unwrap()
        .history
        .last()
        .unwrap()
        .clone();
    assert_eq!(last.actor, "bob");
    assert_eq!(
        last.message.as_deref(),
        Some("bob ended the activation early")
    );
}

/// Which endings the controller confirms from live reads before carrying them out: those
/// read from the RoleSetting or the assignments, for an open request only.
#[test]
fn only_endings_read_from_the_role_setting_or_assignments_are_confirmed() {
    assert!(!decision_committed(&World::new().req));
    let start = World::new();
    // Granting is never confirmed.
    let mut w = World::new();
    let p = w.step(t0());
    assert!(!withdraws(&start.req, &p), "Requested+Approved");
    let before = w.req.clone();
    let p = w.step(t0() + TimeDelta::seconds(1));
    assert!(!withdraws(&before, &p), "Activated");
    let active = w.req.clone();

    // Not eligible, and RoleSetting gone: Pending (Failed) and Active (Revoked).
    for gone in ["assignment", "role setting"] {
        for (what, req) in [("new", &start.req), ("active", &active)] {
            let mut x = World::new();
            x.req = req.clone();
            match gone {
                "assignment" => x.assignment_gone = true,
                _ => x.rs_gone = true,
            }
            let p = x.decide_at(t0() + TimeDelta::seconds(2));
            assert!(withdraws(req, &p), "{what} request, {gone} gone: {p:?}");
        }
    }

    // Endings the request decides itself: expiry, deactivation.
    let mut x = World::new();
    x.req = active.clone();
    let p = x.decide_at(t0() + TimeDelta::hours(2));
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase),
        Some(RequestPhase::Expired)
    );
    assert!(!withdraws(&active, &p), "Expired");
    x.req.spec.deactivate = true;
    let p = x.decide_at(t0() + TimeDelta::seconds(2));
    assert!(!withdraws(&active, &p), "Deactivated");

    // A denial is the approvers' (the webhook checked them against the RoleSetting); an
    // approval timeout is the RoleSetting's.
    let mut x = approval_world(1);
    let pending = x.req.clone();
    x.approve(approval("carol", Denied, None));
    let p = x.decide_at(t0());
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase),
        Some(RequestPhase::Denied)
    );
    assert!(!withdraws(&pending, &p), "Denied");
    let x = approval_world(1);
    let pending = x.req.clone();
    let p = x.decide_at(t0() + TimeDelta::hours(24));
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase),
        Some(RequestPhase::TimedOut)
    );
    assert!(withdraws(&pending, &p), "TimedOut");

    // An ended request is not confirmed again, even with its assignment gone.
    let mut x = World::new();
    x.req = active;
    x.assignment_gone = true;
    x.step(t0() + TimeDelta::seconds(2));
    assert_eq!(x.phase(), RequestPhase::Revoked);
    let ended = x.req.clone();
    let p = x.decide_at(t0() + TimeDelta::seconds(3));
    assert!(!withdraws(&ended, &p));
}

#[test]
fn a_decision_is_committed_from_approval_on() {
    let mut w = approval_world(1);
    assert!(!decision_committed(&w.req), "Pending, undecided");
    w.approve(approval("bob", Approved, None));
    w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Pending);
    assert!(
        decision_committed(&w.req),
        "Pending, Approved: bindings may exist"
    );
    w.step(t0());
    assert_eq!(w.phase(), RequestPhase::Active);
    assert!(decision_committed(&w.req));
}
