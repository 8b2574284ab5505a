//! Notifications (SPEC section 3): RoleSetting webhooks told about activations as they happen,
//! as CloudEvents 1.0 or Slack-compatible JSON, optionally signed with HMAC-SHA256.
//!
//! Delivery never delays activation or revocation: [`Notifier::send`] only renders and queues
//! (it never awaits the network), and each endpoint has its own worker, so a slow or failing
//! receiver holds up only its own queue. Per endpoint, notifications go out one at a time in
//! the order they were queued (so per request in order), each retried with backoff until it is
//! accepted (2xx) or older than `max_age`. Memory is bounded: a full queue refuses new
//! notifications, counted as dropped. Delivery is at least once while the operator runs (a
//! receiver drops repeats by `id`); queued notifications do not survive a restart — the
//! audit stream is the durable record.
//!
//! What is sent is decided by the pure functions in [`message`]; where it may go by
//! [`target`]. Signing keys are read from Secrets in the operator's own namespace only.

pub mod message;
pub mod target;

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper_util::client::legacy::{
    Client as HttpClient,
    connect::{HttpConnector, dns::Name},
};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::api::{ActivationRequest, NotificationFormat, NotificationWebhook, RoleSetting};
pub use message::Notification;
pub use target::TargetPolicy;

/// The label a Secret must carry (`"true"`) to be used as a notification signing key.
pub const SIGNING_KEY_LABEL: &str = "kubepim.io/notification-signing-key";

/// How notifications are delivered.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where they may go.
    pub policy: TargetPolicy,
    /// The operator's namespace: the only place signing keys are read from.
    pub namespace: String,
    /// The CloudEvents `source` (the operator).
    pub source: String,
    /// The most notifications one endpoint may have waiting.
    pub queue_capacity: usize,
    /// The most notifications waiting over all endpoints (bounds memory whatever RoleSettings
    /// configure).
    pub total_capacity: usize,
    /// A notification not delivered by then is dropped.
    pub max_age: Duration,
    /// One delivery attempt's time limit.
    pub attempt_timeout: Duration,
    /// The first retry's delay (doubling up to 30 s).
    pub first_retry: Duration,
}

impl Settings {
    /// Production defaults with `policy`, for the operator in `namespace`.
    pub fn new(policy: TargetPolicy, namespace: &str) -> Self {
        Self {
            policy,
            namespace: namespace.to_string(),
            source: format!("/apis/kubepim.io/v1alpha1/namespaces/{namespace}/operator"),
            queue_capacity: 1000,
            total_capacity: 10_000,
            max_age: Duration::from_secs(3600),
            attempt_timeout: Duration::from_secs(10),
            first_retry: Duration::from_millis(500),
        }
    }
}

/// A receiver, as configured on a RoleSetting.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Endpoint {
    url: String,
    format: NotificationFormatKey,
    secret: Option<(String, String)>,
}

/// `NotificationFormat` as a hashable key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum NotificationFormatKey {
    CloudEvents,
    Slack,
}

impl From<NotificationFormat> for NotificationFormatKey {
    fn from(f: NotificationFormat) -> Self {
        match f {
            NotificationFormat::CloudEvents => Self::CloudEvents,
            NotificationFormat::Slack => Self::Slack,
        }
    }
}

/// One rendered notification waiting for its endpoint.
#[derive(Clone)]
struct Job {
    id: String,
    body: Bytes,
    queued: Instant,
}

struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    wake: tokio::sync::Notify,
}

type Https = hyper_rustls::HttpsConnector<HttpConnector<PolicyResolver>>;
type CachedKey = (Instant, Vec<u8>);
/// An armed Expiring: for which expiry and RoleSetting generation, and the task.
type Timer = ((DateTime<Utc>, Option<i64>), tokio::task::JoinHandle<()>);

struct Inner {
    settings: Settings,
    kube: kube::Client,
    http: HttpClient<Https, Full<Bytes>>,
    queues: Mutex<HashMap<Endpoint, Arc<Queue>>>,
    /// Notifications waiting, over all endpoints.
    waiting: std::sync::atomic::AtomicUsize,
    /// Signing keys by (Secret, key), with when they were read.
    keys: Mutex<HashMap<(String, String), CachedKey>>,
    /// Expiring timers by request uid, with the expiry they were armed for.
    expiring: Mutex<HashMap<String, Timer>>,
    metrics: crate::metrics::NotificationMetrics,
}

/// The notification sender; cheap to clone.
#[derive(Clone)]
pub struct Notifier(Arc<Inner>);

impl Notifier {
    /// A notifier that reads signing keys with `kube` and counts into `metrics`.
    pub fn new(
        settings: Settings,
        kube: kube::Client,
        metrics: crate::metrics::NotificationMetrics,
    ) -> Self {
        let resolver = PolicyResolver(Arc::new(settings.policy.clone()));
        let mut http = HttpConnector::new_with_resolver(resolver);
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.attempt_timeout));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
            .unwrap_or_else(|e| {
                // Without CA certificates no https receiver can be verified: deliveries fail
                // (and are counted) rather than going out unverified.
                tracing::error!(error = %e, "no system CA certificates: https notifications will fail until the image has them");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            });
        let https = builder.https_or_http().enable_http1().wrap_connector(http);
        let http = HttpClient::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Self(Arc::new(Inner {
            settings,
            kube,
            http,
            queues: Default::default(),
            waiting: Default::default(),
            keys: Default::default(),
            expiring: Default::default(),
            metrics,
        }))
    }

    /// Queues `n` for every webhook of `rs` subscribed to its event. Never waits.
    pub fn send(&self, rs: &RoleSetting, n: &Notification) {
        let Some(notifications) = rs.spec.notifications.as_ref() else {
            return;
        };
        for hook in notifications
            .webhooks
            .iter()
            .filter(|h| h.events.contains(&n.event))
        {
            self.enqueue(hook, n);
        }
    }

    fn enqueue(&self, hook: &NotificationWebhook, n: &Notification) {
        let m = &self.0.metrics;
        if let Err(e) = self.0.settings.policy.check_url(&hook.url) {
            tracing::warn!(url = %hook.url, error = %e, "notification not sent: target refused");
            m.dropped("refused");
            return;
        }
        let body = message::render(n, hook.format, &self.0.settings.source);
        let job = Job {
            id: n.id.clone(),
            body: Bytes::from(serde_json::to_vec(&body).expect("notifications serialize")),
            queued: Instant::now(),
        };
        let endpoint = Endpoint {
            url: hook.url.clone(),
            format: hook.format.into(),
            secret: hook
                .secret_key_ref
                .as_ref()
                .map(|s| (s.name.clone(), s.key.clone())),
        };
        // Pushed under the map's lock: an idle worker removes its queue under the same lock,
        // so a job never lands in a queue whose worker has gone.
        let mut queues = self.0.queues.lock().expect("queues lock");
        let queue = queues
            .entry(endpoint.clone())
            .or_insert_with(|| {
                let q = Arc::new(Queue {
                    jobs: Mutex::new(VecDeque::new()),
                    wake: tokio::sync::Notify::new(),
                });
                tokio::spawn(self.clone().worker(endpoint, q.clone()));
                q
            })
            .clone();
        let mut jobs = queue.jobs.lock().expect("queue lock");
        let waiting = self.0.waiting.load(std::sync::atomic::Ordering::SeqCst);
        if jobs.len() >= self.0.settings.queue_capacity || waiting >= self.0.settings.total_capacity
        {
            m.dropped("queue_full");
            tracing::warn!(url = %hook.url, id = %n.id, "notification dropped: a receiver's queue, or all of them together, is full");
            return;
        }
        jobs.push_back(job);
        self.0
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        m.queued.inc();
        drop(jobs);
        drop(queues);
        queue.wake.notify_one();
    }

    /// Delivers one endpoint's queue in order, until it has been idle for ten minutes.
    async fn worker(self, endpoint: Endpoint, queue: Arc<Queue>) {
        loop {
            let front = queue.jobs.lock().expect("queue lock").front().cloned();
            let Some(job) = front else {
                // Idle for ten minutes: the worker goes (a RoleSetting may have dropped this
                // receiver), unless something was queued meanwhile.
                if tokio::time::timeout(Duration::from_secs(600), queue.wake.notified())
                    .await
                    .is_err()
                {
                    let mut queues = self.0.queues.lock().expect("queues lock");
                    if queue.jobs.lock().expect("queue lock").is_empty() {
                        queues.remove(&endpoint);
                        return;
                    }
                }
                continue;
            };
            let mut delay = self.0.settings.first_retry;
            loop {
                if job.queued.elapsed() > self.0.settings.max_age {
                    tracing::warn!(url = %endpoint.url, id = %job.id, "notification dropped: not delivered in time");
                    self.0.metrics.dropped("expired");
                    break;
                }
                match self.deliver(&endpoint, &job).await {
                    Ok(()) => {
                        self.0.metrics.sent.inc();
                        break;
                    }
                    Err(e) => {
                        self.0.metrics.failed.inc();
                        if job.queued.elapsed() + delay > self.0.settings.max_age {
                            tracing::warn!(url = %endpoint.url, id = %job.id, error = %e, "notification dropped: not delivered in time");
                            self.0.metrics.dropped("expired");
                            break;
                        }
                        tracing::info!(url = %endpoint.url, id = %job.id, error = %e, retry_in_ms = delay.as_millis() as u64, "notification not delivered; will retry");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
            queue.jobs.lock().expect("queue lock").pop_front();
            self.0
                .waiting
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            self.0.metrics.queued.dec();
        }
    }

    async fn deliver(&self, endpoint: &Endpoint, job: &Job) -> Result<(), String> {
        // Again at delivery: the operator's flags may have changed since admission.
        self.0.settings.policy.check_url(&endpoint.url)?;
        let content_type = match endpoint.format {
            NotificationFormatKey::CloudEvents => "application/cloudevents+json; charset=utf-8",
            NotificationFormatKey::Slack => "application/json",
        };
        let mut req = http::Request::post(&endpoint.url)
            .header(http::header::CONTENT_TYPE, content_type)
            .header("idempotency-key", &job.id)
            .header(http::header::USER_AGENT, "kube-pim-notifier");
        if let Some((name, key)) = &endpoint.secret {
            let secret = self.key(name, key).await?;
            req = req.header(
                message::SIGNATURE_HEADER,
                message::signature(&secret, &job.body),
            );
        }
        let req = req
            .body(Full::new(job.body.clone()))
            .map_err(|e| format!("building the request: {e}"))?;
        let resp = tokio::time::timeout(self.0.settings.attempt_timeout, self.0.http.request(req))
            .await
            .map_err(|_| "the receiver did not answer in time".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {}", resp.status()))
        }
    }

    /// The signing key `key` of Secret `name` in the operator's namespace (cached a minute,
    /// so a rotated key is used within a minute).
    async fn key(&self, name: &str, key: &str) -> Result<Vec<u8>, String> {
        let id = (name.to_string(), key.to_string());
        if let Some((at, v)) = self.0.keys.lock().expect("keys lock").get(&id)
            && at.elapsed() < Duration::from_secs(60)
        {
            return Ok(v.clone());
        }
        let ns = &self.0.settings.namespace;
        let secret = Api::<Secret>::namespaced(self.0.kube.clone(), ns)
            .get(name)
            .await
            .map_err(|e| format!("reading signing key Secret {ns}/{name}: {e}"))?;
        // Only Secrets meant as signing keys: a RoleSetting writer names the Secret, and must
        // not be able to make the operator use (or probe) another Secret of its namespace.
        let labelled = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SIGNING_KEY_LABEL))
            .is_some_and(|v| v == "true");
        if !labelled {
            return Err(format!(
                "Secret {ns}/{name} is not labelled {SIGNING_KEY_LABEL}=true: label it to use it as a notification signing key"
            ));
        }
        let value = secret
            .data
            .and_then(|d| d.get(key).map(|b| b.0.clone()))
            .ok_or_else(|| format!("Secret {ns}/{name} has no key {key:?}"))?;
        self.0
            .keys
            .lock()
            .expect("keys lock")
            .insert(id, (Instant::now(), value.clone()));
        Ok(value)
    }

    /// Makes sure the Expiring notification of an Active request is due at
    /// `expirationTime - expiringBefore` (at once if that has passed), once. Call on every
    /// reconcile of an Active request; a changed expiry re-schedules it.
    pub fn schedule_expiring(&self, rs: &Arc<RoleSetting>, ar: &ActivationRequest) {
        let Some(uid) = ar.metadata.uid.clone() else {
            return;
        };
        let subscribed = rs.spec.notifications.as_ref().filter(|n| {
            n.webhooks
                .iter()
                .any(|h| h.events.contains(&crate::api::NotificationEvent::Expiring))
        });
        let (Some(n), Some(expires)) = (
            subscribed,
            ar.status.as_ref().and_then(|s| s.expiration_time),
        ) else {
            // Nobody (any more) wants it: an armed timer goes.
            self.cancel_expiring(&uid);
            return;
        };
        let mut timers = self.0.expiring.lock().expect("expiring lock");
        // Re-armed when the expiry or the RoleSetting (its webhooks) changed.
        let armed_for = (expires, rs.metadata.generation);
        if timers.get(&uid).is_some_and(|(at, _)| *at == armed_for) {
            return;
        }
        let due = expires - n.expiring_before.as_delta();
        let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        // The RoleSetting as cached (shared, not copied) and the notification's fixed part,
        // not the whole request: one timer per Active request.
        let (me, rs, pending) = (self.clone(), Arc::clone(rs), message::expiring_of(ar));
        let task = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            me.send(&rs, &message::expiring_at(pending, Utc::now()));
        });
        if let Some((_, old)) = timers.insert(uid, (armed_for, task)) {
            old.abort();
        }
    }

    /// Forgets a request's Expiring notification (it is no longer Active). A notification
    /// already sent stays sent.
    pub fn cancel_expiring(&self, uid: &str) {
        if let Some((_, task)) = self.0.expiring.lock().expect("expiring lock").remove(uid) {
            task.abort();
        }
    }
}

/// DNS resolution that refuses names resolving to addresses the policy does not allow, so
/// the address checked is the address connected to.
#[derive(Clone)]
struct PolicyResolver(Arc<TargetPolicy>);

impl tower::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            for a in &addrs {
                policy
                    .check_ip(a.ip())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
            }
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::test_fixtures::*;

    /// A RoleSetting announcing everything to `urls`.
    fn announcing(urls: &[String]) -> RoleSetting {
        let mut rs = role_setting("rs");
        rs.spec.notifications = Some(crate::api::Notifications {
            webhooks: urls
                .iter()
                .map(|u| NotificationWebhook {
                    url: u.clone(),
                    format: NotificationFormat::CloudEvents,
                    events: vec![crate::api::NotificationEvent::Requested],
                    secret_key_ref: None,
                })
                .collect(),
            ..Default::default()
        });
        rs
    }

    #[tokio::test]
    async fn memory_stays_bounded_while_receivers_are_down() {
        // Nothing listens on these ports: every delivery fails and is retried.
        let [a, b] = crate::testenv::free_ports::<2>().unwrap();
        let mut settings = Settings::new(
            TargetPolicy {
                allow_http: true,
                allow_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
                allow_cluster_names: false,
            },
            "kube-pim-system",
        );
        settings.queue_capacity = 2;
        settings.total_capacity = 3;
        let metrics = crate::metrics::NotificationMetrics::default();
        let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap()))
            .unwrap();
        let notifier = Notifier::new(settings, kube, metrics.clone());
        let one = announcing(&[format!("http://127.0.0.1:{a}/x")]);
        let two = announcing(&[format!("http://127.0.0.1:{b}/x")]);
        let n = |i: i64| {
            let mut req = request("r", "payments", "rs", requester("alice", &[]));
            req.metadata.uid = Some(format!("u{i}"));
            message::from_transition(
                &req,
                &crate::api::HistoryEntry {
                    seq: 1,
                    time: t0(),
                    actor: "alice".into(),
                    action: crate::api::HistoryAction::Requested,
                    message: None,
                },
                false,
            )
            .unwrap()
        };
        for i in 0..5 {
            notifier.send(&one, &n(i));
        }
        assert_eq!(metrics.queued.get(), 2, "one receiver holds at most 2");
        notifier.send(&two, &n(10));
        notifier.send(&two, &n(11));
        assert_eq!(
            metrics.queued.get(),
            3,
            "all receivers together hold at most 3"
        );
        let dropped = metrics
            .dropped
            .get_or_create(&crate::metrics::DropLabels {
                reason: "queue_full",
            })
            .get();
        assert_eq!(dropped, 4);
        // A refused target is dropped at once, never queued.
        notifier.send(&announcing(&["https://10.0.0.1/x".to_string()]), &n(20));
        let refused = metrics
            .dropped
            .get_or_create(&crate::metrics::DropLabels { reason: "refused" })
            .get();
        assert_eq!(refused, 1);
        assert_eq!(metrics.queued.get(), 3);
    }
}
