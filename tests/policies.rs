//! The second guard (SPEC invariants 1 and 2): with kube-pim's webhook configurations removed,
//! the ValidatingAdmissionPolicies in the apiserver still refuse forged requesters and forged
//! status, and nothing is granted. This binary has its own control plane, because removing
//! the webhook would change what every other test sees.

#[macro_use]
mod common;

use common::{admin, operated, refusal, user, world::*};
use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    authentication::v1::{SelfSubjectReview, UserInfo},
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use kube_pim::api::{ActivationRequest, AssignmentPhase, RequestPhase};
use serde_json::json;

async fn whoami(c: &Client) -> UserInfo {
    Api::<SelfSubjectReview>::all(c.clone())
        .create(&PostParams::default(), &Default::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .user_info
        .unwrap()
}

fn request(rs: &str, requester: serde_json::Value) -> ActivationRequest {
    serde_json::from_value(json!({
        "apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"generateName": "req-"},
        "spec": {"roleSetting": rs, "justification": "INC-1", "requester": requester}}))
    .unwrap()
}

async fn status_patch(
    api: &Api<ActivationRequest>,
    name: &str,
    ops: serde_json::Value,
) -> Result<ActivationRequest, kube::Error> {
    let p: json_patch::Patch = serde_json::from_value(ops).unwrap();
    api.patch_status(name, &PatchParams::default(), &Patch::<()>::Json(p))
        .await
}

#[tokio::test]
async fn with_the_webhook_gone_the_in_apiserver_policies_still_refuse_forgeries() {
    let _ = operated();
    let a = admin().await;
    let dp = DeleteParams::default();
    Api::<MutatingWebhookConfiguration>::all(a.clone())
        .delete("kube-pim", &dp)
        .await
        .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(a.clone())
        .delete("kube-pim", &dp)
        .await
        .unwrap();

    let w = World::new("vap", json!({})).await;
    // Approval by bob (by name) is required; the assignment was written without the webhook, so it
    // carries no authorized-by record and makes nobody eligible.
    apply(
        &a,
        &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting", "metadata": {"name": w.rs},
            "spec": {"roleRefs": [{"name": "admin"}], "acknowledgePersistenceRisk": true,
                     "approval": {"required": true, "approvers": [{"kind": "User", "name": w.bob}]}}}),
        None,
    )
    .await;
    w.wait_assignment(
        "alice",
        AssignmentPhase::Invalid,
        Some("NotAuthorizedToBind"),
    )
    .await;
    w.bind("kube-pim-approver", "User", &w.bob).await;
    let alice = w.alice().await;
    let requests = w.requests(alice.clone());

    // Invariant 1: a forged requester is refused by the apiserver itself.
    let me = whoami(&alice).await;
    for forged in [
        json!({"username": w.bob}),
        json!({"username": w.alice}),
        json!({"username": w.alice, "groups": me.groups}),
        json!({"username": w.alice, "groups": [w.leads, "system:authenticated"], "extra": me.extra}),
    ] {
        let (code, msg) = refusal(
            requests
                .create(&PostParams::default(), &request(&w.rs, forged.clone()))
                .await,
        );
        assert_eq!(code, 403, "{forged}: {msg}");
        assert!(
            msg.contains("ValidatingAdmissionPolicy 'kube-pim-requester'"),
            "{forged}: {msg}"
        );
    }
    // Server-side apply is the same CREATE.
    let mut forged = request(&w.rs, json!({"username": w.bob}));
    forged.metadata.generate_name = None;
    forged.metadata.name = Some("applied".into());
    let (code, _) = refusal(
        requests
            .patch(
                "applied",
                &PatchParams::apply("alice"),
                &Patch::Apply(&forged),
            )
            .await,
    );
    assert_eq!(code, 403);
    // Exactly as authenticated is accepted (what the webhook would have stamped).
    let exact = json!({"username": me.username, "groups": me.groups, "extra": me.extra});
    let ar = requests
        .create(&PostParams::default(), &request(&w.rs, exact))
        .await
        .unwrap();
    let name = ar.name_any();
    // Not eligible (no authorized assignment): it fails, and grants nothing.
    w.wait_phase(&name, RequestPhase::Failed).await;

    // Status forgery (by bob, who holds the approver role) is refused whatever the phase.
    let bob = user(&w.bob, &[]).await;
    let as_bob = w.requests(bob.clone());
    let (code, msg) = refusal(
        status_patch(
            &as_bob,
            &name,
            json!([{"op": "replace", "path": "/status/phase", "value": "Active"}]),
        )
        .await,
    );
    assert_eq!(code, 403, "{msg}");
    assert!(msg.contains("kube-pim-request-status"), "{msg}");
    let future = "2099-01-01T00:00:00Z";
    for (path, value) in [
        ("/status/expirationTime", json!(future)),
        (
            "/status/bindings",
            json!([{"kind": "RoleBinding", "namespace": w.ns, "name": "x"}]),
        ),
        ("/status/auditedThrough", json!(99)),
    ] {
        let (code, msg) = refusal(
            status_patch(
                &as_bob,
                &name,
                json!([{"op": "add", "path": path, "value": value}]),
            )
            .await,
        );
        assert_eq!(code, 403, "{path}: {msg}");
    }
    // Through the main resource, status is ignored (the status subresource owns it).
    let after = requests
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Active"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        after.status.unwrap().phase,
        Some(RequestPhase::Failed),
        "status is not writable through the main resource"
    );

    // Invariant 2: an approval written as someone else is refused; one as the caller passes
    // the policy (whether it counts is the controller's business), and then cannot be changed.
    let other = json!({"decision": "Approved", "approver": {"username": w.carol}, "time": future});
    let (code, msg) = refusal(
        status_patch(
            &as_bob,
            &name,
            json!([{"op": "add", "path": "/status/approvals/-", "value": other}]),
        )
        .await,
    );
    assert_eq!(code, 403, "{msg}");
    assert!(msg.contains("recorded for the caller only"), "{msg}");
    // A group the caller is not in (the controller counts Group approvals by viaGroup).
    let via = json!({"decision": "Approved", "approver": {"username": w.bob, "viaGroup": w.leads}, "time": future});
    let (code, msg) = refusal(
        status_patch(
            &as_bob,
            &name,
            json!([{"op": "add", "path": "/status/approvals/-", "value": via}]),
        )
        .await,
    );
    assert_eq!(code, 403, "{msg}");
    let mine = json!({"decision": "Approved", "approver": {"username": w.bob}, "time": future});
    status_patch(
        &as_bob,
        &name,
        json!([{"op": "add", "path": "/status/approvals/-", "value": mine}]),
    )
    .await
    .unwrap();
    for ops in [
        json!([{"op": "replace", "path": "/status/approvals/0/decision", "value": "Denied"}]),
        json!([{"op": "remove", "path": "/status/approvals/0"}]),
        json!([{"op": "add", "path": "/status/approvals/-", "value": mine},
               {"op": "add", "path": "/status/approvals/-", "value": mine}]),
    ] {
        // Refused by the policy, or already by the CRD's own append-only rule.
        let (code, msg) = refusal(status_patch(&as_bob, &name, ops.clone()).await);
        assert!(code == 403 || code == 422, "{ops}: {code} {msg}");
    }
    // A status write that drops status.
    let mut dropped = as_bob.get(&name).await.unwrap();
    dropped.status = None;
    let (code, msg) = refusal(
        as_bob
            .replace_status(&name, &PostParams::default(), &dropped)
            .await,
    );
    assert!(code == 403 || code == 422, "{code}: {msg}");

    // Nothing was granted.
    w.access(&alice, false).await;
    let managed = Api::<RoleBinding>::namespaced(a, &w.ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kube-pim"))
        .await
        .unwrap();
    assert!(managed.items.is_empty());
    w.audit_intact(&name).await;
}
