//! Smoke tests against a real kube-apiserver with kube-pim's CRDs and nothing else (no
//! operator, no webhook): what the apiserver enforces on its own. The CRDs install and are
//! served with their names, columns and selectable fields; valid objects are accepted and
//! defaulted; invalid ones are refused by the schema and CEL with messages that say what to
//! fix; the ActivationRequest spec is immutable except `deactivate` false -> true; user
//! identities and RBAC are real.

mod common;

use common::{admin, can, env, namespace, refusal, suffix, user};
use k8s_openapi::{
    api::{
        authentication::v1::SelfSubjectReview,
        core::v1::Secret,
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use kube_pim::api::{ActivationRequest, EligibleAssignment, RoleSetting};
use serde_json::{Value, json};

fn resource<K: kube::Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// Creates an object from raw JSON (so invalid values reach the apiserver unchanged).
async fn create_raw<K: kube::Resource<DynamicType = ()>>(
    client: &Client,
    ns: Option<&str>,
    body: Value,
) -> Result<DynamicObject, kube::Error> {
    let ar = resource::<K>();
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let mut obj: DynamicObject = serde_json::from_value(body).unwrap();
    obj.types = Some(kube::api::TypeMeta {
        api_version: ar.api_version.clone(),
        kind: ar.kind.clone(),
    });
    api.create(&PostParams::default(), &obj).await
}

fn rset(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn crds_are_established_with_names_and_categories() {
    let client = admin().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (name, short) in [
        ("rolesettings.kubepim.io", "rset"),
        ("eligibleassignments.kubepim.io", "elig"),
        ("activationrequests.kubepim.io", "ar"),
    ] {
        let crd = crds.get(name).await.unwrap();
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is not established");
        let names = crd.spec.names;
        assert_eq!(names.short_names.unwrap(), [short]);
        assert_eq!(names.categories.unwrap(), ["pim"]);
    }
    // Discovery serves them under the category, as `kubectl get pim` needs.
    let discovery = kube::Discovery::new(client).run().await.unwrap();
    let group = discovery
        .get("kubepim.io")
        .expect("kubepim.io is discoverable");
    let kinds: Vec<String> = group
        .recommended_resources()
        .into_iter()
        .map(|(r, _)| r.kind)
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
}

#[tokio::test]
async fn valid_objects_are_accepted_and_defaulted_from_the_schema() {
    let client = admin().await;
    let ns = namespace("valid").await;
    let name = format!("rs-{}", suffix());
    let rs: RoleSetting = serde_json::from_value(json!({
        "apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting",
        "metadata": {"name": name},
        "spec": {"roleRefs": [{"name": "admin"}], "approval": {"required": true, "approvers": [{"kind": "User", "name": "bob"}]}}
    }))
    .unwrap();
    // Send only what the user wrote: the apiserver fills the defaults.
    let created = Api::<RoleSetting>::all(client.clone())
        .create(&PostParams::default(), &rs)
        .await
        .unwrap();
    let s = &created.spec;
    assert_eq!(s.activation.max_duration.as_str(), "1h");
    assert_eq!(s.activation.max_schedule_ahead.as_str(), "24h");
    assert!(s.activation.require_justification);
    assert_eq!(s.approval.min_approvals, 1);
    assert_eq!(s.approval.timeout.as_str(), "24h");
    assert_eq!(s.scopes, [kube_pim::api::Scope::Namespace]);
    assert!(s.assignment.allow_permanent);
    assert_eq!(s.standing_access, kube_pim::api::StandingAccess::Audit);

    let ea = create_raw::<EligibleAssignment>(
        &client,
        Some(&ns),
        json!({"metadata": {"name": "alice"}, "spec": {
            "roleSetting": name, "subject": {"kind": "User", "name": "alice"},
            "startTime": "2026-12-01T00:00:00Z", "endTime": "2027-03-01T00:00:00Z"}}),
    )
    .await
    .unwrap();
    assert_eq!(ea.data["spec"]["scope"], "Namespace");
    assert_eq!(ea.data["spec"]["type"], "Eligible");

    let ar = create_raw::<ActivationRequest>(
        &client,
        Some(&ns),
        json!({"metadata": {"generateName": "alice-"}, "spec": {
            "roleSetting": name, "duration": "30s", "justification": "smoke",
            "requester": {"username": "alice"}}}),
    )
    .await
    .unwrap();
    assert_eq!(ar.data["spec"]["deactivate"], false);
    assert_eq!(ar.data["spec"]["scope"], "Namespace");
    // The typed client reads it back.
    let typed = Api::<ActivationRequest>::namespaced(client, &ns)
        .get(&ar.name_any())
        .await
        .unwrap();
    assert_eq!(
        typed.spec.duration.unwrap().as_delta(),
        chrono::TimeDelta::seconds(30)
    );
}

#[tokio::test]
async fn invalid_role_settings_are_refused_with_the_fix() {
    let client = admin().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"roleRefs": []}), "should have at least 1 items"),
        (
            json!({"roleRefs": [{"name": "admin"}, {"name": "admin"}]}),
            "each ClusterRole may be listed once",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "activation": {"maxDuration": "1h", "defaultDuration": "2h"}}),
            "defaultDuration must not exceed maxDuration",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "activation": {"maxDuration": "1d"}}),
            "should match",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "activation": {"maxDuration": "0s"}}),
            "must be a positive duration",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "activation": {"maxDuration": "-1h"}}),
            "should match",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "activation": {"maxDuration": "2h", "maxContinuous": "1h"}}),
            "maxContinuous must be at least maxDuration",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "approval": {"required": true}}),
            "no approvers are listed: add approvers",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "approval": {"minApprovals": 0}}),
            "greater than or equal to 1",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "approval": {"required": true, "approvers": [{"kind": "Group", "name": "system:authenticated"}]}}),
            "system:* groups",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "approval": {"required": true, "approvers": [{"kind": "ServiceAccount", "name": "bot", "namespace": "ci"}]}}),
            "needs allowServiceAccountApprovers: true",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "approval": {"allowServiceAccountApprovers": true, "required": true, "approvers": [{"kind": "ServiceAccount", "name": "bot"}]}}),
            "a ServiceAccount needs its namespace",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "approval": {"required": true, "approvers": [{"kind": "User", "name": "bob", "namespace": "x"}]}}),
            "namespace is only for kind ServiceAccount",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "scopes": ["Everywhere"]}),
            "Unsupported value: \"Everywhere\"",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "standingAccess": "Ignore"}),
            "Unsupported value: \"Ignore\"",
        ),
        (
            json!({"roleRefs": [{"name": "admin"}], "notifications": {"webhooks": [{"url": "ftp://example.com/x"}]}}),
            "url must be an absolute https:// URL",
        ),
    ];
    for (spec, expected) in cases {
        let name = format!("bad-{}", suffix());
        let (code, msg) =
            refusal(create_raw::<RoleSetting>(&client, None, rset(&name, spec.clone())).await);
        assert_eq!(code, 422, "{spec}: {msg}");
        assert!(
            msg.contains(expected),
            "{spec}: expected {expected:?} in {msg:?}"
        );
    }
}

#[tokio::test]
async fn a_null_optional_field_is_pruned_not_stored() {
    let client = admin().await;
    let name = format!("null-{}", suffix());
    let obj = create_raw::<RoleSetting>(
        &client,
        None,
        rset(&name, json!({"roleRefs": [{"name": "view"}], "activation": {"defaultDuration": null, "maxDuration": "30m"}})),
    )
    .await
    .unwrap();
    assert!(
        obj.data["spec"]["activation"]
            .get("defaultDuration")
            .is_none(),
        "{}",
        obj.data
    );
}

#[tokio::test]
async fn invalid_assignments_are_refused_with_the_fix() {
    let client = admin().await;
    let ns = namespace("badelig").await;
    let base = |subject: Value, extra: Value| {
        let mut spec = json!({"roleSetting": "x", "subject": subject});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"metadata": {"name": format!("e-{}", suffix())}, "spec": spec})
    };
    let cases = vec![
        (
            base(
                json!({"kind": "User", "name": "alice"}),
                json!({"startTime": "2027-01-01T00:00:00Z", "endTime": "2026-12-01T00:00:00Z"}),
            ),
            "endTime must be after startTime",
        ),
        (
            base(json!({"kind": "ServiceAccount", "name": "ci"}), json!({})),
            "a ServiceAccount needs its namespace",
        ),
        (
            base(
                json!({"kind": "Group", "name": "system:masters"}),
                json!({}),
            ),
            "system:* groups",
        ),
        (
            base(
                json!({"kind": "User", "name": "system:serviceaccount:ci:deployer"}),
                json!({}),
            ),
            "write a ServiceAccount as kind ServiceAccount",
        ),
        (
            base(json!({"kind": "Robot", "name": "r2"}), json!({})),
            "Unsupported value: \"Robot\"",
        ),
        (
            base(
                json!({"kind": "User", "name": "alice"}),
                json!({"type": "Permanent"}),
            ),
            "Unsupported value: \"Permanent\"",
        ),
        (
            base(
                json!({"kind": "User", "name": "alice"}),
                json!({"endTime": "next tuesday"}),
            ),
            "endTime",
        ),
    ];
    for (body, expected) in cases {
        let (code, msg) =
            refusal(create_raw::<EligibleAssignment>(&client, Some(&ns), body.clone()).await);
        assert_eq!(code, 422, "{body}: {msg}");
        assert!(
            msg.contains(expected),
            "{body}: expected {expected:?} in {msg:?}"
        );
    }
}

#[tokio::test]
async fn invalid_requests_are_refused_with_the_fix() {
    let client = admin().await;
    let ns = namespace("badar").await;
    let long = "a".repeat(64);
    let cases = vec![
        (
            json!({"metadata": {"name": long}, "spec": {"roleSetting": "x", "requester": {"username": "a"}}}),
            "at most 63 characters",
        ),
        (
            json!({"metadata": {"name": "no-requester"}, "spec": {"roleSetting": "x"}}),
            "spec.requester: Required value",
        ),
        (
            json!({"metadata": {"name": "neg"}, "spec": {"roleSetting": "x", "duration": "-5m", "requester": {"username": "a"}}}),
            "spec.duration",
        ),
        (
            json!({"metadata": {"name": "scope"}, "spec": {"roleSetting": "x", "scope": "Galaxy", "requester": {"username": "a"}}}),
            "Unsupported value: \"Galaxy\"",
        ),
    ];
    for (body, expected) in cases {
        let (code, msg) =
            refusal(create_raw::<ActivationRequest>(&client, Some(&ns), body.clone()).await);
        assert_eq!(code, 422, "{body}: {msg}");
        assert!(
            msg.contains(expected),
            "{body}: expected {expected:?} in {msg:?}"
        );
    }
}

/// The spec is immutable except deactivate false -> true, and removing a field (or removing and
/// re-adding it with another value) is no way around that.
#[tokio::test]
async fn activation_request_spec_is_immutable_except_deactivate() {
    let client = admin().await;
    let ns = namespace("immutable").await;
    let obj = create_raw::<ActivationRequest>(
        &client,
        Some(&ns),
        json!({"metadata": {"name": "req"}, "spec": {
            "roleSetting": "x", "duration": "1h", "justification": "why", "ticket": "INC-1",
            "requester": {"username": "alice", "groups": ["team"]}}}),
    )
    .await
    .unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &resource::<ActivationRequest>());
    let name = obj.name_any();
    let pp = PatchParams::default();
    let json_patch = |v: Value| Patch::<()>::Json(serde_json::from_value(v).unwrap());
    let refused = [
        json_patch(json!([{"op": "replace", "path": "/spec/duration", "value": "2h"}])),
        json_patch(json!([{"op": "remove", "path": "/spec/ticket"}])),
        json_patch(
            json!([{"op": "remove", "path": "/spec/ticket"}, {"op": "add", "path": "/spec/ticket", "value": "INC-2"}]),
        ),
        json_patch(json!([{"op": "add", "path": "/spec/extends", "value": "other"}])),
        json_patch(
            json!([{"op": "replace", "path": "/spec/requester/username", "value": "mallory"}]),
        ),
        json_patch(
            json!([{"op": "add", "path": "/spec/requester/groups/-", "value": "sre-leads"}]),
        ),
        json_patch(json!([{"op": "replace", "path": "/spec/scope", "value": "Cluster"}])),
    ];
    for patch in refused {
        let (code, msg) = refusal(api.patch(&name, &pp, &patch).await);
        assert_eq!(code, 422, "{msg}");
        assert!(msg.contains("spec is immutable except deactivate"), "{msg}");
    }
    // The spec is unchanged.
    let now = api.get(&name).await.unwrap();
    assert_eq!(now.data["spec"]["duration"], "1h");
    assert_eq!(now.data["spec"]["ticket"], "INC-1");
    assert_eq!(now.data["spec"]["requester"]["username"], "alice");

    // false -> true is the one change allowed, and it is one-way.
    let set =
        |v: bool| json_patch(json!([{"op": "replace", "path": "/spec/deactivate", "value": v}]));
    api.patch(&name, &pp, &set(true))
        .await
        .expect("deactivate false -> true is allowed");
    let (code, msg) = refusal(api.patch(&name, &pp, &set(false)).await);
    assert_eq!(code, 422);
    assert!(msg.contains("spec is immutable except deactivate"), "{msg}");
}

#[tokio::test]
async fn status_history_and_approvals_are_append_only_and_status_stays() {
    let client = admin().await;
    let ns = namespace("status").await;
    create_raw::<ActivationRequest>(
        &client,
        Some(&ns),
        json!({"metadata": {"name": "req"}, "spec": {"roleSetting": "x", "requester": {"username": "alice"}}}),
    )
    .await
    .unwrap();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &resource::<ActivationRequest>());
    let pp = PatchParams::default();
    let entry = |seq: i64, action: &str| json!({"seq": seq, "time": "2026-11-23T10:00:00Z", "actor": "alice", "action": action});
    let approval = |who: &str| json!({"approver": {"username": who}, "decision": "Approved", "time": "2026-11-23T10:00:00Z"});
    let merge = |v: Value| Patch::Merge(v);
    api.patch_status("req", &pp, &merge(json!({"status": {"phase": "Pending", "approvals": [approval("bob")], "history": [entry(1, "Requested")]}})))
        .await
        .unwrap();
    // Appending is fine.
    api.patch_status("req", &pp, &merge(json!({"status": {"approvals": [approval("bob"), approval("carol")], "history": [entry(1, "Requested"), entry(2, "Approved")]}})))
        .await
        .unwrap();
    // Rewriting or dropping entries is not.
    let (_, msg) = refusal(
        api.patch_status(
            "req",
            &pp,
            &merge(json!({"status": {"history": [entry(2, "Approved")]}})),
        )
        .await,
    );
    assert!(msg.contains("history is append-only"), "{msg}");
    let (_, msg) = refusal(
        api.patch_status(
            "req",
            &pp,
            &merge(json!({"status": {"approvals": [approval("mallory"), approval("carol")]}})),
        )
        .await,
    );
    assert!(msg.contains("approvals are append-only"), "{msg}");
    let (_, msg) = refusal(
        api.patch_status("req", &pp, &merge(json!({"status": {"approvals": []}})))
            .await,
    );
    assert!(msg.contains("approvals are append-only"), "{msg}");
    let remove = Patch::<()>::Json(
        serde_json::from_value(json!([{"op": "remove", "path": "/status"}])).unwrap(),
    );
    let (_, msg) = refusal(api.patch_status("req", &pp, &remove).await);
    assert!(msg.contains("status cannot be removed"), "{msg}");
    let now = api.get_status("req").await.unwrap();
    assert_eq!(now.data["status"]["history"].as_array().unwrap().len(), 2);
    assert_eq!(
        now.data["status"]["approvals"][0]["approver"]["username"],
        "bob"
    );
}

#[tokio::test]
async fn selectable_fields_filter_requests_and_assignments() {
    let client = admin().await;
    let ns = namespace("select").await;
    for (name, who, rs) in [
        ("a1", "alice", "admin-rs"),
        ("b1", "bob", "admin-rs"),
        ("a2", "alice", "view-rs"),
    ] {
        create_raw::<ActivationRequest>(
            &client,
            Some(&ns),
            json!({"metadata": {"name": name}, "spec": {"roleSetting": rs, "requester": {"username": who}}}),
        )
        .await
        .unwrap();
        create_raw::<EligibleAssignment>(
            &client,
            Some(&ns),
            json!({"metadata": {"name": name}, "spec": {"roleSetting": rs, "subject": {"kind": "User", "name": who}}}),
        )
        .await
        .unwrap();
    }
    let ars: Api<ActivationRequest> = Api::namespaced(client.clone(), &ns);
    let names = |l: Vec<String>| {
        let mut l = l;
        l.sort();
        l
    };
    let got = ars
        .list(&ListParams::default().fields("spec.requester.username=alice"))
        .await
        .unwrap();
    assert_eq!(
        names(got.items.iter().map(|o| o.name_any()).collect()),
        ["a1", "a2"]
    );
    let got = ars
        .list(
            &ListParams::default().fields("spec.requester.username=alice,spec.roleSetting=view-rs"),
        )
        .await
        .unwrap();
    assert_eq!(
        names(got.items.iter().map(|o| o.name_any()).collect()),
        ["a2"]
    );
    let eas: Api<EligibleAssignment> = Api::namespaced(client, &ns);
    let got = eas
        .list(&ListParams::default().fields("spec.subject.name=bob"))
        .await
        .unwrap();
    assert_eq!(
        names(got.items.iter().map(|o| o.name_any()).collect()),
        ["b1"]
    );
    let got = eas
        .list(&ListParams::default().fields("spec.roleSetting=admin-rs"))
        .await
        .unwrap();
    assert_eq!(got.items.len(), 2);
}

/// Users are who their certificates say, and RBAC decides what they may do: a user with no
/// grants is forbidden; granted a Role, the same user is allowed.
#[tokio::test]
async fn user_identities_and_rbac_are_real() {
    let ns = namespace("rbac").await;
    let who = format!("carol-{}", suffix());
    let carol = user(&who, &["team-payments", "oncall"]).await;
    let secrets: Api<Secret> = Api::namespaced(carol.clone(), &ns);

    // Who the apiserver thinks carol is.
    let me = Api::<SelfSubjectReview>::all(carol.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let info = me.status.unwrap().user_info.unwrap();
    assert_eq!(info.username.as_deref(), Some(who.as_str()));
    let groups = info.groups.unwrap();
    for g in ["team-payments", "oncall", "system:authenticated"] {
        assert!(groups.contains(&g.to_string()), "{groups:?}");
    }

    let (code, _) = refusal(secrets.list(&ListParams::default()).await);
    assert_eq!(code, 403);
    assert!(!can(&carol, "list", "secrets", &ns).await);

    let admin = admin().await;
    let role = Role {
        metadata: ObjectMeta {
            name: Some("secret-reader".into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["list".into(), "get".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("carol-reads".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "secret-reader".into(),
        },
        // Bound through a group carol's certificate carries.
        subjects: Some(vec![Subject {
            kind: "Group".into(),
            name: "oncall".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // RBAC caches refresh on watch events: allow it a moment, then prove access with a real request.
    let mut allowed = false;
    for _ in 0..50 {
        if secrets.list(&ListParams::default()).await.is_ok() {
            allowed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(allowed, "carol still forbidden after the RoleBinding");
    assert!(can(&carol, "get", "secrets", &ns).await);
    assert!(!can(&carol, "delete", "secrets", &ns).await);
    // Another user outside the group stays forbidden.
    let dave = user(&format!("dave-{}", suffix()), &["team-payments"]).await;
    let (code, _) = refusal(
        Api::<Secret>::namespaced(dave, &ns)
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(code, 403);
}

/// Runs the kubectl built with the control plane as the admin: (success, stdout + stderr).
fn kubectl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env().kubectl())
        .arg("--kubeconfig")
        .arg(env().dir().join("admin.kubeconfig"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_docs() {
    let _ = env();
    // kubectl wraps at 80 columns: compare with whitespace folded.
    let explain = |what: &str| {
        let (ok, out) = kubectl(&["explain", what]);
        (ok, out.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let (ok, out) = explain("ar.spec");
    assert!(ok, "{out}");
    assert!(
        out.contains("Written by kube-pim's admission webhook from the authenticated user"),
        "{out}"
    );
    assert!(out.contains("deactivate"), "{out}");
    let (ok, out) = explain("rolesetting.spec.activation.maxDuration");
    assert!(ok, "{out}");
    assert!(
        out.contains("longer requests are refused at admission"),
        "{out}"
    );
    let (ok, out) = explain("elig.spec.subject");
    assert!(ok, "{out}");
    assert!(out.contains("User, Group or ServiceAccount"), "{out}");
}

#[tokio::test]
async fn kubectl_shows_the_printer_columns() {
    let client = admin().await;
    let ns = namespace("columns").await;
    create_raw::<ActivationRequest>(
        &client,
        Some(&ns),
        json!({"metadata": {"name": "req"}, "spec": {"roleSetting": "ns-admin", "requester": {"username": "alice"}}}),
    )
    .await
    .unwrap();
    let (ok, out) = kubectl(&["get", "ar", "-n", &ns]);
    assert!(ok, "{out}");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REQUESTER",
            "ROLESETTING",
            "SCOPE",
            "PHASE",
            "EXPIRES",
            "AGE"
        ]
    );
    assert!(out.contains("alice") && out.contains("ns-admin"), "{out}");
    let (ok, out) = kubectl(&["get", "pim", "-n", &ns]);
    assert!(ok, "{out}");
    assert!(out.contains("activationrequest.kubepim.io/req"), "{out}");
    create_raw::<EligibleAssignment>(
        &client,
        Some(&ns),
        json!({"metadata": {"name": "alice"}, "spec": {"roleSetting": "ns-admin", "subject": {"kind": "Group", "name": "oncall"}, "endTime": "2027-03-01T00:00:00Z"}}),
    )
    .await
    .unwrap();
    let (ok, out) = kubectl(&["get", "elig", "-n", &ns]);
    assert!(ok, "{out}");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "SUBJECT",
            "ROLESETTING",
            "SCOPE",
            "TYPE",
            "PHASE",
            "END",
            "AGE"
        ]
    );
    // A future end is shown as a time, not as kubectl's "<invalid>" age.
    assert!(out.contains("2027-03-01T00:00:00Z"), "{out}");
    let name = format!("cols-{}", suffix());
    create_raw::<RoleSetting>(&client, None, rset(&name, json!({"roleRefs": [{"name": "admin"}, {"name": "view"}], "activation": {"maxDuration": "2h"}})))
        .await
        .unwrap();
    let (ok, out) = kubectl(&["get", "rset", &name]);
    assert!(ok, "{out}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "ROLES", "APPROVAL", "MAXDURATION", "AGE"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    // Server-side printer columns show the first match of `[*]`: the first role.
    assert_eq!(&row[..4], [name.as_str(), "admin", "false", "2h"]);
}
