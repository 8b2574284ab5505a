//! `make bench`: measures kube-pim against the real local control plane, each figure next to
//! its physical-limit baseline — the same API calls made by a tight client loop against an
//! identical apiserver without the operator — so results are ratios that hold on a noisy
//! machine. Timestamps come from watch events seen by the benchmark on one monotonic clock.
//!
//! This module holds the pure parts (statistics, the apiserver's request counters, the
//! report); [`run`] drives the control planes. Benchmarks measure; tests never assert timings
//! (the smoke test only checks that the benchmark runs and its JSON is well formed).

pub mod run;

use std::collections::BTreeMap;

use serde::Serialize;

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

/// API requests made by `user`, by verb and resource[/subresource], from the apiserver's
/// audit log (JSON lines at level Metadata), and the user agents they came with.
/// `apiserver_request_total` has no user or user-agent label, so the audit log is how the
/// operator's own requests are told from everyone else's.
pub fn requests_by(audit_log: &str, user: &str) -> (BTreeMap<String, f64>, Vec<String>) {
    // Leader election renews its Lease on a clock, not per activation.
    const NOT_PER_ACTIVATION: &[&str] = &["leases"];
    let mut counts = BTreeMap::new();
    let mut agents = std::collections::BTreeSet::new();
    for line in audit_log.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if e.pointer("/user/username").and_then(|u| u.as_str()) != Some(user) {
            continue;
        }
        let (Some(verb), Some(resource)) = (
            e.get("verb").and_then(|v| v.as_str()),
            e.pointer("/objectRef/resource").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        if NOT_PER_ACTIVATION.contains(&resource) {
            continue;
        }
        let what = match e.pointer("/objectRef/subresource").and_then(|v| v.as_str()) {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        *counts
            .entry(format!("{} {what}", verb.to_uppercase()))
            .or_insert(0.0) += 1.0;
        if let Some(a) = e.get("userAgent").and_then(|v| v.as_str()) {
            agents.insert(a.to_string());
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
    /// Baseline: create the request, create the binding, patch the status, binding seen.
    pub baseline_activation: Summary,
    /// Create the request (auto-approved RoleSetting) → its binding seen (all runs pooled).
    pub activation_to_binding: Summary,
    /// The same, run by run.
    pub activation_runs: Vec<Summary>,
    /// Activation p99 over the baseline's p99.
    pub activation_ratio_p99: f64,
    /// Baseline: record the decision, create the binding, patch the status, binding seen.
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
}
