//! Prometheus metrics, served at `/metrics` on the health port. Counters are bumped where
//! things happen; the gauges that describe the cluster (bindings past their expiry, unmanaged
//! bindings) are computed from the watch caches when scraped, so they are never stale.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

/// kube-pim's metrics.
pub struct Metrics {
    registry: Registry,
    /// Managed bindings whose `kubepim.io/expires-at` passed more than a second ago and that
    /// still exist (should stay 0: the operator revokes at expiry, `kube-pim sweep` after).
    pub bindings_past_expiry: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Revocations after which the former requester could still use the role.
    pub residual_access: Counter<u64, AtomicU64>,
    /// Bindings of governed roles not made by kube-pim, as last discovered.
    pub unmanaged_bindings: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kube_pim");
        let bindings_past_expiry = Gauge::default();
        registry.register(
            "bindings_past_expiry",
            "Managed bindings still present more than 1s after their kubepim.io/expires-at",
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
            "Bindings of governed ClusterRoles not made by kube-pim (last discovery)",
            unmanaged_bindings.clone(),
        );
        Self {
            registry,
            bindings_past_expiry,
            residual_access,
            unmanaged_bindings,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
