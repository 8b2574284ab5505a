//! What the caches keep, where it is less than the whole Kubernetes object: requests
//! ([`request`]) and assignments ([`assignment`]) as the fields scans read plus the whole object
//! compressed; managed bindings (here) as a projection with only what the controllers read
//! (name, namespace, roleRef, subjects, and kube-pim's own labels and expiry annotation), not
//! the whole RoleBinding or ClusterRoleBinding.
//!
//! At 10,000 active requests the operator caches 10,000 bindings; as Kubernetes types each took
//! 2.6 KB of heap, most of it the two `BTreeMap`s of labels and annotations (a map's first node
//! is 544 bytes, even for one entry) and the ownerReferences, which nothing reads from the
//! cache. The projection is built as the watch decodes each object, so the full object never
//! reaches the cache; and it is not a Kubernetes object (no `ObjectMeta`), so it lives in a
//! cache of kube-pim's own ([`super::binding_cache`]), not kube-runtime's.
//!
//! Labels and annotations that are not kube-pim's are dropped: nothing decides on them. A
//! binding kube-pim writes carries only keys kept here (a unit test holds the two lists
//! together), so comparing a desired binding with its cached projection stays exact.

use std::{collections::BTreeMap, marker::PhantomData};

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use kube::{Resource, api::ObjectMeta};

pub mod assignment;
pub mod request;

pub use assignment::CachedAssignment;
pub use request::CachedRequest;

use crate::decide::bindings::{
    ANNOTATION_EXPIRES_AT, LABEL_ASSIGNMENT, LABEL_ASSIGNMENT_NAMESPACE, LABEL_ASSIGNMENT_UID,
    LABEL_REQUEST, LABEL_REQUEST_NAMESPACE, LABEL_REQUEST_UID, Labels, MANAGED_BY,
};

/// `Resource` for a cached form of a kind (`$cached` for `$full`): the same kind, so the watch,
/// cache, indexes and controller take it as that kind, with the cached form's (partial)
/// `metadata`.
macro_rules! resource_of {
    ($cached:ty, $full:ty) => {
        impl kube::Resource for $cached {
            type DynamicType = ();
            type Scope = <$full as kube::Resource>::Scope;

            fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
                <$full>::kind(dt)
            }
            fn group(dt: &()) -> std::borrow::Cow<'_, str> {
                <$full>::group(dt)
            }
            fn version(dt: &()) -> std::borrow::Cow<'_, str> {
                <$full>::version(dt)
            }
            fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
                <$full>::plural(dt)
            }
            fn meta(&self) -> &kube::api::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
use resource_of;

/// kubectl's copy of the whole object, on objects applied with client-side `kubectl apply`:
/// never read, and as large as the object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops from an object's metadata what nothing reads and only costs memory: managedFields,
/// and kubectl's last-applied copy of the object.
fn slim(m: &mut ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut()
        && a.remove(LAST_APPLIED).is_some()
        && a.is_empty()
    {
        m.annotations = None;
    }
}

/// Name, namespace, uid and resourceVersion: what the caches' keys, the indexes and the
/// controllers' queues read of any cached object.
fn identity(m: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        ..Default::default()
    }
}

/// The labels the cache keeps: every label kube-pim puts on a binding.
pub const KEPT_LABELS: &[&str] = &[
    MANAGED_BY.0,
    LABEL_REQUEST,
    LABEL_REQUEST_NAMESPACE,
    LABEL_REQUEST_UID,
    LABEL_ASSIGNMENT,
    LABEL_ASSIGNMENT_NAMESPACE,
    LABEL_ASSIGNMENT_UID,
];

/// The annotations the cache keeps: every annotation kube-pim puts on a binding.
pub const KEPT_ANNOTATIONS: &[&str] = &[ANNOTATION_EXPIRES_AT];

/// A few labels (or annotations) by key, the keys being `'static` names from a fixed list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kept(Box<[(&'static str, Box<str>)]>);

impl Kept {
    /// The entries of `map` whose keys are in `keys`.
    pub fn of(map: Option<BTreeMap<String, String>>, keys: &'static [&'static str]) -> Self {
        Self(
            map.into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    keys.iter()
                        .find(|kept| **kept == k)
                        .map(|kept| (*kept, v.into_boxed_str()))
                })
                .collect(),
        )
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| &**v)
    }

    /// Whether every entry of `want` is here with the same value.
    pub fn contains_all(&self, want: Option<&BTreeMap<String, String>>) -> bool {
        want.into_iter()
            .flatten()
            .all(|(k, v)| self.get(k) == Some(v.as_str()))
    }
}

impl Labels for Kept {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

/// A managed RoleBinding or ClusterRoleBinding as cached (`K` is which). Not a Kubernetes
/// object: no `ObjectMeta` (360 bytes even when nearly empty), only the name and namespace that
/// key it (see [`crate::controller::binding_cache`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CachedBinding<K> {
    name: Box<str>,
    /// Empty for a ClusterRoleBinding.
    namespace: Box<str>,
    /// kube-pim's labels (see [`KEPT_LABELS`]).
    labels: Kept,
    /// kube-pim's annotations (see [`KEPT_ANNOTATIONS`]).
    annotations: Kept,
    /// The role granted.
    pub role_ref: RoleRef,
    /// Who it is granted to.
    pub subjects: Box<[Subject]>,
    kind: PhantomData<fn() -> K>,
}

/// A cached managed RoleBinding.
pub type CachedRoleBinding = CachedBinding<RoleBinding>;
/// A cached managed ClusterRoleBinding.
pub type CachedClusterRoleBinding = CachedBinding<ClusterRoleBinding>;

impl<K> CachedBinding<K> {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace (none for a ClusterRoleBinding).
    pub fn namespace(&self) -> Option<&str> {
        Some(&*self.namespace).filter(|ns| !ns.is_empty())
    }

    /// kube-pim's labels.
    pub fn labels(&self) -> &Kept {
        &self.labels
    }

    /// kube-pim's annotations.
    pub fn annotations(&self) -> &Kept {
        &self.annotations
    }
}

/// RoleBinding and ClusterRoleBinding: the fields a projection takes from either.
pub trait Binding:
    Resource<DynamicType = ()> + serde::de::DeserializeOwned + Clone + std::fmt::Debug + 'static
{
    /// Metadata, roleRef and subjects, by value.
    fn into_parts(self) -> (ObjectMeta, RoleRef, Option<Vec<Subject>>);
    /// Metadata, roleRef and subjects.
    fn parts(&self) -> (&ObjectMeta, &RoleRef, &Option<Vec<Subject>>);
}

impl Binding for RoleBinding {
    fn into_parts(self) -> (ObjectMeta, RoleRef, Option<Vec<Subject>>) {
        (self.metadata, self.role_ref, self.subjects)
    }
    fn parts(&self) -> (&ObjectMeta, &RoleRef, &Option<Vec<Subject>>) {
        (&self.metadata, &self.role_ref, &self.subjects)
    }
}

impl Binding for ClusterRoleBinding {
    fn into_parts(self) -> (ObjectMeta, RoleRef, Option<Vec<Subject>>) {
        (self.metadata, self.role_ref, self.subjects)
    }
    fn parts(&self) -> (&ObjectMeta, &RoleRef, &Option<Vec<Subject>>) {
        (&self.metadata, &self.role_ref, &self.subjects)
    }
}

impl<K: Binding> From<K> for CachedBinding<K> {
    fn from(full: K) -> Self {
        let (m, role_ref, subjects) = full.into_parts();
        Self {
            name: m.name.unwrap_or_default().into(),
            namespace: m.namespace.unwrap_or_default().into(),
            labels: Kept::of(m.labels, KEPT_LABELS),
            annotations: Kept::of(m.annotations, KEPT_ANNOTATIONS),
            role_ref,
            subjects: subjects.unwrap_or_default().into(),
            kind: PhantomData,
        }
    }
}

/// Whether a cached binding is as `want`: the same roleRef and subjects, and every label and
/// annotation `want` has.
pub fn same<K: Binding>(have: &CachedBinding<K>, want: &K) -> bool {
    let (meta, role_ref, subjects) = want.parts();
    &have.role_ref == role_ref
        && *have.subjects == *subjects.as_deref().unwrap_or_default()
        && have.labels.contains_all(meta.labels.as_ref())
        && have.annotations.contains_all(meta.annotations.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::bindings::{self, Binding as Desired};

    fn full_rb() -> RoleBinding {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "kubepim-0123456789ab", "namespace": "team", "uid": "b-uid",
                "resourceVersion": "7", "creationTimestamp": "2026-11-24T20:58:02Z",
                "deletionTimestamp": "2026-11-24T21:00:00Z", "finalizers": ["someone/else"],
                "labels": {
                    "app.kubernetes.io/managed-by": "kube-pim",
                    "kubepim.io/activation-request": "ar",
                    "kubepim.io/activation-request-namespace": "team",
                    "kubepim.io/activation-request-uid": "ar-uid",
                    "someone-else/label": "x"
                },
                "annotations": {"kubepim.io/expires-at": "2026-12-01T12:00:00Z", "note": "y"},
                "ownerReferences": [{"apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
                    "name": "ar", "uid": "ar-uid"}]
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
        }))
        .unwrap()
    }

    #[test]
    fn the_projection_keeps_what_is_read_and_only_kube_pims_keys() {
        let c = CachedRoleBinding::from(full_rb());
        assert_eq!(c.name(), "kubepim-0123456789ab");
        assert_eq!(c.namespace(), Some("team"));
        assert_eq!(c.role_ref.name, "view");
        assert_eq!(c.subjects[0].name, "alice");
        assert_eq!(
            bindings::owner_of(c.labels()),
            Some(("team", "ar", "ar-uid"))
        );
        assert_eq!(
            c.annotations().get(ANNOTATION_EXPIRES_AT),
            Some("2026-12-01T12:00:00Z")
        );
        assert_eq!(c.labels().get("someone-else/label"), None);
        assert_eq!(c.annotations().get("note"), None);
        let mut crb = ClusterRoleBinding::default();
        crb.metadata.name = Some("kubepim-cluster".into());
        let c = CachedClusterRoleBinding::from(crb);
        assert_eq!((c.name(), c.namespace()), ("kubepim-cluster", None));
        assert!(c.subjects.is_empty() && c.labels().get(MANAGED_BY.0).is_none());
    }

    #[test]
    fn every_label_and_annotation_kube_pim_writes_is_kept() {
        // Otherwise a binding would never look as desired in the cache, and be re-applied on
        // every reconcile.
        let ar: crate::api::ActivationRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
            "metadata": {"name": "ar", "namespace": "team", "uid": "ar-uid"},
            "spec": {"roleSetting": "rs", "requester": {"username": "alice"}}
        }))
        .unwrap();
        let ea: crate::api::EligibleAssignment = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment",
            "metadata": {"name": "ea", "namespace": "team", "uid": "ea-uid"},
            "spec": {"roleSetting": "rs", "subject": {"kind": "User", "name": "alice"}}
        }))
        .unwrap();
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .to_utc();
        let roles = ["view".to_string()];
        let mut cluster_wide = ar.clone();
        cluster_wide.spec.scope = crate::api::Scope::Cluster;
        let mut desired = bindings::for_request(&ar, &roles, at);
        desired.extend(bindings::for_request(&cluster_wide, &roles, at));
        desired.extend(bindings::for_assignment(&ea, &roles));
        assert!(
            matches!(desired[0], Desired::Role(_)) && matches!(desired[1], Desired::Cluster(_))
        );
        for d in desired {
            let meta = match &d {
                Desired::Role(rb) => &rb.metadata,
                Desired::Cluster(crb) => &crb.metadata,
            };
            for k in meta.labels.iter().flatten().map(|(k, _)| k) {
                assert!(KEPT_LABELS.contains(&k.as_str()), "label {k} is not kept");
            }
            for k in meta.annotations.iter().flatten().map(|(k, _)| k) {
                assert!(
                    KEPT_ANNOTATIONS.contains(&k.as_str()),
                    "annotation {k} is not kept"
                );
            }
            let as_desired = match d {
                Desired::Role(rb) => {
                    let mut other = rb.clone();
                    other
                        .subjects
                        .iter_mut()
                        .flatten()
                        .for_each(|s| s.name = "mallory".into());
                    let c = CachedRoleBinding::from(rb.clone());
                    assert!(!same(&c, &other), "another subject is drift");
                    same(&c, &rb)
                }
                Desired::Cluster(crb) => same(&CachedClusterRoleBinding::from(crb.clone()), &crb),
            };
            assert!(as_desired, "a desired binding looks as desired once cached");
        }
    }
}
