//! `kubectl pim`, the kubectl plugin (SPEC section 6): the requester's, approver's and
//! auditor's side of kube-pim from the command line.
//!
//! It is a thin client: every rule is enforced by the apiserver and kube-pim's admission
//! (the plugin only makes the same API calls a user could make with kubectl), so a user
//! with the plugin can do nothing they could not do without it. It finds the cluster like
//! kubectl (`KUBECONFIG`, `--kubeconfig`, `--context`, `-n`), prints tables that fit the
//! terminal, writes hints to stderr so stdout stays parseable, and exits quietly when its
//! output pipe closes. What it shows is computed by the pure functions in [`view`].

pub mod view;

use std::{collections::BTreeMap, io::Write, path::PathBuf, process::ExitCode};

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use serde::Serialize;
use serde_json::json;

use crate::{
    Error, Result,
    api::{
        ActivationRequest, ActivationRequestSpec, ApprovalDecision, Duration, EligibleAssignment,
        RequestPhase, RoleSetting, Scope,
    },
    controller::audit::transition_records,
};
use view::Me;

/// kubectl pim: activate, approve and audit privileged Kubernetes roles with kube-pim.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-pim",
    bin_name = "kubectl pim",
    version,
    about,
    after_help = "Examples:\n  kubectl pim eligible\n  kubectl pim activate namespace-admin -n payments --for 1h --reason 'INC-4711' --wait\n  kubectl pim pending\n  kubectl pim approve payments/alice-x7k2p --reason 'INC-4711 is real'\n  kubectl pim audit -A --since 24h -o csv > audit.csv"
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command takes, before or after the command name.
#[derive(Args, Debug)]
struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's namespace; commands that search look in every
    /// namespace you may list unless this is given).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Every namespace (an error if you may not list across namespaces).
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Where Cluster-scope assignments and requests live (the operator's
    /// --cluster-scope-namespace).
    #[arg(
        long,
        global = true,
        env = "KUBE_PIM_CLUSTER_SCOPE_NAMESPACE",
        default_value = "kube-pim-system"
    )]
    cluster_scope_namespace: String,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned columns (fitted to the terminal).
    Table,
    /// JSON (for `audit`: one record per line, exactly as on the audit stream).
    Json,
    /// YAML.
    Yaml,
    /// Comma-separated values with a header (`audit` only).
    Csv,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Who the cluster says you are (user, groups, extra such as MFA claims).
    Whoami,
    /// What you may activate, where, until when, and under which policy.
    Eligible,
    /// Ask for a role: creates an ActivationRequest.
    Activate(ActivateArgs),
    /// Your requests and where they stand.
    List,
    /// Requests waiting for a decision that you may make.
    Pending,
    /// Approve one or more requests (NAME in -n, or NAMESPACE/NAME as `pending` prints it).
    Approve {
        /// The requests.
        #[arg(required = true)]
        names: Vec<String>,
        /// Why (required when the RoleSetting says so).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny one or more requests, with a reason.
    Deny {
        /// The requests.
        #[arg(required = true)]
        names: Vec<String>,
        /// Why (required: the requester sees it).
        #[arg(long, required = true)]
        reason: String,
    },
    /// End your access (or withdraw a request) before it expires.
    Deactivate {
        /// The requests.
        #[arg(required = true)]
        names: Vec<String>,
        /// Wait until kube-pim has ended it.
        #[arg(long)]
        wait: bool,
    },
    /// Extend an Active or Scheduled request of yours (a new request with `extends`).
    Extend {
        /// The request to extend.
        name: String,
        /// How much longer (Go duration, e.g. 30m).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Duration,
        /// Justification (default: the original request's).
        #[arg(long)]
        reason: Option<String>,
        /// Ticket (default: the original request's).
        #[arg(long)]
        ticket: Option<String>,
        /// Wait until the extension is Active or has ended; exit non-zero unless Active.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (Go duration; default: wait until it ends).
        #[arg(long, requires = "wait")]
        timeout: Option<Duration>,
    },
    /// Export the activation history: one record per transition, the same records as the
    /// operator's audit stream.
    Audit {
        /// How far back (Go duration).
        #[arg(long, default_value = "720h")]
        since: Duration,
    },
    /// Bindings of governed roles that kube-pim did not make (standing access).
    Discover,
}

/// Flags of `activate`.
#[derive(Args, Debug)]
struct ActivateArgs {
    /// The RoleSetting to activate.
    role_setting: String,
    /// Namespace (in -n) or Cluster (a ClusterRoleBinding; the request goes to the
    /// cluster-scope namespace).
    #[arg(long, value_enum, default_value_t = ScopeArg::Namespace)]
    scope: ScopeArg,
    /// How long (Go duration; default: the RoleSetting's defaultDuration).
    #[arg(long = "for", value_name = "DURATION")]
    duration: Option<Duration>,
    /// Justification.
    #[arg(long)]
    reason: Option<String>,
    /// Ticket reference.
    #[arg(long)]
    ticket: Option<String>,
    /// Start later: an RFC 3339 time, or a Go duration from now (e.g. 2h).
    #[arg(long)]
    start: Option<String>,
    /// Wait until Active or ended, showing progress; exit non-zero unless it became Active.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (Go duration; default: wait until it ends).
    #[arg(long, requires = "wait")]
    timeout: Option<Duration>,
}

/// `--scope` values (kept apart from the API type so the CLI spelling is explicit).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScopeArg {
    /// A RoleBinding in the namespace.
    #[value(name = "Namespace", alias = "namespace")]
    Namespace,
    /// A ClusterRoleBinding.
    #[value(name = "Cluster", alias = "cluster")]
    Cluster,
}

/// Entry point of the `kubectl-pim` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "kubectl pim: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) | Err(Error::OutputClosed) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends the command quietly.
fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Error::OutputClosed),
        Err(e) => Err(Error::io("write", "stdout")(e)),
    }
}

/// A hint or note for the person at the terminal (stderr, so stdout stays parseable).
fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{}", view::printable(text));
}

/// The terminal's width when stdout is one (tables are fitted to it).
fn width() -> Option<usize> {
    use std::io::IsTerminal;
    std::io::stdout()
        .is_terminal()
        .then(|| terminal_size::terminal_size().map(|(w, _)| w.0 as usize))
        .flatten()
}

/// A connection: the client, the namespace to use, and the caller's choice of namespaces.
struct Session {
    client: Client,
    namespace: String,
    scope: Where,
    output: Output,
    cluster_scope_namespace: String,
}

/// Which namespaces a searching command looks at.
#[derive(Clone, Debug, PartialEq)]
enum Where {
    /// `-n NS`.
    One(String),
    /// `-A`.
    All,
    /// Neither: every namespace if the caller may list across them, else the current one.
    AllOr(String),
}

async fn connect(g: &Global) -> Result<Session> {
    let opts = KubeConfigOptions {
        context: g.context.clone(),
        ..Default::default()
    };
    let config = match (&g.kubeconfig, &g.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| Error::Plugin(format!("cannot read kubeconfig {}: {e}", path.display())))?;
                        Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| e.to_string())
        }
        (None, Some(_)) => Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| e.to_string()),
        (None, None) => Config::infer().await.map_err(|e| e.to_string()),
    }
    .map_err(|e| {
        Error::Plugin(format!(
            "no cluster to talk to ({e}): set KUBECONFIG or pass --kubeconfig, and --context to pick a context"
        ))
    })?;
    let namespace = g
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let scope = match (&g.namespace, g.all_namespaces) {
        (_, true) => Where::All,
        (Some(ns), false) => Where::One(ns.clone()),
        (None, false) => Where::AllOr(namespace.clone()),
    };
    Ok(Session {
        client: Client::try_from(crate::cli::with_user_agent(config, "kubectl-pim"))?,
        namespace,
        scope,
        output: g.output,
        cluster_scope_namespace: g.cluster_scope_namespace.clone(),
    })
}

async fn run(cli: Cli) -> Result<()> {
    let s = connect(&cli.global).await?;
    match cli.command {
        Command::Whoami => whoami(&s).await,
        Command::Eligible => eligible(&s).await,
        Command::Activate(a) => activate(&s, a).await,
        Command::List => list(&s).await,
        Command::Pending => pending(&s).await,
        Command::Approve { names, reason } => {
            decide(&s, &names, ApprovalDecision::Approved, reason).await
        }
        Command::Deny { names, reason } => {
            decide(&s, &names, ApprovalDecision::Denied, Some(reason)).await
        }
        Command::Deactivate { names, wait } => deactivate(&s, &names, wait).await,
        Command::Extend {
            name,
            duration,
            reason,
            ticket,
            wait,
            timeout,
        } => extend(&s, &name, duration, reason, ticket, wait, timeout).await,
        Command::Audit { since } => audit(&s, since).await,
        Command::Discover => discover(&s).await,
    }
}

/// Turns an API error into a message that says what to do.
fn explain(e: kube::Error, doing: &str) -> Error {
    match &e {
        kube::Error::Api(status) => {
            let msg = status.message.as_str();
            // Admission refusals already name the fix; drop the apiserver's preamble.
            let msg = msg
                .split_once("denied the request: ")
                .map(|(_, m)| m)
                .unwrap_or(msg);
            let hint = match status.code {
                403 if !status.message.contains("denied the request") => {
                    " (ask your platform admin for the kube-pim-requester or kube-pim-approver role in that namespace)"
                }
                401 => " (your credentials were refused: log in again, or check --context)",
                _ => "",
            };
            Error::Plugin(format!("{doing}: {msg}{hint}"))
        }
        _ => Error::Plugin(format!("{doing}: {e}")),
    }
}

fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

/// The caller, from a SelfSubjectReview (what the apiserver authenticated, not what the
/// kubeconfig claims).
async fn me(s: &Session) -> Result<Me> {
    let review = Api::<SelfSubjectReview>::all(s.client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| explain(e, "asking the cluster who you are"))?;
    let u = review
        .status
        .and_then(|st| st.user_info)
        .ok_or_else(|| Error::Plugin(
            "the cluster did not say who you are: check that SelfSubjectReview is served (kubectl auth whoami asks the same)".into(),
        ))?;
    Ok(Me {
        username: u.username.unwrap_or_default(),
        uid: u.uid,
        groups: u.groups.unwrap_or_default(),
        extra: u.extra.unwrap_or_default(),
    })
}

/// Lists `K` where the caller asked: across namespaces when allowed, else the current one
/// (and, for `also`, that namespace too), saying so on stderr.
async fn list_where<K>(s: &Session, lp: &ListParams, also: Option<&str>) -> Result<Vec<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let plural = K::plural(&Default::default()).to_string();
    let one = |ns: &str| Api::<K>::namespaced(s.client.clone(), ns);
    match &s.scope {
        Where::One(ns) => Ok(one(ns)
            .list(lp)
            .await
            .map_err(|e| explain(e, &format!("listing {plural} in {ns}")))?
            .items),
        Where::All => Ok(Api::<K>::all(s.client.clone())
            .list(lp)
            .await
            .map_err(|e| explain(e, &format!("listing {plural} in every namespace")))?
            .items),
        Where::AllOr(ns) => match Api::<K>::all(s.client.clone()).list(lp).await {
            Ok(l) => Ok(l.items),
            Err(e) if is_forbidden(&e) => {
                let mut spaces = vec![ns.clone()];
                if let Some(a) = also.filter(|a| *a != ns) {
                    spaces.push(a.to_string());
                }
                let mut items = Vec::new();
                let mut shown = Vec::new();
                for n in &spaces {
                    match one(n).list(lp).await {
                        Ok(l) => {
                            items.extend(l.items);
                            shown.push(n.as_str());
                        }
                        Err(e) if is_forbidden(&e) => {}
                        Err(e) => return Err(explain(e, &format!("listing {plural} in {n}"))),
                    }
                }
                if shown.is_empty() {
                    return Err(Error::Plugin(format!(
                        "you may not list {plural} in every namespace, nor in {}: pass -n NAMESPACE (a namespace where you hold the kube-pim-requester or kube-pim-approver role)",
                        spaces.join(" or ")
                    )));
                }
                note(&format!(
                    "(you may not list {plural} in every namespace: showing {}; use -n to look elsewhere)",
                    shown.join(" and ")
                ));
                Ok(items)
            }
            Err(e) => Err(explain(e, &format!("listing {plural}"))),
        },
    }
}

/// Every RoleSetting the caller may read, by name (empty when they may read none).
async fn role_settings(s: &Session) -> BTreeMap<String, RoleSetting> {
    match Api::<RoleSetting>::all(s.client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items.into_iter().map(|r| (r.name_any(), r)).collect(),
        Err(e) => {
            note(&format!(
                "(cannot read RoleSettings, so policies are not shown: {})",
                explain(e, "listing rolesettings")
            ));
            BTreeMap::new()
        }
    }
}

fn structured<T: Serialize>(s: &Session, value: &T) -> Result<()> {
    let text = match s.output {
        Output::Yaml => serde_yaml::to_string(value).map_err(|e| Error::Plugin(e.to_string()))?,
        _ => format!(
            "{}\n",
            serde_json::to_string_pretty(value).map_err(|e| Error::Plugin(e.to_string()))?
        ),
    };
    emit(&text)
}

fn no_csv(s: &Session, command: &str) -> Result<()> {
    if s.output == Output::Csv {
        return Err(Error::Plugin(format!(
            "-o csv is for `kubectl pim audit`; use -o table, json or yaml with {command}"
        )));
    }
    Ok(())
}

/// A Kubernetes List of `items`, as `kubectl get -o json` prints.
fn k8s_list<T: Serialize>(items: &[T]) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

async fn whoami(s: &Session) -> Result<()> {
    no_csv(s, "whoami")?;
    let me = me(s).await?;
    if s.output != Output::Table {
        return structured(s, &me);
    }
    let mut rows = vec![
        vec!["Username".into(), me.username.clone()],
        vec!["UID".into(), me.uid.clone().unwrap_or_else(|| "-".into())],
        vec!["Groups".into(), format!("[{}]", me.groups.join(" "))],
    ];
    for (k, v) in &me.extra {
        rows.push(vec![format!("Extra: {k}"), format!("[{}]", v.join(" "))]);
    }
    emit(&view::table(&["ATTRIBUTE", "VALUE"], &rows, width()))
}

async fn eligible(s: &Session) -> Result<()> {
    no_csv(s, "eligible")?;
    let me = me(s).await?;
    let assignments: Vec<EligibleAssignment> =
        list_where(s, &ListParams::default(), Some(&s.cluster_scope_namespace)).await?;
    let rss = role_settings(s).await;
    let found = view::eligibilities(&me, &assignments, &rss, Utc::now());
    if s.output != Output::Table {
        return structured(s, &found);
    }
    if found.is_empty() {
        note(&format!(
            "{} is not eligible for anything here: ask a platform admin for an EligibleAssignment",
            me.username
        ));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|e| {
            let p = e.policy.as_ref();
            vec![
                e.namespace.clone(),
                e.role_setting.clone(),
                format!("{:?}", e.scope),
                if e.roles.is_empty() {
                    "?".into()
                } else {
                    e.roles.join(",")
                },
                e.status.clone(),
                p.map(|p| p.max_duration.clone())
                    .unwrap_or_else(|| "?".into()),
                e.until
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "permanent".into()),
                p.map(|p| p.needs_text()).unwrap_or_else(|| "?".into()),
                p.map(|p| p.approval_text()).unwrap_or_else(|| "?".into()),
            ]
        })
        .collect();
    emit(&view::table(
        &[
            "NAMESPACE",
            "ROLESETTING",
            "SCOPE",
            "ROLES",
            "STATUS",
            "MAX",
            "UNTIL",
            "NEEDS",
            "APPROVAL",
        ],
        &rows,
        width(),
    ))?;
    if let Some(e) = found.iter().find(|e| e.status == "Eligible") {
        note(&format!("\nActivate with: {}", e.activate));
    }
    Ok(())
}

/// `--start`: an RFC 3339 time, or a duration from now.
fn parse_start(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Ok(d) = text.parse::<Duration>() {
        return Ok(now + d.as_delta());
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            Error::Plugin(format!(
                "--start {text:?} is neither a time nor a duration: write 2026-11-24T18:00:00Z or 2h"
            ))
        })
}

async fn activate(s: &Session, a: ActivateArgs) -> Result<()> {
    no_csv(s, "activate")?;
    let me = me(s).await?;
    let scope = match a.scope {
        ScopeArg::Namespace => Scope::Namespace,
        ScopeArg::Cluster => Scope::Cluster,
    };
    // A Cluster-scope request lives in the cluster-scope namespace unless -n says otherwise.
    let ns = match (scope, &s.scope) {
        (Scope::Cluster, Where::AllOr(_)) => s.cluster_scope_namespace.clone(),
        _ => s.namespace.clone(),
    };
    let start_time = a
        .start
        .as_deref()
        .map(|t| parse_start(t, Utc::now()))
        .transpose()?;
    let spec = ActivationRequestSpec {
        role_setting: a.role_setting.clone(),
        scope,
        duration: a.duration,
        start_time,
        justification: a.reason,
        ticket: a.ticket,
        extends: None,
        deactivate: false,
        // Replaced by admission with who the apiserver authenticated.
        requester: me.requester(),
    };
    create_and_follow(s, &me, &ns, spec, a.wait, a.timeout).await
}

async fn create_and_follow(
    s: &Session,
    me: &Me,
    ns: &str,
    spec: ActivationRequestSpec,
    wait: bool,
    timeout: Option<Duration>,
) -> Result<()> {
    let api = Api::<ActivationRequest>::namespaced(s.client.clone(), ns);
    let role_setting = spec.role_setting.clone();
    let ar = ActivationRequest {
        metadata: ObjectMeta {
            generate_name: Some(me.name_prefix()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        spec,
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &ar)
        .await
        .map_err(|e| explain(e, &format!("activating {role_setting} in {ns}")))?;
    let name = created.name_any();
    if s.output != Output::Table {
        structured(s, &created)?;
    } else {
        emit(&format!("activationrequest {ns}/{name} created\n"))?;
    }
    if !wait {
        if let Ok(rs) = Api::<RoleSetting>::all(s.client.clone())
            .get(&role_setting)
            .await
            && rs.spec.approval.required
        {
            let p = view::PolicySummary::of(&rs);
            note(&format!(
                "It needs approval ({}). An approver runs: kubectl pim approve {ns}/{name}",
                p.approval_text()
            ));
        }
        note(&format!(
            "Follow it with: kubectl pim list -n {ns}   (or: kubectl get ar {name} -n {ns} -w)"
        ));
        return Ok(());
    }
    let done = follow(
        &api,
        ns,
        &name,
        timeout,
        view::wait_is_over,
        // With -o json/yaml, stdout carries only the document.
        s.output != Output::Table,
    )
    .await?;
    match done.status.as_ref().and_then(|st| st.phase) {
        Some(RequestPhase::Active) => Ok(()),
        phase => Err(Error::Plugin(format!(
            "{ns}/{name} did not become Active: {}",
            phase.map(|_| view::progress(&done)).unwrap_or_default()
        ))),
    }
}

/// Shows a request's progress (one line per change) until `over` says so; returns it.
async fn follow(
    api: &Api<ActivationRequest>,
    ns: &str,
    name: &str,
    timeout: Option<Duration>,
    over: fn(Option<RequestPhase>) -> bool,
    progress_to_stderr: bool,
) -> Result<ActivationRequest> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api.clone(), config).boxed();
    let deadline = timeout.map(|t| {
        tokio::time::Instant::now() + t.as_delta().to_std().unwrap_or(std::time::Duration::ZERO)
    });
    let mut last = String::new();
    loop {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, events.next()).await.map_err(|_| {
                Error::Plugin(format!(
                    "{ns}/{name} was still {last:?} when --timeout ran out; it goes on without you"
                ))
            })?,
            None => events.next().await,
        };
        let ar = match next {
            Some(Ok(watcher::Event::Apply(ar) | watcher::Event::InitApply(ar))) => ar,
            Some(Ok(watcher::Event::Delete(_))) => {
                return Err(Error::Plugin(format!("{ns}/{name} was deleted")));
            }
            Some(Ok(_)) => continue,
            Some(Err(
                watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e),
            )) if is_forbidden(&e) => {
                return Err(explain(e, &format!("watching {ns}/{name}")));
            }
            // The watcher retries transient errors itself.
            Some(Err(_)) => continue,
            None => {
                return Err(Error::Plugin(format!(
                    "lost the watch on {ns}/{name}; it goes on without you: kubectl pim list -n {ns} shows where it stands"
                )));
            }
        };
        let line = view::progress(&ar);
        if line != last {
            let line = view::printable(&format!("{ns}/{name}: {line}"));
            if progress_to_stderr {
                note(&line);
            } else {
                emit(&format!("{line}\n"))?;
            }
            last = line;
        }
        if over(ar.status.as_ref().and_then(|st| st.phase)) {
            return Ok(ar);
        }
    }
}

async fn list(s: &Session) -> Result<()> {
    no_csv(s, "list")?;
    let me = me(s).await?;
    let lp = ListParams::default().fields(&format!("spec.requester.username={}", me.username));
    let mut mine: Vec<ActivationRequest> =
        list_where(s, &lp, Some(&s.cluster_scope_namespace)).await?;
    mine.retain(|r| view::is_mine(&me, r));
    mine.sort_by_key(view::created);
    if s.output != Output::Table {
        return structured(s, &k8s_list(&mine));
    }
    if mine.is_empty() {
        note("No requests of yours here. `kubectl pim eligible` shows what you may activate.");
        return Ok(());
    }
    let now = Utc::now();
    let rows: Vec<Vec<String>> = mine
        .iter()
        .map(|r| {
            vec![
                r.namespace().unwrap_or_default(),
                r.name_any(),
                r.spec.role_setting.clone(),
                format!("{:?}", r.spec.scope),
                view::phase_text(r),
                view::expires_text(r, now),
                view::age(view::created(r), now),
                r.spec.justification.clone().unwrap_or_default(),
            ]
        })
        .collect();
    emit(&view::table(
        &[
            "NAMESPACE",
            "NAME",
            "ROLESETTING",
            "SCOPE",
            "PHASE",
            "EXPIRES",
            "AGE",
            "JUSTIFICATION",
        ],
        &rows,
        width(),
    ))
}

async fn pending(s: &Session) -> Result<()> {
    no_csv(s, "pending")?;
    let me = me(s).await?;
    let lp = ListParams::default().fields("status.phase=Pending");
    let requests: Vec<ActivationRequest> =
        list_where(s, &lp, Some(&s.cluster_scope_namespace)).await?;
    let rss = role_settings(s).await;
    let mut mine: Vec<&ActivationRequest> = requests
        .iter()
        .filter(|r| {
            rss.get(&r.spec.role_setting)
                .is_some_and(|rs| view::may_decide(&me, r, rs))
        })
        .collect();
    mine.sort_by_key(|r| view::created(r));
    if s.output != Output::Table {
        return structured(s, &k8s_list(&mine));
    }
    if mine.is_empty() {
        note("Nothing is waiting for your decision.");
        return Ok(());
    }
    let now = Utc::now();
    let rows: Vec<Vec<String>> = mine
        .iter()
        .map(|r| {
            let rs = rss.get(&r.spec.role_setting);
            let duration = rs
                .map(|rs| {
                    crate::decide::human(crate::decide::policy::requested_duration(rs, &r.spec))
                })
                .unwrap_or_else(|| "?".into());
            let why = match (&r.spec.ticket, &r.spec.justification) {
                (Some(t), Some(j)) => format!("{t}: {j}"),
                (Some(t), None) => t.clone(),
                (None, Some(j)) => j.clone(),
                (None, None) => String::new(),
            };
            vec![
                view::request_ref(r),
                r.spec.requester.username.clone(),
                r.spec.role_setting.clone(),
                format!("{:?}", r.spec.scope),
                duration,
                view::approvals_text(r, rs),
                view::age(view::created(r), now),
                why,
            ]
        })
        .collect();
    emit(&view::table(
        &[
            "REQUEST",
            "REQUESTER",
            "ROLESETTING",
            "SCOPE",
            "FOR",
            "APPROVALS",
            "AGE",
            "JUSTIFICATION",
        ],
        &rows,
        width(),
    ))?;
    note(
        "\nDecide with: kubectl pim approve REQUEST... [--reason ..]  or  kubectl pim deny REQUEST... --reason ..",
    );
    Ok(())
}

/// Approves or denies each named request; reports each, fails if any failed.
async fn decide(
    s: &Session,
    names: &[String],
    decision: ApprovalDecision,
    reason: Option<String>,
) -> Result<()> {
    no_csv(s, "approve/deny")?;
    let verb = match decision {
        ApprovalDecision::Approved => "approved",
        ApprovalDecision::Denied => "denied",
    };
    let mut failed = 0;
    for target in names {
        let (ns, name, uid) = view::target(target, &s.namespace);
        match decide_one(s, ns, name, uid, decision, reason.as_deref()).await {
            Ok(about) => emit(&format!("{ns}/{name} {verb}: {about}\n"))?,
            Err(e) => {
                failed += 1;
                note(&format!("error: {ns}/{name}: {e}"));
            }
        }
    }
    if failed > 0 {
        return Err(Error::Plugin(format!(
            "{failed} of {} requests were not {verb} (see above)",
            names.len()
        )));
    }
    Ok(())
}

async fn decide_one(
    s: &Session,
    ns: &str,
    name: &str,
    seen_uid: Option<&str>,
    decision: ApprovalDecision,
    reason: Option<&str>,
) -> Result<String> {
    let api = Api::<ActivationRequest>::namespaced(s.client.clone(), ns);
    // kube-pim initialises `approvals: []` on its first status write, moments after the
    // request is created; until then there is nothing to append to.
    let mut tries = 0;
    let ar = loop {
        let ar = api
            .get(name)
            .await
            .map_err(|e| explain(e, "reading the request"))?;
        let ready = ar.status.as_ref().is_some_and(|st| st.approvals.is_some());
        if ready || tries == 20 {
            break ar;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    if ar
        .status
        .as_ref()
        .and_then(|st| st.approvals.as_ref())
        .is_none()
    {
        return Err(Error::Plugin(
            "kube-pim has not picked this request up yet (is the operator running?): try again shortly".into(),
        ));
    }
    let uid = ar.metadata.uid.clone().unwrap_or_default();
    if let Some(seen) = seen_uid
        && !uid.starts_with(seen)
    {
        return Err(Error::Plugin(format!(
            "{ns}/{name} is not the request you saw (its uid is {uid}, not {seen}...): it was deleted and re-created; look again with kubectl pim pending"
        )));
    }
    let rs = Api::<RoleSetting>::all(s.client.clone())
        .get(&ar.spec.role_setting)
        .await
        .ok();
    let about = view::decided_about(&ar, rs.as_ref());
    let mut approval = json!({"decision": decision});
    if let Some(r) = reason {
        approval["reason"] = json!(r);
    }
    // The `test` pins the decision to the request the approver looked at: a request deleted
    // and re-created under the same name is a different request.
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/uid", "value": ar.metadata.uid},
        {"op": "add", "path": "/status/approvals/-", "value": approval},
    ]))
    .map_err(|e| Error::Plugin(format!("building the patch: {e}")))?;
    api.patch_status(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(|e| explain(e, "recording the decision"))?;
    Ok(about)
}

async fn deactivate(s: &Session, names: &[String], wait: bool) -> Result<()> {
    no_csv(s, "deactivate")?;
    let mut failed = 0;
    for target in names {
        let (ns, name, _) = view::target(target, &s.namespace);
        let api = Api::<ActivationRequest>::namespaced(s.client.clone(), ns);
        let patch = Patch::Merge(json!({"spec": {"deactivate": true}}));
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(_) => {
                emit(&format!("{ns}/{name} deactivation requested\n"))?;
                if wait {
                    let over: fn(Option<RequestPhase>) -> bool =
                        |p| p.is_some_and(crate::decide::request::is_terminal);
                    follow(&api, ns, name, None, over, s.output != Output::Table).await?;
                }
            }
            Err(e) => {
                failed += 1;
                note(&format!(
                    "error: {}",
                    explain(e, &format!("deactivating {ns}/{name}"))
                ));
            }
        }
    }
    if failed > 0 {
        return Err(Error::Plugin(format!(
            "{failed} of {} requests were not deactivated (see above)",
            names.len()
        )));
    }
    Ok(())
}

async fn extend(
    s: &Session,
    target: &str,
    duration: Duration,
    reason: Option<String>,
    ticket: Option<String>,
    wait: bool,
    timeout: Option<Duration>,
) -> Result<()> {
    no_csv(s, "extend")?;
    let me = me(s).await?;
    let (ns, name, _) = view::target(target, &s.namespace);
    let original = Api::<ActivationRequest>::namespaced(s.client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| explain(e, &format!("reading {ns}/{name}")))?;
    let spec = ActivationRequestSpec {
        role_setting: original.spec.role_setting.clone(),
        scope: original.spec.scope,
        duration: Some(duration),
        start_time: None,
        justification: reason.or(original.spec.justification.clone()),
        ticket: ticket.or(original.spec.ticket.clone()),
        extends: Some(name.to_string()),
        deactivate: false,
        requester: me.requester(),
    };
    create_and_follow(s, &me, ns, spec, wait, timeout).await
}

/// The CSV/table columns of an audit record, in the stream's field order.
const AUDIT_COLUMNS: [&str; 13] = [
    "id",
    "time",
    "namespace",
    "name",
    "uid",
    "roleSetting",
    "scope",
    "requester",
    "phase",
    "seq",
    "actor",
    "action",
    "message",
];

async fn audit(s: &Session, since: Duration) -> Result<()> {
    if s.output == Output::Yaml {
        return Err(Error::Plugin(
            "audit prints -o table, json (one record per line, as on the audit stream) or csv"
                .into(),
        ));
    }
    let requests: Vec<ActivationRequest> =
        list_where(s, &ListParams::default(), Some(&s.cluster_scope_namespace)).await?;
    let from = Utc::now() - since.as_delta();
    let mut records: Vec<_> = requests
        .iter()
        .flat_map(transition_records)
        .filter(|r| r.entry.time >= from)
        .collect();
    // Oldest first, like the stream; ties by request, then sequence.
    records.sort_by(|a, b| {
        (a.entry.time, a.uid, a.entry.seq).cmp(&(b.entry.time, b.uid, b.entry.seq))
    });
    let values: Vec<serde_json::Value> = records
        .iter()
        .map(|r| serde_json::to_value(r).expect("audit records serialize"))
        .collect();
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        v => v.to_string(),
    };
    match s.output {
        Output::Json => {
            // Serialized from the same type, in the same field order, as the stream's lines.
            let mut out = String::new();
            for r in &records {
                out.push_str(&serde_json::to_string(r).expect("audit records serialize"));
                out.push('\n');
            }
            emit(&out)
        }
        Output::Csv => {
            let rows: Vec<Vec<String>> = values
                .iter()
                .map(|r| AUDIT_COLUMNS.iter().map(|c| text(&r[*c])).collect())
                .collect();
            emit(&view::csv(&AUDIT_COLUMNS, &rows))
        }
        _ => {
            let rows: Vec<Vec<String>> = records
                .iter()
                .zip(&values)
                .map(|(rec, r)| {
                    let time = rec
                        .entry
                        .time
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    std::iter::once(time)
                        .chain(
                            [
                                "namespace",
                                "name",
                                "roleSetting",
                                "requester",
                                "action",
                                "actor",
                                "message",
                            ]
                            .iter()
                            .map(|c| text(&r[*c])),
                        )
                        .collect()
                })
                .collect();
            emit(&view::table(
                &[
                    "TIME",
                    "NAMESPACE",
                    "NAME",
                    "ROLESETTING",
                    "REQUESTER",
                    "ACTION",
                    "ACTOR",
                    "MESSAGE",
                ],
                &rows,
                width(),
            ))
        }
    }
}

async fn discover(s: &Session) -> Result<()> {
    no_csv(s, "discover")?;
    let rss = Api::<RoleSetting>::all(s.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| explain(e, "listing rolesettings"))?;
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Found<'a> {
        role_setting: String,
        #[serde(flatten)]
        binding: &'a crate::api::UnmanagedBinding,
    }
    let found: Vec<Found<'_>> = rss
        .items
        .iter()
        .flat_map(|rs| {
            rs.status
                .iter()
                .flat_map(|st| st.unmanaged_bindings.iter())
                .map(|b| Found {
                    role_setting: rs.name_any(),
                    binding: b,
                })
        })
        .collect();
    if s.output != Output::Table {
        return structured(s, &found);
    }
    if found.is_empty() {
        note(
            "No standing access found: every binding of a governed role was made by kube-pim (as of the operator's last discovery).",
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|f| {
            vec![
                f.role_setting.clone(),
                f.binding.role.clone(),
                f.binding.kind.clone(),
                f.binding.namespace.clone().unwrap_or_else(|| "-".into()),
                f.binding.name.clone(),
                f.binding.subjects.join(","),
            ]
        })
        .collect();
    emit(&view::table(
        &[
            "ROLESETTING",
            "ROLE",
            "KIND",
            "NAMESPACE",
            "NAME",
            "SUBJECTS",
        ],
        &rows,
        width(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_work_before_and_after_the_command_like_kubectl() {
        let c =
            Cli::try_parse_from(["kubectl-pim", "-n", "payments", "list", "-o", "json"]).unwrap();
        assert_eq!(c.global.namespace.as_deref(), Some("payments"));
        assert_eq!(c.global.output, Output::Json);
        let c = Cli::try_parse_from([
            "kubectl-pim",
            "activate",
            "ns-admin",
            "--for",
            "30m",
            "--scope",
            "Cluster",
            "--context",
            "prod",
            "--wait",
        ])
        .unwrap();
        assert_eq!(c.global.context.as_deref(), Some("prod"));
        let Command::Activate(a) = c.command else {
            panic!("activate")
        };
        assert_eq!(a.duration.unwrap().as_str(), "30m");
        assert!(a.wait);
    }

    #[test]
    fn deny_needs_a_reason_and_durations_are_checked() {
        assert!(Cli::try_parse_from(["kubectl-pim", "deny", "x"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-pim", "extend", "x", "--for", "soon"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-pim", "-A", "-n", "x", "list"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-pim", "approve"]).is_err());
    }

    #[test]
    fn start_takes_a_time_or_a_duration_from_now() {
        let now = crate::decide::test_fixtures::t0();
        assert_eq!(
            parse_start("2h", now).unwrap(),
            now + chrono::TimeDelta::hours(2)
        );
        assert_eq!(
            parse_start("2026-11-24T18:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-24T18:00:00+00:00"
        );
        let e = parse_start("tomorrow", now).unwrap_err().to_string();
        assert!(e.contains("2026-11-24T18:00:00Z or 2h"), "{e}");
    }
}
