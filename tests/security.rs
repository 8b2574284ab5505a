//! SPEC section 4 under attack: each test acts as real users with their own credentials
//! against the real apiserver, with the operator and its webhook running as their own user,
//! and asserts that nothing was granted (proven with real requests) and that the audit trail
//! is intact.
//!
//! The operator runs with a 10 s resync here, so the periodic re-checks are seen in a test.

#[macro_use]
mod common;

use std::time::Duration;

use common::{admin, operated_with, refusal, user, world::*};
use k8s_openapi::api::{
    core::v1::ConfigMap,
    rbac::v1::{ClusterRoleBinding, RoleBinding},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use kube_pim::api::{AssignmentPhase, RequestPhase, RoleSetting};
use serde_json::json;

fn env() {
    operated_with(&["--resync=10s"]);
}

/// Lists ConfigMaps in `ns` as `client` until that is `allowed` (the `view` role's access).
async fn can_view(client: &kube::Client, ns: &str, allowed: bool) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually!(
        Duration::from_secs(30),
        api.list(&ListParams::default()).await.is_ok() == allowed,
        "listing ConfigMaps in {ns} should be allowed={allowed}"
    );
}

/// The managed bindings kube-pim holds in `ns`.
async fn managed_bindings(ns: &str) -> Vec<RoleBinding> {
    Api::<RoleBinding>::namespaced(admin().await, ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=kube-pim"))
        .await
        .unwrap()
        .items
}

// --- invariant 3: nobody grants through kube-pim more than they could with RBAC -------------

/// carol administers kube-pim objects in the namespace but may not bind `admin`: her
/// assignment is refused, and so is a RoleSetting; with `bind` on `admin` in the namespace
/// her assignment is accepted and works, and a RoleSetting still needs `bind` cluster-wide.
#[tokio::test]
async fn writing_policy_needs_bind_on_every_role_it_grants() {
    env();
    let w = World::new("bindw", json!({})).await;
    w.bind("kube-pim-admin", "User", &w.carol).await;
    w.bind("kube-pim-requester", "User", &w.bob).await;
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("kube-pim-admin-{}", w.carol)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kube-pim-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": w.carol}]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(admin().await)
        .create(&PostParams::default(), &crb)
        .await
        .unwrap();
    let carol = user(&w.carol, &["team"]).await;

    let (code, msg) = refusal(w.assign(&carol, "bob", &w.rs, &w.bob).await);
    assert_eq!(code, 403, "{msg}");
    assert!(
        msg.contains(&format!(
            "{} may not bind ClusterRole admin in namespace {}",
            w.carol, w.ns
        )),
        "{msg}"
    );
    let rs: RoleSetting = serde_json::from_value(json!({
        "apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting",
        "metadata": {"name": format!("{}-carol", w.rs)},
        "spec": {"roleRefs": [{"name": "admin"}], "acknowledgePersistenceRisk": true}
    }))
    .unwrap();
    let rs_api: Api<RoleSetting> = Api::all(carol.clone());
    let (code, msg) = refusal(rs_api.create(&PostParams::default(), &rs).await);
    assert_eq!(code, 403, "{msg}");
    assert!(
        msg.contains("may not bind ClusterRole admin cluster-wide"),
        "{msg}"
    );
    // Server-side apply is the same write.
    let (code, _) = refusal(
        rs_api
            .patch(
                rs.metadata.name.as_deref().unwrap(),
                &PatchParams::apply("carol"),
                &Patch::Apply(&rs),
            )
            .await,
    );
    assert_eq!(code, 403);
    // Nothing was granted: bob is not eligible.
    let (_, msg) = refusal(w.ask(user(&w.bob, &[]).await, json!({})).await);
    assert!(msg.contains("is not eligible"), "{msg}");

    // With bind on admin in this namespace (and nothing more), carol's assignment works.
    w.allow_bind(&w.carol, "admin").await;
    w.assign(&carol, "bob", &w.rs, &w.bob).await.unwrap();
    w.wait_assignment("bob", AssignmentPhase::Eligible, Some("Valid"))
        .await;
    let bob = user(&w.bob, &[]).await;
    let ar = w.ask(bob.clone(), json!({})).await.unwrap();
    w.wait_phase(ar.metadata.name.as_deref().unwrap(), RequestPhase::Active)
        .await;
    w.access(&bob, true).await;
    // A RoleSetting still needs bind cluster-wide.
    let (code, _) = refusal(rs_api.create(&PostParams::default(), &rs).await);
    assert_eq!(code, 403);
}

/// An assignment written by someone who may bind `view` stops granting anything when an
/// administrator widens its RoleSetting to `admin`: its writer could not have granted that.
#[tokio::test]
async fn a_role_setting_widened_after_assignments_exist_revokes_what_their_writers_could_not_grant()
{
    env();
    let w = World::new("widen", json!({"roleRefs": [{"name": "view"}]})).await;
    w.bind("kube-pim-admin", "User", &w.carol).await;
    w.bind("kube-pim-requester", "User", &w.bob).await;
    w.allow_bind(&w.carol, "view").await;
    let carol = user(&w.carol, &[]).await;
    w.assign(&carol, "bob", &w.rs, &w.bob).await.unwrap();
    w.wait_assignment("bob", AssignmentPhase::Eligible, Some("Valid"))
        .await;
    let bob = user(&w.bob, &[]).await;
    let ar = w.ask(bob.clone(), json!({})).await.unwrap();
    let name = ar.metadata.name.clone().unwrap();
    w.wait_phase(&name, RequestPhase::Active).await;
    can_view(&bob, &w.ns, true).await;
    w.access(&bob, false).await;

    // The administrator (who may bind admin) widens the RoleSetting.
    Api::<RoleSetting>::all(admin().await)
        .patch(
            &w.rs,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"roleRefs": [{"name": "admin"}]}})),
        )
        .await
        .unwrap();
    let ea = w
        .wait_assignment("bob", AssignmentPhase::Invalid, Some("NotAuthorizedToBind"))
        .await;
    let msg = ea
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Valid")
        .unwrap()
        .message;
    assert!(
        msg.contains(&format!(
            "{}, who wrote this assignment, may not bind ClusterRole admin in namespace {}",
            w.carol, w.ns
        )),
        "{msg}"
    );
    let ended = w.wait_phase(&name, RequestPhase::Revoked).await;
    w.access(&bob, false).await;
    can_view(&bob, &w.ns, false).await;
    assert!(managed_bindings(&w.ns).await.is_empty());
    // admin was never bound: the only bindings the request ever listed are for view.
    for b in ended.status.as_ref().unwrap().bindings.iter() {
        let name = &b.name;
        assert!(
            Api::<RoleBinding>::namespaced(admin().await, &w.ns)
                .get_opt(name)
                .await
                .unwrap()
                .is_none(),
            "{name} still exists"
        );
    }
    w.audit_intact(&name).await;
    // And bob cannot activate again.
    let (_, msg) = refusal(w.ask(bob, json!({})).await);
    assert!(msg.contains("is not eligible"), "{msg}");
}

/// GitOps order: an assignment may name a RoleSetting that does not exist yet. When an
/// administrator creates it over `admin`, the assignment's writer (who may not bind `admin`)
/// gets nothing; once they may, the periodic re-check makes it Eligible.
#[tokio::test]
async fn an_assignment_for_a_role_setting_created_later_grants_only_what_its_writer_may_bind() {
    env();
    let w = World::new("later", json!({})).await;
    w.bind("kube-pim-admin", "User", &w.carol).await;
    w.bind("kube-pim-requester", "User", &w.bob).await;
    let carol = user(&w.carol, &[]).await;
    let later = format!("{}-later", w.rs);
    w.assign(&carol, "bob", &later, &w.bob).await.unwrap();
    w.wait_assignment("bob", AssignmentPhase::Invalid, Some("RoleSettingNotFound"))
        .await;

    apply(
        &admin().await,
        &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting",
            "metadata": {"name": later},
            "spec": {"roleRefs": [{"name": "admin"}], "acknowledgePersistenceRisk": true}}),
        None,
    )
    .await;
    w.wait_assignment("bob", AssignmentPhase::Invalid, Some("NotAuthorizedToBind"))
        .await;
    let bob = user(&w.bob, &[]).await;
    let (_, msg) = refusal(w.ask(bob.clone(), json!({"roleSetting": later})).await);
    assert!(msg.contains("is not eligible"), "{msg}");
    w.access(&bob, false).await;

    // carol is given bind on admin here; nothing is re-applied: the periodic check finds it.
    w.allow_bind(&w.carol, "admin").await;
    w.wait_assignment("bob", AssignmentPhase::Eligible, Some("Valid"))
        .await;
    let ar = w
        .ask(bob.clone(), json!({"roleSetting": later}))
        .await
        .unwrap();
    w.wait_phase(ar.metadata.name.as_deref().unwrap(), RequestPhase::Active)
        .await;
    w.access(&bob, true).await;
}

/// When the writer of an assignment loses `bind`, the periodic re-check revokes the access it
/// gave, and records why.
#[tokio::test]
async fn an_assignment_whose_writer_loses_bind_is_revoked_at_the_next_check() {
    env();
    let w = World::new("lose", json!({})).await;
    w.bind("kube-pim-admin", "User", &w.carol).await;
    w.bind("kube-pim-requester", "User", &w.bob).await;
    let grant = w.allow_bind(&w.carol, "admin").await;
    let carol = user(&w.carol, &[]).await;
    w.assign(&carol, "bob", &w.rs, &w.bob).await.unwrap();
    w.wait_assignment("bob", AssignmentPhase::Eligible, Some("Valid"))
        .await;
    let bob = user(&w.bob, &[]).await;
    let ar = w.ask(bob.clone(), json!({})).await.unwrap();
    let name = ar.metadata.name.clone().unwrap();
    w.wait_phase(&name, RequestPhase::Active).await;
    w.access(&bob, true).await;

    Api::<RoleBinding>::namespaced(admin().await, &w.ns)
        .delete(&grant, &DeleteParams::default())
        .await
        .unwrap();
    w.wait_assignment("bob", AssignmentPhase::Invalid, Some("NotAuthorizedToBind"))
        .await;
    w.wait_phase(&name, RequestPhase::Revoked).await;
    w.access(&bob, false).await;
    assert!(managed_bindings(&w.ns).await.is_empty());
    w.audit_intact(&name).await;
}
