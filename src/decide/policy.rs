//! What a RoleSetting allows: of a request when it is made (duration, schedule, justification,
//! ticket, MFA, scope) and while it lasts (scope, namespace), and of an assignment. Every
//! message names the problem and the fix, because admission shows it to the user verbatim.

use chrono::{DateTime, TimeDelta, Utc};

use crate::{
    api::{ActivationRequestSpec, AssignmentType, EligibleAssignment, RoleSetting, Scope},
    decide::{Violation, eligibility, human, parse_service_account},
};

/// How a requester proves MFA: a key in the authenticated user's `extra` and accepted values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MfaConfig {
    /// The `userInfo.extra` key (default `kubepim.io/amr`).
    pub key: String,
    /// Values of that key that count as MFA (default `mfa`).
    pub values: Vec<String>,
}

impl Default for MfaConfig {
    fn default() -> Self {
        Self {
            key: "kubepim.io/amr".into(),
            values: vec!["mfa".into()],
        }
    }
}

/// What a request's policy checks need besides the request and its RoleSetting.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    /// The request's namespace.
    pub namespace: &'a str,
    /// The only namespace where Cluster-scope assignments and requests may live.
    pub cluster_scope_namespace: &'a str,
    /// How MFA is proven.
    pub mfa: &'a MfaConfig,
    /// Now.
    pub now: DateTime<Utc>,
}

/// The duration a request asks for: its own, else the RoleSetting's default, else the maximum.
pub fn requested_duration(rs: &RoleSetting, spec: &ActivationRequestSpec) -> TimeDelta {
    let a = &rs.spec.activation;
    spec.duration
        .as_ref()
        .or(a.default_duration.as_ref())
        .unwrap_or(&a.max_duration)
        .as_delta()
}

/// The longest continuous access a chain of extensions may give (default 3x maxDuration).
pub fn max_continuous(rs: &RoleSetting) -> TimeDelta {
    let a = &rs.spec.activation;
    a.max_continuous
        .as_ref()
        .map_or(a.max_duration.as_delta() * 3, |d| d.as_delta())
}

fn rs_name(rs: &RoleSetting) -> &str {
    rs.metadata.name.as_deref().unwrap_or("?")
}

/// Scope and namespace rules shared by requests and assignments.
fn scope_violations(
    rs: &RoleSetting,
    scope: Scope,
    namespace: &str,
    cluster_ns: &str,
    what: &str,
) -> Vec<Violation> {
    let mut v = Vec::new();
    if !rs.spec.scopes.contains(&scope) {
        let allowed: Vec<String> = rs.spec.scopes.iter().map(|s| format!("{s:?}")).collect();
        v.push(Violation::new(
            "ScopeNotAllowed",
            format!(
                "RoleSetting {} does not allow scope {scope:?} (it allows {}): set spec.scope to one of those",
                rs_name(rs),
                allowed.join(", ")
            ),
        ));
    }
    if scope == Scope::Cluster && namespace != cluster_ns {
        v.push(Violation::new(
            "WrongNamespaceForClusterScope",
            format!(
                "Cluster-scope {what} live only in namespace {cluster_ns}: create it there (kubectl -n {cluster_ns}), or use scope Namespace"
            ),
        ));
    }
    v
}

/// Everything the RoleSetting forbids about a request at the time it is made.
pub fn request_violations(
    rs: &RoleSetting,
    spec: &ActivationRequestSpec,
    ctx: &Context<'_>,
) -> Vec<Violation> {
    let name = rs_name(rs);
    let a = &rs.spec.activation;
    let mut v = scope_violations(
        rs,
        spec.scope,
        ctx.namespace,
        ctx.cluster_scope_namespace,
        "requests",
    );

    let duration = requested_duration(rs, spec);
    if duration > a.max_duration.as_delta() {
        v.push(Violation::new(
            "DurationTooLong",
            format!(
                "duration {} exceeds maxDuration {} of RoleSetting {name}: ask for {} or less",
                human(duration),
                a.max_duration,
                a.max_duration
            ),
        ));
    }
    if let Some(start) = spec.start_time {
        let ahead = a.max_schedule_ahead.as_delta();
        if start > ctx.now + ahead {
            v.push(Violation::new(
                "StartTooFarAhead",
                format!(
                    "startTime {} is more than maxScheduleAhead {} ahead (RoleSetting {name}): choose a start before {}",
                    start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    a.max_schedule_ahead,
                    (ctx.now + ahead).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            ));
        }
    }
    let blank = |s: &Option<String>| s.as_deref().is_none_or(|s| s.trim().is_empty());
    if a.require_justification && blank(&spec.justification) {
        v.push(Violation::new(
            "JustificationRequired",
            format!("RoleSetting {name} requires a justification: set spec.justification (kubectl pim activate --reason \"...\")"),
        ));
    }
    if a.require_ticket && blank(&spec.ticket) {
        v.push(Violation::new(
            "TicketRequired",
            format!("RoleSetting {name} requires a ticket: set spec.ticket (kubectl pim activate --ticket ...)"),
        ));
    }
    if let (Some(pattern), Some(ticket)) = (&a.ticket_pattern, &spec.ticket) {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(ticket) => {}
            Ok(_) => v.push(Violation::new(
                "TicketMismatch",
                format!("ticket {ticket:?} does not match ticketPattern {pattern:?} of RoleSetting {name}: give a ticket like the pattern"),
            )),
            Err(_) => v.push(Violation::new(
                "InvalidTicketPattern",
                format!("ticketPattern {pattern:?} of RoleSetting {name} is not a valid regular expression: an administrator must fix the RoleSetting"),
            )),
        }
    }
    if a.require_mfa && !has_mfa(&spec.requester, ctx.mfa) {
        let why = if parse_service_account(&spec.requester.username).is_some() {
            "a ServiceAccount cannot prove MFA"
        } else {
            "your login carries no MFA claim"
        };
        v.push(Violation::new(
            "MFARequired",
            format!("RoleSetting {name} requires MFA and {why}: log in again with MFA (your token's {} must include {})", ctx.mfa.key, ctx.mfa.values.join(" or ")),
        ));
    }
    v
}

/// Whether the requester's authentication carries proof of MFA. ServiceAccounts never do.
pub fn has_mfa(requester: &crate::api::Requester, mfa: &MfaConfig) -> bool {
    parse_service_account(&requester.username).is_none()
        && requester
            .extra
            .get(&mfa.key)
            .is_some_and(|vals| vals.iter().any(|v| mfa.values.contains(v)))
}

/// What the RoleSetting forbids about a request that is already granted: re-checked on every
/// reconcile (scope and namespace). Request-time rules (duration, justification, ticket, MFA)
/// were met when it was made and are not re-judged.
pub fn continuing_violations(
    rs: &RoleSetting,
    spec: &ActivationRequestSpec,
    namespace: &str,
    cluster_ns: &str,
) -> Vec<Violation> {
    scope_violations(rs, spec.scope, namespace, cluster_ns, "requests")
}

/// Everything the RoleSetting forbids about an assignment.
pub fn assignment_violations(
    rs: &RoleSetting,
    ea: &EligibleAssignment,
    namespace: &str,
    cluster_ns: &str,
    now: DateTime<Utc>,
) -> Vec<Violation> {
    let name = rs_name(rs);
    let p = &rs.spec.assignment;
    let mut v: Vec<Violation> =
        scope_violations(rs, ea.spec.scope, namespace, cluster_ns, "assignments")
            .into_iter()
            .map(|x| Violation::new("PolicyViolation", x.message))
            .collect();
    let w = eligibility::window(ea, now);
    match w.end {
        None if !p.allow_permanent => v.push(Violation::new(
            "PolicyViolation",
            format!("RoleSetting {name} does not allow permanent assignments: set spec.endTime"),
        )),
        Some(end) => {
            if let Some(max) = &p.max_duration {
                let len = end - w.start;
                if len > max.as_delta() {
                    v.push(Violation::new(
                        "PolicyViolation",
                        format!(
                            "the window of {} exceeds assignment.maxDuration {max} of RoleSetting {name}: move endTime earlier",
                            human(len)
                        ),
                    ));
                }
            }
        }
        None => {}
    }
    if ea.spec.type_ == AssignmentType::Active && !p.allow_active {
        v.push(Violation::new(
            "PolicyViolation",
            format!("RoleSetting {name} does not allow type Active assignments: use type Eligible, or set assignment.allowActive"),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::test_fixtures::*;

    fn ctx(mfa: &MfaConfig) -> Context<'_> {
        Context {
            namespace: "payments",
            cluster_scope_namespace: "kube-pim-system",
            mfa,
            now: t0(),
        }
    }

    fn reasons(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|x| x.reason).collect()
    }

    #[test]
    fn a_plain_request_is_allowed() {
        let rs = role_setting("namespace-admin");
        let req = request("r", "payments", "namespace-admin", requester("alice", &[]));
        assert!(request_violations(&rs, &req.spec, &ctx(&MfaConfig::default())).is_empty());
    }

    #[test]
    fn duration_over_max_names_the_limit_and_the_role_setting() {
        let mut rs = role_setting("namespace-admin");
        rs.spec.activation.max_duration = "2h".parse().unwrap();
        let mut req = request("r", "payments", "namespace-admin", requester("alice", &[]));
        req.spec.duration = Some("3h".parse().unwrap());
        let v = request_violations(&rs, &req.spec, &ctx(&MfaConfig::default()));
        assert_eq!(
            v[0].message,
            "duration 3h exceeds maxDuration 2h of RoleSetting namespace-admin: ask for 2h or less"
        );
        req.spec.duration = Some("2h".parse().unwrap());
        assert!(request_violations(&rs, &req.spec, &ctx(&MfaConfig::default())).is_empty());
    }

    #[test]
    fn duration_defaults_to_default_then_max() {
        let mut rs = role_setting("rs");
        let mut req = request("r", "payments", "rs", requester("alice", &[]));
        req.spec.duration = None;
        assert_eq!(requested_duration(&rs, &req.spec), TimeDelta::hours(1));
        rs.spec.activation.default_duration = Some("30m".parse().unwrap());
        assert_eq!(requested_duration(&rs, &req.spec), TimeDelta::minutes(30));
        req.spec.duration = Some("45m".parse().unwrap());
        assert_eq!(requested_duration(&rs, &req.spec), TimeDelta::minutes(45));
    }

    #[test]
    fn max_continuous_defaults_to_three_times_max_duration() {
        let mut rs = role_setting("rs");
        assert_eq!(max_continuous(&rs), TimeDelta::hours(3));
        rs.spec.activation.max_continuous = Some("8h".parse().unwrap());
        assert_eq!(max_continuous(&rs), TimeDelta::hours(8));
    }

    #[test]
    fn schedule_ahead_is_bounded() {
        let rs = role_setting("rs");
        let mut req = request("r", "payments", "rs", requester("alice", &[]));
        req.spec.start_time = Some(t0() + TimeDelta::hours(25));
        let v = request_violations(&rs, &req.spec, &ctx(&MfaConfig::default()));
        assert_eq!(reasons(&v), ["StartTooFarAhead"]);
        assert!(
            v[0].message
                .contains("choose a start before 2026-12-02T12:00:00Z"),
            "{}",
            v[0]
        );
        req.spec.start_time = Some(t0() + TimeDelta::hours(24));
        assert!(request_violations(&rs, &req.spec, &ctx(&MfaConfig::default())).is_empty());
    }

    #[test]
    fn justification_and_ticket() {
        let mut rs = role_setting("rs");
        let mut req = request("r", "payments", "rs", requester("alice", &[]));
        req.spec.justification = Some("   ".into());
        assert_eq!(
            reasons(&request_violations(
                &rs,
                &req.spec,
                &ctx(&MfaConfig::default())
            )),
            ["JustificationRequired"]
        );
        rs.spec.activation.require_justification = false;
        rs.spec.activation.require_ticket = true;
        assert_eq!(
            reasons(&request_violations(
                &rs,
                &req.spec,
                &ctx(&MfaConfig::default())
            )),
            ["TicketRequired"]
        );
        rs.spec.activation.ticket_pattern = Some("^INC-[0-9]+$".into());
        req.spec.ticket = Some("JIRA-1".into());
        let v = request_violations(&rs, &req.spec, &ctx(&MfaConfig::default()));
        assert_eq!(reasons(&v), ["TicketMismatch"]);
        assert!(v[0].message.contains("give a ticket like the pattern"));
        req.spec.ticket = Some("INC-4711".into());
        assert!(request_violations(&rs, &req.spec, &ctx(&MfaConfig::default())).is_empty());
        // The pattern applies whenever a ticket is given, even if none is required.
        rs.spec.activation.require_ticket = false;
        req.spec.ticket = Some("nope".into());
        assert_eq!(
            reasons(&request_violations(
                &rs,
                &req.spec,
                &ctx(&MfaConfig::default())
            )),
            ["TicketMismatch"]
        );
        rs.spec.activation.ticket_pattern = Some("([".into());
        assert_eq!(
            reasons(&request_violations(
                &rs,
                &req.spec,
                &ctx(&MfaConfig::default())
            )),
            ["InvalidTicketPattern"]
        );
    }

    #[test]
    fn mfa_needs_the_claim_and_service_accounts_never_have_it() {
        let mut rs = role_setting("rs");
        rs.spec.activation.require_mfa = true;
        let mfa = MfaConfig::default();
        let mut who = requester("alice", &[]);
        let req = |who: &crate::api::Requester| request("r", "payments", "rs", who.clone());
        assert_eq!(
            reasons(&request_violations(&rs, &req(&who).spec, &ctx(&mfa))),
            ["MFARequired"]
        );
        who.extra
            .insert("kubepim.io/amr".into(), vec!["pwd".into()]);
        assert_eq!(
            reasons(&request_violations(&rs, &req(&who).spec, &ctx(&mfa))),
            ["MFARequired"]
        );
        who.extra
            .insert("kubepim.io/amr".into(), vec!["pwd".into(), "mfa".into()]);
        assert!(request_violations(&rs, &req(&who).spec, &ctx(&mfa)).is_empty());
        let mut sa = requester("system:serviceaccount:ci:bot", &[]);
        sa.extra.insert("kubepim.io/amr".into(), vec!["mfa".into()]);
        let v = request_violations(&rs, &req(&sa).spec, &ctx(&mfa));
        assert_eq!(reasons(&v), ["MFARequired"]);
        assert!(v[0].message.contains("a ServiceAccount cannot prove MFA"));
    }

    #[test]
    fn scope_and_cluster_scope_namespace() {
        let mut rs = role_setting("rs");
        let mut req = request("r", "payments", "rs", requester("alice", &[]));
        req.spec.scope = Scope::Cluster;
        let v = request_violations(&rs, &req.spec, &ctx(&MfaConfig::default()));
        assert_eq!(
            reasons(&v),
            ["ScopeNotAllowed", "WrongNamespaceForClusterScope"]
        );
        assert!(v[1].message.contains("kubectl -n kube-pim-system"));
        rs.spec.scopes = vec![Scope::Namespace, Scope::Cluster];
        let mfa = MfaConfig::default();
        let mut c = ctx(&mfa);
        c.namespace = "kube-pim-system";
        assert!(request_violations(&rs, &req.spec, &c).is_empty());
        assert!(
            continuing_violations(&rs, &req.spec, "kube-pim-system", "kube-pim-system").is_empty()
        );
        rs.spec.scopes = vec![Scope::Namespace];
        assert_eq!(
            reasons(&continuing_violations(
                &rs,
                &req.spec,
                "kube-pim-system",
                "kube-pim-system"
            )),
            ["ScopeNotAllowed"]
        );
    }

    #[test]
    fn assignment_rules() {
        let now = t0();
        let mut rs = role_setting("rs");
        let mut ea = assignment("a", "payments", "rs", user("alice"));
        assert!(assignment_violations(&rs, &ea, "payments", "kp", now).is_empty());
        rs.spec.assignment.allow_permanent = false;
        let v = assignment_violations(&rs, &ea, "payments", "kp", now);
        assert!(
            v[0].message
                .contains("does not allow permanent assignments: set spec.endTime")
        );
        ea.spec.start_time = Some(now);
        ea.spec.end_time = Some(now + TimeDelta::days(30));
        assert!(assignment_violations(&rs, &ea, "payments", "kp", now).is_empty());
        rs.spec.assignment.max_duration = Some("168h".parse().unwrap());
        let v = assignment_violations(&rs, &ea, "payments", "kp", now);
        assert!(
            v[0].message.contains("exceeds assignment.maxDuration 168h"),
            "{}",
            v[0]
        );
        ea.spec.end_time = Some(now + TimeDelta::days(7));
        assert!(assignment_violations(&rs, &ea, "payments", "kp", now).is_empty());
        ea.spec.type_ = AssignmentType::Active;
        assert!(
            assignment_violations(&rs, &ea, "payments", "kp", now)[0]
                .message
                .contains("set assignment.allowActive")
        );
        ea.spec.type_ = AssignmentType::Eligible;
        ea.spec.scope = Scope::Cluster;
        let v = assignment_violations(&rs, &ea, "payments", "kp", now);
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|x| x.reason == "PolicyViolation"));
    }
}
