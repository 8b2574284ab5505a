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

// --- invariant 8: no standing access to governed roles outside kube-pim ----------------------

fn binding_of(role: &str, name: &str, user: &str) -> RoleBinding {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))
    .unwrap()
}

fn admin_binding(name: &str, user: &str) -> RoleBinding {
    binding_of("admin", name, user)
}

/// A role that can write bindings needs acknowledgePersistenceRisk; with standingAccess: Deny
/// nobody but the operator and the break-glass group binds it directly, not even an activated
/// requester or a cluster administrator; after deactivation the access is checked and gone.
#[tokio::test]
async fn standing_access_deny_refuses_direct_bindings_of_a_governed_role() {
    env();
    let a = admin().await;
    // admin can write RoleBindings: an unacknowledged RoleSetting over it is refused.
    let (code, msg) = refusal(
        Api::<RoleSetting>::all(a.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": format!("unack-{}", common::suffix())},
                    "spec": {"roleRefs": [{"name": "admin"}]}}),
                )
                .unwrap(),
            )
            .await,
    );
    assert_eq!(code, 403, "{msg}");
    assert!(
        msg.contains("ClusterRole admin can ")
            && msg.contains("can write Roles or bindings")
            && msg.contains("acknowledgePersistenceRisk: true"),
        "{msg}"
    );

    // Deny applies to a ClusterRole cluster-wide, so this test governs a role of its own (the
    // other tests here bind `admin`): it reads Secrets and writes RoleBindings.
    let role = format!("secrets-admin-{}", common::suffix());
    let cr: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": role},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]},
                  {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"],
                   "verbs": ["get", "list", "create"]}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(a.clone())
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    let w = World::new(
        "deny",
        json!({"roleRefs": [{"name": role}], "standingAccess": "Deny"}),
    )
    .await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    let name = ar.metadata.name.clone().unwrap();
    w.wait_phase(&name, RequestPhase::Active).await;
    w.access(&alice, true).await;

    // The parameters reach the apiserver's policy within moments: probe with dry runs (which
    // run admission but create nothing) until the policy refuses.
    let mine = binding_of(&role, "alice-keeps-it", &w.alice);
    let as_alice: Api<RoleBinding> = Api::namespaced(alice.clone(), &w.ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually!(
        Duration::from_secs(30),
        as_alice.create(&dry, &mine).await.is_err(),
        "the standing-access policy never refused alice's binding"
    );
    let (code, msg) = refusal(as_alice.create(&PostParams::default(), &mine).await);
    assert_eq!(code, 403, "{msg}");
    assert!(
        msg.contains("kube-pim-standing-access")
            && msg.contains(&format!(
                "ClusterRole {role} is governed by kube-pim with standingAccess: Deny"
            )),
        "{msg}"
    );
    // Not even a cluster administrator binds it directly.
    let as_admin: Api<RoleBinding> = Api::namespaced(a.clone(), &w.ns);
    let (code, _) = refusal(
        as_admin
            .create(
                &PostParams::default(),
                &binding_of(&role, "admin-direct", &w.bob),
            )
            .await,
    );
    assert_eq!(code, 403);
    // Its parameter and the leader Lease are the operator's alone, even for an administrator.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(a.clone(), kube_pim::testenv::CLUSTER_SCOPE_NAMESPACE);
    let (code, msg) = refusal(
        cms.patch(
            "kube-pim-standing-access",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"roles": ""}})),
        )
        .await,
    );
    assert_eq!(code, 403, "{msg}");
    assert!(msg.contains("kube-pim's own state"), "{msg}");
    // Deleting it is possible (uninstalls must be able to empty the namespace), and the
    // operator puts it back: Deny holds again.
    cms.delete("kube-pim-standing-access", &DeleteParams::default())
        .await
        .unwrap();
    eventually!(
        Duration::from_secs(60),
        cms.get_opt("kube-pim-standing-access")
            .await
            .unwrap()
            .and_then(|cm| cm.data)
            .is_some_and(|d| d.get("roles").is_some_and(|r| r.contains(role.as_str()))),
        "the operator did not restore the deleted standing-access ConfigMap"
    );
    eventually!(
        Duration::from_secs(30),
        as_alice.create(&dry, &mine).await.is_err(),
        "Deny did not hold again after the ConfigMap was restored"
    );
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(a.clone(), kube_pim::testenv::CLUSTER_SCOPE_NAMESPACE);
    let (code, _) = refusal(
        leases
            .patch(
                "kube-pim",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"holderIdentity": "mallory"}})),
            )
            .await,
    );
    assert_eq!(code, 403);
    // The break-glass group may (dry run: nothing is left behind).
    let glass = user(
        "glass",
        &[kube_pim::testenv::BREAK_GLASS_GROUP, "system:masters"],
    )
    .await;
    Api::<RoleBinding>::namespaced(glass, &w.ns)
        .create(&dry, &binding_of(&role, "glass", &w.bob))
        .await
        .expect("the break-glass group may bind a governed role");

    // Deactivated: access is gone, and the check says so.
    w.deactivate(alice.clone(), &name).await;
    let c = w.residual_access(&name).await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "AccessRemoved"),
        "{c:?}"
    );
    w.access(&alice, false).await;
    w.audit_intact(&name).await;
    // Deny no longer applies once no RoleSetting asks for it.
    Api::<RoleSetting>::all(a.clone())
        .delete(&w.rs, &DeleteParams::default())
        .await
        .unwrap();
    eventually!(
        Duration::from_secs(30),
        as_admin
            .create(&dry, &binding_of(&role, "after", &w.bob))
            .await
            .is_ok(),
        "binding admin is still refused after the Deny RoleSetting went"
    );
}

/// With standingAccess: Audit, an activated requester of `admin` can create their own
/// RoleBinding; after expiry kube-pim finds the access still there and reports it (condition,
/// Event, audit line), and discovery lists the binding on the RoleSetting.
#[tokio::test]
async fn standing_access_audit_reports_residual_access_and_discovers_the_binding() {
    env();
    let w = World::new("residual", json!({})).await;
    let alice = w.alice().await;
    let ar = w
        .ask(alice.clone(), json!({"duration": "15s"}))
        .await
        .unwrap();
    let name = ar.metadata.name.clone().unwrap();
    w.wait_phase(&name, RequestPhase::Active).await;
    w.access(&alice, true).await;
    Api::<RoleBinding>::namespaced(alice.clone(), &w.ns)
        .create(
            &PostParams::default(),
            &admin_binding("alice-keeps-admin", &w.alice),
        )
        .await
        .expect("Audit mode lets the activated requester bind admin");

    w.wait_phase(&name, RequestPhase::Expired).await;
    let c = w.residual_access(&name).await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "ResidualAccess"),
        "{c:?}"
    );
    assert!(
        c.message.contains(&format!("{} can still", w.alice)),
        "{}",
        c.message
    );
    // The access is real: alice still lists Secrets, through her own binding.
    w.access(&alice, true).await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin().await, &w.ns);
    eventually!(
        Duration::from_secs(30),
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ResidualAccess")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())),
        "no ResidualAccess Event"
    );
    let log = std::fs::read_to_string(common::operated().dir().join("audit.log")).unwrap();
    let uid = ar.metadata.uid.clone().unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"kind\":\"ResidualAccess\"") && l.contains(&uid)),
        "no ResidualAccess audit line"
    );
    w.audit_intact(&name).await;

    // Discovery (every resync) lists alice's binding on the RoleSetting.
    let rs_api: Api<RoleSetting> = Api::all(admin().await);
    eventually!(
        Duration::from_secs(60),
        rs_api
            .get(&w.rs)
            .await
            .unwrap()
            .status
            .is_some_and(|s| s
                .unmanaged_bindings
                .iter()
                .any(|b| b.name == "alice-keeps-admin"
                    && b.namespace.as_deref() == Some(w.ns.as_str())
                    && b.role == "admin"
                    && b.subjects == [format!("User:{}", w.alice)])),
        "discovery never listed alice's own binding"
    );
}

// --- separation of duties ----------------------------------------------------------------------

/// Grants `user` the cluster-wide rules in `rules` through a ClusterRole of its own.
async fn grant_cluster(user: &str, rules: serde_json::Value) {
    let name = format!("grant-{}", user.to_lowercase());
    let a = admin().await;
    let cr: k8s_openapi::api::rbac::v1::ClusterRole =
        serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(a.clone())
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(a)
        .create(&PostParams::default(), &crb)
        .await
        .unwrap();
}

/// Self-approval through every path: directly and through an approver group (refused at
/// admission), and through an approver alice may impersonate (admitted, since the apiserver
/// authenticates the impersonated user, but never counted: the request fails).
#[tokio::test]
async fn self_approval_directly_through_a_group_or_by_impersonation_never_counts() {
    env();
    let w = World::new("selfappr", json!({})).await;
    w.set_role_setting(json!({"approval": {"required": true, "approvers": [
        {"kind": "User", "name": w.bob}, {"kind": "Group", "name": w.leads}]}}))
        .await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    let name = ar.metadata.name.clone().unwrap();
    let ar = w.wait_phase(&name, RequestPhase::Pending).await;
    // Directly, and as a member of the approver group.
    w.bind("kube-pim-approver", "User", &w.alice).await;
    for client in [alice.clone(), user(&w.alice, &["team", &w.leads]).await] {
        let (code, msg) = refusal(w.decide(client, &ar, "Approved", Some("me")).await);
        assert_eq!(code, 403, "{msg}");
        assert!(msg.contains("cannot decide your own request"), "{msg}");
    }
    // By impersonating bob, an approver.
    grant_cluster(
        &w.alice,
        json!([{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": [w.bob]}]),
    )
    .await;
    let as_bob = common::operated()
        .client_impersonating(&w.alice, &["team"], &w.bob)
        .await
        .unwrap();
    w.bind("kube-pim-approver", "User", &w.bob).await;
    w.decide(as_bob, &ar, "Approved", Some("looks fine"))
        .await
        .expect("the apiserver authenticates the impersonated approver");
    // The approval is recorded but does not count; a Group approver could still decide, so
    // the request stays Pending without access.
    let seen = w
        .wait(&name, "the approval recorded as not counted", |ar| {
            ar.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.message.contains("may impersonate"))
            })
        })
        .await;
    assert_eq!(
        seen.status.as_ref().unwrap().phase,
        Some(RequestPhase::Pending)
    );
    w.access(&alice, false).await;
    // A real approver still can.
    w.decide(w.approver(&w.carol).await, &seen, "Approved", Some("ok"))
        .await
        .unwrap();
    w.wait_phase(&name, RequestPhase::Active).await;
    w.access(&alice, true).await;
}

/// A ServiceAccount approver whose tokens the requester may mint is the requester in
/// disguise: its approval does not count, and with no other approver the request fails.
#[tokio::test]
async fn an_approver_service_account_the_requester_can_mint_tokens_for_does_not_count() {
    use k8s_openapi::api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::ServiceAccount,
    };
    env();
    let w = World::new("satoken", json!({})).await;
    let a = admin().await;
    let sas: Api<ServiceAccount> = Api::namespaced(a.clone(), &w.ns);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "approver-bot"}})).unwrap(),
    )
    .await
    .unwrap();
    apply(
        &a,
        &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting", "metadata": {"name": w.rs},
            "spec": {"roleRefs": [{"name": "admin"}], "acknowledgePersistenceRisk": true,
                     "approval": {"required": true, "allowServiceAccountApprovers": true, "approvers": [
                        {"kind": "ServiceAccount", "name": "approver-bot", "namespace": w.ns}]}}}),
        None,
    )
    .await;
    let rb: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "bot-approves"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kube-pim-approver"},
        "subjects": [{"kind": "ServiceAccount", "name": "approver-bot", "namespace": w.ns}]}))
    .unwrap();
    Api::<RoleBinding>::namespaced(a.clone(), &w.ns)
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
    // alice may mint the bot's tokens.
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": {"name": "mint-bot"},
        "rules": [{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"],
                   "resourceNames": ["approver-bot"]}]}))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(a.clone(), &w.ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let rb: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "mint-bot"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mint-bot"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": w.alice}]}))
    .unwrap();
    Api::<RoleBinding>::namespaced(a.clone(), &w.ns)
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();

    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    let name = ar.metadata.name.clone().unwrap();
    let ar = w.wait_phase(&name, RequestPhase::Pending).await;
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(alice.clone(), &w.ns)
        .create_token_request("approver-bot", &PostParams::default(), &tr)
        .await
        .expect("alice may mint the bot's tokens")
        .status
        .unwrap()
        .token
        .unwrap();
    let bot = common::operated().client_with_token(&token).await.unwrap();
    w.decide(bot, &ar, "Approved", Some("automated"))
        .await
        .expect("the webhook admits the bot: it is a listed approver");
    let failed = w.wait_phase(&name, RequestPhase::Failed).await;
    let last = failed
        .status
        .as_ref()
        .unwrap()
        .history
        .last()
        .unwrap()
        .clone();
    assert!(
        last.message
            .as_deref()
            .is_some_and(|m| m.contains("may create tokens for ServiceAccount")),
        "{last:?}"
    );
    w.access(&alice, false).await;
    w.audit_intact(&name).await;
}

// --- survival: one requester cannot flood the operator ----------------------------------------

/// Open requests are capped per requester (default 10, across namespaces): the eleventh is
/// refused until one ends.
#[tokio::test]
async fn one_requester_cannot_keep_more_than_the_cap_of_open_requests() {
    env();
    let w = World::new("cap", json!({})).await;
    let alice = w.alice().await;
    let start = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let mut names = Vec::new();
    for _ in 0..10 {
        let ar = w
            .ask(alice.clone(), json!({"startTime": start}))
            .await
            .unwrap();
        names.push(ar.metadata.name.unwrap());
    }
    for n in &names {
        w.wait_phase(n, RequestPhase::Scheduled).await;
    }
    let (code, msg) = refusal(w.ask(alice.clone(), json!({"startTime": start})).await);
    assert_eq!(code, 403, "{msg}");
    assert!(
        msg.contains("already has 10 open ActivationRequests"),
        "{msg}"
    );
    // Ending one makes room.
    w.deactivate(alice.clone(), &names[0]).await;
    w.wait_phase(&names[0], RequestPhase::Canceled).await;
    eventually!(
        Duration::from_secs(30),
        w.ask(alice.clone(), json!({"startTime": start}))
            .await
            .is_ok(),
        "no room after one request ended"
    );
}

// --- MFA (SPEC section 5) ---------------------------------------------------------------------

/// With requireMFA, a requester whose identity carries no MFA marker is refused; the same
/// person signed in with MFA (the OIDC `amr` claim, mapped into `extra` by the apiserver's
/// structured authentication configuration) activates; a ServiceAccount never satisfies it.
#[tokio::test]
async fn require_mfa_needs_the_amr_claim_in_the_callers_identity() {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    env();
    let env = common::operated();
    let w = World::new("mfa", json!({"activation": {"requireMFA": true}})).await;
    // alice signs in through the OIDC issuer (username = sub).
    let without = env
        .client_with_token(&env.oidc_token(&w.alice, &["team"], &["pwd"]).unwrap())
        .await
        .unwrap();
    let with = env
        .client_with_token(
            &env.oidc_token(&w.alice, &["team"], &["pwd", "mfa"])
                .unwrap(),
        )
        .await
        .unwrap();
    let me = Api::<SelfSubjectReview>::all(with.clone())
        .create(&PostParams::default(), &Default::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .user_info
        .unwrap();
    assert_eq!(me.username.as_deref(), Some(w.alice.as_str()));
    assert_eq!(
        me.extra.unwrap_or_default().get("kubepim.io/amr"),
        Some(&vec!["pwd".to_string(), "mfa".to_string()]),
        "the apiserver maps amr into extra"
    );

    let (code, msg) = refusal(w.ask(without.clone(), json!({})).await);
    assert_eq!(code, 403, "{msg}");
    assert!(msg.contains("MFA"), "{msg}");
    w.access(&without, false).await;

    let ar = w.ask(with.clone(), json!({})).await.unwrap();
    assert_eq!(
        ar.spec.requester.extra.get("kubepim.io/amr"),
        Some(&vec!["pwd".to_string(), "mfa".to_string()]),
        "the proof is recorded on the request"
    );
    w.wait_phase(ar.metadata.name.as_deref().unwrap(), RequestPhase::Active)
        .await;
    w.access(&with, true).await;
}

// --- invariants 1, 2 and 7 as an attacker with their own credentials -------------------------

/// mallory (a requester in the same namespace, with RBAC to patch requests) and alice herself
/// try to make an Active request lose its record or its finalizer, take over someone else's
/// request with `extends`, and rewrite the requester. Everything is refused and the request
/// stays intact.
#[tokio::test]
async fn an_active_request_cannot_be_stripped_deleted_adopted_or_rewritten() {
    env();
    let w = World::new("meta", json!({})).await;
    w.bind("kube-pim-requester", "User", &w.mallory).await;
    apply(
        &admin().await,
        &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment",
            "metadata": {"name": "mallory"},
            "spec": {"roleSetting": w.rs, "subject": {"kind": "User", "name": w.mallory}}}),
        Some(&w.ns),
    )
    .await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    let name = ar.metadata.name.clone().unwrap();
    let active = w.wait_phase(&name, RequestPhase::Active).await;
    let mallory = user(&w.mallory, &[]).await;
    let as_mallory = w.requests(mallory.clone());
    let as_alice = w.requests(alice.clone());

    let json_patch =
        |ops: serde_json::Value| -> Patch<()> { Patch::Json(serde_json::from_value(ops).unwrap()) };
    // The finalizer, by JSON patch (both), and by server-side apply with force.
    for api in [&as_mallory, &as_alice] {
        let (code, msg) = refusal(
            api.patch(
                &name,
                &PatchParams::default(),
                &json_patch(json!([{"op": "remove", "path": "/metadata/finalizers"}])),
            )
            .await,
        );
        assert_eq!(code, 403, "{msg}");
        assert!(msg.contains("only kube-pim removes"), "{msg}");
    }
    let stripped = json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"name": name, "finalizers": []}});
    let _ = as_mallory
        .patch(
            &name,
            &PatchParams::apply("mallory").force(),
            &Patch::Apply(&stripped),
        )
        .await;
    // An owner reference (garbage collection would delete the record with its owner).
    let owner = json!([{"op": "add", "path": "/metadata/ownerReferences", "value": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "bait", "uid": "00000000-0000-0000-0000-000000000001"}]}]);
    let (code, msg) = refusal(
        as_mallory
            .patch(&name, &PatchParams::default(), &json_patch(owner))
            .await,
    );
    assert_eq!(code, 403, "{msg}");
    // kube-pim's own metadata.
    let (code, _) = refusal(
        as_mallory
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"kubepim.io/deactivated-by": w.mallory}}}),
                ),
            )
            .await,
    );
    assert_eq!(code, 403);
    // The requester removed and re-added, or replaced.
    let (code, _) = refusal(
        as_mallory
            .patch(
                &name,
                &PatchParams::default(),
                &json_patch(json!([
                    {"op": "remove", "path": "/spec/requester"},
                    {"op": "add", "path": "/spec/requester", "value": {"username": w.mallory}}])),
            )
            .await,
    );
    assert!(code == 403 || code == 422, "{code}");
    // Deleting an Active request (its audit record), even by a cluster administrator.
    let (code, msg) = refusal(
        w.requests(admin().await)
            .delete(&name, &Default::default())
            .await,
    );
    assert_eq!(code, 403, "{msg}");
    assert!(msg.contains("is Active"), "{msg}");
    // Deactivating someone else's request without being an approver or able to bind.
    let (code, _) = refusal(
        as_mallory
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"deactivate": true}})),
            )
            .await,
    );
    assert_eq!(code, 403);
    // Extending alice's request to get her access.
    let (code, msg) = refusal(w.ask(mallory.clone(), json!({"extends": name})).await);
    assert_eq!(code, 403, "{msg}");
    assert!(msg.contains("is not your own"), "{msg}");

    // Nothing changed: still Active, finalizer, no owner, alice's, access for alice only.
    let now = w.requests(admin().await).get(&name).await.unwrap();
    assert_eq!(
        now.status.as_ref().unwrap().phase,
        Some(RequestPhase::Active)
    );
    assert!(
        now.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"kubepim.io/bindings".to_string())
    );
    assert!(now.metadata.owner_references.unwrap_or_default().is_empty());
    assert_eq!(now.spec, active.spec);
    w.access(&alice, true).await;
    w.access(&mallory, false).await;
}

/// A request deleted and re-created under the same name is a new request: decisions on the
/// old one never count for it.
#[tokio::test]
async fn a_request_recreated_with_the_same_name_starts_without_the_old_approvals() {
    env();
    let w = World::with_group_approval("rename", 2).await;
    let alice = w.alice().await;
    let named = |n: &str| -> kube_pim::api::ActivationRequest {
        serde_json::from_value(
            json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
            "metadata": {"name": n}, "spec": {"roleSetting": w.rs, "duration": "10m",
            "justification": "INC-7", "requester": {"username": "x"}}}),
        )
        .unwrap()
    };
    let api = w.requests(alice.clone());
    api.create(&PostParams::default(), &named("same"))
        .await
        .unwrap();
    let first = w.wait_phase("same", RequestPhase::Pending).await;
    w.decide(w.approver(&w.bob).await, &first, "Approved", Some("one"))
        .await
        .unwrap();
    api.patch(
        "same",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deactivate": true}})),
    )
    .await
    .unwrap();
    w.audit_intact("same").await;
    w.requests(admin().await)
        .delete("same", &Default::default())
        .await
        .unwrap();
    eventually!(
        Duration::from_secs(30),
        w.requests(admin().await)
            .get_opt("same")
            .await
            .unwrap()
            .is_none(),
        "the first request was not deleted"
    );

    api.create(&PostParams::default(), &named("same"))
        .await
        .unwrap();
    let second = w.wait_phase("same", RequestPhase::Pending).await;
    assert_ne!(second.metadata.uid, first.metadata.uid);
    assert!(
        second.status.as_ref().unwrap().approvals.as_deref() == Some(&[]),
        "{:?}",
        second.status
    );
    // bob's approval of the old request must not be replayed: one more approval is not enough.
    w.decide(
        w.approver(&w.carol).await,
        &second,
        "Approved",
        Some("two?"),
    )
    .await
    .unwrap();
    // Once the operator has counted carol's approval, it is waiting for one more.
    let still = w
        .wait("same", "carol's approval counted", |ar| {
            ar.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.message.starts_with("waiting for 1 more approval"))
            })
        })
        .await;
    assert_eq!(
        still.status.as_ref().unwrap().phase,
        Some(RequestPhase::Pending)
    );
    w.access(&alice, false).await;
}

/// Two overlapping activations of the same role for the same person: ending one never removes
/// the other's access, and the residual-access check knows the remaining access is kube-pim's.
#[tokio::test]
async fn ending_one_of_two_overlapping_activations_keeps_the_others_access() {
    env();
    let w = World::new("overlap", json!({})).await;
    let alice = w.alice().await;
    let one = w.ask(alice.clone(), json!({})).await.unwrap();
    let two = w.ask(alice.clone(), json!({})).await.unwrap();
    let (one, two) = (one.metadata.name.unwrap(), two.metadata.name.unwrap());
    w.wait_phase(&one, RequestPhase::Active).await;
    w.wait_phase(&two, RequestPhase::Active).await;
    assert_eq!(
        managed_bindings(&w.ns).await.len(),
        2,
        "one binding per activation"
    );
    let end = |n: String| {
        let api = w.requests(alice.clone());
        async move {
            api.patch(
                &n,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"deactivate": true}})),
            )
            .await
            .unwrap();
        }
    };
    end(one.clone()).await;
    let c = w.residual_access(&one).await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "StillActivated"),
        "{c:?}"
    );
    w.access(&alice, true).await;
    let left = managed_bindings(&w.ns).await;
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].metadata.labels.as_ref().unwrap()["kubepim.io/activation-request"],
        two
    );
    end(two.clone()).await;
    let c = w.residual_access(&two).await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "AccessRemoved"),
        "{c:?}"
    );
    w.access(&alice, false).await;
    w.audit_intact(&one).await;
    w.audit_intact(&two).await;
}

/// A dry-run approval (invariant 6) is admitted and changes nothing: no approval stored, no
/// binding, no transition on the audit stream.
#[tokio::test]
async fn a_dry_run_approval_changes_nothing() {
    env();
    let w = World::with_group_approval("dryappr", 1).await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    let name = ar.metadata.name.clone().unwrap();
    let pending = w
        .wait(&name, "ready for decisions", |ar| {
            ar.status.as_ref().is_some_and(|s| s.approvals.is_some())
        })
        .await;
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/uid", "value": pending.metadata.uid},
        {"op": "add", "path": "/status/approvals/-", "value": {"decision": "Approved", "reason": "dry"}}
    ]))
    .unwrap();
    let pp = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let answered = w
        .requests(w.approver(&w.bob).await)
        .patch_status(&name, &pp, &Patch::<()>::Json(patch))
        .await
        .expect("a dry-run approval is admitted");
    assert_eq!(
        answered
            .status
            .as_ref()
            .unwrap()
            .approvals
            .as_ref()
            .unwrap()
            .len(),
        1,
        "the dry-run answer shows the approval as it would be stored"
    );
    // Then a real decision by carol, so we know the operator has looked since.
    w.decide(
        w.approver(&w.carol).await,
        &pending,
        "Denied",
        Some("not now"),
    )
    .await
    .unwrap();
    let ended = w.wait_phase(&name, RequestPhase::Denied).await;
    let approvals = ended.status.as_ref().unwrap().approvals.clone().unwrap();
    assert_eq!(
        approvals.len(),
        1,
        "only carol's real decision is stored: {approvals:?}"
    );
    assert_eq!(approvals[0].approver.username, w.carol);
    assert!(managed_bindings(&w.ns).await.is_empty());
    w.access(&alice, false).await;
    let ended = w.audit_intact(&name).await;
    assert!(
        ended
            .status
            .unwrap()
            .history
            .iter()
            .all(|h| h.actor != w.bob),
        "bob's dry run left a trace in the history"
    );
}

/// protectLastAssignment: the last EligibleAssignment of the RoleSetting cannot be deleted
/// (others can), and deleting its namespace still completes.
#[tokio::test]
async fn the_last_protected_assignment_stays_unless_its_namespace_goes() {
    env();
    let w = World::new("lastea", json!({"protectLastAssignment": true})).await;
    let a = admin().await;
    apply(
        &a,
        &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment",
            "metadata": {"name": "bob"},
            "spec": {"roleSetting": w.rs, "subject": {"kind": "User", "name": w.bob}}}),
        Some(&w.ns),
    )
    .await;
    let eas: Api<kube_pim::api::EligibleAssignment> = Api::namespaced(a.clone(), &w.ns);
    // The operator's cache must know both before the first deletion is judged.
    eventually!(
        Duration::from_secs(30),
        eas.get("bob")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.phase.is_some()),
        "the second assignment was never seen by the operator"
    );
    eas.delete("bob", &DeleteParams::default()).await.unwrap();
    eventually!(
        Duration::from_secs(30),
        eas.get_opt("bob").await.unwrap().is_none(),
        "bob's assignment was not deleted"
    );
    let (code, msg) = refusal(eas.delete("alice", &DeleteParams::default()).await);
    assert_eq!(code, 403, "{msg}");
    assert!(msg.contains("is the last EligibleAssignment"), "{msg}");
    // The namespace goes, with the assignment.
    Api::<k8s_openapi::api::core::v1::Namespace>::all(a.clone())
        .delete(&w.ns, &DeleteParams::default())
        .await
        .unwrap();
    eventually!(
        Duration::from_secs(90),
        Api::<k8s_openapi::api::core::v1::Namespace>::all(a.clone())
            .get_opt(&w.ns)
            .await
            .unwrap()
            .is_none(),
        "the namespace with the last protected assignment was never deleted"
    );
}
