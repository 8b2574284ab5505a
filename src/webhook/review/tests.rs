//! The admission decisions, one rule at a time, with JSON fixtures for what clients send.

use k8s_openapi::api::authentication::v1::UserInfo;
use serde_json::json;

use super::*;
use crate::{
    api::{ActivationRequestStatus, ApprovalDecision::*, Scope},
    decide::test_fixtures::*,
};

fn caller(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        username: Some(name.into()),
        uid: Some(format!("uid-{name}")),
        groups: Some(groups.iter().map(|g| g.to_string()).collect()),
        extra: None,
    }
}

fn settings() -> Settings {
    Settings {
        cluster_scope_namespace: "kube-pim-system".into(),
        mfa: policy::MfaConfig::default(),
        break_glass_group: Some("breakglass".into()),
        max_open_requests: 3,
        notification_targets: Default::default(),
    }
}

fn denied(v: Verdict) -> String {
    match v {
        Verdict::Deny(_, m) => m,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn patch_ops(v: Verdict) -> serde_json::Value {
    match v {
        Verdict::Patch(p) => serde_json::to_value(p).unwrap(),
        other => panic!("expected a patch, got {other:?}"),
    }
}

/// alice's request, after mutation (requester stamped from `caller("alice", ..)`).
fn alice_request() -> ActivationRequest {
    let mut r = request("alice-x", "payments", "rs", requester("alice", &["team"]));
    r.spec.requester.groups = vec!["team".into()];
    r
}

fn pending_request() -> ActivationRequest {
    let mut r = alice_request();
    r.status = Some(ActivationRequestStatus {
        phase: Some(RequestPhase::Pending),
        approvals: Some(vec![]),
        ..Default::default()
    });
    r
}

fn approval_rs() -> RoleSetting {
    with_approval(role_setting("rs"), vec![group("sre-leads"), user("bob")], 1)
}

// --- mutation -------------------------------------------------------------------------------

#[test]
fn the_requester_is_replaced_with_the_caller() {
    let sent = json!({"spec": {"roleSetting": "rs", "requester": {"username": "bob", "groups": ["sre-leads"]}}});
    let mut user = caller("alice", &["team"]);
    user.extra = Some([("kubepim.io/amr".to_string(), vec!["mfa".to_string()])].into());
    let ops = patch_ops(stamp_requester(&sent, &user));
    assert_eq!(
        ops,
        json!([{"op": "replace", "path": "/spec/requester", "value": {
            "username": "alice", "uid": "uid-alice", "groups": ["team"], "extra": {"kubepim.io/amr": ["mfa"]}}},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
    );
    // Nothing sent: added.
    let ops = patch_ops(stamp_requester(
        &json!({"spec": {"roleSetting": "rs"}}),
        &user,
    ));
    assert_eq!(ops[0]["op"], "add");
}

#[test]
fn a_new_request_gets_kube_pims_finalizer_once() {
    let user = caller("alice", &["team"]);
    let with = |f: Value| json!({"metadata": {"finalizers": f}, "spec": {"roleSetting": "rs"}});
    let ops = patch_ops(stamp_requester(&with(json!(["example.com/x"])), &user));
    assert_eq!(
        ops[1],
        json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER})
    );
    let ops = patch_ops(stamp_requester(&with(json!([FINALIZER])), &user));
    assert_eq!(ops.as_array().unwrap().len(), 1, "already there: {ops}");
}

#[test]
fn an_appended_approval_gets_the_callers_identity_group_and_time() {
    let rs = approval_rs();
    let old = json!({"status": {"approvals": []}});
    let new = json!({"status": {"approvals": [{"decision": "Approved", "approver": {"username": "forged"}, "time": "2000-01-01T00:00:00Z"}]}});
    let ops = patch_ops(stamp_approval(
        &old,
        &new,
        &caller("dave", &["sre-leads"]),
        Some(&rs),
        t0(),
    ));
    assert_eq!(
        ops,
        json!([
            {"op": "add", "path": "/status/approvals/0/approver", "value": {"username": "dave", "uid": "uid-dave", "viaGroup": "sre-leads"}},
            {"op": "add", "path": "/status/approvals/0/time", "value": "2026-12-01T12:00:00.000000Z"}
        ])
    );
    // Listed by name: no group recorded.
    let ops = patch_ops(stamp_approval(
        &old,
        &new,
        &caller("bob", &["sre-leads"]),
        Some(&rs),
        t0(),
    ));
    assert_eq!(
        ops[0]["value"],
        json!({"username": "bob", "uid": "uid-bob"})
    );
    // Not exactly one appended: left to validation.
    let two =
        json!({"status": {"approvals": [{"decision": "Approved"}, {"decision": "Approved"}]}});
    assert_eq!(
        stamp_approval(&old, &two, &caller("bob", &[]), Some(&rs), t0()),
        Verdict::Allow
    );
    assert_eq!(
        stamp_approval(
            &json!({"status": {}}),
            &new,
            &caller("bob", &[]),
            Some(&rs),
            t0()
        ),
        Verdict::Allow
    );
}

#[test]
fn assignments_record_who_wrote_them() {
    let ops = patch_ops(stamp_authorized_by(
        &json!({"metadata": {"name": "a"}}),
        &caller("admin", &["platform"]),
    ));
    assert_eq!(
        ops[0],
        json!({"op": "add", "path": "/metadata/annotations", "value": {}})
    );
    assert_eq!(
        ops[1]["path"],
        "/metadata/annotations/kubepim.io~1authorized-by"
    );
    let stamped: serde_json::Value =
        serde_json::from_str(ops[1]["value"].as_str().unwrap()).unwrap();
    assert_eq!(stamped["username"], "admin");
    let ops = patch_ops(stamp_authorized_by(
        &json!({"metadata": {"annotations": {"x": "y"}}}),
        &caller("admin", &[]),
    ));
    assert_eq!(ops.as_array().unwrap().len(), 1);
}

// --- request CREATE -------------------------------------------------------------------------

#[test]
fn a_request_needs_its_role_setting_policy_and_eligibility() {
    let alice = caller("alice", &["team"]);
    let ea = assignment("a", "payments", "rs", user("alice"));
    let rs = role_setting("rs");
    let ok = validate_request_create(
        &alice_request(),
        &alice,
        &RequestFacts {
            role_setting: Some(&rs),
            assignments: &[&ea],
            requests: &[],
            role_risks: &[],
            open_by_requester: 0,
        },
        &settings(),
        t0(),
    );
    assert_eq!(ok, Verdict::Allow);
    // With kube-pim's finalizer (as the mutation stamps it) it passes; another's does not.
    let facts = RequestFacts {
        role_setting: Some(&rs),
        assignments: &[&ea],
        requests: &[],
        role_risks: &[],
        open_by_requester: 0,
    };
    let mut stamped = alice_request();
    stamped.metadata.finalizers = Some(vec![FINALIZER.into()]);
    assert_eq!(
        validate_request_create(&stamped, &alice, &facts, &settings(), t0()),
        Verdict::Allow
    );
    stamped.metadata.finalizers = Some(vec![FINALIZER.into(), "example.com/pin".into()]);
    assert!(
        denied(validate_request_create(
            &stamped,
            &alice,
            &facts,
            &settings(),
            t0()
        ))
        .contains("finalizers cannot be added")
    );
    let msg = denied(validate_request_create(
        &alice_request(),
        &alice,
        &RequestFacts {
            role_setting: None,
            assignments: &[&ea],
            requests: &[],
            role_risks: &[],
            open_by_requester: 0,
        },
        &settings(),
        t0(),
    ));
    assert_eq!(
        msg,
        "RoleSetting rs does not exist: check the name (kubectl get rolesettings)"
    );
    let msg = denied(validate_request_create(
        &alice_request(),
        &alice,
        &RequestFacts {
            role_setting: Some(&rs),
            assignments: &[],
            requests: &[],
            role_risks: &[],
            open_by_requester: 0,
        },
        &settings(),
        t0(),
    ));
    assert!(
        msg.starts_with(
            "alice is not eligible for RoleSetting rs (Namespace scope) in namespace payments now"
        ),
        "{msg}"
    );
    let mut long = alice_request();
    long.spec.duration = Some("5h".parse().unwrap());
    let msg = denied(validate_request_create(
        &long,
        &alice,
        &RequestFacts {
            role_setting: Some(&rs),
            assignments: &[&ea],
            requests: &[],
            role_risks: &[],
            open_by_requester: 0,
        },
        &settings(),
        t0(),
    ));
    assert_eq!(
        msg,
        "duration 5h exceeds maxDuration 1h of RoleSetting rs: ask for 1h or less"
    );
    // A requester that does not match the caller never passes (mutation makes them equal).
    let msg = denied(validate_request_create(
        &alice_request(),
        &caller("bob", &[]),
        &RequestFacts {
            role_setting: Some(&rs),
            assignments: &[&ea],
            requests: &[],
            role_risks: &[],
            open_by_requester: 0,
        },
        &settings(),
        t0(),
    ));
    assert!(msg.contains("spec.requester must be the caller"));
}

#[test]
fn only_ones_own_open_request_may_be_extended_once() {
    let alice = caller("alice", &["team"]);
    let ea = assignment("a", "payments", "rs", user("alice"));
    let rs = role_setting("rs");
    let mut mine = request("mine", "payments", "rs", requester("alice", &["team"]));
    mine.status = Some(ActivationRequestStatus {
        phase: Some(RequestPhase::Active),
        ..Default::default()
    });
    let mut bobs = request("bobs", "payments", "rs", requester("bob", &[]));
    bobs.status = mine.status.clone();
    let mut ext = alice_request();
    ext.spec.extends = Some("mine".into());
    assert_eq!(
        validate_request_create(
            &ext,
            &alice,
            &RequestFacts {
                role_setting: Some(&rs),
                assignments: &[&ea],
                requests: &[&mine, &bobs],
                role_risks: &[],
                open_by_requester: 0
            },
            &settings(),
            t0()
        ),
        Verdict::Allow
    );
    ext.spec.extends = Some("bobs".into());
    assert!(
        denied(validate_request_create(
            &ext,
            &alice,
            &RequestFacts {
                role_setting: Some(&rs),
                assignments: &[&ea],
                requests: &[&mine, &bobs],
                role_risks: &[],
                open_by_requester: 0
            },
            &settings(),
            t0()
        ))
        .contains("is not your own Active or Scheduled request")
    );
    let mut ended = mine.clone();
    ended.status.as_mut().unwrap().phase = Some(RequestPhase::Expired);
    ext.spec.extends = Some("mine".into());
    assert!(matches!(
        validate_request_create(
            &ext,
            &alice,
            &RequestFacts {
                role_setting: Some(&rs),
                assignments: &[&ea],
                requests: &[&ended],
                role_risks: &[],
                open_by_requester: 0
            },
            &settings(),
            t0()
        ),
        Verdict::Deny(..)
    ));
    let mut open_ext = request("ext1", "payments", "rs", requester("alice", &["team"]));
    open_ext.spec.extends = Some("mine".into());
    let msg = denied(validate_request_create(
        &ext,
        &alice,
        &RequestFacts {
            role_setting: Some(&rs),
            assignments: &[&ea],
            requests: &[&mine, &open_ext],
            role_risks: &[],
            open_by_requester: 0,
        },
        &settings(),
        t0(),
    ));
    assert!(
        msg.contains("mine already has an open extension, ext1"),
        "{msg}"
    );
}

// --- request UPDATE -------------------------------------------------------------------------

#[test]
fn spec_changes_other_than_deactivating_are_refused() {
    let old = alice_request();
    let alice = caller("alice", &[]);
    let mut new = old.clone();
    new.spec.duration = Some("2h".parse().unwrap());
    assert!(
        denied(validate_request_update(&old, &new, &alice, None, false))
            .starts_with("spec is immutable")
    );
    let mut new = old.clone();
    new.spec.ticket = Some("INC-1".into());
    assert!(matches!(
        validate_request_update(&old, &new, &alice, None, false),
        Verdict::Deny(..)
    ));
    let mut new = old.clone();
    new.spec.deactivate = true;
    assert_eq!(
        validate_request_update(&old, &new, &alice, None, false),
        Verdict::Allow
    );
    let back = old.clone();
    assert!(
        denied(validate_request_update(&new, &back, &alice, None, false))
            .contains("cannot go back to false")
    );
}

#[test]
fn only_the_requester_or_an_approver_deactivates() {
    let old = alice_request();
    let mut new = old.clone();
    new.spec.deactivate = true;
    let rs = approval_rs();
    assert_eq!(
        validate_request_update(&old, &new, &caller("bob", &[]), Some(&rs), false),
        Verdict::Allow
    );
    assert_eq!(
        validate_request_update(
            &old,
            &new,
            &caller("dave", &["sre-leads"]),
            Some(&rs),
            false
        ),
        Verdict::Allow
    );
    // Same uid, other name: still the requester.
    let mut renamed = caller("alice2", &[]);
    renamed.uid = Some("uid-alice".into());
    assert_eq!(
        validate_request_update(&old, &new, &renamed, Some(&rs), false),
        Verdict::Allow
    );
    let mallory = caller("mallory", &["team"]);
    assert!(deactivation_needs_bind_check(
        &old,
        &new,
        &mallory,
        Some(&rs)
    ));
    assert!(!deactivation_needs_bind_check(
        &old,
        &new,
        &caller("bob", &[]),
        Some(&rs)
    ));
    let msg = denied(validate_request_update(
        &old,
        &new,
        &mallory,
        Some(&rs),
        false,
    ));
    assert_eq!(
        msg,
        "only the requester (alice), an approver of RoleSetting rs, or someone who may bind its roles may deactivate this request"
    );
    // Someone who may bind the roles (a SubjectAccessReview said so) may end it.
    assert_eq!(
        validate_request_update(&old, &new, &mallory, Some(&rs), true),
        Verdict::Allow
    );
}

#[test]
fn kube_pims_metadata_is_kube_pims() {
    let mut old = alice_request();
    old.metadata.finalizers = Some(vec![
        crate::controller::FINALIZER.into(),
        "other.io/x".into(),
    ]);
    old.metadata.labels = Some(
        [
            ("kubepim.io/x".to_string(), "1".to_string()),
            ("team".to_string(), "a".to_string()),
        ]
        .into(),
    );
    let alice = caller("alice", &[]);
    let change = |f: &dyn Fn(&mut ActivationRequest)| {
        let mut n = old.clone();
        f(&mut n);
        validate_request_update(&old, &n, &alice, None, false)
    };
    assert!(
        denied(change(
            &|n| n.metadata.finalizers = Some(vec!["other.io/x".into()])
        ))
        .contains("only kube-pim removes")
    );
    assert_eq!(
        change(&|n| n.metadata.finalizers = Some(vec![crate::controller::FINALIZER.into()])),
        Verdict::Allow,
        "others' finalizers may go"
    );
    assert!(
        denied(change(&|n| n
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("kubepim.io/x")
            .map(|_| ())
            .unwrap()))
        .contains("kubepim.io/*")
    );
    assert!(matches!(
        change(&|n| {
            n.metadata.annotations = Some([("kubepim.io/y".to_string(), "z".to_string())].into());
        }),
        Verdict::Deny(..)
    ));
    assert_eq!(
        change(&|n| {
            n.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("team".into(), "b".into());
        }),
        Verdict::Allow
    );
    assert!(matches!(
        change(&|n| {
            n.metadata.owner_references = Some(vec![Default::default()]);
        }),
        Verdict::Deny(..)
    ));
    let mut bare = alice_request();
    bare.metadata.finalizers = None;
    let mut added = bare.clone();
    added.metadata.finalizers = Some(vec![crate::controller::FINALIZER.into()]);
    assert!(
        denied(validate_request_update(&bare, &added, &alice, None, false))
            .contains("only kube-pim adds")
    );
}

// --- decisions (status UPDATE) --------------------------------------------------------------

fn decided(
    old: &ActivationRequest,
    who: &str,
    decision: crate::api::ApprovalDecision,
    reason: Option<&str>,
) -> ActivationRequest {
    let mut n = old.clone();
    let mut a = approval(who, decision, None);
    a.reason = reason.map(String::from);
    n.status
        .as_mut()
        .unwrap()
        .approvals
        .as_mut()
        .unwrap()
        .push(a);
    n
}

#[test]
fn an_approver_appends_one_decision() {
    let rs = approval_rs();
    let old = pending_request();
    assert_eq!(
        validate_decision(
            &old,
            &decided(&old, "bob", Approved, Some("ok")),
            &caller("bob", &[]),
            Some(&rs),
            t0()
        ),
        Verdict::Allow
    );
    assert_eq!(
        validate_decision(
            &old,
            &decided(&old, "dave", Approved, None),
            &caller("dave", &["sre-leads"]),
            Some(&rs),
            t0()
        ),
        Verdict::Allow
    );
}

#[test]
fn decisions_that_are_refused() {
    let rs = approval_rs();
    let old = pending_request();
    let bob = caller("bob", &[]);
    // Recorded for someone else than the caller.
    assert!(
        denied(validate_decision(
            &old,
            &decided(&old, "carol", Approved, None),
            &bob,
            Some(&rs),
            t0()
        ))
        .contains("recorded for the caller only")
    );
    // Self-approval, even as a member of an approver group.
    assert!(
        denied(validate_decision(
            &old,
            &decided(&old, "alice", Approved, None),
            &caller("alice", &["sre-leads"]),
            Some(&rs),
            t0()
        ))
        .contains("cannot decide your own request")
    );
    // Not an approver.
    assert!(denied(validate_decision(&old, &decided(&old, "mallory", Approved, None), &caller("mallory", &["team"]), Some(&rs), t0())).contains("mallory is not an approver of RoleSetting rs: its approvers are Group sre-leads, User bob"));
    // A Deny needs a reason; requireReason makes every decision need one.
    assert!(
        denied(validate_decision(
            &old,
            &decided(&old, "bob", Denied, None),
            &bob,
            Some(&rs),
            t0()
        ))
        .contains("a Deny needs a reason")
    );
    let mut strict = rs.clone();
    strict.spec.approval.require_reason = true;
    assert!(
        denied(validate_decision(
            &old,
            &decided(&old, "bob", Approved, Some(" ")),
            &bob,
            Some(&strict),
            t0()
        ))
        .contains("requires a reason")
    );
    // Second decision by the same approver.
    let once = decided(&old, "bob", Approved, Some("ok"));
    assert!(
        denied(validate_decision(
            &once,
            &decided(&once, "bob", Denied, Some("changed my mind")),
            &bob,
            Some(&rs),
            t0()
        ))
        .contains("already decided")
    );
    // Two at once, rewriting, reordering or dropping decisions.
    let two = decided(
        &decided(&old, "bob", Approved, None),
        "dave",
        Approved,
        None,
    );
    assert!(
        denied(validate_decision(&old, &two, &bob, Some(&rs), t0()))
            .contains("append exactly one approval")
    );
    let with_carol = decided(&old, "carol", Approved, Some("x"));
    let mut rewritten = decided(&with_carol, "bob", Approved, None);
    rewritten
        .status
        .as_mut()
        .unwrap()
        .approvals
        .as_mut()
        .unwrap()[0]
        .decision = Denied;
    assert!(
        denied(validate_decision(
            &with_carol,
            &rewritten,
            &bob,
            Some(&rs),
            t0()
        ))
        .contains("append exactly one approval")
    );
    // Any other status field.
    let mut phase = decided(&old, "bob", Approved, None);
    phase.status.as_mut().unwrap().phase = Some(RequestPhase::Active);
    assert!(
        denied(validate_decision(&old, &phase, &bob, Some(&rs), t0()))
            .contains("nothing else in status may change")
    );
    let mut audited = decided(&old, "bob", Approved, None);
    audited.status.as_mut().unwrap().audited_through = 99;
    assert!(matches!(
        validate_decision(&old, &audited, &bob, Some(&rs), t0()),
        Verdict::Deny(..)
    ));
    // Dropping status.
    let mut dropped = old.clone();
    dropped.status = None;
    assert!(
        denied(validate_decision(&old, &dropped, &bob, Some(&rs), t0())).contains("removes it")
    );
    // Not Pending, or not initialised yet.
    let mut active = old.clone();
    active.status.as_mut().unwrap().phase = Some(RequestPhase::Active);
    assert!(
        denied(validate_decision(
            &active,
            &decided(&active, "bob", Approved, None),
            &bob,
            Some(&rs),
            t0()
        ))
        .contains("only taken while it is Pending")
    );
    let mut fresh = old.clone();
    fresh.status.as_mut().unwrap().approvals = None;
    let mut fresh_new = fresh.clone();
    fresh_new.status.as_mut().unwrap().approvals = Some(vec![approval("bob", Approved, None)]);
    assert!(
        denied(validate_decision(&fresh, &fresh_new, &bob, Some(&rs), t0()))
            .contains("not ready for decisions yet")
    );
    // A ServiceAccount approver without allowServiceAccountApprovers.
    let sa_rs = with_approval(role_setting("rs"), vec![service_account("ops", "bot")], 1);
    let sa = "system:serviceaccount:ops:bot";
    assert!(
        denied(validate_decision(
            &old,
            &decided(&old, sa, Approved, None),
            &caller(sa, &[]),
            Some(&sa_rs),
            t0()
        ))
        .contains("is not an approver")
    );
}

// --- DELETE ---------------------------------------------------------------------------------

#[test]
fn open_requests_are_kept_unless_break_glass_or_the_namespace_goes() {
    let old = pending_request();
    let msg = denied(validate_request_delete(
        &old,
        &caller("admin", &["system:masters"]),
        &settings(),
        false,
    ));
    assert!(
        msg.contains("end it with spec.deactivate: true (kubectl pim deactivate alice-x)"),
        "{msg}"
    );
    assert_eq!(
        validate_request_delete(&old, &caller("oncall", &["breakglass"]), &settings(), false),
        Verdict::Allow
    );
    assert_eq!(
        validate_request_delete(
            &old,
            &caller(
                "system:serviceaccount:kube-system:namespace-controller",
                &[]
            ),
            &settings(),
            true
        ),
        Verdict::Allow
    );
    let mut ended = old.clone();
    ended.status.as_mut().unwrap().phase = Some(RequestPhase::Expired);
    assert_eq!(
        validate_request_delete(&ended, &caller("alice", &[]), &settings(), false),
        Verdict::Allow
    );
    let mut new = old.clone();
    new.status = None;
    assert!(
        matches!(
            validate_request_delete(&new, &caller("alice", &[]), &settings(), false),
            Verdict::Deny(..)
        ),
        "a request not yet seen by the operator is open"
    );
}

// --- assignments and RoleSettings -----------------------------------------------------------

fn stamped(mut ea: EligibleAssignment, who: &UserInfo) -> EligibleAssignment {
    ea.metadata.annotations = Some([(AUTHORIZED_BY.to_string(), identity(who).to_string())].into());
    ea
}

#[test]
fn assignments_follow_their_role_setting_and_their_stamp() {
    let admin = caller("admin", &["platform"]);
    let mut rs = role_setting("rs");
    let ea = stamped(assignment("a", "payments", "rs", user("alice")), &admin);
    assert_eq!(
        validate_assignment(None, &ea, &admin, Some(&rs), None, &settings(), t0()),
        Verdict::Allow
    );
    assert_eq!(
        validate_assignment(None, &ea, &admin, None, None, &settings(), t0()),
        Verdict::Allow,
        "GitOps order: the RoleSetting may come later"
    );
    rs.spec.assignment.allow_permanent = false;
    assert!(
        denied(validate_assignment(
            None,
            &ea,
            &admin,
            Some(&rs),
            None,
            &settings(),
            t0()
        ))
        .contains("set spec.endTime")
    );
    // The stamp must be the caller's own.
    let forged = stamped(
        assignment("a", "payments", "rs", user("alice")),
        &caller("root", &["system:masters"]),
    );
    assert!(
        denied(validate_assignment(
            None,
            &forged,
            &admin,
            None,
            None,
            &settings(),
            t0()
        ))
        .contains("set by kube-pim")
    );
    let mut cluster = stamped(assignment("c", "payments", "rs", user("alice")), &admin);
    cluster.spec.scope = Scope::Cluster;
    assert!(
        denied(validate_assignment(
            None,
            &cluster,
            &admin,
            None,
            None,
            &settings(),
            t0()
        ))
        .contains("live only in namespace kube-pim-system")
    );
}

#[test]
fn the_last_protected_assignment_stays() {
    let mut rs = role_setting("rs");
    let ea = assignment("a", "payments", "rs", user("alice"));
    assert_eq!(
        validate_assignment_delete(&ea, Some(&rs), 0, false),
        Verdict::Allow
    );
    rs.spec.protect_last_assignment = true;
    assert!(
        denied(validate_assignment_delete(&ea, Some(&rs), 0, false))
            .contains("create another one first")
    );
    assert_eq!(
        validate_assignment_delete(&ea, Some(&rs), 1, false),
        Verdict::Allow
    );
    assert_eq!(
        validate_assignment_delete(&ea, Some(&rs), 0, true),
        Verdict::Allow
    );
}

#[test]
fn a_ticket_pattern_must_compile() {
    let mut rs = role_setting("rs");
    let admin = caller("admin", &[]);
    assert_eq!(
        validate_role_setting(&rs, &admin, None, &[], &Default::default()),
        Verdict::Allow
    );
    rs.spec.activation.ticket_pattern = Some("([".into());
    assert!(
        denied(validate_role_setting(
            &rs,
            &admin,
            None,
            &[],
            &Default::default()
        ))
        .contains("is not a valid regular expression")
    );
}

#[test]
fn writers_who_may_not_bind_the_roles_are_refused_with_the_command_to_check() {
    let carol = caller("carol", &["team"]);
    let rs = role_setting("rs");
    let msg = denied(validate_role_setting(
        &rs,
        &carol,
        Some("admin"),
        &[],
        &Default::default(),
    ));
    assert!(
        msg.contains("carol may not bind ClusterRole admin cluster-wide"),
        "{msg}"
    );
    assert!(
        msg.contains("kubectl auth can-i bind clusterroles/admin)"),
        "{msg}"
    );
    let ea = stamped(assignment("a", "payments", "rs", user("alice")), &carol);
    let msg = denied(validate_assignment(
        None,
        &ea,
        &carol,
        Some(&rs),
        Some("admin"),
        &settings(),
        t0(),
    ));
    assert!(
        msg.contains("may not bind ClusterRole admin in namespace payments"),
        "{msg}"
    );
    assert!(
        msg.contains("kubectl auth can-i bind clusterroles/admin -n payments"),
        "{msg}"
    );
    let mut cluster = stamped(
        assignment("c", "kube-pim-system", "rs", user("alice")),
        &carol,
    );
    cluster.spec.scope = Scope::Cluster;
    let msg = denied(validate_assignment(
        None,
        &cluster,
        &carol,
        Some(&rs),
        Some("admin"),
        &settings(),
        t0(),
    ));
    assert!(msg.contains("admin cluster-wide"), "{msg}");
    assert_eq!(
        validate_assignment(None, &ea, &carol, Some(&rs), None, &settings(), t0()),
        Verdict::Allow,
        "allowed to bind: allowed"
    );
}

// --- review findings ------------------------------------------------------------------------

#[test]
fn a_new_request_cannot_carry_kube_pims_metadata_or_another_identity() {
    let alice = caller("alice", &["team"]);
    let ea = assignment("a", "payments", "rs", user("alice"));
    let rs = role_setting("rs");
    let mut r = alice_request();
    r.spec.requester.uid = Some("uid-alice".into());
    r.spec.requester.groups = vec!["team".into()];
    assert_eq!(
        validate_request_create(
            &r,
            &alice,
            &RequestFacts {
                role_setting: Some(&rs),
                assignments: &[&ea],
                requests: &[],
                role_risks: &[],
                open_by_requester: 0
            },
            &settings(),
            t0()
        ),
        Verdict::Allow
    );
    let with = |f: &dyn Fn(&mut ActivationRequest)| {
        let mut x = r.clone();
        f(&mut x);
        validate_request_create(
            &x,
            &alice,
            &RequestFacts {
                role_setting: Some(&rs),
                assignments: &[&ea],
                requests: &[],
                role_risks: &[],
                open_by_requester: 0,
            },
            &settings(),
            t0(),
        )
    };
    assert!(
        denied(with(
            &|x| x.metadata.owner_references = Some(vec![Default::default()])
        ))
        .contains("ownerReferences")
    );
    // kube-pim's finalizer is the one the mutation stamps on every new request.
    assert_eq!(
        with(&|x| x.metadata.finalizers = Some(vec![crate::controller::FINALIZER.into()])),
        Verdict::Allow
    );
    assert!(
        denied(with(
            &|x| x.metadata.finalizers = Some(vec!["hold.io/x".into()])
        ))
        .contains("finalizers cannot be added")
    );
    assert!(
        denied(with(&|x| {
            x.metadata.labels =
                Some([("kubepim.io/activation-request".to_string(), "x".to_string())].into());
        }))
        .contains("kubepim.io/*")
    );
    // Groups changed after stamping (e.g. by another mutating webhook): refused.
    assert!(
        denied(with(&|x| x.spec.requester.groups.push("sre-leads".into())))
            .contains("exactly as authenticated")
    );
}

#[test]
fn finalizers_may_be_removed_but_not_added() {
    let mut old = alice_request();
    old.metadata.finalizers = Some(vec!["a.io/x".into()]);
    let mut new = old.clone();
    new.metadata.finalizers = Some(vec!["a.io/x".into(), "b.io/hold".into()]);
    assert!(
        denied(validate_request_update(
            &old,
            &new,
            &caller("alice", &[]),
            None,
            false
        ))
        .contains("finalizers cannot be added")
    );
    new.metadata.finalizers = None;
    assert_eq!(
        validate_request_update(&old, &new, &caller("alice", &[]), None, false),
        Verdict::Allow
    );
}

#[test]
fn deactivation_records_who_did_it_and_only_that() {
    let old = json!({"metadata": {"name": "x"}, "spec": {"deactivate": false}});
    let new = json!({"metadata": {"name": "x"}, "spec": {"deactivate": true}});
    let ops = patch_ops(stamp_deactivated_by(&old, &new, &caller("bob", &[])));
    assert_eq!(
        ops[1],
        json!({"op": "add", "path": "/metadata/annotations/kubepim.io~1deactivated-by", "value": "bob"})
    );
    assert_eq!(
        stamp_deactivated_by(&new, &new, &caller("bob", &[])),
        Verdict::Allow,
        "only on false -> true"
    );
    // Validation: the stamp with the caller's own name is allowed with the deactivation...
    let rs = approval_rs();
    let o = alice_request();
    let mut n = o.clone();
    n.spec.deactivate = true;
    n.metadata.annotations = Some([(DEACTIVATED_BY.to_string(), "bob".to_string())].into());
    assert_eq!(
        validate_request_update(&o, &n, &caller("bob", &[]), Some(&rs), false),
        Verdict::Allow
    );
    // ...but not in someone else's name, nor without deactivating.
    assert!(matches!(
        validate_request_update(&o, &n, &caller("dave", &["sre-leads"]), Some(&rs), false),
        Verdict::Deny(..)
    ));
    let mut plain = o.clone();
    plain.metadata.annotations = n.metadata.annotations.clone();
    assert!(matches!(
        validate_request_update(&o, &plain, &caller("bob", &[]), Some(&rs), false),
        Verdict::Deny(..)
    ));
}

#[test]
fn decisions_after_the_approval_timeout_are_refused() {
    let rs = approval_rs();
    let old = pending_request();
    let late = t0() + chrono::TimeDelta::hours(24);
    let msg = denied(validate_decision(
        &old,
        &decided(&old, "bob", Approved, Some("ok")),
        &caller("bob", &[]),
        Some(&rs),
        late,
    ));
    assert!(
        msg.contains("the approval timeout (24h) of RoleSetting rs has passed"),
        "{msg}"
    );
}

#[test]
fn an_ended_request_is_deleted_only_once_fully_recorded() {
    let mut ended = pending_request();
    let s = ended.status.as_mut().unwrap();
    s.phase = Some(RequestPhase::Denied);
    s.history = vec![crate::api::HistoryEntry {
        seq: 1,
        time: t0(),
        actor: "a".into(),
        action: crate::api::HistoryAction::Denied,
        message: None,
    }];
    s.audited_through = 0;
    assert!(
        denied(validate_request_delete(
            &ended,
            &caller("alice", &[]),
            &settings(),
            false
        ))
        .contains("still being recorded")
    );
    ended.status.as_mut().unwrap().audited_through = 1;
    assert_eq!(
        validate_request_delete(&ended, &caller("alice", &[]), &settings(), false),
        Verdict::Allow
    );
}

#[test]
fn an_assignments_finalizer_and_kube_pim_metadata_are_kube_pims() {
    let admin = caller("admin", &[]);
    let mut old = stamped(assignment("a", "payments", "rs", user("alice")), &admin);
    old.metadata.finalizers = Some(vec![crate::controller::FINALIZER.into()]);
    let mut new = old.clone();
    new.metadata.finalizers = None;
    assert!(
        denied(validate_assignment(
            Some(&old),
            &new,
            &admin,
            None,
            None,
            &settings(),
            t0()
        ))
        .contains("only kube-pim removes")
    );
    // A new stamp is fine (it is re-written on every write); other changes are too.
    let mut relabelled = old.clone();
    relabelled.metadata.labels = Some([("team".to_string(), "x".to_string())].into());
    assert_eq!(
        validate_assignment(
            Some(&old),
            &relabelled,
            &admin,
            None,
            None,
            &settings(),
            t0()
        ),
        Verdict::Allow
    );
    let mut created = stamped(assignment("b", "payments", "rs", user("alice")), &admin);
    created.metadata.owner_references = Some(vec![Default::default()]);
    assert!(matches!(
        validate_assignment(None, &created, &admin, None, None, &settings(), t0()),
        Verdict::Deny(..)
    ));
}

#[test]
fn roles_that_can_create_their_own_persistence_need_an_acknowledgement() {
    let admin = caller("admin", &[]);
    let mut rs = role_setting("rs");
    rs.spec.acknowledge_persistence_risk = false;
    let risky = vec![
        ("view".to_string(), vec![]),
        (
            "admin".to_string(),
            vec![
                "can write Roles or bindings".to_string(),
                "can impersonate".to_string(),
            ],
        ),
    ];
    let msg = denied(validate_role_setting(
        &rs,
        &admin,
        None,
        &risky,
        &Default::default(),
    ));
    assert!(
        msg.contains("ClusterRole admin can write Roles or bindings, can impersonate"),
        "{msg}"
    );
    assert!(msg.contains("acknowledgePersistenceRisk: true"), "{msg}");
    assert!(!msg.contains("view"), "{msg}");
    let safe = vec![("view".to_string(), vec![])];
    assert_eq!(
        validate_role_setting(&rs, &admin, None, &safe, &Default::default()),
        Verdict::Allow
    );
    // Requests for an unacknowledged risky RoleSetting (a role that gained rules later) are
    // refused too.
    let alice = caller("alice", &["team"]);
    let ea = assignment("a", "payments", "rs", user("alice"));
    let ar = alice_request();
    let msg = denied(validate_request_create(
        &ar,
        &alice,
        &RequestFacts {
            role_setting: Some(&rs),
            assignments: &[&ea],
            requests: &[],
            role_risks: &risky,
            open_by_requester: 0,
        },
        &settings(),
        t0(),
    ));
    assert!(msg.contains("until an administrator acknowledges"), "{msg}");
    rs.spec.acknowledge_persistence_risk = true;
    assert_eq!(
        validate_role_setting(&rs, &admin, None, &risky, &Default::default()),
        Verdict::Allow
    );
}

#[test]
fn one_requester_has_a_bounded_number_of_open_requests() {
    let alice = caller("alice", &["team"]);
    let ea = assignment("a", "payments", "rs", user("alice"));
    let rs = role_setting("rs");
    let eas = [&ea];
    let with_ea = |open| RequestFacts {
        role_setting: Some(&rs),
        assignments: &eas,
        requests: &[],
        role_risks: &[],
        open_by_requester: open,
    };
    assert_eq!(
        validate_request_create(&alice_request(), &alice, &with_ea(2), &settings(), t0()),
        Verdict::Allow
    );
    let msg = denied(validate_request_create(
        &alice_request(),
        &alice,
        &with_ea(3),
        &settings(),
        t0(),
    ));
    assert!(
        msg.contains("already has 3 open ActivationRequests"),
        "{msg}"
    );
}

// --- reason codes ---------------------------------------------------------------------------

fn code(v: Verdict) -> &'static str {
    match v {
        Verdict::Deny(r, _) => r.as_str(),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn reason_codes_are_unique_snake_case_words() {
    let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    let mut unique = codes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), codes.len(), "{codes:?}");
    for c in codes {
        assert!(
            !c.is_empty() && c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
            "{c}"
        );
    }
}

/// Every reason the policy checks can give has its own code: a new check added to
/// `decide/policy.rs` without one would be counted as `other`.
#[test]
fn every_policy_violation_reason_has_a_code() {
    let source = include_str!("../../decide/policy.rs");
    let reasons: Vec<&str> = source
        .split("Violation::new(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"'))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(reasons.len() >= 9, "{reasons:?}");
    for r in reasons {
        assert_ne!(Reason::of_violation(r), Reason::Other, "{r}");
    }
}

#[test]
fn refusals_carry_the_code_of_the_rule_that_refused() {
    let alice = caller("alice", &["team"]);
    let ea = assignment("a", "payments", "rs", user("alice"));
    let rs = role_setting("rs");
    fn create(
        ar: &ActivationRequest,
        who: &UserInfo,
        rs: Option<&RoleSetting>,
        eas: &[&EligibleAssignment],
    ) -> &'static str {
        let facts = RequestFacts {
            role_setting: rs,
            assignments: eas,
            requests: &[],
            role_risks: &[],
            open_by_requester: 0,
        };
        code(validate_request_create(ar, who, &facts, &settings(), t0()))
    }
    // Requests: policy, eligibility, existence, identity.
    let mut long = alice_request();
    long.spec.duration = Some("5h".parse().unwrap());
    assert_eq!(
        create(&long, &alice, Some(&rs), &[&ea]),
        "duration_too_long"
    );
    assert_eq!(
        create(&alice_request(), &alice, Some(&rs), &[]),
        "not_eligible"
    );
    assert_eq!(
        create(&alice_request(), &alice, None, &[&ea]),
        "role_setting_not_found"
    );
    assert_eq!(
        create(&alice_request(), &caller("bob", &[]), Some(&rs), &[&ea]),
        "requester_mismatch"
    );
    let mut strict = rs.clone();
    strict.spec.activation.require_ticket = true;
    assert_eq!(
        create(&alice_request(), &alice, Some(&strict), &[&ea]),
        "ticket_required"
    );

    // Decisions.
    let rs = approval_rs();
    let old = pending_request();
    let decide = |new: &ActivationRequest, who: &UserInfo| {
        code(validate_decision(&old, new, who, Some(&rs), t0()))
    };
    assert_eq!(
        decide(
            &decided(&old, "alice", Approved, None),
            &caller("alice", &["sre-leads"])
        ),
        "self_approval"
    );
    assert_eq!(
        decide(
            &decided(&old, "mallory", Approved, None),
            &caller("mallory", &[])
        ),
        "not_approver"
    );
    assert_eq!(
        decide(&decided(&old, "carol", Approved, None), &caller("bob", &[])),
        "approver_mismatch"
    );
    assert_eq!(
        decide(&decided(&old, "bob", Denied, None), &caller("bob", &[])),
        "reason_required"
    );
    let mut phase = decided(&old, "bob", Approved, None);
    phase.status.as_mut().unwrap().phase = Some(RequestPhase::Active);
    assert_eq!(
        decide(&phase, &caller("bob", &[])),
        "forbidden_status_change"
    );

    // Spec and deletion.
    let mut edited = old.clone();
    edited.spec.duration = Some("5m".parse().unwrap());
    assert_eq!(
        code(validate_request_update(
            &old,
            &edited,
            &alice,
            Some(&rs),
            false
        )),
        "immutable_spec"
    );
    assert_eq!(
        code(validate_request_delete(&old, &alice, &settings(), false)),
        "open_request_delete"
    );
    // Writers who may not bind; the last protected assignment.
    assert_eq!(
        code(validate_role_setting(
            &rs,
            &caller("carol", &[]),
            Some("admin"),
            &[],
            &Default::default()
        )),
        "bind_not_allowed"
    );
    let mut protected = rs.clone();
    protected.spec.protect_last_assignment = true;
    assert_eq!(
        code(validate_assignment_delete(&ea, Some(&protected), 0, false)),
        "last_assignment"
    );
}

#[test]
fn role_settings_notify_only_allowed_targets() {
    let admin = caller("admin", &[]);
    let mut rs = role_setting("rs");
    rs.spec.notifications = Some(crate::api::Notifications {
        webhooks: vec![crate::api::NotificationWebhook {
            url: "https://kubernetes.default.svc/api".into(),
            format: Default::default(),
            events: vec![crate::api::NotificationEvent::Activated],
            secret_key_ref: None,
        }],
        ..Default::default()
    });
    let msg = denied(validate_role_setting(
        &rs,
        &admin,
        None,
        &[],
        &Default::default(),
    ));
    assert!(msg.contains("cluster-internal"), "{msg}");
    assert_eq!(
        code(validate_role_setting(
            &rs,
            &admin,
            None,
            &[],
            &Default::default()
        )),
        "notification_target_refused"
    );
    rs.spec.notifications.as_mut().unwrap().webhooks[0].url = "https://hooks.example.com/x".into();
    assert_eq!(
        validate_role_setting(&rs, &admin, None, &[], &Default::default()),
        Verdict::Allow
    );
}
