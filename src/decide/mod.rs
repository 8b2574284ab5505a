//! kube-pim's decisions as pure functions of (objects, now): no IO, no clock, no client.
//!
//! The admission webhook and the controllers both call these, so a request refused at
//! admission is refused for the same reason, with the same message, as the controller would
//! revoke it; and each rule is unit tested by the dozen without an apiserver.
//!
//! - [`eligibility`]: assignment windows, subject matching, choosing the assignment that backs
//!   a request;
//! - [`policy`]: what a RoleSetting allows of requests and assignments (messages name the fix);
//! - [`approval`]: which approvals count, quorum, reachability;
//! - [`persistence`]: which roles let their holder keep access after it ends;
//! - [`bindings`]: the RoleBindings / ClusterRoleBindings an activation grants;
//! - [`residual`]: the questions that show whether a role's access is really gone;
//! - [`request`]: the ActivationRequest state machine: what to do next and when to look again.

pub mod approval;
pub mod bindings;
pub mod eligibility;
pub mod persistence;
pub mod policy;
pub mod request;
pub mod residual;

/// Something a policy forbids: a machine-readable reason (a condition reason) and a message
/// for people that names the problem and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// CamelCase reason, used in conditions and metrics.
    pub reason: &'static str,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl Violation {
    /// A violation with `reason` and `message`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The user name Kubernetes gives a ServiceAccount.
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The (namespace, name) of a ServiceAccount user name, if it is one.
pub fn parse_service_account(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// Go-style rendering of a span for messages (`2h`, `90m`, `1h30m`, `45s`).
pub fn human(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds();
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || out.is_empty() {
        out.push_str(&format!("{sec}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn service_account_names_round_trip() {
        let u = service_account_username("ci", "deployer");
        assert_eq!(u, "system:serviceaccount:ci:deployer");
        assert_eq!(parse_service_account(&u), Some(("ci", "deployer")));
        assert_eq!(parse_service_account("alice"), None);
        assert_eq!(parse_service_account("system:serviceaccount:ci"), None);
        assert_eq!(parse_service_account("system:serviceaccount::x"), None);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(TimeDelta::hours(2)), "2h");
        assert_eq!(human(TimeDelta::minutes(90)), "1h30m");
        assert_eq!(human(TimeDelta::seconds(45)), "45s");
        assert_eq!(human(TimeDelta::zero()), "0s");
        assert_eq!(human(TimeDelta::seconds(3661)), "1h1m1s");
    }
}

/// Builders of API objects for the unit tests of the decisions.
#[cfg(test)]
pub(crate) mod test_fixtures {
    use chrono::{DateTime, TimeZone, Utc};
    use kube::api::ObjectMeta;

    use crate::api::*;

    /// A fixed "now": 2026-12-01T12:00:00Z.
    pub fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }

    pub fn user(name: &str) -> Subject {
        Subject {
            kind: SubjectKind::User,
            name: name.into(),
            namespace: None,
        }
    }

    pub fn group(name: &str) -> Subject {
        Subject {
            kind: SubjectKind::Group,
            name: name.into(),
            namespace: None,
        }
    }

    pub fn service_account(ns: &str, name: &str) -> Subject {
        Subject {
            kind: SubjectKind::ServiceAccount,
            name: name.into(),
            namespace: Some(ns.into()),
        }
    }

    pub fn requester(name: &str, groups: &[&str]) -> Requester {
        Requester {
            username: name.into(),
            uid: Some(format!("uid-{name}")),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            extra: Default::default(),
        }
    }

    /// A RoleSetting granting `admin`, with the schema's defaults.
    pub fn role_setting(name: &str) -> RoleSetting {
        let mut rs: RoleSetting = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubepim.io/v1alpha1", "kind": "RoleSetting",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "generation": 1},
            "spec": {"roleRefs": [{"name": "admin"}]}
        }))
        .unwrap();
        rs.spec.activation.require_justification = true;
        rs
    }

    /// `role_setting` with approval by `approvers`, `min` of them.
    pub fn with_approval(mut rs: RoleSetting, approvers: Vec<Subject>, min: i32) -> RoleSetting {
        rs.spec.approval.required = true;
        rs.spec.approval.approvers = approvers;
        rs.spec.approval.min_approvals = min;
        rs
    }

    pub fn assignment(name: &str, ns: &str, rs: &str, subject: Subject) -> EligibleAssignment {
        EligibleAssignment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(crate::time::to_k8s(t0() - chrono::TimeDelta::days(1))),
                ..Default::default()
            },
            spec: EligibleAssignmentSpec {
                role_setting: rs.into(),
                subject,
                scope: Scope::Namespace,
                type_: AssignmentType::Eligible,
                start_time: None,
                end_time: None,
                justification: None,
            },
            status: None,
        }
    }

    /// A request by `who` for `rs` in `ns`, created at t0, 1h, justified.
    pub fn request(name: &str, ns: &str, rs: &str, who: Requester) -> ActivationRequest {
        ActivationRequest {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(crate::time::to_k8s(t0())),
                generation: Some(1),
                ..Default::default()
            },
            spec: ActivationRequestSpec {
                role_setting: rs.into(),
                scope: Scope::Namespace,
                duration: Some("1h".parse().unwrap()),
                start_time: None,
                justification: Some("INC-1 on fire".into()),
                ticket: None,
                extends: None,
                deactivate: false,
                requester: who,
            },
            status: None,
        }
    }

    pub fn approval(who: &str, decision: ApprovalDecision, via_group: Option<&str>) -> Approval {
        Approval {
            approver: Approver {
                username: who.into(),
                uid: Some(format!("uid-{who}")),
                via_group: via_group.map(String::from),
            },
            decision,
            reason: Some("checked".into()),
            time: t0(),
        }
    }
}

/// The persistence risks of a RoleSetting's roles (role, what it can do), and whether the
/// RoleSetting acknowledges them: `Some(message)` when it must and does not.
pub fn unacknowledged_persistence(
    rs: &crate::api::RoleSetting,
    risks: &[(String, Vec<String>)],
) -> Option<String> {
    if rs.spec.acknowledge_persistence_risk || risks.iter().all(|(_, r)| r.is_empty()) {
        return None;
    }
    let what = risks
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(role, r)| format!("ClusterRole {role} {}", r.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    Some(format!(
        "{what}: whoever activates RoleSetting {} could keep access after it ends. Set acknowledgePersistenceRisk: true to accept that (and consider standingAccess: Deny), or govern a narrower role",
        rs.metadata.name.as_deref().unwrap_or_default()
    ))
}
