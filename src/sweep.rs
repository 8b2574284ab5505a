//! `kube-pim sweep`: the independent reaper (SPEC invariant 4). It revokes every binding kube-pim
//! made whose `kubepim.io/expires-at` annotation has passed, without the operator and without
//! reading any kube-pim resource: a CronJob with its own narrow identity (list and delete
//! RoleBindings and ClusterRoleBindings, nothing else) ends access even when the operator is
//! down, broken or deleted.
//!
//! It records nothing itself: when the operator runs again it finds the binding gone and
//! records the transition (Expired) as usual. Deletes are preconditioned on the binding's uid
//! and resourceVersion, so a binding the operator re-created or extended in the meantime is
//! never removed on the strength of a stale read. A managed binding whose annotation cannot be
//! read is treated as expired (fail closed): if it should exist, the operator restores it.

use chrono::{DateTime, Utc};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Preconditions},
};
use serde::de::DeserializeOwned;

use crate::{
    Error,
    decide::bindings::{ANNOTATION_EXPIRES_AT, Labels, MANAGED_SELECTOR},
};

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Managed bindings seen.
    pub seen: usize,
    /// Past their expiry, deleted: `kind namespace/name`.
    pub deleted: Vec<String>,
}

/// Whether a managed binding with these annotations must be gone at `now`: its expiry has
/// passed, or it cannot be read. A binding without the annotation is permanent (a type Active
/// assignment without an end).
pub fn past_expiry<A: Labels + ?Sized>(annotations: &A, now: DateTime<Utc>) -> bool {
    match annotations.label(ANNOTATION_EXPIRES_AT) {
        None => false,
        Some(v) => DateTime::parse_from_rfc3339(v).map_or(true, |t| t <= now),
    }
}

/// How many of these managed bindings (by their annotations) are past their expiry at `now`.
pub fn count_past_expiry<'a, A: Labels + ?Sized + 'a>(
    annotations: impl IntoIterator<Item = &'a A>,
    now: DateTime<Utc>,
) -> usize {
    annotations
        .into_iter()
        .filter(|a| past_expiry(*a, now))
        .count()
}

async fn sweep_kind<K>(
    api: Api<K>,
    api_in: impl Fn(Option<&str>) -> Api<K>,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api
        .list(&ListParams::default().labels(MANAGED_SELECTOR))
        .await?;
    for b in list.items {
        report.seen += 1;
        if !past_expiry(b.annotations(), now) {
            continue;
        }
        let name = b.name_any();
        let ns = b.namespace();
        let api = api_in(ns.as_deref());
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: b.uid(),
                resource_version: b.resource_version(),
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {
                let what = format!(
                    "{} {}{name}",
                    K::kind(&()),
                    ns.map(|n| format!("{n}/")).unwrap_or_default()
                );
                tracing::info!(binding = %what, expires_at = ?b.annotations().get(ANNOTATION_EXPIRES_AT), "revoked a binding past its expiry");
                report.deleted.push(what);
            }
            // Gone already, or changed since the list (the operator is at work): leave it.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One sweep over every managed RoleBinding and ClusterRoleBinding.
pub async fn sweep(client: &Client, now: DateTime<Utc>) -> Result<Report, Error> {
    let mut report = Report::default();
    sweep_kind(
        Api::<RoleBinding>::all(client.clone()),
        |ns| Api::namespaced(client.clone(), ns.unwrap_or_default()),
        now,
        &mut report,
    )
    .await?;
    sweep_kind(
        Api::<ClusterRoleBinding>::all(client.clone()),
        |_| Api::all(client.clone()),
        now,
        &mut report,
    )
    .await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn with(v: Option<&str>) -> std::collections::BTreeMap<String, String> {
        v.map(|v| [(ANNOTATION_EXPIRES_AT.to_string(), v.to_string())].into())
            .unwrap_or_default()
    }

    #[test]
    fn expiry_comes_from_the_annotation_and_unreadable_means_expired() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .to_utc();
        assert!(past_expiry(&with(Some("2026-12-01T11:59:59Z")), now));
        assert!(past_expiry(&with(Some("2026-12-01T12:00:00Z")), now));
        assert!(!past_expiry(&with(Some("2026-12-01T12:00:01Z")), now));
        assert!(past_expiry(&with(Some("tomorrow")), now), "fail closed");
        assert!(!past_expiry(&with(None), now), "permanent");
        let mut rb = RoleBinding::default();
        rb.metadata.annotations = Some(with(Some(&(now - TimeDelta::seconds(5)).to_rfc3339())));
        let mut fresh = RoleBinding::default();
        fresh.metadata.annotations = Some(with(Some(&(now + TimeDelta::seconds(5)).to_rfc3339())));
        assert_eq!(
            count_past_expiry([rb.annotations(), fresh.annotations()], now),
            1
        );
        // As the operator's metrics count them, from its cache's projections.
        let cached = [rb, fresh, RoleBinding::default()]
            .map(crate::controller::cached::CachedRoleBinding::from);
        assert_eq!(
            count_past_expiry(cached.iter().map(|b| b.annotations()), now),
            1
        );
    }
}
