//! Drives the benchmark: a baseline control plane (CRDs only, no kube-pim process) where the
//! benchmark makes an activation's API calls itself, then an identical control plane with the
//! operator (a separate process, the release build) where people's requests go through
//! kube-pim. Every time is taken from watch events on one monotonic clock (expiry lag on the
//! wall clock, against `status.expirationTime`).
//!
//! The operator phase runs, in order: activation latency (repeated runs), approval latency,
//! whole lifecycles with paced expiries (revocation lag, requests and CPU per lifecycle),
//! open-loop throughput at rising rates, the restart sweep (N activations expire while no
//! operator runs), and memory at growing numbers of assignments and active activations (with
//! a restart each, for the peak during the relist).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use chrono::{DateTime, Utc};
use futures::{StreamExt, future::join_all};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Namespace},
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        events::{Event as KubeEvent, EventType, Reporter},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::Notify;

use super::{
    Memory, Path, Report, Restart, Step, Summary, Throughput, breakdown, call_key, first_calls,
    per_activation, requests_by, summarize,
};
use crate::{
    Error, Result,
    api::{ActivationRequest, EligibleAssignment},
    controller::events::Events,
    testenv::{ControlPlane, Options as EnvOptions},
};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Activations per latency figure (and per run of the activation latency).
    pub samples: usize,
    /// Runs of the activation-latency figure (each reported; the headline pools them).
    pub runs: usize,
    /// Namespaces the load is spread over.
    pub namespaces: usize,
    /// Activations that expire while no operator runs (the restart sweep).
    pub restart: usize,
    /// Offered rates for the throughput steps, activations per second (rising).
    pub rates: Vec<f64>,
    /// How long each throughput step offers its rate.
    pub rate_secs: u64,
    /// Memory checkpoints: this many EligibleAssignments and this many active activations.
    pub scale: Vec<usize>,
    /// The operator binary (the release build for real figures).
    pub operator_bin: PathBuf,
    /// Scratch directory for the control planes.
    pub dir: PathBuf,
    /// Where kube-apiserver's CPU profiles of the throughput steps and of the baseline's
    /// write capacity go, if anywhere.
    pub profile_dir: Option<PathBuf>,
}

const NS: &str = "bench";
const EXPIRY_NS: &str = "bench-expiry";
/// Untimed activations first, in both phases.
const WARMUP: usize = 3;
const MANAGED: &str = "app.kubernetes.io/managed-by=kube-pim";
/// Concurrent clients for bulk set-up and for the baseline's write capacity.
const WORKERS: usize = 16;
const USER: &str = "bench-user";
const APPROVER: &str = "bench-approver";

fn err(msg: impl Into<String>) -> Error {
    Error::TestEnv(msg.into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Managed RoleBindings as the benchmark's watch saw them, by `namespace/request` (the
/// binding's name in the baseline): when each was first seen, and when it went; and the
/// requests of the latency namespace whose writes are all made.
#[derive(Default)]
struct Seen {
    added: HashMap<String, (Instant, SystemTime)>,
    gone: HashMap<String, (Instant, SystemTime)>,
    /// Requests in [`NS`]: when each was first seen Active ([`Bindings::watch_requests`]).
    active: HashMap<String, Instant>,
    /// Requests in [`NS`] recorded Active with every history entry audited: the writes that
    /// follow an activation's binding (Active, the audit outbox, Events) are over.
    settled: HashSet<String>,
}

#[derive(Clone)]
struct Bindings {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
}

impl Bindings {
    /// Watches managed RoleBindings in every namespace.
    fn watch(client: Client) -> (Self, tokio::task::JoinHandle<()>) {
        let b = Self {
            seen: Default::default(),
            changed: Default::default(),
        };
        let api: Api<RoleBinding> = Api::all(client);
        let me = b.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default().labels(MANAGED))
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                let (at, wall) = (Instant::now(), SystemTime::now());
                let key = |rb: &RoleBinding| {
                    let name = rb
                        .labels()
                        .get("kubepim.io/activation-request")
                        .cloned()
                        .unwrap_or_else(|| rb.name_any());
                    format!("{}/{name}", rb.namespace().unwrap_or_default())
                };
                {
                    let mut s = me.seen.lock().expect("not poisoned");
                    match ev {
                        Ok(watcher::Event::Apply(rb) | watcher::Event::InitApply(rb)) => {
                            s.added.entry(key(&rb)).or_insert((at, wall));
                        }
                        Ok(watcher::Event::Delete(rb)) => {
                            s.gone.entry(key(&rb)).or_insert((at, wall));
                        }
                        _ => continue,
                    }
                }
                me.changed.notify_waiters();
            }
        });
        (b, task)
    }

    /// Also watches the requests of [`NS`]: when each is first seen Active, and when it is
    /// settled ([`Seen::settled`]). Needed only while latencies are measured.
    fn watch_requests(&self, client: Client) -> tokio::task::JoinHandle<()> {
        let requests: Api<ActivationRequest> = Api::namespaced(client, NS);
        let me = self.clone();
        tokio::spawn(async move {
            let mut events = watcher(requests, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(ev) = events.next().await {
                let at = Instant::now();
                let Ok(ar) = ev else { continue };
                let Some(status) = ar.status.as_ref() else {
                    continue;
                };
                if status.phase != Some(crate::api::RequestPhase::Active) {
                    continue;
                }
                let key = format!("{NS}/{}", ar.name_any());
                let settled =
                    usize::try_from(status.audited_through).unwrap_or(0) >= status.history.len();
                {
                    let mut s = me.seen.lock().expect("not poisoned");
                    s.active.entry(key.clone()).or_insert(at);
                    if settled {
                        s.settled.insert(key);
                    }
                }
                me.changed.notify_waiters();
            }
        })
    }

    /// Waits (up to `limit`) until `f` over what was seen gives an answer.
    async fn until<T>(
        &self,
        limit: Duration,
        what: &str,
        f: impl Fn(&Seen) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(t) = f(&self.seen.lock().expect("not poisoned")) {
                return Ok(t);
            }
            tokio::time::timeout_at(deadline, changed)
                .await
                .map_err(|_| err(format!("{what}: not seen within {limit:?}")))?;
        }
    }

    async fn added(&self, key: &str) -> Result<Instant> {
        Ok(self.added_at(key).await?.0)
    }

    /// When the binding was first seen, on the monotonic and on the wall clock.
    async fn added_at(&self, key: &str) -> Result<(Instant, DateTime<Utc>)> {
        self.until(Duration::from_secs(300), key, |s| {
            s.added.get(key).map(|(at, wall)| (*at, (*wall).into()))
        })
        .await
    }

    async fn gone(&self, key: &str) -> Result<Instant> {
        self.until(Duration::from_secs(120), key, |s| {
            s.gone.get(key).map(|g| g.0)
        })
        .await
    }

    /// When the request was first seen Active.
    async fn active(&self, key: &str) -> Result<Instant> {
        self.until(Duration::from_secs(60), key, |s| s.active.get(key).copied())
            .await
    }

    /// Waits until the request's writes after its binding are over ([`Seen::settled`]).
    async fn settled(&self, key: &str) -> Result<()> {
        self.until(Duration::from_secs(60), key, |s| {
            s.settled.contains(key).then_some(())
        })
        .await
    }

    fn live(&self) -> usize {
        let s = self.seen.lock().expect("not poisoned");
        s.added.keys().filter(|k| !s.gone.contains_key(*k)).count()
    }
}

async fn namespace(admin: &Client, name: &str) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("valid");
    Api::<Namespace>::all(admin.clone())
        .patch(
            name,
            &PatchParams::apply("kube-pim-bench"),
            &Patch::Apply(&ns),
        )
        .await?;
    Ok(())
}

/// The requester and approver personas bound in `ns` for the benchmark's groups, as a
/// platform admin would bind them.
async fn personas(admin: &Client, ns: &str) -> Result<()> {
    let ssa = PatchParams::apply("kube-pim-bench").force();
    let rbs = Api::<RoleBinding>::namespaced(admin.clone(), ns);
    for (name, role, group) in [
        ("bench-requesters", "kube-pim-requester", "bench"),
        ("bench-approvers", "kube-pim-approver", "bench-approvers"),
    ] {
        rbs.patch(name, &ssa, &Patch::Apply(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]})))
            .await?;
    }
    Ok(())
}

fn binding(name: &str) -> RoleBinding {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "kube-pim"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]
    }))
    .expect("valid")
}

fn request(ns: &str, role_setting: &str, duration: &str) -> ActivationRequest {
    serde_json::from_value(json!({
        "apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"generateName": "b-", "namespace": ns},
        "spec": {"roleSetting": role_setting, "duration": duration, "justification": "benchmark",
                 // Stamped by kube-pim's admission webhook (the baseline sets it itself).
                 "requester": {"username": ""}}
    }))
    .expect("valid")
}

/// Runs `f` over `items` with `WORKERS` at a time.
async fn bulk<T, F, Fut>(items: Vec<T>, f: F) -> Result<()>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let results: Vec<Result<()>> = futures::stream::iter(items.into_iter().map(f))
        .buffer_unordered(WORKERS)
        .collect()
        .await;
    results.into_iter().collect()
}

/// A timed activation as the benchmark saw it (wall clock), before the audit log is read.
struct Sent {
    name: String,
    uid: String,
    sent: DateTime<Utc>,
    created: DateTime<Utc>,
    seen: DateTime<Utc>,
}

/// The timed activations' paths: what the benchmark saw, with the commit and binding calls
/// `writer` made for each, from the apiserver's audit log. An activation whose calls are not
/// in the log is left out.
fn paths(audit_log: &str, writer: &str, sent: &[Sent]) -> Vec<Path> {
    let calls = first_calls(audit_log);
    sent.iter()
        .filter_map(|s| {
            let binding = crate::decide::bindings::binding_name(&s.uid, "view");
            Some(Path {
                sent: s.sent,
                created: s.created,
                commit: *calls.get(&call_key(
                    writer,
                    "patch",
                    "activationrequests/status",
                    NS,
                    &s.name,
                ))?,
                bind: *calls.get(&call_key(writer, "patch", "rolebindings", NS, &binding))?,
                seen: s.seen,
            })
        })
        .collect()
}

/// What the baseline measured.
struct Baseline {
    activation: Vec<f64>,
    /// Create → the request seen Active.
    activation_to_active: Vec<f64>,
    /// Each timed activation's path, stage by stage.
    activation_paths: Vec<Path>,
    /// Runs A to O's baseline: create, binding (no commit first).
    activation_without_commit: Vec<f64>,
    approval: Vec<f64>,
    revocation: Vec<f64>,
    writes_per_s: f64,
    /// Cores each process used while the write capacity was measured.
    writes_cpu_cores: BTreeMap<String, f64>,
    activations_per_s: f64,
    /// Cores used while the activation capacity was measured.
    activations_cpu_cores: BTreeMap<String, f64>,
    delete_n_ms: f64,
}

/// The baseline: the calls of one activation as kube-pim makes them (create the request,
/// commit the decision, apply the binding, then the rest of its writes: [`Replay`]), of one
/// approval (record the decision, commit it, apply the binding, the rest) and of one
/// revocation (delete the binding), made back to back by this process against a control
/// plane with no kube-pim process; then its write capacity (creates from `WORKERS`
/// concurrent clients), its capacity for whole activations' writes (as many clients, each
/// replaying one activation after another) and the time to delete N bindings with as many.
async fn baseline(o: &Options) -> Result<Baseline> {
    let cp = ControlPlane::start(EnvOptions {
        dir: o.dir.join("baseline"),
        users: vec![],
        operator_bin: None,
        operator_args: vec![],
        bin_dir: None,
        bare: false,
        apiserver_audit: true,
    })
    .await?;
    let admin = cp.env().admin().await?;
    namespace(&admin, NS).await?;
    // The same users as kube-pim's phase, authorized by RBAC as there: the requester and the
    // approver through the persona roles, the operator's user through the operator's
    // ClusterRole (admin is in system:masters, which skips authorization).
    personas(&admin, NS).await?;
    let pp = PatchParams::apply(crate::controller::FIELD_MANAGER).force();
    let role = crate::rbac::operator_cluster_role(None);
    let role_name = role.metadata.name.clone().unwrap_or_default();
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
        .patch(&role_name, &pp, &Patch::Apply(&role))
        .await?;
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .patch(
            &role_name,
            &pp,
            &Patch::Apply(crate::rbac::operator_cluster_role_binding(
                crate::testenv::OPERATOR_USER,
            )),
        )
        .await?;
    let requester = cp.env().client(USER, &["bench"]).await?;
    let approver = cp.env().client(APPROVER, &["bench-approvers"]).await?;
    let operator = cp.env().client(crate::testenv::OPERATOR_USER, &[]).await?;
    let (seen, watch) = Bindings::watch(admin.clone());
    let requests = seen.watch_requests(admin.clone());
    let ars: Api<ActivationRequest> = Api::namespaced(admin.clone(), NS);
    let rbs: Api<RoleBinding> = Api::namespaced(admin.clone(), NS);
    let pp = PatchParams::default();
    let replay = Replay::new(&requester, &operator);
    let (mut activation, mut to_active, mut revocation, mut approval) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut sent = Vec::new();
    let audit_from = audit_len(cp.env().dir())?;
    // The first calls of a fresh apiserver (cold caches, connection set-up) are not counted.
    // As many as kube-pim's runs make together, so the namespace holds as many live bindings
    // of the requester at each point of the pooled figure.
    for i in 0..o.samples * o.runs.max(1) + WARMUP {
        // kube-pim's calls in kube-pim's order (SPEC section 3: the decision is committed
        // before any binding exists): create, commit, binding; until the binding is seen.
        // The binding stays, as kube-pim's 1 h activations' do.
        let (t0, at) = (Instant::now(), Utc::now());
        let created = replay.create().await?;
        let created_at = Utc::now();
        let (name, uid) = (created.name_any(), created.uid().unwrap_or_default());
        let committed = replay.commit(created, true).await?;
        let refs = replay.bind(&committed).await?;
        let key = format!("{NS}/{name}");
        let (seen_at, seen_wall) = seen.added_at(&key).await?;
        replay.finish(committed, refs).await?;
        let active_at = seen.active(&key).await?;
        if i >= WARMUP {
            activation.push(ms(seen_at - t0));
            to_active.push(ms(active_at - t0));
            sent.push(Sent {
                name,
                uid,
                sent: at,
                created: created_at,
                seen: seen_wall,
            });
        }
    }
    let (log, _) = audit_log(cp.env().dir(), audit_from)?;
    let activation_paths = paths(&log, crate::testenv::OPERATOR_USER, &sent);
    // Revocation: the operator's user deletes each binding; until the deletion is seen.
    let operator_rbs: Api<RoleBinding> = Api::namespaced(operator.clone(), NS);
    for s in &sent {
        let t1 = Instant::now();
        operator_rbs
            .delete(
                &crate::decide::bindings::binding_name(&s.uid, "view"),
                &DeleteParams::default(),
            )
            .await?;
        revocation.push(ms(seen.gone(&format!("{NS}/{}", s.name)).await? - t1));
    }
    // The baseline of runs A to O, for comparison: create the request, create the binding
    // (no commit first), patch the status; until the binding is seen.
    let mut without_commit = Vec::new();
    for i in 0..o.samples + WARMUP {
        let t0 = Instant::now();
        let mut req = request(NS, "bench", "1h");
        req.spec.requester.username = USER.into();
        let name = ars.create(&PostParams::default(), &req).await?.name_any();
        rbs.create(&PostParams::default(), &binding(&name)).await?;
        let active = json!({"status": {"phase": "Active", "approvals": []}});
        ars.patch_status(&name, &pp, &Patch::Merge(active)).await?;
        let key = format!("{NS}/{name}");
        let a = ms(seen.added(&key).await? - t0);
        rbs.delete(&name, &DeleteParams::default()).await?;
        seen.gone(&key).await?;
        if i >= WARMUP {
            without_commit.push(a);
        }
    }
    // The approval's calls in kube-pim's order: the approver's decision, the commit, the
    // binding; until the binding is seen.
    for _ in 0..o.samples {
        let created = replay.create().await?;
        let name = created.name_any();
        let pending = json!({"status": {"phase": "Pending", "approvals": []}});
        ars.patch_status(&name, &pp, &Patch::Merge(pending)).await?;
        let t0 = Instant::now();
        let decided = json!({"status": {"approvals": [{"decision": "Approved",
            "approver": {"username": APPROVER}, "time": Utc::now()}]}});
        let decided = Api::<ActivationRequest>::namespaced(approver.clone(), NS)
            .patch_status(&name, &pp, &Patch::Merge(decided))
            .await?;
        let committed = replay.commit(decided, false).await?;
        let refs = replay.bind(&committed).await?;
        approval.push(ms(seen.added(&format!("{NS}/{name}")).await? - t0));
        replay.finish(committed, refs).await?;
    }
    // Only the latency loops need the requests' watch (its decoding is the benchmark's CPU).
    requests.abort();
    // Write capacity: WORKERS clients creating small objects back to back.
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    let window = Duration::from_secs(o.rate_secs.clamp(2, 10));
    let (writes_per_s, writes_cpu_cores) = capacity(&cp, o, window, "writes", |w, n| {
        let cms = cms.clone();
        async move {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": format!("w{w}-{n}")}, "data": {"k": "v"}}),
            )
            .expect("valid");
            cms.create(&PostParams::default(), &cm).await?;
            Ok(())
        }
    })
    .await?;
    // Activation capacity: the same, each client making one auto-approved activation's
    // writes after another, as kube-pim makes them.
    let (activations_per_s, activations_cpu_cores) =
        capacity(&cp, o, window, "activations", |_, _| {
            let replay = replay.clone();
            async move { replay.activation().await }
        })
        .await?;
    // N bindings deleted by WORKERS clients: the least a restart sweep must do.
    let names: Vec<String> = (0..o.restart).map(|i| format!("sweep-{i}")).collect();
    bulk(names.clone(), |n| {
        let rbs = rbs.clone();
        async move {
            rbs.create(&PostParams::default(), &binding(&n)).await?;
            Ok(())
        }
    })
    .await?;
    for n in &names {
        seen.added(&format!("{NS}/{n}")).await?;
    }
    let t0 = Instant::now();
    bulk(names.clone(), |n| {
        let rbs = rbs.clone();
        async move {
            rbs.delete(&n, &DeleteParams::default()).await?;
            Ok(())
        }
    })
    .await?;
    let keys: Vec<String> = names.iter().map(|n| format!("{NS}/{n}")).collect();
    let last = seen
        .until(Duration::from_secs(120), "baseline deletions", |s| {
            keys.iter()
                .map(|k| s.gone.get(k).map(|g| g.0))
                .collect::<Option<Vec<_>>>()
                .map(|v| v.into_iter().max())
        })
        .await?;
    let delete_n_ms = last.map_or(0.0, |l| ms(l - t0));
    watch.abort();
    cp.shutdown().await;
    Ok(Baseline {
        activation,
        activation_to_active: to_active,
        activation_paths,
        activation_without_commit: without_commit,
        approval,
        revocation,
        writes_per_s,
        writes_cpu_cores,
        activations_per_s,
        activations_cpu_cores,
        delete_n_ms,
    })
}

/// Runs `unit` back to back from `WORKERS` concurrent clients for `window` (the `n`th call of
/// client `w` is `unit(w, n)`), and returns units completed per second and the cores each
/// process used meanwhile; with `--profile-dir`, kube-apiserver's CPU profile of the window
/// goes to `apiserver-baseline-<what>.pb.gz`.
async fn capacity<F, Fut>(
    cp: &ControlPlane,
    o: &Options,
    window: Duration,
    what: &str,
    unit: F,
) -> Result<(f64, BTreeMap<String, f64>)>
where
    F: Fn(usize, u64) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let admin = cp.env().admin().await?;
    let meter = CpuMeter::start(cp);
    let profile = apiserver_profile(
        &admin,
        window.as_secs(),
        o.profile_dir
            .as_ref()
            .map(|d| d.join(format!("apiserver-baseline-{what}.pb.gz"))),
    );
    let t0 = Instant::now();
    let workers = async {
        let counts = join_all((0..WORKERS).map(|w| {
            let unit = &unit;
            async move {
                let mut n = 0u64;
                while t0.elapsed() < window {
                    unit(w, n).await?;
                    n += 1;
                }
                Ok::<_, Error>(n)
            }
        }))
        .await;
        // Taken here: the profile's answer may come a little after the window.
        (counts, t0.elapsed(), meter.cores())
    };
    let ((counts, elapsed, cores), ()) = futures::join!(workers, profile);
    let mut done = 0u64;
    for c in counts {
        done += c?;
    }
    Ok((done as f64 / elapsed.as_secs_f64(), cores))
}

/// One auto-approved activation's writes, made by the benchmark as kube-pim makes them (no
/// operator, no admission), step by step: the baseline's activation calls and its activation
/// capacity. Each status write is a merge patch conditional on the resourceVersion the
/// previous write returned, and carries the whole status without `approvals` (the approvers'),
/// as kube-pim's do.
#[derive(Clone)]
struct Replay {
    /// As the requester (`bench-user`, group `bench`): the create.
    requester: Api<ActivationRequest>,
    /// As the operator's user, with the operator's ClusterRole: everything else.
    ars: Api<ActivationRequest>,
    rbs: Api<RoleBinding>,
    events: Events,
}

/// A replayed activation whose decision is committed.
struct Committed {
    request: ActivationRequest,
    now: DateTime<Utc>,
    expires: DateTime<Utc>,
    approved: serde_json::Value,
    history: Vec<serde_json::Value>,
}

impl Replay {
    /// The calls made as `requester` and as `operator` (each authorized by RBAC, as kube-pim's
    /// are: neither is in `system:masters`).
    fn new(requester: &Client, operator: &Client) -> Self {
        Self {
            requester: Api::namespaced(requester.clone(), NS),
            ars: Api::namespaced(operator.clone(), NS),
            rbs: Api::namespaced(operator.clone(), NS),
            events: Events::new(
                operator.clone(),
                Reporter {
                    controller: crate::controller::FIELD_MANAGER.into(),
                    instance: None,
                },
            ),
        }
    }

    /// The requester's create, with what kube-pim's admission would stamp on it (the
    /// requester's identity, kube-pim's finalizer).
    async fn create(&self) -> Result<ActivationRequest> {
        let mut req = request(NS, "bench", "1h");
        req.spec.requester.username = USER.into();
        req.spec.requester.groups = vec!["bench".into(), "system:authenticated".into()];
        req.metadata.finalizers = Some(vec![crate::controller::FINALIZER.into()]);
        Ok(self.requester.create(&PostParams::default(), &req).await?)
    }

    /// The decision committed before any binding exists (SPEC section 3, *Ordering*): history
    /// Requested and Approved, the Approved condition, phase Pending, and `approvals`
    /// initialised if `initialize` (kube-pim writes them only then: an approver's decision is
    /// never overwritten).
    async fn commit(&self, created: ActivationRequest, initialize: bool) -> Result<Committed> {
        let now = Utc::now();
        let approved = json!({"type": "Approved", "status": "True", "reason": "ApprovalNotRequired",
            "message": "RoleSetting does not require approval", "observedGeneration": 1,
            "lastTransitionTime": now});
        let history = vec![
            json!({"seq": 1, "action": "Requested", "actor": USER, "time": now,
                "message": format!("{USER} requested bench (Namespace scope) for 1h: benchmark")}),
            json!({"seq": 2, "action": "Approved", "actor": "kube-pim", "time": now,
                "message": "no approval required"}),
        ];
        let mut commit = json!({"metadata": {"resourceVersion": created.resource_version()},
            "status": {"phase": "Pending", "conditions": [approved],
                "history": history, "observedGeneration": 1}});
        if initialize {
            commit["status"]["approvals"] = json!([]);
        }
        let request = self
            .ars
            .patch_status(
                &created.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&commit),
            )
            .await?;
        Ok(Committed {
            request,
            now,
            expires: now + chrono::TimeDelta::hours(1),
            approved,
            history,
        })
    }

    /// The binding, by server-side apply with kube-pim's own builder and field manager.
    async fn bind(&self, c: &Committed) -> Result<Vec<crate::api::BindingRef>> {
        let mut refs = Vec::new();
        for b in crate::decide::bindings::for_request(&c.request, &["view".into()], c.expires) {
            let crate::decide::bindings::Binding::Role(rb) = &b else {
                return Err(err("a Namespace-scope request yields RoleBindings only"));
            };
            let ssa = PatchParams::apply(crate::controller::FIELD_MANAGER).force();
            self.rbs
                .patch(&rb.name_any(), &ssa, &Patch::Apply(rb))
                .await?;
            refs.push(b.reference());
        }
        Ok(refs)
    }

    /// What follows the binding: the Events of the commit, the status write that records it
    /// Active and audits the commit, the Event of that, and the status write that audits it.
    async fn finish(&self, c: Committed, refs: Vec<crate::api::BindingRef>) -> Result<()> {
        let (name, pp) = (c.request.name_any(), PatchParams::default());
        let reference = c.request.object_ref(&());
        for h in &c.history {
            self.events.publish(&event(h), &reference).await?;
        }
        let message = format!(
            "granted view to {USER} until {} (assignment bench)",
            c.expires
        );
        let mut history = c.history;
        history.push(
            json!({"seq": 3, "action": "Activated", "actor": "kube-pim", "time": c.now,
            "message": message}),
        );
        let active = json!({"type": "Active", "status": "True", "reason": "Activated",
            "message": message, "observedGeneration": 1, "lastTransitionTime": c.now});
        let activate = json!({"metadata": {"resourceVersion": c.request.resource_version()},
            "status": {"phase": "Active", "assignment": "bench", "activationTime": c.now,
                "expirationTime": c.expires, "bindings": refs, "conditions": [c.approved, active],
                "history": history, "auditedThrough": 2, "observedGeneration": 1}});
        let activated = self
            .ars
            .patch_status(&name, &pp, &Patch::Merge(&activate))
            .await?;
        self.events.publish(&event(&history[2]), &reference).await?;
        let mut audited = activate;
        audited["metadata"]["resourceVersion"] = json!(activated.resource_version());
        audited["status"]["auditedThrough"] = json!(3);
        self.ars
            .patch_status(&name, &pp, &Patch::Merge(&audited))
            .await?;
        Ok(())
    }

    /// All of one activation's writes, one after the other.
    async fn activation(&self) -> Result<()> {
        let c = self.commit(self.create().await?, true).await?;
        let refs = self.bind(&c).await?;
        self.finish(c, refs).await
    }
}

/// The Normal Event for a replayed history entry, as kube-pim emits it (reason and action the
/// entry's action, note its message).
fn event(entry: &serde_json::Value) -> KubeEvent {
    let s = |k: &str| entry[k].as_str().unwrap_or_default().to_string();
    KubeEvent {
        type_: EventType::Normal,
        reason: s("action"),
        note: Some(s("message")),
        action: s("action"),
        secondary: None,
    }
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

/// kube-apiserver's CPU profile over the next `secs` seconds (its `/debug/pprof/profile`,
/// which `--profiling`, on by default, serves to cluster admins), written to `path`; with no
/// path, nothing. A failure is reported and does not end the benchmark.
async fn apiserver_profile(admin: &Client, secs: u64, path: Option<PathBuf>) {
    use futures::AsyncReadExt;
    let Some(path) = path else { return };
    let fetch = async {
        let req = http::Request::get(format!("/debug/pprof/profile?seconds={secs}"))
            .body(Vec::new())
            .map_err(|e| err(e.to_string()))?;
        let mut body = admin.request_stream(req).await?;
        let mut buf = Vec::new();
        body.read_to_end(&mut buf)
            .await
            .map_err(|e| err(format!("reading the profile: {e}")))?;
        std::fs::write(&path, buf).map_err(Error::io("write", &path))
    };
    if let Err(e) = fetch.await {
        tracing::warn!(error = %e, path = %path.display(), "no apiserver profile");
    }
}

/// The machine's busy and total CPU seconds over all cores, from /proc/stat.
fn machine_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let total: f64 = ticks.iter().take(8).sum();
    // idle and iowait are fields 4 and 5.
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    ((total - idle) / 100.0, total / 100.0)
}

/// CPU use of each process of a control plane, of this benchmark and of the whole machine
/// over a window: which of them a throughput limit is.
struct CpuMeter {
    at: Instant,
    machine: f64,
    procs: Vec<(String, u32, f64)>,
}

impl CpuMeter {
    fn start(cp: &ControlPlane) -> Self {
        let mut pids = cp.pids();
        pids.push(("benchmark".into(), std::process::id()));
        Self {
            at: Instant::now(),
            machine: machine_cpu_seconds().0,
            procs: pids
                .into_iter()
                .map(|(name, pid)| (name, pid, cpu_seconds(pid)))
                .collect(),
        }
    }

    /// Cores used since `start`, by process name, and `machine` for every process together.
    fn cores(&self) -> BTreeMap<String, f64> {
        let secs = self.at.elapsed().as_secs_f64().max(0.001);
        let round2 = |x: f64| (x * 100.0).round() / 100.0;
        let mut out: BTreeMap<String, f64> = self
            .procs
            .iter()
            .map(|(name, pid, cpu)| (name.clone(), round2((cpu_seconds(*pid) - cpu) / secs)))
            .collect();
        out.insert(
            "machine".into(),
            round2((machine_cpu_seconds().0 - self.machine) / secs),
        );
        out
    }
}

/// (VmRSS, VmHWM, RssFile) in MiB. RssFile is the part of VmRSS that is pages of mapped files
/// (mostly the binary's own code and constants): the kernel can drop and reread them.
fn rss_mib(pid: u32) -> (f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        kib("VmRSS:") / 1024.0,
        kib("VmHWM:") / 1024.0,
        kib("RssFile:") / 1024.0,
    )
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The apiserver's audit log's length so far: where a phase's lines start.
fn audit_len(dir: &std::path::Path) -> Result<u64> {
    let path = dir.join("apiserver-audit.log");
    Ok(std::fs::metadata(&path)
        .map_err(Error::io("read", &path))?
        .len())
}

/// The apiserver's audit log of a control plane, from byte `from` on.
fn audit_log(dir: &std::path::Path, from: u64) -> Result<(String, u64)> {
    use std::io::{Read, Seek};
    let path = dir.join("apiserver-audit.log");
    let mut f = std::fs::File::open(&path).map_err(Error::io("open", &path))?;
    f.seek(std::io::SeekFrom::Start(from))
        .map_err(Error::io("read", &path))?;
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(Error::io("read", &path))?;
    let end = from + text.len() as u64;
    Ok((text, end))
}

/// The operator's control plane, its clients and the binding watch.
struct World {
    cp: ControlPlane,
    admin: Client,
    user: Client,
    approver: Client,
    seen: Bindings,
    namespaces: Vec<String>,
}

impl World {
    fn pid(&self) -> Result<u32> {
        self.cp
            .operator_pid()
            .ok_or_else(|| err("the operator is not running"))
    }

    /// Waits (up to 2 minutes) until the operator is idle (under 5 % of a core for a second):
    /// what the last phase queued (audit outbox, Events, counts) does not spill into the next.
    async fn settle(&self) -> Result<()> {
        let pid = self.pid()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut cpu = cpu_seconds(pid);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = cpu_seconds(pid);
            if now - cpu < 0.05 {
                break;
            }
            cpu = now;
        }
        Ok(())
    }

    /// The operator's `kube_pim_allocator_bytes`, in MiB by kind (empty if it cannot be read).
    async fn allocator(&self) -> BTreeMap<String, f64> {
        let Ok(addr) = std::fs::read_to_string(self.cp.env().dir().join("operator.addr")) else {
            return BTreeMap::new();
        };
        let scrape = crate::testenv::http_get(addr.trim(), "/metrics");
        match tokio::time::timeout(Duration::from_secs(5), scrape).await {
            Ok(Some(body)) => super::allocator_mib(&body),
            _ => {
                tracing::warn!("could not read the operator's allocator figures from /metrics");
                BTreeMap::new()
            }
        }
    }

    /// Creates a request as the benchmark's requester; returns its `namespace/name` key.
    async fn request(&self, ns: &str, role_setting: &str, duration: &str) -> Result<String> {
        let ar = Api::<ActivationRequest>::namespaced(self.user.clone(), ns)
            .create(&PostParams::default(), &request(ns, role_setting, duration))
            .await?;
        Ok(format!("{ns}/{}", ar.name_any()))
    }

    /// Keeps `WORKERS` requesters busy (each waits for its binding before the next request)
    /// until `n` more activations are Active; round-robin over the namespaces.
    async fn activate_many(
        &self,
        n: usize,
        ns: Option<&str>,
        duration: &str,
    ) -> Result<Vec<String>> {
        let keys = Arc::new(Mutex::new(Vec::new()));
        let items: Vec<usize> = (0..n).collect();
        bulk(items, |i| {
            let keys = keys.clone();
            let ns = ns.map_or_else(
                || self.namespaces[i % self.namespaces.len()].clone(),
                String::from,
            );
            async move {
                let key = self.request(&ns, "bench", duration).await?;
                self.seen.added(&key).await?;
                keys.lock().expect("not poisoned").push(key);
                Ok(())
            }
        })
        .await?;
        let keys = keys.lock().expect("not poisoned").clone();
        Ok(keys)
    }
}

async fn setup(o: &Options) -> Result<World> {
    let cp = ControlPlane::start(EnvOptions {
        dir: o.dir.join("operator"),
        users: vec![],
        operator_bin: Some(o.operator_bin.clone()),
        // One requester holds every activation of the benchmark.
        operator_args: vec!["--max-open-requests=1000000".into()],
        bin_dir: None,
        bare: false,
        apiserver_audit: true,
    })
    .await?;
    let admin = cp.env().admin().await?;
    let ssa = PatchParams::apply("kube-pim-bench").force();
    let rs = Api::<crate::api::RoleSetting>::all(admin.clone());
    rs.patch(
        "bench",
        &ssa,
        &Patch::Apply(json!({
        "apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting", "metadata": {"name": "bench"},
        "spec": {"roleRefs": [{"name": "view"}], "activation": {"maxDuration": "1h"}}})),
    )
    .await?;
    rs.patch("bench-approved", &ssa, &Patch::Apply(json!({
        "apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting", "metadata": {"name": "bench-approved"},
        "spec": {"roleRefs": [{"name": "view"}], "activation": {"maxDuration": "1h"},
                 "approval": {"required": true, "minApprovals": 1,
                              "approvers": [{"kind": "Group", "name": "bench-approvers"}]}}})))
        .await?;
    let mut namespaces: Vec<String> = (0..o.namespaces.max(1))
        .map(|i| format!("bench-{i}"))
        .collect();
    let mut all = namespaces.clone();
    all.extend([NS.to_string(), EXPIRY_NS.to_string()]);
    bulk(all.clone(), |ns| {
        let admin = admin.clone();
        let ssa = ssa.clone();
        async move {
            namespace(&admin, &ns).await?;
            let ea = Api::<EligibleAssignment>::namespaced(admin.clone(), &ns);
            ea.patch("bench", &ssa, &Patch::Apply(json!({
                "apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment", "metadata": {"name": "bench"},
                "spec": {"roleSetting": "bench", "subject": {"kind": "Group", "name": "bench"}}})))
                .await?;
            personas(&admin, &ns).await?;
            Ok(())
        }
    })
    .await?;
    Api::<EligibleAssignment>::namespaced(admin.clone(), NS)
        .patch("bench-approved", &ssa, &Patch::Apply(json!({
            "apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment", "metadata": {"name": "bench-approved"},
            "spec": {"roleSetting": "bench-approved", "subject": {"kind": "Group", "name": "bench"}}})))
        .await?;
    // Every assignment Eligible before anything is timed.
    let eas = Api::<EligibleAssignment>::all(admin.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let l = eas.list(&ListParams::default()).await?;
        if l.items
            .iter()
            .all(|ea| ea.status.as_ref().and_then(|s| s.phase).is_some())
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(err("assignments not Eligible within 120s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let user = cp.env().client(USER, &["bench"]).await?;
    let approver = cp.env().client(APPROVER, &["bench-approvers"]).await?;
    let (seen, _watch) = Bindings::watch(admin.clone());
    seen.watch_requests(admin.clone());
    namespaces.sort();
    Ok(World {
        cp,
        admin,
        user,
        approver,
        seen,
        namespaces,
    })
}

/// Sequential activations (no approval), each started once the one before is settled:
/// create → binding seen, create → request seen Active, and what the benchmark saw of each,
/// for its path stage by stage.
async fn activation_latency(w: &World, n: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<Sent>)> {
    let api = Api::<ActivationRequest>::namespaced(w.user.clone(), NS);
    let (mut out, mut to_active, mut sent) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (t0, at) = (Instant::now(), Utc::now());
        let ar = api
            .create(&PostParams::default(), &request(NS, "bench", "1h"))
            .await?;
        let created = Utc::now();
        let key = format!("{NS}/{}", ar.name_any());
        let (seen_at, seen) = w.seen.added_at(&key).await?;
        out.push(ms(seen_at - t0));
        to_active.push(ms(w.seen.active(&key).await? - t0));
        // The next sample starts once this activation's later writes (Active, the audit
        // outbox, Events) are made, as in the baseline, whose loop makes them itself before
        // its next create: a sample measures one activation, not the tail of the one before.
        w.seen.settled(&key).await?;
        sent.push(Sent {
            uid: ar.uid().unwrap_or_default(),
            name: ar.name_any(),
            sent: at,
            created,
            seen,
        });
    }
    Ok((out, to_active, sent))
}

/// Sequential approvals: a request waits for approval (untimed); the approver's decision →
/// binding seen.
async fn approval_latency(w: &World, n: usize) -> Result<Vec<f64>> {
    let api = Api::<ActivationRequest>::namespaced(w.approver.clone(), NS);
    let mut out = Vec::new();
    for _ in 0..n {
        let key = w.request(NS, "bench-approved", "1h").await?;
        let name = key
            .rsplit_once('/')
            .map(|(_, n)| n.to_string())
            .unwrap_or_default();
        // The operator initialises `approvals` first; only then may a decision be appended.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ar = api.get(&name).await?;
            if ar.status.as_ref().is_some_and(|s| s.approvals.is_some()) {
                break;
            }
            if Instant::now() > deadline {
                return Err(err(format!("{key} was not picked up within 60s")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t0 = Instant::now();
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/status/approvals/-", "value": {"decision": "Approved"}},
        ]))
        .expect("valid");
        api.patch_status(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await?;
        out.push(ms(w.seen.added(&key).await? - t0));
        // As for activations: the next one starts once this one's later writes are made.
        w.seen.settled(&key).await?;
    }
    Ok(out)
}

/// What whole lifecycles cost.
struct Lifecycles {
    lag: Vec<f64>,
    requests: BTreeMap<String, f64>,
    user_agents: Vec<String>,
    cpu_ms: f64,
}

/// `n` activations of 3 s, one every 250 ms (so a few expire at each second: expiry times are
/// whole seconds), from creation until each is ended, audited and released. Revocation lag is
/// the binding's deletion (watch) against `status.expirationTime`.
async fn lifecycles(w: &World, n: usize) -> Result<Lifecycles> {
    let pid = w.pid()?;
    let from = audit_len(w.cp.env().dir())?;
    let cpu0 = cpu_seconds(pid);
    let start = tokio::time::Instant::now();
    let mut keys = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_millis(250 * i as u64)).await;
        keys.push(w.request(NS, "bench", "3s").await?);
    }
    w.seen
        .until(Duration::from_secs(120), "expiries", |s| {
            keys.iter().all(|k| s.gone.contains_key(k)).then_some(())
        })
        .await?;
    // Whole lifecycles: ended, audited, finalizer released.
    let ars = Api::<ActivationRequest>::namespaced(w.admin.clone(), NS);
    let deadline = Instant::now() + Duration::from_secs(120);
    let list = loop {
        let l = ars.list(&ListParams::default()).await?;
        let ours: Vec<ActivationRequest> = l
            .items
            .into_iter()
            .filter(|a| keys.contains(&format!("{NS}/{}", a.name_any())))
            .collect();
        let done = ours.iter().all(|a| {
            a.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty())
                && a.status.as_ref().is_some_and(|s| {
                    usize::try_from(s.audited_through).unwrap_or(0) >= s.history.len()
                        && s.phase.is_some_and(crate::decide::request::is_terminal)
                })
        });
        if done || Instant::now() > deadline {
            break ours;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let cpu1 = cpu_seconds(pid);
    let (log, _) = audit_log(w.cp.env().dir(), from)?;
    let (counts, user_agents) = requests_by(&log, crate::testenv::OPERATOR_USER);
    let seen = w.seen.seen.lock().expect("not poisoned");
    let mut lag = Vec::new();
    for a in &list {
        let key = format!("{NS}/{}", a.name_any());
        let (Some((_, wall)), Some(exp)) = (
            seen.gone.get(&key),
            a.status.as_ref().and_then(|s| s.expiration_time),
        ) else {
            continue;
        };
        let gone: DateTime<Utc> = (*wall).into();
        lag.push((gone - exp).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    Ok(Lifecycles {
        lag,
        requests: per_activation(&counts, n),
        user_agents,
        cpu_ms: round1((cpu1 - cpu0) * 1000.0 / n.max(1) as f64),
    })
}

/// Open-loop load: `rate` activations per second for `secs`, spread over the namespaces, each
/// timed from its create call to its binding.
async fn throughput_step(
    w: &World,
    rate: f64,
    secs: u64,
    profile: Option<PathBuf>,
) -> Result<Step> {
    let n = ((rate * secs as f64).round() as usize).max(1);
    let start = tokio::time::Instant::now();
    let sends = (0..n).map(|i| {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        let ns = w.namespaces[i % w.namespaces.len()].clone();
        async move {
            tokio::time::sleep_until(at).await;
            let t0 = Instant::now();
            let key = w.request(&ns, "bench", "1h").await?;
            // An overloaded step fails; it does not end the benchmark.
            let seen = w
                .seen
                .until(Duration::from_secs(secs + 60), &key, |s| {
                    s.added.get(&key).map(|a| a.0)
                })
                .await
                .ok();
            Ok::<_, Error>((t0, seen))
        }
    });
    // CPU over the offered window only (not the wait for stragglers after it).
    let meter = CpuMeter::start(&w.cp);
    let (results, cpu_cores, ()) = futures::join!(
        join_all(sends),
        async {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            meter.cores()
        },
        apiserver_profile(&w.admin, secs, profile)
    );
    let mut lat = Vec::new();
    let mut last = Instant::now();
    let first = Instant::now();
    let mut first_sent = None;
    let mut missing = 0;
    for r in results {
        let (t0, seen) = r?;
        let Some(seen) = seen else {
            missing += 1;
            continue;
        };
        first_sent = Some(first_sent.map_or(t0, |f: Instant| f.min(t0)));
        last = if lat.is_empty() { seen } else { last.max(seen) };
        lat.push(ms(seen - t0));
    }
    let first_sent = first_sent.unwrap_or(first);
    let s = summarize(&lat);
    let quarter = (lat.len() / 4).max(1).min(lat.len());
    let early = summarize(&lat[..quarter]).p50_ms;
    let late = summarize(&lat[lat.len() - quarter..]).p50_ms;
    Ok(Step {
        offered_per_s: rate,
        achieved_per_s: round1(n as f64 / (last - first_sent).as_secs_f64().max(0.001)),
        latency: s.clone(),
        first_quarter_p50_ms: early,
        last_quarter_p50_ms: late,
        // A backlog shows as latency that grows through the step (or bindings never seen).
        backlog_flat: missing == 0 && late <= early * 1.5 + 50.0,
        not_seen: missing,
        cpu_cores,
    })
}

/// N activations expire while no operator runs; then it starts. Timed from its readiness to
/// the last binding's deletion.
async fn restart_sweep(w: &mut World, n: usize, rate: f64) -> Result<Restart> {
    // Long enough to create them all at the sustained rate, with room to spare.
    let secs = ((n as f64 / rate.max(1.0)) * 2.0).ceil() as u64 + 10;
    let keys = w
        .activate_many(n, Some(EXPIRY_NS), &format!("{secs}s"))
        .await?;
    let ars = Api::<ActivationRequest>::namespaced(w.admin.clone(), EXPIRY_NS);
    // Stopped only once every request records Active: its binding is made just before (SPEC
    // section 3), and a request stopped in between is activated afresh at the restart, with
    // a new expiry (a binding the sweep is right to leave).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let active = ars
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|a| {
                keys.contains(&format!("{EXPIRY_NS}/{}", a.name_any()))
                    && a.status.as_ref().and_then(|s| s.phase)
                        == Some(crate::api::RequestPhase::Active)
            })
            .count();
        if active >= n {
            break;
        }
        if Instant::now() > deadline {
            return Err(err(format!(
                "only {active} of {n} requests in {EXPIRY_NS} became Active within 120 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.cp.stop_operator().await?;
    let last_expiry = ars
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|a| a.status.as_ref().and_then(|s| s.expiration_time))
        .max()
        .unwrap_or_else(Utc::now);
    let wait = (last_expiry - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    let t_start = Instant::now();
    w.cp.restart_operator().await?;
    let ready = Instant::now();
    let last = w
        .seen
        .until(Duration::from_secs(300), "the restart sweep", |s| {
            keys.iter()
                .map(|k| s.gone.get(k).map(|g| g.0))
                .collect::<Option<Vec<_>>>()
                .map(|v| v.into_iter().max())
        })
        .await?;
    Ok(Restart {
        n,
        ready_after_start_ms: round1(ms(ready - t_start)),
        revoked_after_ready_ms: round1(
            last.map_or(0.0, |l| ms(l.saturating_duration_since(ready))),
        ),
        baseline_delete_ms: 0.0,
    })
}

/// Grows to `target` EligibleAssignments and `target` active activations, then measures the
/// operator's resident memory, and its peak across a restart (the relist).
async fn memory(w: &mut World, target: usize) -> Result<Memory> {
    let eas = Api::<EligibleAssignment>::all(w.admin.clone());
    let have = eas.list(&ListParams::default().limit(1)).await?;
    let count = |l: &kube::core::ObjectList<EligibleAssignment>| {
        l.metadata.remaining_item_count.unwrap_or(0) as usize + l.items.len()
    };
    let more = target.saturating_sub(count(&have));
    let ssa = PatchParams::apply("kube-pim-bench").force();
    let base = count(&have);
    bulk((0..more).collect(), |i| {
        let admin = w.admin.clone();
        let ssa = ssa.clone();
        let ns = w.namespaces[i % w.namespaces.len()].clone();
        async move {
            let name = format!("filler-{}", base + i);
            Api::<EligibleAssignment>::namespaced(admin, &ns)
                .patch(&name, &ssa, &Patch::Apply(json!({
                    "apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment", "metadata": {"name": name},
                    "spec": {"roleSetting": "bench", "subject": {"kind": "User", "name": name}}})))
                .await?;
            Ok(())
        }
    })
    .await?;
    let live = w.seen.live();
    w.activate_many(target.saturating_sub(live), None, "1h")
        .await?;
    // Settled: every status written, nothing queued.
    w.settle().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, _, file) = rss_mib(w.pid()?);
    let allocator = w.allocator().await;
    w.cp.stop_operator().await?;
    let t0 = Instant::now();
    w.cp.restart_operator().await?;
    let ready = ms(t0.elapsed());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (after, peak, _) = rss_mib(w.pid()?);
    let allocator_after_relist = w.allocator().await;
    Ok(Memory {
        assignments: target.max(count(&eas.list(&ListParams::default().limit(1)).await?)),
        active_activations: w.seen.live(),
        namespaces: w.namespaces.len(),
        rss_mib: round1(rss),
        rss_file_mib: round1(file),
        restart_ready_ms: round1(ready),
        relist_peak_mib: round1(peak),
        rss_after_relist_mib: round1(after),
        allocator_mib: allocator,
        allocator_after_relist_mib: allocator_after_relist,
    })
}

/// Runs both phases and returns the report.
pub async fn run(o: &Options) -> Result<Report> {
    let started = Utc::now();
    let base = baseline(o).await?;
    let mut w = setup(o).await?;

    // Untimed warm-up activations.
    activation_latency(&w, WARMUP).await?;
    let audit_from = audit_len(w.cp.env().dir())?;
    let mut runs = Vec::new();
    let (mut pooled, mut to_active) = (Vec::new(), Vec::new());
    let mut sent = Vec::new();
    for _ in 0..o.runs.max(1) {
        let (r, a, s) = activation_latency(&w, o.samples).await?;
        runs.push(summarize(&r));
        pooled.extend(r);
        to_active.extend(a);
        sent.extend(s);
    }
    let (log, _) = audit_log(w.cp.env().dir(), audit_from)?;
    let activation_stages = breakdown(
        &base.activation_paths,
        &paths(&log, crate::testenv::OPERATOR_USER, &sent),
    );
    let approval = approval_latency(&w, o.samples).await?;
    w.settle().await?;
    let life = lifecycles(&w, o.samples).await?;
    let (rss, peak, _) = rss_mib(w.pid()?);

    let writes_per_activation: f64 = 1.0 // the requester's create
        + life
            .requests
            .iter()
            .filter(|(k, _)| !["GET ", "LIST ", "WATCH "].iter().any(|v| k.starts_with(v)))
            // SubjectAccessReviews are questions, not writes to etcd.
            .filter(|(k, _)| !k.contains("subjectaccessreviews"))
            .map(|(_, v)| v)
            .sum::<f64>();
    let target_per_s = round1(0.7 * base.writes_per_s / writes_per_activation.max(1.0));
    let mut steps = Vec::new();
    for &rate in &o.rates {
        w.settle().await?;
        let profile = o
            .profile_dir
            .as_ref()
            .map(|d| d.join(format!("apiserver-{rate}-per-s.pb.gz")));
        let s = throughput_step(&w, rate, o.rate_secs, profile).await?;
        let ok = s.latency.p99_ms < 1000.0 && s.backlog_flat;
        steps.push(s);
        if !ok {
            break;
        }
    }
    let sustained = steps
        .iter()
        .filter(|s| s.latency.p99_ms < 1000.0 && s.backlog_flat)
        .map(|s| s.achieved_per_s.min(s.offered_per_s))
        .fold(0.0, f64::max);

    w.settle().await?;
    let mut restart = restart_sweep(&mut w, o.restart, sustained.max(5.0)).await?;
    restart.baseline_delete_ms = round1(base.delete_n_ms);

    let mut scale = o.scale.clone();
    scale.sort_unstable();
    let mut mem = Vec::new();
    for target in scale {
        mem.push(memory(&mut w, target).await?);
    }
    w.cp.shutdown().await;

    let get_list: f64 = life
        .requests
        .iter()
        .filter(|(k, _)| k.starts_with("GET ") || k.starts_with("LIST "))
        .map(|(_, v)| v)
        .sum();
    let ratio = |a: &Summary, b: &Summary| {
        if b.p99_ms > 0.0 {
            ((a.p99_ms / b.p99_ms) * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    let baseline_activation = summarize(&base.activation);
    let baseline_activation_without_commit = summarize(&base.activation_without_commit);
    let baseline_activation_to_active = summarize(&base.activation_to_active);
    let activation_to_active = summarize(&to_active);
    let activation_to_binding = summarize(&pooled);
    let baseline_approval = summarize(&base.approval);
    let approval_to_binding = summarize(&approval);
    Ok(Report {
        machine: machine(),
        started: started.to_rfc3339(),
        samples: o.samples,
        activation_ratio_p99: ratio(&activation_to_binding, &baseline_activation),
        baseline_activation_without_commit,
        activation_to_active_ratio_p99: ratio(
            &activation_to_active,
            &baseline_activation_to_active,
        ),
        baseline_activation_to_active,
        activation_to_active,
        activation_stages,
        approval_ratio_p99: ratio(&approval_to_binding, &baseline_approval),
        baseline_activation,
        activation_to_binding,
        activation_runs: runs,
        baseline_approval,
        approval_to_binding,
        baseline_revocation: summarize(&base.revocation),
        revocation_lag: summarize(&life.lag),
        requests_per_activation: life.requests,
        user_agents: life.user_agents,
        get_list_per_activation: (get_list * 100.0).round() / 100.0,
        cpu_ms_per_activation: life.cpu_ms,
        rss_mib: round1(rss),
        rss_peak_mib: round1(peak),
        throughput: Throughput {
            baseline_writes_per_s: round1(base.writes_per_s),
            baseline_writes_cpu_cores: base.writes_cpu_cores,
            baseline_activations_per_s: round1(base.activations_per_s),
            baseline_activations_cpu_cores: base.activations_cpu_cores,
            writes_per_activation: round1(writes_per_activation),
            target_per_s,
            steps,
            sustained_per_s: sustained,
        },
        restart,
        memory: mem,
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
