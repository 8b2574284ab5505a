//! After a revocation, is the role's access really gone (SPEC invariant 8)? The operator asks
//! the apiserver, as the former requester, whether they can still do what the role's rules
//! allow; these are the questions, at most [`MAX_PROBES`] so a role like `admin` costs a
//! bounded number of SubjectAccessReviews. First every sensitive permission the rules grant
//! (reading Secrets, exec into pods, writing bindings, minting tokens, impersonating: what
//! someone keeping access would keep), then one probe per rule (its first verb, group,
//! resource and name). A probe that is still allowed means another binding (or a group
//! membership) grants the same: standing access outside kube-pim.

use k8s_openapi::api::{authorization::v1::ResourceAttributes, rbac::v1::PolicyRule};

/// The most probes per revocation.
pub const MAX_PROBES: usize = 16;

fn first(v: &Option<Vec<String>>) -> Option<&str> {
    v.as_ref().and_then(|v| v.first()).map(String::as_str)
}

/// Sensitive permissions, probed first when a rule grants them: (group, resource, verb).
const SENSITIVE: &[(&str, &str, &str)] = &[
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("", "pods/exec", "create"),
    ("rbac.authorization.k8s.io", "rolebindings", "create"),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "create"),
    ("", "serviceaccounts/token", "create"),
    ("", "users", "impersonate"),
    ("", "serviceaccounts", "impersonate"),
];

fn grants(r: &PolicyRule, group: &str, resource: &str, verb: &str) -> bool {
    let any = |v: &Option<Vec<String>>, x: &str| v.iter().flatten().any(|e| e == "*" || e == x);
    r.resource_names.as_ref().is_none_or(|n| n.is_empty())
        && any(&r.api_groups, group)
        && any(&r.resources, resource)
        && r.verbs.iter().any(|v| v == "*" || v == verb)
}

fn attributes(
    group: &str,
    resource: &str,
    verb: &str,
    name: Option<String>,
    namespace: Option<&str>,
) -> ResourceAttributes {
    let (resource, subresource) = match resource {
        "*" => ("*", None),
        r => match r.split_once('/') {
            Some((res, sub)) => (res, Some(sub.to_string())),
            None => (r, None),
        },
    };
    ResourceAttributes {
        verb: Some(verb.into()),
        group: Some(group.into()),
        resource: Some(resource.into()),
        subresource,
        name,
        namespace: namespace.map(str::to_string),
        ..Default::default()
    }
}

/// The probes for `rules` at `namespace` (`None`: cluster-wide), de-duplicated.
pub fn probes(rules: &[PolicyRule], namespace: Option<&str>) -> Vec<ResourceAttributes> {
    let mut out: Vec<ResourceAttributes> = Vec::new();
    for (group, resource, verb) in SENSITIVE {
        if rules.iter().any(|r| grants(r, group, resource, verb)) {
            out.push(attributes(group, resource, verb, None, namespace));
        }
    }
    for r in rules {
        if out.len() >= MAX_PROBES {
            break;
        }
        let Some(resource) = first(&r.resources) else {
            continue; // non-resource URLs: not bound by a RoleBinding
        };
        let verb = r
            .verbs
            .iter()
            .find(|v| *v != "*")
            .map_or("get", String::as_str);
        let group = match first(&r.api_groups) {
            Some("*") | None => "",
            Some(g) => g,
        };
        let p = attributes(
            group,
            resource,
            verb,
            first(&r.resource_names).map(str::to_string),
            namespace,
        );
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out.truncate(MAX_PROBES);
    out
}

/// How a probe reads in a message: `list secrets in payments`.
pub fn describe(p: &ResourceAttributes) -> String {
    let mut what = p.resource.clone().unwrap_or_default();
    if let Some(g) = p.group.as_deref().filter(|g| !g.is_empty()) {
        what = format!("{what}.{g}");
    }
    if let Some(s) = &p.subresource {
        what = format!("{what}/{s}");
    }
    if let Some(n) = &p.name {
        what = format!("{what} {n}");
    }
    let at = p
        .namespace
        .as_deref()
        .map_or("cluster-wide".to_string(), |ns| format!("in {ns}"));
    format!("{} {what} {at}", p.verb.as_deref().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        PolicyRule {
            api_groups: Some(s(groups)),
            resources: Some(s(resources)),
            verbs: s(verbs),
            resource_names: (!names.is_empty()).then(|| s(names)),
            ..Default::default()
        }
    }

    #[test]
    fn one_probe_per_rule_from_its_first_entries() {
        let rules = [
            rule(&[""], &["secrets", "configmaps"], &["list", "get"], &[]),
            rule(&["apps"], &["deployments/scale"], &["*", "patch"], &[]),
            rule(&["*"], &["widgets"], &["*"], &["w1"]),
        ];
        let p: Vec<String> = probes(&rules, Some("payments"))
            .iter()
            .map(describe)
            .collect();
        assert_eq!(
            p,
            [
                "get secrets in payments",
                "list secrets in payments",
                "patch deployments.apps/scale in payments",
                "get widgets w1 in payments"
            ]
        );
        let c = probes(&rules[..1], None);
        assert_eq!(c[0].namespace, None);
        assert_eq!(describe(&c[0]), "get secrets cluster-wide");
    }

    #[test]
    fn sensitive_permissions_are_probed_first_wherever_the_rule_lists_them() {
        // Secrets is not the first resource of its rule, and exec not the first verb.
        let rules = [
            rule(&[""], &["configmaps", "secrets"], &["get", "list"], &[]),
            rule(&[""], &["pods", "pods/exec"], &["get", "create"], &[]),
        ];
        let d: Vec<String> = probes(&rules, Some("ns")).iter().map(describe).collect();
        assert_eq!(
            d[..3],
            [
                "get secrets in ns",
                "list secrets in ns",
                "create pods/exec in ns"
            ]
        );
        assert!(d.contains(&"get configmaps in ns".to_string()));
        // A wildcard rule grants all of them.
        let all = probes(&[rule(&["*"], &["*"], &["*"], &[])], None);
        assert!(all.len() >= SENSITIVE.len());
        // Named resources are not the whole resource.
        assert!(
            probes(&[rule(&[""], &["secrets"], &["get"], &["one"])], None)
                .iter()
                .all(|p| p.name.as_deref() == Some("one"))
        );
    }

    #[test]
    fn probes_are_unique_bounded_and_skip_non_resource_rules() {
        let mut rules = vec![PolicyRule {
            non_resource_urls: Some(vec!["/healthz".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }];
        rules.push(rule(&[""], &["pods"], &["get"], &[]));
        rules.push(rule(&[""], &["pods"], &["get"], &[]));
        assert_eq!(probes(&rules, Some("ns")).len(), 1);
        let many: Vec<PolicyRule> = (0..40)
            .map(|i| rule(&[""], &[&format!("r{i}")], &["get"], &[]))
            .collect();
        assert_eq!(probes(&many, None).len(), MAX_PROBES);
    }
}
