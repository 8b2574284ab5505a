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

use common::{admin, lease_holder, operated, start_replica, world::*};
use futures::StreamExt;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kube_pim::api::{ActivationRequest, RequestPhase};
use serde_json::json;

/// More changes of one request than a subscription holds unread.
const CHANGES: usize = 1_100;

/// Whether the replica's `/metrics` reports one request of `rs` in `phase`.
async fn reports(health: &str, rs: &str, phase: &str) -> bool {
    common::http_get(health, "/metrics")
        .await
        .contains(&format!(
            "kube_pim_activation_requests{{role_setting=\"{rs}\",phase=\"{phase}\"}} 1"
        ))
}

#[tokio::test]
async fn a_followers_cache_follows_more_changes_than_a_subscription_holds() {
    let env = operated();
    eventually!(
        Duration::from_secs(30),
        lease_holder().await.as_deref() == Some("testenv-operator"),
        "the test environment's operator never led"
    );
    let mut follower = start_replica(env, "follower", &[]).await;
    let addr = follower.health.clone();

    let w = World::new("follower", json!({})).await;
    let alice = w.alice().await;
    let ar = w.ask(alice.clone(), json!({})).await.unwrap();
    let name = ar.metadata.name.clone().unwrap();
    w.wait_phase(&name, RequestPhase::Active).await;
    eventually!(
        Duration::from_secs(30),
        reports(&addr, &w.rs, "Active").await,
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
        reports(&addr, &w.rs, "Deactivated").await,
        "the follower's cache stopped following after the burst of {CHANGES} changes"
    );
    assert!(
        common::http_get(&addr, "/metrics")
            .await
            .contains("kube_pim_leader 0"),
        "the follower led: the test proves nothing about followers"
    );
    assert!(
        follower.process.try_wait().unwrap().is_none(),
        "the follower exited"
    );
    let _ = follower.process.kill().await;
}
