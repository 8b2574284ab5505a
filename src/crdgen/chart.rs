//! The Helm chart's generated files (under `charts/kube-pim`): its CRDs, and the templates of
//! every object whose rules live in Rust: the operator's, the reaper's and the personas' RBAC
//! (`src/rbac.rs`), the ValidatingAdmissionPolicies (`src/policies.rs`) and the webhook
//! configurations (`src/webhook/config.rs`). `make crds` writes them next to `crds/`; a unit
//! test fails when the committed files drift, and `tests/chart.rs` renders the chart with Helm
//! under several settings and compares these objects with what the Rust functions build for
//! the same settings.
//!
//! Why generated rather than hand-written: the policies are long CEL expressions derived from
//! the CRD field lists; a hand-copied template would be wrong the day a field is added, and
//! fixing it would be manual. Generated, `make crds` updates the chart with the code.
//!
//! How: the Rust functions are called with sentinel values (`@@NAMESPACE@@`, ...) wherever the
//! chart has a setting. The result is written as block YAML in which
//! - every string is JSON-quoted (valid YAML, so CEL needs no YAML escaping);
//! - a string holding a sentinel is built by Helm (`"..." | replace "\"@@X@@\"" (v | toJson)`)
//!   and written with `toJson`, so a value with quotes cannot break out of a CEL literal;
//! - a list item or map entry that exists only for some settings (the break-glass condition,
//!   `resourceNames` of `bind`, the CA bundle) is wrapped in `{{- if }}`;
//! - `metadata.labels` also gets the chart's release labels.
//!
//! Anything the writer cannot express panics at generation (a sentinel outside a CEL literal,
//! a conditional sentinel outside a conditional item), so `make crds` and the drift test fail
//! loudly instead of writing a wrong template.

use k8s_openapi::api::admissionregistration::v1::{ServiceReference, WebhookClientConfig};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    policies::{self, Operator},
    rbac,
    webhook::config,
};

/// The chart's directory, relative to the repository root.
pub const DIR: &str = "charts/kube-pim";
/// The ServiceAccount the operator runs as; its user name is derived from it and the release
/// namespace (`system:serviceaccount:NS:kube-pim`).
pub const OPERATOR_SERVICE_ACCOUNT: &str = "kube-pim";
/// The Service in front of the webhook.
pub const WEBHOOK_SERVICE: &str = "kube-pim-webhook";
/// The Service's port (the container listens on `webhook.port`).
pub const WEBHOOK_SERVICE_PORT: i32 = 443;
/// The cert-manager Certificate (certManager mode) whose CA the cainjector copies.
pub const WEBHOOK_CERTIFICATE: &str = "kube-pim-webhook";

/// A placeholder passed to the Rust functions where the chart has a setting.
struct Sentinel {
    /// What the Rust functions receive.
    token: &'static str,
    /// The Helm expression (a Go template pipeline) for the value.
    expr: &'static str,
    /// The Helm condition under which the item holding it exists; `None`: always.
    when: Option<&'static str>,
}

const USERNAME: Sentinel = Sentinel {
    token: "@@OPERATOR_USERNAME@@",
    expr: r#"include "kube-pim.operatorUsername" ."#,
    when: None,
};
const NAMESPACE: Sentinel = Sentinel {
    token: "@@NAMESPACE@@",
    expr: ".Release.Namespace",
    when: None,
};
/// The whole "everyone but the operator" expression: it differs with `requirePodBoundToken`,
/// so it is a generated named template ([`helpers`]).
const NOT_OPERATOR: Sentinel = Sentinel {
    token: "@@NOT_OPERATOR@@",
    expr: r#"include "kube-pim.notOperator" ."#,
    when: None,
};
const BREAK_GLASS: Sentinel = Sentinel {
    token: "@@BREAK_GLASS_GROUP@@",
    expr: ".Values.breakGlassGroup",
    when: Some(".Values.breakGlassGroup"),
};
/// A list sentinel: `[token]` stands for the whole list.
const BIND_ROLES: Sentinel = Sentinel {
    token: "@@BIND_CLUSTER_ROLES@@",
    expr: ".Values.rbac.bindClusterRoles",
    when: Some(".Values.rbac.bindClusterRoles"),
};
const CA_BUNDLE: Sentinel = Sentinel {
    token: "@@CA_BUNDLE@@",
    expr: r#"include "kube-pim.caBundle" ."#,
    when: Some(r#"eq .Values.webhook.tls.mode "selfSigned""#),
};
const CA_FROM: Sentinel = Sentinel {
    token: "@@CERT_MANAGER_CA_FROM@@",
    expr: r#"printf "%s/kube-pim-webhook" .Release.Namespace"#,
    when: Some(r#"eq .Values.webhook.tls.mode "certManager""#),
};
const SENTINELS: [&Sentinel; 7] = [
    &USERNAME,
    &NAMESPACE,
    &NOT_OPERATOR,
    &BREAK_GLASS,
    &BIND_ROLES,
    &CA_BUNDLE,
    &CA_FROM,
];
/// A key added to every `metadata.labels`: the chart's release labels go there.
const RELEASE_LABELS: &str = "@@RELEASE_LABELS@@";

/// The operator as the generated templates see it (the user name a sentinel).
fn operator() -> Operator {
    Operator {
        username: USERNAME.token.into(),
        require_pod_bound_token: false,
    }
}

/// Every generated file: (path relative to [`DIR`], contents).
pub fn files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = super::all()
        .iter()
        .map(|crd| {
            (
                format!("crds/{}", super::file_name(crd)),
                super::to_yaml(crd),
            )
        })
        .collect();
    files.push(("templates/_generated.tpl".into(), helpers()));
    files.push(("templates/generated-rbac.yaml".into(), rbac_yaml()));
    files.push(("templates/generated-policies.yaml".into(), policies_yaml()));
    files.push(("templates/generated-webhooks.yaml".into(), webhooks_yaml()));
    files
}

fn header(source: &str) -> String {
    format!(
        "# Generated by `make crds` from {source}; do not edit (a test fails when this file drifts).\n"
    )
}

/// The named templates whose text depends on settings in more than a value.
fn helpers() -> String {
    let expr = |pod_bound: bool| {
        let op = Operator {
            require_pod_bound_token: pod_bound,
            ..operator()
        };
        pipeline(&op.not_operator_expression(), &[]).expect("the expression names the operator")
    };
    format!(
        "{{{{/* Generated by `make crds` from src/policies.rs; do not edit (a test fails when this file drifts). */}}}}\n\
         {{{{/* The CEL condition that is true for everyone but the operator (Operator::not_operator_expression). */}}}}\n\
         {{{{- define \"kube-pim.notOperator\" -}}}}\n\
         {{{{- if .Values.operator.requirePodBoundToken -}}}}\n\
         {{{{- {} -}}}}\n\
         {{{{- else -}}}}\n\
         {{{{- {} -}}}}\n\
         {{{{- end -}}}}\n\
         {{{{- end -}}}}\n",
        expr(true),
        expr(false)
    )
}

fn rbac_yaml() -> String {
    let mut out = header("src/rbac.rs");
    let mut roles = vec![object(&rbac::operator_cluster_role(Some(&[BIND_ROLES
        .token
        .to_string()])))];
    roles.extend(rbac::persona_cluster_roles().iter().map(object));
    roles.push(object(&rbac::policy_reader_cluster_role()));
    roles.push(object(&rbac::sweeper_cluster_role()));
    roles.push(object(&rbac::operator_namespace_role(NAMESPACE.token)));
    for r in roles {
        out.push_str(&document(r));
    }
    out
}

fn policies_yaml() -> String {
    let mut out = header("src/policies.rs");
    let o = policies::Options {
        operator: operator(),
        namespace: NAMESPACE.token.into(),
        break_glass_group: Some(BREAK_GLASS.token.into()),
    };
    for (p, b) in policies::all(&o) {
        out.push_str(&document(object(&p)));
        out.push_str(&document(object(&b)));
    }
    out
}

/// The client configuration the chart's webhook configurations use: the Service, and (only
/// in selfSigned mode; cert-manager's cainjector fills it otherwise) the CA bundle.
pub fn service_client(namespace: &str, path: &str) -> WebhookClientConfig {
    WebhookClientConfig {
        service: Some(ServiceReference {
            name: WEBHOOK_SERVICE.into(),
            namespace: namespace.into(),
            path: Some(path.into()),
            port: Some(WEBHOOK_SERVICE_PORT),
        }),
        ..Default::default()
    }
}

fn webhooks_yaml() -> String {
    let mut out = header("src/webhook/config.rs");
    let op = operator();
    let m = config::mutating(service_client(NAMESPACE.token, "/mutate"), &op);
    let v = config::validating(service_client(NAMESPACE.token, "/validate"), &op);
    for mut doc in [object(&m), object(&v)] {
        doc["metadata"]["annotations"] = serde_json::json!({
            "cert-manager.io/inject-ca-from": CA_FROM.token,
        });
        for w in doc["webhooks"].as_array_mut().expect("webhooks") {
            w["clientConfig"]["caBundle"] = Value::String(CA_BUNDLE.token.into());
        }
        out.push_str(&document(doc));
    }
    out
}

/// `k` as JSON, the operator's expression replaced by [`NOT_OPERATOR`], and the release
/// labels' key added to its labels.
fn object<K: Serialize>(k: &K) -> Value {
    let mut v = serde_json::to_value(k).expect("Kubernetes objects serialize");
    let not_operator = operator().not_operator_expression();
    replace_strings(&mut v, &not_operator, NOT_OPERATOR.token);
    let meta = v["metadata"]
        .as_object_mut()
        .expect("objects have metadata");
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    labels
        .as_object_mut()
        .expect("labels are a map")
        .insert(RELEASE_LABELS.into(), Value::Null);
    v
}

fn replace_strings(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s == from => *s = to.into(),
        Value::Array(a) => a.iter_mut().for_each(|x| replace_strings(x, from, to)),
        Value::Object(m) => m.values_mut().for_each(|x| replace_strings(x, from, to)),
        _ => {}
    }
}

/// One YAML document.
fn document(v: Value) -> String {
    let mut out = String::from("---\n");
    emit_map(
        &mut out,
        v.as_object().expect("a document is a map"),
        0,
        &[],
    );
    out
}

/// A Go template string literal (JSON string syntax is valid Go syntax).
fn go_lit(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// The sentinels in `s`.
fn sentinels_in(s: &str) -> Vec<&'static Sentinel> {
    SENTINELS
        .iter()
        .copied()
        .filter(|x| s.contains(x.token))
        .collect()
}

/// A Go template pipeline that yields `s` with its sentinels replaced, or `None` when `s` can
/// be written as it is. Panics when a sentinel is neither the whole string nor a quoted CEL
/// literal, or is conditional and not inside its condition (`active`).
fn pipeline(s: &str, active: &[&str]) -> Option<String> {
    let found = sentinels_in(s);
    for x in &found {
        if let Some(c) = x.when {
            assert!(
                active.contains(&c),
                "{} appears outside a `{{{{- if {c} }}}}` item: {s}",
                x.token
            );
        }
    }
    if let [x] = found[..]
        && s == x.token
    {
        return Some(x.expr.to_string());
    }
    if found.is_empty() && !s.contains("{{") {
        return None;
    }
    let mut p = go_lit(s);
    for x in found {
        let quoted = format!("\"{}\"", x.token);
        assert_eq!(
            s.matches(x.token).count(),
            s.matches(&quoted).count(),
            "{} must be a whole string or a quoted CEL literal: {s}",
            x.token
        );
        p = format!("{p} | replace {} ({} | toJson)", go_lit(&quoted), x.expr);
    }
    Some(p)
}

/// The sentinel a list stands for (`[token]`), if any.
fn list_sentinel(a: &[Value]) -> Option<&'static Sentinel> {
    match a {
        [Value::String(s)] => SENTINELS.iter().copied().find(|x| x.token == s),
        _ => None,
    }
}

/// The condition under which `v` exists, when it consists of conditional sentinels only.
fn condition_of(v: &Value) -> Option<&'static str> {
    match v {
        Value::String(s) => SENTINELS.iter().find(|x| x.token == s).and_then(|x| x.when),
        Value::Array(a) => list_sentinel(a).and_then(|x| x.when),
        Value::Object(m) if !m.is_empty() => {
            let conds: Vec<_> = m.values().map(condition_of).collect();
            match conds[0] {
                Some(c) if conds.iter().all(|x| *x == Some(c)) => Some(c),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Every condition of a conditional sentinel in `v`, except those of map entries that are
/// wrapped on their own ([`condition_of`]).
fn conditions_in(v: &Value, out: &mut Vec<&'static str>) {
    match v {
        Value::Object(m) => m
            .values()
            .filter(|x| condition_of(x).is_none())
            .for_each(|x| conditions_in(x, out)),
        Value::String(s) => {
            for x in sentinels_in(s) {
                if let Some(c) = x.when
                    && !out.contains(&c)
                {
                    out.push(c);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| conditions_in(x, out)),
        _ => {}
    }
}

/// `v` on one line, if it fits there.
fn inline(v: &Value, active: &[&str]) -> Option<String> {
    match v {
        Value::String(s) => Some(match pipeline(s, active) {
            Some(p) => format!("{{{{ {p} | toJson }}}}"),
            None => go_lit(s),
        }),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Array(a) => {
            if let Some(x) = list_sentinel(a) {
                return Some(format!("{{{{ toJson {} }}}}", x.expr));
            }
            let plain = |x: &Value| match x {
                Value::String(s) => sentinels_in(s).is_empty() && !s.contains("{{"),
                Value::Number(_) | Value::Bool(_) => true,
                _ => false,
            };
            a.iter().all(plain).then(|| {
                let items: Vec<String> = a.iter().map(Value::to_string).collect();
                format!("[{}]", items.join(", "))
            })
        }
        Value::Object(m) if m.is_empty() => Some("{}".into()),
        Value::Object(_) => None,
        Value::Null | Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
    }
}

fn key(k: &str) -> String {
    let plain = k
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
        && k.starts_with(|c: char| c.is_ascii_alphabetic());
    if plain { k.to_string() } else { go_lit(k) }
}

fn emit_map(out: &mut String, m: &Map<String, Value>, indent: usize, active: &[&str]) {
    let pad = " ".repeat(indent);
    for (k, v) in m {
        if k == RELEASE_LABELS {
            out.push_str(&format!(
                "{pad}{{{{- include \"kube-pim.releaseLabels\" . | nindent {indent} }}}}\n"
            ));
            continue;
        }
        let cond = condition_of(v).filter(|c| !active.contains(c));
        let mut active = active.to_vec();
        if let Some(c) = cond {
            out.push_str(&format!("{pad}{{{{- if {c} }}}}\n"));
            active.push(c);
        }
        match (inline(v, &active), v) {
            (Some(text), _) => out.push_str(&format!("{pad}{}: {text}\n", key(k))),
            (None, Value::Object(sub)) => {
                out.push_str(&format!("{pad}{}:\n", key(k)));
                emit_map(out, sub, indent + 2, &active);
            }
            (None, Value::Array(items)) => {
                out.push_str(&format!("{pad}{}:\n", key(k)));
                emit_list(out, items, indent + 2, &active);
            }
            (None, _) => unreachable!("scalars are inline"),
        }
        if cond.is_some() {
            out.push_str(&format!("{pad}{{{{- end }}}}\n"));
        }
    }
}

fn emit_list(out: &mut String, items: &[Value], indent: usize, active: &[&str]) {
    let pad = " ".repeat(indent);
    for item in items {
        let mut conds = Vec::new();
        conditions_in(item, &mut conds);
        conds.retain(|c| !active.contains(c));
        assert!(
            conds.len() <= 1,
            "one list item under two conditions: {conds:?}"
        );
        let mut active = active.to_vec();
        if let Some(c) = conds.first() {
            out.push_str(&format!("{pad}{{{{- if {c} }}}}\n"));
            active.push(c);
        }
        match (inline(item, &active), item) {
            (Some(text), _) => out.push_str(&format!("{pad}- {text}\n")),
            (None, Value::Object(m)) => {
                let mut sub = String::new();
                emit_map(&mut sub, m, indent + 2, &active);
                let inner = " ".repeat(indent + 2);
                let rest = sub
                    .strip_prefix(&inner)
                    .filter(|r| !r.starts_with(['{', ' ']))
                    .expect("a list item's first entry is a plain key");
                out.push_str(&format!("{pad}- {rest}"));
            }
            (None, _) => panic!("nested lists are not used by Kubernetes objects here"),
        }
        if !conds.is_empty() {
            out.push_str(&format!("{pad}{{{{- end }}}}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    /// The chart's generated files are never hand-edited: they must equal what the code
    /// produces, and the chart holds no CRD or generated template the code does not produce.
    #[test]
    fn committed_chart_files_match_the_code() {
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
        let mut expected = Vec::new();
        for (path, contents) in files() {
            let committed = std::fs::read_to_string(chart.join(&path))
                .unwrap_or_else(|e| panic!("{DIR}/{path} is missing ({e}): run `make crds`"));
            assert!(
                committed == contents,
                "{DIR}/{path} differs from the Rust code: run `make crds` and commit the result"
            );
            expected.push(path);
        }
        let mut present = Vec::new();
        for sub in ["crds", "templates"] {
            for e in std::fs::read_dir(chart.join(sub)).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                if sub == "crds" || name.starts_with("generated-") || name == "_generated.tpl" {
                    present.push(format!("{sub}/{name}"));
                }
            }
        }
        present.sort();
        expected.sort();
        assert_eq!(
            present, expected,
            "{DIR} holds generated files the code no longer produces: remove them"
        );
    }

    #[test]
    fn strings_with_sentinels_become_helm_pipelines() {
        assert_eq!(pipeline("plain", &[]), None);
        assert_eq!(
            pipeline("@@NAMESPACE@@", &[]).as_deref(),
            Some(".Release.Namespace")
        );
        assert_eq!(
            pipeline("request.namespace == \"@@NAMESPACE@@\"", &[]).as_deref(),
            Some(
                r#""request.namespace == \"@@NAMESPACE@@\"" | replace "\"@@NAMESPACE@@\"" (.Release.Namespace | toJson)"#
            )
        );
        // Template syntax in a string is written through toJson, never run.
        assert!(pipeline("a {{ b }}", &[]).is_some());
    }

    #[test]
    #[should_panic(expected = "quoted CEL literal")]
    fn a_sentinel_outside_a_literal_is_refused() {
        pipeline("ns @@NAMESPACE@@", &[]);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn a_conditional_sentinel_outside_its_condition_is_refused() {
        pipeline("@@BREAK_GLASS_GROUP@@", &[]);
    }

    #[test]
    fn conditional_items_are_wrapped() {
        let doc = document(json!({
            "metadata": {"name": "x", "labels": {RELEASE_LABELS: null, "a": "b"}},
            "conds": [{"name": "one", "expression": "true"},
                      {"name": "glass", "expression": "g == \"@@BREAK_GLASS_GROUP@@\""}],
            "rules": [{"apiGroups": [""], "verbs": ["bind"],
                       "resourceNames": ["@@BIND_CLUSTER_ROLES@@"]}],
        }));
        assert_eq!(
            doc,
            r#"---
conds:
  - expression: "true"
    name: "one"
  {{- if .Values.breakGlassGroup }}
  - expression: {{ "g == \"@@BREAK_GLASS_GROUP@@\"" | replace "\"@@BREAK_GLASS_GROUP@@\"" (.Values.breakGlassGroup | toJson) | toJson }}
    name: "glass"
  {{- end }}
metadata:
  labels:
    {{- include "kube-pim.releaseLabels" . | nindent 4 }}
    a: "b"
  name: "x"
rules:
  - apiGroups: [""]
    {{- if .Values.rbac.bindClusterRoles }}
    resourceNames: {{ toJson .Values.rbac.bindClusterRoles }}
    {{- end }}
    verbs: ["bind"]
"#
        );
    }
}
