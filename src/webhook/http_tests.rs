//! The webhook over HTTP with AdmissionReview JSON fixtures: what the apiserver sends, what
//! comes back (status code, base64 JSON patch), through the real router, with caches seeded
//! and an apiserver that answers 404 to anything (so nothing here depends on live reads).

use std::{convert::Infallible, sync::Arc};

use axum::body::Body;
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use http::Request;
use kube::runtime::{events::Reporter, reflector::store, watcher::Event};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{review::Settings, router};
use crate::{
    api::RoleSetting,
    controller::{
        Context,
        audit::AuditLog,
        cached::{CachedAssignment, CachedRequest},
    },
    decide::{policy::MfaConfig, test_fixtures::*},
};

fn offline_client() -> kube::Client {
    let svc = tower::service_fn(|_req: Request<kube::client::Body>| async {
        Ok::<_, Infallible>(
            http::Response::builder()
                .status(404)
                .body(kube::client::Body::from(br#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404,"reason":"NotFound","message":"offline"}"#.to_vec()))
                .unwrap(),
        )
    });
    kube::Client::new(svc, "default")
}

/// A webhook whose caches hold RoleSetting `rs` (approval by Group sre-leads or User bob) and
/// alice's assignment in `payments`.
fn app() -> axum::Router {
    app_with_context().0
}

/// [`app`], and the context it serves from (its metrics).
fn app_with_context() -> (axum::Router, Arc<Context>) {
    app_with_assignment(|ea| ea)
}

/// [`app_with_context`], with alice's assignment as cached changed by `cached`.
fn app_with_assignment(
    cached: impl FnOnce(CachedAssignment) -> CachedAssignment,
) -> (axum::Router, Arc<Context>) {
    let client = offline_client();
    let (role_settings, mut rsw) = store::<RoleSetting>();
    rsw.apply_watcher_event(&Event::Apply(with_approval(
        role_setting("rs"),
        vec![group("sre-leads"), user("bob")],
        1,
    )));
    let (assignments, mut eaw) = store::<CachedAssignment>();
    // The webhook runs on the wall clock: an assignment created long ago.
    let mut ea = assignment("alice", "payments", "rs", user("alice"));
    ea.metadata.creation_timestamp = Some(crate::time::to_k8s(
        chrono::Utc::now() - chrono::TimeDelta::days(30),
    ));
    let assignment_namespaces = Arc::new(crate::controller::index::Index::by_namespace());
    let ev = Event::Apply(cached(CachedAssignment::from(ea)));
    assignment_namespaces.observe(&ev);
    eaw.apply_watcher_event(&ev);
    let (requests, _) = store::<CachedRequest>();
    let ctx = Arc::new(Context {
        recorder: crate::controller::events::Events::new(
            client.clone(),
            Reporter {
                controller: "test".into(),
                instance: None,
            },
        ),
        authz: crate::authz::Authorizer::new(client.clone(), std::time::Duration::from_secs(300)),
        notifier: crate::notify::Notifier::new(
            crate::notify::Settings::new(Default::default(), "kube-pim-system"),
            client.clone(),
            Default::default(),
        ),
        client,
        standing: Default::default(),
        metrics: Default::default(),
        leader: crate::leader::Leadership::always(),
        written: Default::default(),
        residual_slots: tokio::sync::Semaphore::new(1),
        acting: Default::default(),
        settings: crate::controller::Settings {
            namespace: "kube-pim-system".into(),
            cluster_scope_namespace: "kube-pim-system".into(),
            mfa: MfaConfig::default(),
            retention: chrono::TimeDelta::days(30),
            resync: std::time::Duration::from_secs(300),
            notification_targets: Default::default(),
        },
        role_settings,
        assignments,
        requests,
        request_namespaces: Arc::new(crate::controller::index::Index::by_namespace()),
        assignment_namespaces,
        // The operator's own keys (unused by the webhook, which reads no bindings).
        role_bindings: Default::default(),
        cluster_role_bindings: Default::default(),
        cluster_roles: store().0,
        audit: AuditLog::memory().0,
    });
    let settings = Settings {
        cluster_scope_namespace: "kube-pim-system".into(),
        mfa: MfaConfig::default(),
        break_glass_group: None,
        max_open_requests: 10,
        notification_targets: Default::default(),
    };
    (router(ctx.clone(), settings), ctx)
}

fn review(
    operation: &str,
    sub_resource: Option<&str>,
    user: &str,
    groups: &[&str],
    object: Value,
    old: Value,
) -> Value {
    let mut request = json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "kubepim.io", "version": "v1alpha1", "kind": "ActivationRequest"},
        "resource": {"group": "kubepim.io", "version": "v1alpha1", "resource": "activationrequests"},
        "name": "alice-x", "namespace": "payments", "operation": operation,
        "userInfo": {"username": user, "uid": format!("uid-{user}"), "groups": groups},
        "object": object, "oldObject": old, "dryRun": false,
    });
    if let Some(s) = sub_resource {
        request["subResource"] = json!(s);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

async fn post(path: &str, body: Value) -> Value {
    post_to(app(), path, body).await
}

async fn post_to(app: axum::Router, path: &str, body: Value) -> Value {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the webhook always answers 200 with a verdict inside"
    );
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The JSON patch in a response. kube-rs sends the bytes as a JSON array of numbers (which the
/// apiserver's Go decoder reads into []byte, as it does the usual base64 string); accept both.
fn patch_of(resp: &Value) -> Value {
    let bytes: Vec<u8> = match &resp["patch"] {
        Value::String(b64) => B64.decode(b64).unwrap(),
        Value::Array(a) => a.iter().map(|n| n.as_u64().unwrap() as u8).collect(),
        other => panic!("no patch in the response: {other}"),
    };
    serde_json::from_slice(&bytes).unwrap()
}

fn request_object(requester: &str, duration: &str) -> Value {
    json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"name": "alice-x", "namespace": "payments", "uid": "uid-alice-x"},
        "spec": {"roleSetting": "rs", "duration": duration, "justification": "INC-1", "requester": {"username": requester}}})
}

#[tokio::test]
async fn mutate_stamps_the_requester_as_a_json_patch() {
    let out = post(
        "/mutate",
        review(
            "CREATE",
            None,
            "alice",
            &["team"],
            request_object("mallory", "30m"),
            Value::Null,
        ),
    )
    .await;
    let resp = &out["response"];
    assert_eq!(
        resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002",
        "the answer names the request it answers"
    );
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch = patch_of(resp);
    assert_eq!(patch[0]["op"], "replace");
    assert_eq!(patch[0]["path"], "/spec/requester");
    assert_eq!(patch[0]["value"]["username"], "alice");
    assert_eq!(patch[0]["value"]["groups"], json!(["team"]));
}

#[tokio::test]
async fn validate_allows_an_eligible_request_and_refuses_policy_with_403() {
    let stamped = |d: &str| {
        let mut o = request_object("alice", d);
        o["spec"]["requester"] =
            json!({"username": "alice", "uid": "uid-alice", "groups": ["team"], "extra": {}});
        o
    };
    let ok = post(
        "/validate",
        review(
            "CREATE",
            None,
            "alice",
            &["team"],
            stamped("30m"),
            Value::Null,
        ),
    )
    .await;
    assert_eq!(ok["response"]["allowed"], true, "{ok}");
    let no = post(
        "/validate",
        review(
            "CREATE",
            None,
            "alice",
            &["team"],
            stamped("3h"),
            Value::Null,
        ),
    )
    .await;
    assert_eq!(no["response"]["allowed"], false);
    assert_eq!(no["response"]["status"]["code"], 403);
    assert_eq!(
        no["response"]["status"]["message"],
        "duration 3h exceeds maxDuration 1h of RoleSetting rs: ask for 1h or less"
    );
}

#[tokio::test]
async fn an_assignment_that_does_not_decode_is_a_refusal_not_a_guess() {
    // A bug in kube-pim's cache must not be read as "no assignment" (a wrong refusal that
    // looks like policy) nor skipped into an allow: admission refuses and says why.
    let mut o = request_object("alice", "30m");
    o["spec"]["requester"] =
        json!({"username": "alice", "uid": "uid-alice", "groups": ["team"], "extra": {}});
    let (app, _) = app_with_assignment(CachedAssignment::undecodable);
    let no = post_to(
        app,
        "/validate",
        review("CREATE", None, "alice", &["team"], o.clone(), Value::Null),
    )
    .await;
    assert_eq!(no["response"]["allowed"], false, "{no}");
    let msg = no["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("does not decode") && msg.contains("restart the operator"),
        "{msg}"
    );
    // The same request with the assignment readable: allowed (so the refusal above was the
    // decode, not the request).
    let ok = post(
        "/validate",
        review("CREATE", None, "alice", &["team"], o, Value::Null),
    )
    .await;
    assert_eq!(ok["response"]["allowed"], true, "{ok}");
}

#[tokio::test]
async fn a_decision_is_stamped_then_validated() {
    let mut old = request_object("alice", "30m");
    old["spec"]["requester"] =
        json!({"username": "alice", "uid": "uid-alice", "groups": ["team"], "extra": {}});
    old["status"] = json!({"phase": "Pending", "approvals": []});
    let mut new = old.clone();
    new["status"]["approvals"] = json!([{"decision": "Approved", "reason": "ok"}]);
    let out = post(
        "/mutate",
        review(
            "UPDATE",
            Some("status"),
            "dave",
            &["sre-leads"],
            new.clone(),
            old.clone(),
        ),
    )
    .await;
    let patch = patch_of(&out["response"]);
    assert_eq!(patch[0]["path"], "/status/approvals/0/approver");
    assert_eq!(
        patch[0]["value"],
        json!({"username": "dave", "uid": "uid-dave", "viaGroup": "sre-leads"})
    );
    // Validation sees the stamped object; an unstamped one (no approver) is refused clearly.
    let unstamped = post(
        "/validate",
        review(
            "UPDATE",
            Some("status"),
            "dave",
            &["sre-leads"],
            new.clone(),
            old.clone(),
        ),
    )
    .await;
    assert_eq!(unstamped["response"]["allowed"], false);
    new["status"]["approvals"][0]["approver"] = patch[0]["value"].clone();
    new["status"]["approvals"][0]["time"] = patch[1]["value"].clone();
    let ok = post(
        "/validate",
        review(
            "UPDATE",
            Some("status"),
            "dave",
            &["sre-leads"],
            new.clone(),
            old.clone(),
        ),
    )
    .await;
    assert_eq!(ok["response"]["allowed"], true, "{ok}");
    let mallory = post(
        "/validate",
        review("UPDATE", Some("status"), "mallory", &["team"], new, old),
    )
    .await;
    assert_eq!(mallory["response"]["allowed"], false);
}

#[tokio::test]
async fn not_an_admission_review_is_a_clear_failure() {
    let out = post(
        "/validate",
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
    )
    .await;
    assert_eq!(out["response"]["allowed"], false);
    assert!(
        out["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not an AdmissionReview request")
    );
}

#[tokio::test]
async fn every_answer_is_timed_and_every_refusal_counted_by_its_code() {
    let (app, ctx) = app_with_context();
    let stamped = |d: &str| {
        let mut o = request_object("alice", d);
        o["spec"]["requester"] =
            json!({"username": "alice", "uid": "uid-alice", "groups": ["team"], "extra": {}});
        o
    };
    let create = |d: &str| review("CREATE", None, "alice", &["team"], stamped(d), Value::Null);
    post_to(app.clone(), "/mutate", create("30m")).await;
    post_to(app.clone(), "/validate", create("30m")).await;
    post_to(app.clone(), "/validate", create("3h")).await;
    post_to(app.clone(), "/validate", create("4h")).await;
    // A self-approval, on the status subresource.
    let mut old = stamped("30m");
    old["status"] = json!({"phase": "Pending", "approvals": []});
    let mut new = old.clone();
    new["status"]["approvals"] = json!([{"decision": "Approved", "reason": "ok",
        "approver": {"username": "alice", "uid": "uid-alice"}, "time": "2026-01-01T00:00:00Z"}]);
    post_to(
        app,
        "/validate",
        review("UPDATE", Some("status"), "alice", &["sre-leads"], new, old),
    )
    .await;

    let text = ctx.metrics.encode();
    for line in [
        "kube_pim_webhook_denials_total{resource=\"activationrequests\",reason=\"duration_too_long\"} 2",
        "kube_pim_webhook_denials_total{resource=\"activationrequests/status\",reason=\"self_approval\"} 1",
        "kube_pim_webhook_request_duration_seconds_count{webhook=\"validate\",resource=\"activationrequests\",operation=\"CREATE\"} 3",
        "kube_pim_webhook_request_duration_seconds_count{webhook=\"mutate\",resource=\"activationrequests\",operation=\"CREATE\"} 1",
        "kube_pim_webhook_request_duration_seconds_count{webhook=\"validate\",resource=\"activationrequests/status\",operation=\"UPDATE\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert_eq!(
        text.matches("kube_pim_webhook_denials_total{").count(),
        2,
        "allowed requests are not denials:\n{text}"
    );
}
