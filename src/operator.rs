//! The long-running `kube-pim run` process: connects to the cluster as the operator's own
//! identity, serves `/healthz` and `/readyz` on a plain-HTTP port, and runs until SIGTERM.
//!
//! Readiness means the operator can reach the apiserver with its own credentials and the
//! kube-pim API is served. The controllers and the admission webhook hang off this process
//! (issue #3); this module is the frame they start in.

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

use crate::{Error, Result, api::RoleSetting};

/// Settings of the operator process.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where `/healthz` and `/readyz` are served (plain HTTP).
    pub health_addr: SocketAddr,
    /// The operator's own user name: the one exemption in every admission guard.
    pub operator_username: String,
}

/// Runs the operator until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> Result<()> {
    let client = Client::try_default()
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(settings.health_addr)
        .await
        .map_err(Error::io("listen on", settings.health_addr.to_string()))?;
    tracing::info!(addr = %settings.health_addr, operator_username = %settings.operator_username, "serving health endpoints");
    let app = health_router(ready.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Ready once our own identity can list the kube-pim API; retried because the CRDs may be
    // installed after the operator starts (GitOps order).
    let probe = Api::<RoleSetting>::all(client.clone());
    loop {
        match probe.list(&ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "kube-pim API not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    ready.store(true, Ordering::SeqCst);
    tracing::info!("ready");

    shutdown_signal().await;
    tracing::info!("shutting down");
    server.abort();
    Ok(())
}

fn health_router(ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
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
