//! The RoleBindings / ClusterRoleBindings an activation grants, as pure data (SPEC section 3,
//! *Activation*): one per roleRef, named `kubepim-<12 hex of sha256(request uid, roleRef)>`,
//! labelled and annotated so that anything (the operator, `kube-pim sweep`, an auditor) can
//! tell whose they are and when they expire, and owned by the request where Kubernetes allows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::{
    api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject as RbacSubject},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::{
    api::{
        ActivationRequest, BindingKind, BindingRef, EligibleAssignment, Requester, Scope, Subject,
        SubjectKind,
    },
    decide::parse_service_account,
};

/// `app.kubernetes.io/managed-by: kube-pim` on every binding kube-pim makes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kube-pim");
/// The request's name.
pub const LABEL_REQUEST: &str = "kubepim.io/activation-request";
/// The request's namespace.
pub const LABEL_REQUEST_NAMESPACE: &str = "kubepim.io/activation-request-namespace";
/// The request's uid.
pub const LABEL_REQUEST_UID: &str = "kubepim.io/activation-request-uid";
/// The type Active assignment's name (bindings it holds).
pub const LABEL_ASSIGNMENT: &str = "kubepim.io/eligible-assignment";
/// The assignment's namespace.
pub const LABEL_ASSIGNMENT_NAMESPACE: &str = "kubepim.io/eligible-assignment-namespace";
/// The assignment's uid.
pub const LABEL_ASSIGNMENT_UID: &str = "kubepim.io/eligible-assignment-uid";
/// When the binding must be gone (RFC 3339), for `kube-pim sweep` and auditors.
pub const ANNOTATION_EXPIRES_AT: &str = "kubepim.io/expires-at";
/// The label selector that finds every binding kube-pim made.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=kube-pim";

/// `kubepim-` and the first 12 hex digits of sha256("<request uid>/<role>").
pub fn binding_name(request_uid: &str, role: &str) -> String {
    let digest = Sha256::digest(format!("{request_uid}/{role}").as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("kubepim-{hex}")
}

/// A binding kube-pim wants to exist.
#[derive(Clone, Debug, PartialEq)]
pub enum Binding {
    /// Namespace scope.
    Role(RoleBinding),
    /// Cluster scope.
    Cluster(ClusterRoleBinding),
}

impl Binding {
    /// The reference recorded in `status.bindings`.
    pub fn reference(&self) -> BindingRef {
        match self {
            Binding::Role(b) => BindingRef {
                kind: BindingKind::RoleBinding,
                namespace: b.metadata.namespace.clone(),
                name: b.metadata.name.clone().unwrap_or_default(),
            },
            Binding::Cluster(b) => BindingRef {
                kind: BindingKind::ClusterRoleBinding,
                namespace: None,
                name: b.metadata.name.clone().unwrap_or_default(),
            },
        }
    }
}

/// The RBAC subject for a requester: a ServiceAccount for a ServiceAccount's user name, else
/// the user. Never a group: the binding is for the person who asked.
pub fn requester_subject(r: &Requester) -> RbacSubject {
    match parse_service_account(&r.username) {
        Some((ns, name)) => RbacSubject {
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: Some(ns.into()),
            api_group: None,
        },
        None => RbacSubject {
            kind: "User".into(),
            name: r.username.clone(),
            namespace: None,
            api_group: Some("rbac.authorization.k8s.io".into()),
        },
    }
}

/// The RBAC subject for an assignment's subject as written (a Group stays a Group), for
/// bindings of type Active assignments.
pub fn assignment_subject(s: &Subject) -> RbacSubject {
    match s.kind {
        SubjectKind::ServiceAccount => RbacSubject {
            kind: "ServiceAccount".into(),
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            api_group: None,
        },
        SubjectKind::User | SubjectKind::Group => RbacSubject {
            kind: format!("{:?}", s.kind),
            name: s.name.clone(),
            namespace: None,
            api_group: Some("rbac.authorization.k8s.io".into()),
        },
    }
}

/// The bindings an Active request grants: one per role, for the requester, expiring at
/// `expires_at`.
pub fn for_request(
    req: &ActivationRequest,
    roles: &[String],
    expires_at: DateTime<Utc>,
) -> Vec<Binding> {
    let uid = req.metadata.uid.clone().unwrap_or_default();
    let owner = Owner {
        kind: "ActivationRequest",
        labels: [LABEL_REQUEST, LABEL_REQUEST_NAMESPACE, LABEL_REQUEST_UID],
        namespace: req.metadata.namespace.clone().unwrap_or_default(),
        name: req.metadata.name.clone().unwrap_or_default(),
        name_seed: uid.clone(),
        uid,
    };
    build(
        &owner,
        req.spec.scope,
        requester_subject(&req.spec.requester),
        roles,
        Some(expires_at),
    )
}

/// The bindings a type Active assignment holds for its whole window: one per role, for its
/// subject as written (a Group stays a Group), expiring at its endTime (if any).
pub fn for_assignment(ea: &EligibleAssignment, roles: &[String]) -> Vec<Binding> {
    let uid = ea.metadata.uid.clone().unwrap_or_default();
    let owner = Owner {
        kind: "EligibleAssignment",
        labels: [
            LABEL_ASSIGNMENT,
            LABEL_ASSIGNMENT_NAMESPACE,
            LABEL_ASSIGNMENT_UID,
        ],
        namespace: ea.metadata.namespace.clone().unwrap_or_default(),
        name: ea.metadata.name.clone().unwrap_or_default(),
        // A different seed from requests', so the two kinds can never share a binding name.
        name_seed: format!("assignment/{uid}"),
        uid,
    };
    build(
        &owner,
        ea.spec.scope,
        assignment_subject(&ea.spec.subject),
        roles,
        ea.spec.end_time,
    )
}

/// Whose bindings these are.
struct Owner {
    kind: &'static str,
    labels: [&'static str; 3],
    namespace: String,
    name: String,
    uid: String,
    name_seed: String,
}

fn build(
    o: &Owner,
    scope: Scope,
    subject: RbacSubject,
    roles: &[String],
    expires_at: Option<DateTime<Utc>>,
) -> Vec<Binding> {
    let labels: BTreeMap<String, String> = [
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (o.labels[0].to_string(), o.name.clone()),
        (o.labels[1].to_string(), o.namespace.clone()),
        (o.labels[2].to_string(), o.uid.clone()),
    ]
    .into();
    let annotations: Option<BTreeMap<String, String>> = expires_at.map(|t| {
        [(
            ANNOTATION_EXPIRES_AT.to_string(),
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )]
        .into()
    });
    roles
        .iter()
        .map(|role| {
            let role_ref = RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: role.clone(),
            };
            let mut metadata = ObjectMeta {
                name: Some(binding_name(&o.name_seed, role)),
                labels: Some(labels.clone()),
                annotations: annotations.clone(),
                ..Default::default()
            };
            match scope {
                Scope::Namespace => {
                    metadata.namespace = Some(o.namespace.clone());
                    // Same namespace: owned, so garbage collection is a backstop if the owner
                    // is ever deleted without the operator.
                    metadata.owner_references = Some(vec![OwnerReference {
                        api_version: "kubepim.io/v1alpha1".into(),
                        kind: o.kind.into(),
                        name: o.name.clone(),
                        uid: o.uid.clone(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]);
                    Binding::Role(RoleBinding {
                        metadata,
                        role_ref,
                        subjects: Some(vec![subject.clone()]),
                    })
                }
                // A cluster-scoped object cannot be owned by a namespaced one: the owner's
                // finalizer and the expiry annotation are what clean it up.
                Scope::Cluster => Binding::Cluster(ClusterRoleBinding {
                    metadata,
                    role_ref,
                    subjects: Some(vec![subject.clone()]),
                }),
            }
        })
        .collect()
}

/// Read access to a binding's labels (or annotations), however they are held: a Kubernetes
/// object's map, or the few kube-pim keys a cache projection keeps
/// ([`crate::controller::cached`]).
pub trait Labels {
    /// The value under `key`.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// The assignment a managed binding belongs to: (namespace, name, uid) from its labels.
pub fn assignment_owner_of<L: Labels + ?Sized>(labels: &L) -> Option<(&str, &str, &str)> {
    if labels.label(MANAGED_BY.0) != Some(MANAGED_BY.1) {
        return None;
    }
    Some((
        labels.label(LABEL_ASSIGNMENT_NAMESPACE)?,
        labels.label(LABEL_ASSIGNMENT)?,
        labels.label(LABEL_ASSIGNMENT_UID)?,
    ))
}

/// The uid of the request or assignment a managed binding belongs to, from its labels.
pub fn owner_uid<L: Labels + ?Sized>(labels: &L) -> Option<&str> {
    if labels.label(MANAGED_BY.0) != Some(MANAGED_BY.1) {
        return None;
    }
    labels
        .label(LABEL_REQUEST_UID)
        .or_else(|| labels.label(LABEL_ASSIGNMENT_UID))
}

/// The request a managed binding belongs to: (namespace, name, uid) from its labels.
/// Borrowed: it runs over every cached binding in a reconcile's search for its own.
pub fn owner_of<L: Labels + ?Sized>(labels: &L) -> Option<(&str, &str, &str)> {
    if labels.label(MANAGED_BY.0) != Some(MANAGED_BY.1) {
        return None;
    }
    Some((
        labels.label(LABEL_REQUEST_NAMESPACE)?,
        labels.label(LABEL_REQUEST)?,
        labels.label(LABEL_REQUEST_UID)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::test_fixtures::*;
    use serde_json::json;

    #[test]
    fn names_are_stable_and_distinct() {
        let a = binding_name("uid-1", "admin");
        assert_eq!(a, binding_name("uid-1", "admin"));
        assert_eq!(a.len(), "kubepim-".len() + 12);
        assert!(
            a["kubepim-".len()..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, binding_name("uid-1", "view"));
        assert_ne!(a, binding_name("uid-2", "admin"));
        // sha256("uid-1/admin") starts with these 6 bytes.
        let d = Sha256::digest(b"uid-1/admin");
        assert_eq!(
            a,
            format!(
                "kubepim-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                d[0], d[1], d[2], d[3], d[4], d[5]
            )
        );
    }

    #[test]
    fn a_namespace_binding_is_labelled_annotated_and_owned() {
        let req = request(
            "alice-x7k2p",
            "payments",
            "namespace-admin",
            requester("alice", &["team"]),
        );
        let exp = t0() + chrono::TimeDelta::hours(1);
        let b = for_request(&req, &["admin".into()], exp);
        let Binding::Role(rb) = &b[0] else {
            panic!("expected a RoleBinding")
        };
        let v = serde_json::to_value(rb).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {
                    "name": binding_name("uid-alice-x7k2p", "admin"),
                    "namespace": "payments",
                    "labels": {
                        "app.kubernetes.io/managed-by": "kube-pim",
                        "kubepim.io/activation-request": "alice-x7k2p",
                        "kubepim.io/activation-request-namespace": "payments",
                        "kubepim.io/activation-request-uid": "uid-alice-x7k2p"
                    },
                    "annotations": {"kubepim.io/expires-at": "2026-12-01T13:00:00Z"},
                    "ownerReferences": [{
                        "apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
                        "name": "alice-x7k2p", "uid": "uid-alice-x7k2p",
                        "controller": true, "blockOwnerDeletion": true
                    }]
                },
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
            })
        );
        assert_eq!(
            b[0].reference(),
            BindingRef {
                kind: BindingKind::RoleBinding,
                namespace: Some("payments".into()),
                name: binding_name("uid-alice-x7k2p", "admin"),
            }
        );
        assert_eq!(
            owner_of(rb.metadata.labels.as_ref().unwrap()),
            Some(("payments", "alice-x7k2p", "uid-alice-x7k2p"))
        );
    }

    #[test]
    fn one_binding_per_role_never_for_a_group() {
        let mut req = request(
            "r",
            "kube-pim-system",
            "rs",
            requester(
                "system:serviceaccount:ci:deployer",
                &["system:serviceaccounts"],
            ),
        );
        req.spec.scope = Scope::Cluster;
        let b = for_request(&req, &["admin".into(), "view".into()], t0());
        assert_eq!(b.len(), 2);
        for x in &b {
            let Binding::Cluster(crb) = x else {
                panic!("expected ClusterRoleBindings")
            };
            assert!(crb.metadata.owner_references.is_none());
            assert!(crb.metadata.namespace.is_none());
            let s = &crb.subjects.as_ref().unwrap()[0];
            assert_eq!(
                (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
                ("ServiceAccount", "deployer", Some("ci"))
            );
        }
    }

    #[test]
    fn a_type_active_assignment_binds_its_subject_as_written_until_its_end() {
        let mut ea = assignment("oncall", "payments", "rs", group("oncall"));
        ea.spec.end_time = Some(t0() + chrono::TimeDelta::days(7));
        let b = for_assignment(&ea, &["admin".into()]);
        let Binding::Role(rb) = &b[0] else {
            panic!("expected a RoleBinding")
        };
        assert_eq!(rb.subjects.as_ref().unwrap()[0].kind, "Group");
        let labels = rb.metadata.labels.as_ref().unwrap();
        assert_eq!(
            assignment_owner_of(labels),
            Some(("payments", "oncall", "uid-oncall"))
        );
        assert_eq!(owner_of(labels), None, "not a request's binding");
        assert_eq!(
            rb.metadata.annotations.as_ref().unwrap()[ANNOTATION_EXPIRES_AT],
            "2026-12-08T12:00:00Z"
        );
        assert_eq!(
            rb.metadata.owner_references.as_ref().unwrap()[0].kind,
            "EligibleAssignment"
        );
        assert_ne!(
            rb.metadata.name,
            Some(binding_name("uid-oncall", "admin")),
            "never a request's name"
        );
        ea.spec.end_time = None;
        let Binding::Role(rb) = &for_assignment(&ea, &["admin".into()])[0] else {
            panic!()
        };
        assert!(rb.metadata.annotations.is_none(), "permanent: no expiry");
    }

    #[test]
    fn assignment_subjects_stay_as_written() {
        assert_eq!(assignment_subject(&group("sre")).kind, "Group");
        assert_eq!(
            assignment_subject(&service_account("ci", "x"))
                .namespace
                .as_deref(),
            Some("ci")
        );
        assert_eq!(owner_of(&BTreeMap::new()), None);
    }
}
