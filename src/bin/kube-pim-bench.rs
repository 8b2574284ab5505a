//! `kube-pim-bench`: the benchmark behind `make bench` (see `kube_pim::bench`). Prints a
//! results table and writes the same results as JSON.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

/// Measures kube-pim against a real local control plane, next to a physical-limit baseline.
#[derive(Parser, Debug)]
#[command(name = "kube-pim-bench", version)]
struct Cli {
    /// Activations per figure.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Runs of the activation-latency figure.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Namespaces the load is spread over.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Activations that expire while no operator runs (the restart sweep).
    #[arg(long, default_value_t = 1000)]
    restart: usize,
    /// Offered rates for the throughput steps, activations per second (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [10.0, 20.0, 40.0, 60.0, 80.0])]
    rates: Vec<f64>,
    /// Seconds per throughput step.
    #[arg(long, default_value_t = 15)]
    rate_secs: u64,
    /// Memory checkpoints: N EligibleAssignments and N active activations (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000])]
    scale: Vec<usize>,
    /// The operator binary to measure (use the release build).
    #[arg(long, default_value = "target/release/kube-pim")]
    operator_bin: PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Scratch directory for the control planes (emptied first).
    #[arg(long, default_value = "target/bench/run")]
    dir: PathBuf,
    /// Also write kube-apiserver's CPU profile (pprof) of each throughput step and of the
    /// baseline's write capacity here; read them with `go tool pprof -top FILE`.
    #[arg(long)]
    profile_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    kube_pim::cli::init_logging(
        kube_pim::cli::LogFormat::Text,
        // While an apiserver starts, every /readyz poll answers 500 by design.
        "warn,kube_client::client::builder=off",
    );
    let _ = std::fs::remove_dir_all(&cli.dir);
    if let Some(d) = &cli.profile_dir
        && let Err(e) = std::fs::create_dir_all(d)
    {
        eprintln!("kube-pim-bench: cannot create {}: {e}", d.display());
        return ExitCode::FAILURE;
    }
    let opts = kube_pim::bench::run::Options {
        samples: cli.samples,
        runs: cli.runs,
        namespaces: cli.namespaces,
        restart: cli.restart,
        rates: cli.rates.clone(),
        rate_secs: cli.rate_secs,
        scale: cli.scale.clone(),
        operator_bin: std::path::absolute(&cli.operator_bin).unwrap_or(cli.operator_bin.clone()),
        dir: cli.dir.clone(),
        profile_dir: cli
            .profile_dir
            .as_ref()
            .map(|d| std::path::absolute(d).unwrap_or(d.clone())),
    };
    match kube_pim::cli::runtime().block_on(kube_pim::bench::run::run(&opts)) {
        Ok(report) => {
            print!("{}", report.table());
            if let Some(parent) = cli.out.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let json = serde_json::to_string_pretty(&report).expect("reports serialize");
            if let Err(e) = std::fs::write(&cli.out, json) {
                eprintln!("kube-pim-bench: cannot write {}: {e}", cli.out.display());
                return ExitCode::FAILURE;
            }
            println!("\nresults: {}", cli.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kube-pim-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
