//! What the caches keep of an ActivationRequest: the few fields that scans of other requests
//! read (which RoleSetting, which requester, what it extends, its phase and assignment), typed;
//! the whole object compressed ([`packed`](crate::controller::packed)), for the reconcile of
//! that one request, which decodes it once per pass ([`CachedRequest::full`]).
//!
//! A typed request took 2.6 KB of heap; at 10,000 active requests the cache was the largest
//! part of the operator's memory. Kept this way, one takes a few hundred bytes.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use kube::api::ObjectMeta;

use crate::api::{ActivationRequest, RequestPhase};
use crate::controller::packed::{Dictionary, Packed};
use crate::decide::request::Link;
use crate::error::Error;

/// An ActivationRequest as cached.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(from = "ActivationRequest")]
pub struct CachedRequest {
    /// Name, namespace, uid and resourceVersion only (what the caches' keys and indexes read).
    pub metadata: ObjectMeta,
    /// What scans read of the spec.
    pub spec: Spec,
    /// What scans read of the status.
    pub status: Option<Status>,
    /// The whole request (without managedFields).
    body: Packed,
}

/// What scans read of a request's spec (same names as [`crate::api::ActivationRequestSpec`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// The RoleSetting activated.
    pub role_setting: String,
    /// The request this one extends.
    pub extends: Option<String>,
    /// Who asked.
    pub requester: Requester,
}

/// Who asked: the username only.
#[derive(Clone, Debug, PartialEq)]
pub struct Requester {
    /// As authenticated.
    pub username: String,
}

/// What scans read of a request's status (same names as
/// [`crate::api::ActivationRequestStatus`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// Where the request is.
    pub phase: Option<RequestPhase>,
    /// The assignment that backed the activation.
    pub assignment: Option<String>,
    /// When access began.
    pub activation_time: Option<DateTime<Utc>>,
}

impl CachedRequest {
    /// The whole request, as the watch brought it (without managedFields).
    pub fn full(&self) -> Result<ActivationRequest, Error> {
        self.body.unpack(&DICTIONARY)
    }

    /// The phase, if any.
    pub fn phase(&self) -> Option<RequestPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    /// Heap bytes of the compressed body.
    #[cfg(test)]
    pub fn body_size(&self) -> usize {
        self.body.size()
    }
}

impl From<ActivationRequest> for CachedRequest {
    fn from(mut ar: ActivationRequest) -> Self {
        super::slim(&mut ar.metadata);
        let body = Packed::pack(&ar, &DICTIONARY);
        Self {
            metadata: super::identity(ar.metadata),
            spec: Spec {
                role_setting: ar.spec.role_setting,
                extends: ar.spec.extends,
                requester: Requester {
                    username: ar.spec.requester.username,
                },
            },
            status: ar.status.map(|s| Status {
                phase: s.phase,
                assignment: s.assignment,
                activation_time: s.activation_time,
            }),
            body,
        }
    }
}

impl Link for CachedRequest {
    fn extends(&self) -> Option<&str> {
        self.spec.extends.as_deref()
    }
    fn phase(&self) -> Option<RequestPhase> {
        CachedRequest::phase(self)
    }
    fn activation_time(&self) -> Option<DateTime<Utc>> {
        self.status.as_ref().and_then(|s| s.activation_time)
    }
}

super::resource_of!(CachedRequest, ActivationRequest);

/// The dictionary: a request as kube-pim writes it, with every field and the values kube-pim
/// itself puts there, so that what is left to store of each is its own names, uid and times.
static DICTIONARY: LazyLock<Dictionary> = LazyLock::new(|| {
    Dictionary::new(
        "ActivationRequest",
        &serde_json::json!({
            "apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
            "metadata": {
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "finalizers": ["kubepim.io/activation"], "generateName": "request-",
                "generation": 1, "name": "request-abcde", "namespace": "default",
                "resourceVersion": "1000000", "uid": "00000000-0000-0000-0000-000000000000"
            },
            "spec": {
                "deactivate": false, "duration": "1h", "extends": "request-abcde",
                "justification": "INC-1234", "ticket": "INC-1234",
                "startTime": "2026-01-01T00:00:00Z",
                "requester": {
                    "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=0000"]},
                    "groups": ["system:authenticated"], "uid": "", "username": "user"
                },
                "roleSetting": "namespace-admin", "scope": "Namespace"
            },
            "status": {
                "activationTime": "2026-01-01T00:00:00Z", "assignment": "assignment",
                "approvals": [{"approver": {"username": "approver", "viaGroup": "approvers"},
                    "decision": "Approved", "reason": "approved", "time": "2026-01-01T00:00:00Z"}],
                "auditedThrough": 3,
                "bindings": [{"kind": "RoleBinding", "name": "kubepim-000000000000", "namespace": "default"},
                    {"kind": "ClusterRoleBinding", "name": "kubepim-000000000000"}],
                "conditions": [
                    {"lastTransitionTime": "2026-01-01T00:00:00Z", "message": "RoleSetting does not require approval",
                        "observedGeneration": 1, "reason": "ApprovalNotRequired", "status": "True", "type": "Approved"},
                    {"lastTransitionTime": "2026-01-01T00:00:00Z", "message": "approved by approver",
                        "observedGeneration": 1, "reason": "Approved", "status": "True", "type": "Approved"},
                    {"lastTransitionTime": "2026-01-01T00:00:00Z", "message": "granted view to user until 2026-01-01T00:00:00Z (assignment assignment)",
                        "observedGeneration": 1, "reason": "Activated", "status": "True", "type": "Active"},
                    {"lastTransitionTime": "2026-01-01T00:00:00Z", "message": "access ended at 2026-01-01T00:00:00Z",
                        "observedGeneration": 1, "reason": "Expired", "status": "False", "type": "Active"}
                ],
                "expirationTime": "2026-01-01T00:00:00Z",
                "history": [
                    {"action": "Requested", "actor": "user", "message": "requested for 1h", "seq": 1, "time": "2026-01-01T00:00:00Z"},
                    {"action": "Approved", "actor": "kube-pim", "message": "no approval required", "seq": 2, "time": "2026-01-01T00:00:00Z"},
                    {"action": "Activated", "actor": "kube-pim", "message": "granted view to user until 2026-01-01T00:00:00Z (assignment assignment)", "seq": 3, "time": "2026-01-01T00:00:00Z"},
                    {"action": "Expired", "actor": "kube-pim", "message": "access ended at 2026-01-01T00:00:00Z", "seq": 4, "time": "2026-01-01T00:00:00Z"}
                ],
                "observedGeneration": 1, "phase": "Active"
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
    fn the_whole_request_comes_back_and_scans_read_the_typed_fields() {
        let mut ar = request(
            "alice-x",
            "payments",
            "namespace-admin",
            requester("alice", &["sre"]),
        );
        ar.metadata.uid = Some("3c1f0e4a-7d2b-4b8e-9a61-0f5e2d3c4b1a".into());
        ar.metadata.resource_version = Some("4711".into());
        ar.metadata.generation = Some(2);
        ar.metadata.finalizers = Some(vec!["kubepim.io/activation".into()]);
        ar.metadata.labels = Some([("team".to_string(), "payments".to_string())].into());
        ar.metadata.managed_fields = Some(vec![Default::default()]);
        ar.spec.extends = Some("alice-w".into());
        ar.spec.justification = Some("INC-4711 failover".into());
        ar.spec.requester.extra.insert("k".into(), vec!["v".into()]);
        ar.status = Some(crate::api::ActivationRequestStatus {
            phase: Some(RequestPhase::Active),
            assignment: Some("alice-admin".into()),
            activation_time: Some(t0()),
            expiration_time: Some(t0() + chrono::TimeDelta::hours(1)),
            audited_through: 3,
            ..Default::default()
        });
        // Decoded as the watch decodes it.
        let c: CachedRequest =
            serde_json::from_value(serde_json::to_value(&ar).unwrap()).expect("decodes");
        let mut want = ar.clone();
        want.metadata.managed_fields = None;
        assert_eq!(
            serde_json::to_value(c.full().unwrap()).unwrap(),
            serde_json::to_value(&want).unwrap(),
            "everything but managedFields"
        );
        assert_eq!(c.spec.role_setting, "namespace-admin");
        assert_eq!(c.spec.extends.as_deref(), Some("alice-w"));
        assert_eq!(c.spec.requester.username, "alice");
        assert_eq!(c.phase(), Some(RequestPhase::Active));
        let s = c.status.as_ref().unwrap();
        assert_eq!(s.assignment.as_deref(), Some("alice-admin"));
        assert_eq!(s.activation_time, Some(t0()));
        assert_eq!(
            c.metadata,
            ObjectMeta {
                name: Some("alice-x".into()),
                namespace: Some("payments".into()),
                uid: ar.metadata.uid.clone(),
                resource_version: Some("4711".into()),
                ..Default::default()
            },
            "partial metadata: whoever reads more of it from the cache must keep it here"
        );
        assert_eq!(CachedRequest::kind(&()), "ActivationRequest");
        assert_eq!(CachedRequest::api_version(&()), "kubepim.io/v1alpha1");
        assert!(
            c.body_size() < serde_json::to_vec(&want).unwrap().len() / 2,
            "compressed: {} bytes",
            c.body_size()
        );
    }
}
