//! The activation flow end to end against a real kube-apiserver, with the operator and its
//! admission webhook running as their own user, and distinct people acting with their own
//! credentials: a requester, approvers, a bystander with approver RBAC who is not an approver.
//! Access is proven with real requests (listing Secrets) before, during and after activation.

#[macro_use]
mod common;

use std::time::Duration;

use common::{admin, can, http_get, namespace, operated, refusal, suffix, user, world::*};
use k8s_openapi::api::{
    core::v1::Secret,
    rbac::v1::{ClusterRoleBinding, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use kube_pim::api::{ActivationRequest, HistoryAction, RequestPhase};
use serde_json::{Value, json};

/// The operator runs as its own user with its ClusterRole, not as an administrator.
#[tokio::test]
async fn operator_runs_as_its_own_least_privileged_user() {
    let env = operated();
    let addr = std::fs::read_to_string(env.dir().join("operator.addr")).unwrap();
    let body = http_get(addr.trim(), "/readyz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let ns = namespace("opuser").await;
    let op = user(kube_pim::testenv::OPERATOR_USER, &[]).await;
    assert!(can(&op, "create", "rbac.authorization.k8s.io/rolebindings", &ns).await);
    assert!(can(&op, "watch", "kubepim.io/activationrequests", &ns).await);
    assert!(can(&op, "patch", "kubepim.io/activationrequests/status", &ns).await);
    assert!(
        !can(&op, "get", "secrets", &ns).await,
        "the operator must not read Secrets cluster-wide"
    );
    assert!(!can(&op, "create", "pods", &ns).await);
}

#[tokio::test]
async fn without_approval_access_is_granted_then_removed_at_expiry() {
    let w = World::new("noappr", json!({})).await;
    let alice = w.alice().await;
    w.access(&alice, false).await;
    let ar = w
        .ask(alice.clone(), json!({"duration": "8s"}))
        .await
        .unwrap();
    let name = ar.name_any();
    let active = w.wait_phase(&name, RequestPhase::Active).await;
    w.access(&alice, true).await;

    // The binding: named, labelled, annotated and owned as SPEC section 3 says.
    let s = active.status.clone().unwrap();
    assert_eq!(s.bindings.len(), 1);
    let rb = Api::<RoleBinding>::namespaced(admin().await, &w.ns)
        .get(&s.bindings[0].name)
        .await
        .unwrap();
    assert_eq!(
        rb.name_any(),
        kube_pim::decide::bindings::binding_name(&ar.uid().unwrap(), "admin")
    );
    assert_eq!(rb.labels()["app.kubernetes.io/managed-by"], "kube-pim");
    assert_eq!(rb.labels()["kubepim.io/activation-request"], name);
    assert_eq!(
        rb.labels()["kubepim.io/activation-request-uid"],
        ar.uid().unwrap()
    );
    let expires = s.expiration_time.unwrap();
    assert_eq!(
        rb.annotations()["kubepim.io/expires-at"],
        expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert_eq!(rb.owner_references()[0].uid, ar.uid().unwrap());
    assert_eq!(
        rb.subjects.as_ref().unwrap()[0].name,
        w.alice,
        "the binding is for the requester"
    );
    assert!(
        active
            .finalizers()
            .contains(&"kubepim.io/bindings".to_string())
    );
    assert!(s.approvals.is_some(), "approvals are initialised");

    let expired = w.wait_phase(&name, RequestPhase::Expired).await;
    w.access(&alice, false).await;
    let gone = Api::<RoleBinding>::namespaced(admin().await, &w.ns)
        .get_opt(&s.bindings[0].name)
        .await
        .unwrap();
    assert!(gone.is_none(), "the binding is deleted at expiry");
    assert_eq!(
        actions(&expired),
        [
            HistoryAction::Requested,
            HistoryAction::Approved,
            HistoryAction::Activated,
            HistoryAction::Expired
        ]
    );

    // Audited: every history entry on the audit stream, and auditedThrough says so.
    // The finalizer goes once access is removed and the last transition audited.
    let audited = w
        .wait(&name, "fully audited and released", |ar| {
            ar.status.as_ref().is_some_and(|s| s.audited_through == 4) && ar.finalizers().is_empty()
        })
        .await;
    assert_eq!(audited.status.as_ref().unwrap().history.len(), 4);
    let log = std::fs::read_to_string(operated().dir().join("audit.log")).unwrap();
    let uid = ar.uid().unwrap();
    for seq in 1..=4 {
        assert!(
            log.contains(&format!("\"id\":\"{uid}/{seq}\"")),
            "audit line {seq} missing"
        );
    }
    // One Event per transition.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin().await, &w.ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.clone()) == Some(name.clone()))
        .filter_map(|e| e.reason)
        .collect();
    for r in ["Requested", "Approved", "Activated", "Expired"] {
        assert!(
            reasons.contains(&r.to_string()),
            "no {r} Event in {reasons:?}"
        );
    }
}

#[tokio::test]
async fn a_forged_requester_is_replaced_by_the_caller() {
    let w = World::new("forge", json!({"approval": {"required": true, "approvers": [{"kind": "Group", "name": "placeholder"}]}})).await;
    let ar = w
        .ask(
            w.alice().await,
            json!({"requester": {"username": w.bob, "uid": "bobs-uid", "groups": [w.leads]}}),
        )
        .await
        .unwrap();
    let r = &ar.spec.requester;
    assert_eq!(r.username, w.alice);
    assert_ne!(r.uid.as_deref(), Some("bobs-uid"));
    // kube-pim's finalizer is on the request from its creation (stamped at admission), so it
    // can never hold access without one; a finalizer of anyone else's is refused.
    assert_eq!(
        ar.metadata.finalizers.as_deref(),
        Some(&[kube_pim::controller::FINALIZER.to_string()][..])
    );
    let pinned: ActivationRequest = serde_json::from_value(json!({
        "apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"generateName": "req-", "finalizers": ["example.com/pin"]},
        "spec": {"roleSetting": w.rs, "duration": "10m", "justification": "INC-1",
                 "requester": {"username": w.alice}}}))
    .unwrap();
    let (code, msg) = refusal(
        w.requests(w.alice().await)
            .create(&PostParams::default(), &pinned)
            .await,
    );
    assert_eq!(code, 403);
    assert!(msg.contains("finalizers cannot be added"), "{msg}");
    assert!(
        r.groups.contains(&"team".to_string()) && !r.groups.contains(&w.leads),
        "{:?}",
        r.groups
    );
}

#[tokio::test]
async fn policy_violations_are_refused_at_admission_with_the_fix() {
    let w = World::new(
        "policy",
        json!({"activation": {"maxDuration": "30m", "ticketPattern": "^INC-[0-9]+$"}}),
    )
    .await;
    let alice = w.alice().await;
    let (code, msg) = refusal(w.ask(alice.clone(), json!({"duration": "2h"})).await);
    assert_eq!(code, 403);
    assert!(
        msg.contains(&format!(
            "duration 2h exceeds maxDuration 30m of RoleSetting {}: ask for 30m or less",
            w.rs
        )),
        "{msg}"
    );
    let (_, msg) = refusal(w.ask(alice.clone(), json!({"justification": " "})).await);
    assert!(
        msg.contains("requires a justification: set spec.justification"),
        "{msg}"
    );
    let (_, msg) = refusal(w.ask(alice.clone(), json!({"ticket": "JIRA-7"})).await);
    assert!(msg.contains("does not match ticketPattern"), "{msg}");
    let (_, msg) = refusal(
        w.ask(alice.clone(), json!({"roleSetting": "no-such-rs"}))
            .await,
    );
    assert!(
        msg.contains("RoleSetting no-such-rs does not exist"),
        "{msg}"
    );
    // Someone with RBAC to create requests but no eligibility.
    w.bind("kube-pim-requester", "User", &w.mallory).await;
    let (_, msg) = refusal(w.ask(user(&w.mallory, &[]).await, json!({})).await);
    assert!(
        msg.contains(&format!(
            "{} is not eligible for RoleSetting {}",
            w.mallory, w.rs
        )),
        "{msg}"
    );
    // Nothing was created.
    assert!(
        w.requests(admin().await)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn approval_with_plain_kubectl_patch_exactly_as_the_spec_shows() {
    let w = World::new("kubectl", json!({"approval": {"required": true, "approvers": [{"kind": "Group", "name": "placeholder"}]}})).await;
    // Approvers: the leads group (set now that the name is known).
    apply(&admin().await, &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting", "metadata": {"name": w.rs},
        "spec": {"roleRefs": [{"name": "admin"}], "acknowledgePersistenceRisk": true,
                 "approval": {"required": true, "approvers": [{"kind": "Group", "name": w.leads}]}}}), None).await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    let name = ar.name_any();
    let pending = w
        .wait(&name, "ready for decisions", |ar| {
            ar.status.as_ref().is_some_and(|s| s.approvals.is_some())
        })
        .await;
    assert_eq!(phase_of(&pending), Some(RequestPhase::Pending));
    w.access(&alice, false).await;

    // bob approves with the kubectl built with the control plane, as a person would.
    let env = operated();
    let kubeconfig = env.dir().join(format!("{}.kubeconfig", w.bob));
    env.write_kubeconfig(&kubeconfig, &w.bob, std::slice::from_ref(&w.leads))
        .unwrap();
    let patch = format!(
        r#"[{{"op":"test","path":"/metadata/uid","value":"{}"}},{{"op":"add","path":"/status/approvals/-","value":{{"decision":"Approved","reason":"ok, INC-1 is real"}}}}]"#,
        ar.uid().unwrap()
    );
    let out = std::process::Command::new(env.kubectl())
        .args([
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "patch",
            "ar",
            &name,
            "-n",
            &w.ns,
            "--subresource=status",
            "--type=json",
            "-p",
            &patch,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let active = w.wait_phase(&name, RequestPhase::Active).await;
    w.access(&alice, true).await;
    let a = &active.status.as_ref().unwrap().approvals.as_ref().unwrap()[0];
    assert_eq!(
        a.approver.username, w.bob,
        "the webhook records who approved"
    );
    assert_eq!(a.approver.via_group.as_deref(), Some(w.leads.as_str()));
    assert_eq!(a.reason.as_deref(), Some("ok, INC-1 is real"));
    assert_eq!(
        actions(&active),
        [
            HistoryAction::Requested,
            HistoryAction::Approved,
            HistoryAction::Activated
        ]
    );
    assert_eq!(active.status.as_ref().unwrap().history[1].actor, w.bob);
}

async fn approval_world(prefix: &str, min: i32) -> World {
    World::with_group_approval(prefix, min).await
}

async fn pending(w: &World) -> ActivationRequest {
    let ar = w.ask(w.alice().await, json!({})).await.unwrap();
    w.wait(&ar.name_any(), "ready for decisions", |ar| {
        ar.status.as_ref().is_some_and(|s| s.approvals.is_some())
    })
    .await
}

#[tokio::test]
async fn self_approval_strangers_second_decisions_and_reasonless_denials_are_refused() {
    let w = approval_world("sod", 1).await;
    // alice is in the approvers' group and holds the approver role: still not for her own request.
    w.bind("kube-pim-approver", "User", &w.alice).await;
    let ar = pending(&w).await;
    let alice_as_lead = user(&w.alice, &[&w.leads]).await;
    let (code, msg) = refusal(w.decide(alice_as_lead, &ar, "Approved", Some("me")).await);
    assert_eq!(code, 403);
    assert!(msg.contains("you cannot decide your own request"), "{msg}");
    let (_, msg) = refusal(
        w.decide(user(&w.mallory, &[]).await, &ar, "Approved", Some("sure"))
            .await,
    );
    assert!(
        msg.contains(&format!(
            "{} is not an approver of RoleSetting {}",
            w.mallory, w.rs
        )),
        "{msg}"
    );
    let (_, msg) = refusal(
        w.decide(w.approver(&w.bob).await, &ar, "Denied", None)
            .await,
    );
    assert!(msg.contains("a Deny needs a reason"), "{msg}");
    // A forged approver identity is overwritten with the caller's.
    let forged: json_patch::Patch = serde_json::from_value(json!([{"op": "add", "path": "/status/approvals/-",
        "value": {"decision": "Approved", "reason": "x", "approver": {"username": w.carol}, "time": "2020-01-01T00:00:00Z"}}])).unwrap();
    w.requests(w.approver(&w.bob).await)
        .patch_status(
            &ar.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(forged),
        )
        .await
        .unwrap();
    let now = w.requests(admin().await).get(&ar.name_any()).await.unwrap();
    let a = &now.status.as_ref().unwrap().approvals.as_ref().unwrap()[0];
    assert_eq!(a.approver.username, w.bob);
    assert!(
        a.time.timestamp() > 1_700_000_000,
        "time is stamped by the webhook"
    );
    // bob has decided; he cannot decide again.
    let (_, msg) = refusal(
        w.decide(w.approver(&w.bob).await, &now, "Approved", Some("again"))
            .await,
    );
    assert!(
        msg.contains("already decided") || msg.contains("only taken while it is Pending"),
        "{msg}"
    );
    // Anything else in status is the operator's.
    let tamper = Patch::Merge(json!({"status": {"phase": "Active"}}));
    let (_, msg) = refusal(
        w.requests(w.approver(&w.carol).await)
            .patch_status(&ar.name_any(), &PatchParams::default(), &tamper)
            .await,
    );
    // Refused by the webhook, or by the in-apiserver policy (whichever answers first).
    assert!(
        msg.contains("only append one entry")
            || msg.contains("only taken while it is Pending")
            || msg.contains("ValidatingAdmissionPolicy 'kube-pim-request-status'"),
        "{msg}"
    );
}

/// A request waiting for approval whose assignment is deleted fails and says why. (With no
/// assignment in the cache, the controller re-reads the namespace's assignments live before it
/// fails a request not yet decided: one applied a moment before the request may not have
/// reached the cache. Here the live read finds none either.)
#[tokio::test]
async fn a_pending_request_whose_assignment_is_deleted_fails_as_not_eligible() {
    let w = approval_world("noteligible", 1).await;
    let ar = pending(&w).await;
    Api::<kube_pim::api::EligibleAssignment>::namespaced(admin().await, &w.ns)
        .delete("alice", &DeleteParams::default())
        .await
        .unwrap();
    let failed = w.wait_phase(&ar.name_any(), RequestPhase::Failed).await;
    let st = failed.status.unwrap();
    let why = st
        .conditions
        .iter()
        .find(|c| c.reason == "NotEligible")
        .unwrap_or_else(|| panic!("no NotEligible condition: {:?}", st.conditions));
    assert!(
        why.message.contains("no EligibleAssignment in namespace"),
        "{}",
        why.message
    );
    assert_eq!(st.history.last().unwrap().action, HistoryAction::Failed);
    w.access(&w.alice().await, false).await;
}

#[tokio::test]
async fn a_quorum_of_two_distinct_approvers() {
    let w = approval_world("quorum", 2).await;
    let alice = w.alice().await;
    let ar = pending(&w).await;
    w.decide(w.approver(&w.bob).await, &ar, "Approved", Some("one"))
        .await
        .unwrap();
    // Still pending with one approval.
    let one = w
        .wait(&ar.name_any(), "seen one approval", |ar| {
            ar.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Approved" && c.message.contains("waiting for 1 more"))
            })
        })
        .await;
    assert_eq!(phase_of(&one), Some(RequestPhase::Pending));
    w.access(&alice, false).await;
    w.decide(w.approver(&w.carol).await, &one, "Approved", Some("two"))
        .await
        .unwrap();
    let active = w.wait_phase(&ar.name_any(), RequestPhase::Active).await;
    w.access(&alice, true).await;
    assert!(
        active.status.unwrap().history[1]
            .message
            .as_deref()
            .unwrap()
            .contains(&format!("approved by {}, {}", w.bob, w.carol))
    );
}

#[tokio::test]
async fn a_valid_deny_ends_the_request() {
    let w = approval_world("deny", 1).await;
    let ar = pending(&w).await;
    w.decide(
        w.approver(&w.carol).await,
        &ar,
        "Denied",
        Some("not during the freeze"),
    )
    .await
    .unwrap();
    let denied = w.wait_phase(&ar.name_any(), RequestPhase::Denied).await;
    // The finalizer goes only once the last transition is on the audit stream.
    let released = w
        .wait(&ar.name_any(), "released", |ar| ar.finalizers().is_empty())
        .await;
    let s = released.status.as_ref().unwrap();
    assert_eq!(usize::try_from(s.audited_through).unwrap(), s.history.len());
    assert!(
        denied
            .status
            .as_ref()
            .unwrap()
            .history
            .last()
            .unwrap()
            .message
            .as_deref()
            .unwrap()
            .contains("not during the freeze")
    );
    w.access(&w.alice().await, false).await;
    // Decisions are closed.
    let (_, msg) = refusal(
        w.decide(w.approver(&w.bob).await, &denied, "Approved", Some("late"))
            .await,
    );
    assert!(msg.contains("only taken while it is Pending"), "{msg}");
}

/// An Approve and a Deny race, many times: the request is never Active after a valid Deny
/// that was admitted before the decision was committed.
#[tokio::test]
async fn racing_approve_and_deny_never_activate_after_a_valid_deny() {
    let w = approval_world("race", 1).await;
    let (bob, carol) = (w.approver(&w.bob).await, w.approver(&w.carol).await);
    for _ in 0..8 {
        let ar = pending(&w).await;
        let (a, d) = tokio::join!(
            w.decide(bob.clone(), &ar, "Approved", Some("go")),
            w.decide(carol.clone(), &ar, "Denied", Some("stop"))
        );
        let name = ar.name_any();
        let settled = w
            .wait(&name, "settled", |ar| {
                matches!(
                    phase_of(ar),
                    Some(RequestPhase::Active | RequestPhase::Denied)
                )
            })
            .await;
        let s = settled.status.as_ref().unwrap();
        let approvals = s.approvals.clone().unwrap_or_default();
        let deny = approvals.iter().find(|x| x.approver.username == w.carol);
        match phase_of(&settled) {
            Some(RequestPhase::Active) => {
                // Only possible if the Deny came after the commit (or was refused as too late).
                let committed = s
                    .history
                    .iter()
                    .find(|h| h.action == HistoryAction::Approved)
                    .unwrap()
                    .time;
                if let Some(deny) = deny {
                    assert!(
                        deny.time > committed,
                        "Active although a Deny was admitted before the commit"
                    );
                } else {
                    assert!(d.is_err(), "the Deny was accepted but is not recorded");
                }
            }
            _ => assert!(
                !actions(&settled).contains(&HistoryAction::Activated),
                "Denied after being Activated"
            ),
        }
        assert!(a.is_ok() || d.is_ok(), "at least one decision goes through");
        // Tidy up: end it so the next round starts clean.
        let _ = w
            .requests(w.alice().await)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"deactivate": true}})),
            )
            .await;
    }
}

#[tokio::test]
async fn a_pending_request_times_out() {
    let w = World::new("timeout", json!({})).await;
    apply(&admin().await, &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting", "metadata": {"name": w.rs},
        "spec": {"roleRefs": [{"name": "admin"}], "acknowledgePersistenceRisk": true,
                 "approval": {"required": true, "timeout": "3s", "approvers": [{"kind": "Group", "name": w.leads}]}}}), None).await;
    let ar = pending(&w).await;
    let t = w.wait_phase(&ar.name_any(), RequestPhase::TimedOut).await;
    assert!(
        t.status
            .unwrap()
            .history
            .last()
            .unwrap()
            .message
            .as_deref()
            .unwrap()
            .contains("approval.timeout 3s")
    );
}

#[tokio::test]
async fn cancel_before_access_and_deactivate_during_it() {
    let w = approval_world("cancel", 1).await;
    let alice = w.alice().await;
    let ar = pending(&w).await;
    assert!(
        ar.finalizers().contains(&"kubepim.io/bindings".to_string()),
        "protected from the first write on"
    );
    // An approver withdraws it: the record names the approver, not the requester.
    w.deactivate(w.approver(&w.bob).await, &ar.name_any()).await;
    let canceled = w.wait_phase(&ar.name_any(), RequestPhase::Canceled).await;
    let last = canceled
        .status
        .as_ref()
        .unwrap()
        .history
        .last()
        .unwrap()
        .clone();
    assert_eq!(last.actor, w.bob);
    assert_eq!(canceled.annotations()["kubepim.io/deactivated-by"], w.bob);

    let ar = pending(&w).await;
    w.decide(w.approver(&w.bob).await, &ar, "Approved", Some("ok"))
        .await
        .unwrap();
    w.wait_phase(&ar.name_any(), RequestPhase::Active).await;
    w.access(&alice, true).await;
    // Someone who is neither the requester nor an approver cannot end it.
    w.bind("kube-pim-requester", "User", &w.mallory).await;
    let (_, msg) = refusal(
        w.requests(user(&w.mallory, &[]).await)
            .patch(
                &ar.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"deactivate": true}})),
            )
            .await,
    );
    assert!(msg.contains("only the requester"), "{msg}");
    w.deactivate(alice.clone(), &ar.name_any()).await;
    w.wait_phase(&ar.name_any(), RequestPhase::Deactivated)
        .await;
    w.access(&alice, false).await;
}

#[tokio::test]
async fn open_requests_cannot_be_deleted_ended_ones_can() {
    let w = World::new("delete", json!({})).await;
    let ar = w.ask(w.alice().await, json!({})).await.unwrap();
    w.wait_phase(&ar.name_any(), RequestPhase::Active).await;
    // Not even the cluster administrator: the record of open access stays.
    let (code, msg) = refusal(
        w.requests(admin().await)
            .delete(&ar.name_any(), &DeleteParams::default())
            .await,
    );
    assert_eq!(code, 403);
    assert!(msg.contains("end it with spec.deactivate: true"), "{msg}");
    w.deactivate(w.alice().await, &ar.name_any()).await;
    w.wait(&ar.name_any(), "ended and released", |ar| {
        phase_of(ar) == Some(RequestPhase::Deactivated) && ar.finalizers().is_empty()
    })
    .await;
    w.requests(admin().await)
        .delete(&ar.name_any(), &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn deleting_the_assignment_revokes_access() {
    let w = World::new("revoke", json!({})).await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    w.wait_phase(&ar.name_any(), RequestPhase::Active).await;
    w.access(&alice, true).await;
    Api::<kube_pim::api::EligibleAssignment>::namespaced(admin().await, &w.ns)
        .delete("alice", &DeleteParams::default())
        .await
        .unwrap();
    let revoked = w.wait_phase(&ar.name_any(), RequestPhase::Revoked).await;
    w.access(&alice, false).await;
    assert!(
        revoked
            .status
            .unwrap()
            .history
            .last()
            .unwrap()
            .message
            .as_deref()
            .unwrap()
            .contains("ask an administrator")
    );
}

#[tokio::test]
async fn a_managed_binding_cannot_be_edited_and_is_restored_when_deleted() {
    let w = World::new("drift", json!({})).await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    let active = w.wait_phase(&ar.name_any(), RequestPhase::Active).await;
    let name = active.status.unwrap().bindings[0].name.clone();
    let rbs: Api<RoleBinding> = Api::namespaced(admin().await, &w.ns);
    // Edited (another subject added, or kube-pim's label removed), even by an administrator:
    // refused in the apiserver by the kube-pim-managed-bindings policy.
    for edit in [
        json!({"subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": w.alice},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": w.mallory}]}),
        json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}}),
    ] {
        let (code, msg) = refusal(
            rbs.patch(&name, &PatchParams::default(), &Patch::Merge(&edit))
                .await,
        );
        assert_eq!(code, 403, "{msg}");
        assert!(msg.contains("written only by kube-pim"), "{msg}");
    }
    // Deleted: recreated while the request is Active.
    rbs.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually!(
        WAIT,
        rbs.get_opt(&name).await.unwrap().is_some(),
        "the deleted binding was not recreated"
    );
    w.access(&alice, true).await;
    w.access(&user(&w.mallory, &[]).await, false).await;
}

#[tokio::test]
async fn cluster_scope_grants_a_cluster_role_binding_from_the_cluster_scope_namespace() {
    let _ = operated();
    let s = suffix();
    let (rs, alice) = (format!("cluster-{s}"), format!("alice-{s}"));
    let ns = kube_pim::testenv::CLUSTER_SCOPE_NAMESPACE;
    let admin = admin().await;
    apply(&admin, &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting", "metadata": {"name": rs},
        "spec": {"roleRefs": [{"name": "view"}], "scopes": ["Cluster"]}}), None).await;
    apply(&admin, &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment", "metadata": {"name": format!("alice-{s}")},
        "spec": {"roleSetting": rs, "scope": "Cluster", "subject": {"kind": "User", "name": alice}}}), Some(ns)).await;
    let rb: RoleBinding = serde_json::from_value(json!({"metadata": {"name": format!("req-{s}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kube-pim-requester"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": alice}]})).unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
    let alice_c = user(&alice, &[]).await;
    let other_ns = namespace("elsewhere").await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(alice_c.clone());
    assert_eq!(refusal(nss.list(&ListParams::default()).await).0, 403);

    let ar: ActivationRequest = serde_json::from_value(json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"name": format!("c-{s}")}, "spec": {"roleSetting": rs, "scope": "Cluster", "duration": "10m",
        "justification": "audit", "requester": {"username": "x"}}})).unwrap();
    let ars: Api<ActivationRequest> = Api::namespaced(alice_c.clone(), ns);
    // Cluster scope outside the cluster-scope namespace is refused, with where to go.
    let elsewhere: Api<ActivationRequest> = Api::namespaced(admin.clone(), &other_ns);
    let (_, msg) = refusal(elsewhere.create(&PostParams::default(), &ar).await);
    assert!(
        msg.contains(&format!("live only in namespace {ns}")),
        "{msg}"
    );
    ars.create(&PostParams::default(), &ar).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let active = loop {
        let a = Api::<ActivationRequest>::namespaced(admin.clone(), ns)
            .get(&format!("c-{s}"))
            .await
            .unwrap();
        if phase_of(&a) == Some(RequestPhase::Active) {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cluster activation never became Active: {:?}",
            a.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let b = &active.status.as_ref().unwrap().bindings[0];
    assert_eq!(format!("{:?}", b.kind), "ClusterRoleBinding");
    let crb = Api::<ClusterRoleBinding>::all(admin.clone())
        .get(&b.name)
        .await
        .unwrap();
    assert_eq!(crb.role_ref.name, "view");
    // view across the cluster: namespaces in any namespace... list pods in another namespace.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(alice_c.clone(), &other_ns);
    eventually!(
        Duration::from_secs(20),
        pods.list(&ListParams::default()).await.is_ok(),
        "cluster-wide view was not granted"
    );
    Api::<ActivationRequest>::namespaced(alice_c.clone(), ns)
        .patch(
            &format!("c-{s}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deactivate": true}})),
        )
        .await
        .unwrap();
    eventually!(
        WAIT,
        Api::<ClusterRoleBinding>::all(admin.clone())
            .get_opt(&b.name)
            .await
            .unwrap()
            .is_none(),
        "the ClusterRoleBinding outlived the activation"
    );
}

#[tokio::test]
async fn a_role_setting_and_an_assignment_in_one_kubectl_apply() {
    let env = operated();
    let ns = namespace("oneapply").await;
    let s = suffix();
    let file = env.dir().join(format!("bundle-{s}.yaml"));
    std::fs::write(&file, format!(
        "apiVersion: kubepim.io/v1alpha1\nkind: RoleSetting\nmetadata: {{name: bundle-{s}}}\nspec: {{roleRefs: [{{name: view}}], activation: {{maxDuration: 30m}}}}\n---\napiVersion: kubepim.io/v1alpha1\nkind: EligibleAssignment\nmetadata: {{name: dana, namespace: {ns}}}\nspec: {{roleSetting: bundle-{s}, subject: {{kind: User, name: dana-{s}}}, endTime: \"2099-01-01T00:00:00Z\"}}\n"
    )).unwrap();
    let out = std::process::Command::new(env.kubectl())
        .args([
            "--kubeconfig",
            env.dir().join("admin.kubeconfig").to_str().unwrap(),
            "apply",
            "--server-side",
            "-f",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ea = Api::<kube_pim::api::EligibleAssignment>::namespaced(admin().await, &ns)
        .get("dana")
        .await
        .unwrap();
    let stamp = &ea.annotations()["kubepim.io/authorized-by"];
    assert!(stamp.contains("\"username\":\"kubepim-admin\""), "{stamp}");
    // Both writes are on the audit stream with the actor the apiserver authenticated.
    let log = std::fs::read_to_string(env.dir().join("audit.log")).unwrap();
    for (resource, name) in [
        ("rolesettings", format!("bundle-{s}")),
        ("eligibleassignments", "dana".to_string()),
    ] {
        let line = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| {
                r["kind"] == "PolicyWrite"
                    && r["resource"] == resource
                    && r["name"] == name.as_str()
                    && r["namespace"]
                        == if resource == "rolesettings" {
                            Value::Null
                        } else {
                            json!(ns)
                        }
            })
            .unwrap_or_else(|| panic!("no PolicyWrite record for {resource} {name}"));
        assert_eq!(line["actor"]["username"], "kubepim-admin");
        assert_eq!(line["operation"], "CREATE");
    }
    // An assignment is Eligible once the operator has seen both.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ea = Api::<kube_pim::api::EligibleAssignment>::namespaced(admin().await, &ns)
            .get("dana")
            .await
            .unwrap();
        if ea.status.and_then(|s| s.phase) == Some(kube_pim::api::AssignmentPhase::Eligible) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the assignment never became Eligible"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_scheduled_request_starts_at_its_start_time() {
    let w = World::new("sched", json!({})).await;
    let alice = w.alice().await;
    let start = chrono::Utc::now() + chrono::TimeDelta::seconds(4);
    let ar = w
        .ask(
            alice.clone(),
            json!({"startTime": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}),
        )
        .await
        .unwrap();
    let scheduled = w.wait_phase(&ar.name_any(), RequestPhase::Scheduled).await;
    assert!(scheduled.status.as_ref().unwrap().bindings.is_empty());
    let active = w.wait_phase(&ar.name_any(), RequestPhase::Active).await;
    assert!(
        active.status.unwrap().activation_time.unwrap()
            >= chrono::DateTime::from_timestamp(start.timestamp(), 0).unwrap()
    );
    w.access(&alice, true).await;
}

/// An extension takes over without a gap: its bindings exist before the extended request's
/// are removed, so the requester's access never lapses; it runs from the old expiry.
#[tokio::test]
async fn an_extension_takes_over_without_a_gap() {
    let w = World::new("extend", json!({})).await;
    let alice = w.alice().await;
    let first = w
        .ask(alice.clone(), json!({"duration": "20s"}))
        .await
        .unwrap();
    let first = w.wait_phase(&first.name_any(), RequestPhase::Active).await;
    w.access(&alice, true).await;

    // Watch access continuously through the handover.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, api) = (
            stop.clone(),
            Api::<Secret>::namespaced(alice.clone(), &w.ns),
        );
        tokio::spawn(async move {
            let (mut checks, mut denied) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                checks += 1;
                if api.list(&ListParams::default()).await.is_err() {
                    denied += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (checks, denied)
        })
    };
    let ext = w
        .ask(
            alice.clone(),
            json!({"duration": "30s", "extends": first.name_any()}),
        )
        .await
        .unwrap();
    let ext = w.wait_phase(&ext.name_any(), RequestPhase::Active).await;
    let superseded = w
        .wait_phase(&first.name_any(), RequestPhase::Superseded)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (checks, denied) = watcher.await.unwrap();
    assert!(checks > 5, "access was checked {checks} times");
    assert_eq!(
        denied, 0,
        "access lapsed during the handover ({denied} of {checks} checks denied)"
    );

    let old_exp = first.status.as_ref().unwrap().expiration_time.unwrap();
    assert_eq!(
        ext.status.as_ref().unwrap().expiration_time,
        Some(old_exp + chrono::TimeDelta::seconds(30))
    );
    assert_eq!(
        actions(&superseded).last(),
        Some(&HistoryAction::Superseded)
    );
    let gone = &first.status.as_ref().unwrap().bindings[0].name;
    assert!(
        Api::<RoleBinding>::namespaced(admin().await, &w.ns)
            .get_opt(gone)
            .await
            .unwrap()
            .is_none()
    );
    // Someone else's request cannot be extended.
    w.bind("kube-pim-requester", "User", &w.mallory).await;
    let (_, msg) = refusal(
        w.ask(
            user(&w.mallory, &[]).await,
            json!({"extends": ext.name_any()}),
        )
        .await,
    );
    assert!(
        msg.contains("not eligible") || msg.contains("not your own"),
        "{msg}"
    );
}

/// Eligible through a group: any member may activate, and the binding is for that member only.
#[tokio::test]
async fn a_group_member_activates_for_themselves_only() {
    let w = World::new("group", json!({})).await;
    let oncall = format!("oncall-{}", suffix());
    apply(&admin().await, &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment",
        "metadata": {"name": "oncall"}, "spec": {"roleSetting": w.rs, "subject": {"kind": "Group", "name": oncall}}}), Some(&w.ns)).await;
    w.bind("kube-pim-requester", "Group", &oncall).await;
    let dana = user(&format!("dana-{}", suffix()), &[&oncall]).await;
    let erin = user(&format!("erin-{}", suffix()), &[&oncall]).await;
    let ar = w.ask(dana.clone(), json!({})).await.unwrap();
    let active = w.wait_phase(&ar.name_any(), RequestPhase::Active).await;
    assert_eq!(
        active.status.as_ref().unwrap().assignment.as_deref(),
        Some("oncall")
    );
    let rb = Api::<RoleBinding>::namespaced(admin().await, &w.ns)
        .get(&active.status.as_ref().unwrap().bindings[0].name)
        .await
        .unwrap();
    let subject = &rb.subjects.unwrap()[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str()),
        ("User", active.spec.requester.username.as_str())
    );
    w.access(&dana, true).await;
    w.access(&erin, false).await;
}

/// A ServiceAccount requester, with a real token: the binding names the ServiceAccount.
#[tokio::test]
async fn a_service_account_activates_with_its_token() {
    use k8s_openapi::api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::ServiceAccount,
    };
    let w = World::new("sa", json!({})).await;
    let admin = admin().await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &w.ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "deployer"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    apply(&admin, &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment", "metadata": {"name": "deployer"},
        "spec": {"roleSetting": w.rs, "subject": {"kind": "ServiceAccount", "name": "deployer", "namespace": w.ns}}}), Some(&w.ns)).await;
    let rb: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "deployer-requests"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kube-pim-requester"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": w.ns}]})).unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &w.ns)
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = sas
        .create_token_request("deployer", &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let bot = operated().client_with_token(&token).await.unwrap();
    w.access(&bot, false).await;
    let ar = w.ask(bot.clone(), json!({})).await.unwrap();
    assert_eq!(
        ar.spec.requester.username,
        format!("system:serviceaccount:{}:deployer", w.ns)
    );
    let active = w.wait_phase(&ar.name_any(), RequestPhase::Active).await;
    let rb = Api::<RoleBinding>::namespaced(admin.clone(), &w.ns)
        .get(&active.status.as_ref().unwrap().bindings[0].name)
        .await
        .unwrap();
    let s = &rb.subjects.unwrap()[0];
    assert_eq!(
        (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
        ("ServiceAccount", "deployer", Some(w.ns.as_str()))
    );
    w.access(&bot, true).await;
}

/// A binding that carries kube-pim's labels but whose request does not exist (left behind,
/// e.g. by an uninstall) is removed by the operator's sweep. Nobody but the operator can
/// create one (kube-pim-managed-bindings), so the test plays the operator to leave it.
#[tokio::test]
async fn a_managed_binding_without_its_request_is_swept() {
    let w = World::new("orphan", json!({})).await;
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "kubepim-000000000000", "labels": {
            "app.kubernetes.io/managed-by": "kube-pim",
            "kubepim.io/activation-request": "no-such-request",
            "kubepim.io/activation-request-namespace": w.ns,
            "kubepim.io/activation-request-uid": "00000000-0000-0000-0000-000000000000"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": w.mallory}]
    }))
    .unwrap();
    let (code, _) = refusal(
        Api::<RoleBinding>::namespaced(admin().await, &w.ns)
            .create(&PostParams::default(), &rb)
            .await,
    );
    assert_eq!(code, 403, "forging a kube-pim binding is refused");
    let operator = user(kube_pim::testenv::OPERATOR_USER, &[]).await;
    Api::<RoleBinding>::namespaced(operator, &w.ns)
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
    let rbs: Api<RoleBinding> = Api::namespaced(admin().await, &w.ns);
    eventually!(
        Duration::from_secs(90),
        rbs.get_opt("kubepim-000000000000").await.unwrap().is_none(),
        "the orphaned binding was not swept"
    );
    w.access(&user(&w.mallory, &[]).await, false).await;
}

/// Besides the requester and the approvers, someone who may `bind` the request's roles where
/// it grants them (checked with a SubjectAccessReview as that person) may end an activation.
#[tokio::test]
async fn someone_who_may_bind_the_roles_can_end_an_activation() {
    let w = World::new("binder", json!({})).await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    w.wait_phase(&ar.name_any(), RequestPhase::Active).await;
    let frank = format!("frank-{}", suffix());
    let admin = admin().await;
    let cr: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": format!("bind-admin-{frank}")},
        "rules": [
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["admin"]},
            {"apiGroups": ["kubepim.io"], "resources": ["activationrequests"], "verbs": ["get", "patch"]}
        ]})).unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    w.bind(&format!("bind-admin-{frank}"), "User", &frank).await;
    let stop = Patch::Merge(json!({"spec": {"deactivate": true}}));
    // mallory (approver RBAC, not an approver, no bind) may not; frank (bind on admin here) may.
    w.bind("kube-pim-requester", "User", &w.mallory).await;
    let (_, msg) = refusal(
        w.requests(user(&w.mallory, &[]).await)
            .patch(&ar.name_any(), &PatchParams::default(), &stop)
            .await,
    );
    assert!(
        msg.contains("or someone who may bind its roles may deactivate"),
        "{msg}"
    );
    w.requests(user(&frank, &[]).await)
        .patch(&ar.name_any(), &PatchParams::default(), &stop)
        .await
        .unwrap();
    w.wait_phase(&ar.name_any(), RequestPhase::Deactivated)
        .await;
    w.access(&alice, false).await;
}

/// Someone who may create RoleBindings creates the binding name kube-pim will use for a
/// request (it is derived from the request's uid, visible while Pending) with another role:
/// the activation still happens, with kube-pim's binding.
#[tokio::test]
async fn a_squatted_binding_name_does_not_block_an_activation() {
    let w = approval_world("squat", 1).await;
    let ar = pending(&w).await;
    let name = kube_pim::decide::bindings::binding_name(&ar.uid().unwrap(), "admin");
    let squat: RoleBinding = serde_json::from_value(json!({"metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": w.mallory}]})).unwrap();
    let rbs: Api<RoleBinding> = Api::namespaced(admin().await, &w.ns);
    rbs.create(&PostParams::default(), &squat).await.unwrap();
    w.decide(w.approver(&w.bob).await, &ar, "Approved", Some("ok"))
        .await
        .unwrap();
    w.wait_phase(&ar.name_any(), RequestPhase::Active).await;
    let rb = rbs.get(&name).await.unwrap();
    assert_eq!(rb.role_ref.name, "admin");
    assert_eq!(rb.subjects.unwrap()[0].name, w.alice);
    w.access(&w.alice().await, true).await;
}

/// A type Active assignment holds access for its whole window without any request: for its
/// subject as written (here a Group), removed at its end and when it is deleted.
#[tokio::test]
async fn a_type_active_assignment_grants_its_group_for_its_window() {
    let w = World::new("standing", json!({"assignment": {"allowActive": true}})).await;
    let (crew, s) = (format!("crew-{}", suffix()), suffix());
    let member = user(&format!("gus-{s}"), &[&crew]).await;
    w.access(&member, false).await;
    let end = chrono::Utc::now() + chrono::TimeDelta::seconds(8);
    let end = chrono::DateTime::from_timestamp(end.timestamp(), 0).unwrap();
    apply(&admin().await, &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment", "metadata": {"name": "crew"},
        "spec": {"roleSetting": w.rs, "type": "Active", "subject": {"kind": "Group", "name": crew},
                 "endTime": end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}}), Some(&w.ns)).await;
    w.access(&member, true).await;
    let rbs: Api<RoleBinding> = Api::namespaced(admin().await, &w.ns);
    let held: Vec<RoleBinding> = rbs
        .list(&ListParams::default().labels("kubepim.io/eligible-assignment=crew"))
        .await
        .unwrap()
        .items;
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].subjects.as_ref().unwrap()[0].kind,
        "Group",
        "the subject as written"
    );
    // The window closes: the binding goes, and the assignment says Expired.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = rbs
            .list(&ListParams::default().labels("kubepim.io/eligible-assignment=crew"))
            .await
            .unwrap()
            .items;
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the Active assignment's binding outlived its endTime"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.access(&member, false).await;

    // A permanent one, deleted: its binding goes with it.
    apply(&admin().await, &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment", "metadata": {"name": "crew2"},
        "spec": {"roleSetting": w.rs, "type": "Active", "subject": {"kind": "Group", "name": crew}}}), Some(&w.ns)).await;
    w.access(&member, true).await;
    Api::<kube_pim::api::EligibleAssignment>::namespaced(admin().await, &w.ns)
        .delete("crew2", &DeleteParams::default())
        .await
        .unwrap();
    w.access(&member, false).await;
    eventually!(
        WAIT,
        Api::<kube_pim::api::EligibleAssignment>::namespaced(admin().await, &w.ns)
            .get_opt("crew2")
            .await
            .unwrap()
            .is_none(),
        "the assignment was not released by its finalizer"
    );
}

/// An assignment and a request in one `kubectl apply`: the webhook reads assignments live when
/// its cache has not seen the new one yet.
#[tokio::test]
async fn an_assignment_and_a_request_in_one_apply() {
    let env = operated();
    let w = World::new("oneshot", json!({})).await;
    let s = suffix();
    let hank = format!("hank-{s}");
    w.bind("kube-pim-requester", "User", &hank).await;
    let file = env.dir().join(format!("oneshot-{s}.yaml"));
    std::fs::write(&file, format!(
        "apiVersion: kubepim.io/v1alpha1\nkind: EligibleAssignment\nmetadata: {{name: hank, namespace: {ns}}}\nspec: {{roleSetting: {rs}, subject: {{kind: User, name: {hank}}}}}\n---\napiVersion: kubepim.io/v1alpha1\nkind: ActivationRequest\nmetadata: {{name: hank-now, namespace: {ns}}}\nspec: {{roleSetting: {rs}, duration: 5m, justification: incident, requester: {{username: {hank}}}}}\n",
        ns = w.ns, rs = w.rs
    )).unwrap();
    // The admin writes the assignment; hank's own request follows in the same file, as admin
    // would be refused (not eligible): so apply as admin the assignment, then as hank at once.
    let kc_admin = env.dir().join("admin.kubeconfig");
    let kc_hank = env.dir().join(format!("{hank}.kubeconfig"));
    env.write_kubeconfig(&kc_hank, &hank, &[]).unwrap();
    let (ea_doc, ar_doc) = std::fs::read_to_string(&file)
        .unwrap()
        .split_once("---\n")
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap();
    std::fs::write(&file, &ea_doc).unwrap();
    let ar_file = env.dir().join(format!("oneshot-ar-{s}.yaml"));
    std::fs::write(&ar_file, &ar_doc).unwrap();
    let run = |kc: &std::path::Path, f: &std::path::Path| {
        std::process::Command::new(env.kubectl())
            .args([
                "--kubeconfig",
                kc.to_str().unwrap(),
                "create",
                "-f",
                f.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let a = run(&kc_admin, &file);
    let b = run(&kc_hank, &ar_file);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(
        b.status.success(),
        "the request right after its assignment was refused: {}",
        String::from_utf8_lossy(&b.stderr)
    );
    w.wait_phase("hank-now", RequestPhase::Active).await;
}

/// Dry runs have no side effects (SPEC invariant 6): a dry-run request is admitted (with the
/// stamped requester) but nothing is created; a dry-run policy write is not audited.
#[tokio::test]
async fn dry_runs_have_no_side_effects() {
    let w = World::new("dryrun", json!({})).await;
    let ar: ActivationRequest = serde_json::from_value(json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"name": "dry"}, "spec": {"roleSetting": w.rs, "duration": "10m", "justification": "dry run",
        "requester": {"username": "someone-else"}}})).unwrap();
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let answered = w.requests(w.alice().await).create(&pp, &ar).await.unwrap();
    assert_eq!(
        answered.spec.requester.username, w.alice,
        "admission ran, and stamped the caller"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        w.requests(admin().await)
            .get_opt("dry")
            .await
            .unwrap()
            .is_none(),
        "nothing was created"
    );
    assert!(
        w.requests(admin().await)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // A dry-run policy write: admitted, not audited.
    let name = format!("dry-{}", suffix());
    let rs: kube_pim::api::RoleSetting = serde_json::from_value(
        json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting",
        "metadata": {"name": name}, "spec": {"roleRefs": [{"name": "view"}]}}),
    )
    .unwrap();
    Api::<kube_pim::api::RoleSetting>::all(admin().await)
        .create(&pp, &rs)
        .await
        .unwrap();
    let log = std::fs::read_to_string(operated().dir().join("audit.log")).unwrap();
    assert!(
        !log.contains(&format!("\"name\":\"{name}\"")),
        "a dry run was audited"
    );
}

/// Deleting a namespace with an Active request completes: the request's access is revoked and
/// recorded first, then the finalizer lets it go (SPEC invariant 7).
#[tokio::test]
async fn deleting_a_namespace_with_an_active_request_completes_and_records_the_revocation() {
    let w = World::new("nsdel", json!({})).await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    w.wait_phase(&ar.name_any(), RequestPhase::Active).await;
    w.access(&alice, true).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin().await);
    namespaces
        .delete(&w.ns, &DeleteParams::default())
        .await
        .unwrap();
    eventually!(
        Duration::from_secs(120),
        namespaces.get_opt(&w.ns).await.unwrap().is_none(),
        "the namespace was not deleted"
    );
    // Revoked and recorded before it went. Which reason depends on what the namespace
    // controller deletes first: the request itself, or the assignment that backed it.
    let uid = ar.uid().unwrap();
    let log = std::fs::read_to_string(operated().dir().join("audit.log")).unwrap();
    // At least once: a consumer drops repeats by id.
    let mut records: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["uid"] == uid.as_str())
        .collect();
    records.sort_by_key(|r| r["seq"].as_i64());
    records.dedup_by(|a, b| a["id"] == b["id"]);
    let last = records
        .last()
        .expect("the request's transitions are on the audit stream");
    assert_eq!(last["action"], "Revoked", "{last}");
    let actions: Vec<&str> = records
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(actions, ["Requested", "Approved", "Activated", "Revoked"]);
}
