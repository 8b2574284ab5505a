//! Notifications end to end: RoleSetting webhooks delivered by the real operator to real HTTP
//! receivers on loopback (the test environment allows http on 127.0.0.0/8 only), while real
//! users request, approve and end activations. Content, signature, order, retries after
//! errors and while a receiver is down, a refused internal target, and revocation on time
//! while a receiver hangs.

#[macro_use]
mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use common::{admin, operated, refusal, world::World};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::PostParams};
use kube_pim::{api::RequestPhase, notify::message::signature, testenv::CLUSTER_SCOPE_NAMESPACE};
use serde_json::{Value, json};

/// One delivery as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// `/flaky/..` answers 500 this many times first.
    failures_left: Arc<Mutex<u32>>,
    /// Deliveries `/hang/..` received (and never answered).
    hung: Arc<Mutex<u32>>,
}

async fn receive(
    State(r): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if path.starts_with("hang") {
        // Never answers (the operator gives up on each attempt and retries).
        *r.hung.lock().unwrap() += 1;
        std::future::pending::<()>().await;
    }
    if path.starts_with("flaky") {
        let mut left = r.failures_left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            r.got.lock().unwrap().push(Received {
                path: format!("refused:{path}"),
                headers,
                body,
            });
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    r.got.lock().unwrap().push(Received {
        path,
        headers,
        body,
    });
    StatusCode::ACCEPTED
}

/// Serves the receiver on `addr` (or a free loopback port).
async fn serve(r: Receiver, addr: Option<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/{*path}", post(receive)).with_state(r);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

impl Receiver {
    /// CloudEvents received at `path` for request `subject` (`ns/name`), in arrival order.
    fn events(&self, path: &str, subject: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .map(Received::json)
            .filter(|e| e["subject"] == subject)
            .collect()
    }

    fn types(&self, path: &str, subject: &str) -> Vec<String> {
        self.events(path, subject)
            .iter()
            .map(|e| {
                e["type"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("io.kubepim.activationrequest.")
                    .to_string()
            })
            .collect()
    }
}

async fn secret(name: &str, key: &[u8], labelled: bool) {
    let labels = if labelled {
        json!({kube_pim::notify::SIGNING_KEY_LABEL: "true"})
    } else {
        json!({})
    };
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "stringData": {"hmac": String::from_utf8(key.to_vec()).unwrap()}
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin().await, CLUSTER_SCOPE_NAMESPACE)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lifecycle_is_announced_signed_and_in_order() {
    operated();
    let r = Receiver::default();
    let addr = serve(r.clone(), None).await;
    let w = World::with_group_approval("notify-flow", 1).await;
    let key = format!("key-{}", w.alice);
    secret(&format!("hook-{}", w.alice), key.as_bytes(), true).await;
    // A Secret not labelled as a signing key is never used to sign (a RoleSetting writer must
    // not be able to put any Secret of the operator's namespace to work).
    secret(&format!("other-{}", w.alice), b"not a key", false).await;
    w.set_role_setting(json!({
        "approval": {"required": true, "minApprovals": 1, "approvers": [{"kind": "Group", "name": w.leads}]},
        "notifications": {"expiringBefore": "5m", "webhooks": [
            {"url": format!("http://{addr}/ce"), "secretKeyRef": {"name": format!("hook-{}", w.alice), "key": "hmac"}},
            {"url": format!("http://{addr}/slack"), "format": "Slack", "events": ["Requested"]},
            {"url": format!("http://{addr}/unlabelled"), "secretKeyRef": {"name": format!("other-{}", w.alice), "key": "hmac"}},
        ]}
    }))
    .await;
    let ar = w
        .ask(
            w.alice().await,
            json!({"duration": "2m", "justification": "INC-9 notify"}),
        )
        .await
        .unwrap();
    let name = ar.metadata.name.clone().unwrap();
    let subject = format!("{}/{name}", w.ns);
    let pending = w.wait_phase(&name, RequestPhase::Pending).await;
    w.decide(w.approver(&w.bob).await, &pending, "Approved", Some("ok"))
        .await
        .unwrap();
    let active = w.wait_phase(&name, RequestPhase::Active).await;
    // The activation is shorter than expiringBefore: Expiring follows Activated at once.
    eventually!(
        Duration::from_secs(30),
        r.types("ce", &subject).len() >= 4,
        "got {:?}",
        r.types("ce", &subject)
    );
    w.deactivate(w.alice().await, &name).await;
    w.wait_phase(&name, RequestPhase::Deactivated).await;
    eventually!(
        Duration::from_secs(30),
        r.types("ce", &subject).len() >= 5,
        "got {:?}",
        r.types("ce", &subject)
    );
    assert_eq!(
        r.types("ce", &subject),
        ["requested", "approved", "activated", "expiring", "revoked"],
        "one of each, in order"
    );

    let uid = active.metadata.uid.clone().unwrap();
    let events = r.events("ce", &subject);
    for (e, seq) in events.iter().zip(["1", "2", "3", "expiring", "4"]) {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["id"], format!("{uid}/{seq}"), "the idempotency key");
        assert_eq!(
            e["source"],
            format!("/apis/kubepim.io/v1alpha1/namespaces/{CLUSTER_SCOPE_NAMESPACE}/operator")
        );
        assert_eq!(e["data"]["requester"], w.alice.as_str());
        assert_eq!(e["data"]["roleSetting"], w.rs.as_str());
    }
    assert_eq!(events[1]["data"]["actor"], w.bob.as_str());
    assert_eq!(events[4]["data"]["action"], "Deactivated");
    assert_eq!(
        events[2]["data"]["expirationTime"],
        json!(
            active
                .status
                .unwrap()
                .expiration_time
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        )
    );
    // Each delivery is signed with the key from the Secret, over the exact body.
    for got in r.got.lock().unwrap().iter().filter(|g| g.path == "ce") {
        assert_eq!(
            got.headers["content-type"],
            "application/cloudevents+json; charset=utf-8"
        );
        assert_eq!(
            got.headers["x-kube-pim-signature-256"].to_str().unwrap(),
            signature(key.as_bytes(), &got.body)
        );
        assert_eq!(
            got.headers["idempotency-key"].to_str().unwrap(),
            got.json()["id"].as_str().unwrap()
        );
    }
    assert!(
        !r.got.lock().unwrap().iter().any(|g| g.path == "unlabelled"),
        "nothing is signed with an unlabelled Secret"
    );
    // The Slack receiver subscribed to Requested only; it tells approvers how to decide.
    let slack: Vec<Value> = r
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.path == "slack")
        .map(Received::json)
        .collect();
    let texts: Vec<&str> = slack
        .iter()
        .filter_map(|s| s["text"].as_str())
        .filter(|t| t.contains(&subject))
        .collect();
    assert_eq!(texts.len(), 1, "{slack:?}");
    assert!(
        texts[0].contains(&format!("kubectl pim approve {subject}")),
        "{}",
        texts[0]
    );
    assert!(
        r.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.path == "slack")
            .all(|g| g.headers.get("x-kube-pim-signature-256").is_none()),
        "unsigned without a key"
    );
}

#[tokio::test]
async fn deliveries_are_retried_after_errors_and_while_the_receiver_is_down() {
    operated();
    let flaky = Receiver::default();
    *flaky.failures_left.lock().unwrap() = 2;
    let flaky_addr = serve(flaky.clone(), None).await;
    // A receiver that is down: its port is reserved, nothing listens yet.
    let [down_port] = kube_pim::testenv::free_ports::<1>().unwrap();
    let down_addr: SocketAddr = ([127, 0, 0, 1], down_port).into();
    let w = World::new("notify-retry", json!({})).await;
    w.set_role_setting(json!({"notifications": {"webhooks": [
        {"url": format!("http://{flaky_addr}/flaky"), "events": ["Requested", "Activated"]},
        {"url": format!("http://{down_addr}/later"), "events": ["Requested", "Approved", "Activated"]},
    ]}}))
    .await;
    let ar = w
        .ask(w.alice().await, json!({"duration": "5m"}))
        .await
        .unwrap();
    let name = ar.metadata.name.clone().unwrap();
    let subject = format!("{}/{name}", w.ns);
    // Access does not wait for either receiver.
    w.wait_phase(&name, RequestPhase::Active).await;
    w.access(&w.alice().await, true).await;

    eventually!(
        Duration::from_secs(30),
        flaky.types("flaky", &subject).len() == 2,
        "flaky: {:?}",
        flaky.types("flaky", &subject)
    );
    assert_eq!(flaky.types("flaky", &subject), ["requested", "activated"]);
    let refused = flaky
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.path == "refused:flaky")
        .count();
    assert_eq!(
        refused, 2,
        "the first two attempts got 500 and were retried"
    );

    // The receiver comes up: everything queued for it arrives, in order, once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = Receiver::default();
    serve(later.clone(), Some(down_addr)).await;
    eventually!(
        Duration::from_secs(60),
        later.types("later", &subject).len() == 3,
        "later: {:?}",
        later.types("later", &subject)
    );
    assert_eq!(
        later.types("later", &subject),
        ["requested", "approved", "activated"]
    );
}

#[tokio::test]
async fn revocation_is_on_time_while_a_receiver_hangs() {
    operated();
    let hang = Receiver::default();
    let addr = serve(hang.clone(), None).await;
    let w = World::new("notify-hang", json!({})).await;
    w.set_role_setting(
        json!({"notifications": {"webhooks": [{"url": format!("http://{addr}/hang")}]}}),
    )
    .await;
    let ar = w
        .ask(w.alice().await, json!({"duration": "10s"}))
        .await
        .unwrap();
    let name = ar.metadata.name.clone().unwrap();
    w.wait_phase(&name, RequestPhase::Active).await;
    w.access(&w.alice().await, true).await;
    eventually!(
        Duration::from_secs(10),
        *hang.hung.lock().unwrap() >= 1,
        "the operator should be stuck delivering to the hanging receiver"
    );
    // The receiver holds the delivery open; expiry and revocation go ahead regardless.
    w.wait_phase(&name, RequestPhase::Expired).await;
    w.access(&w.alice().await, false).await;
    // Recorded in full (history, audit stream, finalizer released) while the receiver hangs.
    w.audit_intact(&name).await;
    assert!(
        hang.got.lock().unwrap().is_empty(),
        "the hanging receiver never answered"
    );
}

#[tokio::test]
async fn internal_targets_are_refused_at_admission_with_the_fix() {
    operated();
    let w = World::new("notify-refused", json!({})).await;
    for (url, why) in [
        ("https://kubernetes.default.svc/api", "cluster-internal"),
        ("http://10.0.0.1/hook", "private or cluster-internal"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
    ] {
        let rs = json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting",
            "metadata": {"name": w.rs}, "spec": {"roleRefs": [{"name": "admin"}], "acknowledgePersistenceRisk": true,
            "notifications": {"webhooks": [{"url": url}]}}});
        let r = Api::<kube_pim::api::RoleSetting>::all(admin().await)
            .patch(
                &w.rs,
                &kube::api::PatchParams::apply("test").force(),
                &kube::api::Patch::Apply(&rs),
            )
            .await;
        let (code, msg) = refusal(r);
        assert_eq!(code, 403, "{url}: {msg}");
        assert!(msg.contains(why), "{url}: {msg}");
    }
}
