//! Prometheus metrics, served at `/metrics` on the health port (every metric and the alerts
//! they support are described in `docs/observability.md`).
//!
//! Two kinds, on purpose:
//! - **State** gauges (requests by phase, bindings past their expiry, unmanaged bindings, who
//!   leads) are computed from the watch caches when scraped: never stale, exact after a
//!   restart, and they cost no API call.
//! - **Event** counters and histograms are bumped where things happen. Request transitions are
//!   counted by the process whose status write committed them, right after the apiserver
//!   accepted the write ([`observations`]): a reconcile that is retried after a conflict
//!   committed nothing and counts nothing, and a crash between the commit and the count loses
//!   that one increment rather than doubling it.
//!
//! Labels are low-cardinality by construction: RoleSetting names (written by administrators
//! who may bind their roles), phases, actions and fixed reason codes; never a user or request
//! name.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicU64},
    },
};

use chrono::{DateTime, Utc};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{
    Error,
    api::{ActivationRequest, ActivationRequestStatus, HistoryAction, RequestPhase},
    decide::request::{CONDITION_APPROVED, is_terminal},
};

/// Requests → Approved by approvers: people take seconds to hours.
pub const APPROVAL_BUCKETS: [f64; 14] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
    86400.0,
];
/// Request created → Active: from an automatic activation (well under a second) to one that
/// waited for people (hours).
pub const TIME_TO_ACTIVATION_BUCKETS: [f64; 17] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
    28800.0, 86400.0,
];
/// The operator's own latencies (activation after the decision, revocation after expiry):
/// milliseconds normally, with room for an operator that was down (minutes to an hour).
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    1800.0, 3600.0,
];
/// Admission webhook requests: the apiserver gives up after 10 s by default.
pub const WEBHOOK_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The `phase` label of a request the operator has not written a status to yet.
pub const PHASE_NEW: &str = "New";

/// Every phase a request can be in, as its label value (zero-filled per RoleSetting, so an
/// alert on `phase="Active"` sees 0 rather than no series).
pub const PHASES: [&str; 12] = [
    PHASE_NEW,
    "Pending",
    "Scheduled",
    "Active",
    "Expired",
    "Denied",
    "TimedOut",
    "Canceled",
    "Deactivated",
    "Revoked",
    "Superseded",
    "Failed",
];

/// A request phase as a label value.
pub fn phase_name(p: RequestPhase) -> &'static str {
    match p {
        RequestPhase::Pending => "Pending",
        RequestPhase::Scheduled => "Scheduled",
        RequestPhase::Active => "Active",
        RequestPhase::Expired => "Expired",
        RequestPhase::Denied => "Denied",
        RequestPhase::TimedOut => "TimedOut",
        RequestPhase::Canceled => "Canceled",
        RequestPhase::Deactivated => "Deactivated",
        RequestPhase::Revoked => "Revoked",
        RequestPhase::Superseded => "Superseded",
        RequestPhase::Failed => "Failed",
    }
}

/// A history action as a label value (the same word as the Event reason and the audit line).
pub fn action_name(a: HistoryAction) -> &'static str {
    match a {
        HistoryAction::Requested => "Requested",
        HistoryAction::Approved => "Approved",
        HistoryAction::Denied => "Denied",
        HistoryAction::Scheduled => "Scheduled",
        HistoryAction::Activated => "Activated",
        HistoryAction::AssignmentSwitched => "AssignmentSwitched",
        HistoryAction::Expired => "Expired",
        HistoryAction::TimedOut => "TimedOut",
        HistoryAction::Canceled => "Canceled",
        HistoryAction::Deactivated => "Deactivated",
        HistoryAction::Revoked => "Revoked",
        HistoryAction::Superseded => "Superseded",
        HistoryAction::Failed => "Failed",
    }
}

/// Labels of `kube_pim_activation_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The request's RoleSetting.
    pub role_setting: String,
    /// Its phase ([`PHASES`]).
    pub phase: &'static str,
}

/// Labels of `kube_pim_activation_transitions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The request's RoleSetting.
    pub role_setting: String,
    /// The history action ([`action_name`]).
    pub action: &'static str,
}

/// Labels of `kube_pim_revocation_lag_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevocationLabels {
    /// `expired`, `deactivated` or `revoked`.
    pub reason: &'static str,
}

/// Labels of `kube_pim_webhook_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `mutate` or `validate`.
    pub webhook: &'static str,
    /// [`webhook_resource`].
    pub resource: &'static str,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: &'static str,
}

/// Labels of `kube_pim_webhook_denials_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    /// [`webhook_resource`].
    pub resource: &'static str,
    /// The refusal's stable code ([`crate::webhook::review::Reason`]).
    pub reason: &'static str,
}

/// Labels of `kube_pim_reconcile_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileErrorLabels {
    /// `activation`, `assignment` or `role_setting`.
    pub controller: &'static str,
    /// [`error_kind`].
    pub kind: &'static str,
}

/// Labels of metrics per controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `activation`, `assignment` or `role_setting`.
    pub controller: &'static str,
}

/// Labels of `kube_pim_allocator_bytes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AllocatorLabels {
    /// jemalloc's statistic: `allocated` (live data), `active` (pages holding live data),
    /// `resident` (pages the allocator holds in memory, an upper bound), `metadata`,
    /// `retained` (address space kept mapped whose pages were given back).
    pub kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Labels of dropped notifications.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `queue_full` (the receiver's queue was at its bound), `expired` (not delivered within
    /// the maximum age), `refused` (the target is not allowed).
    pub reason: &'static str,
}

/// The notifier's metrics (cheap to clone: the handles share their values).
#[derive(Clone, Default)]
pub struct NotificationMetrics {
    /// Notifications a receiver accepted (2xx).
    pub sent: Counter<u64, AtomicU64>,
    /// Delivery attempts that failed (each retry counts).
    pub failed: Counter<u64, AtomicU64>,
    /// Notifications given up on, by reason.
    pub dropped: Family<DropLabels, Counter<u64, AtomicU64>>,
    /// Notifications waiting for delivery, over all receivers.
    pub queued: Gauge<i64, AtomicI64>,
}

impl NotificationMetrics {
    /// One notification dropped for `reason`.
    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&DropLabels { reason }).inc();
    }
}

/// kube-pim's metrics.
pub struct Metrics {
    registry: Registry,
    /// Held while the state gauges are recomputed and encoded: two scrapes at once must not
    /// see each other's half-rebuilt families.
    scrape: Mutex<()>,
    /// Bindings this process deleted for a request whose ending transition is not committed
    /// yet (request uid → first deletion): the revocation lag is measured from the deletion,
    /// and observed once the transition commits, whatever retries happened in between.
    revoked: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Managed bindings whose `kubepim.io/expires-at` passed more than a second ago and that
    /// still exist (should stay 0: the operator revokes at expiry, `kube-pim sweep` after).
    pub bindings_past_expiry: Gauge<i64, AtomicI64>,
    /// Revocations after which the former requester could still use the role.
    pub residual_access: Counter<u64, AtomicU64>,
    /// Bindings of governed roles not made by kube-pim, as last discovered.
    pub unmanaged_bindings: Gauge<i64, AtomicI64>,
    /// ActivationRequests by RoleSetting and phase (from the cache, at scrape).
    pub activation_requests: Family<PhaseLabels, Gauge<i64, AtomicI64>>,
    /// Committed request transitions by RoleSetting and history action.
    pub activation_transitions: Family<TransitionLabels, Counter<u64, AtomicU64>>,
    /// Request created → approval quorum committed (approval required only).
    pub time_to_approval: Histogram,
    /// Request created → Active committed (not for scheduled starts).
    pub time_to_activation: Histogram,
    /// Access due (decision committed, or scheduled start) → Active committed.
    pub activation_latency: Histogram,
    /// Reference time → bindings deleted, by reason.
    pub revocation_lag: HistogramFamily<RevocationLabels>,
    /// Admission webhook request latency.
    pub webhook_duration: HistogramFamily<WebhookLabels>,
    /// Admission webhook refusals by reason code.
    pub webhook_denials: Family<DenialLabels, Counter<u64, AtomicU64>>,
    /// Failed reconciles by controller and error kind.
    pub reconcile_errors: Family<ReconcileErrorLabels, Counter<u64, AtomicU64>>,
    /// Triggers handed to kube-runtime's scheduler whose reconcile had not started 30 s later,
    /// by controller (should stay 0; see `controller::paced`). A new reconcile of an object
    /// waits for the running one, so a reconcile stuck behind an apiserver that does not
    /// answer counts here too.
    pub stale_triggers: Family<ControllerLabels, Counter<u64, AtomicU64>>,
    /// Triggers handed to kube-runtime's scheduler whose reconcile has not started yet, by
    /// controller (at most 64 each; 0 when the controller is idle).
    pub triggers_in_flight: Family<ControllerLabels, Gauge<i64, AtomicI64>>,
    /// 1 while this replica holds the leader Lease (or runs without election).
    pub leader: Gauge<i64, AtomicI64>,
    /// Notification delivery.
    pub notifications: NotificationMetrics,
    /// Audit lines written but not yet accepted by the audit sink.
    pub audit_sink_lag: Gauge<i64, AtomicI64>,
    /// The memory allocator's own statistics, by kind ([`AllocatorLabels`]): what of the
    /// process's resident memory is live data and what the allocator keeps.
    pub allocator: Family<AllocatorLabels, Gauge<i64, AtomicI64>>,
}

fn histogram<const N: usize>(buckets: &'static [f64; N]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kube_pim");
        let bindings_past_expiry = Gauge::default();
        registry.register(
            "bindings_past_expiry",
            "Managed bindings still present more than 1s after their kubepim.io/expires-at (should stay 0)",
            bindings_past_expiry.clone(),
        );
        let residual_access = Counter::default();
        registry.register(
            "residual_access",
            "Revocations after which the former requester could still use the role",
            residual_access.clone(),
        );
        let unmanaged_bindings = Gauge::default();
        registry.register(
            "unmanaged_bindings",
            "Bindings of governed ClusterRoles not made by kube-pim (last discovery, by the leader)",
            unmanaged_bindings.clone(),
        );
        let activation_requests = Family::default();
        registry.register(
            "activation_requests",
            "ActivationRequests by RoleSetting and phase, as the watch cache holds them now (New: no status yet)",
            activation_requests.clone(),
        );
        let activation_transitions = Family::default();
        registry.register(
            "activation_transitions",
            "ActivationRequest history transitions committed by this process, by RoleSetting and action",
            activation_transitions.clone(),
        );
        let time_to_approval = histogram(&APPROVAL_BUCKETS);
        registry.register_with_unit(
            "time_to_approval",
            "Request created to approval quorum committed, for RoleSettings that require approval",
            Unit::Seconds,
            time_to_approval.clone(),
        );
        let time_to_activation = histogram(&TIME_TO_ACTIVATION_BUCKETS);
        registry.register_with_unit(
            "time_to_activation",
            "Request created to Active committed (bindings exist), approval included; scheduled starts excluded",
            Unit::Seconds,
            time_to_activation.clone(),
        );
        let activation_latency = histogram(&LATENCY_BUCKETS);
        registry.register_with_unit(
            "activation_latency",
            "Access due (decision committed, or the scheduled start) to Active committed: the operator's own part",
            Unit::Seconds,
            activation_latency.clone(),
        );
        let revocation_lag: HistogramFamily<RevocationLabels> =
            Family::new_with_constructor(|| histogram(&LATENCY_BUCKETS));
        registry.register_with_unit(
            "revocation_lag",
            "Bindings deleted minus expirationTime (reason expired) or minus the operator's decision (deactivated, revoked)",
            Unit::Seconds,
            revocation_lag.clone(),
        );
        let webhook_duration: HistogramFamily<WebhookLabels> =
            Family::new_with_constructor(|| histogram(&WEBHOOK_BUCKETS));
        registry.register_with_unit(
            "webhook_request_duration",
            "Admission webhook request handling time, by webhook, resource and operation",
            Unit::Seconds,
            webhook_duration.clone(),
        );
        let webhook_denials = Family::default();
        registry.register(
            "webhook_denials",
            "Admission requests refused by kube-pim's webhook, by resource and reason code",
            webhook_denials.clone(),
        );
        let reconcile_errors = Family::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles (retried), by controller and error kind",
            reconcile_errors.clone(),
        );
        let stale_triggers = Family::default();
        registry.register(
            "stale_triggers",
            "Triggers whose reconcile had not started 30s after they were handed to the scheduler, by controller (should stay 0: a reconcile stuck behind an unanswering apiserver, or a bug)",
            stale_triggers.clone(),
        );
        let triggers_in_flight = Family::default();
        registry.register(
            "triggers_in_flight",
            "Triggers handed to kube-runtime's scheduler whose reconcile has not started yet, by controller (at most 64; 0 when idle)",
            triggers_in_flight.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica leads (reconciles and writes), 0 while it only watches and serves the webhook",
                        leader.clone(),
        );
        let audit_sink_lag = Gauge::default();
        registry.register(
            "audit_sink_lag_records",
            "Audit lines written but not yet accepted by the audit sink (0 without a sink)",
            audit_sink_lag.clone(),
        );
        let allocator = Family::default();
        registry.register(
            "allocator_bytes",
            "jemalloc's statistics, by kind: allocated (live data), active (pages holding it), resident (pages it holds in memory, an upper bound), metadata, retained (address space kept mapped, its pages given back)",
            allocator.clone(),
        );
        let notifications = NotificationMetrics::default();
        registry.register(
            "notifications_sent",
            "Notifications a receiver accepted (2xx)",
            notifications.sent.clone(),
        );
        registry.register(
            "notifications_failed",
            "Notification delivery attempts that failed (each retry counts)",
            notifications.failed.clone(),
        );
        registry.register(
            "notifications_dropped",
            "Notifications given up on, by reason (queue_full, expired, refused)",
            notifications.dropped.clone(),
        );
        registry.register(
            "notifications_queued",
            "Notifications waiting for delivery, over all receivers",
            notifications.queued.clone(),
        );
        Self {
            registry,
            scrape: Mutex::default(),
            revoked: Mutex::default(),
            bindings_past_expiry,
            residual_access,
            unmanaged_bindings,
            activation_requests,
            activation_transitions,
            time_to_approval,
            time_to_activation,
            activation_latency,
            revocation_lag,
            webhook_duration,
            webhook_denials,
            reconcile_errors,
            stale_triggers,
            triggers_in_flight,
            leader,
            notifications,
            audit_sink_lag,
            allocator,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition, after `refresh` has brought the state gauges up to date
    /// (both under one lock, so concurrent scrapes each see a whole picture).
    pub fn encode_after(&self, refresh: impl FnOnce(&Self)) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        refresh(self);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The Prometheus text exposition as the metrics stand.
    pub fn encode(&self) -> String {
        self.encode_after(|_| {})
    }

    /// Brings `kube_pim_allocator_bytes` up to date from jemalloc's statistics (a snapshot
    /// taken now: they are cached until the epoch advances). Where the process does not
    /// allocate with jemalloc (tests, the benchmark) they are jemalloc's own few bytes.
    pub fn refresh_allocator(&self) {
        use tikv_jemalloc_ctl::{epoch, stats};
        if epoch::advance().is_err() {
            return;
        }
        type Read = fn() -> tikv_jemalloc_ctl::Result<usize>;
        let read: [(&'static str, Read); 5] = [
            ("allocated", stats::allocated::read),
            ("active", stats::active::read),
            ("resident", stats::resident::read),
            ("metadata", stats::metadata::read),
            ("retained", stats::retained::read),
        ];
        for (kind, value) in read {
            if let Ok(v) = value() {
                self.allocator
                    .get_or_create(&AllocatorLabels { kind })
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
    }

    /// Replaces the requests-by-phase gauge with `counts` ([`requests_by_phase`]).
    pub fn set_requests_by_phase(&self, counts: BTreeMap<(String, &'static str), i64>) {
        self.activation_requests.clear();
        for ((role_setting, phase), n) in counts {
            self.activation_requests
                .get_or_create(&PhaseLabels {
                    role_setting,
                    phase,
                })
                .set(n);
        }
    }

    /// Notes that this process deleted bindings of request `uid` for an ending transition
    /// that is about to be written (the first deletion counts; see [`Metrics::take_revoked`]).
    pub fn note_revoked(&self, uid: &str, at: DateTime<Utc>) {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(uid.to_string())
            .or_insert(at);
    }

    /// When this process first deleted bindings of request `uid` since its last ending
    /// transition was committed; forgets it.
    pub fn take_revoked(&self, uid: &str) -> Option<DateTime<Utc>> {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid)
    }

    /// Records what a committed status write tells ([`observations`]).
    pub fn record(&self, role_setting: &str, observations: &[Observation]) {
        for o in observations {
            match *o {
                Observation::Transition(action) => {
                    self.activation_transitions
                        .get_or_create(&TransitionLabels {
                            role_setting: role_setting.to_string(),
                            action,
                        })
                        .inc();
                }
                Observation::TimeToApproval(s) => self.time_to_approval.observe(s),
                Observation::TimeToActivation(s) => self.time_to_activation.observe(s),
                Observation::ActivationLatency(s) => self.activation_latency.observe(s),
                Observation::RevocationLag(reason, s) => self
                    .revocation_lag
                    .get_or_create(&RevocationLabels { reason })
                    .observe(s),
            }
        }
    }

    /// One admission request handled in `seconds`.
    pub fn webhook_request(
        &self,
        webhook: &'static str,
        resource: &'static str,
        operation: &'static str,
        seconds: f64,
    ) {
        self.webhook_duration
            .get_or_create(&WebhookLabels {
                webhook,
                resource,
                operation,
            })
            .observe(seconds);
    }

    /// One admission request refused, with its reason code.
    pub fn webhook_denied(&self, resource: &'static str, reason: &'static str) {
        self.webhook_denials
            .get_or_create(&DenialLabels { resource, reason })
            .inc();
    }

    /// One failed reconcile of `controller`.
    pub fn reconcile_error(&self, controller: &'static str, e: &Error) {
        self.reconcile_errors
            .get_or_create(&ReconcileErrorLabels {
                controller,
                kind: error_kind(e),
            })
            .inc();
    }
}

/// The `resource` label of a webhook request: the resources the webhook configurations send,
/// anything else (the endpoint is reachable by anyone on the network) `other`.
pub fn webhook_resource(resource: &str, sub_resource: Option<&str>) -> &'static str {
    match (resource, sub_resource) {
        ("activationrequests", None) => "activationrequests",
        ("activationrequests", Some("status")) => "activationrequests/status",
        ("eligibleassignments", None) => "eligibleassignments",
        ("rolesettings", None) => "rolesettings",
        _ => "other",
    }
}

/// A small fixed classification of reconcile errors: `conflict` (someone wrote first; retried
/// at once, normal in small numbers), `forbidden`, `not_found`, `invalid`, `throttled`,
/// `server_error`, `api` (another API status), `not_leader` (a write fenced off after the
/// Lease was lost), `transport` (no answer), `audit_io` (the audit stream could not be
/// written), `other`.
pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Kube(kube::Error::Api(s)) => match s.code {
            409 => "conflict",
            401 | 403 => "forbidden",
            404 => "not_found",
            422 => "invalid",
            429 => "throttled",
            500..=599 => "server_error",
            _ => "api",
        },
        Error::Kube(k) if k.to_string().contains("not the leader") => "not_leader",
        Error::Kube(_) | Error::Timeout(_) => "transport",
        Error::Io { .. } => "audit_io",
        Error::Cache(_) => "cache",
        _ => "other",
    }
}

/// ActivationRequests counted by (RoleSetting, phase label). Every RoleSetting in
/// `role_settings` gets every phase (0 where none), so series do not vanish when a phase
/// empties; RoleSettings that no longer exist appear only while requests name them.
pub fn requests_by_phase<'a>(
    role_settings: impl IntoIterator<Item = &'a str>,
    requests: impl IntoIterator<Item = (&'a str, Option<RequestPhase>)>,
) -> BTreeMap<(String, &'static str), i64> {
    let mut out = BTreeMap::new();
    for rs in role_settings {
        for p in PHASES {
            out.insert((rs.to_string(), p), 0);
        }
    }
    for (role_setting, phase) in requests {
        let phase = phase.map_or(PHASE_NEW, phase_name);
        *out.entry((role_setting.to_string(), phase)).or_insert(0) += 1;
    }
    out
}

/// One thing a committed status write tells the metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A history entry was committed (its action).
    Transition(&'static str),
    /// Seconds from creation to the approval quorum.
    TimeToApproval(f64),
    /// Seconds from creation to Active.
    TimeToActivation(f64),
    /// Seconds from access being due to Active.
    ActivationLatency(f64),
    /// Seconds from the reference time to the bindings' deletion, by reason.
    RevocationLag(&'static str, f64),
}

/// A status write the apiserver accepted.
pub struct Committed<'a> {
    /// The request as it was decided from (its status is what was there before).
    pub request: &'a ActivationRequest,
    /// The status written.
    pub status: &'a ActivationRequestStatus,
    /// When the write was accepted.
    pub at: DateTime<Utc>,
    /// When this process deleted the request's bindings for the transition written, if it did
    /// (none when someone else, e.g. `kube-pim sweep`, had removed them already).
    pub revoked_at: Option<DateTime<Utc>>,
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    // Clocks differ between the apiserver (creationTimestamp) and the operator: never negative.
    ((to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
}

/// What a committed status write tells: one [`Observation::Transition`] per new history
/// entry, and the durations those transitions complete. Pure; the caller records it.
pub fn observations(c: &Committed<'_>) -> Vec<Observation> {
    let before = c.request.status.as_ref().map_or(0, |s| s.history.len());
    let history = &c.status.history;
    let Some(new) = history.get(before..) else {
        return Vec::new();
    };
    let created = c
        .request
        .metadata
        .creation_timestamp
        .as_ref()
        .map(crate::time::from_k8s)
        .or_else(|| history.first().map(|h| h.time));
    let approved_at = history
        .iter()
        .find(|h| h.action == HistoryAction::Approved)
        .map(|h| h.time);
    let scheduled = history.iter().any(|h| h.action == HistoryAction::Scheduled);
    // The quorum of people, not a RoleSetting without approval (its "approval" is instant).
    let by_people = c
        .status
        .conditions
        .iter()
        .any(|x| x.type_ == CONDITION_APPROVED && x.reason != "ApprovalNotRequired");
    let mut out = Vec::new();
    for h in new {
        out.push(Observation::Transition(action_name(h.action)));
        match h.action {
            HistoryAction::Approved if by_people => {
                if let Some(created) = created {
                    out.push(Observation::TimeToApproval(seconds(created, h.time)));
                }
            }
            HistoryAction::Activated => {
                // A scheduled start waits by design: it is measured from the start it waited
                // for, and not counted as time to activation.
                let due = if scheduled {
                    c.request.spec.start_time
                } else {
                    approved_at
                };
                if let (Some(created), false) = (created, scheduled) {
                    out.push(Observation::TimeToActivation(seconds(created, c.at)));
                }
                if let Some(due) = due {
                    out.push(Observation::ActivationLatency(seconds(due, c.at)));
                }
            }
            HistoryAction::Expired | HistoryAction::Deactivated | HistoryAction::Revoked => {
                let reason = match h.action {
                    HistoryAction::Expired => "expired",
                    HistoryAction::Deactivated => "deactivated",
                    _ => "revoked",
                };
                // Expiry is measured from the time access was due to end; the other reasons
                // from the operator's decision (the time of what triggered it, say the
                // deactivating write, is not recorded on the object).
                let from = match h.action {
                    HistoryAction::Expired => c.status.expiration_time,
                    _ => Some(h.time),
                };
                if let (Some(from), Some(done)) = (from, c.revoked_at) {
                    out.push(Observation::RevocationLag(reason, seconds(from, done)));
                }
            }
            _ => {}
        }
    }
    out
}

/// Whether a status ends the request (then any noted revocation is consumed).
pub fn ends(status: &ActivationRequestStatus) -> bool {
    status.phase.is_some_and(is_terminal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::HistoryEntry,
        decide::{request::set_condition, test_fixtures::*},
    };
    use chrono::TimeDelta;

    fn entry(seq: i64, at: DateTime<Utc>, actor: &str, action: HistoryAction) -> HistoryEntry {
        HistoryEntry {
            seq,
            time: at,
            actor: actor.into(),
            action,
            message: None,
        }
    }

    fn with_phase(name: &str, rs: &str, phase: Option<RequestPhase>) -> ActivationRequest {
        let mut r = request(name, "ns", rs, requester("alice", &[]));
        r.status = phase.map(|p| ActivationRequestStatus {
            phase: Some(p),
            ..Default::default()
        });
        r
    }

    #[test]
    fn requests_are_counted_by_role_setting_and_phase_with_zeros_for_known_role_settings() {
        let reqs = [
            with_phase("a", "rs1", Some(RequestPhase::Active)),
            with_phase("b", "rs1", Some(RequestPhase::Active)),
            with_phase("c", "rs1", Some(RequestPhase::Expired)),
            with_phase("d", "rs1", None),
            with_phase("e", "gone", Some(RequestPhase::Pending)),
        ];
        let counts = requests_by_phase(
            ["rs1", "rs2"],
            reqs.iter().map(|r| {
                (
                    r.spec.role_setting.as_str(),
                    r.status.as_ref().and_then(|s| s.phase),
                )
            }),
        );
        let get = |rs: &str, p: &'static str| counts.get(&(rs.to_string(), p)).copied();
        assert_eq!(get("rs1", "Active"), Some(2));
        assert_eq!(get("rs1", "Expired"), Some(1));
        assert_eq!(get("rs1", "New"), Some(1));
        assert_eq!(get("rs1", "Pending"), Some(0));
        assert_eq!(
            get("rs2", "Active"),
            Some(0),
            "a known RoleSetting has every phase"
        );
        assert_eq!(get("gone", "Pending"), Some(1));
        assert_eq!(
            get("gone", "Active"),
            None,
            "an unknown one only what exists"
        );
        assert_eq!(counts.len(), 2 * PHASES.len() + 1);
        assert_eq!(counts.values().sum::<i64>(), 5);
    }

    #[test]
    fn every_phase_has_a_label_in_the_zero_filled_list() {
        use RequestPhase::*;
        for p in [
            Pending,
            Scheduled,
            Active,
            Expired,
            Denied,
            TimedOut,
            Canceled,
            Deactivated,
            Revoked,
            Superseded,
            Failed,
        ] {
            assert_eq!(phase_name(p), format!("{p:?}"));
            assert!(PHASES.contains(&phase_name(p)), "{p:?}");
        }
    }

    /// A request created at t0 whose status (before the write) holds `old` history entries.
    fn lifecycle(old: Vec<HistoryEntry>) -> ActivationRequest {
        let mut r = request("alice-x", "ns", "rs", requester("alice", &[]));
        r.metadata.creation_timestamp = Some(crate::time::to_k8s(t0()));
        r.status = Some(ActivationRequestStatus {
            phase: Some(RequestPhase::Pending),
            history: old,
            ..Default::default()
        });
        r
    }

    fn written(r: &ActivationRequest, add: Vec<HistoryEntry>) -> ActivationRequestStatus {
        let mut s = r.status.clone().unwrap();
        s.history.extend(add);
        s
    }

    fn approved(s: &mut ActivationRequestStatus, reason: &str) {
        set_condition(
            &mut s.conditions,
            CONDITION_APPROVED,
            true,
            reason,
            "",
            t0(),
            None,
        );
    }

    #[test]
    fn an_approved_lifecycle_yields_each_transition_once_and_its_durations() {
        let secs = |s: i64| t0() + TimeDelta::seconds(s);
        let ms = |m: i64| TimeDelta::milliseconds(m);
        // Requested (first write): a transition, no duration.
        let r = lifecycle(vec![]);
        let s = written(
            &r,
            vec![entry(1, secs(0), "alice", HistoryAction::Requested)],
        );
        let c = Committed {
            request: &r,
            status: &s,
            at: secs(0),
            revoked_at: None,
        };
        assert_eq!(observations(&c), [Observation::Transition("Requested")]);

        // bob approves after 90 s.
        let r = lifecycle(vec![entry(1, secs(0), "alice", HistoryAction::Requested)]);
        let mut s = written(&r, vec![entry(2, secs(90), "bob", HistoryAction::Approved)]);
        approved(&mut s, "Approved");
        let c = Committed {
            request: &r,
            status: &s,
            at: secs(90),
            revoked_at: None,
        };
        assert_eq!(
            observations(&c),
            [
                Observation::Transition("Approved"),
                Observation::TimeToApproval(90.0)
            ]
        );

        // Active 20 ms after the decision was committed.
        let mut r = lifecycle(s.history.clone());
        r.status.as_mut().unwrap().conditions = s.conditions.clone();
        let s = written(
            &r,
            vec![entry(3, secs(90), "kube-pim", HistoryAction::Activated)],
        );
        let c = Committed {
            request: &r,
            status: &s,
            at: secs(90) + ms(20),
            revoked_at: None,
        };
        assert_eq!(
            observations(&c),
            [
                Observation::Transition("Activated"),
                Observation::TimeToActivation(90.02),
                Observation::ActivationLatency(0.02)
            ]
        );

        // Expired: bindings deleted 30 ms after expirationTime.
        let mut r = lifecycle(s.history.clone());
        r.status.as_mut().unwrap().expiration_time = Some(secs(3690));
        let mut s = written(
            &r,
            vec![entry(4, secs(3690), "kube-pim", HistoryAction::Expired)],
        );
        s.phase = Some(RequestPhase::Expired);
        let c = Committed {
            request: &r,
            status: &s,
            at: secs(3690) + ms(50),
            revoked_at: Some(secs(3690) + ms(30)),
        };
        assert_eq!(
            observations(&c),
            [
                Observation::Transition("Expired"),
                Observation::RevocationLag("expired", 0.03)
            ]
        );
        assert!(ends(&s));
        // Someone else (the reaper) had deleted them: the transition, but no lag to report.
        let c = Committed {
            revoked_at: None,
            ..c
        };
        assert_eq!(observations(&c), [Observation::Transition("Expired")]);
        // A write that commits no new entry (auditedThrough) tells nothing.
        let c = Committed {
            request: &r,
            status: r.status.as_ref().unwrap(),
            at: secs(4000),
            revoked_at: None,
        };
        assert_eq!(observations(&c), []);
    }

    #[test]
    fn automatic_approval_is_not_time_to_approval_and_scheduled_starts_are_measured_from_the_start()
    {
        let secs = |s: i64| t0() + TimeDelta::seconds(s);
        // No approval required: Requested and Approved in quick succession, then Activated.
        let r = lifecycle(vec![entry(1, secs(1), "alice", HistoryAction::Requested)]);
        let mut s = written(
            &r,
            vec![entry(2, secs(1), "kube-pim", HistoryAction::Approved)],
        );
        approved(&mut s, "ApprovalNotRequired");
        let c = Committed {
            request: &r,
            status: &s,
            at: secs(1),
            revoked_at: None,
        };
        assert_eq!(observations(&c), [Observation::Transition("Approved")]);

        // Scheduled to start at +600 s; activated 100 ms after that.
        let mut r = lifecycle(vec![
            entry(1, secs(1), "alice", HistoryAction::Requested),
            entry(2, secs(1), "kube-pim", HistoryAction::Approved),
            entry(3, secs(1), "kube-pim", HistoryAction::Scheduled),
        ]);
        r.spec.start_time = Some(secs(600));
        let s = written(
            &r,
            vec![entry(4, secs(600), "kube-pim", HistoryAction::Activated)],
        );
        let c = Committed {
            request: &r,
            status: &s,
            at: secs(600) + TimeDelta::milliseconds(100),
            revoked_at: None,
        };
        assert_eq!(
            observations(&c),
            [
                Observation::Transition("Activated"),
                Observation::ActivationLatency(0.1)
            ]
        );

        // Deactivated: measured from the decision; clock skew never makes it negative.
        let r = lifecycle(s.history.clone());
        let s = written(
            &r,
            vec![entry(5, secs(700), "alice", HistoryAction::Deactivated)],
        );
        let c = Committed {
            request: &r,
            status: &s,
            at: secs(700),
            revoked_at: Some(secs(699)),
        };
        assert_eq!(
            observations(&c),
            [
                Observation::Transition("Deactivated"),
                Observation::RevocationLag("deactivated", 0.0)
            ]
        );
    }

    #[test]
    fn a_revocation_is_noted_once_and_taken_once() {
        let m = Metrics::default();
        m.note_revoked("u", t0());
        m.note_revoked("u", t0() + TimeDelta::seconds(1));
        assert_eq!(m.take_revoked("u"), Some(t0()), "the first deletion counts");
        assert_eq!(m.take_revoked("u"), None);
    }

    /// Metrics with one of everything recorded (empty label families are not exposed).
    fn populated() -> Metrics {
        let m = Metrics::default();
        m.record(
            "rs",
            &[
                Observation::Transition("Activated"),
                Observation::RevocationLag("expired", 0.03),
            ],
        );
        m.webhook_denied("activationrequests", "duration_too_long");
        m.webhook_request("validate", "activationrequests", "CREATE", 0.004);
        m.reconcile_error("activation", &Error::Config("x".into()));
        m.set_requests_by_phase(requests_by_phase(["rs"], std::iter::empty()));
        m.notifications.dropped("queue_full");
        m.refresh_allocator();
        m
    }

    #[test]
    fn recorded_observations_are_exposed_with_help_and_low_cardinality_labels() {
        let m = Metrics::default();
        m.reconcile_error("activation", &Error::Config("x".into()));
        m.record(
            "rs",
            &[
                Observation::Transition("Activated"),
                Observation::ActivationLatency(0.02),
                Observation::RevocationLag("expired", 0.03),
            ],
        );
        m.webhook_denied("activationrequests", "duration_too_long");
        m.webhook_request("validate", "activationrequests", "CREATE", 0.004);
        let text = m.encode_after(|m| {
            m.set_requests_by_phase(requests_by_phase(["rs"], std::iter::empty()));
        });
        for line in [
            "kube_pim_activation_transitions_total{role_setting=\"rs\",action=\"Activated\"} 1",
            "kube_pim_activation_latency_seconds_count 1",
            "kube_pim_revocation_lag_seconds_count{reason=\"expired\"} 1",
            "kube_pim_webhook_denials_total{resource=\"activationrequests\",reason=\"duration_too_long\"} 1",
            "kube_pim_webhook_request_duration_seconds_count{webhook=\"validate\",resource=\"activationrequests\",operation=\"CREATE\"} 1",
            "kube_pim_activation_requests{role_setting=\"rs\",phase=\"Active\"} 0",
            "kube_pim_bindings_past_expiry 0",
            "kube_pim_reconcile_errors_total{controller=\"activation\",kind=\"other\"} 1",
            "# TYPE kube_pim_time_to_approval_seconds histogram",
            "# UNIT kube_pim_time_to_approval_seconds seconds",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Every metric says what it is.
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let helps: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(types, helps);
        assert_eq!(types.len(), 17, "{types:?}");
    }

    /// docs/observability.md describes every metric /metrics exposes.
    #[test]
    fn every_metric_is_documented() {
        let docs = include_str!("../docs/observability.md");
        let text = populated().encode();
        assert_eq!(text.matches("# TYPE ").count(), 19);
        for name in text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
        {
            // Counters are exposed with their _total suffix.
            let exposed = if text.contains(&format!("# TYPE {name} counter")) {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            assert!(
                docs.contains(&format!("`{exposed}`")),
                "{exposed} is not in docs/observability.md"
            );
        }
    }

    #[test]
    fn reconcile_errors_are_classified_into_a_few_kinds() {
        let api = |code| {
            Error::Kube(kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            ))
        };
        assert_eq!(error_kind(&api(409)), "conflict");
        assert_eq!(error_kind(&api(403)), "forbidden");
        assert_eq!(error_kind(&api(503)), "server_error");
        assert_eq!(error_kind(&api(418)), "api");
        assert_eq!(
            error_kind(&Error::Io {
                action: "write audit log",
                path: "audit".into(),
                source: std::io::Error::other("disk full"),
            }),
            "audit_io"
        );
        assert_eq!(error_kind(&Error::Cache("x".into())), "cache");
        assert_eq!(error_kind(&Error::Config("x".into())), "other");
    }

    #[test]
    fn webhook_resources_are_a_fixed_set() {
        assert_eq!(
            webhook_resource("activationrequests", Some("status")),
            "activationrequests/status"
        );
        assert_eq!(webhook_resource("rolesettings", None), "rolesettings");
        assert_eq!(webhook_resource("pods", None), "other");
        assert_eq!(webhook_resource("activationrequests", Some("x")), "other");
    }
}
