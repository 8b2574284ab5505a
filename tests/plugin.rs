//! `kubectl pim` end to end: the plugin binary run as distinct users (each with their own
//! client certificate in their own kubeconfig) against the real control plane with the
//! operator, and once through `kubectl` itself to prove plugin discovery. Access is proven
//! with real requests as the requester.
//!
//! The operator runs with a 10 s resync here, so `discover` sees a new binding in a test.

#[macro_use]
mod common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use common::{admin, operated_with, world::World};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::{Api, api::PostParams};
use kube_pim::api::RequestPhase;
use serde_json::{Value, json};

fn env() -> &'static kube_pim::testenv::TestEnv {
    operated_with(&["--resync=10s"])
}

/// What one run of the plugin did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "kubectl pim failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    fn failed(self) -> Self {
        assert_ne!(
            self.code, 0,
            "kubectl pim should have failed: {}",
            self.stdout
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// A kubeconfig file for `user` in `groups` (its own client certificate).
fn kubeconfig(user: &str, groups: &[&str]) -> PathBuf {
    let dir = env().dir().join("plugin-kubeconfigs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{user}.kubeconfig"));
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    env().write_kubeconfig(&path, user, &groups).unwrap();
    path
}

fn command(user: &str, groups: &[&str], args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-pim"));
    c.args(args)
        .env("KUBECONFIG", kubeconfig(user, groups))
        .env_remove("KUBE_PIM_CLUSTER_SCOPE_NAMESPACE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs `kubectl pim ARGS` as `user` in `groups`.
async fn pim(user: &str, groups: &[&str], args: &[&str]) -> Run {
    let out = command(user, groups, args).output().await.unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// The name of the request `activate` printed (`activationrequest NS/NAME created`).
fn created_name(run: &Run) -> String {
    let line = run
        .stdout
        .lines()
        .find(|l| l.ends_with(" created"))
        .unwrap_or_else(|| panic!("no creation line in {}", run.stdout));
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .to_string()
}

/// The audit stream's lines for request `uid`, by id (the stream is at least once).
fn stream_records(uid: &str) -> std::collections::BTreeMap<String, Value> {
    let text = std::fs::read_to_string(env().dir().join("audit.log")).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["uid"] == uid && v["kind"] == "ActivationRequestTransition")
        .map(|mut v| {
            // The hash chain is the stream's, not the record's: the export has none.
            assert!(
                v["chain"]["prev"].is_string(),
                "stream lines are chained: {v}"
            );
            v.as_object_mut().unwrap().remove("chain");
            (v["id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[tokio::test]
async fn whoami_is_what_the_apiserver_authenticated_also_through_kubectl() {
    env();
    let run = pim("pim-who", &["team-x"], &["whoami", "-o", "json"])
        .await
        .ok();
    let me = run.json();
    assert_eq!(me["username"], "pim-who");
    let groups: Vec<&str> = me["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert!(
        groups.contains(&"team-x") && groups.contains(&"system:authenticated"),
        "{groups:?}"
    );

    // kubectl finds the plugin on PATH and passes every argument after `pim` to it.
    let bin = env().dir().join("plugin-path");
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join("kubectl-pim");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kubectl-pim"), &link).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new(env().kubectl())
        .args(["pim", "whoami", "-o", "json"])
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig("pim-who", &["team-x"]))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(me["username"], "pim-who");
}

/// The whole flow as the people in it: eligible → activate --wait → pending → approve →
/// access → list → deactivate → access gone → audit export equal to the audit stream.
#[tokio::test]
async fn requester_and_approver_work_from_the_plugin() {
    env();
    let w = World::with_group_approval("plugin-flow", 1).await;
    let (alice, bob, mallory) = (w.alice.as_str(), w.bob.as_str(), w.mallory.as_str());
    let leads = [w.leads.as_str()];
    let ns = w.ns.as_str();

    // Without -n, alice's current namespace (default) is not one she may look in: the
    // error says what to do.
    let run = pim(alice, &[], &["eligible"]).await.failed();
    assert!(run.stderr.contains("pass -n NAMESPACE"), "{}", run.stderr);

    let run = pim(alice, &[], &["eligible", "-n", ns, "-o", "json"])
        .await
        .ok();
    let found = run.json();
    let mine = found
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["roleSetting"] == w.rs.as_str())
        .unwrap_or_else(|| panic!("{} not in {found}", w.rs));
    assert_eq!(mine["status"], "Eligible");
    assert_eq!(mine["policy"]["approvalRequired"], true);
    assert_eq!(
        mine["policy"]["approvers"],
        json!([format!("Group:{}", w.leads)])
    );
    assert_eq!(mine["roles"], json!(["admin"]));

    // A request over the policy is refused with the fix, and nothing is created.
    let run = pim(alice, &[], &["activate", &w.rs, "-n", ns, "--for", "3h"])
        .await
        .failed();
    assert!(
        run.stderr.contains("exceeds maxDuration 1h"),
        "{}",
        run.stderr
    );

    // alice activates and waits; the wait ends when bob approves.
    let waiting = command(
        alice,
        &[],
        &[
            "activate",
            &w.rs,
            "-n",
            ns,
            "--for",
            "10m",
            "--reason",
            "INC-1 from the plugin",
            "--wait",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let name = loop {
        let run = pim(bob, &leads, &["pending", "-n", ns, "-o", "json"])
            .await
            .ok();
        if let Some(r) = run.json()["items"].as_array().unwrap().first() {
            break r["metadata"]["name"].as_str().unwrap().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob should see alice's request as pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let target = format!("{ns}/{name}");

    // Only approvers other than the requester see it, and only they may decide it.
    let run = pim(alice, &[], &["pending", "-n", ns, "-o", "json"])
        .await
        .ok();
    assert_eq!(
        run.json()["items"],
        json!([]),
        "the requester never sees her own request to decide"
    );
    let run = pim(mallory, &[], &["pending", "-n", ns, "-o", "json"])
        .await
        .ok();
    assert_eq!(run.json()["items"], json!([]), "mallory is not an approver");
    let run = pim(mallory, &[], &["approve", &target, "--reason", "sure"])
        .await
        .failed();
    assert!(run.stderr.contains(&target), "{}", run.stderr);
    let run = pim(alice, &[], &["approve", &target]).await.failed();
    assert!(run.stderr.contains(&target), "{}", run.stderr);
    w.access(&w.alice().await, false).await;

    // A uid that is not this request's (it was re-created since) is refused.
    let run = pim(
        bob,
        &leads,
        &["approve", &format!("{target}@deadbeef"), "--reason", "ok"],
    )
    .await
    .failed();
    assert!(
        run.stderr.contains("is not the request you saw"),
        "{}",
        run.stderr
    );
    let run = pim(bob, &leads, &["pending", "-n", ns]).await.ok();
    let shown = run
        .stdout
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(shown.starts_with(&format!("{target}@")), "{shown}");
    let run = pim(
        bob,
        &leads,
        &["approve", &shown, "--reason", "INC-1 is real"],
    )
    .await
    .ok();
    let expected = format!(
        "{target} approved: {alice} asked for {} (Namespace scope) for 10m: INC-1 from the plugin",
        w.rs
    );
    assert!(run.stdout.starts_with(&expected), "{}", run.stdout);
    let out = tokio::time::timeout(Duration::from_secs(60), waiting.wait_with_output())
        .await
        .expect("activate --wait should end once approved")
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains(&format!("{target}: Active: access until")),
        "{shown}"
    );
    w.access(&w.alice().await, true).await;

    let run = pim(alice, &[], &["list", "-n", ns, "-o", "json"])
        .await
        .ok();
    let items = run.json()["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(items[0]["status"]["phase"], "Active");
    assert_eq!(
        items[0]["status"]["approvals"][0]["approver"]["username"],
        bob
    );
    let run = pim(alice, &[], &["list", "-n", ns]).await.ok();
    assert!(
        run.stdout.contains(&name) && run.stdout.contains("Active"),
        "{}",
        run.stdout
    );

    // Deactivating ends the access; --wait returns once kube-pim has recorded it.
    let run = pim(alice, &[], &["deactivate", &name, "-n", ns, "--wait"])
        .await
        .ok();
    assert!(
        run.stdout.contains(&format!("{target}: Deactivated")),
        "{}",
        run.stdout
    );
    w.access(&w.alice().await, false).await;
    let ar = w.audit_intact(&name).await;
    let uid = ar.metadata.uid.clone().unwrap();

    // The export carries exactly the records of the audit stream.
    let run = pim(alice, &[], &["audit", "-n", ns, "-o", "json"])
        .await
        .ok();
    let exported: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let exported: Vec<&Value> = exported
        .iter()
        .filter(|r| r["uid"] == uid.as_str())
        .collect();
    let actions: Vec<&str> = exported
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["Requested", "Approved", "Activated", "Deactivated"]
    );
    let stream = stream_records(&uid);
    assert_eq!(stream.len(), exported.len(), "stream: {stream:?}");
    for r in exported {
        assert_eq!(
            Some(r),
            stream.get(r["id"].as_str().unwrap()),
            "export and stream differ"
        );
    }
    let run = pim(alice, &[], &["audit", "-n", ns, "-o", "csv"])
        .await
        .ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "id,time,namespace,name,uid,roleSetting,scope,requester,phase,seq,actor,action,message"
    );
    let approved = lines
        .iter()
        .find(|l| l.contains(&format!("{uid}/2,")))
        .unwrap();
    assert!(
        approved.contains(&format!(",{bob},Approved,")),
        "{approved}"
    );
}

#[tokio::test]
async fn approvers_decide_several_at_once_and_deny_with_a_reason() {
    env();
    let w = World::with_group_approval("plugin-bulk", 1).await;
    let ns = w.ns.as_str();
    let mut names = Vec::new();
    for reason in ["first", "second", "third"] {
        let run = pim(
            &w.alice,
            &[],
            &[
                "activate", &w.rs, "-n", ns, "--for", "5m", "--reason", reason,
            ],
        )
        .await
        .ok();
        assert!(
            run.stderr.contains("kubectl pim approve"),
            "the hint says how to approve: {}",
            run.stderr
        );
        names.push(created_name(&run));
    }
    let leads = [w.leads.as_str()];
    // A bulk approval with one unknown name approves the others and fails overall.
    let run = pim(
        &w.bob,
        &leads,
        &[
            "approve",
            &names[0],
            &names[1],
            "no-such-request",
            "-n",
            ns,
            "--reason",
            "both fine",
        ],
    )
    .await
    .failed();
    assert!(
        run.stderr.contains(&format!("{ns}/no-such-request")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 of 3 requests were not approved"),
        "{}",
        run.stderr
    );
    w.wait_phase(&names[0], RequestPhase::Active).await;
    w.wait_phase(&names[1], RequestPhase::Active).await;

    // Deny needs a reason (refused by the plugin before any API call).
    let run = pim(&w.bob, &leads, &["deny", &names[2], "-n", ns])
        .await
        .failed();
    assert!(run.stderr.contains("--reason"), "{}", run.stderr);
    pim(
        &w.bob,
        &leads,
        &[
            "deny",
            &format!("{ns}/{}", names[2]),
            "--reason",
            "not today",
        ],
    )
    .await
    .ok();
    let denied = w.wait_phase(&names[2], RequestPhase::Denied).await;
    let approval = &denied.status.unwrap().approvals.unwrap()[0];
    assert_eq!(approval.reason.as_deref(), Some("not today"));
    assert_eq!(
        approval.approver.via_group.as_deref(),
        Some(w.leads.as_str())
    );
    // A second decision on a decided request is refused.
    pim(&w.bob, &leads, &["approve", &names[2], "-n", ns])
        .await
        .failed();
}

#[tokio::test]
async fn extend_takes_over_before_the_original_ends() {
    env();
    let w = World::new("plugin-extend", json!({})).await;
    let ns = w.ns.as_str();
    let run = pim(
        &w.alice,
        &[],
        &[
            "activate", &w.rs, "-n", ns, "--for", "5m", "--reason", "deploy", "--wait",
        ],
    )
    .await
    .ok();
    let first = created_name(&run);
    let run = pim(
        &w.alice,
        &[],
        &["extend", &first, "-n", ns, "--for", "10m", "--wait"],
    )
    .await
    .ok();
    let second = created_name(&run);
    assert_ne!(first, second);
    w.wait_phase(&first, RequestPhase::Superseded).await;
    w.access(&w.alice().await, true).await;
    // Someone else cannot extend alice's request.
    let run = pim(
        &w.mallory,
        &[],
        &["extend", &second, "-n", ns, "--for", "10m"],
    )
    .await
    .failed();
    assert!(!run.stderr.is_empty());
}

#[tokio::test]
async fn discover_lists_standing_access_outside_kube_pim() {
    env();
    let w = World::new("plugin-discover", json!({})).await;
    let name = format!("standing-{}", w.carol);
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": w.carol}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin().await, &w.ns)
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let run = pim(
            "pim-auditor",
            &["system:masters"],
            &["discover", "-o", "json"],
        )
        .await
        .ok();
        let found = run.json().as_array().unwrap().iter().any(|b| {
            b["roleSetting"] == w.rs.as_str()
                && b["name"] == name.as_str()
                && b["namespace"] == w.ns.as_str()
                && b["subjects"] == json!([format!("User:{}", w.carol)])
        });
        if found {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "discover should list {name}: {}",
            run.stdout
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let run = pim("pim-auditor", &["system:masters"], &["discover"])
        .await
        .ok();
    assert!(run.stdout.starts_with("ROLESETTING"), "{}", run.stdout);
}

#[tokio::test]
async fn a_closed_pipe_ends_quietly_and_errors_name_the_fix() {
    env();
    // The reader goes away before the plugin writes: it must exit 0 without a panic.
    let mut child = command("pim-pipe", &[], &["whoami"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "nothing on stderr"
    );

    let run = pim("pim-pipe", &[], &["whoami", "--context", "no-such-context"])
        .await
        .failed();
    assert!(run.stderr.contains("--context"), "{}", run.stderr);
    let run = pim("pim-pipe", &[], &["list", "-o", "csv"]).await.failed();
    assert!(
        run.stderr.contains("-o csv is for `kubectl pim audit`"),
        "{}",
        run.stderr
    );
    let run = pim(
        "pim-pipe",
        &[],
        &["activate", "x", "--start", "soon", "-n", "default"],
    )
    .await
    .failed();
    assert!(run.stderr.contains("2h"), "{}", run.stderr);
}
