//! Access ends even when no operator was running at expiry (SPEC invariant 4): the operator is
//! killed while an activation is Active, the expiry passes, and a new operator process revokes
//! it as soon as it starts (its start-up pass reconciles every request). Its start-up pass also
//! reaches every one of more assignments than the controllers hand on at once
//! (`controller::paced`), each freeing its slot as its reconcile starts.
//!
//! In its own test binary, so killing the operator disturbs no other test.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;

use common::{admin, namespace, operated, suffix, user};
use k8s_openapi::api::{core::v1::Secret, rbac::v1::RoleBinding};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use kube_pim::api::{ActivationRequest, RequestPhase};
use serde_json::json;

fn phase(ar: &ActivationRequest) -> Option<RequestPhase> {
    ar.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test]
async fn an_activation_that_expired_while_the_operator_was_down_is_revoked_when_it_starts() {
    let env = operated();
    let admin = admin().await;
    let ns = namespace("restart").await;
    let s = suffix();
    let (rs, alice) = (format!("restart-{s}"), format!("alice-{s}"));
    let pp = PatchParams::apply("e2e").force();
    let rsets: Api<kube_pim::api::RoleSetting> = Api::all(admin.clone());
    rsets.patch(&rs, &pp, &Patch::Apply(json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting", "metadata": {"name": rs},
        "spec": {"roleRefs": [{"name": "admin"}], "acknowledgePersistenceRisk": true}}))).await.unwrap();
    let eas: Api<kube_pim::api::EligibleAssignment> = Api::namespaced(admin.clone(), &ns);
    eas.patch("alice", &pp, &Patch::Apply(json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment", "metadata": {"name": "alice"},
        "spec": {"roleSetting": rs, "subject": {"kind": "User", "name": alice}}}))).await.unwrap();
    let rb: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "alice-requests"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kube-pim-requester"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": alice}]})).unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();

    // More assignments than the controllers hand on to kube-runtime's scheduler at once, each
    // recorded by the operator.
    let fillers = 2 * kube_pim::controller::paced::PACE_LIMIT + 10;
    let names: Vec<String> = (0..fillers).map(|i| format!("filler-{i}")).collect();
    futures::stream::iter(names.iter().map(|n| {
        let eas = eas.clone();
        let pp = pp.clone();
        let body = json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment", "metadata": {"name": n},
            "spec": {"roleSetting": rs, "subject": {"kind": "User", "name": format!("{n}-{s}")}}});
        async move { eas.patch(n, &pp, &Patch::Apply(body)).await.unwrap() }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    let recorded =
        |ea: &kube_pim::api::EligibleAssignment| ea.status.as_ref().and_then(|s| s.phase).is_some();
    let unrecorded = || async {
        eas.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|ea| names.contains(&ea.metadata.name.clone().unwrap_or_default()))
            .filter(|ea| !recorded(ea))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while unrecorded().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the operator never recorded the fillers"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let alice_c = user(&alice, &[]).await;
    let ar: ActivationRequest = serde_json::from_value(json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"name": "short"}, "spec": {"roleSetting": rs, "duration": "5s", "justification": "restart test",
        "requester": {"username": alice}}})).unwrap();
    let ars: Api<ActivationRequest> = Api::namespaced(admin.clone(), &ns);
    Api::<ActivationRequest>::namespaced(alice_c.clone(), &ns)
        .create(&PostParams::default(), &ar)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let active = loop {
        let a = ars.get("short").await.unwrap();
        if phase(&a) == Some(RequestPhase::Active) {
            break a;
        }
        assert!(Instant::now() < deadline, "never Active: {:?}", a.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let binding = active.status.as_ref().unwrap().bindings[0].name.clone();
    let expires = active.status.as_ref().unwrap().expiration_time.unwrap();

    // Kill the operator (SIGKILL: no chance to clean up).
    let pids = std::fs::read_to_string(env.dir().join("pids")).unwrap();
    let pid: i32 = pids
        .lines()
        .find(|l| l.ends_with(" kube-pim"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // Fail closed (SPEC invariant 5): with the webhook down, no request is admitted.
    let another: ActivationRequest = serde_json::from_value(json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"name": "while-down"}, "spec": {"roleSetting": rs, "duration": "5s", "justification": "x",
        "requester": {"username": alice}}})).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match Api::<ActivationRequest>::namespaced(alice_c.clone(), &ns)
            .create(&PostParams::default(), &another)
            .await
        {
            Err(kube::Error::Api(s)) => break s,
            Ok(_) => panic!("a request was admitted while the webhook was down"),
            Err(_) => assert!(Instant::now() < deadline, "no answer from the apiserver"),
        }
    };
    assert!(
        refused.message.contains("failed calling webhook"),
        "{}",
        refused.message
    );

    // What the operator recorded of the fillers, erased while it is down: only its start-up
    // pass can record them again.
    for n in &names {
        eas.patch_status(
            n,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": null})),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        unrecorded().await,
        fillers,
        "the fillers' status was not erased"
    );

    // Past the expiry, with nobody to revoke: the binding is still there, and so is access.
    let wait = (expires - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(2);
    tokio::time::sleep(wait).await;
    let rbs: Api<RoleBinding> = Api::namespaced(admin.clone(), &ns);
    assert!(
        rbs.get_opt(&binding).await.unwrap().is_some(),
        "something else revoked it; this test would prove nothing"
    );
    assert!(
        Api::<Secret>::namespaced(alice_c.clone(), &ns)
            .list(&ListParams::default())
            .await
            .is_ok()
    );

    // A new operator process, started the same way.
    let how: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir().join("operator.json")).unwrap()).unwrap();
    let args: Vec<String> = serde_json::from_value(how["args"].clone()).unwrap();
    let log = std::fs::File::create(env.dir().join("logs/kube-pim-restarted.log")).unwrap();
    let mut op = tokio::process::Command::new(how["bin"].as_str().unwrap())
        .args(&args)
        .env("KUBECONFIG", how["env"]["KUBECONFIG"].as_str().unwrap())
        .env("KUBE_PIM_LOG", "info,kube_pim=debug,kube_runtime=debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let a = ars.get("short").await.unwrap();
        if phase(&a) == Some(RequestPhase::Expired)
            && rbs.get_opt(&binding).await.unwrap().is_none()
        {
            break;
        }
        if let Some(status) = op.try_wait().unwrap() {
            panic!("the restarted operator exited: {status}");
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(env.dir().join("logs/kube-pim-restarted.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "not revoked after the restart: {:?}\nrestarted operator log (newest first):\n{}",
                a.status,
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reported, not asserted (timings belong in benchmarks).
    eprintln!(
        "revoked {:?} after the operator process was started",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while Api::<Secret>::namespaced(alice_c.clone(), &ns)
        .list(&ListParams::default())
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "access outlived the revocation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every filler recorded again: none was left behind in the pacing queue, and no slot had
    // to be freed for a reconcile that never started.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = unrecorded().await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} of {fillers} assignments never reconciled after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let health = args
        .iter()
        .find_map(|a| a.strip_prefix("--health-addr="))
        .expect("the operator's health address");
    // Once quiet, no trigger is held between the pacing queue and a reconcile start (a slot
    // that leaked would stay held until it went stale 30 s later), and none went stale.
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = common::http_get(health, "/metrics").await;
        let held: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("kube_pim_triggers_in_flight{") && !l.ends_with(" 0"))
            .collect();
        let all = ["activation", "assignment", "role_setting"]
            .iter()
            .all(|c| {
                metrics.lines().any(|l| {
                    l.starts_with(&format!(
                        "kube_pim_triggers_in_flight{{controller=\"{c}\"}}"
                    ))
                })
            });
        if all && held.is_empty() {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "triggers still held after the restart settled: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for controller in ["activation", "assignment", "role_setting"] {
        let line = format!("kube_pim_stale_triggers_total{{controller=\"{controller}\"}} 0");
        assert!(
            metrics.lines().any(|l| l == line),
            "{controller}: a trigger's reconcile never started (or the metric is missing):\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("stale_triggers"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    let expired = ars.get("short").await.unwrap();
    assert_eq!(
        expired.status.unwrap().history.last().unwrap().action,
        kube_pim::api::HistoryAction::Expired
    );
    let _ = op.kill().await;
}
