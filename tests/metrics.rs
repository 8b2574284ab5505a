//! Observability end to end (docs/observability.md): an approved activation driven to its
//! expiry by real users, and refused requests, as the operator's `/metrics`, `/readyz` and
//! `/healthz` report them.
//!
//! In its own test binary: the webhook and histogram metrics are process-wide (not per
//! RoleSetting), so another test sharing the operator would move them. Values are compared as
//! deltas from a scrape taken before the test acts, and they are exact.

#[macro_use]
mod common;

use common::{http_get, operated, refusal, user, world::*};
use kube::ResourceExt;
use kube_pim::api::RequestPhase;
use serde_json::json;

fn health_addr() -> String {
    std::fs::read_to_string(operated().dir().join("operator.addr"))
        .unwrap()
        .trim()
        .to_string()
}

/// GET `path` on the operator's health port: (status line, body).
async fn get(path: &str) -> (String, String) {
    let raw = http_get(&health_addr(), path).await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

async fn scrape() -> String {
    let (status, body) = get("/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

/// The value of the sample `series` (`name{labels}` exactly as exposed); 0 when absent (a
/// labelled counter appears with its first increment).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_approved_lifecycle_and_refusals_are_counted_and_nothing_outlives_its_expiry() {
    let _ = operated();
    assert_eq!(
        get("/healthz").await,
        ("HTTP/1.1 200 OK".into(), "ok".into())
    );
    assert_eq!(
        get("/readyz").await,
        ("HTTP/1.1 200 OK".into(), "ok".into())
    );
    let before = scrape().await;
    let delta = |after: &str, series: &str| value(after, series) - value(&before, series);

    let w = World::with_group_approval("metrics", 1).await;
    let phase = |p: &str| {
        format!(
            "kube_pim_activation_requests{{role_setting=\"{}\",phase=\"{p}\"}}",
            w.rs
        )
    };
    let transitions = |a: &str| {
        format!(
            "kube_pim_activation_transitions_total{{role_setting=\"{}\",action=\"{a}\"}}",
            w.rs
        )
    };
    // A new RoleSetting has every phase, at 0, as soon as the operator's cache has it.
    eventually!(
        WAIT,
        scrape().await.contains(&format!("{} 0", phase("Active"))),
        "no zero-filled phase series for RoleSetting {}",
        w.rs
    );

    let alice = w.alice().await;
    // Refused at admission: longer than maxDuration (1h).
    let (code, msg) = refusal(w.ask(alice.clone(), json!({"duration": "2h"})).await);
    assert_eq!(code, 403);
    assert!(msg.contains("exceeds maxDuration"), "{msg}");

    let ar = w
        .ask(alice.clone(), json!({"duration": "5s"}))
        .await
        .unwrap();
    let name = ar.name_any();
    let pending = w
        // Ready for decisions, and the operator done writing (its audit outbox flushed): the
        // apiserver re-runs admission when a patch races another write, and the webhook
        // metrics count admission calls, so a racing write would count a refusal twice.
        .wait(&name, "ready for decisions", |ar| {
            ar.status.as_ref().is_some_and(|s| {
                s.approvals.is_some()
                    && usize::try_from(s.audited_through).unwrap_or(0) >= s.history.len()
            })
        })
        .await;
    eventually!(
        WAIT,
        value(&scrape().await, &phase("Pending")) == 1.0,
        "the request never showed as Pending"
    );
    // mallory holds the approver role but is not an approver of this RoleSetting.
    let (code, _) = refusal(
        w.decide(
            user(&w.mallory, &[]).await,
            &pending,
            "Approved",
            Some("sure"),
        )
        .await,
    );
    assert_eq!(code, 403);
    w.decide(w.approver(&w.bob).await, &pending, "Approved", Some("ok"))
        .await
        .unwrap();
    w.wait_phase(&name, RequestPhase::Active).await;
    w.access(&alice, true).await;
    w.wait_phase(&name, RequestPhase::Expired).await;
    w.access(&alice, false).await;
    // Fully audited and released: every transition committed, the residual check done.
    w.audit_intact(&name).await;

    let after = scrape().await;
    // The operator's cache: one Expired request for this RoleSetting, nothing else.
    assert_eq!(value(&after, &phase("Expired")), 1.0, "{after}");
    for p in kube_pim::metrics::PHASES
        .iter()
        .filter(|p| **p != "Expired")
    {
        assert_eq!(value(&after, &phase(p)), 0.0, "{p}");
    }
    // Each transition counted exactly once, and only those that happened.
    for a in ["Requested", "Approved", "Activated", "Expired"] {
        assert_eq!(value(&after, &transitions(a)), 1.0, "{a}:\n{after}");
    }
    for a in ["Denied", "Scheduled", "Revoked", "Deactivated", "Failed"] {
        assert_eq!(value(&after, &transitions(a)), 0.0, "{a}");
    }
    // One observation each of the durations this lifecycle completed.
    for series in [
        "kube_pim_time_to_approval_seconds_count",
        "kube_pim_time_to_activation_seconds_count",
        "kube_pim_activation_latency_seconds_count",
        "kube_pim_revocation_lag_seconds_count{reason=\"expired\"}",
    ] {
        assert_eq!(delta(&after, series), 1.0, "{series}:\n{after}");
    }
    // The webhook: both creates mutated and validated; each refusal counted by its code.
    for (series, n) in [
        (
            "kube_pim_webhook_denials_total{resource=\"activationrequests\",reason=\"duration_too_long\"}",
            1.0,
        ),
        (
            "kube_pim_webhook_denials_total{resource=\"activationrequests/status\",reason=\"not_approver\"}",
            1.0,
        ),
        (
            "kube_pim_webhook_request_duration_seconds_count{webhook=\"validate\",resource=\"activationrequests\",operation=\"CREATE\"}",
            2.0,
        ),
        (
            "kube_pim_webhook_request_duration_seconds_count{webhook=\"mutate\",resource=\"activationrequests\",operation=\"CREATE\"}",
            2.0,
        ),
        (
            "kube_pim_webhook_request_duration_seconds_count{webhook=\"validate\",resource=\"activationrequests/status\",operation=\"UPDATE\"}",
            2.0,
        ),
    ] {
        assert_eq!(delta(&after, series), n, "{series}:\n{after}");
    }
    // The guarantees.
    assert!(
        after.contains("\nkube_pim_bindings_past_expiry 0\n"),
        "{after}"
    );
    assert_eq!(delta(&after, "kube_pim_residual_access_total"), 0.0);
    assert!(after.contains("\nkube_pim_leader 1\n"), "{after}");
    assert_eq!(get("/readyz").await.0, "HTTP/1.1 200 OK");
}
