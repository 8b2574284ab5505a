//! Which approvals count (SPEC section 3, *Approval*): distinct approvers who are approvers
//! now, are not the requester (by name or uid), and pass any further check the caller supplies
//! (the SubjectAccessReview of separation of duties). One valid Deny ends the request.

use crate::{
    api::{
        ActivationRequest, Approval, ApprovalDecision, ApprovalPolicy, Approver, Requester,
        SubjectKind,
    },
    decide::service_account_username,
};

/// The outcome of counting a request's approvals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Approvers whose approval counts, in order.
    pub approved_by: Vec<String>,
    /// The first valid Deny: (approver, reason).
    pub denied_by: Option<(String, String)>,
    /// Decisions that do not count: (approver, why).
    pub ignored: Vec<(String, String)>,
}

impl Tally {
    /// Whether `min` valid approvals have been given.
    pub fn reached(&self, min: i32) -> bool {
        self.approved_by.len() >= usize::try_from(min).unwrap_or(usize::MAX)
    }
}

/// Whether `approver` is an approver under `policy` now: named as a User, as a ServiceAccount
/// (only with allowServiceAccountApprovers), or through the Group recorded as `viaGroup`.
pub fn is_listed(policy: &ApprovalPolicy, approver: &Approver) -> bool {
    // A ServiceAccount approves only where ServiceAccounts may, also through a Group.
    if crate::decide::parse_service_account(&approver.username).is_some()
        && !policy.allow_service_account_approvers
    {
        return false;
    }
    policy.approvers.iter().any(|a| match a.kind {
        SubjectKind::User => a.name == approver.username,
        SubjectKind::ServiceAccount => {
            policy.allow_service_account_approvers
                && a.namespace
                    .as_deref()
                    .map(|ns| service_account_username(ns, &a.name))
                    .as_deref()
                    == Some(approver.username.as_str())
        }
        SubjectKind::Group => approver.via_group.as_deref() == Some(a.name.as_str()),
    })
}

/// Whether `approver` is the requester (same user name, or same uid when both have one).
pub fn is_requester(approver: &Approver, requester: &Requester) -> bool {
    approver.username == requester.username
        || matches!((&approver.uid, &requester.uid), (Some(a), Some(r)) if a == r)
}

/// Counts the approvals of `request` under `policy`. `extra_check` may refuse an approval for a
/// further reason (returned as the reason); it is called only for approvals that otherwise count.
pub fn tally(
    policy: &ApprovalPolicy,
    request: &ActivationRequest,
    mut extra_check: impl FnMut(&Approval) -> Option<String>,
) -> Tally {
    let requester = &request.spec.requester;
    let mut t = Tally::default();
    let mut seen: Vec<&str> = Vec::new();
    let approvals = request
        .status
        .as_ref()
        .and_then(|s| s.approvals.as_deref())
        .unwrap_or_default();
    for a in approvals {
        let who = a.approver.username.clone();
        let why = if seen.contains(&a.approver.username.as_str()) {
            Some("this approver already decided; only the first decision counts".to_string())
        } else if is_requester(&a.approver, requester) {
            Some("approvers cannot decide their own request".to_string())
        } else if !is_listed(policy, &a.approver) {
            Some("not an approver of this RoleSetting (now)".to_string())
        } else {
            extra_check(a)
        };
        seen.push(&a.approver.username);
        match why {
            Some(reason) => t.ignored.push((who, reason)),
            None => match a.decision {
                ApprovalDecision::Approved => t.approved_by.push(who),
                ApprovalDecision::Denied => {
                    if t.denied_by.is_none() {
                        t.denied_by = Some((who, a.reason.clone().unwrap_or_default()));
                    }
                }
            },
        }
    }
    t
}

/// Whether `min_approvals` can still be reached: always with a Group approver (membership
/// is open-ended); otherwise only if enough listed Users/ServiceAccounts remain who are not the
/// requester and whose decision was not already ignored.
pub fn quorum_reachable(
    policy: &ApprovalPolicy,
    requester: Option<&Requester>,
    ignored: &[(String, String)],
) -> bool {
    if policy
        .approvers
        .iter()
        .any(|a| a.kind == SubjectKind::Group)
    {
        return true;
    }
    let mut names: Vec<String> = policy
        .approvers
        .iter()
        .filter_map(|a| match a.kind {
            SubjectKind::User => Some(a.name.clone()),
            SubjectKind::ServiceAccount if policy.allow_service_account_approvers => a
                .namespace
                .as_deref()
                .map(|ns| service_account_username(ns, &a.name)),
            _ => None,
        })
        .filter(|n| requester.is_none_or(|r| *n != r.username))
        .filter(|n| !ignored.iter().any(|(who, _)| who == n))
        .collect();
    names.sort();
    names.dedup();
    names.len() >= usize::try_from(policy.min_approvals).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::ActivationRequestStatus, decide::test_fixtures::*};
    use ApprovalDecision::*;

    fn req_with(approvals: Vec<Approval>) -> ActivationRequest {
        let mut r = request("r", "ns", "rs", requester("alice", &["team"]));
        r.status = Some(ActivationRequestStatus {
            approvals: Some(approvals),
            ..Default::default()
        });
        r
    }

    fn policy(approvers: Vec<crate::api::Subject>, min: i32) -> ApprovalPolicy {
        with_approval(role_setting("rs"), approvers, min)
            .spec
            .approval
    }

    #[test]
    fn listed_users_count_once() {
        let p = policy(vec![user("bob"), user("carol")], 2);
        let t = tally(
            &p,
            &req_with(vec![
                approval("bob", Approved, None),
                approval("bob", Approved, None),
            ]),
            |_| None,
        );
        assert_eq!(t.approved_by, ["bob"]);
        assert_eq!(t.ignored.len(), 1);
        assert!(!t.reached(2));
        let t = tally(
            &p,
            &req_with(vec![
                approval("bob", Approved, None),
                approval("carol", Approved, None),
            ]),
            |_| None,
        );
        assert!(t.reached(2));
    }

    #[test]
    fn self_approval_never_counts_by_name_or_uid() {
        let p = policy(vec![user("alice"), group("team")], 1);
        let t = tally(
            &p,
            &req_with(vec![approval("alice", Approved, None)]),
            |_| None,
        );
        assert!(t.approved_by.is_empty());
        assert_eq!(t.ignored[0].1, "approvers cannot decide their own request");
        // Same uid under another name (e.g. a renamed account).
        let mut a = approval("alice2", Approved, Some("team"));
        a.approver.uid = Some("uid-alice".into());
        let t = tally(&p, &req_with(vec![a]), |_| None);
        assert!(t.approved_by.is_empty());
    }

    #[test]
    fn unlisted_approvers_and_groups() {
        let p = policy(vec![group("sre-leads")], 1);
        let t = tally(
            &p,
            &req_with(vec![approval("mallory", Approved, None)]),
            |_| None,
        );
        assert_eq!(t.ignored[0].1, "not an approver of this RoleSetting (now)");
        let t = tally(
            &p,
            &req_with(vec![approval("mallory", Approved, Some("other"))]),
            |_| None,
        );
        assert!(t.approved_by.is_empty());
        let t = tally(
            &p,
            &req_with(vec![approval("bob", Approved, Some("sre-leads"))]),
            |_| None,
        );
        assert_eq!(t.approved_by, ["bob"]);
    }

    #[test]
    fn service_account_approvers_need_the_switch() {
        let mut p = policy(vec![service_account("ops", "approver-bot")], 1);
        let sa = approval("system:serviceaccount:ops:approver-bot", Approved, None);
        assert!(
            tally(&p, &req_with(vec![sa.clone()]), |_| None)
                .approved_by
                .is_empty()
        );
        p.allow_service_account_approvers = true;
        assert_eq!(
            tally(&p, &req_with(vec![sa]), |_| None).approved_by.len(),
            1
        );
    }

    #[test]
    fn a_service_account_in_an_approver_group_needs_the_switch_too() {
        let mut p = policy(vec![group("sre-leads")], 1);
        let sa = approval("system:serviceaccount:ops:bot", Approved, Some("sre-leads"));
        let t = tally(&p, &req_with(vec![sa.clone()]), |_| None);
        assert!(t.approved_by.is_empty());
        assert_eq!(t.ignored.len(), 1);
        p.allow_service_account_approvers = true;
        assert_eq!(
            tally(&p, &req_with(vec![sa]), |_| None).approved_by.len(),
            1
        );
    }

    #[test]
    fn one_valid_deny_wins_and_invalid_denies_do_not() {
        let p = policy(vec![user("bob"), user("carol")], 1);
        let t = tally(
            &p,
            &req_with(vec![
                approval("carol", Denied, None),
                approval("bob", Approved, None),
            ]),
            |_| None,
        );
        assert_eq!(t.denied_by.as_ref().unwrap().0, "carol");
        let t = tally(
            &p,
            &req_with(vec![
                approval("mallory", Denied, None),
                approval("bob", Approved, None),
            ]),
            |_| None,
        );
        assert!(t.denied_by.is_none());
        assert!(t.reached(1));
        let t = tally(&p, &req_with(vec![approval("alice", Denied, None)]), |_| {
            None
        });
        assert!(
            t.denied_by.is_none(),
            "the requester cannot deny either: they can cancel"
        );
    }

    #[test]
    fn the_extra_check_can_refuse() {
        let p = policy(vec![user("bob")], 1);
        let t = tally(&p, &req_with(vec![approval("bob", Approved, None)]), |_| {
            Some("bob can impersonate alice".into())
        });
        assert!(t.approved_by.is_empty());
        assert_eq!(
            t.ignored,
            [("bob".to_string(), "bob can impersonate alice".to_string())]
        );
    }

    #[test]
    fn no_approvals_yet() {
        let p = policy(vec![user("bob")], 1);
        let t = tally(
            &p,
            &request("r", "ns", "rs", requester("alice", &[])),
            |_| None,
        );
        assert_eq!(t, Tally::default());
    }

    #[test]
    fn quorum_reachability() {
        let alice = requester("alice", &[]);
        assert!(quorum_reachable(
            &policy(vec![user("bob"), user("carol")], 2),
            Some(&alice),
            &[]
        ));
        assert!(
            !quorum_reachable(
                &policy(vec![user("bob"), user("alice")], 2),
                Some(&alice),
                &[]
            ),
            "the requester cannot be counted"
        );
        assert!(!quorum_reachable(
            &policy(vec![user("bob"), user("carol")], 2),
            Some(&alice),
            &[("bob".into(), "x".into())]
        ));
        assert!(
            quorum_reachable(
                &policy(vec![user("bob"), group("sre")], 5),
                Some(&alice),
                &[]
            ),
            "groups are open-ended"
        );
        assert!(
            !quorum_reachable(&policy(vec![user("bob"), user("bob")], 2), None, &[]),
            "a name counts once"
        );
        let mut p = policy(vec![user("bob"), service_account("ops", "bot")], 2);
        assert!(!quorum_reachable(&p, None, &[]));
        p.allow_service_account_approvers = true;
        assert!(quorum_reachable(&p, None, &[]));
    }
}
