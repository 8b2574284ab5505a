//! The durable audit stream end to end: the operator ships its audit file, in stream order, to
//! an HTTP sink as CloudEvents; while the sink is down nothing is lost and retention deletes no
//! request; once the sink is back it receives every line, and retention goes ahead.
//!
//! The operator runs with `--retention=2s` here, so retention is observable in a test.

#[macro_use]
mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use common::{admin, operated_with, world::World};
use kube::Api;
use kube_pim::api::{ActivationRequest, RequestPhase};
use serde_json::{Value, json};

/// The sink's port, reserved before the operator starts; nothing listens until a test says.
fn sink_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| kube_pim::testenv::free_ports::<1>().unwrap()[0])
}

fn env() -> &'static kube_pim::testenv::TestEnv {
    static ARGS: OnceLock<[String; 2]> = OnceLock::new();
    let args = ARGS.get_or_init(|| {
        [
            format!("--audit-sink-url=http://127.0.0.1:{}/audit", sink_port()),
            "--retention=2s".into(),
        ]
    });
    operated_with(&[&args[0], &args[1]])
}

#[derive(Clone, Default)]
struct Sink {
    events: Arc<Mutex<Vec<Value>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

async fn receive(State(s): State<Sink>, headers: HeaderMap, body: Bytes) -> &'static str {
    s.content_types
        .lock()
        .unwrap()
        .push(headers["content-type"].to_str().unwrap().to_string());
    let batch: Vec<Value> = serde_json::from_slice(&body).unwrap();
    s.events.lock().unwrap().extend(batch);
    "ok"
}

#[tokio::test]
async fn the_stream_reaches_the_sink_in_order_and_retention_waits_for_it() {
    env();
    let w = World::new("sink", json!({})).await;
    let ar = w
        .ask(w.alice().await, json!({"duration": "3s"}))
        .await
        .unwrap();
    let name = ar.metadata.name.clone().unwrap();
    let uid = ar.metadata.uid.clone().unwrap();
    w.wait_phase(&name, RequestPhase::Expired).await;
    w.access(&w.alice().await, false).await;
    w.audit_intact(&name).await;

    // Retention is 2 s, but the sink has not got the record: the request stays.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let api: Api<ActivationRequest> = Api::namespaced(admin().await, &w.ns);
    assert!(
        api.get_opt(&name).await.unwrap().is_some(),
        "deleted before the audit sink had its record"
    );

    // The sink comes up: it receives the stream, and retention goes ahead.
    let sink = Sink::default();
    let addr: SocketAddr = ([127, 0, 0, 1], sink_port()).into();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = Router::new()
        .route("/audit", post(receive))
        .with_state(sink.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    eventually!(
        Duration::from_secs(60),
        api.get_opt(&name).await.unwrap().is_none(),
        "{name} should be deleted once the sink has its record"
    );

    let events = sink.events.lock().unwrap().clone();
    assert!(
        sink.content_types
            .lock()
            .unwrap()
            .iter()
            .all(|c| c.starts_with("application/cloudevents-batch+json"))
    );
    // Every line, in stream order, none twice.
    let ns: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["chain"]["n"].as_u64().unwrap())
        .collect();
    assert!(
        ns.windows(2).all(|p| p[1] == p[0] + 1),
        "lines out of order or missing: {ns:?}"
    );
    // The request's whole history, as CloudEvents carrying the audit records.
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| e["data"]["uid"] == uid.as_str())
        .collect();
    let actions: Vec<&str> = mine
        .iter()
        .map(|e| e["data"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["Requested", "Approved", "Activated", "Expired"]);
    for e in &mine {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["type"], "io.kubepim.audit.activationrequesttransition");
        assert_eq!(e["id"], e["data"]["id"]);
        assert_eq!(e["subject"], format!("{}/{name}", w.ns));
    }
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "io.kubepim.audit.policywrite"
                && e["data"]["name"] == w.rs.as_str()),
        "the RoleSetting's write is shipped too"
    );
    // What the sink received is the file's content, chain and all.
    let log = std::fs::read_to_string(env().dir().join("audit.log")).unwrap();
    let file: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for e in &mine {
        assert!(file.contains(&e["data"]), "{} is not in the file", e["id"]);
    }
}
