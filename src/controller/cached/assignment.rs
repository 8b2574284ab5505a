//! What the caches keep of an EligibleAssignment: the fields that scans of other assignments
//! read (RoleSetting, subject, scope, whether it is being deleted), typed; the whole object
//! compressed ([`packed`](crate::controller::packed)), for the reconcile of that assignment and
//! for the few a request's reconcile or admission finds named ([`CachedAssignment::full`]).
//!
//! A typed assignment took 1.7 KB of heap; kept this way, one takes a few hundred bytes.

use std::sync::LazyLock;

use kube::api::ObjectMeta;

use crate::api::{EligibleAssignment, Scope, Subject};
use crate::controller::packed::{Dictionary, Packed};
use crate::decide::eligibility::Named;
use crate::error::Error;

/// An EligibleAssignment as cached.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(from = "EligibleAssignment")]
pub struct CachedAssignment {
    /// Name, namespace, uid, resourceVersion and deletionTimestamp only.
    pub metadata: ObjectMeta,
    /// What scans read of the spec.
    pub spec: Spec,
    /// The whole assignment (without managedFields).
    body: Packed,
}

/// What scans read of an assignment's spec (same names as
/// [`crate::api::EligibleAssignmentSpec`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// The RoleSetting it makes the subject eligible for.
    pub role_setting: String,
    /// Who.
    pub subject: Subject,
    /// Where.
    pub scope: Scope,
}

impl CachedAssignment {
    /// The whole assignment, as the watch brought it (without managedFields).
    pub fn full(&self) -> Result<EligibleAssignment, Error> {
        self.body.unpack(&DICTIONARY)
    }

    /// Heap bytes of the compressed body.
    #[cfg(test)]
    pub fn body_size(&self) -> usize {
        self.body.size()
    }

    /// This assignment with a body that does not decode (tests of what happens then).
    #[cfg(test)]
    pub fn undecodable(self) -> Self {
        Self {
            body: Packed::undecodable(),
            ..self
        }
    }
}

impl Named for CachedAssignment {
    fn object_meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn role_setting(&self) -> &str {
        &self.spec.role_setting
    }
    fn scope(&self) -> Scope {
        self.spec.scope
    }
    fn subject(&self) -> &Subject {
        &self.spec.subject
    }
}

impl From<EligibleAssignment> for CachedAssignment {
    fn from(mut ea: EligibleAssignment) -> Self {
        super::slim(&mut ea.metadata);
        let body = Packed::pack(&ea, &DICTIONARY);
        let deletion_timestamp = ea.metadata.deletion_timestamp.take();
        Self {
            metadata: ObjectMeta {
                deletion_timestamp,
                ..super::identity(ea.metadata)
            },
            spec: Spec {
                role_setting: ea.spec.role_setting,
                subject: ea.spec.subject,
                scope: ea.spec.scope,
            },
            body,
        }
    }
}

super::resource_of!(CachedAssignment, EligibleAssignment);

/// The dictionary: an assignment as written, with every field and the values kube-pim itself
/// puts there (see [`crate::controller::packed`]).
static DICTIONARY: LazyLock<Dictionary> = LazyLock::new(|| {
    Dictionary::new(
        "EligibleAssignment",
        &serde_json::json!({
            "apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment",
            "metadata": {
                "annotations": {"kubepim.io/authorized-by":
                    "{\"username\":\"admin\",\"uid\":\"\",\"groups\":[\"system:masters\",\"system:authenticated\"]}"},
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "finalizers": ["kubepim.io/assignment"],
                "generation": 1, "name": "assignment", "namespace": "default",
                "resourceVersion": "1000000", "uid": "00000000-0000-0000-0000-000000000000"
            },
            "spec": {
                "endTime": "2026-01-01T00:00:00Z", "justification": "on call",
                "roleSetting": "namespace-admin", "scope": "Namespace",
                "startTime": "2026-01-01T00:00:00Z",
                "subject": {"kind": "User", "name": "user", "namespace": "default"},
                "type": "Eligible"
            },
            "status": {
                "activations": 1, "lastActivationTime": "2026-01-01T00:00:00Z",
                "conditions": [
                    {"lastTransitionTime": "2026-01-01T00:00:00Z", "message": "eligible for RoleSetting namespace-admin",
                        "observedGeneration": 1, "reason": "Eligible", "status": "True", "type": "Valid"}
                ],
                "observedGeneration": 1, "phase": "Eligible"
            }
        }),
    )
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::test_fixtures::*;
    use kube::Resource;

    #[test]
    fn the_whole_assignment_comes_back_and_scans_read_the_typed_fields() {
        let mut ea = assignment("alice-admin", "payments", "namespace-admin", user("alice"));
        ea.metadata.uid = Some("3c1f0e4a-7d2b-4b8e-9a61-0f5e2d3c4b1a".into());
        ea.metadata.resource_version = Some("4711".into());
        ea.metadata.deletion_timestamp = Some(crate::time::to_k8s(t0()));
        ea.metadata.annotations = Some(
            [
                ("kubepim.io/authorized-by".to_string(), "{}".to_string()),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    "{\"a\": \"copy of the object\"}".to_string(),
                ),
            ]
            .into(),
        );
        ea.metadata.managed_fields = Some(vec![Default::default()]);
        ea.spec.justification = Some("on call".into());
        ea.status = Some(crate::api::EligibleAssignmentStatus {
            phase: Some(crate::api::AssignmentPhase::Eligible),
            activations: 3,
            ..Default::default()
        });
        let c: CachedAssignment =
            serde_json::from_value(serde_json::to_value(&ea).unwrap()).expect("decodes");
        let mut want = ea.clone();
        want.metadata.managed_fields = None;
        want.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove("kubectl.kubernetes.io/last-applied-configuration");
        assert_eq!(
            serde_json::to_value(c.full().unwrap()).unwrap(),
            serde_json::to_value(&want).unwrap(),
            "everything but managedFields and kubectl's copy of the object"
        );
        assert_eq!(c.spec.role_setting, "namespace-admin");
        assert_eq!(c.spec.subject, ea.spec.subject);
        assert_eq!(c.spec.scope, ea.spec.scope);
        assert_eq!(
            c.metadata,
            ObjectMeta {
                name: Some("alice-admin".into()),
                namespace: Some("payments".into()),
                uid: ea.metadata.uid.clone(),
                resource_version: Some("4711".into()),
                deletion_timestamp: ea.metadata.deletion_timestamp.clone(),
                ..Default::default()
            },
            "partial metadata: whoever reads more of it from the cache must keep it here"
        );
        assert_eq!(CachedAssignment::kind(&()), "EligibleAssignment");
        assert!(
            c.body_size() < serde_json::to_vec(&want).unwrap().len() / 2,
            "compressed: {} bytes",
            c.body_size()
        );
    }
}
