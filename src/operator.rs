//! The long-running `kube-pim run` process: connects to the cluster as the operator's own
//! identity, serves `/healthz`, `/readyz` and `/metrics` on a plain-HTTP port, and runs until
//! SIGTERM.
//!
//! Readiness ([`Readiness`]) means every watch cache has synced (so nothing is decided or
//! admitted from a partial view) and, when this process serves the admission webhook, that its
//! listener is up. Leadership plays no part: a follower watches and serves the webhook, so it
//! is ready once its caches have synced (docs/observability.md, *Readiness*).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use kube::{Api, Client, api::ListParams};

use crate::{Error, Result, api::RoleSetting, controller, webhook};

/// Settings of the operator process.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where `/healthz` and `/readyz` are served (plain HTTP).
    pub health_addr: SocketAddr,
    /// The operator's own user name: the one exemption in every admission guard.
    pub operator_username: String,
    /// Where audit lines go: a file, or `-` for standard output.
    pub audit_log: String,
    /// When the audit file is rotated.
    pub audit_rotation: controller::audit::Rotation,
    /// Where the audit file is shipped (CloudEvents over HTTP), if anywhere.
    pub audit_sink_url: Option<String>,
    /// The controllers' settings.
    pub controllers: controller::Settings,
    /// The admission webhook, if served by this process.
    pub webhook: Option<(webhook::Listen, webhook::review::Settings)>,
    /// Leader election; `None`: this process always leads (a single replica).
    pub leader_election: Option<crate::leader::Config>,
}

/// Runs the operator until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> Result<()> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    let config = crate::cli::with_user_agent(config, "kube-pim");
    let leadership = match &settings.leader_election {
        Some(_) => Arc::new(crate::leader::Leadership::default()),
        None => crate::leader::Leadership::always(),
    };
    // Every write of this process goes through this client, fenced by leadership.
    let client = fenced_client(config.clone(), leadership.clone())?;
    if let Some(cfg) = settings.leader_election.clone() {
        let lease_client = Client::try_from(config)?;
        let leadership = leadership.clone();
        tokio::spawn(async move {
            let e = crate::leader::run(lease_client, cfg, leadership).await;
            // A replica that lost its Lease exits: it starts over as a follower with fresh
            // caches (its writes were fenced from the moment its deadline passed).
            tracing::error!(error = %e, "leadership lost");
            std::process::exit(1);
        });
    }
    let ready = Arc::new(Readiness::new(settings.webhook.is_some()));
    let listener = tokio::net::TcpListener::bind(settings.health_addr)
        .await
        .map_err(Error::io("listen on", settings.health_addr.to_string()))?;
    tracing::info!(addr = %settings.health_addr, operator_username = %settings.operator_username, "serving health endpoints");
    let context: Arc<std::sync::OnceLock<Arc<controller::Context>>> = Arc::default();
    let app = health_router(ready.clone(), context.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Wait until our own identity can list the kube-pim API: the CRDs may be installed after
    // the operator starts (GitOps order), and watching a missing resource only backs off.
    let probe = Api::<RoleSetting>::all(client.clone());
    while let Err(e) = probe.list(&ListParams::default().limit(1)).await {
        tracing::warn!(error = %e, "kube-pim API not reachable yet; retrying");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut audit =
        controller::audit::AuditLog::open(&settings.audit_log, settings.audit_rotation)?;
    if let Some(url) = &settings.audit_sink_url {
        audit = audit.with_sink(
            url,
            &crate::notify::Settings::new(Default::default(), &settings.controllers.namespace)
                .source,
        )?;
        if let Some(s) = audit.sink() {
            tokio::spawn(s.clone().run());
        }
    }
    let on_ready = {
        let ready = ready.clone();
        move || {
            ready.caches_synced();
            match ready.check() {
                Ok(()) => tracing::info!("ready"),
                Err(why) => tracing::info!(%why, "caches synced; not ready yet"),
            }
        }
    };
    let (ctx, controllers) =
        controller::start(client, settings.controllers, audit, leadership, on_ready);
    let _ = context.set(ctx.clone());
    if let Some((listen, wsettings)) = settings.webhook {
        let ctx = ctx.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let listening = {
                let ready = ready.clone();
                move || ready.set_webhook_serving(true)
            };
            let r = webhook::serve(listen, ctx, wsettings, listening).await;
            // Not ready any more: the Service sends admission requests to other replicas.
            ready.set_webhook_serving(false);
            if let Err(e) = r {
                // Fail closed: without the webhook, the apiserver refuses requests and decisions.
                tracing::error!(error = %e, "the admission webhook stopped");
            }
        });
    }
    // The controllers stop on SIGINT/SIGTERM themselves (shutdown_on_signal).
    controllers.await;
    tracing::info!("shutting down");
    server.abort();
    Ok(())
}

/// A client whose writes go through only while `leadership` is valid
/// ([`crate::leader::Leadership::allows`]); a refused write fails with "not the leader".
pub fn fenced_client(
    config: kube::Config,
    leadership: Arc<crate::leader::Leadership>,
) -> Result<Client> {
    let builder = kube::client::ClientBuilder::try_from(config)?;
    // Fault injection for the crash tests: exit abruptly right after the Nth write.
    let builder = builder.with_layer(&tower::layer::layer_fn(|inner| ExitAfterWrites {
        inner,
        left: std::env::var(FAULT_EXIT_AFTER_WRITES)
            .ok()
            .and_then(|v| v.parse().ok())
            .map(|n: i64| Arc::new(std::sync::atomic::AtomicI64::new(n))),
    }));
    Ok(builder
        .with_layer(&tower::filter::FilterLayer::new(
            move |req: http::Request<kube::client::Body>| {
                if leadership.allows(req.method(), req.uri().path()) {
                    Ok(req)
                } else {
                    Err(Error::Config(format!(
                        "not the leader: {} {} refused",
                        req.method(),
                        req.uri().path()
                    )))
                }
            },
        ))
        .build())
}

/// The environment variable that makes the operator exit abruptly (SIGABRT, no clean-up) right
/// after its Nth successful write to the API: the crash tests use it to stop the operator after
/// every step of a lifecycle and check that a restart converges on the same end state. Unset
/// in production; nothing else reads it.
pub const FAULT_EXIT_AFTER_WRITES: &str = "KUBE_PIM_FAULT_EXIT_AFTER_WRITES";

/// See [`FAULT_EXIT_AFTER_WRITES`]; a pass-through when `left` is `None`.
#[derive(Clone)]
struct ExitAfterWrites<S> {
    inner: S,
    left: Option<Arc<std::sync::atomic::AtomicI64>>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for ExitAfterWrites<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, std::result::Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let write = !matches!(*req.method(), http::Method::GET | http::Method::HEAD)
            && !req.uri().path().starts_with("/apis/authorization.k8s.io/");
        let left = self.left.clone().filter(|_| write);
        let what = format!("{} {}", req.method(), req.uri().path());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            if let Some(left) = left
                && r.as_ref().is_ok_and(|resp| resp.status().is_success())
                && left.fetch_sub(1, Ordering::SeqCst) == 1
            {
                eprintln!("{FAULT_EXIT_AFTER_WRITES}: exiting right after {what}");
                std::process::abort();
            }
            r
        })
    }
}

/// What `/readyz` reports: ready once every watch cache has synced and, when this process
/// serves the admission webhook, while its HTTPS listener is up. Leadership is not part of it:
/// a follower is ready (it serves the webhook, and its caches make its gauges exact), and one
/// that loses its Lease exits instead of turning unready.
#[derive(Debug)]
pub struct Readiness {
    caches_synced: AtomicBool,
    webhook_serving: AtomicBool,
}

impl Readiness {
    /// Not ready yet; `webhook`: this process serves the admission webhook.
    pub fn new(webhook: bool) -> Self {
        Self {
            caches_synced: AtomicBool::new(false),
            webhook_serving: AtomicBool::new(!webhook),
        }
    }

    /// Every watch cache has listed its objects.
    pub fn caches_synced(&self) {
        self.caches_synced.store(true, Ordering::SeqCst);
    }

    /// The webhook's listener is up (`true`) or has stopped (`false`).
    pub fn set_webhook_serving(&self, serving: bool) {
        self.webhook_serving.store(serving, Ordering::SeqCst);
    }

    /// `Ok` when ready, else what is missing.
    pub fn check(&self) -> std::result::Result<(), String> {
        let mut missing = Vec::new();
        if !self.caches_synced.load(Ordering::SeqCst) {
            missing.push("watch caches not synced");
        }
        if !self.webhook_serving.load(Ordering::SeqCst) {
            missing.push("admission webhook not serving");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }
}

/// `/healthz` (the process answers), `/readyz` ([`Readiness`]) and `/metrics` (Prometheus text,
/// computed from the caches when scraped; empty until the controllers have started).
pub fn health_router(
    ready: Arc<Readiness>,
    context: Arc<std::sync::OnceLock<Arc<controller::Context>>>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let context = context.clone();
                async move {
                    let body = match context.get() {
                        Some(ctx) => ctx.scrape(),
                        None => "# EOF\n".to_string(),
                    };
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready.check() {
                        Ok(()) => (StatusCode::OK, "ok".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
                    }
                }
            }),
        )
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .clone()
            .oneshot(
                http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_only_once_the_caches_synced_and_the_webhook_listens() {
        let ready = Arc::new(Readiness::new(true));
        let app = health_router(ready.clone(), Arc::default());
        assert_eq!(get(&app, "/healthz").await, (StatusCode::OK, "ok".into()));
        assert_eq!(
            get(&app, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: watch caches not synced; admission webhook not serving".into()
            )
        );
        ready.caches_synced();
        assert_eq!(
            get(&app, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: admission webhook not serving".into()
            )
        );
        ready.set_webhook_serving(true);
        assert_eq!(get(&app, "/readyz").await, (StatusCode::OK, "ok".into()));
        // The webhook stopped: no longer ready.
        ready.set_webhook_serving(false);
        assert_eq!(
            get(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Before the controllers start, /metrics is a valid, empty exposition.
        assert_eq!(
            get(&app, "/metrics").await,
            (StatusCode::OK, "# EOF\n".into())
        );
    }

    #[test]
    fn without_a_webhook_the_caches_alone_decide() {
        let ready = Readiness::new(false);
        assert!(ready.check().is_err());
        ready.caches_synced();
        assert_eq!(ready.check(), Ok(()));
    }
}
