//! The apiserver restarted mid-activation (SPEC invariant 4, survival): the operator's
//! watches reconnect and the activation still ends on time, with its record complete.
//!
//! In its own test binary: every test would see the apiserver go away.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{admin, operated, world::*};
use kube_pim::api::RequestPhase;
use serde_json::json;

#[tokio::test]
async fn an_activation_survives_an_apiserver_restart_and_ends_on_time() {
    let env = operated();
    let w = World::new("apirestart", json!({})).await;
    let alice = w.alice().await;
    let ar = w
        .ask(alice.clone(), json!({"duration": "30s"}))
        .await
        .unwrap();
    let name = ar.metadata.name.clone().unwrap();
    let active = w.wait_phase(&name, RequestPhase::Active).await;
    let expires = active.status.as_ref().unwrap().expiration_time.unwrap();
    w.access(&alice, true).await;

    // SIGKILL the apiserver, and start it again exactly as before (etcd keeps the data).
    common::signal(
        common::pid_of(env, "kube-apiserver"),
        nix::sys::signal::Signal::SIGKILL,
    );
    let how: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir().join("apiserver.json")).unwrap()).unwrap();
    let args: Vec<String> = serde_json::from_value(how["args"].clone()).unwrap();
    let log = std::fs::File::create(env.dir().join("logs/kube-apiserver-restarted.log")).unwrap();
    // The port is free once the killed process is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _apiserver = tokio::process::Command::new(how["bin"].as_str().unwrap())
        .args(&args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let a = admin().await;
    let started = Instant::now();
    eventually!(
        Duration::from_secs(60),
        a.request_text(http::Request::get("/readyz").body(Vec::new()).unwrap())
            .await
            .is_ok_and(|b| b.trim() == "ok"),
        "the restarted apiserver never became ready"
    );
    eprintln!("apiserver ready {:?} after its restart", started.elapsed());
    assert!(
        chrono::Utc::now() < expires,
        "the restart outlasted the activation; this test would prove nothing about mid-activation"
    );

    // The operator reconnects; the activation ends at its expiry, recorded in full.
    w.wait_phase(&name, RequestPhase::Expired).await;
    w.access(&alice, false).await;
    w.audit_intact(&name).await;
    let how: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir().join("operator.json")).unwrap()).unwrap();
    assert!(
        common::http_get(how["healthAddr"].as_str().unwrap(), "/readyz")
            .await
            .starts_with("HTTP/1.1 200"),
        "the operator did not survive the apiserver restart"
    );
    // And it keeps working: a new activation.
    let again = w.ask(alice.clone(), json!({})).await.unwrap();
    w.wait_phase(
        again.metadata.name.as_deref().unwrap(),
        RequestPhase::Active,
    )
    .await;
    w.access(&alice, true).await;
}
