//! After a revocation, is the role's access really gone (SPEC invariant 8)? The operator asks
//! the apiserver, as the former requester, whether they can still do what the role's rules
//! allow; these are the questions. One probe per rule (its first verb, group, resource and
//! name), at most [`MAX_PROBES`], so a role like `admin` costs a bounded number of
//! SubjectAccessReviews. A probe that is still allowed means another binding (or a group
//! membership) grants the same: standing access outside kube-pim.

use k8s_openapi::api::{authorization::v1::ResourceAttributes, rbac::v1::PolicyRule};

/// The most probes per revocation.
pub const MAX_PROBES: usize = 16;

fn first(v: &Option<Vec<String>>) -> Option<&str> {
    v.as_ref().and_then(|v| v.first()).map(String::as_str)
}

/// The probes for `rules` at `namespace` (`None`: cluster-wide), de-duplicated.
pub fn probes(rules: &[PolicyRule], namespace: Option<&str>) -> Vec<ResourceAttributes> {
    let mut out: Vec<ResourceAttributes> = Vec::new();
    for r in rules {
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
        let (resource, subresource) = match resource {
            "*" => ("*", None),
            r => match r.split_once('/') {
                Some((res, sub)) => (res, Some(sub.to_string())),
                None => (r, None),
            },
        };
        let p = ResourceAttributes {
            verb: Some(verb.into()),
            group: Some(group.into()),
            resource: Some(resource.into()),
            subresource,
            name: first(&r.resource_names).map(str::to_string),
            namespace: namespace.map(str::to_string),
            ..Default::default()
        };
        if !out.contains(&p) {
            out.push(p);
        }
        if out.len() == MAX_PROBES {
            break;
        }
    }
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
        let p = probes(&rules, Some("payments"));
        assert_eq!(p.len(), 3);
        assert_eq!(describe(&p[0]), "list secrets in payments");
        assert_eq!(describe(&p[1]), "patch deployments.apps/scale in payments");
        assert_eq!(describe(&p[2]), "get widgets w1 in payments");
        let c = probes(&rules[..1], None);
        assert_eq!(c[0].namespace, None);
        assert_eq!(describe(&c[0]), "list secrets cluster-wide");
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
