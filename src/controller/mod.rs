//! The controllers: level-triggered reconcilers over watch caches (no polling, no GET per
//! activation). One watch per resource type feeds both a reflector store (what reconcilers
//! read) and the triggers of the controllers that care about it.
//!
//! - [`activation`]: ActivationRequests — the state machine of [`crate::decide::request`],
//!   bindings, expiry, the audit outbox;
//! - [`assignment`]: EligibleAssignment phases and windows;
//! - [`role_setting`]: RoleSetting status (RolesFound, QuorumReachable, PersistenceRisk,
//!   counts, unmanaged bindings);
//! - [`standing`]: the standing-access policy's parameters and discovery of bindings made
//!   outside kube-pim;
//! - [`residual`]: after a revocation, whether the access is really gone.

pub mod activation;
pub mod assignment;
pub mod audit;
pub mod binding_cache;
pub mod cached;
pub mod events;
pub mod index;
pub mod lenient;
pub mod paced;
pub mod packed;
pub mod rbac_writes;
pub mod residual;
pub mod role_setting;
pub mod standing;

use std::{sync::Arc, time::Duration};

use chrono::TimeDelta;
use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        events::Reporter,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};

use self::{
    binding_cache::BindingCache,
    cached::{CachedAssignment, CachedRequest},
};
use crate::{
    api::RoleSetting,
    decide::{bindings::MANAGED_SELECTOR, policy::MfaConfig},
};

/// The finalizer kube-pim puts on requests while they may hold bindings.
pub const FINALIZER: &str = "kubepim.io/bindings";
/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "kube-pim";

/// How the controllers behave.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator's own namespace (the standing-access ConfigMap, its Lease).
    pub namespace: String,
    /// The only namespace for Cluster-scope assignments and requests.
    pub cluster_scope_namespace: String,
    /// How requesters prove MFA.
    pub mfa: MfaConfig,
    /// How long terminal, fully audited requests are kept.
    pub retention: TimeDelta,
    /// The longest a healthy object goes without a reconcile (a safety net; expiries are
    /// scheduled precisely, not found by this).
    pub resync: Duration,
    /// Where RoleSettings' notification webhooks may point.
    pub notification_targets: crate::notify::TargetPolicy,
}

/// What every reconciler shares: the client, the caches and the sinks.
pub struct Context {
    /// The operator's client (its own identity).
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// RoleSettings by name.
    pub role_settings: Store<RoleSetting>,
    /// All EligibleAssignments (the fields scans read, and each whole, compressed: see
    /// [`cached::assignment`]).
    pub assignments: Store<CachedAssignment>,
    /// All ActivationRequests (likewise: see [`cached::request`]).
    pub requests: Store<CachedRequest>,
    /// Which assignments are in which namespace (see [`index`]).
    pub assignment_namespaces: Arc<index::Index<CachedAssignment>>,
    /// Which requests are in which namespace (see [`index`]).
    pub request_namespaces: Arc<index::Index<CachedRequest>>,
    /// RoleBindings kube-pim made (label-selected; what is read of them, see [`cached`]), by
    /// name and by owner (see [`binding_cache`]).
    pub role_bindings: BindingCache<RoleBinding>,
    /// ClusterRoleBindings kube-pim made (likewise).
    pub cluster_role_bindings: BindingCache<ClusterRoleBinding>,
    /// ClusterRoles (for RolesFound).
    pub cluster_roles: Store<ClusterRole>,
    /// Kubernetes Events.
    pub recorder: events::Events,
    /// The audit stream.
    pub audit: audit::AuditLog,
    /// Cached `bind` answers for assignment writers (SPEC invariant 3).
    pub authz: crate::authz::Authorizer,
    /// Standing access: the policy's parameters, discovered unmanaged bindings.
    pub standing: standing::Standing,
    /// Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
    /// RoleSettings' notification webhooks.
    pub notifier: crate::notify::Notifier,
    /// Whether this replica leads (only the leader reconciles and writes).
    pub leader: Arc<crate::leader::Leadership>,
    /// Request versions this process has already written over (see [`Written`]).
    pub written: Written,
    /// Residual-access checks at a time (each asks up to 16 questions at once): a wave of
    /// expiries must not crowd out new activations and revocations on the apiserver.
    pub residual_slots: tokio::sync::Semaphore,
    /// Whether reconciles act: this replica leads and its start sweep is done (see `run`).
    /// Until then every controller runs, so that its subscriptions of the shared caches are
    /// read (unread, a cache stops updating after 1,024 events), but decides nothing.
    pub acting: std::sync::atomic::AtomicBool,
}

impl Context {
    /// Whether reconciles act now (see [`Context::acting`]).
    pub fn acting(&self) -> bool {
        self.acting.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Reconciles every object of a controller when this replica starts acting: until then its
/// reconciles returned without doing anything.
pub fn when_acting(
    rx: tokio::sync::mpsc::UnboundedReceiver<()>,
) -> impl futures::Stream<Item = ()> + Send + Sync + 'static {
    let mut rx = rx;
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Yields every `period`, first after one `period`: a controller's safety-net resync of every
/// object at once, for objects with nothing due at a time of their own. One timer for the
/// kind, where a requeue per object kept an entry in kube-runtime's scheduler for each (about
/// 570 bytes, so 5.7 MB at 10,000 assignments) for the whole period.
pub fn every(period: Duration) -> impl futures::Stream<Item = ()> + Send + Sync + 'static {
    futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(period).await;
        Some(((), ()))
    })
}

/// The safety-net resync of a kind: every object of `store` once per `period`, in turns of
/// 1/[`TURNS`] of them (by uid) every `period / TURNS`. For objects with nothing due at a time
/// of their own (which they schedule themselves, see `wake_for`).
///
/// Not a requeue per object: each kept an entry in kube-runtime's scheduler for the whole
/// period (about 570 bytes, 5.7 MB at 10,000 requests). Not all at once either: a burst of
/// 10,000 reconciles every period would hold up the activations queued behind it.
pub fn in_turn<K>(
    store: Store<K>,
    period: Duration,
) -> impl futures::Stream<Item = kube::runtime::reflector::ObjectRef<K>> + Send + 'static
where
    K: Watched,
{
    // At least 10 ms: a resync set to nothing must not become a busy loop over the cache.
    let tick = (period / TURNS).max(Duration::from_millis(10));
    let start = tokio::time::Instant::now();
    futures::stream::unfold((0u32, start), move |(turn, last)| {
        let store = store.clone();
        async move {
            // From the last turn's time, not from now: the turns' own work does not add up
            // into drift.
            let at = last + tick;
            tokio::time::sleep_until(at).await;
            let due: Vec<_> = store
                .state_filter(|o| turn_of(o) == turn)
                .iter()
                .map(|o| kube::runtime::reflector::ObjectRef::from_obj(o.as_ref()))
                .collect();
            Some((futures::stream::iter(due), ((turn + 1) % TURNS, at)))
        }
    })
    .flatten()
}

/// Turns per resync period (see [`in_turn`]).
pub const TURNS: u32 = 60;

/// Which turn of [`in_turn`] an object is resynced in.
fn turn_of<K: kube::Resource>(o: &K) -> u32 {
    let turn = uid_key(o.meta().uid.as_deref().unwrap_or_default()) % u128::from(TURNS);
    u32::try_from(turn).expect("below TURNS")
}

/// When to look at an object again by itself: at `due` if that comes within two resync
/// periods, else not (its resync, [`every`] or [`in_turn`], comes first). Of the resyncs before
/// `due` the last but one is one to two periods ahead of it: `due` is scheduled to the second
/// from there. (Within one period only, a `due` just after a tick of [`every`] waited behind
/// that tick's burst of reconciles.)
pub fn wake_for(
    due: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    resync: Duration,
) -> Option<Duration> {
    let horizon = TimeDelta::from_std(resync.saturating_mul(2)).unwrap_or(TimeDelta::MAX);
    due.filter(|t| *t - now <= horizon)
        .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
}

/// How many residual-access checks run at once.
pub const RESIDUAL_SLOTS: usize = 2;

/// Reconciles of one controller at a time. Unbounded (kube-runtime's default), a restart
/// with a thousand requests due starts a thousand reconciles at once: the apiserver's
/// priority and fairness queues for the operator's user overflow and answer 429 (each retried
/// after the 1 s Retry-After), and revocations wait behind bookkeeping. A reconcile takes a
/// few ms of the apiserver's time, so 16 at once is far above the sustained rate.
pub const RECONCILE_CONCURRENCY: u16 = 16;

/// The controller configuration every controller shares.
pub fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

/// Hashes what a controller reads of an object (for [`Trigger::keyed`]).
pub fn hash_of(x: impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

/// The resourceVersions of requests this process has successfully written over, by uid.
///
/// A reconcile can start from a cache that has not yet seen this process's own last write
/// (another trigger, such as the watch event of the binding just created, arrived first).
/// Deciding again from that version would repeat the writes and end in a conflict; so a
/// reconcile that finds the very version it already wrote over skips the pass: the watch
/// event of its own write is on its way and triggers the next one. Equality only, as
/// resourceVersions are opaque; and only for [`Written::TRUST`] after the write, so a version
/// that somehow comes back (an etcd restore) cannot make the operator skip a request forever.
#[derive(Debug, Default)]
pub struct Written(
    std::sync::Mutex<std::collections::HashMap<String, (Vec<String>, std::time::Instant)>>,
);

impl Written {
    /// How long a noted write is trusted to explain a stale cache.
    pub const TRUST: Duration = Duration::from_secs(10);

    /// `o` (as read) has just been written over successfully.
    pub fn note<K: kube::Resource>(&self, o: &K) {
        if let (Some(uid), Some(rv)) = (o.meta().uid.clone(), o.meta().resource_version.clone()) {
            let mut map = self.0.lock().expect("not poisoned");
            // Entries of requests deleted right after a write are never looked up again.
            if map.len() > 10_000 {
                map.retain(|_, (_, at)| at.elapsed() < Self::TRUST);
            }
            // A pass that commits and goes on to the grant writes twice: the cache may still
            // show either version written over.
            let entry = map
                .entry(uid)
                .or_insert_with(|| (Vec::new(), std::time::Instant::now()));
            if entry.0.len() >= 4 {
                entry.0.remove(0);
            }
            entry.0.push(rv);
            entry.1 = std::time::Instant::now();
        }
    }

    /// Whether `o` is a version this process wrote over moments ago (the cache is behind).
    pub fn is_stale<K: kube::Resource>(&self, o: &K) -> bool {
        let Some(uid) = o.meta().uid.as_deref() else {
            return false;
        };
        let mut map = self.0.lock().expect("not poisoned");
        match map.get(uid) {
            Some((rvs, at))
                if o.meta()
                    .resource_version
                    .as_ref()
                    .is_some_and(|rv| rvs.contains(rv))
                    && at.elapsed() < Self::TRUST =>
            {
                true
            }
            Some(_) => {
                map.remove(uid);
                false
            }
            None => false,
        }
    }

    /// `uid` is gone: nothing to remember.
    pub fn forget(&self, uid: &str) {
        self.0.lock().expect("not poisoned").remove(uid);
    }
}

/// How long a live read that confirms a cache's answer may take (see `activation::pass`,
/// `assignment::role_setting`): a revocation must not wait on a slow apiserver any longer.
pub(crate) const LIVE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `read`, given up after [`LIVE_READ_TIMEOUT`] as [`crate::Error::Timeout`] naming `what`.
pub(crate) async fn live_read<T>(
    what: impl FnOnce() -> String,
    read: impl std::future::Future<Output = Result<T, crate::Error>>,
) -> Result<T, crate::Error> {
    tokio::time::timeout(LIVE_READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(crate::Error::Timeout(what())))
}

impl Context {
    /// RoleSetting `name` from the cache, or read live when the cache does not have it (yet):
    /// each kind comes on its own watch, so a RoleSetting applied together with an assignment
    /// or a request can reach its cache after them. A missing RoleSetting costs one GET.
    pub async fn role_setting(&self, name: &str) -> Result<Option<Arc<RoleSetting>>, crate::Error> {
        match self
            .role_settings
            .get(&kube::runtime::reflector::ObjectRef::new(name))
        {
            Some(rs) => Ok(Some(rs)),
            None => Ok(self.live_role_setting(name).await?.map(Arc::new)),
        }
    }

    /// RoleSetting `name` read live, converted as the caches convert it ([`lenient`]): one
    /// kube-pim cannot read is taken as absent.
    pub async fn live_role_setting(&self, name: &str) -> Result<Option<RoleSetting>, crate::Error> {
        if name.is_empty() {
            return Ok(None);
        }
        let ar = kube::api::ApiResource::erase::<RoleSetting>(&());
        Ok(
            kube::Api::<kube::api::DynamicObject>::all_with(self.client.clone(), &ar)
                .get_opt(name)
                .await?
                .and_then(|o| lenient::typed::<RoleSetting>(o).ok()),
        )
    }

    /// The `/metrics` exposition, with the cache-derived gauges brought up to date first
    /// (from the watch caches only: a scrape makes no API call).
    pub fn scrape(&self) -> String {
        self.metrics.encode_after(|m| self.refresh_gauges(m))
    }

    /// Brings the cache-derived gauges up to date.
    fn refresh_gauges(&self, metrics: &crate::metrics::Metrics) {
        metrics.refresh_allocator();
        metrics
            .audit_sink_lag
            .set(self.audit.sink().map_or(0, |s| s.lag()) as i64);
        // A second's grace: a binding at its expiry is being revoked, not left behind.
        let now = chrono::Utc::now() - TimeDelta::seconds(1);
        let past = crate::sweep::count_past_expiry(
            self.role_bindings.state().iter().map(|b| b.annotations()),
            now,
        ) + crate::sweep::count_past_expiry(
            self.cluster_role_bindings
                .state()
                .iter()
                .map(|b| b.annotations()),
            now,
        );
        metrics
            .bindings_past_expiry
            .set(i64::try_from(past).unwrap_or(i64::MAX));
        metrics
            .unmanaged_bindings
            .set(i64::try_from(self.standing.total()).unwrap_or(i64::MAX));
        let role_settings = self.role_settings.state();
        let requests = self.requests.state();
        metrics.set_requests_by_phase(crate::metrics::requests_by_phase(
            role_settings
                .iter()
                .filter_map(|rs| rs.metadata.name.as_deref()),
            requests
                .iter()
                .map(|ar| (ar.spec.role_setting.as_str(), ar.phase())),
        ));
        metrics.leader.set(i64::from(self.leader.is_leader()));
    }
}

/// What one controller hears about one watched type: changed objects (from the shared cache)
/// and deleted ones. Shared cache subscriptions carry only changes (a subscriber looks the
/// object up in the cache, where a deleted one no longer is), so deletions come separately,
/// straight from the watch; losing them would mean not revoking when an assignment or a
/// RoleSetting is deleted, or not restoring a binding deleted by hand.
pub struct Trigger<K: 'static> {
    /// Created or updated objects.
    pub changed: futures::stream::BoxStream<'static, Arc<K>>,
    /// Deleted objects (their last state).
    pub deleted: tokio::sync::mpsc::UnboundedReceiver<Arc<K>>,
}

/// An object as JSON (for [`Trigger::ignoring`]): a typed object, or a cached one decoded.
pub trait AsJson {
    /// The whole object (`Null` if it cannot be had).
    fn as_json(&self) -> serde_json::Value;
}

impl AsJson for RoleSetting {
    fn as_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl AsJson for CachedAssignment {
    fn as_json(&self) -> serde_json::Value {
        match self.full().map(serde_json::to_value) {
            Ok(Ok(v)) => v,
            // Not decodable (a bug): each version differs, so every change still triggers.
            _ => serde_json::json!({ "undecodable": self.metadata.resource_version }),
        }
    }
}

impl<K> Trigger<K>
where
    K: Watched + AsJson,
{
    /// Only changes outside `ignored` (JSON pointers into the object, e.g. a status counter)
    /// trigger. Every activation updates its RoleSetting's and assignment's counters; without
    /// this each of those writes would wake every request of the RoleSetting (and every
    /// assignment), which is quadratic work under load.
    pub fn ignoring(self, ignored: &'static [&'static str]) -> Self {
        use std::hash::{Hash, Hasher};
        self.keyed(move |o: &K| {
            let mut v = o.as_json();
            for p in ["/metadata/resourceVersion", "/metadata/managedFields"]
                .iter()
                .chain(ignored)
            {
                if let Some((parent, field)) = p.rsplit_once('/')
                    && let Some(obj) = v.pointer_mut(parent).and_then(|x| x.as_object_mut())
                {
                    obj.remove(field);
                }
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v.to_string().hash(&mut h);
            h.finish()
        })
    }
}

impl<K> Trigger<K>
where
    K: Watched,
{
    /// Only changes of `key` (per object) trigger.
    pub fn keyed(self, key: impl Fn(&K) -> u64 + Send + 'static) -> Self {
        // What each object (by uid) last looked like. Deleted objects' entries are not
        // tracked; the map is reset when it grows past any realistic live count, which costs
        // one spurious trigger per object.
        let mut last: std::collections::HashMap<u128, u64> = Default::default();
        let changed = self
            .changed
            .filter(move |o| {
                if last.len() > 200_000 {
                    last.clear();
                }
                let k = key(o);
                let uid = uid_key(o.meta().uid.as_deref().unwrap_or_default());
                futures::future::ready(last.insert(uid, k) != Some(k))
            })
            .boxed();
        Self {
            changed,
            deleted: self.deleted,
        }
    }
}

/// A uid as a number, for maps with an entry per object: a uid is a UUID (128 bits, held
/// exactly), where a `String` key took 60 bytes more per entry (three such maps at 10,000
/// objects each). Anything else is hashed, into numbers no UUID maps to.
fn uid_key(uid: &str) -> u128 {
    // Only the canonical form (lowercase, hyphens at 8, 13, 18, 23), so that the mapping is
    // one-to-one: "4D1E..." or a hyphen elsewhere is another string, and is hashed.
    let canonical = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        });
    let hex: String = uid.chars().filter(|c| *c != '-').collect();
    match u128::from_str_radix(&hex, 16) {
        Ok(n) if canonical => n,
        // Below 2^64: never the value of a versioned UUID, whose version digit (1 to 8;
        // apiserver-made uids are version 4) is in its top 64 bits. (A canonical string with
        // version digit 0, such as the nil UUID, can share a number with a hash: maps keyed by
        // this hold no security decision, and the owner lookup compares the strings too.)
        _ => u128::from(hash_of(uid)),
    }
}

/// A resource type the controllers watch and cache (one name for the bounds every watch needs).
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// The objects of a controller's kind to reconcile when an object of `t` changes or is
/// deleted: `map` names them.
pub fn related<K, O, M, I>(t: Trigger<O>, map: M) -> BoxStream<'static, ObjectRef<K>>
where
    K: Watched,
    O: Send + Sync + 'static,
    M: Fn(Arc<O>) -> I + Clone + Send + Sync + 'static,
    I: IntoIterator<Item = ObjectRef<K>> + Send + 'static,
    I::IntoIter: Send,
{
    let on_delete = map.clone();
    let mut rx = t.deleted;
    let deleted = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .flat_map(move |o| futures::stream::iter(on_delete(o)));
    let changed = t.changed.flat_map(move |o| futures::stream::iter(map(o)));
    futures::stream::select(changed, deleted).boxed()
}

/// The objects of a subscription to a controller's own kind, each as it changes.
pub fn own<K: Watched>(
    changed: impl futures::Stream<Item = Arc<K>> + Send + 'static,
) -> BoxStream<'static, ObjectRef<K>> {
    changed.map(|o| ObjectRef::from_obj(o.as_ref())).boxed()
}

/// Every object of `store`, each time `tick` yields.
pub fn all_on<K: Watched>(
    store: Store<K>,
    tick: impl futures::Stream<Item = ()> + Send + 'static,
) -> BoxStream<'static, ObjectRef<K>> {
    tick.flat_map(move |()| {
        let all: Vec<_> = store
            .state()
            .iter()
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect();
        futures::stream::iter(all)
    })
    .boxed()
}

/// Runs the controller of `store`'s kind until shutdown: `events` (something happened) and
/// `bulk` (sweeps over every object) name the objects to reconcile, handed on to kube-runtime's
/// scheduler at the pace reconciles start, events first, once `synced` (the store has listed
/// its objects) says so ([`paced`]); `name` is for the logs and metrics.
#[allow(clippy::too_many_arguments)]
pub async fn run<K, F, Fut>(
    name: &'static str,
    store: Store<K>,
    mut synced: tokio::sync::watch::Receiver<bool>,
    events: Vec<BoxStream<'static, ObjectRef<K>>>,
    bulk: Vec<BoxStream<'static, ObjectRef<K>>>,
    reconcile: F,
    error_policy: fn(Arc<K>, &crate::Error, Arc<Context>) -> kube::runtime::controller::Action,
    ctx: Arc<Context>,
) where
    K: Watched,
    F: FnMut(Arc<K>, Arc<Context>) -> Fut,
    Fut: std::future::Future<Output = Result<kube::runtime::controller::Action, crate::Error>>
        + Send
        + 'static,
{
    let label = crate::metrics::ControllerLabels { controller: name };
    let metrics = paced::PaceMetrics {
        stale: ctx.metrics.stale_triggers.get_or_create(&label).clone(),
        in_flight: ctx.metrics.triggers_in_flight.get_or_create(&label).clone(),
    };
    let pace = paced::Pace::new(paced::PACE_LIMIT, metrics);
    let ready = async move {
        // An error: the watch task ended, which only happens at shutdown.
        let _ = synced.wait_for(|s| *s).await;
    };
    let queue = paced::paced(events, bulk, Box::pin(ready), pace.clone());
    paced::drive(
        store,
        queue,
        pace,
        reconcile,
        error_policy,
        ctx,
        |e| tracing::debug!(controller = name, error = %e, "reconcile"),
    )
    .await;
}

/// One watch of a resource type: its cache, and triggers for the controllers it concerns.
struct Shared<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    wc: watcher::Config,
    reader: Store<K>,
    writer: reflector::store::Writer<K>,
    deletes: Vec<tokio::sync::mpsc::UnboundedSender<Arc<K>>>,
    index: Option<Arc<index::Index<K>>>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl<K> Shared<K>
where
    K: Watched,
{
    fn new(api: Api<K>, wc: watcher::Config) -> Self {
        let (reader, writer) = reflector::store_shared(1024);
        Self {
            api,
            wc,
            reader,
            writer,
            deletes: Vec::new(),
            index: None,
            synced: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Turns true once the cache has listed its objects. Not `Store::wait_until_ready`: its
    /// future wakes only the task that polled it last, and the controller whose primary cache
    /// this is waits on it too. With both waiting, readiness came 10 s late (when a timer
    /// polled again); polled with `now_or_never`, it could leave the controller never woken.
    fn synced(&self) -> (String, tokio::sync::watch::Receiver<bool>) {
        (K::kind(&()).into_owned(), self.synced.subscribe())
    }

    /// Keeps `index` of the cache up to date; returns it.
    fn indexed(&mut self, index: index::Index<K>) -> Arc<index::Index<K>> {
        self.index.get_or_insert_with(|| Arc::new(index)).clone()
    }

    /// A stream of changed objects for one more controller.
    fn subscribe(&self) -> reflector::ReflectHandle<K> {
        self.writer
            .subscribe()
            .expect("shared stores hand out subscriptions")
    }

    /// Changes and deletions for one more controller.
    fn trigger(&mut self) -> Trigger<K> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.deletes.push(tx);
        Trigger {
            changed: self.subscribe().boxed(),
            deleted: rx,
        }
    }

    /// Starts the watch that feeds the cache and every subscription; returns the cache.
    fn start(self) -> Store<K> {
        let deletes = self.deletes;
        let index = self.index;
        let synced = self.synced;
        let stream = lenient::watch::<K>(self.api.into_client(), self.wc)
            .modify(|o: &mut K| {
                // Caches hold what reconcilers read; managedFields is never read.
                o.meta_mut().managed_fields = None;
            })
            // The index first: an object in the cache is already in the index.
            .map(move |ev| {
                if let (Ok(ev), Some(index)) = (&ev, &index) {
                    index.observe(ev);
                }
                ev
            })
            .reflect_shared(self.writer)
            .for_each(move |ev| {
                match ev {
                    Ok(watcher::Event::Delete(o)) => {
                        let o = Arc::new(o);
                        for tx in &deletes {
                            let _ = tx.send(o.clone());
                        }
                    }
                    // Applied to the cache by `reflect_shared` before it got here.
                    Ok(watcher::Event::InitDone) => {
                        synced.send_replace(true);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, kind = %K::kind(&()), "watch error; retrying with backoff"),
                }
                async {}
            });
        tokio::spawn(stream);
        self.reader
    }
}

/// Waits until every cache has listed its objects, warning every 10 s about those that have not.
async fn caches_synced(caches: Vec<(String, tokio::sync::watch::Receiver<bool>)>) {
    let all = futures::future::join_all(caches.iter().cloned().map(|(kind, mut rx)| async move {
        // An error: the watch task ended, which only happens at shutdown.
        let _ = rx.wait_for(|s| *s).await;
        tracing::debug!(kind, "cache synced");
    }));
    tokio::pin!(all);
    loop {
        tokio::select! {
            _ = &mut all => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                let pending: Vec<&str> = caches
                    .iter()
                    .filter(|(_, rx)| !*rx.borrow())
                    .map(|(kind, _)| kind.as_str())
                    .collect();
                tracing::warn!(?pending, "caches not synced yet");
            }
        }
    }
}

/// Starts the watches and returns the shared context (for the webhook too) and the future that
/// runs every controller until shutdown; `on_ready` is called once every cache has synced.
pub fn start(
    client: Client,
    settings: Settings,
    audit: audit::AuditLog,
    leader: Arc<crate::leader::Leadership>,
    on_ready: impl FnOnce() + Send + 'static,
) -> (Arc<Context>, BoxFuture<'static, ()>) {
    let wc = watcher::Config::default();
    let managed = watcher::Config::default().labels(MANAGED_SELECTOR);
    let mut rs = Shared::new(Api::<RoleSetting>::all(client.clone()), wc.clone());
    let mut ea = Shared::new(Api::<CachedAssignment>::all(client.clone()), wc.clone());
    let mut ar = Shared::new(Api::<CachedRequest>::all(client.clone()), wc.clone());
    let request_namespaces = ar.indexed(index::Index::by_namespace());
    let assignment_namespaces = ea.indexed(index::Index::by_namespace());
    let mut rb = binding_cache::Watch::<RoleBinding>::new(client.clone(), managed.clone());
    let mut crb = binding_cache::Watch::<ClusterRoleBinding>::new(client.clone(), managed);
    let mut cr = Shared::new(Api::<ClusterRole>::all(client.clone()), wc);
    let caches = vec![
        rs.synced(),
        ea.synced(),
        ar.synced(),
        rb.synced(),
        crb.synced(),
        cr.synced(),
    ];

    // The counters an activation moves are read by no request and no assignment.
    const RS_COUNTERS: &[&str] = &["/status/activeActivations", "/status/assignments"];
    const EA_COUNTERS: &[&str] = &["/status/activations", "/status/lastActivationTime"];
    let activation_triggers = activation::Triggers {
        synced: ar.synced().1,
        requests: ar.subscribe(),
        extensions: ar.subscribe(),
        role_settings: rs.trigger().ignoring(RS_COUNTERS),
        assignments: ea.trigger().ignoring(EA_COUNTERS),
        role_bindings: rb.trigger(),
        cluster_role_bindings: crb.trigger(),
    };
    let assignment_triggers = assignment::Triggers {
        synced: ea.synced().1,
        assignments: ea.subscribe(),
        role_settings: rs.trigger().ignoring(RS_COUNTERS),
        role_bindings: rb.trigger(),
        cluster_role_bindings: crb.trigger(),
    };
    let (discovered_tx, discovered_rx) = tokio::sync::mpsc::unbounded_channel();
    let role_setting_triggers = role_setting::Triggers {
        synced: rs.synced().1,
        discovered: discovered_rx,
        role_settings: rs.subscribe(),
        // A RoleSetting's status counts the assignments naming it and its Active requests:
        // nothing else about them needs its reconcile.
        assignments: ea.trigger().keyed(|ea| hash_of(&ea.spec.role_setting)),
        requests: ar.trigger().keyed(|ar| {
            hash_of((
                &ar.spec.role_setting,
                format!("{:?}", ar.status.as_ref().and_then(|s| s.phase)),
            ))
        }),
        cluster_roles: cr.trigger(),
    };

    let reporter = Reporter {
        controller: "kube-pim".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let metrics = crate::metrics::Metrics::default();
    let notifier = crate::notify::Notifier::new(
        crate::notify::Settings::new(settings.notification_targets.clone(), &settings.namespace),
        client.clone(),
        metrics.notifications.clone(),
    );
    let ctx = Arc::new(Context {
        recorder: events::Events::new(client.clone(), reporter),
        authz: crate::authz::Authorizer::new(client.clone(), settings.resync / 2),
        standing: Default::default(),
        metrics,
        notifier,
        leader,
        written: Written::default(),
        residual_slots: tokio::sync::Semaphore::new(RESIDUAL_SLOTS),
        acting: Default::default(),
        client,
        settings,
        role_settings: rs.start(),
        assignments: ea.start(),
        request_namespaces,
        assignment_namespaces,
        requests: ar.start(),
        role_bindings: rb.start(),
        cluster_role_bindings: crb.start(),
        cluster_roles: cr.start(),
        audit,
    });

    // Caches first, then everything else: a controller that reconciled from a half-synced
    // view would see, say, a request's RoleSetting as missing and revoke valid access (seen in
    // the restart test before this gate existed).
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let (swept_tx, swept_rx) = tokio::sync::watch::channel(false);
    let (acting_tx, mut acting_rx): (Vec<_>, Vec<_>) = (0..3)
        .map(|_| tokio::sync::mpsc::unbounded_channel())
        .map(|(tx, rx)| (tx, Some(rx)))
        .unzip();
    let readiness = {
        let ctx = ctx.clone();
        async move {
            caches_synced(caches).await;
            tracing::info!("caches synced");
            let _ = synced_tx.send(true);
            on_ready();
            // Orphaned bindings: at start, then periodically (every resync, at most 30 s);
            // the standing-access parameters and discovery ride along (each every resync).
            let every = ctx.settings.resync.min(Duration::from_secs(30));
            loop {
                // Followers only watch (and serve the webhook); the leader does the rounds.
                ctx.leader.acquired().await;
                match activation::sweep_orphans(&ctx).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "orphaned bindings removed"),
                    Err(e) => {
                        tracing::warn!(error = %e, "orphan sweep failed; retrying next round")
                    }
                }
                // The controllers start after the first sweep (see `run`).
                let _ = swept_tx.send(true);
                if let Err(e) = standing::check_params(&ctx).await {
                    tracing::warn!(error = %e, "could not write the standing-access parameters; retrying next round");
                }
                match standing::discover_if_due(&ctx).await {
                    Ok(true) => {
                        let _ = discovered_tx.send(());
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "discovery of unmanaged bindings failed; retrying next round")
                    }
                }
                tokio::time::sleep(every).await;
            }
        }
    };

    let controllers: Vec<BoxFuture<'static, ()>> = vec![
        Box::pin(activation::controller(
            ctx.clone(),
            activation_triggers,
            when_acting(acting_rx[0].take().expect("once")),
        )),
        Box::pin(assignment::controller(
            ctx.clone(),
            assignment_triggers,
            when_acting(acting_rx[1].take().expect("once")),
        )),
        Box::pin(role_setting::controller(
            ctx.clone(),
            role_setting_triggers,
            when_acting(acting_rx[2].take().expect("once")),
        )),
    ];
    // Readiness and the periodic sweep run beside the controllers; they end with the process
    // (the controllers end on SIGTERM, and with them `run`).
    tokio::spawn(readiness);
    let gate = ctx.clone();
    let opening = async move {
        let mut synced = synced_rx;
        if synced.wait_for(|s| *s).await.is_err() {
            return;
        }
        // Expired access goes first: after an outage the start sweep deletes every binding
        // past its expiry in bulk, before the controllers' reconciles (a request each, with
        // its status, Events and checks) compete with it for the apiserver. It runs once
        // this replica leads; a sweep that takes long (a slow apiserver) holds the
        // reconciles back for 10 s at most, since deactivations wait on them.
        gate.leader.acquired().await;
        let mut swept = swept_rx;
        let _ = tokio::time::timeout(Duration::from_secs(10), swept.wait_for(|s| *s)).await;
        gate.acting
            .store(true, std::sync::atomic::Ordering::Release);
        for tx in acting_tx {
            let _ = tx.send(());
        }
        // Leadership is not given back: a replica that loses it exits (see `leader`).
    };
    let run = Box::pin(async move {
        // The controllers run from the start (followers too): they keep reading their
        // subscriptions; their reconciles act once `opening` is done.
        futures::future::join(opening, futures::future::join_all(controllers)).await;
    });
    (ctx, run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_looks_different_to_the_triggers_at_each_version_even_undecodable() {
        let at = |rv: &str| {
            let mut ea = crate::decide::test_fixtures::assignment(
                "alice-admin",
                "payments",
                "rs",
                crate::decide::test_fixtures::user("alice"),
            );
            ea.metadata.resource_version = Some(rv.into());
            CachedAssignment::from(ea)
        };
        assert_eq!(at("1").as_json()["spec"]["roleSetting"], "rs", "decoded");
        // A bug that leaves a body undecodable must not make every version look alike (its
        // changes would stop waking its requests).
        let (a, b) = (at("1").undecodable(), at("2").undecodable());
        assert_ne!(a.as_json(), b.as_json());
        assert_ne!(a.as_json(), serde_json::Value::Null);
    }

    fn at(rv: &str) -> crate::api::ActivationRequest {
        let mut ar: crate::api::ActivationRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
            "metadata": {"name": "a", "namespace": "n", "uid": "u1", "resourceVersion": rv},
            "spec": {"roleSetting": "rs", "requester": {"username": "alice"}}
        }))
        .expect("valid");
        ar.metadata.resource_version = Some(rv.into());
        ar
    }

    fn splitmix(i: u64) -> u64 {
        let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[tokio::test(start_paused = true)]
    async fn every_object_has_its_turn_once_a_period_and_the_turns_are_even() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let (reader, mut writer) = reflector::store::<ConfigMap>();
        let n = 600;
        for i in 0..n {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(format!("cm{i}"));
            cm.metadata.namespace = Some("ns".into());
            // As the apiserver makes them: random version-4 UUIDs (here from splitmix64, a
            // fixed generator, so the test does not depend on std's hasher).
            let r =
                u128::from(splitmix(2 * i as u64)) << 64 | u128::from(splitmix(2 * i as u64 + 1));
            let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
            let h = format!("{r:032x}");
            cm.metadata.uid = Some(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ));
            writer.apply_watcher_event(&watcher::Event::Apply(cm));
        }
        let period = Duration::from_secs(60);
        let t0 = tokio::time::Instant::now();
        let mut visits: std::collections::HashMap<String, Vec<Duration>> = Default::default();
        let mut turns = Box::pin(in_turn(reader, period));
        // Two whole periods (the clock is paused: it moves only as the turns sleep).
        let _ = tokio::time::timeout(period * 2 + period / TURNS / 2, async {
            while let Some(r) = turns.next().await {
                visits.entry(r.name).or_default().push(t0.elapsed());
            }
        })
        .await;
        assert_eq!(visits.len(), n, "every object had a turn");
        for (name, at) in &visits {
            assert_eq!(at.len(), 2, "{name}: once per period");
            assert_eq!(at[1] - at[0], period, "{name}: a period apart");
        }
        let mut per_turn: std::collections::HashMap<Duration, usize> = Default::default();
        for at in visits.values() {
            *per_turn.entry(at[0]).or_default() += 1;
        }
        let average = n / TURNS as usize;
        assert!(
            per_turn.values().all(|c| *c <= average * 2),
            "no turn takes more than twice its share: {per_turn:?}"
        );
    }

    #[test]
    fn uids_are_keyed_exactly_and_anything_else_apart_from_them() {
        let a = uid_key("4d1e1eea-9e3c-422b-a007-fae8b342ff45");
        assert_eq!(a, 0x4d1e1eea_9e3c_422b_a007_fae8b342ff45);
        assert_ne!(a, uid_key("4d1e1eea-9e3c-422b-a007-fae8b342ff46"));
        for odd in [
            "",
            "not-a-uid",
            "+d1e1eea-9e3c-422b-a007-fae8b342ff45",
            "4D1E1EEA-9E3C-422B-A007-FAE8B342FF45",
            "4d1e1eea9e3c-422b-a007-fae8b342ff45-",
        ] {
            assert!(uid_key(odd) < 1 << 64, "{odd:?} is hashed, below any UUID");
        }
        assert_ne!(uid_key("x"), uid_key("y"));
    }

    #[tokio::test(start_paused = true)]
    async fn caches_are_synced_as_soon_as_the_last_one_lists() {
        let (a, b) = (
            tokio::sync::watch::Sender::new(false),
            tokio::sync::watch::Sender::new(false),
        );
        // Another waiter on the same cache, as a controller is on its primary cache.
        let mut other = b.subscribe();
        let other = tokio::spawn(async move { other.wait_for(|s| *s).await.is_ok() });
        let waiting = tokio::spawn(caches_synced(vec![
            ("A".into(), a.subscribe()),
            ("B".into(), b.subscribe()),
        ]));
        tokio::task::yield_now().await;
        a.send_replace(true);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "B has not listed yet");
        // The clock is paused: it moves only when every task waits on a timer, so an
        // unchanged clock means the sync woke both waiters, not the 10 s warning timer.
        let t0 = tokio::time::Instant::now();
        b.send_replace(true);
        waiting.await.expect("caches_synced");
        assert!(
            other.await.expect("other waiter"),
            "the other waiter woke too"
        );
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[test]
    fn only_the_version_just_written_over_is_stale() {
        let w = Written::default();
        assert!(!w.is_stale(&at("5")), "nothing written yet");
        w.note(&at("5"));
        assert!(w.is_stale(&at("5")), "the cache has not caught up");
        assert!(w.is_stale(&at("5")), "still behind: still stale");
        assert!(!w.is_stale(&at("6")), "caught up");
        assert!(
            !w.is_stale(&at("5")),
            "forgotten once caught up: a version that comes back is decided on"
        );
        // Two writes in one pass (the commit, then Active): both versions are behind.
        w.note(&at("6"));
        w.note(&at("7"));
        assert!(w.is_stale(&at("6")) && w.is_stale(&at("7")));
        w.forget("u1");
        assert!(!w.is_stale(&at("7")));
    }
}
