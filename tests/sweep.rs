//! `kube-pim sweep`, the independent reaper (SPEC invariant 4): with the operator killed and
//! staying down across an expiry, the sweep alone revokes the binding from its expiry
//! annotation, as its own narrow identity. When the operator comes back it records the end.
//!
//! In its own test binary: killing the operator would disturb other tests.

#[macro_use]
mod common;

use std::time::Duration;

use common::{admin, can, operated, operator_pid, signal, start_operator, world::*};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Api;
use kube_pim::api::{HistoryAction, RequestPhase};
use serde_json::json;

#[tokio::test]
async fn the_sweep_alone_revokes_an_expired_binding_while_the_operator_is_down() {
    let env = operated();
    let w = World::new("sweep", json!({})).await;
    let alice = w.alice().await;
    let ar = w
        .ask(alice.clone(), json!({"duration": "5s"}))
        .await
        .unwrap();
    let name = ar.metadata.name.clone().unwrap();
    let active = w.wait_phase(&name, RequestPhase::Active).await;
    let binding = active.status.as_ref().unwrap().bindings[0].name.clone();
    let expires = active.status.as_ref().unwrap().expiration_time.unwrap();
    w.access(&alice, true).await;

    signal(operator_pid(env), nix::sys::signal::Signal::SIGKILL);
    let wait = (expires - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(2);
    tokio::time::sleep(wait).await;
    let rbs: Api<RoleBinding> = Api::namespaced(admin().await, &w.ns);
    assert!(
        rbs.get_opt(&binding).await.unwrap().is_some(),
        "something else revoked it; this test would prove nothing"
    );
    w.access(&alice, true).await;

    // The reaper, as its own user, once.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-pim"))
        .arg("sweep")
        .env("KUBECONFIG", env.dir().join("sweeper.kubeconfig"))
        .env("KUBE_PIM_LOG_FORMAT", "text")
        .output()
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("revoked a binding past its expiry"), "{log}");
    assert!(rbs.get_opt(&binding).await.unwrap().is_none());
    w.access(&alice, false).await;

    // Its identity can list and delete bindings, and nothing else.
    let sweeper = common::user(kube_pim::testenv::SWEEPER_USER, &[]).await;
    assert!(
        can(
            &sweeper,
            "delete",
            "rbac.authorization.k8s.io/rolebindings",
            &w.ns
        )
        .await
    );
    for (verb, what) in [
        ("create", "rbac.authorization.k8s.io/rolebindings"),
        ("get", "secrets"),
        ("list", "kubepim.io/activationrequests"),
        ("patch", "kubepim.io/activationrequests/status"),
    ] {
        assert!(!can(&sweeper, verb, what, &w.ns).await, "{verb} {what}");
    }

    // The operator comes back: it records the end, does not recreate the binding, and
    // reports nothing past expiry.
    let _op = start_operator(env, "kube-pim-after-sweep", &[]);
    let ended = w.wait_phase(&name, RequestPhase::Expired).await;
    assert_eq!(
        ended
            .status
            .as_ref()
            .unwrap()
            .history
            .last()
            .unwrap()
            .action,
        HistoryAction::Expired
    );
    w.audit_intact(&name).await;
    assert!(rbs.get_opt(&binding).await.unwrap().is_none());
    w.access(&alice, false).await;
    let how: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir().join("operator.json")).unwrap()).unwrap();
    let addr = how["healthAddr"].as_str().unwrap().to_string();
    eventually!(
        Duration::from_secs(30),
        common::http_get(&addr, "/metrics")
            .await
            .contains("kube_pim_bindings_past_expiry 0"),
        "the restarted operator's /metrics never reported 0 bindings past expiry"
    );
}
