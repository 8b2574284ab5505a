//! The Helm chart `charts/kube-pim` (issue #5), with the helm that `hack/testbin.sh` builds:
//! - `helm lint --strict` passes for several value combinations, and values.schema.json
//!   refuses unknown keys and malformed values;
//! - `helm template` renders, for each combination, exactly the RBAC, ValidatingAdmissionPolicies
//!   and webhook configurations that the Rust functions build for the same settings (the
//!   chart's generated templates cannot drift from `src/rbac.rs`, `src/policies.rs`,
//!   `src/webhook/config.rs` unnoticed), and a Deployment, CronJob, PDB and NetworkPolicies
//!   as SPEC section 6 asks;
//! - the chart's CRDs are `crds/`'s;
//! - `helm install` into a bare local control plane (no kube-pim objects, like a new
//!   cluster) is accepted by the real apiserver, every object of the release exists
//!   afterwards, the installed policies are enforced and the RBAC grants what it should and
//!   nothing more; `helm upgrade` keeps the self-signed certificate, switches to cert-manager
//!   and limits `bind`; `helm uninstall` removes everything but the CRDs.
//!
//! There is no kubelet: Pods never run, so nothing waits for them (`helm install` without
//! `--wait`). The Prometheus Operator's and cert-manager's CRDs are stand-ins (any fields
//! allowed) so their kinds are accepted.

#[macro_use]
mod common;

use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use k8s_openapi::{
    api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{DynamicObject, GroupVersionKind, PostParams},
    runtime::wait::{Condition, await_condition, conditions},
};
use kube_pim::{
    crdgen::{self, chart},
    policies::{self, Operator},
    rbac,
    testenv::TestEnv,
    webhook::config,
};
use serde_json::{Value, json};

/// The Kubernetes version `helm template` and `helm lint` assume (the test control plane's,
/// hack/testbin.sh): a helm built from its Go module without release ldflags would assume
/// 1.20, below the chart's kubeVersion.
const KUBE_VERSION: &str = "v1.36.3";
const NS: &str = "kube-pim-system";
const RELEASE: &str = "kube-pim";

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(chart::DIR)
}

/// Runs helm with its cache and configuration in a scratch directory (not the user's).
async fn helm(args: &[&str]) -> Output {
    let bin = kube_pim::testenv::ensure_binaries()
        .await
        .expect("the control-plane binaries (make testbin)")
        .join("helm");
    // Shared by every run: helm only reads it here (no repositories, no plugins).
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chart-helm-home");
    tokio::process::Command::new(&bin)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()))
}

fn succeeded(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Writes `values` (JSON, which is YAML) to a file for `helm -f`, removed when dropped: a
/// file, unlike `--set`, carries any string unchanged (quotes, commas, backslashes).
fn values_file(values: &Value) -> tempfile::TempPath {
    let mut f = tempfile::Builder::new()
        .prefix("kube-pim-chart-values-")
        .suffix(".yaml")
        .tempfile()
        .unwrap();
    std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(values).unwrap()).unwrap();
    f.into_temp_path()
}

fn parse_docs(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("helm writes valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template` in namespace `ns` with `values`.
async fn render(ns: &str, values: &Value) -> Vec<Value> {
    let file = values_file(values);
    let chart = chart_dir();
    let out = helm(&[
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        ns,
        "--kube-version",
        KUBE_VERSION,
        "-f",
        file.to_str().unwrap(),
    ])
    .await;
    parse_docs(&succeeded(&out, "helm template"))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
}

fn names_of(docs: &[Value], kind: &str) -> Vec<String> {
    let mut n: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

/// `v` without `metadata.labels`, after checking they include every label of `expected`.
fn without_labels(mut v: Value, expected: &Value, what: &str) -> Value {
    if let Some(want) = expected["metadata"]["labels"].as_object() {
        for (k, val) in want {
            assert_eq!(
                &v["metadata"]["labels"][k], val,
                "{what}: label {k} missing or different"
            );
        }
    }
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("labels");
    }
    v
}

/// The rendered object equals what Rust builds, apart from the chart's extra labels.
fn assert_renders(docs: &[Value], expected: Value) {
    let kind = expected["kind"].as_str().unwrap().to_string();
    let name = expected["metadata"]["name"].as_str().unwrap().to_string();
    let what = format!("{kind} {name}");
    let rendered = without_labels(find(docs, &kind, &name).clone(), &expected, &what);
    let expected = without_labels(expected.clone(), &expected, &what);
    assert!(
        rendered == expected,
        "{what}: the chart renders\n{}\nbut the Rust code builds\n{}\n(run `make crds`)",
        serde_json::to_string_pretty(&rendered).unwrap(),
        serde_json::to_string_pretty(&expected).unwrap()
    );
}

fn to_json<K: serde::Serialize>(k: &K) -> Value {
    serde_json::to_value(k).unwrap()
}

/// One combination of the chart's settings and what the Rust code builds for it.
struct Case {
    ns: &'static str,
    values: Value,
    pod_bound: bool,
    break_glass: Option<&'static str>,
    bind: Option<Vec<String>>,
    cert_manager: bool,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            ns: NS,
            values: json!({}),
            pod_bound: false,
            break_glass: None,
            bind: None,
            cert_manager: false,
        },
        Case {
            ns: "pim-ops",
            values: json!({
                "rbac": {"bindClusterRoles": ["admin", "view"]},
                "breakGlassGroup": "sre-break-glass",
                "operator": {"requirePodBoundToken": true},
                "webhook": {"tls": {"mode": "certManager"}},
            }),
            pod_bound: true,
            break_glass: Some("sre-break-glass"),
            bind: Some(vec!["admin".into(), "view".into()]),
            cert_manager: true,
        },
        // A group name with a quote, a backslash and a comma stays one CEL string literal.
        Case {
            ns: NS,
            values: json!({"breakGlassGroup": "odd\" || true || \"\\,group"}),
            pod_bound: false,
            break_glass: Some("odd\" || true || \"\\,group"),
            bind: None,
            cert_manager: false,
        },
        Case {
            ns: NS,
            values: json!({"operator": {"requirePodBoundToken": true}}),
            pod_bound: true,
            break_glass: None,
            bind: None,
            cert_manager: false,
        },
    ]
}

fn operator_of(c: &Case) -> Operator {
    Operator {
        username: format!(
            "system:serviceaccount:{}:{}",
            c.ns,
            chart::OPERATOR_SERVICE_ACCOUNT
        ),
        require_pod_bound_token: c.pod_bound,
    }
}

/// What the Rust code builds for `c`: the policies and their bindings, the roles, and the
/// webhook configurations (their CA bundle and annotations are checked apart).
fn built(c: &Case) -> Vec<Value> {
    let op = operator_of(c);
    let mut out = Vec::new();
    for (p, b) in policies::all(&policies::Options {
        operator: op.clone(),
        namespace: c.ns.into(),
        break_glass_group: c.break_glass.map(String::from),
    }) {
        out.push(to_json(&p));
        out.push(to_json(&b));
    }
    out.push(to_json(&rbac::operator_cluster_role(c.bind.as_deref())));
    out.extend(rbac::persona_cluster_roles().iter().map(to_json));
    out.push(to_json(&rbac::policy_reader_cluster_role()));
    out.push(to_json(&rbac::sweeper_cluster_role()));
    out.push(to_json(&rbac::operator_namespace_role(c.ns)));
    out.push(to_json(&config::mutating(
        chart::service_client(c.ns, "/mutate"),
        &op,
    )));
    out.push(to_json(&config::validating(
        chart::service_client(c.ns, "/validate"),
        &op,
    )));
    out
}

/// The webhook configurations as rendered, with the CA bundle and cert-manager annotation
/// checked for the TLS mode and then removed (Rust builds them without either).
fn strip_tls(docs: &mut [Value], c: &Case) {
    let ca = docs
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "kube-pim-webhook-tls")
        .map(|s| s["data"]["ca.crt"].clone());
    for d in docs.iter_mut().filter(|d| {
        d["kind"] == "MutatingWebhookConfiguration" || d["kind"] == "ValidatingWebhookConfiguration"
    }) {
        let inject = d["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].clone();
        if c.cert_manager {
            assert_eq!(inject, json!(format!("{}/kube-pim-webhook", c.ns)));
            assert_eq!(ca, None, "certManager mode renders no Secret");
        } else {
            assert!(inject.is_null(), "{inject}");
        }
        if let Some(m) = d["metadata"].as_object_mut() {
            m.remove("annotations");
        }
        for w in d["webhooks"].as_array_mut().unwrap() {
            let cc = w["clientConfig"].as_object_mut().unwrap();
            let bundle = cc.remove("caBundle");
            if c.cert_manager {
                assert_eq!(bundle, None, "cert-manager's cainjector fills caBundle");
            } else {
                assert!(ca.is_some(), "selfSigned mode renders the Secret");
                assert_eq!(bundle, ca, "caBundle is the CA of the Secret's certificate");
            }
        }
    }
}

#[tokio::test]
async fn the_chart_renders_what_the_rust_code_builds() {
    for c in cases() {
        let mut docs = render(c.ns, &c.values).await;
        strip_tls(&mut docs, &c);
        let expected = built(&c);
        for e in &expected {
            assert_renders(&docs, e.clone());
        }
        // And nothing more of these kinds.
        for kind in [
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ClusterRole",
            "Role",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ] {
            let mut want: Vec<String> = expected
                .iter()
                .filter(|e| e["kind"] == kind)
                .map(|e| e["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            want.sort();
            assert_eq!(names_of(&docs, kind), want, "{kind} in {}", c.values);
        }
        // The operator runs as the user every guard exempts, with the same break-glass group.
        let op = operator_of(&c);
        let deploy = find(&docs, "Deployment", "kube-pim");
        let pod = &deploy["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], chart::OPERATOR_SERVICE_ACCOUNT);
        let args: Vec<&str> = pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.contains(&format!("--operator-username={}", op.username).as_str()),
            "{args:?}"
        );
        let glass: Vec<&&str> = args
            .iter()
            .filter(|a| a.starts_with("--break-glass-group="))
            .collect();
        match c.break_glass {
            Some(g) => assert_eq!(glass, [&format!("--break-glass-group={g}").as_str()]),
            None => assert!(glass.is_empty(), "{glass:?}"),
        }
        let binding = find(&docs, "ClusterRoleBinding", rbac::OPERATOR_CLUSTER_ROLE);
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "kube-pim", "namespace": c.ns}])
        );
        assert_eq!(binding["roleRef"]["name"], rbac::OPERATOR_CLUSTER_ROLE);
        let ns_binding = find(&docs, "RoleBinding", rbac::OPERATOR_CLUSTER_ROLE);
        assert_eq!(ns_binding["metadata"]["namespace"], c.ns);
        assert_eq!(ns_binding["subjects"], binding["subjects"]);
        // The webhook configurations point at the chart's Service.
        let svc = find(&docs, "Service", chart::WEBHOOK_SERVICE);
        assert_eq!(svc["spec"]["ports"][0]["port"], chart::WEBHOOK_SERVICE_PORT);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "webhook");
        if c.cert_manager {
            let cert = find(&docs, "Certificate", chart::WEBHOOK_CERTIFICATE);
            assert_eq!(cert["spec"]["secretName"], "kube-pim-webhook-tls");
            let dns = format!("kube-pim-webhook.{}.svc", c.ns);
            assert!(
                cert["spec"]["dnsNames"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(dns)),
                "{cert}"
            );
            assert_eq!(cert["spec"]["issuerRef"]["name"], "kube-pim-selfsigned");
            find(&docs, "Issuer", "kube-pim-selfsigned");
        }
    }
}

fn container_is_restricted(c: &Value, what: &str) {
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["runAsNonRoot"], true, "{what}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
    for k in ["cpu", "memory"] {
        assert!(
            c["resources"]["requests"][k].is_string(),
            "{what}: requests.{k}"
        );
        assert!(
            c["resources"]["limits"][k].is_string(),
            "{what}: limits.{k}"
        );
    }
}

#[tokio::test]
async fn the_operator_and_the_sweep_run_restricted_and_highly_available() {
    let docs = render(NS, &json!({})).await;
    let deploy = find(&docs, "Deployment", "kube-pim");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    container_is_restricted(c, "operator");
    let args = c["args"].as_array().unwrap();
    assert_eq!(args[0], "run");
    assert!(args.contains(&json!("--leader-election=true")), "{args:?}");
    let env: Vec<(&str, &Value)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                &e["valueFrom"]["fieldRef"]["fieldPath"],
            )
        })
        .collect();
    assert!(
        env.contains(&("POD_NAME", &json!("metadata.name"))),
        "{env:?}"
    );
    assert!(
        env.contains(&("POD_NAMESPACE", &json!("metadata.namespace"))),
        "{env:?}"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    let ports: Vec<(&str, &Value)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), &p["containerPort"]))
        .collect();
    assert_eq!(ports, [("webhook", &json!(9443)), ("http", &json!(8080))]);
    assert!(
        args.contains(&json!("--webhook-addr=0.0.0.0:9443")),
        "{args:?}"
    );
    assert!(
        args.contains(&json!("--health-addr=0.0.0.0:8080")),
        "{args:?}"
    );
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        "kube-pim-webhook-tls"
    );
    for f in ["tls.crt", "tls.key"] {
        let flag = format!(
            "--webhook-{}-file=/etc/kube-pim/tls/{f}",
            if f == "tls.crt" { "cert" } else { "key" }
        );
        assert!(args.contains(&json!(flag)), "{args:?}");
    }
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/kube-pim/tls");

    let cron = find(&docs, "CronJob", "kube-pim-sweep");
    let job = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(job["serviceAccountName"], "kube-pim-sweeper");
    assert_eq!(job["containers"][0]["args"], json!(["sweep"]));
    container_is_restricted(&job["containers"][0], "sweep");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let sweeper = find(&docs, "ClusterRoleBinding", rbac::SWEEPER_CLUSTER_ROLE);
    assert_eq!(sweeper["roleRef"]["name"], rbac::SWEEPER_CLUSTER_ROLE);
    assert_eq!(
        sweeper["subjects"],
        json!([{"kind": "ServiceAccount", "name": "kube-pim-sweeper", "namespace": NS}])
    );

    let pdb = find(&docs, "PodDisruptionBudget", "kube-pim");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    // Ingress only to the webhook and metrics ports; egress only DNS and the API server.
    let np = find(&docs, "NetworkPolicy", "kube-pim");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    let ingress: Vec<&Value> = np["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_array().unwrap())
        .map(|p| &p["port"])
        .collect();
    assert_eq!(ingress, [&json!("webhook"), &json!("http")]);
    let egress_ports = |np: &Value| -> Vec<Value> {
        np["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_array().unwrap().clone())
            .map(|p| p["port"].clone())
            .collect()
    };
    assert_eq!(
        egress_ports(np),
        [json!(53), json!(53), json!(443), json!(6443)]
    );
    let sweep_np = find(&docs, "NetworkPolicy", "kube-pim-sweep");
    assert_eq!(sweep_np["spec"]["ingress"], json!([]));
    assert_eq!(egress_ports(sweep_np), egress_ports(np));
    // With the API server's address given, egress goes there only.
    let docs = render(
        NS,
        &json!({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [6443]},
                                  "dns": {"enabled": false}}}),
    )
    .await;
    let np = find(&docs, "NetworkPolicy", "kube-pim");
    assert_eq!(
        np["spec"]["egress"],
        json!([{"ports": [{"port": 6443, "protocol": "TCP"}],
                "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]}])
    );
    // Optional parts switch off.
    let docs = render(
        NS,
        &json!({"sweep": {"enabled": false}, "pdb": {"enabled": false},
                "networkPolicy": {"enabled": false}}),
    )
    .await;
    for kind in [
        "CronJob",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    ] {
        assert!(names_of(&docs, kind).is_empty(), "{kind}");
    }
    assert!(!names_of(&docs, "ServiceAccount").contains(&"kube-pim-sweeper".to_string()));
    let docs = render(NS, &json!({"serviceMonitor": {"enabled": true}})).await;
    let sm = find(&docs, "ServiceMonitor", "kube-pim");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    let metrics = find(&docs, "Service", "kube-pim-metrics");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&metrics["metadata"]["labels"][k], v, "{k}");
    }
}

#[tokio::test]
async fn helm_lint_passes_and_the_schema_refuses_bad_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for c in cases() {
        let file = values_file(&c.values);
        let out = helm(&[
            "lint",
            "--strict",
            chart,
            "--namespace",
            c.ns,
            "--kube-version",
            KUBE_VERSION,
            "-f",
            file.to_str().unwrap(),
        ])
        .await;
        succeeded(&out, &format!("helm lint --strict with {}", c.values));
    }
    for (bad, why) in [
        (json!({"replica": 2}), "additional properties 'replica'"),
        (
            json!({"webhook": {"tls": {"mode": "plain"}}}),
            "/webhook/tls/mode",
        ),
        (json!({"retention": "30 days"}), "/retention"),
        (
            json!({"rbac": {"bindClusterRoles": "admin"}}),
            "/rbac/bindClusterRoles",
        ),
        (
            json!({"operator": {"requirePodBoundToken": "yes"}}),
            "/operator/requirePodBoundToken",
        ),
        (
            json!({"networkPolicy": {"apiServer": {"port": 6443}}}),
            "additional properties 'port'",
        ),
    ] {
        let file = values_file(&bad);
        let out = helm(&[
            "template",
            RELEASE,
            chart,
            "--kube-version",
            KUBE_VERSION,
            "-f",
            file.to_str().unwrap(),
        ])
        .await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(err.contains("schema") && err.contains(why), "{bad}: {err}");
    }
}

/// The chart's CRDs are `crds/`'s, byte for byte (both are generated by `make crds`), and
/// its version is the crate's.
#[test]
fn the_charts_crds_are_crds_dir_and_its_version_is_the_crates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let list = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") && n != crdgen::POLICIES_FILE)
            .collect();
        v.sort();
        v
    };
    let chart_crds = chart_dir().join("crds");
    assert_eq!(list(&chart_crds), list(&root.join("crds")));
    for crd in crdgen::all() {
        let name = crdgen::file_name(&crd);
        let a = std::fs::read_to_string(chart_crds.join(&name)).unwrap();
        let b = std::fs::read_to_string(root.join("crds").join(&name)).unwrap();
        assert!(
            a == b,
            "{name}: the chart's copy differs from crds/ (run `make crds`)"
        );
    }
    let meta: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(meta["appVersion"], env!("CARGO_PKG_VERSION"));
}

// ---------------------------------------------------------------------------------------
// Against the real apiserver.

struct Bare {
    env: TestEnv,
    _child: Mutex<std::process::Child>,
}

static BARE: OnceLock<Bare> = OnceLock::new();

/// A control plane without any kube-pim object (no CRDs, no persona roles): Helm refuses to
/// take over objects it did not create, and a new cluster has none.
fn bare() -> &'static TestEnv {
    &BARE
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("testenv-chart-bare-{}", std::process::id()));
            let child = common::start_child(&dir, &["--bare"]);
            Bare {
                env: TestEnv::open(&dir).expect("open testenv dir"),
                _child: Mutex::new(child),
            }
        })
        .env
}

/// Stand-ins for the Prometheus Operator's and cert-manager's CRDs: any fields allowed, so
/// the apiserver accepts the chart's ServiceMonitor, Issuer and Certificate.
async fn install_stand_in_crds(admin: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for (group, kind, plural) in [
        ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
        ("cert-manager.io", "Issuer", "issuers"),
        ("cert-manager.io", "Certificate", "certificates"),
    ] {
        let name = format!("{plural}.{group}");
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"group": group, "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase()},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object",
                        "x-kubernetes-preserve-unknown-fields": true}}}]}
        }))
        .unwrap();
        api.create(&PostParams::default(), &crd).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .expect("CRD established")
        .unwrap();
    }
}

async fn helm_on(env: &TestEnv, args: &[&str], values: &Value) -> String {
    let kubeconfig = env.dir().join("admin.kubeconfig");
    let file = values_file(values);
    let chart = chart_dir();
    let mut all: Vec<&str> = args.to_vec();
    if args[0] == "install" || args[0] == "upgrade" {
        all.extend([
            RELEASE,
            chart.to_str().unwrap(),
            "-f",
            file.to_str().unwrap(),
        ]);
    }
    all.extend([
        "--namespace",
        NS,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    succeeded(&helm(&all).await, &format!("helm {}", args.join(" ")))
}

/// Every object of the release's manifest, read back from the apiserver (`None`: missing).
async fn release_objects(client: &Client, manifest: &str) -> Vec<(String, Option<DynamicObject>)> {
    let mut out = Vec::new();
    for doc in parse_docs(manifest) {
        let (group, version) = match doc["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (
                String::new(),
                doc["apiVersion"].as_str().unwrap().to_string(),
            ),
        };
        let kind = doc["kind"].as_str().unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        let gvk = GroupVersionKind::gvk(&group, &version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("{kind} is not served: {e}"));
        let api: Api<DynamicObject> = match caps.scope {
            kube::discovery::Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                doc["metadata"]["namespace"].as_str().unwrap_or(NS),
                &ar,
            ),
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        out.push((format!("{kind} {name}"), api.get_opt(name).await.unwrap()));
    }
    out
}

/// Whether `user` in `groups` may `verb` `resource` (`group/resource`, `name` optional) in
/// `ns` (`""`: cluster-wide), as the apiserver's authorizer answers.
async fn allowed(admin: &Client, user: &str, verb: &str, what: &str, name: &str, ns: &str) -> bool {
    let (group, resource) = what.split_once('/').unwrap_or(("", what));
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{NS}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                name: (!name.is_empty()).then(|| name.to_string()),
                namespace: (!ns.is_empty()).then(|| ns.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

/// `expected` is contained in `actual`: every field of `expected` is in `actual` with the same
/// value (lists item by item, same length). The apiserver adds defaults; it must not change
/// or drop anything the chart wrote.
fn contained(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().try_for_each(|(k, v)| {
            contained(v, a.get(k).unwrap_or(&Value::Null), &format!("{path}.{k}"))
        }),
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .try_for_each(|(i, (e, a))| contained(e, a, &format!("{path}[{i}]"))),
        _ if expected == actual => Ok(()),
        _ => Err(format!("{path}: expected {expected}, found {actual}")),
    }
}

async fn live(client: &Client, api_version: &str, kind: &str, name: &str) -> Value {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = match caps.scope {
        kube::discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), NS, &ar),
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

/// The live objects contain what the Rust code builds for `c` (the policies, roles and
/// webhook configurations as the apiserver stored them).
async fn assert_live_matches(client: &Client, c: &Case) {
    for mut e in built(c) {
        if let Some(m) = e["metadata"].as_object_mut() {
            m.remove("labels");
        }
        let a = live(
            client,
            e["apiVersion"].as_str().unwrap(),
            e["kind"].as_str().unwrap(),
            e["metadata"]["name"].as_str().unwrap(),
        )
        .await;
        if let Err(diff) = contained(&e, &a, "") {
            panic!(
                "{} {} as installed differs from the Rust code: {diff}",
                e["kind"], e["metadata"]["name"]
            );
        }
    }
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_on_a_real_apiserver() {
    let env = bare();
    let admin = env.admin().await.unwrap();
    install_stand_in_crds(&admin).await;
    let operator = format!("system:serviceaccount:{NS}:kube-pim");
    let sweeper = format!("system:serviceaccount:{NS}:kube-pim-sweeper");

    // Install: every object accepted and present.
    let values = json!({"serviceMonitor": {"enabled": true},
                        "breakGlassGroup": "kube-pim-break-glass"});
    helm_on(env, &["install", "--create-namespace"], &values).await;
    let manifest = helm_on(env, &["get", "manifest", RELEASE], &json!({})).await;
    let objects = release_objects(&admin, &manifest).await;
    let missing: Vec<&String> = objects
        .iter()
        .filter(|(_, o)| o.is_none())
        .map(|(n, _)| n)
        .collect();
    assert!(missing.is_empty(), "not in the apiserver: {missing:?}");
    let kinds: Vec<&str> = objects
        .iter()
        .map(|(n, _)| n.split(' ').next().unwrap())
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "Secret",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "CronJob",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
    ] {
        assert!(
            kinds.contains(&kind),
            "the release has no {kind}: {kinds:?}"
        );
    }
    // The CRDs from the chart's crds/ directory, served.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in crdgen::all() {
        let name = crd.metadata.name.clone().unwrap();
        let live = crds.get(&name).await.unwrap();
        if let Err(diff) = contained(&to_json(&crd.spec), &to_json(&live.spec), "spec") {
            panic!("{name} as installed differs from the Rust types: {diff}");
        }
        assert!(
            conditions::is_crd_established().matches_object(Some(&live)),
            "{name}"
        );
    }
    let default_case = Case {
        ns: NS,
        values: values.clone(),
        pod_bound: false,
        break_glass: Some("kube-pim-break-glass"),
        bind: None,
        cert_manager: false,
    };
    assert_live_matches(&admin, &default_case).await;

    // The installed self-signed certificate is for the Service and its CA is the bundle.
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(admin.clone(), NS);
    let secret = secrets.get("kube-pim-webhook-tls").await.unwrap();
    let data = secret.data.clone().unwrap();
    let ca = data["ca.crt"].0.clone();
    let webhooks = live(
        &admin,
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        config::NAME,
    )
    .await;
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(
            webhooks["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(bundle, ca, "caBundle is the Secret's CA");
    let cert_pem = String::from_utf8(data["tls.crt"].0.clone()).unwrap();
    assert_serving_cert(&cert_pem, &String::from_utf8(ca.clone()).unwrap());

    // The RBAC, as the apiserver's authorizer sees it (its cache follows within moments).
    eventually!(
        Duration::from_secs(30),
        allowed(
            &admin,
            &operator,
            "bind",
            "rbac.authorization.k8s.io/clusterroles",
            "cluster-admin",
            ""
        )
        .await
            && allowed(
                &admin,
                &operator,
                "create",
                "rbac.authorization.k8s.io/rolebindings",
                "",
                "team-a"
            )
            .await
            && allowed(
                &admin,
                &operator,
                "update",
                "coordination.k8s.io/leases",
                "kube-pim",
                NS
            )
            .await
            && allowed(
                &admin,
                &sweeper,
                "delete",
                "rbac.authorization.k8s.io/clusterrolebindings",
                "",
                ""
            )
            .await,
        "the chart's bindings never granted the operator and the sweeper their roles"
    );
    // Signing keys of notifications: get, in its own namespace only.
    assert!(
        allowed(&admin, &operator, "get", "secrets", "", NS).await,
        "the operator reads notification signing keys in its namespace"
    );
    for (user, verb, what, ns) in [
        (&operator, "get", "secrets", "default"),
        (&operator, "list", "secrets", NS),
        (&operator, "list", "secrets", ""),
        (&operator, "update", "coordination.k8s.io/leases", "default"),
        (&operator, "impersonate", "users", ""),
        (&operator, "create", "pods", NS),
        (
            &operator,
            "escalate",
            "rbac.authorization.k8s.io/clusterroles",
            "",
        ),
        (
            &sweeper,
            "create",
            "rbac.authorization.k8s.io/rolebindings",
            "team-a",
        ),
        (&sweeper, "get", "kubepim.io/activationrequests", "team-a"),
        (&sweeper, "get", "secrets", NS),
    ] {
        assert!(
            !allowed(&admin, user, verb, what, "", ns).await,
            "{user} may {verb} {what} in {ns:?}"
        );
    }

    // The installed policies are enforced: a binding forged as kube-pim's is refused, even
    // for the administrator.
    let forged: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "forged", "labels": {"app.kubernetes.io/managed-by": "kube-pim"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]
    }))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let rbs = Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), "default");
    eventually!(
        Duration::from_secs(30),
        matches!(rbs.create(&dry, &forged).await,
            Err(kube::Error::Api(s)) if s.message.contains("kube-pim-managed-bindings")),
        "the chart's ValidatingAdmissionPolicies were never enforced"
    );
    // And with no operator running, the webhook fails closed.
    let request: kube_pim::api::ActivationRequest = serde_json::from_value(json!({
        "apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
        "metadata": {"name": "probe"},
        "spec": {"roleSetting": "probe", "justification": "probe",
                 "requester": {"username": "kubepim-admin"}}
    }))
    .unwrap();
    let err = Api::<kube_pim::api::ActivationRequest>::namespaced(admin.clone(), "default")
        .create(&dry, &request)
        .await
        .expect_err("no webhook is running: requests must be refused");
    // The mutating webhook comes first, and cannot be reached.
    assert!(err.to_string().contains("mutate.kubepim.io"), "{err}");

    // Upgrade with the same values: the self-signed certificate stays.
    helm_on(env, &["upgrade"], &values).await;
    let again = secrets.get("kube-pim-webhook-tls").await.unwrap();
    assert_eq!(
        again.data, secret.data,
        "an upgrade must not replace the certificate"
    );
    let webhooks_again = live(
        &admin,
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        config::NAME,
    )
    .await;
    assert_eq!(
        webhooks_again["webhooks"][0]["clientConfig"]["caBundle"],
        webhooks["webhooks"][0]["clientConfig"]["caBundle"]
    );

    // Upgrade to cert-manager, bind limited to named roles, a pod-bound token required.
    let limited = json!({"serviceMonitor": {"enabled": true},
        "rbac": {"bindClusterRoles": ["admin", "view"]},
        "operator": {"requirePodBoundToken": true},
        "webhook": {"tls": {"mode": "certManager"}}});
    helm_on(env, &["upgrade"], &limited).await;
    let limited_case = Case {
        ns: NS,
        values: limited.clone(),
        pod_bound: true,
        break_glass: None,
        bind: Some(vec!["admin".into(), "view".into()]),
        cert_manager: true,
    };
    assert_live_matches(&admin, &limited_case).await;
    let webhooks = live(
        &admin,
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        config::NAME,
    )
    .await;
    assert_eq!(
        webhooks["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NS}/kube-pim-webhook")
    );
    assert!(
        webhooks["webhooks"][0]["clientConfig"]["caBundle"].is_null(),
        "the chart's caBundle is left to cert-manager's cainjector"
    );
    live(
        &admin,
        "cert-manager.io/v1",
        "Issuer",
        "kube-pim-selfsigned",
    )
    .await;
    eventually!(
        Duration::from_secs(30),
        !allowed(
            &admin,
            &operator,
            "bind",
            "rbac.authorization.k8s.io/clusterroles",
            "cluster-admin",
            ""
        )
        .await,
        "bind was never limited to the named roles"
    );
    assert!(
        allowed(
            &admin,
            &operator,
            "bind",
            "rbac.authorization.k8s.io/clusterroles",
            "admin",
            ""
        )
        .await
    );

    // Uninstall: everything of the release goes, the CRDs stay (Helm never deletes crds/).
    helm_on(env, &["uninstall", RELEASE], &json!({})).await;
    eventually!(
        Duration::from_secs(60),
        release_objects(&admin, &manifest)
            .await
            .iter()
            .all(|(_, o)| o.is_none()),
        "objects of the release left after helm uninstall"
    );
    for crd in crdgen::all() {
        let name = crd.metadata.name.clone().unwrap();
        assert!(
            crds.get_opt(&name).await.unwrap().is_some(),
            "{name} was deleted"
        );
    }
    // No guard of the release is left behind to refuse bindings.
    eventually!(
        Duration::from_secs(30),
        rbs.create(&dry, &forged).await.is_ok(),
        "the release's policies still refuse bindings after helm uninstall"
    );
}

/// The serving certificate names the webhook Service and is signed by `ca_pem`'s subject.
fn assert_serving_cert(cert_pem: &str, ca_pem: &str) {
    use x509_cert::{
        der::{Decode, DecodePem},
        ext::pkix::{SubjectAltName, name::GeneralName},
    };
    let cert = x509_cert::Certificate::from_pem(cert_pem.as_bytes()).unwrap();
    let ca = x509_cert::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    assert_eq!(
        cert.tbs_certificate().issuer(),
        ca.tbs_certificate().subject(),
        "the serving certificate is not issued by the bundled CA"
    );
    let san = cert
        .tbs_certificate()
        .extensions()
        .unwrap()
        .iter()
        .find(|e| e.extn_id == x509_cert::der::oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME)
        .expect("a subjectAltName");
    let san = SubjectAltName::from_der(san.extn_value.as_bytes()).unwrap();
    let names: Vec<String> = san
        .0
        .iter()
        .filter_map(|n| match n {
            GeneralName::DnsName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        names.contains(&format!("kube-pim-webhook.{NS}.svc")),
        "{names:?}"
    );
}
