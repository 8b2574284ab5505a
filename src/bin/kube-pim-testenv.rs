//! `kube-pim-testenv`: runs a real local control plane (etcd, kube-apiserver,
//! kube-controller-manager, built from source) for people and for the test suite.
//!
//! `kube-pim-testenv up --dir DIR [--user NAME[:GROUP,...]]... [--operator]` starts it, writes
//! kubeconfigs, creates `DIR/ready`, and runs until SIGINT/SIGTERM (or, with `--watch-stdin`,
//! until its standard input closes: how the test suite makes sure that a test process that
//! dies, even by SIGKILL, takes the control plane with it).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use kube_pim::{
    cli::{LogFormat, init_logging, runtime},
    testenv::{ControlPlane, Options, User},
};

/// A real local Kubernetes control plane for kube-pim's tests and demo.
#[derive(Parser, Debug)]
#[command(name = "kube-pim-testenv", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start the control plane and keep it running until SIGINT/SIGTERM.
    Up {
        /// Directory for certificates, kubeconfigs, logs and etcd data.
        #[arg(long)]
        dir: PathBuf,
        /// A user to write DIR/NAME.kubeconfig for: NAME or NAME:GROUP1,GROUP2. Repeatable.
        #[arg(long = "user")]
        users: Vec<User>,
        /// Also run the kube-pim operator, as its own user with the operator's ClusterRole.
        #[arg(long)]
        operator: bool,
        /// Install nothing of kube-pim's (no CRDs, no persona ClusterRoles), like a new
        /// cluster: for installing the Helm chart.
        #[arg(long, conflicts_with = "operator")]
        bare: bool,
        /// The kube-pim binary for --operator (default: next to this binary).
        #[arg(long)]
        operator_bin: Option<PathBuf>,
        /// One more argument for the operator's `kube-pim run` (e.g. `--resync=15s`). Repeatable.
        #[arg(long = "operator-arg", allow_hyphen_values = true)]
        operator_args: Vec<String>,
        /// Shut down when standard input reaches end of file (for test harnesses).
        #[arg(long)]
        watch_stdin: bool,
        /// Remove DIR on shutdown.
        #[arg(long)]
        remove_dir: bool,
        /// Log filter. kube-client's per-response errors are off by default: while the
        /// apiserver starts, every /readyz poll answers 500 by design; real failures are
        /// reported by kube-pim-testenv itself.
        #[arg(
            long,
            env = "KUBE_PIM_LOG",
            default_value = "info,kube_client::client::builder=off"
        )]
        log_level: String,
    },
}

fn main() -> ExitCode {
    let Cmd::Up {
        dir,
        users,
        operator,
        bare,
        operator_bin,
        operator_args,
        watch_stdin,
        remove_dir,
        log_level,
    } = Cli::parse().command;
    init_logging(LogFormat::Text, &log_level);
    let operator_bin = if operator {
        match operator_bin.or_else(build_kube_pim) {
            Some(b) => Some(b),
            None => {
                eprintln!(
                    "kube-pim-testenv: --operator needs the kube-pim binary: run `cargo build --bins` or pass --operator-bin"
                );
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    runtime().block_on(async move {
        let opts = Options {
            dir: dir.clone(),
            users,
            operator_bin,
            operator_args,
            bin_dir: None,
            bare,
            apiserver_audit: false,
        };
        let cp = tokio::select! {
            r = ControlPlane::start(opts) => r,
            _ = kube_pim::operator::shutdown_signal() => {
                eprintln!("kube-pim-testenv: interrupted during start-up");
                return ExitCode::FAILURE;
            }
        };
        let cp = match cp {
            Ok(cp) => cp,
            Err(e) => {
                eprintln!("kube-pim-testenv: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!(
            "kube-pim-testenv: control plane ready at {}\n  export KUBECONFIG={}\n  {} get pim -A",
            cp.env().server(),
            cp.env().dir().join("admin.kubeconfig").display(),
            cp.env().dir().join("bin/kubectl").display()
        );
        tokio::select! {
            _ = kube_pim::operator::shutdown_signal() => {},
            _ = stdin_closed(), if watch_stdin => {},
        }
        eprintln!("kube-pim-testenv: stopping");
        cp.shutdown().await;
        if remove_dir {
            let _ = std::fs::remove_dir_all(&dir);
        }
        ExitCode::SUCCESS
    })
}

/// Resolves when standard input reaches end of file. Read on a plain thread: tokio's stdin
/// reader occupies a blocking-pool thread that the runtime would wait for at shutdown, so a
/// SIGTERM while stdin is still open would never finish.
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// The `kube-pim` binary next to this one, built first when missing (`cargo run --bin
/// kube-pim-testenv` builds only this binary) and when this is a cargo checkout.
fn build_kube_pim() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("kube-pim");
    if !p.exists() {
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let release = exe.parent()?.ends_with("release");
        eprintln!("kube-pim-testenv: building the kube-pim binary for --operator");
        let mut cmd =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--bin", "kube-pim", "--manifest-path"])
            .arg(&manifest);
        if release {
            cmd.arg("--release");
        }
        // Build into the directory this binary lives in, wherever the target dir is.
        if let Some(target) = exe.parent()?.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            return None;
        }
    }
    p.exists().then_some(p)
}
