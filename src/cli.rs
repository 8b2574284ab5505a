//! Command-line interface of the `kube-pim` binary (clap derive; every flag has an env var).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Run(Box<RunArgs>),
    /// Print the CRDs (YAML), or write one file per CRD, and the default
    /// ValidatingAdmissionPolicies, into --dir.
    Crds {
        /// Write `<group>_<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also write the Helm chart's generated files (its CRDs, and the templates of the
        /// RBAC, policies and webhook configurations) into this chart directory.
        #[arg(long, requires = "dir")]
        chart_dir: Option<PathBuf>,
    },
    /// Revoke every kube-pim binding past its expiry (the independent reaper; run it as a
    /// CronJob with its own identity: list and delete RoleBindings and ClusterRoleBindings).
    Sweep {
        /// Keep sweeping at this interval instead of once (Go duration, e.g. 30s).
        #[arg(long)]
        interval: Option<crate::api::Duration>,
    },
    /// Work with the audit stream.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the ValidatingAdmissionPolicies and bindings (YAML): the in-apiserver guards.
    Policies {
        /// The operator's user name (the only exemption; the same as `run --operator-username`).
        #[arg(
            long,
            env = "KUBE_PIM_OPERATOR_USERNAME",
            default_value = crate::policies::DEFAULT_OPERATOR_USERNAME
        )]
        operator_username: String,
        /// The operator's namespace (where it keeps the standing-access ConfigMap).
        #[arg(long, env = "POD_NAMESPACE", default_value = "kube-pim-system")]
        namespace: String,
        /// Members of this group may still bind governed roles directly (break glass).
        #[arg(long, env = "KUBE_PIM_BREAK_GLASS_GROUP")]
        break_glass_group: Option<String>,
        /// Exempt the operator only when it authenticates with a pod-bound ServiceAccount
        /// token (a token minted outside its pod is then not exempt).
        #[arg(long)]
        require_pod_bound_token: bool,
    },
}

/// `kube-pim audit ...`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain of audit files: every line must follow the one before it, so an
    /// edited, removed, inserted or reordered line is found. Give rotated files oldest first,
    /// then the current one (e.g. `audit.log.* audit.log`). Exit 0 when intact, 1 when not.
    Verify {
        /// The files, in stream order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Flags of `kube-pim run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Address of the plain-HTTP endpoints /healthz, /readyz and /metrics (apart from the
    /// webhook's TLS port; docs/observability.md).
    #[arg(long, env = "KUBE_PIM_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    health_addr: SocketAddr,
    /// The operator's own user name: the only exemption in every admission guard.
    #[arg(
        long,
        env = "KUBE_PIM_OPERATOR_USERNAME",
        default_value = crate::policies::DEFAULT_OPERATOR_USERNAME
    )]
    operator_username: String,
    /// The operator's own namespace (its Lease, the standing-access ConfigMap, Secrets it
    /// may read).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-pim-system")]
    namespace: String,
    /// The only namespace where Cluster-scope assignments and requests may live (default:
    /// the operator's own namespace).
    #[arg(long, env = "KUBE_PIM_CLUSTER_SCOPE_NAMESPACE")]
    cluster_scope_namespace: Option<String>,
    /// Where audit lines (one JSON object per transition) go: a file, or `-` for stdout.
    #[arg(long, env = "KUBE_PIM_AUDIT_LOG", default_value = "-")]
    audit_log: String,
    /// Rotate the audit file once it is this many MiB (the chain continues into the next
    /// file).
    #[arg(long, env = "KUBE_PIM_AUDIT_LOG_MAX_MB", default_value_t = 100)]
    audit_log_max_mb: u64,
    /// Rotated audit files to keep (FILE.<n of its last line>; the oldest are deleted).
    #[arg(long, env = "KUBE_PIM_AUDIT_LOG_MAX_FILES", default_value_t = 10)]
    audit_log_max_files: usize,
    /// Ship the audit file, in order, to this HTTP(S) endpoint as CloudEvents batches; ended
    /// requests are kept past their retention until it has them. Needs --audit-log FILE.
    #[arg(long, env = "KUBE_PIM_AUDIT_SINK_URL")]
    audit_sink_url: Option<String>,
    /// How long terminal, fully audited ActivationRequests are kept (Go duration).
    #[arg(long, env = "KUBE_PIM_RETENTION", default_value = "720h")]
    retention: crate::api::Duration,
    /// The userInfo.extra key that carries MFA proof.
    #[arg(long, env = "KUBE_PIM_MFA_EXTRA_KEY", default_value = "kubepim.io/amr")]
    mfa_extra_key: String,
    /// A value of that key that counts as MFA (repeatable).
    #[arg(
        long = "mfa-value",
        env = "KUBE_PIM_MFA_VALUES",
        value_delimiter = ',',
        default_value = "mfa"
    )]
    mfa_values: Vec<String>,
    /// Serve the admission webhook (HTTPS) on this address; needs --webhook-cert-file and
    /// --webhook-key-file.
    #[arg(long, env = "KUBE_PIM_WEBHOOK_ADDR")]
    webhook_addr: Option<SocketAddr>,
    /// The webhook's PEM certificate (re-read when it changes).
    #[arg(long, env = "KUBE_PIM_WEBHOOK_CERT_FILE", requires = "webhook_addr")]
    webhook_cert_file: Option<PathBuf>,
    /// The webhook's PEM private key (re-read when it changes).
    #[arg(long, env = "KUBE_PIM_WEBHOOK_KEY_FILE", requires = "webhook_addr")]
    webhook_key_file: Option<PathBuf>,
    /// Members of this group may delete ActivationRequests that are still open (break glass).
    #[arg(long, env = "KUBE_PIM_BREAK_GLASS_GROUP")]
    break_glass_group: Option<String>,
    /// The most open (not yet ended) ActivationRequests one requester may have at a time.
    #[arg(long, env = "KUBE_PIM_MAX_OPEN_REQUESTS", default_value_t = 10)]
    max_open_requests: usize,
    /// Allow notification webhooks over plain http:// (local testing only: receivers see who
    /// activated what).
    #[arg(long, env = "KUBE_PIM_NOTIFICATION_ALLOW_HTTP")]
    notification_allow_http: bool,
    /// Allow notification targets in this CIDR although it is internal (loopback, private,
    /// link-local), e.g. the address of an in-cluster receiver (repeatable).
    #[arg(
        long = "notification-allow-cidr",
        env = "KUBE_PIM_NOTIFICATION_ALLOW_CIDRS",
        value_delimiter = ','
    )]
    notification_allow_cidrs: Vec<ipnet::IpNet>,
    /// Allow cluster-internal host names (`*.svc`, `*.cluster.local`, single-label names) as
    /// notification targets.
    #[arg(long, env = "KUBE_PIM_NOTIFICATION_ALLOW_CLUSTER_NAMES")]
    notification_allow_cluster_names: bool,
    /// The longest an object goes without a reconcile (a safety net; expiries are scheduled
    /// to the millisecond, not found by this).
    #[arg(long, env = "KUBE_PIM_RESYNC", default_value = "5m")]
    resync: crate::api::Duration,
    /// Elect a leader among replicas on a Lease in --namespace (only the leader reconciles;
    /// every replica serves the webhook). Off: this process always leads.
    #[arg(long, env = "KUBE_PIM_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// How long the Lease is good for without renewal (failover takes up to this long).
    #[arg(
        long,
        env = "KUBE_PIM_LEADER_ELECTION_LEASE_DURATION",
        default_value = "15s"
    )]
    leader_election_lease_duration: crate::api::Duration,
    /// This replica's identity in the Lease (default: POD_NAME, else hostname-pid). A process
    /// restarted with the same identity takes its Lease back at once.
    #[arg(long, env = "POD_NAME")]
    leader_election_identity: Option<String>,
}

/// Sets up logging to stderr (audit lines have their own stream, `--audit-log`). A filter
/// that does not parse falls back to `info`, with a warning that names it: a typo in a flag
/// must not silence the operator's logs.
pub fn init_logging(format: LogFormat, filter: &str) {
    let (parsed, invalid) = match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (tracing_subscriber::EnvFilter::new("info"), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(parsed)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    if let Some(e) = invalid {
        tracing::warn!(filter, error = %e, "invalid --log-level / KUBE_PIM_LOG; logging at info");
    }
}

/// Entry point of the `kube-pim` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    let result = match cli.command {
        Command::Crds { dir: None, .. } => {
            print!("{}", crdgen::all_yaml());
            Ok(())
        }
        Command::Crds {
            dir: Some(dir),
            chart_dir,
        } => write_crds(&dir).and_then(|()| chart_dir.map_or(Ok(()), |c| write_chart(&c))),
        Command::Policies {
            operator_username,
            namespace,
            break_glass_group,
            require_pod_bound_token,
        } => {
            print!(
                "{}",
                crate::policies::all_yaml(&crate::policies::Options {
                    operator: crate::policies::Operator {
                        username: operator_username,
                        require_pod_bound_token,
                    },
                    namespace,
                    break_glass_group,
                })
            );
            Ok(())
        }
        Command::Run(args) => run(*args),
        Command::Audit(AuditCommand::Verify { files }) => verify_audit(&files),
        Command::Sweep { interval } => runtime().block_on(sweep(interval)),
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

/// `kube-pim audit verify`: prints what it checked, fails on the first break.
fn verify_audit(files: &[PathBuf]) -> crate::Result<()> {
    let mut texts = Vec::new();
    for f in files {
        texts.push((
            f.display().to_string(),
            std::fs::read_to_string(f).map_err(crate::Error::io("read", f))?,
        ));
    }
    let report = crate::controller::audit::chain::verify(
        texts.iter().map(|(n, t)| (n.as_str(), t.as_str())),
    );
    match report.broken {
        None => {
            let starts: Vec<String> = report
                .starts
                .iter()
                .map(|(f, l)| format!("{f}:{l}"))
                .collect();
            let from = match report.continues_from {
                Some(n) => format!(
                    "continues an older chain from n={n} (its earlier files were rotated away or not given)"
                ),
                None => format!("the chain starts at {}", starts.join(", ")),
            };
            println!(
                "intact: {} lines in {} files; {from}",
                report.lines,
                files.len()
            );
            Ok(())
        }
        Some((file, line, why)) => Err(crate::Error::Audit(format!(
            "audit chain broken at {file} line {line}: {why}"
        ))),
    }
}

fn run(args: RunArgs) -> crate::Result<()> {
    let RunArgs {
        health_addr,
        operator_username,
        namespace,
        cluster_scope_namespace,
        audit_log,
        audit_log_max_mb,
        audit_log_max_files,
        audit_sink_url,
        retention,
        mfa_extra_key,
        mfa_values,
        resync,
        webhook_addr,
        webhook_cert_file,
        webhook_key_file,
        break_glass_group,
        max_open_requests,
        notification_allow_http,
        notification_allow_cidrs,
        notification_allow_cluster_names,
        leader_election,
        leader_election_lease_duration,
        leader_election_identity,
    } = args;
    let leader_election = leader_election.then(|| crate::leader::Config {
        namespace: namespace.clone(),
        name: crate::leader::LEASE_NAME.into(),
        identity: leader_election_identity.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "kube-pim".into());
            format!("{host}-{}", std::process::id())
        }),
        lease_duration: leader_election_lease_duration
            .as_delta()
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(15)),
    });
    let cluster_scope_namespace = cluster_scope_namespace.unwrap_or_else(|| namespace.clone());
    let notification_targets = crate::notify::TargetPolicy {
        allow_http: notification_allow_http,
        allow_cidrs: notification_allow_cidrs,
        allow_cluster_names: notification_allow_cluster_names,
    };
    let mfa = crate::decide::policy::MfaConfig {
        key: mfa_extra_key,
        values: mfa_values,
    };
    let webhook = match (webhook_addr, webhook_cert_file, webhook_key_file) {
        (Some(addr), Some(cert_file), Some(key_file)) => Some((
            crate::webhook::Listen {
                addr,
                cert_file,
                key_file,
            },
            crate::webhook::review::Settings {
                cluster_scope_namespace: cluster_scope_namespace.clone(),
                mfa: mfa.clone(),
                break_glass_group,
                max_open_requests,
                notification_targets: notification_targets.clone(),
            },
        )),
        (None, _, _) => None,
        _ => {
            return Err(crate::Error::Config(
                "--webhook-addr needs --webhook-cert-file and --webhook-key-file".into(),
            ));
        }
    };
    runtime().block_on(operator::run(operator::Settings {
        health_addr,
        operator_username,
        audit_log,
        audit_rotation: crate::controller::audit::Rotation {
            max_bytes: audit_log_max_mb.saturating_mul(1024 * 1024),
            max_files: audit_log_max_files,
        },
        audit_sink_url,
        webhook,
        leader_election,
        controllers: crate::controller::Settings {
            namespace,
            cluster_scope_namespace,
            mfa,
            retention: retention.as_delta(),
            notification_targets,
            resync: resync
                .as_delta()
                .to_std()
                .unwrap_or(std::time::Duration::from_secs(300)),
        },
    }))
}

/// Names the program in every API request it makes (`User-Agent: kube-pim/0.1.0`), so audit
/// logs and the benchmark tell its requests from others'.
pub fn with_user_agent(mut config: kube::Config, program: &str) -> kube::Config {
    let agent = format!("{program}/{}", env!("CARGO_PKG_VERSION"));
    if let Ok(v) = http::HeaderValue::from_str(&agent) {
        config.headers.push((http::header::USER_AGENT, v));
    }
    config
}

async fn sweep(interval: Option<crate::api::Duration>) -> crate::Result<()> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| crate::Error::Config(e.to_string()))?;
    let client = kube::Client::try_from(with_user_agent(config, "kube-pim-sweep"))?;
    loop {
        let report = crate::sweep::sweep(&client, chrono::Utc::now()).await?;
        tracing::info!(
            seen = report.seen,
            revoked = report.deleted.len(),
            "sweep done"
        );
        match interval {
            None => return Ok(()),
            Some(ref every) => {
                tokio::time::sleep(
                    every
                        .as_delta()
                        .to_std()
                        .unwrap_or(std::time::Duration::from_secs(30)),
                )
                .await
            }
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
    let path = dir.join(crdgen::POLICIES_FILE);
    std::fs::write(&path, crdgen::policies_yaml()).map_err(crate::Error::io("write", &path))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn write_chart(dir: &std::path::Path) -> crate::Result<()> {
    for (name, contents) in crdgen::chart::files() {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(crate::Error::io("create", parent))?;
        }
        std::fs::write(&path, contents).map_err(crate::Error::io("write", &path))?;
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
