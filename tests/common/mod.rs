//! Test support: one real control plane per test binary, shared by its tests.
//!
//! The control plane runs in a child `kube-pim-testenv up --watch-stdin` process. This test
//! process holds the child's stdin open for its whole life; when it exits, however it exits
//! (all tests done, a panic, SIGKILL), the kernel closes that pipe and the child stops etcd,
//! kube-apiserver, kube-controller-manager and the operator and removes its directory. Statics
//! are never dropped in Rust, so a Drop-based cleanup could not do this.
//!
//! Each test works in its own namespace ([`namespace`]) and as its own users.

#![allow(dead_code, unused_macros)]

/// Waits until `$cond` (which may `.await`) holds, checking every 100 ms; panics with the
/// message after `$within`. For liveness only: no test asserts how fast anything happens.
macro_rules! eventually {
    ($within:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $within;
        while !($cond) {
            assert!(std::time::Instant::now() < deadline, $($msg)+);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }};
}

pub mod world;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::Namespace,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use kube_pim::testenv::TestEnv;

struct Shared {
    env: TestEnv,
    _child: Mutex<Child>,
}

static PLAIN: OnceLock<Shared> = OnceLock::new();
static OPERATED: OnceLock<Shared> = OnceLock::new();

/// A control plane with the CRDs only (no operator, no webhook): what the apiserver enforces
/// on its own. Started on first use, shared by the tests of this binary.
pub fn env() -> &'static TestEnv {
    &PLAIN.get_or_init(|| start(None)).env
}

/// A control plane with the kube-pim operator and its admission webhook.
pub fn operated() -> &'static TestEnv {
    operated_with(&[])
}

/// [`operated`], with more arguments for the operator (the first call of a test binary decides).
pub fn operated_with(operator_args: &[&str]) -> &'static TestEnv {
    &OPERATED.get_or_init(|| start(Some(operator_args))).env
}

/// The control plane this binary uses: the operated one once started, else the plain one.
fn current() -> &'static TestEnv {
    OPERATED.get().map(|s| &s.env).unwrap_or_else(env)
}

/// Starts a control plane in a child process and waits until `DIR/ready` appears.
pub fn start_child(dir: &PathBuf, extra: &[&str]) -> Child {
    // A directory left by an attempt that failed to start is kept for its logs.
    if dir.exists() {
        let kept = dir.with_extension(format!("failed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&kept);
        let _ = std::fs::rename(dir, &kept);
    }
    std::fs::create_dir_all(dir).unwrap();
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-pim-testenv"))
        .arg("up")
        .arg("--dir")
        .arg(dir)
        .args(["--watch-stdin", "--remove-dir"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start kube-pim-testenv");
    // The first run on a machine may build the control-plane binaries (`make testbin`).
    let deadline = Instant::now() + Duration::from_secs(45 * 60);
    while !dir.join("ready").exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
            panic!("kube-pim-testenv exited ({status}) before it was ready:\n{log}");
        }
        assert!(Instant::now() < deadline, "control plane not ready in time");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

fn start(operator_args: Option<&[&str]>) -> Shared {
    let exe = std::env::current_exe().unwrap();
    let name = format!(
        "testenv-{}-{}-{}",
        exe.file_stem().unwrap().to_string_lossy(),
        if operator_args.is_some() {
            "op"
        } else {
            "plain"
        },
        std::process::id()
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let mut args: Vec<String> = Vec::new();
    if let Some(extra) = operator_args {
        args.extend([
            "--operator".to_string(),
            "--operator-bin".to_string(),
            env!("CARGO_BIN_EXE_kube-pim").to_string(),
        ]);
        for a in extra {
            args.push(format!("--operator-arg={a}"));
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = start_child(&dir, &args);
    Shared {
        env: TestEnv::open(&dir).expect("open testenv dir"),
        _child: Mutex::new(child),
    }
}

/// The administrator's client.
pub async fn admin() -> Client {
    current().admin().await.expect("admin client")
}

/// A client for `user` in `groups`.
pub async fn user(name: &str, groups: &[&str]) -> Client {
    current().client(name, groups).await.expect("user client")
}

/// A fresh namespace for one test, `<prefix>-<random>`.
pub async fn namespace(prefix: &str) -> String {
    let name = format!("{prefix}-{}", suffix());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(admin().await)
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// A short random suffix for names.
pub fn suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}{n}", nanos % 0xfffff)
}

/// The apiserver's message for a refused request, or a panic if it was accepted.
pub fn refusal<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected the apiserver to refuse, got {other:?}"),
    }
}

/// Whether `client`'s user may `verb` `what` in `ns`, as the apiserver's authorizer answers it.
/// `what` is `resource` (core group), `group/resource` or `group/resource/subresource`.
pub async fn can(client: &Client, verb: &str, what: &str, ns: &str) -> bool {
    let parts: Vec<&str> = what.split('/').collect();
    let (group, resource, subresource) = match parts[..] {
        [r] => ("", r, None),
        [g, r] => (g, r, None),
        [g, r, s] => (g, r, Some(s.to_string())),
        _ => panic!("bad resource {what}"),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                namespace: Some(ns.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    r.status.unwrap().allowed
}

/// A plain HTTP GET on loopback (health endpoints): the raw response, or "" when the
/// connection fails (a process starting or stopping); callers check what they expect.
pub async fn http_get(addr: &str, path: &str) -> String {
    kube_pim::testenv::http_get(addr, path)
        .await
        .unwrap_or_default()
}

/// The pid of the operator the test environment started (from DIR/pids).
pub fn operator_pid(env: &TestEnv) -> i32 {
    pid_of(env, "kube-pim")
}

/// The pid of the process `name` the test environment started (from DIR/pids).
pub fn pid_of(env: &TestEnv, name: &str) -> i32 {
    std::fs::read_to_string(env.dir().join("pids"))
        .unwrap()
        .lines()
        .find(|l| l.ends_with(&format!(" {name}")))
        .unwrap_or_else(|| panic!("no {name} in DIR/pids"))
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

/// Starts another operator process exactly as the test environment started the first (from
/// DIR/operator.json), with `extra` arguments appended, logging to DIR/logs/NAME.log. The
/// process is killed when the handle is dropped.
pub fn start_operator(env: &TestEnv, name: &str, extra: &[String]) -> tokio::process::Child {
    start_operator_with_env(env, name, extra, &[])
}

/// [`start_operator`] with more environment variables.
pub fn start_operator_with_env(
    env: &TestEnv,
    name: &str,
    extra: &[String],
    vars: &[(&str, String)],
) -> tokio::process::Child {
    let how: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir().join("operator.json")).unwrap()).unwrap();
    let mut args: Vec<String> = serde_json::from_value(how["args"].clone()).unwrap();
    // An extra `--flag=value` replaces the original's.
    let flag = |a: &str| a.split('=').next().unwrap_or_default().to_string();
    let replaced: Vec<String> = extra.iter().map(|a| flag(a)).collect();
    args.retain(|a| !replaced.contains(&flag(a)));
    args.extend(extra.iter().cloned());
    let log = std::fs::File::create(env.dir().join(format!("logs/{name}.log"))).unwrap();
    tokio::process::Command::new(how["bin"].as_str().unwrap())
        .args(&args)
        .env("KUBECONFIG", how["env"]["KUBECONFIG"].as_str().unwrap())
        .env("KUBE_PIM_LOG", "info,kube_pim=debug")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits until an operator started from DIR/operator.json answers /readyz (its webhook is up
/// then too).
pub async fn wait_operator_ready(env: &TestEnv) {
    let how: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir().join("operator.json")).unwrap()).unwrap();
    let addr = how["healthAddr"].as_str().unwrap().to_string();
    eventually!(
        Duration::from_secs(60),
        tokio::net::TcpStream::connect(&addr).await.is_ok()
            && http_get(&addr, "/readyz").await.starts_with("HTTP/1.1 200"),
        "the operator never became ready"
    );
}

/// Who holds the operator's Lease now.
pub async fn lease_holder() -> Option<String> {
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        admin().await,
        kube_pim::testenv::CLUSTER_SCOPE_NAMESPACE,
    )
    .get_opt("kube-pim")
    .await
    .unwrap()
    .and_then(|l| l.spec)
    .and_then(|s| s.holder_identity)
}

/// A second operator process beside the test environment's (see [`start_replica`]).
pub struct Replica {
    pub process: tokio::process::Child,
    /// Its `/healthz`, `/readyz` and `/metrics` address.
    pub health: String,
    /// Its webhook port.
    pub webhook: u16,
}

/// Starts another operator under the leader-election `identity` on free ports, with `extra`
/// arguments, and waits until it is ready (a follower is, once its caches have synced).
pub async fn start_replica(env: &TestEnv, identity: &str, extra: &[String]) -> Replica {
    let [health, webhook] = kube_pim::testenv::free_ports::<2>().unwrap();
    let mut args = vec![
        format!("--leader-election-identity={identity}"),
        format!("--health-addr=127.0.0.1:{health}"),
        format!("--webhook-addr=127.0.0.1:{webhook}"),
    ];
    args.extend(extra.iter().cloned());
    let process = start_operator(env, &format!("kube-pim-{identity}"), &args);
    let health = format!("127.0.0.1:{health}");
    eventually!(
        Duration::from_secs(60),
        tokio::net::TcpStream::connect(&health).await.is_ok()
            && http_get(&health, "/readyz")
                .await
                .starts_with("HTTP/1.1 200"),
        "replica {identity} never became ready"
    );
    Replica {
        process,
        health,
        webhook,
    }
}
