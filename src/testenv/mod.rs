//! A real local Kubernetes control plane for tests and demos: etcd, kube-apiserver (RBAC,
//! client-certificate users, ServiceAccount signing keys) and kube-controller-manager (garbage
//! collection, namespace deletion, ServiceAccount tokens, ClusterRole aggregation), built from source by
//! `hack/testbin.sh` and started on free loopback ports.
//!
//! Two halves:
//! - [`ControlPlane`] owns the processes (used by the `kube-pim-testenv` command);
//! - [`TestEnv`] is a handle to a running control plane's directory. Tests and tools open it to
//!   get a `kube::Client` for any user: the CA key in `DIR/pki` mints client certificates.
//!
//! Besides the CRDs it installs the persona ClusterRoles (`kube-pim-requester`,
//! `kube-pim-approver`, `kube-pim-admin`) so tests and the demo can bind them, and binds
//! `kube-pim-policy-reader` to `system:authenticated` (as the chart does by default); a bare
//! control plane ([`Options::bare`]) installs none of it, like a new cluster (the Helm
//! chart's test).
//!
//! Layout of DIR: `env.json` (how to connect), `pki/`, `logs/<process>.log`,
//! `admin.kubeconfig`, `<user>.kubeconfig`, `bin/kubectl`, `pids`, and `ready` once serving.

pub mod oidc;
pub mod pki;
mod process;
pub use process::{free_ports, http_get};

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use k8s_openapi::{
    api::rbac::v1::{ClusterRole, ClusterRoleBinding},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, crdgen, rbac};
pub use process::Process;

/// The user name of the administrator (in `system:masters`, so RBAC does not apply).
pub const ADMIN_USER: &str = "kubepim-admin";
/// The user name the test environment runs the operator as.
pub const OPERATOR_USER: &str = "kube-pim-operator";
/// The operator's namespace in the test environment: the cluster-scope namespace.
pub const CLUSTER_SCOPE_NAMESPACE: &str = "kube-pim-system";
/// The user `kube-pim sweep` runs as (DIR/sweeper.kubeconfig), with the sweeper ClusterRole.
pub const SWEEPER_USER: &str = "kube-pim-sweeper";
/// The break-glass group the test environment's operator and policies are configured with.
pub const BREAK_GLASS_GROUP: &str = "kube-pim-break-glass";
/// The field manager the test environment applies its objects with.
const FIELD_MANAGER: &str = "kube-pim-testenv";
/// How long client certificates minted for tests stay valid.
const CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// A user of the local control plane: a name and its groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user name (certificate CN).
    pub name: String,
    /// The groups (one certificate O each).
    pub groups: Vec<String>,
}

impl std::str::FromStr for User {
    type Err = String;

    /// `NAME` or `NAME:GROUP,GROUP`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, groups) = match s.split_once(':') {
            Some((n, g)) => (
                n,
                g.split(',')
                    .filter(|g| !g.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            None => (s, Vec::new()),
        };
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "invalid user {s:?}: write NAME or NAME:GROUP1,GROUP2"
            ));
        }
        Ok(Self {
            name: name.to_string(),
            groups,
        })
    }
}

/// What `env.json` records about a running control plane.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvFile {
    server: String,
    bin_dir: PathBuf,
    /// The test OIDC issuer's URL (users with `extra`, e.g. MFA).
    #[serde(default)]
    oidc_issuer: Option<String>,
}

/// A handle to a running control plane's directory: clients and kubeconfigs for any user.
#[derive(Clone)]
pub struct TestEnv {
    dir: PathBuf,
    server: String,
    oidc_issuer: Option<String>,
    bin_dir: PathBuf,
    ca_pem: String,
    ca_key_pem: String,
}

impl TestEnv {
    /// Opens the directory of a control plane started by [`ControlPlane::start`] (or the
    /// `kube-pim-testenv up` command).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let env_path = dir.join("env.json");
        let env: EnvFile = serde_json::from_slice(
            &std::fs::read(&env_path).map_err(Error::io("read", &env_path))?,
        )
        .map_err(|e| Error::TestEnv(format!("{}: {e}", env_path.display())))?;
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(Error::io("read", p));
        Ok(Self {
            oidc_issuer: env.oidc_issuer,
            server: env.server,
            bin_dir: env.bin_dir,
            ca_pem: read(dir.join("pki/ca.crt"))?,
            ca_key_pem: read(dir.join("pki/ca.key"))?,
            dir,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The apiserver URL (`https://127.0.0.1:PORT`).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The kubectl built with the control plane.
    pub fn kubectl(&self) -> PathBuf {
        self.bin_dir.join("kubectl")
    }

    /// The directory holding the control-plane binaries.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A kubeconfig for `user` in `groups`, with a freshly minted client certificate.
    pub fn kubeconfig(&self, user: &str, groups: &[String]) -> Result<Kubeconfig> {
        let ca = pki::Ca::load(&self.ca_pem, &self.ca_key_pem)?;
        let ck = ca.issue_client(user, groups, CLIENT_CERT_VALIDITY)?;
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-pim-testenv", "cluster": {
                "server": self.server,
                "certificate-authority-data": B64.encode(&self.ca_pem),
            }}],
            "users": [{"name": user, "user": {
                "client-certificate-data": B64.encode(&ck.cert_pem),
                "client-key-data": B64.encode(&ck.key_pem),
            }}],
            "contexts": [{"name": user, "context": {"cluster": "kube-pim-testenv", "user": user}}],
            "current-context": user,
        });
        serde_json::from_value(doc).map_err(|e| Error::TestEnv(format!("kubeconfig: {e}")))
    }

    /// Writes a kubeconfig for `user` to `path` (mode 0600: it holds a private key).
    pub fn write_kubeconfig(&self, path: &Path, user: &str, groups: &[String]) -> Result<()> {
        let kc = self.kubeconfig(user, groups)?;
        let yaml =
            serde_yaml::to_string(&kc).map_err(|e| Error::TestEnv(format!("kubeconfig: {e}")))?;
        write_private(path, yaml.as_bytes())
    }

    /// A client that authenticates as `user` in `groups` (plus `system:authenticated`).
    pub async fn client(&self, user: &str, groups: &[&str]) -> Result<Client> {
        Ok(Client::try_from(self.config(user, groups).await?)?)
    }

    /// The client configuration for `user` in `groups`.
    pub async fn config(&self, user: &str, groups: &[&str]) -> Result<Config> {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let kc = self.kubeconfig(user, &groups)?;
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// A client that authenticates as `user` in `groups` and impersonates `as_user` (the
    /// apiserver allows it only if `user` may `impersonate` that user).
    pub async fn client_impersonating(
        &self,
        user: &str,
        groups: &[&str],
        as_user: &str,
    ) -> Result<Client> {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let mut kc = self.kubeconfig(user, &groups)?;
        for a in &mut kc.auth_infos {
            if let Some(info) = a.auth_info.as_mut() {
                info.impersonate = Some(as_user.to_string());
            }
        }
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Client::try_from(config)?)
    }

    /// An OIDC token from the test issuer for `user` in `groups`, whose `amr` claim (mapped to
    /// `extra["kubepim.io/amr"]` by the apiserver) lists `amr`: `&["mfa"]` for a user who
    /// authenticated with MFA, `&[]` for one who did not.
    pub fn oidc_token(&self, user: &str, groups: &[&str], amr: &[&str]) -> Result<String> {
        let url = self
            .oidc_issuer
            .as_deref()
            .ok_or_else(|| Error::TestEnv("this control plane has no OIDC issuer".into()))?;
        let pem = std::fs::read_to_string(self.dir.join("pki/oidc.key"))
            .map_err(Error::io("read", self.dir.join("pki/oidc.key")))?;
        Ok(oidc::Issuer::load(url, &pem)?.token(user, groups, amr))
    }

    /// A client that authenticates with a bearer token (e.g. a ServiceAccount token).
    pub async fn client_with_token(&self, token: &str) -> Result<Client> {
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-pim-testenv", "cluster": {
                "server": self.server,
                "certificate-authority-data": B64.encode(&self.ca_pem),
            }}],
            "users": [{"name": "token", "user": {"token": token}}],
            "contexts": [{"name": "token", "context": {"cluster": "kube-pim-testenv", "user": "token"}}],
            "current-context": "token",
        });
        let kc: Kubeconfig =
            serde_json::from_value(doc).map_err(|e| Error::TestEnv(format!("kubeconfig: {e}")))?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Client::try_from(config)?)
    }

    /// A client for the administrator (`system:masters`: not subject to RBAC).
    pub async fn admin(&self) -> Result<Client> {
        self.client(ADMIN_USER, &["system:masters"]).await
    }
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io("write", path))?;
    f.write_all(data).map_err(Error::io("write", path))
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, data).map_err(Error::io("write", path))
}

/// How to start a control plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where everything goes (created if missing; must not hold a running control plane).
    pub dir: PathBuf,
    /// Users to write `DIR/<name>.kubeconfig` for (any user can be minted later too).
    pub users: Vec<User>,
    /// Run the kube-pim operator under its own user, with this binary.
    pub operator_bin: Option<PathBuf>,
    /// More arguments for the operator's `kube-pim run` (after the test environment's own).
    pub operator_args: Vec<String>,
    /// Where the control-plane binaries are; `None` runs `hack/testbin.sh` to find or build them.
    pub bin_dir: Option<PathBuf>,
    /// Install nothing of kube-pim's (no CRDs, no persona ClusterRoles): the Helm chart's test
    /// installs them itself, and Helm refuses to adopt objects it did not create.
    pub bare: bool,
    /// Record every API request in `DIR/apiserver-audit.log` (JSON lines, metadata only):
    /// the benchmark counts the operator's requests by user agent there.
    pub apiserver_audit: bool,
}

/// A running control plane; dropping it kills every process it started.
pub struct ControlPlane {
    env: TestEnv,
    processes: Vec<Process>,
}

/// The script that builds the control-plane binaries and prints their directory.
pub fn testbin_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/testbin.sh")
}

/// Finds (building on first use) the control-plane binaries.
pub async fn ensure_binaries() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("KUBE_PIM_TESTBIN") {
        let dir = PathBuf::from(dir);
        if dir.join("kube-apiserver").exists() {
            return Ok(dir);
        }
    }
    let script = testbin_script();
    tracing::info!(script = %script.display(), "locating control-plane binaries (the first run builds them from source: 10-25 minutes)");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(Error::io("run", &script))?;
    if !out.status.success() {
        return Err(Error::TestEnv(format!(
            "{} failed ({}): see the messages above; it needs Go >= 1.26 and the Go module proxy",
            script.display(),
            out.status
        )));
    }
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(PathBuf::from(dir))
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager, installs the CRDs (unless
    /// [`Options::bare`]), writes the kubeconfigs, optionally starts the operator, and creates
    /// `DIR/ready`.
    pub async fn start(opts: Options) -> Result<Self> {
        let bin_dir = match &opts.bin_dir {
            Some(d) => d.clone(),
            None => ensure_binaries().await?,
        };
        let dir = std::path::absolute(&opts.dir).map_err(Error::io("resolve", &opts.dir))?;
        for sub in ["pki", "logs", "bin", "etcd"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(Error::io("create", dir.join(sub)))?;
        }
        let _ = std::fs::remove_file(dir.join("ready"));
        let started = std::time::Instant::now();

        // PKI: one CA for serving and client certificates; a key pair for ServiceAccount tokens.
        let ca = pki::Ca::generate()?;
        let pki = dir.join("pki");
        write(&pki.join("ca.crt"), ca.cert_pem())?;
        write_private(&pki.join("ca.key"), ca.key_pem().as_bytes())?;
        let serving = ca.issue_server("kube-apiserver", &["kubernetes", "kubernetes.default"])?;
        write(&pki.join("apiserver.crt"), &serving.cert_pem)?;
        write_private(&pki.join("apiserver.key"), serving.key_pem.as_bytes())?;
        let (sa_key, sa_pub) = pki::service_account_keys()?;
        write_private(&pki.join("sa.key"), sa_key.as_bytes())?;
        write(&pki.join("sa.pub"), sa_pub)?;

        let mut processes = Vec::new();
        // Every port this control plane listens on, found together so they are distinct.
        let [etcd_port, etcd_peer, api_port, kcm_port, oidc_port] = process::free_ports::<5>()?;
        // The OIDC issuer for users whose identity carries `extra` (MFA): up before the
        // apiserver, which fetches its discovery document.
        let oidc_url = format!("https://127.0.0.1:{oidc_port}");
        let issuer = oidc::Issuer::generate(&oidc_url);
        write_private(&pki.join("oidc.key"), issuer.key_pem()?.as_bytes())?;
        let oidc_cert = ca.issue_server("kube-pim-testenv-oidc", &[])?;
        oidc::serve(
            std::sync::Arc::new(issuer),
            ([127, 0, 0, 1], oidc_port).into(),
            &oidc_cert.cert_pem,
            &oidc_cert.key_pem,
        )
        .await?;
        let authn = dir.join("authentication.yaml");
        write(
            &authn,
            oidc::authentication_config(&oidc_url, ca.cert_pem()),
        )?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd = Process::spawn(
            "etcd",
            &bin_dir.join("etcd"),
            &[
                "--name=default".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
                "--quota-backend-bytes=4294967296".into(),
            ],
            &dir.join("logs"),
        )?;
        processes.push(etcd);
        process::wait_for_port(
            "etcd",
            etcd_port,
            &mut processes[0],
            Duration::from_secs(60),
        )
        .await?;

        let server = format!("https://127.0.0.1:{api_port}");
        let p = |f: &str| pki.join(f).display().to_string();
        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", pki.display()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--authentication-config={}", authn.display()),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            format!("--service-account-issuer={server}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            // One apiserver, no nodes: the endpoints of the `kubernetes` Service are moot.
            "--endpoint-reconciler-type=none".into(),
            "--v=1".into(),
        ];
        let mut apiserver_args = apiserver_args;
        if opts.apiserver_audit {
            let policy = dir.join("apiserver-audit-policy.yaml");
            write(
                &policy,
                b"apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
            )?;
            apiserver_args.extend([
                format!("--audit-policy-file={}", policy.display()),
                format!(
                    "--audit-log-path={}",
                    dir.join("apiserver-audit.log").display()
                ),
                "--audit-log-format=json".into(),
                // One file for the whole run: the benchmark reads it from an offset.
                "--audit-log-maxsize=100000".into(),
                // Written as each request completes, so a count taken right after is whole.
                "--audit-log-mode=blocking".into(),
            ]);
        }
        // How it was started, so a test can restart it the same way (etcd keeps the data).
        write(
            &dir.join("apiserver.json"),
            serde_json::to_vec_pretty(&serde_json::json!({
                "bin": bin_dir.join("kube-apiserver"), "args": apiserver_args,
            }))
            .expect("serializes"),
        )?;
        let apiserver = Process::spawn(
            "kube-apiserver",
            &bin_dir.join("kube-apiserver"),
            &apiserver_args,
            &dir.join("logs"),
        )?;
        processes.push(apiserver);

        let env_file = EnvFile {
            oidc_issuer: Some(oidc_url.clone()),
            server: server.clone(),
            bin_dir: bin_dir.clone(),
        };
        write(
            &dir.join("env.json"),
            serde_json::to_vec_pretty(&env_file).expect("serializes"),
        )?;
        let env = TestEnv::open(&dir)?;
        let mut cp = Self { env, processes };
        cp.write_pids()?;

        let admin = cp.env.admin().await?;
        cp.wait_ready(&admin, Duration::from_secs(180)).await?;
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, %server, "kube-apiserver ready");

        cp.env.write_kubeconfig(
            &dir.join("admin.kubeconfig"),
            ADMIN_USER,
            &["system:masters".into()],
        )?;
        let kcm = Process::spawn(
            "kube-controller-manager",
            &bin_dir.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", dir.join("admin.kubeconfig").display()),
                "--leader-elect=false".into(),
                // clusterrole-aggregation fills the aggregated ClusterRoles (admin, edit, view):
                // without it they grant nothing, and kube-pim would appear to work while
                // granting no access.
                "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,clusterrole-aggregation-controller".into(),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcm_port}"),
                "--v=1".into(),
            ],
            &dir.join("logs"),
        )?;
        cp.processes.push(kcm);
        cp.write_pids()?;

        if !opts.bare {
            install_crds(&admin).await?;
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            for role in rbac::persona_cluster_roles()
                .into_iter()
                .chain([rbac::policy_reader_cluster_role()])
            {
                let name = role.metadata.name.clone().expect("named");
                Api::<ClusterRole>::all(admin.clone())
                    .patch(&name, &pp, &Patch::Apply(&role))
                    .await?;
            }
            Api::<ClusterRoleBinding>::all(admin.clone())
                .patch(
                    rbac::POLICY_READER_CLUSTER_ROLE,
                    &pp,
                    &Patch::Apply(&rbac::policy_reader_binding("system:authenticated")),
                )
                .await?;
        }
        for u in &opts.users {
            cp.env.write_kubeconfig(
                &dir.join(format!("{}.kubeconfig", u.name)),
                &u.name,
                &u.groups,
            )?;
        }
        let kubectl_link = dir.join("bin/kubectl");
        let _ = std::fs::remove_file(&kubectl_link);
        std::os::unix::fs::symlink(bin_dir.join("kubectl"), &kubectl_link)
            .map_err(Error::io("link", &kubectl_link))?;

        if let Some(bin) = &opts.operator_bin {
            cp.start_operator(&admin, bin, &opts.operator_args).await?;
        }
        write(&dir.join("ready"), format!("{server}\n"))?;
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, dir = %dir.display(), "control plane ready");
        Ok(cp)
    }

    /// The handle for clients and kubeconfigs.
    pub fn env(&self) -> &TestEnv {
        &self.env
    }

    /// Runs the operator as [`OPERATOR_USER`] with the operator's ClusterRole (never as admin)
    /// and waits until it reports ready.
    async fn start_operator(&mut self, admin: &Client, bin: &Path, extra: &[String]) -> Result<()> {
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let role = rbac::operator_cluster_role(None);
        let name = role.metadata.name.clone().expect("named");
        Api::<ClusterRole>::all(admin.clone())
            .patch(&name, &pp, &Patch::Apply(&role))
            .await?;
        let binding = rbac::operator_cluster_role_binding(OPERATOR_USER);
        Api::<ClusterRoleBinding>::all(admin.clone())
            .patch(&name, &pp, &Patch::Apply(&binding))
            .await?;
        let ns = k8s_openapi::api::core::v1::Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(CLUSTER_SCOPE_NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
            .patch(CLUSTER_SCOPE_NAMESPACE, &pp, &Patch::Apply(&ns))
            .await?;
        let role = rbac::operator_namespace_role(CLUSTER_SCOPE_NAMESPACE);
        Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), CLUSTER_SCOPE_NAMESPACE)
            .patch(&name, &pp, &Patch::Apply(&role))
            .await?;
        let binding = rbac::operator_namespace_role_binding(CLUSTER_SCOPE_NAMESPACE, OPERATOR_USER);
        Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(
            admin.clone(),
            CLUSTER_SCOPE_NAMESPACE,
        )
        .patch(&name, &pp, &Patch::Apply(&binding))
        .await?;
        install_policies(admin, &policy_options()).await?;
        let kubeconfig = self.env.dir.join("operator.kubeconfig");
        self.env.write_kubeconfig(&kubeconfig, OPERATOR_USER, &[])?;
        // The reaper's own identity.
        Api::<ClusterRole>::all(admin.clone())
            .patch(
                rbac::SWEEPER_CLUSTER_ROLE,
                &pp,
                &Patch::Apply(&rbac::sweeper_cluster_role()),
            )
            .await?;
        Api::<ClusterRoleBinding>::all(admin.clone())
            .patch(
                rbac::SWEEPER_CLUSTER_ROLE,
                &pp,
                &Patch::Apply(&rbac::cluster_role_binding(
                    rbac::SWEEPER_CLUSTER_ROLE,
                    SWEEPER_USER,
                )),
            )
            .await?;
        self.env
            .write_kubeconfig(&self.env.dir.join("sweeper.kubeconfig"), SWEEPER_USER, &[])?;
        // The webhook's serving certificate, from the test CA, for 127.0.0.1.
        let ca = pki::Ca::load(&self.env.ca_pem, &self.env.ca_key_pem)?;
        let serving = ca.issue_server("kube-pim-webhook", &[])?;
        let pki_dir = self.env.dir.join("pki");
        write(&pki_dir.join("webhook.crt"), &serving.cert_pem)?;
        write_private(&pki_dir.join("webhook.key"), serving.key_pem.as_bytes())?;
        let [webhook_port, health_port] = process::free_ports::<2>()?;
        let mut args = vec![
            "run".to_string(),
            format!("--health-addr=127.0.0.1:{health_port}"),
            format!("--operator-username={OPERATOR_USER}"),
            format!("--namespace={CLUSTER_SCOPE_NAMESPACE}"),
            format!("--break-glass-group={BREAK_GLASS_GROUP}"),
            // Notification receivers in tests and the demo listen on loopback over http.
            "--notification-allow-http".into(),
            "--notification-allow-cidr=127.0.0.0/8".into(),
            // One logical replica: a restart (same identity) takes its Lease back at once.
            "--leader-election-identity=testenv-operator".into(),
            format!("--audit-log={}", self.env.dir.join("audit.log").display()),
            format!("--webhook-addr=127.0.0.1:{webhook_port}"),
            format!(
                "--webhook-cert-file={}",
                pki_dir.join("webhook.crt").display()
            ),
            format!(
                "--webhook-key-file={}",
                pki_dir.join("webhook.key").display()
            ),
            "--log-format=json".into(),
            "--log-level=info,kube_pim=debug".into(),
        ];
        args.extend(extra.iter().cloned());
        let env = [("KUBECONFIG", kubeconfig.display().to_string())];
        // How the operator was started, so a test can stop it and start it again the same way.
        let how = serde_json::json!({
            "bin": bin, "args": args, "env": {"KUBECONFIG": env[0].1}, "healthAddr": format!("127.0.0.1:{health_port}"),
        });
        write(
            &self.env.dir.join("operator.json"),
            serde_json::to_vec_pretty(&how).expect("serializes"),
        )?;
        let mut op =
            Process::spawn_with_env("kube-pim", bin, &args, &self.env.dir.join("logs"), &env)?;
        process::wait_for_http_ok(
            "kube-pim",
            health_port,
            "/readyz",
            &mut op,
            Duration::from_secs(60),
        )
        .await?;
        write(
            &self.env.dir.join("operator.addr"),
            format!("127.0.0.1:{health_port}\n"),
        )?;
        self.processes.push(op);
        self.write_pids()?;
        let base = format!("https://127.0.0.1:{webhook_port}");
        install_webhooks(admin, &base, &self.env.ca_pem, OPERATOR_USER).await
    }

    async fn wait_ready(&mut self, admin: &Client, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("valid request");
            match admin.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                _ => {}
            }
            for p in &mut self.processes {
                p.check_running()?;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::TestEnv(format!(
                    "kube-apiserver not ready after {timeout:?}; see {}",
                    self.env.dir.join("logs/kube-apiserver.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn write_pids(&self) -> Result<()> {
        let pids: String = self
            .processes
            .iter()
            .filter_map(|p| p.pid().map(|pid| format!("{pid} {}\n", p.name())))
            .collect();
        write(&self.env.dir.join("pids"), pids)
    }

    /// Each running process's name and id (etcd, kube-apiserver, kube-controller-manager,
    /// kube-pim).
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .filter_map(|p| p.pid().map(|pid| (p.name().to_string(), pid)))
            .collect()
    }

    /// The operator process's id, while it runs.
    pub fn operator_pid(&self) -> Option<u32> {
        self.processes
            .iter()
            .find(|p| p.name() == "kube-pim")
            .and_then(|p| p.pid())
    }

    /// Kills the operator (as a crash or an outage would), leaving the control plane running;
    /// its webhooks then refuse what they guard (fail closed) until it is back.
    pub async fn stop_operator(&mut self) -> Result<()> {
        if let Some(i) = self.processes.iter().position(|p| p.name() == "kube-pim") {
            self.processes.remove(i).stop().await;
        }
        self.write_pids()
    }

    /// Starts the operator again exactly as it was started (`DIR/operator.json`) and returns
    /// once its `/readyz` answers 200 (polled every 50 ms).
    pub async fn restart_operator(&mut self) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct How {
            bin: PathBuf,
            args: Vec<String>,
            env: BTreeMap<String, String>,
            #[serde(rename = "healthAddr")]
            health_addr: String,
        }
        let path = self.env.dir.join("operator.json");
        let how: How =
            serde_json::from_slice(&std::fs::read(&path).map_err(Error::io("read", &path))?)
                .map_err(|e| Error::TestEnv(format!("{}: {e}", path.display())))?;
        let env: Vec<(&str, String)> = how
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let mut op = Process::spawn_with_env(
            "kube-pim",
            &how.bin,
            &how.args,
            &self.env.dir.join("logs"),
            &env,
        )?;
        let port = how
            .health_addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| Error::TestEnv(format!("bad healthAddr in {}", path.display())))?;
        process::wait_for_http_ok(
            "kube-pim",
            port,
            "/readyz",
            &mut op,
            Duration::from_secs(120),
        )
        .await?;
        self.processes.push(op);
        self.write_pids()
    }

    /// Stops every process, newest first (the operator before the apiserver before etcd).
    pub async fn shutdown(mut self) {
        let _ = std::fs::remove_file(self.env.dir.join("ready"));
        while let Some(p) = self.processes.pop() {
            p.stop().await;
        }
        let _ = std::fs::remove_file(self.env.dir.join("pids"));
    }
}

/// Applies every kube-pim CRD and waits until the apiserver serves them.
pub async fn install_crds(admin: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crdgen::all() {
        let name = crd.metadata.name.clone().expect("CRDs are named");
        api.patch(&name, &pp, &Patch::Apply(&crd)).await?;
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .map_err(|_| Error::TestEnv(format!("CRD {name} not established within 60s")))?
            .map_err(|e| Error::TestEnv(format!("waiting for CRD {name}: {e}")))?;
    }
    Ok(())
}

/// How the test environment's in-apiserver policies are configured.
pub fn policy_options() -> crate::policies::Options {
    crate::policies::Options {
        operator: crate::policies::Operator {
            username: OPERATOR_USER.into(),
            require_pod_bound_token: false,
        },
        namespace: CLUSTER_SCOPE_NAMESPACE.into(),
        break_glass_group: Some(BREAK_GLASS_GROUP.into()),
    }
}

/// Installs kube-pim's ValidatingAdmissionPolicies and their bindings.
pub async fn install_policies(admin: &Client, o: &crate::policies::Options) -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for (p, b) in crate::policies::all(o) {
        let name = p.metadata.name.clone().expect("named");
        Api::<ValidatingAdmissionPolicy>::all(admin.clone())
            .patch(&name, &pp, &Patch::Apply(&p))
            .await?;
        Api::<ValidatingAdmissionPolicyBinding>::all(admin.clone())
            .patch(&name, &pp, &Patch::Apply(&b))
            .await?;
    }
    // The apiserver enforces new policies a moment after they are written: wait until two of
    // them refuse a dry run, so nothing that follows slips through that moment.
    let dry = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let forged_binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-pim-policy-probe", "labels": {"app.kubernetes.io/managed-by": "kube-pim"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "probe"}]
    }))
    .expect("a valid RoleBinding");
    let forged_request: crate::api::ActivationRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"name": "kube-pim-policy-probe"},
        "spec": {"roleSetting": "probe", "justification": "probe", "requester": {"username": "someone-else"}}
    }))
    .expect("a valid ActivationRequest");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let binding =
            Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), "default")
                .create(&dry, &forged_binding)
                .await;
        let request = Api::<crate::api::ActivationRequest>::namespaced(admin.clone(), "default")
            .create(&dry, &forged_request)
            .await;
        let refused = |e: Option<kube::Error>| matches!(e, Some(kube::Error::Api(s)) if s.message.contains("ValidatingAdmissionPolicy"));
        if refused(binding.err()) && refused(request.err()) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::TestEnv(
                "the ValidatingAdmissionPolicies were not enforced within 30s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Registers kube-pim's admission webhook at `base_url` (serving a certificate from `ca_pem`).
pub async fn install_webhooks(
    admin: &Client,
    base_url: &str,
    ca_pem: &str,
    operator_user: &str,
) -> Result<()> {
    use crate::webhook::config;
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let operator = crate::policies::Operator {
        username: operator_user.into(),
        require_pod_bound_token: false,
    };
    let m = config::mutating(config::url_client(base_url, "/mutate", ca_pem), &operator);
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .patch(config::NAME, &pp, &Patch::Apply(&m))
        .await?;
    let v = config::validating(config::url_client(base_url, "/validate", ca_pem), &operator);
    Api::<ValidatingWebhookConfiguration>::all(admin.clone())
        .patch(config::NAME, &pp, &Patch::Apply(&v))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users() {
        let u: User = "alice:team-payments,oncall".parse().unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, ["team-payments", "oncall"]);
        let u: User = "bob".parse().unwrap();
        assert!(u.groups.is_empty());
        assert!("".parse::<User>().is_err());
        assert!(":g".parse::<User>().is_err());
    }
}
