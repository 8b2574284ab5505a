//! kube-pim's one error type. Messages name the problem and what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong in kube-pim's own code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),

    /// No usable cluster configuration was found.
    #[error("cannot find a cluster to talk to ({0}): set KUBECONFIG or run inside a cluster")]
    Config(String),

    /// The apiserver did not answer in time (the message says what was asked).
    #[error("{0}: the apiserver did not answer in time (check its load and the network to it)")]
    Timeout(String),

    /// Reading or writing a local file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The local test control plane could not be built or started.
    #[error("test control plane: {0}")]
    TestEnv(String),

    /// A `kubectl pim` command could not do what was asked (the message says what to do).
    #[error("{0}")]
    Plugin(String),

    /// The audit stream cannot be opened or does not verify (the message says what to do).
    #[error("{0}")]
    Audit(String),

    /// An object kept in a cache does not decode (see `controller::packed`).
    #[error("{0}")]
    Cache(String),

    /// Standard output was closed (e.g. `kubectl pim audit | head`): a clean end, not a failure.
    #[error("output closed")]
    OutputClosed,

    /// Generating or parsing a certificate failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

impl Error {
    /// An I/O error with the action and the path it concerned.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// kube-pim's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
