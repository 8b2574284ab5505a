//! Drives the benchmark: a baseline control plane (CRDs only, no kube-pim process) where the
//! benchmark makes an activation's API calls itself, then an identical control plane with the
//! operator (a separate process, the release build) where people's requests go through
//! kube-pim. Every time is taken from watch events on one monotonic clock (expiry lag on the
//! wall clock, against `status.expirationTime`).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::{core::v1::Namespace, rbac::v1::RoleBinding};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::sync::mpsc;

use super::{Report, per_activation, request_counts, summarize};
use crate::{
    Error, Result,
    api::ActivationRequest,
    testenv::{ControlPlane, Options as EnvOptions},
};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Activations per figure.
    pub samples: usize,
    /// The operator binary (the release build for real figures).
    pub operator_bin: PathBuf,
    /// Scratch directory for the control planes.
    pub dir: PathBuf,
}

const NS: &str = "bench";
/// Untimed activations first, in both phases.
const WARMUP: usize = 3;
const MANAGED: &str = "app.kubernetes.io/managed-by=kube-pim";

/// A binding seen by the watch.
#[derive(Debug)]
struct Seen {
    /// The request it belongs to (label), or the binding's name in the baseline.
    key: String,
    added: bool,
    at: Instant,
    wall: SystemTime,
}

/// Watches managed RoleBindings in the benchmark namespace; every add and delete goes to the
/// channel with when it was seen.
fn watch_bindings(client: Client) -> (mpsc::UnboundedReceiver<Seen>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let api: Api<RoleBinding> = Api::namespaced(client, NS);
    let task = tokio::spawn(async move {
        let mut known = std::collections::HashSet::new();
        let mut events = watcher(api, watcher::Config::default().labels(MANAGED))
            .default_backoff()
            .boxed();
        while let Some(ev) = events.next().await {
            let (at, wall) = (Instant::now(), SystemTime::now());
            let key = |rb: &RoleBinding| {
                rb.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubepim.io/activation-request").cloned())
                    .unwrap_or_else(|| rb.metadata.name.clone().unwrap_or_default())
            };
            match ev {
                Ok(watcher::Event::Apply(rb) | watcher::Event::InitApply(rb)) => {
                    let k = key(&rb);
                    if known.insert(k.clone()) {
                        let _ = tx.send(Seen {
                            key: k,
                            added: true,
                            at,
                            wall,
                        });
                    }
                }
                Ok(watcher::Event::Delete(rb)) => {
                    let k = key(&rb);
                    known.remove(&k);
                    let _ = tx.send(Seen {
                        key: k,
                        added: false,
                        at,
                        wall,
                    });
                }
                _ => {}
            }
        }
    });
    (rx, task)
}

/// Waits for the watch to report `key` added (or deleted). Deletions of other keys seen on
/// the way are kept in `gone` (bindings expire while later activations are being timed).
async fn seen(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    key: &str,
    added: bool,
    gone: &mut BTreeMap<String, SystemTime>,
) -> Result<Seen> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| Error::TestEnv(format!("no watch event for {key} within 60s")))?
            .ok_or_else(|| Error::TestEnv("the binding watch ended".into()))?;
        if s.key == key && s.added == added {
            return Ok(s);
        }
        if !s.added {
            gone.insert(s.key, s.wall);
        }
    }
}

async fn namespace(admin: &Client) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).expect("valid");
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

fn binding(name: &str) -> RoleBinding {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "kube-pim"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bench-user"}]
    }))
    .expect("valid")
}

fn request(duration: &str, requester: &str) -> ActivationRequest {
    serde_json::from_value(json!({
        "apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"generateName": "b-", "namespace": NS},
        "spec": {"roleSetting": "bench", "duration": duration, "justification": "benchmark",
                 "requester": {"username": requester}}
    }))
    .expect("valid")
}

/// The baseline: the calls of one activation (create the request, create the binding, patch
/// the request's status) and of one revocation (delete the binding), made back to back by
/// this process against a control plane with no kube-pim process.
async fn baseline(o: &Options) -> Result<(Vec<f64>, Vec<f64>)> {
    let cp = ControlPlane::start(EnvOptions {
        dir: o.dir.join("baseline"),
        users: vec![],
        operator_bin: None,
        operator_args: vec![],
        bin_dir: None,
        bare: false,
    })
    .await?;
    let admin = cp.env().admin().await?;
    namespace(&admin).await?;
    let (mut rx, watch) = watch_bindings(admin.clone());
    let ars: Api<ActivationRequest> = Api::namespaced(admin.clone(), NS);
    let rbs: Api<RoleBinding> = Api::namespaced(admin.clone(), NS);
    let (mut act, mut rev) = (Vec::new(), Vec::new());
    // The first calls of a fresh apiserver (cold caches, connection set-up) are not counted.
    for i in 0..o.samples + WARMUP {
        let t0 = Instant::now();
        let ar = ars
            .create(&PostParams::default(), &request("1h", "bench-user"))
            .await?;
        let name = ar.metadata.name.clone().unwrap_or_default();
        rbs.create(&PostParams::default(), &binding(&name)).await?;
        ars.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Active", "approvals": []}})),
        )
        .await?;
        let mut ignored = BTreeMap::new();
        let s = seen(&mut rx, &name, true, &mut ignored).await?;
        let a = s.at.duration_since(t0).as_secs_f64() * 1000.0;
        let t1 = Instant::now();
        rbs.delete(&name, &DeleteParams::default()).await?;
        let s = seen(&mut rx, &name, false, &mut ignored).await?;
        if i >= WARMUP {
            act.push(a);
            rev.push(s.at.duration_since(t1).as_secs_f64() * 1000.0);
        }
    }
    watch.abort();
    cp.shutdown().await;
    Ok((act, rev))
}

/// The operator's CPU seconds (user + system) from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15; index 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn operator_pid(dir: &std::path::Path) -> Result<u32> {
    std::fs::read_to_string(dir.join("pids"))
        .map_err(Error::io("read", dir.join("pids")))?
        .lines()
        .find(|l| l.ends_with(" kube-pim"))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| Error::TestEnv("no operator in DIR/pids".into()))
}

async fn apiserver_counts(admin: &Client) -> Result<BTreeMap<(String, String), f64>> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(|e| Error::TestEnv(e.to_string()))?;
    Ok(request_counts(&admin.request_text(req).await?))
}

/// Runs both phases and returns the report.
pub async fn run(o: &Options) -> Result<Report> {
    let started = Utc::now();
    let (base_act, base_rev) = baseline(o).await?;

    let cp = ControlPlane::start(EnvOptions {
        dir: o.dir.join("operator"),
        users: vec![],
        operator_bin: Some(o.operator_bin.clone()),
        operator_args: vec![format!("--max-open-requests={}", o.samples + 10)],
        bin_dir: None,
        bare: false,
    })
    .await?;
    let admin = cp.env().admin().await?;
    namespace(&admin).await?;
    let ssa = PatchParams::apply("kube-pim-bench").force();
    Api::<crate::api::RoleSetting>::all(admin.clone())
        .patch("bench", &ssa, &Patch::Apply(json!({
            "apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting", "metadata": {"name": "bench"},
            "spec": {"roleRefs": [{"name": "view"}], "activation": {"maxDuration": "1h"}}})))
        .await?;
    Api::<crate::api::EligibleAssignment>::namespaced(admin.clone(), NS)
        .patch("bench", &ssa, &Patch::Apply(json!({
            "apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment", "metadata": {"name": "bench"},
            "spec": {"roleSetting": "bench", "subject": {"kind": "Group", "name": "bench"}}})))
        .await?;
    // The requester persona for the benchmark's users, as a platform admin would bind it.
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "bench-requesters"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kube-pim-requester"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "bench"}]
    }))
    .expect("valid");
    Api::<RoleBinding>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &rb)
        .await?;
    let user = cp.env().client("bench-user", &["bench"]).await?;
    let ars_user: Api<ActivationRequest> = Api::namespaced(user, NS);
    let ars: Api<ActivationRequest> = Api::namespaced(admin.clone(), NS);
    // Let the assignment become Eligible before timing anything.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Untimed warm-up activations (their lifecycles end before the measured ones start).
    for _ in 0..WARMUP {
        ars_user
            .create(&PostParams::default(), &request("1s", "bench-user"))
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pid = operator_pid(cp.env().dir())?;
    let (mut rx, watch) = watch_bindings(admin.clone());
    let before = apiserver_counts(&admin).await?;
    let cpu0 = cpu_seconds(pid);
    let mut own: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut bump = |verb: &str, res: &str, n: f64| {
        *own.entry((verb.to_string(), res.to_string()))
            .or_insert(0.0) += n;
    };
    bump("LIST", "rolebindings", 1.0);
    bump("WATCH", "rolebindings", 1.0);

    let mut act = Vec::new();
    let mut names = Vec::new();
    let mut gone: BTreeMap<String, SystemTime> = BTreeMap::new();
    for _ in 0..o.samples {
        let t0 = Instant::now();
        let ar = ars_user
            .create(&PostParams::default(), &request("2s", "bench-user"))
            .await?;
        bump("POST", "activationrequests", 1.0);
        let name = ar.metadata.name.clone().unwrap_or_default();
        let s = seen(&mut rx, &name, true, &mut gone).await?;
        act.push(s.at.duration_since(t0).as_secs_f64() * 1000.0);
        names.push(name);
    }
    // Every binding goes at its expiry; the lag is measured against expirationTime.
    while names.iter().any(|n| !gone.contains_key(n)) {
        let s = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .map_err(|_| Error::TestEnv("bindings were not revoked within 120s".into()))?
            .ok_or_else(|| Error::TestEnv("the binding watch ended".into()))?;
        if !s.added {
            gone.insert(s.key, s.wall);
        }
    }
    // Wait until every lifecycle is over (ended, audited, finalizer released), so the request
    // counts cover whole lifecycles.
    let deadline = Instant::now() + Duration::from_secs(120);
    let list = loop {
        let l = ars.list(&ListParams::default()).await?;
        bump("LIST", "activationrequests", 1.0);
        let done = l.items.iter().all(|a| {
            a.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty())
                && a.status.as_ref().is_some_and(|s| {
                    usize::try_from(s.audited_through).unwrap_or(0) >= s.history.len()
                        && s.phase.is_some_and(crate::decide::request::is_terminal)
                })
        });
        if done || Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let cpu1 = cpu_seconds(pid);
    let after = apiserver_counts(&admin).await?;
    let (rss, peak) = rss_mib(pid);
    watch.abort();
    let mut lag = Vec::new();
    for a in &list.items {
        let name = a.metadata.name.clone().unwrap_or_default();
        let (Some(at), Some(exp)) = (
            gone.get(&name),
            a.status.as_ref().and_then(|s| s.expiration_time),
        ) else {
            continue;
        };
        let seen: DateTime<Utc> = (*at).into();
        lag.push((seen - exp).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    cp.shutdown().await;

    let per = per_activation(&before, &after, &own, o.samples);
    let get_list: f64 = per
        .iter()
        .filter(|(k, _)| k.starts_with("GET ") || k.starts_with("LIST "))
        .map(|(_, v)| v)
        .sum();
    let baseline_activation = summarize(&base_act);
    let activation_to_binding = summarize(&act);
    Ok(Report {
        machine: machine(),
        started: started.to_rfc3339(),
        samples: o.samples,
        activation_ratio_p99: if baseline_activation.p99_ms > 0.0 {
            ((activation_to_binding.p99_ms / baseline_activation.p99_ms) * 100.0).round() / 100.0
        } else {
            0.0
        },
        baseline_activation,
        activation_to_binding,
        baseline_revocation: summarize(&base_rev),
        revocation_lag: summarize(&lag),
        requests_per_activation: per,
        get_list_per_activation: (get_list * 100.0).round() / 100.0,
        cpu_ms_per_activation: ((cpu1 - cpu0) * 1000.0 / o.samples.max(1) as f64 * 10.0).round()
            / 10.0,
        rss_mib: (rss * 10.0).round() / 10.0,
        rss_peak_mib: (peak * 10.0).round() / 10.0,
    })
}

/// CPU model and count, for the report.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} x {model}")
}
