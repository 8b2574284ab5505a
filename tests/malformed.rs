//! One unreadable object cannot stall a controller (SPEC invariant 4, survival). The test
//! loosens the EligibleAssignment CRD (as a botched upgrade might), stores an assignment that
//! kube-pim's types cannot read, restarts the operator (whose initial list must now read it),
//! and shows that it becomes ready and that another assignment and its activation work end
//! to end.
//!
//! In its own test binary: it changes a CRD.

#[macro_use]
mod common;

use std::time::Duration;

use common::{admin, operated, user, world::*};
use k8s_apiextensions::CustomResourceDefinition;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kube_pim::api::{EligibleAssignment, RequestPhase};
use serde_json::json;

mod k8s_apiextensions {
    pub use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
}

#[tokio::test]
async fn an_unreadable_assignment_does_not_stall_the_others() {
    let env = operated();
    let a = admin().await;
    // A looser schema: subject.kind no longer limited to User, Group, ServiceAccount.
    let crds: Api<CustomResourceDefinition> = Api::all(a.clone());
    let loosen: json_patch::Patch = serde_json::from_value(json!([{"op": "remove",
        "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/subject/properties/kind/enum"}]))
    .unwrap();
    crds.patch(
        "eligibleassignments.kubepim.io",
        &PatchParams::default(),
        &Patch::<()>::Json(loosen),
    )
    .await
    .unwrap();
    let w = World::new("malformed", json!({})).await;
    // A readable assignment, made unreadable past the webhook (which refuses what it cannot
    // read) by the operator's user, the one identity admission lets through.
    apply(
        &a,
        &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment",
            "metadata": {"name": "aaa-unreadable"},
            "spec": {"roleSetting": w.rs, "subject": {"kind": "User", "name": "placeholder"}}}),
        Some(&w.ns),
    )
    .await;
    let operator = user(kube_pim::testenv::OPERATOR_USER, &[]).await;
    let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(
        operator,
        &w.ns,
        &kube::api::ApiResource::erase::<EligibleAssignment>(&()),
    );
    eventually!(
        Duration::from_secs(30),
        dynamic
            .patch(
                "aaa-unreadable",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"subject": {"kind": "Robot"}}})),
            )
            .await
            .is_ok(),
        "the loosened CRD never accepted the unreadable assignment"
    );
    // A fresh operator must list it (a running watch may just drop the one event; a list
    // is where one unreadable item used to fail them all).
    common::signal(common::operator_pid(env), nix::sys::signal::Signal::SIGKILL);
    let _op = common::start_operator(env, "kube-pim-after-unreadable", &[]);
    common::wait_operator_ready(env).await;

    // A new assignment after it, and an activation through it, still work.
    apply(
        &a,
        &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment",
            "metadata": {"name": "zzz-bob"},
            "spec": {"roleSetting": w.rs, "subject": {"kind": "User", "name": w.bob}}}),
        Some(&w.ns),
    )
    .await;
    w.bind("kube-pim-requester", "User", &w.bob).await;
    w.wait_assignment("zzz-bob", kube_pim::api::AssignmentPhase::Eligible, None)
        .await;
    let bob = user(&w.bob, &[]).await;
    let ar = w.ask(bob.clone(), json!({})).await.unwrap();
    w.wait_phase(ar.metadata.name.as_deref().unwrap(), RequestPhase::Active)
        .await;
    w.access(&bob, true).await;
    let log =
        std::fs::read_to_string(env.dir().join("logs/kube-pim-after-unreadable.log")).unwrap();
    assert!(
        log.contains("skipping an object kube-pim cannot read") && log.contains("aaa-unreadable"),
        "the unreadable object was not reported"
    );
}
