//! One test's world, shared by the end-to-end test binaries: a namespace, a RoleSetting, an
//! assignment, and people with unique names acting with their own credentials.

use std::time::Duration;

use super::{admin, namespace, operated, suffix, user};
use k8s_openapi::api::{core::v1::Secret, rbac::v1::RoleBinding};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use kube_pim::api::{ActivationRequest, HistoryAction, RequestPhase};
use serde_json::{Value, json};

pub const WAIT: Duration = Duration::from_secs(60);

/// One test's world: a namespace, a RoleSetting, and people with unique names.
pub struct World {
    pub ns: String,
    pub rs: String,
    pub alice: String,
    pub bob: String,
    pub carol: String,
    pub mallory: String,
    pub leads: String,
}

impl World {
    /// A namespace where `alice` is eligible for a fresh RoleSetting granting `admin` with
    /// `spec` (merged over the defaults), `leads` are approvers, and everyone has the persona
    /// RoleBindings (mallory holds the approver role without being an approver).
    pub async fn new(prefix: &str, spec: Value) -> Self {
        let _ = operated();
        let s = suffix();
        let w = World {
            ns: namespace(prefix).await,
            rs: format!("{prefix}-{s}"),
            alice: format!("alice-{s}"),
            bob: format!("bob-{s}"),
            carol: format!("carol-{s}"),
            mallory: format!("mallory-{s}"),
            leads: format!("leads-{s}"),
        };
        let mut rs_spec = json!({"roleRefs": [{"name": "admin"}], "acknowledgePersistenceRisk": true,
            "activation": {"maxDuration": "1h"}});
        merge(&mut rs_spec, spec);
        apply(
            &admin().await,
            &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting",
            "metadata": {"name": w.rs}, "spec": rs_spec}),
            None,
        )
        .await;
        apply(&admin().await, &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment",
            "metadata": {"name": "alice"}, "spec": {"roleSetting": w.rs, "subject": {"kind": "User", "name": w.alice}}}), Some(&w.ns)).await;
        w.bind("kube-pim-requester", "User", &w.alice).await;
        w.bind("kube-pim-approver", "Group", &w.leads).await;
        w.bind("kube-pim-approver", "User", &w.mallory).await;
        w
    }

    pub async fn bind(&self, role: &str, kind: &str, name: &str) {
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": format!("{role}-{}", name.to_lowercase().replace(':', "-"))},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}]
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(admin().await, &self.ns)
            .create(&PostParams::default(), &rb)
            .await
            .unwrap();
    }

    pub async fn alice(&self) -> Client {
        user(&self.alice, &["team"]).await
    }

    pub async fn approver(&self, name: &str) -> Client {
        user(name, &[&self.leads]).await
    }

    pub fn requests(&self, c: Client) -> Api<ActivationRequest> {
        Api::namespaced(c, &self.ns)
    }

    /// alice asks for the RoleSetting with `spec` merged over a plain justified request.
    pub async fn ask(&self, client: Client, spec: Value) -> Result<ActivationRequest, kube::Error> {
        let mut s = json!({"roleSetting": self.rs, "duration": "10m", "justification": "INC-1 payments down",
            "requester": {"username": "whoever"}});
        merge(&mut s, spec);
        let ar: ActivationRequest = serde_json::from_value(json!({
            "apiVersion": "kubepim.io/v1alpha1", "kind": "ActivationRequest",
            "metadata": {"generateName": "req-"}, "spec": s}))
        .unwrap();
        self.requests(client)
            .create(&PostParams::default(), &ar)
            .await
    }

    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        f: impl Fn(&ActivationRequest) -> bool,
    ) -> ActivationRequest {
        let api = self.requests(admin().await);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let ar = api.get(name).await.unwrap();
            if f(&ar) {
                return ar;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never became {what}: {:?}",
                ar.status
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_phase(&self, name: &str, phase: RequestPhase) -> ActivationRequest {
        self.wait(name, &format!("{phase:?}"), |ar| {
            phase_of(ar) == Some(phase)
        })
        .await
    }

    /// Appends a decision as `client`'s user, exactly as SPEC section 2 shows (test on uid).
    pub async fn decide(
        &self,
        client: Client,
        ar: &ActivationRequest,
        decision: &str,
        reason: Option<&str>,
    ) -> Result<ActivationRequest, kube::Error> {
        let mut value = json!({"decision": decision});
        if let Some(r) = reason {
            value["reason"] = json!(r);
        }
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/uid", "value": ar.uid().unwrap()},
            {"op": "add", "path": "/status/approvals/-", "value": value}
        ]))
        .unwrap();
        self.requests(client)
            .patch_status(
                &ar.name_any(),
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await
    }

    /// Waits until listing Secrets in the namespace as `client` is `allowed` (RBAC caches follow
    /// binding changes within moments), proving access with a real request.
    pub async fn access(&self, client: &Client, allowed: bool) {
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.ns);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if api.list(&ListParams::default()).await.is_ok() == allowed {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "listing Secrets should be allowed={allowed}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub async fn apply(client: &Client, obj: &Value, ns: Option<&str>) {
    let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "kubepim.io",
        "v1alpha1",
        obj["kind"].as_str().unwrap(),
    ));
    let api: Api<kube::api::DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let name = obj["metadata"]["name"].as_str().unwrap();
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(obj))
        .await
        .unwrap();
}

pub fn phase_of(ar: &ActivationRequest) -> Option<RequestPhase> {
    ar.status.as_ref().and_then(|s| s.phase)
}

pub fn actions(ar: &ActivationRequest) -> Vec<HistoryAction> {
    ar.status
        .as_ref()
        .map(|s| s.history.iter().map(|h| h.action).collect())
        .unwrap_or_default()
}

impl World {
    /// A world whose RoleSetting needs `min` approvals from the world's `leads` group.
    pub async fn with_group_approval(prefix: &str, min: i32) -> Self {
        let w = World::new(prefix, json!({})).await;
        w.set_role_setting(json!({"approval": {"required": true, "minApprovals": min,
            "approvers": [{"kind": "Group", "name": w.leads}]}}))
            .await;
        w
    }

    /// Ends request `name` as `client`'s user (`spec.deactivate: true`).
    pub async fn deactivate(&self, client: Client, name: &str) {
        self.requests(client)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"deactivate": true}})),
            )
            .await
            .unwrap();
    }

    /// Waits until the residual-access check of `name` is recorded; its `ResidualAccess`
    /// condition.
    pub async fn residual_access(
        &self,
        name: &str,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        let find = |ar: &ActivationRequest| {
            ar.status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "ResidualAccess")
                .cloned()
        };
        let ended = self
            .wait(name, "checked for residual access", |ar| find(ar).is_some())
            .await;
        find(&ended).unwrap()
    }

    /// Re-applies the world's RoleSetting: `spec` merged over `admin`, acknowledged.
    pub async fn set_role_setting(&self, spec: Value) {
        let mut full = json!({"roleRefs": [{"name": "admin"}], "acknowledgePersistenceRisk": true});
        merge(&mut full, spec);
        apply(
            &admin().await,
            &json!({"apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting",
                "metadata": {"name": self.rs}, "spec": full}),
            None,
        )
        .await;
    }

    /// Waits until `name` has ended and its whole history is on the audit stream: every entry
    /// by its idempotency key (`uid/seq`), `auditedThrough` at the end, the finalizer gone.
    pub async fn audit_intact(&self, name: &str) -> ActivationRequest {
        let ar = self
            .wait(name, "fully audited and released", |ar| {
                ar.status.as_ref().is_some_and(|s| {
                    s.phase.is_some_and(kube_pim::decide::request::is_terminal)
                        && usize::try_from(s.audited_through).ok() == Some(s.history.len())
                }) && ar.finalizers().is_empty()
            })
            .await;
        let log = std::fs::read_to_string(operated().dir().join("audit.log")).unwrap();
        let uid = ar.uid().unwrap();
        for h in &ar.status.as_ref().unwrap().history {
            assert!(
                log.contains(&format!("\"id\":\"{uid}/{}\"", h.seq)),
                "audit line {} of {name} missing",
                h.seq
            );
        }
        // And the stream's hash chain holds over every complete line so far (the operator may
        // be writing the next one; restarted operators continue the same chain).
        let complete = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
        let report = kube_pim::controller::audit::chain::verify([("audit.log", complete)]);
        assert_eq!(report.broken, None, "the audit chain is broken");
        ar
    }

    /// Gives `user` a RoleBinding in the world's namespace to a Role allowing `bind` on the
    /// ClusterRole `role` (nothing else); returns the binding's name.
    pub async fn allow_bind(&self, user: &str, role: &str) -> String {
        let name = format!("bind-{role}-{}", user.to_lowercase());
        let r: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
            "metadata": {"name": name},
            "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                       "verbs": ["bind"], "resourceNames": [role]}]
        }))
        .unwrap();
        Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin().await, &self.ns)
            .create(&PostParams::default(), &r)
            .await
            .unwrap();
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(admin().await, &self.ns)
            .create(&PostParams::default(), &rb)
            .await
            .unwrap();
        name
    }

    /// Creates EligibleAssignment `name` as `client`'s user, for `subject` (a User).
    pub async fn assign(
        &self,
        client: &Client,
        name: &str,
        role_setting: &str,
        subject: &str,
    ) -> Result<kube_pim::api::EligibleAssignment, kube::Error> {
        let ea: kube_pim::api::EligibleAssignment = serde_json::from_value(json!({
            "apiVersion": "kubepim.io/v1alpha1", "kind": "EligibleAssignment",
            "metadata": {"name": name},
            "spec": {"roleSetting": role_setting, "subject": {"kind": "User", "name": subject}}
        }))
        .unwrap();
        Api::namespaced(client.clone(), &self.ns)
            .create(&PostParams::default(), &ea)
            .await
    }

    /// Waits until assignment `name` is in `phase`, with `reason` on its Valid condition when given.
    pub async fn wait_assignment(
        &self,
        name: &str,
        phase: kube_pim::api::AssignmentPhase,
        reason: Option<&str>,
    ) -> kube_pim::api::EligibleAssignment {
        let api: Api<kube_pim::api::EligibleAssignment> = Api::namespaced(admin().await, &self.ns);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let ea = api.get(name).await.unwrap();
            let st = ea.status.clone().unwrap_or_default();
            let why = st
                .conditions
                .iter()
                .find(|c| c.type_ == "Valid")
                .map(|c| c.reason.clone());
            if st.phase == Some(phase) && reason.is_none_or(|r| why.as_deref() == Some(r)) {
                return ea;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "assignment {name} never became {phase:?} ({reason:?}): {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
