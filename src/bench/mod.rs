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

/// `apiserver_request_total` summed by (verb, resource[/subresource]) from the apiserver's
/// Prometheus text.
pub fn request_counts(metrics: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split("\",")
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let mut resource = label("resource");
        let sub = label("subresource");
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        *out.entry((label("verb"), resource)).or_insert(0.0) +=
            value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// Per-activation request counts: the difference between two scrapes, minus the calls the
/// benchmark itself made (`own`), divided by `activations`; only counts above 0.05.
pub fn per_activation(
    before: &BTreeMap<(String, String), f64>,
    after: &BTreeMap<(String, String), f64>,
    own: &BTreeMap<(String, String), f64>,
    activations: usize,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in after {
        let d = v - before.get(k).copied().unwrap_or(0.0) - own.get(k).copied().unwrap_or(0.0);
        let per = d / activations.max(1) as f64;
        if per > 0.05 {
            out.insert(format!("{} {}", k.0, k.1), (per * 100.0).round() / 100.0);
        }
    }
    out
}

/// The benchmark's results (also written as JSON).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// What ran where.
    pub machine: String,
    /// When.
    pub started: String,
    /// Activations measured per figure.
    pub samples: usize,
    /// Baseline: create the request, create the binding, patch the status, binding seen.
    pub baseline_activation: Summary,
    /// Create the request (auto-approved RoleSetting) → its binding seen.
    pub activation_to_binding: Summary,
    /// Baseline: delete the binding → deletion seen.
    pub baseline_revocation: Summary,
    /// `status.expirationTime` → the binding's deletion seen (wall clock).
    pub revocation_lag: Summary,
    /// Apiserver requests per activation lifecycle (create → expiry → released), by verb and
    /// resource, made by everyone but the benchmark (the operator, its webhook's reads).
    pub requests_per_activation: BTreeMap<String, f64>,
    /// GET and LIST requests per activation (target: 0).
    pub get_list_per_activation: f64,
    /// Operator CPU seconds per activation lifecycle.
    pub cpu_ms_per_activation: f64,
    /// Operator resident memory after the run, MiB.
    pub rss_mib: f64,
    /// Operator peak resident memory, MiB.
    pub rss_peak_mib: f64,
    /// Activation p99 over the baseline's p99.
    pub activation_ratio_p99: f64,
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
        t.push_str(&format!(
            "\noperator: {:.1} ms CPU per activation; RSS {:.1} MiB (peak {:.1} MiB)\n",
            self.cpu_ms_per_activation, self.rss_mib, self.rss_peak_mib
        ));
        t.push_str(&format!(
            "apiserver requests per activation (GET+LIST: {:.2}; target 0):\n",
            self.get_list_per_activation
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
    fn request_counters_are_read_by_verb_and_resource() {
        let text = r#"# HELP apiserver_request_total x
apiserver_request_total{code="201",component="apiserver",dry_run="",group="kubepim.io",resource="activationrequests",scope="resource",subresource="",verb="POST",version="v1alpha1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="kubepim.io",resource="activationrequests",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 3
apiserver_request_total{code="409",component="apiserver",dry_run="",group="kubepim.io",resource="activationrequests",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 1
"#;
        let c = request_counts(text);
        assert_eq!(c[&("POST".into(), "activationrequests".into())], 7.0);
        assert_eq!(
            c[&("PATCH".into(), "activationrequests/status".into())],
            4.0
        );
        let before = BTreeMap::new();
        let own = BTreeMap::from([(("POST".to_string(), "activationrequests".to_string()), 7.0)]);
        let per = per_activation(&before, &c, &own, 2);
        assert_eq!(per.get("PATCH activationrequests/status"), Some(&2.0));
        assert!(
            !per.contains_key("POST activationrequests"),
            "the benchmark's own calls"
        );
    }
}
