//! Who is eligible, where and when: assignment windows, subject matching, and the choice of
//! the assignment that backs a request (SPEC section 3, *Eligibility*).

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{
    api::{
        AssignmentPhase, EligibleAssignment, Requester, RoleSetting, Scope, Subject, SubjectKind,
    },
    decide::{Violation, parse_service_account, policy},
    time::from_k8s,
};

/// An assignment's window: from `start` (inclusive) to `end` (exclusive; `None` = permanent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// `spec.startTime`, or the creation time.
    pub start: DateTime<Utc>,
    /// `spec.endTime`.
    pub end: Option<DateTime<Utc>>,
}

impl Window {
    /// Whether `now` is inside the window.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        self.start <= now && self.end.is_none_or(|e| now < e)
    }
}

/// The window of an assignment. An assignment not yet created (admission) starts `now`.
pub fn window(ea: &EligibleAssignment, now: DateTime<Utc>) -> Window {
    let created = ea.metadata.creation_timestamp.as_ref().map(from_k8s);
    Window {
        start: ea.spec.start_time.or(created).unwrap_or(now),
        end: ea.spec.end_time,
    }
}

/// Whether `subject` is the requester: the user by name, one of the requester's groups, or
/// the requester's ServiceAccount.
pub fn subject_matches(subject: &Subject, requester: &Requester) -> bool {
    match subject.kind {
        SubjectKind::User => requester.username == subject.name,
        SubjectKind::Group => requester.groups.contains(&subject.name),
        SubjectKind::ServiceAccount => {
            parse_service_account(&requester.username)
                == subject
                    .namespace
                    .as_deref()
                    .map(|ns| (ns, subject.name.as_str()))
        }
    }
}

/// The phase an assignment is in at `now`, with the violation when it is Invalid.
/// `role_setting` is the RoleSetting it names (`None` when it does not exist);
/// `authorized` is the result of the `bind` check of its writer (SPEC invariant 3).
pub fn phase(
    ea: &EligibleAssignment,
    role_setting: Option<&RoleSetting>,
    authorized: Result<(), Violation>,
    cluster_scope_namespace: &str,
    now: DateTime<Utc>,
) -> (AssignmentPhase, Option<Violation>) {
    let Some(rs) = role_setting else {
        return (
            AssignmentPhase::Invalid,
            Some(Violation::new(
                "RoleSettingNotFound",
                format!(
                    "RoleSetting {} does not exist: create it, or point spec.roleSetting at an existing one",
                    ea.spec.role_setting
                ),
            )),
        );
    };
    if let Err(v) = authorized {
        return (AssignmentPhase::Invalid, Some(v));
    }
    let ns = ea.metadata.namespace.as_deref().unwrap_or_default();
    if let Some(v) = policy::assignment_violations(rs, ea, ns, cluster_scope_namespace, now)
        .into_iter()
        .next()
    {
        return (AssignmentPhase::Invalid, Some(v));
    }
    let w = window(ea, now);
    let p = if now < w.start {
        AssignmentPhase::Scheduled
    } else if w.end.is_some_and(|e| now >= e) {
        AssignmentPhase::Expired
    } else if ea.spec.type_ == crate::api::AssignmentType::Active {
        AssignmentPhase::Active
    } else {
        AssignmentPhase::Eligible
    };
    (p, None)
}

/// Whether the operator has recorded the assignment as Invalid.
fn recorded_invalid(ea: &EligibleAssignment) -> bool {
    ea.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| p == AssignmentPhase::Invalid)
}

/// What a request needs an assignment for.
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    /// The request's namespace.
    pub namespace: &'a str,
    /// The RoleSetting's name.
    pub role_setting: &'a str,
    /// The scope.
    pub scope: crate::api::Scope,
    /// Who asks.
    pub requester: &'a Requester,
}

impl<'a> Wanted<'a> {
    /// What `req` wants.
    pub fn of(req: &'a crate::api::ActivationRequest) -> Self {
        Self {
            namespace: req.metadata.namespace.as_deref().unwrap_or_default(),
            role_setting: &req.spec.role_setting,
            scope: req.spec.scope,
            requester: &req.spec.requester,
        }
    }
}

/// What [`names`] reads of an assignment: the typed object, or what the cache keeps of one.
pub trait Named {
    /// Its metadata (namespace and deletionTimestamp are read).
    fn object_meta(&self) -> &ObjectMeta;
    /// `spec.roleSetting`.
    fn role_setting(&self) -> &str;
    /// `spec.scope`.
    fn scope(&self) -> Scope;
    /// `spec.subject`.
    fn subject(&self) -> &Subject;
}

impl Named for EligibleAssignment {
    fn object_meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn role_setting(&self) -> &str {
        &self.spec.role_setting
    }
    fn scope(&self) -> Scope {
        self.spec.scope
    }
    fn subject(&self) -> &Subject {
        &self.spec.subject
    }
}

/// Whether `ea` is about what is wanted: the same namespace, RoleSetting and scope, naming the
/// requester, and not being deleted (whether it is valid now is for [`select`]).
pub fn names<A: Named + ?Sized>(wanted: &Wanted<'_>, ea: &A) -> bool {
    let meta = ea.object_meta();
    meta.namespace.as_deref() == Some(wanted.namespace)
        && meta.deletion_timestamp.is_none()
        && ea.role_setting() == wanted.role_setting
        && ea.scope() == wanted.scope
        && subject_matches(ea.subject(), wanted.requester)
}

/// The assignment that backs a request now: in the request's namespace, for its RoleSetting
/// and scope, inside its window, not Invalid (as recorded, or by the RoleSetting's policy), and
/// naming the requester. When several match, the latest effective end wins (permanent beats
/// any time); ties go to the smallest name, so the choice is stable.
pub fn select<'a>(
    wanted: &Wanted<'_>,
    role_setting: Option<&RoleSetting>,
    assignments: impl IntoIterator<Item = &'a EligibleAssignment>,
    cluster_scope_namespace: &str,
    now: DateTime<Utc>,
) -> Option<&'a EligibleAssignment> {
    let rs = role_setting?;
    let namespace = wanted.namespace;
    assignments
        .into_iter()
        .filter(|ea| {
            names(wanted, *ea)
                && !recorded_invalid(ea)
                && window(ea, now).contains(now)
                && policy::assignment_violations(rs, ea, namespace, cluster_scope_namespace, now)
                    .is_empty()
        })
        .min_by(|a, b| {
            // Latest end first (None = permanent = latest), then smallest name.
            let end =
                |ea: &EligibleAssignment| ea.spec.end_time.map_or(DateTime::<Utc>::MAX_UTC, |e| e);
            end(b)
                .cmp(&end(a))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::Scope, decide::test_fixtures::*};
    use chrono::TimeDelta;

    #[test]
    fn users_groups_and_service_accounts_match() {
        let alice = requester("alice", &["team-payments"]);
        assert!(subject_matches(&user("alice"), &alice));
        assert!(!subject_matches(&user("bob"), &alice));
        assert!(subject_matches(&group("team-payments"), &alice));
        assert!(!subject_matches(&group("sre-leads"), &alice));
        let sa = requester("system:serviceaccount:ci:deployer", &[]);
        assert!(subject_matches(&service_account("ci", "deployer"), &sa));
        assert!(!subject_matches(&service_account("other", "deployer"), &sa));
        assert!(!subject_matches(&user("deployer"), &sa));
        assert!(!subject_matches(&service_account("ci", "deployer"), &alice));
    }

    #[test]
    fn window_defaults_to_creation_and_excludes_the_end() {
        let now = t0();
        let mut ea = assignment("a", "ns", "rs", user("alice"));
        ea.metadata.creation_timestamp = Some(crate::time::to_k8s(now - TimeDelta::hours(1)));
        ea.spec.end_time = Some(now + TimeDelta::hours(1));
        let w = window(&ea, now);
        assert_eq!(w.start, now - TimeDelta::hours(1));
        assert!(w.contains(now));
        assert!(!w.contains(now + TimeDelta::hours(1)));
        assert!(!w.contains(now - TimeDelta::hours(2)));
        ea.spec.end_time = None;
        assert!(window(&ea, now).contains(now + TimeDelta::days(3650)));
    }

    fn wanted(who: &Requester) -> Wanted<'_> {
        Wanted {
            namespace: "ns",
            role_setting: "rs",
            scope: Scope::Namespace,
            requester: who,
        }
    }

    fn pick<'a>(
        eas: &'a [EligibleAssignment],
        who: &Requester,
        now: DateTime<Utc>,
    ) -> Option<&'a str> {
        let rs = role_setting("rs");
        select(&wanted(who), Some(&rs), eas, "kube-pim-system", now)
            .map(|e| e.metadata.name.as_deref().unwrap())
    }

    #[test]
    fn the_latest_end_wins_and_ties_go_to_the_smallest_name() {
        let now = t0();
        let alice = requester("alice", &["oncall"]);
        let mut a = assignment("a", "ns", "rs", user("alice"));
        a.spec.end_time = Some(now + TimeDelta::hours(1));
        let mut b = assignment("b", "ns", "rs", group("oncall"));
        b.spec.end_time = Some(now + TimeDelta::hours(5));
        assert_eq!(pick(&[a.clone(), b.clone()], &alice, now), Some("b"));
        let mut c = assignment("c", "ns", "rs", user("alice"));
        c.spec.end_time = None;
        assert_eq!(
            pick(&[a.clone(), b.clone(), c.clone()], &alice, now),
            Some("c"),
            "permanent wins"
        );
        let mut d = b.clone();
        d.metadata.name = Some("a0".into());
        assert_eq!(pick(&[b.clone(), d], &alice, now), Some("a0"));
    }

    #[test]
    fn outside_the_window_other_namespace_scope_or_invalid_do_not_match() {
        let now = t0();
        let alice = requester("alice", &[]);
        let mut early = assignment("early", "ns", "rs", user("alice"));
        early.spec.start_time = Some(now + TimeDelta::minutes(1));
        let mut ended = assignment("ended", "ns", "rs", user("alice"));
        ended.spec.end_time = Some(now);
        let other_ns = assignment("x", "other", "rs", user("alice"));
        let other_rs = assignment("y", "ns", "other-rs", user("alice"));
        let mut cluster = assignment("z", "ns", "rs", user("alice"));
        cluster.spec.scope = Scope::Cluster;
        let mut invalid = assignment("inv", "ns", "rs", user("alice"));
        invalid.status = Some(crate::api::EligibleAssignmentStatus {
            phase: Some(AssignmentPhase::Invalid),
            ..Default::default()
        });
        let mut deleting = assignment("del", "ns", "rs", user("alice"));
        deleting.metadata.deletion_timestamp = Some(crate::time::to_k8s(now));
        let all = [early, ended, other_ns, other_rs, cluster, invalid, deleting];
        assert_eq!(pick(&all, &alice, now), None);
    }

    #[test]
    fn an_assignment_the_role_setting_no_longer_allows_does_not_match() {
        let now = t0();
        let mut rs = role_setting("rs");
        rs.spec.assignment.allow_permanent = false;
        let ea = assignment("a", "ns", "rs", user("alice"));
        let alice = requester("alice", &[]);
        let got = select(&wanted(&alice), Some(&rs), [&ea], "kp", now);
        assert!(got.is_none());
        let got = select(&wanted(&alice), None, [&ea], "kp", now);
        assert!(got.is_none(), "no RoleSetting, no eligibility");
    }

    #[test]
    fn phases() {
        let now = t0();
        let rs = role_setting("rs");
        let mut ea = assignment("a", "ns", "rs", user("alice"));
        let ph =
            |ea: &EligibleAssignment, rs: Option<&RoleSetting>| phase(ea, rs, Ok(()), "kp", now);
        assert_eq!(ph(&ea, Some(&rs)).0, AssignmentPhase::Eligible);
        let (p, v) = ph(&ea, None);
        assert_eq!(p, AssignmentPhase::Invalid);
        assert_eq!(v.unwrap().reason, "RoleSettingNotFound");
        ea.spec.start_time = Some(now + TimeDelta::hours(1));
        assert_eq!(ph(&ea, Some(&rs)).0, AssignmentPhase::Scheduled);
        ea.spec.start_time = Some(now - TimeDelta::hours(2));
        ea.spec.end_time = Some(now - TimeDelta::hours(1));
        assert_eq!(ph(&ea, Some(&rs)).0, AssignmentPhase::Expired);
        ea.spec.end_time = None;
        let unauthorized = phase(
            &ea,
            Some(&rs),
            Err(Violation::new("NotAuthorizedToBind", "no")),
            "kp",
            now,
        );
        assert_eq!(unauthorized.0, AssignmentPhase::Invalid);
        assert_eq!(unauthorized.1.unwrap().reason, "NotAuthorizedToBind");
        let mut active = rs.clone();
        active.spec.assignment.allow_active = true;
        ea.spec.type_ = crate::api::AssignmentType::Active;
        assert_eq!(ph(&ea, Some(&active)).0, AssignmentPhase::Active);
        let (p, v) = ph(&ea, Some(&rs));
        assert_eq!(p, AssignmentPhase::Invalid);
        assert_eq!(v.unwrap().reason, "PolicyViolation");
    }
}
