//! Writes to RBAC objects and finalizers shared by the controllers: making an owner's managed
//! bindings exactly what it should have (server-side apply, replacing a binding that squats on
//! the name), removing them, and adding or removing kube-pim's finalizer, each conditional on
//! the resourceVersion the decision was made from.

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PropagationPolicy},
};
use serde_json::json;

use super::{
    Context, FIELD_MANAGER, FINALIZER,
    cached::{Kept, same},
};
use crate::{
    Error,
    api::{BindingKind, BindingRef},
    decide::bindings::Binding,
};

/// Makes an owner's managed bindings exactly `desired`: creates or restores each (server-side
/// apply, skipped when the cache shows it as desired), and deletes any other binding that
/// `mine` says is the owner's.
pub async fn ensure(
    ctx: &Context,
    desired: &[Binding],
    owner: &str,
    mine: &(dyn Fn(&Kept) -> bool + Sync),
) -> Result<(), Error> {
    for b in desired {
        match b {
            Binding::Role(rb) => {
                let ns = rb.metadata.namespace.clone().unwrap_or_default();
                let name = rb.metadata.name.clone().unwrap_or_default();
                let cached = ctx.role_bindings.get(Some(&ns), &name);
                if cached.as_deref().is_none_or(|c| !same(c, rb)) {
                    let api = Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns);
                    apply_or_replace(&api, &name, rb).await?;
                }
            }
            Binding::Cluster(crb) => {
                let name = crb.metadata.name.clone().unwrap_or_default();
                let cached = ctx.cluster_role_bindings.get(None, &name);
                if cached.as_deref().is_none_or(|c| !same(c, crb)) {
                    let api = Api::<ClusterRoleBinding>::all(ctx.client.clone());
                    apply_or_replace(&api, &name, crb).await?;
                }
            }
        }
    }
    let keep: Vec<BindingRef> = desired.iter().map(Binding::reference).collect();
    remove(ctx, &keep, owner, mine, &[]).await.map(|_| ())
}

/// Server-side applies a binding; if one by that name exists with another roleRef (which is
/// immutable, so the apply is refused), it is not ours: the name is derived from this
/// request's uid. It is deleted and ours created, so nobody can block an activation by
/// creating its binding name first.
pub async fn apply_or_replace<K>(api: &Api<K>, name: &str, desired: &K) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(name, &pp, &Patch::Apply(desired)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 422 => {
            tracing::warn!(binding = %name, reason = %s.message, "a binding squats on kube-pim's name for this request: replacing it");
            api.delete(name, &DeleteParams::default())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)?;
            api.patch(name, &pp, &Patch::Apply(desired)).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes every binding of an owner (those `mine` accepts in the caches, and those `also`
/// names) except those `keep` names (by kind, namespace and name). Returns how many this call
/// deleted (those already gone do not count: the revocation-lag metric is observed only for
/// deletions this process made).
pub async fn remove(
    ctx: &Context,
    keep: &[BindingRef],
    owner: &str,
    mine: &(dyn Fn(&Kept) -> bool + Sync),
    also: &[BindingRef],
) -> Result<usize, Error> {
    // From the owner index: this runs on every reconcile that ensures or removes bindings, and
    // scanning every cached binding's labels for each was most of a restart's CPU at 10,000.
    let mut rbs: Vec<(String, String)> = ctx
        .role_bindings
        .owned_by(owner, |b| mine(b.labels()))
        .iter()
        .map(|b| {
            (
                b.namespace().unwrap_or_default().to_string(),
                b.name().to_string(),
            )
        })
        .collect();
    let mut crbs: Vec<String> = ctx
        .cluster_role_bindings
        .owned_by(owner, |b| mine(b.labels()))
        .iter()
        .map(|b| b.name().to_string())
        .collect();
    for r in also {
        match r.kind {
            crate::api::BindingKind::RoleBinding => {
                rbs.push((r.namespace.clone().unwrap_or_default(), r.name.clone()))
            }
            crate::api::BindingKind::ClusterRoleBinding => crbs.push(r.name.clone()),
        }
    }
    rbs.sort();
    rbs.dedup();
    crbs.sort();
    crbs.dedup();
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let mut deleted = 0;
    let kept = |kind, ns: Option<&str>, name: &str| {
        keep.iter()
            .any(|k| k.kind == kind && k.namespace.as_deref() == ns && k.name == name)
    };
    for (ns, name) in rbs
        .into_iter()
        .filter(|(ns, n)| !kept(BindingKind::RoleBinding, Some(ns), n))
    {
        let api = Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns);
        deleted += delete(api, name, dp.clone()).await?;
    }
    for name in crbs
        .into_iter()
        .filter(|n| !kept(BindingKind::ClusterRoleBinding, None, n))
    {
        let api = Api::<ClusterRoleBinding>::all(ctx.client.clone());
        deleted += delete(api, name, dp.clone()).await?;
    }
    Ok(deleted)
}

/// Deletes one object; 1 if this call deleted it, 0 if it was already gone.
pub async fn delete<K>(api: Api<K>, name: String, dp: DeleteParams) -> Result<usize, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(&name, &dp)
        .await
        .map(|_| 1)
        .or_else(|e| ignore_not_found(e).map(|()| 0))
}

pub fn ignore_not_found(e: kube::Error) -> Result<(), Error> {
    match e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        e => Err(e.into()),
    }
}

/// Adds kube-pim's finalizer (conditional on the resourceVersion read).
pub async fn add_finalizer<K>(api: &Api<K>, ar: &K) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut finalizers = ar.finalizers().to_vec();
    finalizers.push(FINALIZER.into());
    let patch =
        json!({"metadata": {"resourceVersion": ar.resource_version(), "finalizers": finalizers}});
    api.patch(
        &ar.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Removes kube-pim's finalizer (conditional on the resourceVersion read).
pub async fn remove_finalizer<K>(api: &Api<K>, ar: &K) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let finalizers: Vec<String> = ar
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch =
        json!({"metadata": {"resourceVersion": ar.resource_version(), "finalizers": finalizers}});
    api.patch(
        &ar.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .or_else(ignore_not_found)
}
