//! Which ClusterRoles let whoever holds them keep access after it ends (SPEC invariant 8):
//! a role that can bind, escalate or impersonate, write Roles or bindings, or mint
//! ServiceAccount tokens lets an activated user create their own standing access. A RoleSetting
//! over such a role must say `acknowledgePersistenceRisk: true`; the standing-access guard and
//! the residual-access check are what limit the risk then.

use k8s_openapi::api::rbac::v1::PolicyRule;

fn has(list: &Option<Vec<String>>, wanted: &[&str]) -> bool {
    list.iter()
        .flatten()
        .any(|x| x == "*" || wanted.contains(&x.as_str()))
}

fn verbs_have(rule: &PolicyRule, wanted: &[&str]) -> bool {
    rule.verbs
        .iter()
        .any(|v| v == "*" || wanted.contains(&v.as_str()))
}

/// What in `rules` lets its holder create their own persistence, one phrase per finding
/// (empty when nothing does).
pub fn risks(rules: &[PolicyRule]) -> Vec<String> {
    let write = ["create", "update", "patch"];
    let mut found: Vec<String> = Vec::new();
    let mut note = |s: String| {
        if !found.contains(&s) {
            found.push(s);
        }
    };
    for r in rules {
        if r.resources.as_ref().is_none_or(|v| v.is_empty()) {
            continue; // non-resource URLs grant no persistence
        }
        for v in ["bind", "escalate", "impersonate"] {
            if r.verbs.iter().any(|x| x == v) {
                note(format!("can {v}"));
            }
        }
        if r.verbs.iter().any(|x| x == "*") {
            note("has every verb (*)".into());
        }
        let rbac = has(&r.api_groups, &["rbac.authorization.k8s.io"]);
        if rbac
            && verbs_have(r, &write)
            && has(
                &r.resources,
                &[
                    "roles",
                    "rolebindings",
                    "clusterroles",
                    "clusterrolebindings",
                ],
            )
        {
            note("can write Roles or bindings".into());
        }
        let core = has(&r.api_groups, &[""]);
        // RBAC matches `*/token` and `serviceaccounts/*` as well.
        if core
            && verbs_have(r, &["create"])
            && has(
                &r.resources,
                &["serviceaccounts/token", "*/token", "serviceaccounts/*"],
            )
        {
            note("can create ServiceAccount tokens".into());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        PolicyRule {
            api_groups: Some(s(groups)),
            resources: Some(s(resources)),
            verbs: s(verbs),
            ..Default::default()
        }
    }

    #[test]
    fn reading_is_no_risk() {
        assert!(risks(&[rule(&[""], &["pods", "secrets"], &["get", "list", "watch"])]).is_empty());
        assert!(
            risks(&[rule(
                &["rbac.authorization.k8s.io"],
                &["rolebindings"],
                &["get", "list"]
            )])
            .is_empty()
        );
        assert!(risks(&[]).is_empty());
    }

    #[test]
    fn writing_bindings_or_roles_is_a_risk() {
        for res in [
            "roles",
            "rolebindings",
            "clusterroles",
            "clusterrolebindings",
            "*",
        ] {
            assert_eq!(
                risks(&[rule(&["rbac.authorization.k8s.io"], &[res], &["create"])]),
                ["can write Roles or bindings"],
                "{res}"
            );
        }
        assert_eq!(
            risks(&[rule(&["*"], &["rolebindings"], &["patch"])]),
            ["can write Roles or bindings"]
        );
        assert!(risks(&[rule(&["apps"], &["rolebindings"], &["create"])]).is_empty());
    }

    #[test]
    fn bind_escalate_impersonate_tokens_and_wildcards_are_risks() {
        assert_eq!(
            risks(&[rule(&[""], &["users", "serviceaccounts"], &["impersonate"])]),
            ["can impersonate"]
        );
        assert_eq!(
            risks(&[rule(
                &["rbac.authorization.k8s.io"],
                &["clusterroles"],
                &["bind", "escalate"]
            )]),
            ["can bind", "can escalate"]
        );
        for res in ["serviceaccounts/token", "*/token", "serviceaccounts/*"] {
            assert_eq!(
                risks(&[rule(&[""], &[res], &["create"])]),
                ["can create ServiceAccount tokens"],
                "{res}"
            );
        }
        let all = risks(&[rule(&["*"], &["*"], &["*"])]);
        assert!(all.contains(&"has every verb (*)".to_string()), "{all:?}");
        assert!(all.contains(&"can write Roles or bindings".to_string()));
        assert!(all.contains(&"can create ServiceAccount tokens".to_string()));
    }

    #[test]
    fn non_resource_urls_are_no_risk() {
        let r = PolicyRule {
            non_resource_urls: Some(vec!["/metrics".into()]),
            verbs: vec!["*".into()],
            ..Default::default()
        };
        assert!(risks(&[r]).is_empty());
    }
}
