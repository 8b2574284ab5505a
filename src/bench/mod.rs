//! `make bench`: measures kube-pim against the real local control plane, each figure next to
//! its physical-limit baseline — the same API calls made by a tight client loop against an
//! identical apiserver without the operator — so results are ratios that hold on a noisy
//! machine. Timestamps come from watch events seen by the benchmark on one monotonic clock.
//!
//! This module holds the pure parts (statistics, the apiserver's request counters, the
//! report); [`run`] drives the control planes. Benchmarks measure; tests never assert timings
//! (the smoke test only checks that the benchmark runs and its JSON is well formed).

pub mod run;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// p50, p99 and max of a sample, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// How many samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// Summarises samples in milliseconds (nearest-rank percentiles).
pub fn summarize(samples: &[f64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    Summary {
        n: s.len(),
        p50_ms: round(rank(0.50)),
        p99_ms: round(rank(0.99)),
        max_ms: round(*s.last().expect("not empty")),
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// One line of the apiserver's audit log (JSON, level Metadata): the fields the benchmark reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct AuditEvent {
    stage: String,
    verb: String,
    user: AuditUser,
    user_agent: Option<String>,
    object_ref: Option<AuditObject>,
    request_received_timestamp: Option<DateTime<Utc>>,
    stage_timestamp: Option<DateTime<Utc>>,
    response_status: Option<AuditStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuditUser {
    username: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuditObject {
    resource: Option<String>,
    subresource: Option<String>,
    namespace: String,
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuditStatus {
    code: u16,
}

impl AuditEvent {
    /// `resource` or `resource/subresource`; `None` for calls to no resource (`/readyz`).
    fn what(&self) -> Option<String> {
        let o = self.object_ref.as_ref()?;
        let resource = o.resource.as_deref()?;
        Some(match &o.subresource {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        })
    }
}

/// The audit log's events, lines that are not one left out.
fn audit_events(audit_log: &str) -> impl Iterator<Item = AuditEvent> + '_ {
    audit_log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
}

/// API requests made by `user`, by verb and resource[/subresource], from the apiserver's
/// audit log (JSON lines at level Metadata), and the user agents they came with.
/// `apiserver_request_total` has no user or user-agent label, so the audit log is how the
/// operator's own requests are told from everyone else's.
pub fn requests_by(audit_log: &str, user: &str) -> (BTreeMap<String, f64>, Vec<String>) {
    // Leader election renews its Lease on a clock, not per activation.
    const NOT_PER_ACTIVATION: &[&str] = &["leases"];
    let mut counts = BTreeMap::new();
    let mut agents = std::collections::BTreeSet::new();
    for e in audit_events(audit_log).filter(|e| e.user.username == user) {
        let Some(what) = e.what() else {
            continue;
        };
        if NOT_PER_ACTIVATION.iter().any(|r| what == *r) {
            continue;
        }
        *counts
            .entry(format!("{} {what}", e.verb.to_uppercase()))
            .or_insert(0.0) += 1.0;
        if let Some(a) = e.user_agent {
            agents.insert(a);
        }
    }
    (counts, agents.into_iter().collect())
}

/// Counts divided by `activations`, rounded to two places; only counts above 0.05.
pub fn per_activation(counts: &BTreeMap<String, f64>, activations: usize) -> BTreeMap<String, f64> {
    counts
        .iter()
        .map(|(k, v)| (k.clone(), v / activations.max(1) as f64))
        .filter(|(_, per)| *per > 0.05)
        .map(|(k, per)| (k, (per * 100.0).round() / 100.0))
        .collect()
}

/// One API call as the apiserver's audit log timed it: request received → response complete
/// (wall clock; the benchmark and the control plane share the machine's clock).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timed {
    /// `requestReceivedTimestamp`.
    pub received: DateTime<Utc>,
    /// `stageTimestamp` of the `ResponseComplete` stage.
    pub completed: DateTime<Utc>,
}

/// The key [`first_calls`] files a call under: `"<user> <VERB> <resource>[/<sub>] <ns>/<name>"`.
pub fn call_key(user: &str, verb: &str, what: &str, namespace: &str, name: &str) -> String {
    format!("{user} {} {what} {namespace}/{name}", verb.to_uppercase())
}

/// The first successful call of each user, verb and resource to each named object in an
/// audit log (JSON lines, `ResponseComplete` stage), by [`call_key`]. Calls without a name
/// (creates with `generateName`, lists) and refused calls (status 400 and above) are left out.
pub fn first_calls(audit_log: &str) -> HashMap<String, Timed> {
    let mut out = HashMap::new();
    for e in audit_events(audit_log) {
        // A refused call (a conflict, a squatting binding replaced) is not the write that
        // took effect: the first that succeeded is.
        if e.stage != "ResponseComplete"
            || e.response_status.as_ref().is_some_and(|r| r.code >= 400)
        {
            continue;
        }
        let (Some(what), Some(o), Some(received), Some(completed)) = (
            e.what(),
            e.object_ref.as_ref().filter(|o| !o.name.is_empty()),
            e.request_received_timestamp,
            e.stage_timestamp,
        ) else {
            continue;
        };
        out.entry(call_key(
            &e.user.username,
            &e.verb,
            &what,
            &o.namespace,
            &o.name,
        ))
        .or_insert(Timed {
            received,
            completed,
        });
    }
    out
}

/// The stages of one activation's path to its binding, in order (see [`Path::stages`]).
pub const STAGES: [&str; 6] = [
    "create call (round trip; kube-pim's through admission)",
    "create answered -> commit received",
    "commit (status: Requested, Approved)",
    "commit answered -> binding apply received",
    "binding apply",
    "binding applied -> binding seen (watch)",
];

/// One activation's path from the requester's create call to its binding seen, on the wall
/// clock: the benchmark's own times and the apiserver's times for the two writes between.
#[derive(Clone, Copy, Debug)]
pub struct Path {
    /// The create call sent.
    pub sent: DateTime<Utc>,
    /// Its answer received.
    pub created: DateTime<Utc>,
    /// The status write that commits the decision.
    pub commit: Timed,
    /// The binding's server-side apply.
    pub bind: Timed,
    /// The binding seen on the benchmark's watch.
    pub seen: DateTime<Utc>,
}

impl Path {
    /// Milliseconds spent in each of [`STAGES`]; they add up to `seen - sent`. A stage can be
    /// slightly negative where a call's answer reaches its client before the apiserver stamps
    /// the response complete.
    pub fn stages(&self) -> [f64; 6] {
        let ms = |a: DateTime<Utc>, b: DateTime<Utc>| {
            (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
        };
        [
            ms(self.sent, self.created),
            ms(self.created, self.commit.received),
            ms(self.commit.received, self.commit.completed),
            ms(self.commit.completed, self.bind.received),
            ms(self.bind.received, self.bind.completed),
            ms(self.bind.completed, self.seen),
        ]
    }
}

/// One stage of the activation path, the baseline's and kube-pim's.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stage {
    /// What the stage is ([`STAGES`]).
    pub stage: String,
    /// The baseline: the benchmark makes the calls itself, back to back.
    pub baseline: Summary,
    /// kube-pim: the requester creates, the operator writes.
    pub kube_pim: Summary,
}

/// Where the time of an activation goes, stage by stage, next to the baseline's.
pub fn breakdown(baseline: &[Path], kube_pim: &[Path]) -> Vec<Stage> {
    let column =
        |paths: &[Path], i: usize| -> Vec<f64> { paths.iter().map(|p| p.stages()[i]).collect() };
    STAGES
        .iter()
        .enumerate()
        .map(|(i, stage)| Stage {
            stage: (*stage).to_string(),
            baseline: summarize(&column(baseline, i)),
            kube_pim: summarize(&column(kube_pim, i)),
        })
        .collect()
}

/// `kube_pim_allocator_bytes` from a Prometheus text exposition, in MiB by kind.
pub fn allocator_mib(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("kube_pim_allocator_bytes{kind=\""))
        .filter_map(|l| {
            let (kind, rest) = l.split_once('"')?;
            let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            Some((kind.to_string(), round(value / 1_048_576.0)))
        })
        .collect()
}

/// Cores by process, for the report: "kube-apiserver 0.92, etcd 0.31, ..., machine 1.95".
fn cores(c: &BTreeMap<String, f64>) -> String {
    let mut parts: Vec<String> = c
        .iter()
        .filter(|(k, _)| k.as_str() != "machine")
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    if let Some(m) = c.get("machine") {
        parts.push(format!("machine {m:.2}"));
    }
    parts.join(", ")
}

/// One throughput step: an offered rate of activations, open loop.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Step {
    /// Activations offered per second.
    pub offered_per_s: f64,
    /// Activations per second from the first create call to the last binding seen.
    pub achieved_per_s: f64,
    /// Create call → binding seen, over the step.
    pub latency: Summary,
    /// Median latency of the step's first quarter of activations.
    pub first_quarter_p50_ms: f64,
    /// Median latency of its last quarter.
    pub last_quarter_p50_ms: f64,
    /// Whether latency stayed flat through the step (last quarter's median at most 1.5 times
    /// the first's plus 50 ms): a growing backlog shows as rising latency.
    pub backlog_flat: bool,
    /// Activations whose binding was not seen within the step's length plus a minute.
    pub not_seen: usize,
    /// Cores used over the step's offered window, by process (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`, `kube-pim`, `benchmark`) and by the whole `machine`.
    pub cpu_cores: BTreeMap<String, f64>,
}

/// Sustained throughput against the baseline's write capacity.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Throughput {
    /// Creates per second the baseline apiserver sustains from 16 concurrent clients.
    pub baseline_writes_per_s: f64,
    /// Cores used while the baseline's write capacity was measured (as [`Step::cpu_cores`]).
    pub baseline_writes_cpu_cores: BTreeMap<String, f64>,
    /// Activations per second the baseline apiserver sustains when 16 concurrent clients
    /// each make one auto-approved activation's writes after another, as kube-pim makes them
    /// (no operator, no admission): the physical limit of the writes themselves.
    pub baseline_activations_per_s: f64,
    /// Cores used while the activation capacity was measured.
    pub baseline_activations_cpu_cores: BTreeMap<String, f64>,
    /// Writes per activation lifecycle (the requester's create plus the operator's writes).
    pub writes_per_activation: f64,
    /// SPEC section 8: 70 % of the baseline's write capacity divided by writes per activation.
    pub target_per_s: f64,
    /// The steps, in rising order (stopped after the first that fails).
    pub steps: Vec<Step>,
    /// The highest rate at which p99 stayed under 1 s and the backlog flat.
    pub sustained_per_s: f64,
}

/// The restart sweep.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Restart {
    /// Activations that expired while no operator ran.
    pub n: usize,
    /// Operator start → `/readyz` answers 200.
    pub ready_after_start_ms: f64,
    /// Readiness → the last of the N bindings' deletion seen (SPEC: within 5 s).
    pub revoked_after_ready_ms: f64,
    /// Baseline: N bindings deleted by 16 concurrent clients, first call → last deletion seen.
    pub baseline_delete_ms: f64,
}

/// Operator memory at one scale.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    /// EligibleAssignments in the cluster.
    pub assignments: usize,
    /// Active activations (their bindings exist).
    pub active_activations: usize,
    /// Namespaces they are spread over.
    pub namespaces: usize,
    /// Resident memory, settled, MiB.
    pub rss_mib: f64,
    /// Of that, pages of mapped files (the binary's code and constants), MiB.
    pub rss_file_mib: f64,
    /// A restarted operator: start → ready (every cache listed).
    pub restart_ready_ms: f64,
    /// Its peak resident memory across the relist, MiB (SPEC: at most 64 MiB at 10k + 10k).
    pub relist_peak_mib: f64,
    /// Its resident memory 10 s after readiness, MiB.
    pub rss_after_relist_mib: f64,
    /// The allocator's own figures when `rss_mib` was taken, MiB by kind
    /// (`kube_pim_allocator_bytes`: allocated is live data; resident what it holds in memory).
    pub allocator_mib: BTreeMap<String, f64>,
    /// The same when `rss_after_relist_mib` was taken.
    pub allocator_after_relist_mib: BTreeMap<String, f64>,
}

/// The benchmark's results (also written as JSON).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// What ran where.
    pub machine: String,
    /// When.
    pub started: String,
    /// Activations measured per latency figure.
    pub samples: usize,
    /// Baseline: kube-pim's calls in kube-pim's order (create the request, commit the
    /// decision, apply the binding) → binding seen.
    pub baseline_activation: Summary,
    /// For reference, runs A to O's baseline: create the request, create the binding (no
    /// commit first) → binding seen. kube-pim's loop then did not wait for each activation to
    /// settle either, so no ratio against it is like for like.
    pub baseline_activation_without_commit: Summary,
    /// Baseline: create → the request seen Active (after the binding, the status write that
    /// records it Active, with the commit's Events before it).
    pub baseline_activation_to_active: Summary,
    /// Create → the request seen Active: what `kubectl pim activate --wait` waits for.
    pub activation_to_active: Summary,
    /// Activation → Active p99 over the baseline's p99.
    pub activation_to_active_ratio_p99: f64,
    /// Create the request (auto-approved RoleSetting) → its binding seen (all runs pooled).
    pub activation_to_binding: Summary,
    /// The same, run by run.
    pub activation_runs: Vec<Summary>,
    /// Activation p99 over the baseline's p99.
    pub activation_ratio_p99: f64,
    /// Where an activation's time goes, stage by stage, kube-pim's next to the baseline's.
    pub activation_stages: Vec<Stage>,
    /// Baseline: kube-pim's calls in kube-pim's order (record the decision, commit it, apply
    /// the binding) → binding seen.
    pub baseline_approval: Summary,
    /// The approver's decision (the last one needed) → the binding seen.
    pub approval_to_binding: Summary,
    /// Approval p99 over the baseline's p99.
    pub approval_ratio_p99: f64,
    /// Baseline: delete the binding → deletion seen.
    pub baseline_revocation: Summary,
    /// `status.expirationTime` → the binding's deletion seen (wall clock).
    pub revocation_lag: Summary,
    /// The operator's apiserver requests per activation lifecycle (create → expiry →
    /// released), by verb and resource, from the apiserver's audit log.
    pub requests_per_activation: BTreeMap<String, f64>,
    /// The user agents the operator's requests came with.
    pub user_agents: Vec<String>,
    /// GET and LIST requests per activation (target: 0).
    pub get_list_per_activation: f64,
    /// Operator CPU per activation lifecycle, milliseconds.
    pub cpu_ms_per_activation: f64,
    /// Operator resident memory after the lifecycles, MiB.
    pub rss_mib: f64,
    /// Operator peak resident memory by then, MiB.
    pub rss_peak_mib: f64,
    /// Sustained activations per second.
    pub throughput: Throughput,
    /// N activations expired while no operator ran.
    pub restart: Restart,
    /// Memory at each scale.
    pub memory: Vec<Memory>,
}

impl Report {
    /// A plain-text table of the results against SPEC section 8's targets.
    pub fn table(&self) -> String {
        let row = |name: &str, s: &Summary, base: Option<&Summary>, target: &str| {
            let ratio = base
                .filter(|b| b.p99_ms > 0.0)
                .map(|b| format!("{:.2}x", s.p99_ms / b.p99_ms))
                .unwrap_or_else(|| "-".into());
            format!(
                "{name:<34} {:>5} {:>9.1} {:>9.1} {:>9.1} {ratio:>8}   {target}\n",
                s.n, s.p50_ms, s.p99_ms, s.max_ms
            )
        };
        let mut t = format!(
            "{:<34} {:>5} {:>9} {:>9} {:>9} {:>8}   {}\n",
            "figure (ms)", "n", "p50", "p99", "max", "vs base", "target"
        );
        t.push_str(&row(
            "baseline: activation calls",
            &self.baseline_activation,
            None,
            "",
        ));
        t.push_str(&row(
            "  without the commit (A-O; reference)",
            &self.baseline_activation_without_commit,
            None,
            "",
        ));
        t.push_str(&row(
            "activation -> binding",
            &self.activation_to_binding,
            Some(&self.baseline_activation),
            "p99 <= 1.5x baseline",
        ));
        for (i, r) in self.activation_runs.iter().enumerate() {
            t.push_str(&row(
                &format!("  run {}", i + 1),
                r,
                Some(&self.baseline_activation),
                "",
            ));
        }
        t.push_str(&row(
            "baseline: activation to Active",
            &self.baseline_activation_to_active,
            None,
            "",
        ));
        t.push_str(&row(
            "activation -> Active",
            &self.activation_to_active,
            Some(&self.baseline_activation_to_active),
            "",
        ));
        t.push_str(&row(
            "baseline: approval calls",
            &self.baseline_approval,
            None,
            "",
        ));
        t.push_str(&row(
            "approval -> binding",
            &self.approval_to_binding,
            Some(&self.baseline_approval),
            "",
        ));
        t.push_str(&row(
            "baseline: delete binding",
            &self.baseline_revocation,
            None,
            "",
        ));
        t.push_str(&row(
            "expiry -> binding gone",
            &self.revocation_lag,
            None,
            "p99 <= 250 ms",
        ));
        let n = |f: fn(&Stage) -> usize| self.activation_stages.first().map_or(0, f);
        t.push_str(&format!(
            "\nactivation, stage by stage (ms; baseline n = {}, kube-pim n = {})\n  {:<56} {:>8} {:>8} {:>8} {:>8}\n",
            n(|s| s.baseline.n),
            n(|s| s.kube_pim.n),
            "",
            "base p50",
            "p99",
            "pim p50",
            "p99"
        ));
        for st in &self.activation_stages {
            t.push_str(&format!(
                "  {:<56} {:>8.1} {:>8.1} {:>8.1} {:>8.1}\n",
                st.stage,
                st.baseline.p50_ms,
                st.baseline.p99_ms,
                st.kube_pim.p50_ms,
                st.kube_pim.p99_ms
            ));
        }
        let r = &self.restart;
        t.push_str(&format!(
            "\nrestart: {} expired activations revoked {:.0} ms after readiness (ready {:.0} ms after start; baseline deletes them in {:.0} ms); target 5000 ms\n",
            r.n, r.revoked_after_ready_ms, r.ready_after_start_ms, r.baseline_delete_ms
        ));
        let th = &self.throughput;
        t.push_str(&format!(
            "throughput: sustained {:.1}/s; target {:.1}/s (70% of {:.0} writes/s over {:.1} writes per activation)\n",
            th.sustained_per_s, th.target_per_s, th.baseline_writes_per_s, th.writes_per_activation
        ));
        t.push_str(&format!(
            "  baseline write capacity, cores: {}\n",
            cores(&th.baseline_writes_cpu_cores)
        ));
        t.push_str(&format!(
            "  baseline activation capacity (an activation's writes, no operator, no admission): {:.1}/s; sustained is {:.0}% of it; cores: {}\n",
            th.baseline_activations_per_s,
            if th.baseline_activations_per_s > 0.0 { 100.0 * th.sustained_per_s / th.baseline_activations_per_s } else { 0.0 },
            cores(&th.baseline_activations_cpu_cores)
        ));
        for s in &th.steps {
            t.push_str(&format!(
                "  offered {:>6.1}/s achieved {:>6.1}/s  p50 {:>7.1} p99 {:>7.1} max {:>7.1} ms  backlog {}\n",
                s.offered_per_s,
                s.achieved_per_s,
                s.latency.p50_ms,
                s.latency.p99_ms,
                s.latency.max_ms,
                if s.backlog_flat { "flat" } else { "growing" }
            ));
            t.push_str(&format!("    cores: {}\n", cores(&s.cpu_cores)));
        }
        for m in &self.memory {
            t.push_str(&format!(
                "memory: {} assignments, {} active activations, {} namespaces: RSS {:.1} MiB ({:.1} of it mapped files); restart ready in {:.0} ms, relist peak {:.1} MiB, after {:.1} MiB (target <= 64 MiB at 10k + 10k)\n",
                m.assignments, m.active_activations, m.namespaces, m.rss_mib, m.rss_file_mib, m.restart_ready_ms, m.relist_peak_mib, m.rss_after_relist_mib
            ));
            let kinds = |a: &BTreeMap<String, f64>| {
                a.iter()
                    .map(|(k, v)| format!("{k} {v:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            t.push_str(&format!(
                "  allocator (MiB): {}; after the relist: {}\n",
                kinds(&m.allocator_mib),
                kinds(&m.allocator_after_relist_mib)
            ));
        }
        t.push_str(&format!(
            "\noperator: {:.1} ms CPU per activation; RSS {:.1} MiB (peak {:.1} MiB)\n",
            self.cpu_ms_per_activation, self.rss_mib, self.rss_peak_mib
        ));
        t.push_str(&format!(
            "operator requests per activation lifecycle (GET+LIST: {:.2}; target 0; user agents: {}):\n",
            self.get_list_per_activation.abs(),
            self.user_agents.join(", ")
        ));
        for (k, v) in &self.requests_per_activation {
            t.push_str(&format!("  {k:<48} {v:>6.2}\n"));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let r = summarize(&s);
        assert_eq!(
            (r.n, r.p50_ms, r.p99_ms, r.max_ms),
            (100, 50.0, 99.0, 100.0)
        );
        assert_eq!(summarize(&[3.0]).p99_ms, 3.0);
        assert_eq!(summarize(&[]), Summary::default());
    }

    #[test]
    fn the_operators_requests_are_counted_from_the_audit_log() {
        let log = [
            r#"{"verb":"patch","user":{"username":"kube-pim-operator"},"userAgent":"kube-pim/0.1","objectRef":{"resource":"activationrequests","subresource":"status"}}"#,
            r#"{"verb":"patch","user":{"username":"kube-pim-operator"},"userAgent":"kube-pim/0.1","objectRef":{"resource":"activationrequests","subresource":"status"}}"#,
            r#"{"verb":"create","user":{"username":"bench-user"},"objectRef":{"resource":"activationrequests"}}"#,
            r#"{"verb":"get","user":{"username":"kube-pim-operator"},"userAgent":"kube-pim/0.1","objectRef":{"resource":"activationrequests"}}"#,
            r#"{"verb":"get","user":{"username":"kube-pim-operator"},"requestURI":"/readyz"}"#,
            "not json",
        ]
        .join("\n");
        let (c, agents) = requests_by(&log, "kube-pim-operator");
        assert_eq!(c.get("PATCH activationrequests/status"), Some(&2.0));
        assert_eq!(c.get("GET activationrequests"), Some(&1.0));
        assert_eq!(c.len(), 2, "others' requests and non-resource URLs: {c:?}");
        assert_eq!(agents, ["kube-pim/0.1"]);
        let per = per_activation(&c, 4);
        assert_eq!(per.get("PATCH activationrequests/status"), Some(&0.5));
        assert_eq!(per.get("GET activationrequests"), Some(&0.25));
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn an_activations_path_is_read_from_the_audit_log_stage_by_stage() {
        // user, verb, resource[/subresource], name, stage, received and completed at
        // 10:00:00 + the seconds given.
        let line = |[user, verb, what, name, stage, from, to]: [&str; 7]| {
            let mut r = serde_json::json!({"resource": what, "namespace": "bench", "name": name});
            if let Some((resource, sub)) = what.split_once('/') {
                r["resource"] = resource.into();
                r["subresource"] = sub.into();
            }
            serde_json::json!({"stage": stage, "verb": verb, "user": {"username": user}, "objectRef": r,
                "requestReceivedTimestamp": format!("2026-12-06T10:00:{from}Z"),
                "stageTimestamp": format!("2026-12-06T10:00:{to}Z")})
            .to_string()
        };
        let done = "ResponseComplete";
        let log = [
            // A refused write (a conflict) is not the commit.
            serde_json::json!({"stage": "ResponseComplete", "verb": "patch", "user": {"username": "op"},
                "objectRef": {"resource": "activationrequests", "subresource": "status", "namespace": "bench", "name": "b-1"},
                "responseStatus": {"code": 409},
                "requestReceivedTimestamp": "2026-12-06T10:00:00.005000Z", "stageTimestamp": "2026-12-06T10:00:00.005500Z"})
            .to_string(),
            // Creates with generateName carry no name: left out.
            line(["alice", "create", "activationrequests", "", done, "00.000", "00.004"]),
            line(["op", "patch", "activationrequests/status", "b-1", done, "00.006", "00.009"]),
            // A later write to the same object is not the commit.
            line(["op", "patch", "activationrequests/status", "b-1", done, "00.020", "00.021"]),
            // Another user's write, and a stage other than ResponseComplete, are not the operator's.
            line(["mallory", "patch", "rolebindings", "kubepim-1", done, "00.001", "00.002"]),
            line(["op", "patch", "rolebindings", "kubepim-1", "RequestReceived", "00.009", "00.009"]),
            line(["op", "patch", "rolebindings", "kubepim-1", done, "00.010", "00.0125"]),
            "not json".into(),
        ]
        .join("\n");
        let calls = first_calls(&log);
        assert_eq!(calls.len(), 3, "{calls:?}");
        let commit = calls[&call_key("op", "patch", "activationrequests/status", "bench", "b-1")];
        assert_eq!(commit.completed, at("2026-12-06T10:00:00.009Z"));
        let bind = calls[&call_key("op", "patch", "rolebindings", "bench", "kubepim-1")];
        assert_eq!(bind.received, at("2026-12-06T10:00:00.010Z"));
        let path = Path {
            sent: at("2026-12-06T10:00:00Z"),
            created: at("2026-12-06T10:00:00.005Z"),
            commit,
            bind,
            seen: at("2026-12-06T10:00:00.0135Z"),
        };
        assert_eq!(path.stages(), [5.0, 1.0, 3.0, 1.0, 2.5, 1.0]);
        let stages = breakdown(&[path], &[path, path]);
        assert_eq!(stages.len(), STAGES.len());
        assert_eq!((stages[4].baseline.n, stages[4].kube_pim.n), (1, 2));
        assert_eq!(stages[4].kube_pim.p99_ms, 2.5);
    }

    #[test]
    fn the_allocators_figures_are_read_from_the_metrics() {
        let text = "# HELP kube_pim_allocator_bytes jemalloc\n# TYPE kube_pim_allocator_bytes gauge\n\
            kube_pim_allocator_bytes{kind=\"allocated\"} 41943040\n\
            kube_pim_allocator_bytes{kind=\"resident\"} 52428800\n\
            kube_pim_leader 1\n";
        let a = allocator_mib(text);
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a["allocated"], 40.0);
        assert_eq!(a["resident"], 50.0);
        assert!(allocator_mib("").is_empty());
    }
}
