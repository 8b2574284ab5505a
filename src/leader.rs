//! Leader election on a `coordination.k8s.io` Lease (SPEC invariant 4, survival): several
//! replicas run; every one watches and serves the admission webhook, only the leader reconciles.
//!
//! The rules are client-go's: the holder renews every `retry` period; another replica takes
//! the Lease only after it has seen the same record, unchanged, for a whole lease duration on
//! its own monotonic clock (no trust in other machines' clocks); writes use the Lease's
//! resourceVersion, so two replicas never both win. A restarted process with the same
//! identity (a container restarted in the same pod) takes its Lease back at once.
//!
//! Fencing: leadership is valid only until `renew deadline` after the start of the last
//! successful renewal, on the local monotonic clock (which keeps counting while the process is
//! paused). The operator's API client refuses every write while leadership is not valid
//! ([`Leadership::allows`]), so a leader that was paused, lost its Lease and woke up makes no
//! writes before it notices and exits.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

use crate::Error;

/// The Lease's name (in the operator's namespace).
pub const LEASE_NAME: &str = "kube-pim";

/// How leader election is configured.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Lease's namespace (the operator's own).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// Who this replica is (the pod name in a cluster).
    pub identity: String,
    /// How long a Lease is good for without renewal.
    pub lease_duration: Duration,
}

impl Config {
    /// How long after the start of a successful renewal this replica may still act as leader.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// How often the Lease is renewed or tried.
    pub fn retry(&self) -> Duration {
        (self.lease_duration / 5).max(Duration::from_millis(200))
    }
}

/// Whether this replica leads now.
#[derive(Debug, Default)]
pub struct Leadership {
    /// `Some(t)`: leading until `t`. Always `Some(far future)` when election is off.
    valid_until: Mutex<Option<Instant>>,
    acquired: tokio::sync::Notify,
}

impl Leadership {
    /// Leadership without election: this process always leads.
    pub fn always() -> Arc<Self> {
        let l = Self::default();
        *l.valid_until.lock().expect("leadership lock") =
            Some(Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
        Arc::new(l)
    }

    /// Whether this replica may act as leader now.
    pub fn is_leader(&self) -> bool {
        self.valid_until
            .lock()
            .expect("leadership lock")
            .is_some_and(|t| Instant::now() < t)
    }

    /// Whether the operator's client may send this request: reads always; SubjectAccessReviews
    /// (questions, not writes: the webhook asks them on every replica) always; any other write
    /// only while leading.
    pub fn allows(&self, method: &http::Method, path: &str) -> bool {
        matches!(*method, http::Method::GET | http::Method::HEAD)
            || path.starts_with("/apis/authorization.k8s.io/")
            || self.is_leader()
    }

    /// Resolves once this replica leads.
    pub async fn acquired(&self) {
        loop {
            let notified = self.acquired.notified();
            if self.is_leader() {
                return;
            }
            notified.await;
        }
    }

    fn lead_until(&self, t: Instant) {
        *self.valid_until.lock().expect("leadership lock") = Some(t);
        self.acquired.notify_waiters();
    }
}

/// What to do with the Lease as observed.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Take it (absent, free, ours, or expired by our own observation).
    Take,
    /// Someone else holds it.
    Follow(String),
}

/// The decision, pure: `observed` is the Lease's spec, `unchanged_for` how long this replica
/// has seen that same record.
pub fn step(
    observed: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    lease_duration: Duration,
) -> Step {
    let holder = observed
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    match holder {
        None => Step::Take,
        Some(h) if h == me => Step::Take,
        Some(_) if unchanged_for >= lease_duration => Step::Take,
        Some(h) => Step::Follow(h),
    }
}

/// Runs the election until leadership, once held, is lost; then returns (the caller exits:
/// a replica that lost its Lease may hold stale state, so it starts over as a new process).
pub async fn run(client: Client, cfg: Config, leadership: Arc<Leadership>) -> Error {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut seen: Option<(String, Instant)> = None; // (record, first seen)
    let mut led = false;
    loop {
        let started = Instant::now();
        match try_once(&api, &cfg, &mut seen).await {
            Ok(true) => {
                if !led {
                    tracing::info!(identity = %cfg.identity, lease = %cfg.name, "acquired the lease: leading");
                }
                led = true;
                leadership.lead_until(started + cfg.renew_deadline());
            }
            Ok(false) => {
                if led {
                    return Error::Config(format!(
                        "lost the lease {}/{} to another replica: exiting so a fresh process follows",
                        cfg.namespace, cfg.name
                    ));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read or renew the lease");
                if led && !leadership.is_leader() {
                    return Error::Config(format!(
                        "could not renew the lease {}/{} within its deadline: exiting",
                        cfg.namespace, cfg.name
                    ));
                }
            }
        }
        if led && !leadership.is_leader() {
            return Error::Config(
                "the lease deadline passed before it was renewed: exiting".into(),
            );
        }
        tokio::time::sleep(cfg.retry()).await;
    }
}

/// One round: read the Lease and take or renew it when [`step`] says so.
async fn try_once(
    api: &Api<Lease>,
    cfg: &Config,
    seen: &mut Option<(String, Instant)>,
) -> Result<bool, Error> {
    let now = crate::time::to_k8s_micro(Utc::now());
    let current = api.get_opt(&cfg.name).await?;
    let Some(lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
                ),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let record = serde_json::to_string(&spec).unwrap_or_default();
    let since = match seen {
        Some((r, at)) if *r == record => *at,
        _ => {
            *seen = Some((record, Instant::now()));
            Instant::now()
        }
    };
    match step(
        Some(&spec),
        &cfg.identity,
        since.elapsed(),
        cfg.lease_duration,
    ) {
        Step::Follow(_) => Ok(false),
        Step::Take => {
            let ours = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
            let mut next = lease.clone();
            let s = next.spec.get_or_insert_with(Default::default);
            if !ours {
                s.acquire_time = Some(now.clone());
                s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
            }
            s.holder_identity = Some(cfg.identity.clone());
            s.lease_duration_seconds =
                Some(i32::try_from(cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX));
            s.renew_time = Some(now);
            // The resourceVersion read above makes this a compare-and-swap.
            match api.replace(&cfg.name, &PostParams::default(), &next).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(h: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(h.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_free_own_or_stale_lease_is_taken_a_live_one_followed() {
        let d = Duration::from_secs(15);
        assert_eq!(step(None, "a", Duration::ZERO, d), Step::Take);
        assert_eq!(step(Some(&held_by("")), "a", Duration::ZERO, d), Step::Take);
        assert_eq!(
            step(Some(&held_by("a")), "a", Duration::ZERO, d),
            Step::Take
        );
        assert_eq!(
            step(Some(&held_by("b")), "a", Duration::from_secs(14), d),
            Step::Follow("b".into())
        );
        assert_eq!(
            step(Some(&held_by("b")), "a", Duration::from_secs(15), d),
            Step::Take
        );
    }

    #[test]
    fn writes_are_fenced_by_leadership_reads_and_access_reviews_are_not() {
        let l = Leadership::default();
        let post = http::Method::POST;
        assert!(!l.is_leader());
        assert!(l.allows(
            &http::Method::GET,
            "/apis/kubepim.io/v1alpha1/activationrequests"
        ));
        assert!(l.allows(&post, "/apis/authorization.k8s.io/v1/subjectaccessreviews"));
        assert!(!l.allows(
            &post,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/x/rolebindings"
        ));
        assert!(!l.allows(
            &http::Method::PATCH,
            "/apis/kubepim.io/v1alpha1/namespaces/x/activationrequests/a/status"
        ));
        l.lead_until(Instant::now() + Duration::from_secs(60));
        assert!(l.allows(
            &http::Method::DELETE,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/x/rolebindings/b"
        ));
        // Past the deadline (a paused process waking up): fenced again.
        l.lead_until(Instant::now() - Duration::from_millis(1));
        assert!(!l.is_leader());
        assert!(!l.allows(
            &http::Method::DELETE,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/x/rolebindings/b"
        ));
        assert!(Leadership::always().is_leader());
    }

    #[test]
    fn the_deadline_is_inside_the_lease() {
        let c = Config {
            namespace: "ns".into(),
            name: "kube-pim".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
        };
        assert_eq!(c.renew_deadline(), Duration::from_secs(10));
        assert_eq!(c.retry(), Duration::from_secs(3));
    }
}
