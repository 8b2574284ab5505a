//! Standing access to governed roles outside kube-pim (SPEC invariant 8).
//!
//! - The parameter of the `kube-pim-standing-access` ValidatingAdmissionPolicy: a ConfigMap in
//!   the operator's namespace listing the ClusterRoles of RoleSettings with
//!   `standingAccess: Deny`. The operator applies it whenever that set changes, and again
//!   every resync (a deleted ConfigMap comes back).
//! - Discovery: every resync, the RoleBindings and ClusterRoleBindings of governed ClusterRoles
//!   that kube-pim did not make, reported per RoleSetting in `status.unmanagedBindings`.
//!   Listed in pages (no cache of every binding in the cluster); only the matches are kept.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::Instant,
};

use k8s_openapi::api::{
    core::v1::ConfigMap,
    rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

use super::{Context, FIELD_MANAGER};
use crate::{
    Error,
    api::{RoleSetting, StandingAccess, UnmanagedBinding},
    decide::bindings::MANAGED_BY,
    policies::STANDING_ACCESS_PARAMS,
};

/// The most unmanaged bindings listed per RoleSetting (the status field's limit).
pub const MAX_LISTED: usize = 256;

/// What the standing-access work remembers between rounds.
#[derive(Default)]
pub struct State {
    /// The role list last written to the ConfigMap, and when.
    written: Option<(String, Instant)>,
    /// Unmanaged bindings by RoleSetting, from the last discovery.
    unmanaged: BTreeMap<String, Vec<UnmanagedBinding>>,
    /// When discovery last completed.
    discovered: Option<Instant>,
}

/// Shared standing-access state.
#[derive(Default)]
pub struct Standing(Mutex<State>);

impl Standing {
    /// How many unmanaged bindings the last discovery found (each counted once).
    pub fn total(&self) -> usize {
        let st = self.0.lock().expect("standing state lock");
        let mut seen: BTreeSet<(String, Option<String>, String)> = BTreeSet::new();
        for b in st.unmanaged.values().flatten() {
            seen.insert((b.kind.clone(), b.namespace.clone(), b.name.clone()));
        }
        seen.len()
    }

    /// The unmanaged bindings of RoleSetting `name` as last discovered.
    pub fn unmanaged(&self, name: &str) -> Vec<UnmanagedBinding> {
        self.0
            .lock()
            .expect("standing state lock")
            .unmanaged
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

/// The ClusterRoles that RoleSettings with `standingAccess: Deny` govern.
pub fn denied_roles<'a>(rss: impl IntoIterator<Item = &'a RoleSetting>) -> BTreeSet<String> {
    rss.into_iter()
        .filter(|rs| rs.spec.standing_access == StandingAccess::Deny)
        .flat_map(|rs| rs.spec.role_refs.iter().map(|r| r.name.clone()))
        .collect()
}

/// Re-creates the standing-access ConfigMap if it is missing or not what was written (a GET,
/// every round of the operator's periodic loop: at most 30 s of a deleted parameter).
pub async fn check_params(ctx: &Context) -> Result<(), Error> {
    let current = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ctx.settings.namespace)
        .get_opt(STANDING_ACCESS_PARAMS)
        .await?;
    let seen = current
        .and_then(|cm| cm.data)
        .and_then(|d| d.get("roles").cloned());
    if seen.as_deref() != Some(desired_roles(ctx).as_str()) {
        tracing::info!(
            ?seen,
            "the standing-access ConfigMap is missing or out of date; writing it"
        );
        return sync_params(ctx, true).await;
    }
    Ok(())
}

/// The `data.roles` the standing-access ConfigMap should hold now.
fn desired_roles(ctx: &Context) -> String {
    denied_roles(ctx.role_settings.state().iter().map(|r| r.as_ref()))
        .into_iter()
        .collect::<Vec<_>>()
        .join(",")
}

/// Applies the standing-access ConfigMap if the denied set changed since the last write, or
/// the last write is older than a resync (`force` writes anyway).
pub async fn sync_params(ctx: &Context, force: bool) -> Result<(), Error> {
    let roles = desired_roles(ctx);
    let fresh = {
        let st = ctx.standing.0.lock().expect("standing state lock");
        st.written
            .as_ref()
            .is_some_and(|(w, at)| *w == roles && at.elapsed() < ctx.settings.resync && !force)
    };
    if fresh {
        return Ok(());
    }
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": STANDING_ACCESS_PARAMS, "namespace": ctx.settings.namespace,
                     "labels": {"app.kubernetes.io/name": "kube-pim"}},
        "data": {"roles": roles},
    });
    Api::<ConfigMap>::namespaced(ctx.client.clone(), &ctx.settings.namespace)
        .patch(
            STANDING_ACCESS_PARAMS,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
    tracing::debug!(%roles, "standing-access parameters written");
    ctx.standing.0.lock().expect("standing state lock").written = Some((roles, Instant::now()));
    Ok(())
}

fn subject(s: &Subject) -> String {
    match (&s.kind[..], &s.namespace) {
        ("ServiceAccount", Some(ns)) => format!("ServiceAccount:{ns}/{}", s.name),
        (k, _) => format!("{k}:{}", s.name),
    }
}

fn made_by_kube_pim(labels: &BTreeMap<String, String>) -> bool {
    labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
}

/// An unmanaged binding of a governed role, if this is one.
fn unmanaged(
    kind: &str,
    namespace: Option<String>,
    name: String,
    labels: &BTreeMap<String, String>,
    role_ref: &RoleRef,
    subjects: &[Subject],
    governed: &BTreeSet<String>,
) -> Option<UnmanagedBinding> {
    (role_ref.kind == "ClusterRole"
        && governed.contains(&role_ref.name)
        && !made_by_kube_pim(labels))
    .then(|| UnmanagedBinding {
        kind: kind.into(),
        namespace,
        name,
        role: role_ref.name.clone(),
        subjects: subjects.iter().map(subject).collect(),
    })
}

/// What `keep` keeps of every object of a kind, listed in pages of 500 (only the kept
/// parts stay in memory, not the whole kind).
async fn list_keeping<K, T>(
    client: &kube::Client,
    mut keep: impl FnMut(&K) -> Option<T>,
) -> Result<Vec<T>, Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let mut lp = ListParams::default().limit(500);
    let mut kept = Vec::new();
    loop {
        let page = api.list(&lp).await?;
        kept.extend(page.items.iter().filter_map(&mut keep));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(kept),
        }
    }
}

/// Every binding of a governed role that kube-pim did not make, in the cluster now.
pub async fn list_unmanaged(
    client: &kube::Client,
    governed: &BTreeSet<String>,
) -> Result<Vec<UnmanagedBinding>, Error> {
    let mut found = Vec::new();
    if governed.is_empty() {
        return Ok(found);
    }
    found.extend(
        list_keeping(client, |b: &RoleBinding| {
            unmanaged(
                "RoleBinding",
                b.namespace(),
                b.name_any(),
                b.labels(),
                &b.role_ref,
                b.subjects.as_deref().unwrap_or_default(),
                governed,
            )
        })
        .await?,
    );
    found.extend(
        list_keeping(client, |b: &ClusterRoleBinding| {
            unmanaged(
                "ClusterRoleBinding",
                None,
                b.name_any(),
                b.labels(),
                &b.role_ref,
                b.subjects.as_deref().unwrap_or_default(),
                governed,
            )
        })
        .await?,
    );
    Ok(found)
}

/// Runs discovery if the last one is older than a resync; returns whether it ran (then the
/// RoleSettings should be reconciled to publish it).
pub async fn discover_if_due(ctx: &Context) -> Result<bool, Error> {
    let due = ctx
        .standing
        .0
        .lock()
        .expect("standing state lock")
        .discovered
        .is_none_or(|at| at.elapsed() >= ctx.settings.resync);
    if !due {
        return Ok(false);
    }
    let rss = ctx.role_settings.state();
    let governed: BTreeSet<String> = rss
        .iter()
        .flat_map(|rs| rs.spec.role_refs.iter().map(|r| r.name.clone()))
        .collect();
    let found = list_unmanaged(&ctx.client, &governed).await?;
    let mut by_rs: BTreeMap<String, Vec<UnmanagedBinding>> = BTreeMap::new();
    for rs in rss.iter() {
        let mine: Vec<UnmanagedBinding> = found
            .iter()
            .filter(|b| rs.spec.role_refs.iter().any(|r| r.name == b.role))
            .take(MAX_LISTED)
            .cloned()
            .collect();
        by_rs.insert(rs.name_any(), mine);
    }
    let mut st = ctx.standing.0.lock().expect("standing state lock");
    st.unmanaged = by_rs;
    st.discovered = Some(Instant::now());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::test_fixtures::*;

    fn role_ref(kind: &str, name: &str) -> RoleRef {
        RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn only_deny_role_settings_feed_the_policy() {
        let mut a = role_setting("a");
        a.spec.standing_access = StandingAccess::Deny;
        let mut b = role_setting("b");
        b.spec.role_refs = vec![crate::api::RoleRef {
            name: "view".into(),
        }];
        assert_eq!(
            denied_roles([&a, &b]).into_iter().collect::<Vec<_>>(),
            a.spec
                .role_refs
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        );
        assert!(denied_roles([&b]).is_empty());
    }

    #[test]
    fn unmanaged_means_a_governed_cluster_role_not_bound_by_kube_pim() {
        let governed: BTreeSet<String> = ["admin".to_string()].into();
        let subjects = vec![
            Subject {
                kind: "User".into(),
                name: "alice".into(),
                ..Default::default()
            },
            Subject {
                kind: "ServiceAccount".into(),
                name: "ci".into(),
                namespace: Some("build".into()),
                ..Default::default()
            },
        ];
        let none = BTreeMap::new();
        let b = unmanaged(
            "RoleBinding",
            Some("payments".into()),
            "mine".into(),
            &none,
            &role_ref("ClusterRole", "admin"),
            &subjects,
            &governed,
        )
        .unwrap();
        assert_eq!(b.role, "admin");
        assert_eq!(b.subjects, ["User:alice", "ServiceAccount:build/ci"]);
        let ours: BTreeMap<String, String> =
            [(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into();
        let r = role_ref("ClusterRole", "admin");
        assert!(unmanaged("RoleBinding", None, "x".into(), &ours, &r, &[], &governed).is_none());
        let view = role_ref("ClusterRole", "view");
        assert!(
            unmanaged(
                "RoleBinding",
                None,
                "x".into(),
                &none,
                &view,
                &[],
                &governed
            )
            .is_none()
        );
        let local = role_ref("Role", "admin");
        assert!(
            unmanaged(
                "RoleBinding",
                None,
                "x".into(),
                &none,
                &local,
                &[],
                &governed
            )
            .is_none(),
            "a namespaced Role that shares the name is not the governed ClusterRole"
        );
    }
}
