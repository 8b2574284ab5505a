//! The operator's own RBAC as data: the ClusterRole the test environment binds to the
//! operator's user (and that the Helm chart mirrors). Pure builders, no IO.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::ObjectMeta;

/// The name of the operator's ClusterRole and ClusterRoleBinding.
pub const OPERATOR_CLUSTER_ROLE: &str = "kube-pim-operator";

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(s(groups)),
        resources: Some(s(resources)),
        verbs: s(verbs),
        ..Default::default()
    }
}

/// What the operator may do cluster-wide: manage kube-pim's resources and their status,
/// manage RoleBindings/ClusterRoleBindings (and `bind` any ClusterRole, so it can grant the
/// governed roles without holding them), read ClusterRoles, check access with
/// SubjectAccessReviews, and record Events. What it needs in its own namespace only is in
/// [`operator_namespace_role`].
///
/// `bind_only`: limit `bind` to these ClusterRoles (the governed ones); `None` binds any.
/// Limited, an activation of a role not listed fails with the apiserver's 403 until it is.
pub fn operator_cluster_role(bind_only: Option<&[String]>) -> ClusterRole {
    let rw = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(OPERATOR_CLUSTER_ROLE.into()),
            labels: Some([("app.kubernetes.io/name".to_string(), "kube-pim".to_string())].into()),
            ..Default::default()
        },
        rules: Some(vec![
            rule(
                &["kubepim.io"],
                &["rolesettings", "eligibleassignments", "activationrequests"],
                &["get", "list", "watch", "update", "patch", "delete"],
            ),
            rule(
                &["kubepim.io"],
                &[
                    "rolesettings/status",
                    "eligibleassignments/status",
                    "activationrequests/status",
                    "activationrequests/finalizers",
                ],
                &["get", "update", "patch"],
            ),
            rule(
                &["rbac.authorization.k8s.io"],
                &["rolebindings", "clusterrolebindings"],
                &rw,
            ),
            rule(
                &["rbac.authorization.k8s.io"],
                &["clusterroles"],
                &["get", "list", "watch"],
            ),
            PolicyRule {
                resource_names: bind_only.map(<[String]>::to_vec),
                ..rule(&["rbac.authorization.k8s.io"], &["clusterroles"], &["bind"])
            },
            rule(
                &["authorization.k8s.io"],
                &["subjectaccessreviews"],
                &["create"],
            ),
            rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
            rule(&[""], &["namespaces"], &["get", "list", "watch"]),
        ]),
        ..Default::default()
    }
}

/// The persona ClusterRoles (SPEC section 6), bound per namespace (RoleBinding) or cluster-wide:
/// - `kube-pim-requester`: create and follow ActivationRequests, read policies and assignments;
/// - `kube-pim-approver`: the requester's rights plus appending decisions to
///   `activationrequests/status`;
/// - `kube-pim-admin`: manage RoleSettings and EligibleAssignments (writing them still needs
///   `bind` on the roles they grant).
pub fn persona_cluster_roles() -> Vec<ClusterRole> {
    let read = ["get", "list", "watch"];
    let requester = vec![
        rule(
            &["kubepim.io"],
            &["activationrequests"],
            &["create", "get", "list", "watch", "patch"],
        ),
        rule(
            &["kubepim.io"],
            &["rolesettings", "eligibleassignments"],
            &read,
        ),
    ];
    let mut approver = requester.clone();
    approver.push(rule(
        &["kubepim.io"],
        &["activationrequests/status"],
        &["get", "patch"],
    ));
    let admin = vec![
        rule(
            &["kubepim.io"],
            &["rolesettings", "eligibleassignments", "activationrequests"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        rule(
            &["kubepim.io"],
            &[
                "rolesettings/status",
                "eligibleassignments/status",
                "activationrequests/status",
            ],
            &read,
        ),
    ];
    [
        ("kube-pim-requester", requester),
        ("kube-pim-approver", approver),
        ("kube-pim-admin", admin),
    ]
    .into_iter()
    .map(|(name, rules)| ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("app.kubernetes.io/name".to_string(), "kube-pim".to_string())].into()),
            ..Default::default()
        },
        rules: Some(rules),
        ..Default::default()
    })
    .collect()
}

/// What the operator may do in its own namespace only: keep the standing-access ConfigMap
/// (the parameter of the in-apiserver policy), hold its leader-election Lease, and read the
/// Secrets that hold notification signing keys (`get` only: it cannot list them, and reads no
/// Secret anywhere else).
pub fn operator_namespace_role(namespace: &str) -> Role {
    Role {
        metadata: ObjectMeta {
            name: Some(OPERATOR_CLUSTER_ROLE.into()),
            namespace: Some(namespace.into()),
            labels: Some([("app.kubernetes.io/name".to_string(), "kube-pim".to_string())].into()),
            ..Default::default()
        },
        rules: Some(vec![
            rule(
                &[""],
                &["configmaps"],
                &["get", "list", "watch", "create", "update", "patch"],
            ),
            rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["get", "create", "update"],
            ),
            rule(&[""], &["secrets"], &["get"]),
        ]),
    }
}

/// Binds [`operator_namespace_role`] to the operator's user name.
pub fn operator_namespace_role_binding(namespace: &str, username: &str) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(OPERATOR_CLUSTER_ROLE.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: OPERATOR_CLUSTER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: username.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    }
}

/// The name of the reaper's ClusterRole and ClusterRoleBinding.
pub const SWEEPER_CLUSTER_ROLE: &str = "kube-pim-sweeper";

/// What `kube-pim sweep` may do: list and delete RoleBindings and ClusterRoleBindings. Nothing
/// else: it reads no kube-pim resource and no Secret, and creates nothing.
pub fn sweeper_cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(SWEEPER_CLUSTER_ROLE.into()),
            labels: Some([("app.kubernetes.io/name".to_string(), "kube-pim".to_string())].into()),
            ..Default::default()
        },
        rules: Some(vec![rule(
            &["rbac.authorization.k8s.io"],
            &["rolebindings", "clusterrolebindings"],
            &["list", "delete"],
        )]),
        ..Default::default()
    }
}

/// Reads RoleSettings, which are cluster-scoped: the persona roles, bound per namespace with
/// RoleBindings, cannot grant that. Bound to `system:authenticated` by the test environment
/// (the chart makes the group a value) so that everyone can see the policy they would activate
/// under and `kubectl pim eligible` and `pending` can show it.
pub const POLICY_READER_CLUSTER_ROLE: &str = "kube-pim-policy-reader";

/// [`POLICY_READER_CLUSTER_ROLE`].
pub fn policy_reader_cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(POLICY_READER_CLUSTER_ROLE.into()),
            labels: Some([("app.kubernetes.io/name".to_string(), "kube-pim".to_string())].into()),
            ..Default::default()
        },
        rules: Some(vec![rule(
            &["kubepim.io"],
            &["rolesettings"],
            &["get", "list", "watch"],
        )]),
        ..Default::default()
    }
}

/// Binds [`POLICY_READER_CLUSTER_ROLE`] to `group` (e.g. `system:authenticated`).
pub fn policy_reader_binding(group: &str) -> ClusterRoleBinding {
    let mut b = cluster_role_binding(POLICY_READER_CLUSTER_ROLE, group);
    if let Some(s) = b.subjects.as_mut() {
        s[0].kind = "Group".into();
    }
    b
}

/// Binds `role` to the user name `username` cluster-wide.
pub fn cluster_role_binding(role: &str, username: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(role.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: username.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    }
}

/// Binds [`operator_cluster_role`] to the operator's user name.
pub fn operator_cluster_role_binding(username: &str) -> ClusterRoleBinding {
    cluster_role_binding(OPERATOR_CLUSTER_ROLE, username)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_approvers_may_write_request_status() {
        let roles = persona_cluster_roles();
        let writes_status = |r: &ClusterRole| {
            r.rules.iter().flatten().any(|p| {
                p.resources
                    .iter()
                    .flatten()
                    .any(|x| x == "activationrequests/status")
                    && p.verbs.iter().any(|v| v == "patch" || v == "update")
            })
        };
        let names: Vec<_> = roles
            .iter()
            .filter(|r| writes_status(r))
            .map(|r| r.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["kube-pim-approver"]);
    }

    #[test]
    fn operator_cannot_read_secrets_or_impersonate() {
        let role = operator_cluster_role(None);
        for r in role.rules.unwrap() {
            let res = r.resources.unwrap_or_default();
            assert!(!res.iter().any(|x| x == "secrets" || x == "*"), "{res:?}");
            assert!(
                !r.verbs
                    .iter()
                    .any(|v| v == "impersonate" || v == "escalate" || v == "*")
            );
        }
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;

    #[test]
    fn bind_can_be_limited_to_the_governed_roles() {
        let bind = |r: &ClusterRole| {
            r.rules
                .iter()
                .flatten()
                .find(|p| p.verbs.iter().any(|v| v == "bind"))
                .cloned()
                .unwrap()
        };
        assert_eq!(bind(&operator_cluster_role(None)).resource_names, None);
        let limited = operator_cluster_role(Some(&["admin".into(), "view".into()]));
        assert_eq!(
            bind(&limited).resource_names,
            Some(vec!["admin".to_string(), "view".to_string()])
        );
        // Only bind is limited: reading ClusterRoles (RolesFound, risks) stays cluster-wide.
        assert!(
            limited
                .rules
                .unwrap()
                .iter()
                .any(|p| p.verbs.iter().any(|v| v == "list")
                    && p.resource_names.is_none()
                    && p.resources.iter().flatten().any(|r| r == "clusterroles"))
        );
    }
}
