//! A follower's caches stay current (SPEC invariant 4, survival: a follower serves the
//! webhook from its caches and takes over from them). Each cache hands its changes to the
//! controllers through subscriptions that hold 1,024 unread events; a subscription nobody
//! reads stops the cache's watch once full. Followers once never ran their controllers, so
//! after a burst of 1,024 changes of a kind their caches froze. Proven here through the
//! follower's `/metrics`, whose request gauges are computed from its cache.
//!
//! In its own test binary: it runs a second operator beside the test environment's.

#[macro_use]
mod common;

use std::time::Duration;

use common::{admin, operated, start_operator, world::*};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kube_pim::api::{ActivationRequest, RequestPhase};
use serde_json::json;

/// More changes of one request than a subscription holds unread.
const CHANGES: usize = 1_100;

async fn holder() -> Option<String> {
    Api::<Lease>::namespaced(admin().await, kube_pim::testenv::CLUSTER_SCOPE_NAMESPACE)
        .get_opt("kube-pim")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn a_followers_cache_follows_more_changes_than_a_subscription_holds() {
    let env = operated();
    eventually!(
        Duration::from_secs(30),
        holder().await.as_deref() == Some("testenv-operator"),
        "the test environment's operator never led"
    );
    let [health, webhook] = kube_pim::testenv::free_ports::<2>().unwrap();
    let mut follower = start_operator(
        env,
        "kube-pim-follower",
        &[
            "--leader-election-identity=follower".into(),
            format!("--health-addr=127.0.0.1:{health}"),
            format!("--webhook-addr=127.0.0.1:{webhook}"),
        ],
    );
    let addr = format!("127.0.0.1:{health}");
    eventually!(
        Duration::from_secs(60),
        common::http_get(&addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200"),
        "the follower never became ready"
    );

    let w = World::new("follower", json!({})).await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    let name = ar.metadata.name.clone().unwrap();
    w.wait_phase(&name, RequestPhase::Active).await;
    let gauge = |phase: &str| {
        format!(
            "kube_pim_activation_requests{{role_setting=\"{}\",phase=\"{phase}\"}} 1",
            w.rs
        )
    };
    eventually!(
        Duration::from_secs(30),
        common::http_get(&addr, "/metrics")
            .await
            .contains(&gauge("Active")),
        "the follower's cache never saw the request Active"
    );

    // A burst of changes (an admin's label), then the request ends.
    let requests: Api<ActivationRequest> = Api::namespaced(admin().await, &w.ns);
    futures::stream::iter(0..CHANGES)
        .for_each_concurrent(8, |i| {
            let (requests, name) = (requests.clone(), name.clone());
            async move {
                requests
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"labels": {"burst": i.to_string()}}})),
                    )
                    .await
                    .expect("an admin may label a request");
            }
        })
        .await;
    w.deactivate(alice.clone(), &name).await;
    w.wait_phase(&name, RequestPhase::Deactivated).await;

    eventually!(
        Duration::from_secs(30),
        common::http_get(&addr, "/metrics")
            .await
            .contains(&gauge("Deactivated")),
        "the follower's cache stopped following after the burst of {CHANGES} changes"
    );
    assert!(
        common::http_get(&addr, "/metrics")
            .await
            .contains("kube_pim_leader 0"),
        "the follower led: the test proves nothing about followers"
    );
    assert!(
        follower.try_wait().unwrap().is_none(),
        "the follower exited"
    );
    let _ = follower.kill().await;
}
