//! Command-line interface of the `kube-pim` binary (clap derive; every flag has an env var).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{crdgen, operator};

/// kube-pim: Privileged Identity Management for Kubernetes RBAC.
#[derive(Parser, Debug)]
#[command(name = "kube-pim", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "KUBE_PIM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `kube_pim=debug`).
    #[arg(long, env = "KUBE_PIM_LOG", default_value = "info", global = true)]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log pipelines).
    Json,
    /// Human-readable text.
    Text,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator (controllers, admission webhook, health endpoints).
    Run {
        /// Address of the plain-HTTP health endpoints (/healthz, /readyz).
        #[arg(long, env = "KUBE_PIM_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
        health_addr: SocketAddr,
        /// The operator's own user name: the only exemption in every admission guard.
        #[arg(
            long,
            env = "KUBE_PIM_OPERATOR_USERNAME",
            default_value = "system:serviceaccount:kube-pim-system:kube-pim"
        )]
        operator_username: String,
    },
    /// Print the CRDs (YAML), or write one file per CRD into --dir.
    Crds {
        /// Write `<group>_<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Sets up logging to stderr.
pub fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Entry point of the `kube-pim` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    let result = match cli.command {
        Command::Crds { dir: None } => {
            print!("{}", crdgen::all_yaml());
            Ok(())
        }
        Command::Crds { dir: Some(dir) } => write_crds(&dir),
        Command::Run {
            health_addr,
            operator_username,
        } => runtime().block_on(operator::run(operator::Settings {
            health_addr,
            operator_username,
        })),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "kube-pim failed");
            eprintln!("kube-pim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_crds(dir: &std::path::Path) -> crate::Result<()> {
    std::fs::create_dir_all(dir).map_err(crate::Error::io("create", dir))?;
    for crd in crdgen::all() {
        let path = dir.join(crdgen::file_name(&crd));
        std::fs::write(&path, crdgen::to_yaml(&crd)).map_err(crate::Error::io("write", &path))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The tokio runtime for long-running commands.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
