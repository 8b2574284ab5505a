//! GitOps: RoleSettings and EligibleAssignments applied the way Argo CD and Flux apply them
//! (`kubectl apply --server-side` with their own field manager), then re-applied after the
//! controllers have written status, produce no conflict and no change. The operator never
//! writes their spec, admission writes no defaults into them, and schema defaults are stable.

#[macro_use]
mod common;

use std::{path::Path, time::Duration};

use common::{admin, operated};
use kube::Api;
use kube_pim::api::{AssignmentPhase, EligibleAssignment, RoleSetting};

const MANAGER: &str = "argocd-controller";

/// Runs the real kubectl as the administrator; (exit code, stdout, stderr).
async fn kubectl(args: &[&str]) -> (i32, String, String) {
    let env = operated();
    let out = tokio::process::Command::new(env.kubectl())
        .args(args)
        .env("KUBECONFIG", env.dir().join("admin.kubeconfig"))
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

async fn apply(file: &Path) -> String {
    let (code, out, err) = kubectl(&[
        "apply",
        "--server-side",
        &format!("--field-manager={MANAGER}"),
        "-f",
        file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "apply failed: {out}{err}");
    out
}

#[tokio::test]
async fn server_side_apply_again_after_the_controllers_ran_changes_nothing() {
    operated();
    let ns = common::namespace("gitops").await;
    let rs_name = format!("gitops-{}", common::suffix());
    // Written as a platform team would: only what they care about; the rest is schema default.
    let manifest = format!(
        r#"apiVersion: kubepim.io/v1alpha1
kind: RoleSetting
metadata:
  name: {rs_name}
spec:
  roleRefs: [{{name: admin}}]
  acknowledgePersistenceRisk: true
  activation:
    maxDuration: 2h
    requireJustification: true
  approval:
    required: true
    approvers: [{{kind: Group, name: sre-leads}}]
---
apiVersion: kubepim.io/v1alpha1
kind: EligibleAssignment
metadata:
  name: alice-admin
  namespace: {ns}
spec:
  roleSetting: {rs_name}
  subject: {{kind: User, name: alice}}
  endTime: "2099-01-01T00:00:00Z"
"#
    );
    let file = operated().dir().join(format!("{rs_name}.yaml"));
    std::fs::write(&file, manifest).unwrap();
    let first = apply(&file).await;
    assert!(first.contains("serverside-applied"), "{first}");

    // Wait until both controllers have written status.
    let rss: Api<RoleSetting> = Api::all(admin().await);
    let eas: Api<EligibleAssignment> = Api::namespaced(admin().await, &ns);
    eventually!(
        Duration::from_secs(30),
        eas.get("alice-admin")
            .await
            .ok()
            .and_then(|ea| ea.status)
            .and_then(|s| s.phase)
            == Some(AssignmentPhase::Eligible),
        "the assignment should become Eligible"
    );
    eventually!(
        Duration::from_secs(30),
        rss.get(&rs_name)
            .await
            .ok()
            .and_then(|rs| rs.status)
            .is_some_and(|s| s.assignments == 1),
        "the RoleSetting status should count the assignment"
    );
    let before = (
        rss.get(&rs_name).await.unwrap(),
        eas.get("alice-admin").await.unwrap(),
    );

    // What Argo CD's sync and diff do: no conflict, nothing to change.
    let (code, out, err) = kubectl(&[
        "diff",
        "--server-side",
        &format!("--field-manager={MANAGER}"),
        "-f",
        file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "kubectl diff found drift:\n{out}{err}");
    let again = apply(&file).await;
    assert!(!again.contains("conflict"), "{again}");
    let after = (
        rss.get(&rs_name).await.unwrap(),
        eas.get("alice-admin").await.unwrap(),
    );
    assert_eq!(
        before.0.metadata.resource_version, after.0.metadata.resource_version,
        "re-applying the RoleSetting changed it"
    );
    assert_eq!(
        before.1.metadata.resource_version, after.1.metadata.resource_version,
        "re-applying the assignment changed it"
    );
    assert_eq!(after.0.metadata.generation, Some(1));
    assert_eq!(after.1.metadata.generation, Some(1));
    // Defaults come from the schema, visible in the object, not from admission.
    assert_eq!(after.0.spec.approval.min_approvals, 1);
    assert_eq!(after.0.spec.activation.max_schedule_ahead.as_str(), "24h");

    // Nobody but the GitOps tool owns spec fields: the operator only writes status.
    for mf in after
        .0
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .chain(after.1.metadata.managed_fields.iter().flatten())
    {
        let fields = serde_json::to_string(&mf.fields_v1).unwrap();
        if mf.manager.as_deref() != Some(MANAGER) {
            assert!(
                !fields.contains("\"f:spec\""),
                "{:?} owns spec fields: {fields}",
                mf.manager
            );
        }
    }
}
