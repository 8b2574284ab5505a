//! What `kubectl pim` shows, as pure functions of the objects it read and `now`: which
//! assignments the caller may use, which requests the caller may decide, table rows, CSV, and
//! the one-line progress of a request. No IO here, so all of it is unit tested.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use serde::Serialize;

use crate::{
    api::{
        ActivationRequest, ApprovalDecision, Approver, AssignmentPhase, AssignmentType,
        EligibleAssignment, RequestPhase, Requester, RoleSetting, Scope, SubjectKind,
    },
    decide::{
        approval, eligibility, human,
        request::{CONDITION_ACTIVE, CONDITION_APPROVED, is_terminal},
    },
};

/// The caller as the apiserver authenticated them (from a SelfSubjectReview).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// User name.
    pub username: String,
    /// UID, when the authenticator sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (e.g. the MFA claim).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Me {
    /// The caller as a requester (what admission will stamp on their requests).
    pub fn requester(&self) -> Requester {
        Requester {
            username: self.username.clone(),
            uid: self.uid.clone(),
            groups: self.groups.clone(),
            extra: self.extra.clone().into(),
        }
    }

    /// The identities under which the caller's approval would be recorded: as themselves,
    /// and through each of their groups.
    pub fn approver_identities(&self) -> Vec<Approver> {
        std::iter::once(None)
            .chain(self.groups.iter().map(Some))
            .map(|g| Approver {
                username: self.username.clone(),
                uid: self.uid.clone(),
                via_group: g.cloned(),
            })
            .collect()
    }

    /// A prefix for generated request names: the user (or ServiceAccount) name, made a valid
    /// DNS label.
    pub fn name_prefix(&self) -> String {
        let base = crate::decide::parse_service_account(&self.username)
            .map(|(_, n)| n)
            .unwrap_or(&self.username);
        let mut s: String = base
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        s.truncate(40);
        let s = s.trim_matches('-');
        if s.is_empty() {
            "pim-".into()
        } else {
            format!("{s}-")
        }
    }
}

/// One thing the caller may activate.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Eligibility {
    /// Where the request goes.
    pub namespace: String,
    /// The EligibleAssignment.
    pub assignment: String,
    /// The RoleSetting to name in the request.
    pub role_setting: String,
    /// Namespace or Cluster.
    pub scope: Scope,
    /// The ClusterRoles it grants.
    pub roles: Vec<String>,
    /// `Eligible` (activate it), `Active` (standing, nothing to activate), or the
    /// assignment's phase when it is not usable yet.
    pub status: String,
    /// Until when the assignment lasts (absent: permanent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// The policy, when the RoleSetting could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySummary>,
    /// The command that activates it.
    pub activate: String,
}

/// What a RoleSetting asks of an activation.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySummary {
    /// Longest activation.
    pub max_duration: String,
    /// Duration when the request names none.
    pub default_duration: String,
    /// Whether approval is needed.
    pub approval_required: bool,
    /// Approvals needed.
    pub min_approvals: i32,
    /// Who may approve, as `kind:name`.
    pub approvers: Vec<String>,
    /// A justification is required.
    pub require_justification: bool,
    /// A ticket is required.
    pub require_ticket: bool,
    /// MFA is required.
    #[serde(rename = "requireMFA")]
    pub require_mfa: bool,
}

impl PolicySummary {
    /// The policy of `rs`.
    pub fn of(rs: &RoleSetting) -> Self {
        let a = &rs.spec.activation;
        Self {
            max_duration: a.max_duration.to_string(),
            default_duration: a
                .default_duration
                .as_ref()
                .unwrap_or(&a.max_duration)
                .to_string(),
            approval_required: rs.spec.approval.required,
            min_approvals: rs.spec.approval.min_approvals,
            approvers: rs
                .spec
                .approval
                .approvers
                .iter()
                .map(|s| match (s.kind, &s.namespace) {
                    (SubjectKind::ServiceAccount, Some(ns)) => {
                        format!("ServiceAccount:{ns}/{}", s.name)
                    }
                    (k, _) => format!("{k:?}:{}", s.name),
                })
                .collect(),
            require_justification: a.require_justification,
            require_ticket: a.require_ticket,
            require_mfa: a.require_mfa,
        }
    }

    /// `none`, or `1 of User:bob, Group:sre-leads`.
    pub fn approval_text(&self) -> String {
        if self.approval_required {
            format!("{} of {}", self.min_approvals, self.approvers.join(", "))
        } else {
            "none".into()
        }
    }

    /// What the request must carry: `justification, ticket, MFA`, or `-`.
    pub fn needs_text(&self) -> String {
        let needs: Vec<&str> = [
            (self.require_justification, "justification"),
            (self.require_ticket, "ticket"),
            (self.require_mfa, "MFA"),
        ]
        .into_iter()
        .filter_map(|(on, what)| on.then_some(what))
        .collect();
        if needs.is_empty() {
            "-".into()
        } else {
            needs.join(", ")
        }
    }
}

/// The assignments `me` may use now or later (not expired, subject matching), with their
/// RoleSetting's policy, sorted by namespace and RoleSetting.
pub fn eligibilities(
    me: &Me,
    assignments: &[EligibleAssignment],
    role_settings: &BTreeMap<String, RoleSetting>,
    now: DateTime<Utc>,
) -> Vec<Eligibility> {
    let requester = me.requester();
    let mut out: Vec<Eligibility> = assignments
        .iter()
        .filter(|ea| eligibility::subject_matches(&ea.spec.subject, &requester))
        .filter(|ea| eligibility::window(ea, now).end.is_none_or(|end| end > now))
        .map(|ea| {
            let namespace = ea.namespace().unwrap_or_default();
            let rs = role_settings.get(&ea.spec.role_setting);
            let phase = ea.status.as_ref().and_then(|s| s.phase);
            let status = match (ea.spec.type_, phase) {
                (_, Some(AssignmentPhase::Invalid)) => "Invalid".to_string(),
                (_, Some(AssignmentPhase::Scheduled)) => "Scheduled".to_string(),
                (_, Some(AssignmentPhase::Expired)) => "Expired".to_string(),
                (AssignmentType::Active, _) => "Active (standing)".to_string(),
                (AssignmentType::Eligible, _) => "Eligible".to_string(),
            };
            let scope_flag = match ea.spec.scope {
                Scope::Cluster => " --scope Cluster",
                Scope::Namespace => "",
            };
            Eligibility {
                activate: format!(
                    "kubectl pim activate {} -n {namespace}{scope_flag} --reason '...'",
                    ea.spec.role_setting
                ),
                namespace,
                assignment: ea.name_any(),
                role_setting: ea.spec.role_setting.clone(),
                scope: ea.spec.scope,
                roles: rs
                    .map(|rs| rs.spec.role_refs.iter().map(|r| r.name.clone()).collect())
                    .unwrap_or_default(),
                status,
                until: eligibility::window(ea, now).end,
                policy: rs.map(PolicySummary::of),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.namespace, &a.role_setting, &a.assignment).cmp(&(
            &b.namespace,
            &b.role_setting,
            &b.assignment,
        ))
    });
    out
}

/// Whether `me` may decide `req` now: it is Pending, `me` is an approver of its RoleSetting
/// (as themselves or through a group), is not the requester, and has not decided it yet.
pub fn may_decide(me: &Me, req: &ActivationRequest, rs: &RoleSetting) -> bool {
    let status = req.status.as_ref();
    if status.and_then(|s| s.phase) != Some(RequestPhase::Pending) {
        return false;
    }
    let already = status
        .and_then(|s| s.approvals.as_ref())
        .is_some_and(|a| a.iter().any(|a| a.approver.username == me.username));
    rs.spec.approval.required
        && !already
        && me.approver_identities().iter().any(|a| {
            !approval::is_requester(a, &req.spec.requester)
                && approval::is_listed(&rs.spec.approval, a)
        })
}

/// `(approved, needed)` for a request under its RoleSetting, as recorded (the operator's
/// count, which also applies separation of duties, is in the Approved condition).
pub fn approvals_text(req: &ActivationRequest, rs: Option<&RoleSetting>) -> String {
    let approved = req
        .status
        .as_ref()
        .and_then(|s| s.approvals.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.decision == ApprovalDecision::Approved)
                .count()
        })
        .unwrap_or(0);
    match rs {
        Some(rs) if rs.spec.approval.required => {
            format!("{approved}/{}", rs.spec.approval.min_approvals)
        }
        Some(_) => "-".into(),
        None => format!("{approved}/?"),
    }
}

/// `in 43m`, `12m ago`, or `-`.
pub fn relative(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        None => "-".into(),
        Some(t) if t >= now => format!("in {}", human(t - now)),
        Some(t) => format!("{} ago", human(now - t)),
    }
}

/// When a request's access ends (`in 43m`), or when it ended (`ended 2m ago`, from its last
/// transition: a deactivated request ended before its expirationTime).
pub fn expires_text(req: &ActivationRequest, now: DateTime<Utc>) -> String {
    let Some(st) = req.status.as_ref() else {
        return "-".into();
    };
    match st.phase {
        Some(p) if is_terminal(p) => st
            .history
            .last()
            .map(|h| format!("ended {}", relative(Some(h.time), now)))
            .unwrap_or_else(|| "ended".into()),
        _ => relative(st.expiration_time, now),
    }
}

/// The age of an object, like kubectl's AGE column (`5m`, `2h3m`).
pub fn age(req_created: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    req_created
        .map(|t| human((now - t).max(chrono::TimeDelta::zero())))
        .unwrap_or_else(|| "-".into())
}

/// A request's phase as text (`-` before the operator has seen it).
pub fn phase_text(req: &ActivationRequest) -> String {
    req.status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "-".into())
}

/// One line saying where a request stands and what it waits for.
pub fn progress(req: &ActivationRequest) -> String {
    let Some(status) = req.status.as_ref() else {
        return "submitted; waiting for kube-pim to pick it up".into();
    };
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.message.clone())
            .filter(|m| !m.is_empty())
    };
    let last = || status.history.last().and_then(|h| h.message.clone());
    let Some(phase) = status.phase else {
        return "submitted; waiting for kube-pim to pick it up".into();
    };
    let detail = match phase {
        RequestPhase::Pending => condition(CONDITION_APPROVED),
        RequestPhase::Scheduled => status
            .activation_time
            .map(|t| format!("access starts at {}", t.to_rfc3339()))
            .or_else(|| condition(CONDITION_APPROVED)),
        RequestPhase::Active => status.expiration_time.map(|t| {
            let bindings: Vec<String> = status
                .bindings
                .iter()
                .map(|b| match &b.namespace {
                    Some(ns) => format!("{:?} {ns}/{}", b.kind, b.name),
                    None => format!("{:?} {}", b.kind, b.name),
                })
                .collect();
            format!(
                "access until {} ({})",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                bindings.join(", ")
            )
        }),
        _ => last().or_else(|| condition(CONDITION_ACTIVE)),
    };
    match detail {
        Some(d) => format!("{phase:?}: {d}"),
        None => format!("{phase:?}"),
    }
}

/// Whether waiting is over: Active, or a phase it can no longer leave for Active.
pub fn wait_is_over(phase: Option<RequestPhase>) -> bool {
    phase.is_some_and(|p| p == RequestPhase::Active || is_terminal(p))
}

/// A plain-text table: left-aligned columns three spaces apart, like kubectl. When `width`
/// is given (a terminal), the last column is shortened with `…` so rows fit.
pub fn table(header: &[&str], rows: &[Vec<String>], width: Option<usize>) -> String {
    // Cells hold what requesters wrote (justifications): control characters could move the
    // cursor or recolour the terminal and make an approver read something else.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let rows = &rows;
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let last_budget = width.map(|w| {
        let fixed: usize = widths[..cols - 1].iter().map(|w| w + 3).sum();
        w.saturating_sub(fixed)
            .max(header[cols - 1].chars().count())
            .max(8)
    });
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cols {
                l.push_str(&last_budget.map_or_else(|| c.to_string(), |b| short(c, b)));
            } else {
                l.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `s` with line breaks and tabs as spaces and other control characters as `?`.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '?',
            // Bidirectional overrides and invisible characters can make text read as
            // something else.
            '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}' => '?',
            c => c,
        })
        .collect()
}

/// RFC 4180 CSV: a header and one line per row, fields quoted when they need it.
pub fn csv(header: &[&str], rows: &[Vec<String>]) -> String {
    let field = |f: &str| {
        if f.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_string()
        }
    };
    let mut out = String::new();
    for r in std::iter::once(header.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .chain(rows.iter().cloned())
    {
        out.push_str(&r.iter().map(|f| field(f)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out
}

/// Splits `[NAMESPACE/]NAME[@UID]` (as `pending` and notifications print it): the namespace
/// (else `default_ns`), the name, and the uid (or a prefix of it) the person saw.
pub fn target<'a>(arg: &'a str, default_ns: &'a str) -> (&'a str, &'a str, Option<&'a str>) {
    let (rest, uid) = match arg.split_once('@') {
        Some((r, u)) if !u.is_empty() => (r, Some(u)),
        _ => (arg, None),
    };
    match rest.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => (ns, name, uid),
        _ => (default_ns, rest, uid),
    }
}

/// `NAMESPACE/NAME@<first 8 characters of the uid>`: what an approver copies into `approve`,
/// so a request deleted and re-created under the same name is not the one decided.
pub fn request_ref(req: &ActivationRequest) -> String {
    let uid = req.metadata.uid.as_deref().unwrap_or_default();
    format!(
        "{}/{}@{}",
        req.metadata.namespace.as_deref().unwrap_or_default(),
        req.metadata.name.as_deref().unwrap_or_default(),
        uid.chars().take(8).collect::<String>()
    )
}

/// One line saying what a decision was about (printed after approving or denying it).
pub fn decided_about(req: &ActivationRequest, rs: Option<&RoleSetting>) -> String {
    let duration = rs
        .map(|rs| human(crate::decide::policy::requested_duration(rs, &req.spec)))
        .or_else(|| req.spec.duration.as_ref().map(|d| d.to_string()))
        .unwrap_or_else(|| "?".into());
    printable(&format!(
        "{} asked for {} ({:?} scope) for {duration}: {}",
        req.spec.requester.username,
        req.spec.role_setting,
        req.spec.scope,
        req.spec
            .justification
            .as_deref()
            .unwrap_or("(no justification)")
    ))
}

/// Whether `req` belongs to the caller (the requester stamped by admission).
pub fn is_mine(me: &Me, req: &ActivationRequest) -> bool {
    req.spec.requester.username == me.username
}

/// A request's time of creation.
pub fn created(req: &ActivationRequest) -> Option<DateTime<Utc>> {
    req.metadata
        .creation_timestamp
        .as_ref()
        .map(crate::time::from_k8s)
}

/// Truncates `s` to at most `n` characters for a table cell.
pub fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!(
            "{}…",
            s.chars().take(n.saturating_sub(1)).collect::<String>()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{
            ActivationRequestStatus, ApprovalPolicy, EligibleAssignmentStatus, HistoryAction,
            HistoryEntry,
        },
        decide::test_fixtures::*,
    };

    fn me(name: &str, groups: &[&str]) -> Me {
        Me {
            username: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    fn pending(req: &mut ActivationRequest) {
        req.status = Some(ActivationRequestStatus {
            phase: Some(RequestPhase::Pending),
            approvals: Some(vec![]),
            ..Default::default()
        });
    }

    #[test]
    fn eligible_lists_only_assignments_of_the_caller_with_their_policy() {
        let rs = with_approval(role_setting("ns-admin"), vec![group("leads")], 1);
        let rss = BTreeMap::from([("ns-admin".to_string(), rs)]);
        let mine = assignment("a", "payments", "ns-admin", user("alice"));
        let via_group = assignment("b", "orders", "ns-admin", group("team"));
        let other = assignment("c", "payments", "ns-admin", user("bob"));
        let mut expired = assignment("d", "payments", "ns-admin", user("alice"));
        expired.spec.end_time = Some(t0() - chrono::TimeDelta::hours(1));
        let got = eligibilities(
            &me("alice", &["team"]),
            &[other, expired, via_group, mine],
            &rss,
            t0(),
        );
        let names: Vec<&str> = got.iter().map(|e| e.assignment.as_str()).collect();
        assert_eq!(
            names,
            ["b", "a"],
            "sorted by namespace; bob's and expired left out"
        );
        let p = got[1].policy.as_ref().unwrap();
        assert_eq!(p.approval_text(), "1 of Group:leads");
        assert_eq!(got[1].status, "Eligible");
        assert_eq!(
            got[1].activate,
            "kubectl pim activate ns-admin -n payments --reason '...'"
        );
    }

    #[test]
    fn eligible_shows_invalid_and_standing_assignments_for_what_they_are() {
        let mut invalid = assignment("a", "payments", "gone", user("alice"));
        invalid.status = Some(EligibleAssignmentStatus {
            phase: Some(AssignmentPhase::Invalid),
            ..Default::default()
        });
        let mut standing = assignment("b", "payments", "gone", user("alice"));
        standing.spec.type_ = AssignmentType::Active;
        let got = eligibilities(
            &me("alice", &[]),
            &[invalid, standing],
            &BTreeMap::new(),
            t0(),
        );
        assert_eq!(got[0].status, "Invalid");
        assert_eq!(got[1].status, "Active (standing)");
        assert!(
            got[0].policy.is_none(),
            "a missing RoleSetting has no policy"
        );
    }

    #[test]
    fn pending_shows_what_the_caller_may_decide_and_nothing_else() {
        let rs = with_approval(
            role_setting("ns-admin"),
            vec![group("leads"), user("carol")],
            1,
        );
        let mut req = request("r", "payments", "ns-admin", requester("alice", &["leads"]));
        pending(&mut req);
        assert!(
            may_decide(&me("bob", &["leads"]), &req, &rs),
            "group approver"
        );
        assert!(may_decide(&me("carol", &[]), &req, &rs), "named approver");
        assert!(
            !may_decide(&me("alice", &["leads"]), &req, &rs),
            "never the requester"
        );
        assert!(
            !may_decide(&me("mallory", &["x"]), &req, &rs),
            "not an approver"
        );
        let mut decided = req.clone();
        decided
            .status
            .as_mut()
            .unwrap()
            .approvals
            .as_mut()
            .unwrap()
            .push(approval("bob", ApprovalDecision::Approved, Some("leads")));
        assert!(
            !may_decide(&me("bob", &["leads"]), &decided, &rs),
            "decided once"
        );
        let mut active = req.clone();
        active.status.as_mut().unwrap().phase = Some(RequestPhase::Active);
        assert!(
            !may_decide(&me("bob", &["leads"]), &active, &rs),
            "only Pending"
        );
        let mut none = rs.clone();
        none.spec.approval = ApprovalPolicy::default();
        assert!(!may_decide(&me("bob", &["leads"]), &req, &none));
    }

    #[test]
    fn service_accounts_decide_only_where_the_policy_allows() {
        let mut rs = with_approval(role_setting("x"), vec![service_account("ci", "bot")], 1);
        let mut req = request("r", "payments", "x", requester("alice", &[]));
        pending(&mut req);
        let bot = me("system:serviceaccount:ci:bot", &[]);
        assert!(!may_decide(&bot, &req, &rs));
        rs.spec.approval.allow_service_account_approvers = true;
        assert!(may_decide(&bot, &req, &rs));
        assert_eq!(bot.name_prefix(), "bot-");
    }

    #[test]
    fn name_prefixes_are_dns_labels() {
        assert_eq!(
            me("Alice@Example.com", &[]).name_prefix(),
            "alice-example-com-"
        );
        assert_eq!(me("::", &[]).name_prefix(), "pim-");
        assert!(me(&"x".repeat(100), &[]).name_prefix().len() <= 41);
    }

    #[test]
    fn tables_align_and_fit_the_terminal() {
        let rows = vec![
            vec!["a".into(), "short".into()],
            vec!["longer".into(), "a very long justification indeed".into()],
        ];
        let t = table(&["NAME", "REASON"], &rows, None);
        assert_eq!(
            t,
            "NAME     REASON\na        short\nlonger   a very long justification indeed\n"
        );
        let t = table(&["NAME", "REASON"], &rows, Some(20));
        for l in t.lines() {
            assert!(l.chars().count() <= 20, "{l:?} is wider than 20");
        }
        assert!(t.contains('…'));
    }

    #[test]
    fn tables_show_no_terminal_control_sequences() {
        let rows = vec![vec![
            "r".into(),
            "ok\u{1b}[2K\rAPPROVED by cto\nline".into(),
        ]];
        let t = table(&["NAME", "REASON"], &rows, None);
        assert!(
            !t.contains('\u{1b}') && !t.contains('\r') && !t.contains('\u{202e}'),
            "{t:?}"
        );
        assert_eq!(t.lines().count(), 2, "one line per row: {t:?}");
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let got = csv(
            &["a", "b"],
            &[
                vec!["x,y".into(), "say \"hi\"".into()],
                vec!["1".into(), "2".into()],
            ],
        );
        assert_eq!(got, "a,b\r\n\"x,y\",\"say \"\"hi\"\"\"\r\n1,2\r\n");
    }

    #[test]
    fn targets_take_namespace_slash_name_at_uid() {
        assert_eq!(target("orders/r1", "default"), ("orders", "r1", None));
        assert_eq!(target("r1", "default"), ("default", "r1", None));
        assert_eq!(target("/r1", "default"), ("default", "/r1", None));
        assert_eq!(
            target("orders/r1@3f2a9c1b", "default"),
            ("orders", "r1", Some("3f2a9c1b"))
        );
        assert_eq!(target("r1@", "default"), ("default", "r1@", None));
        let mut req = request("r1", "orders", "x", requester("alice", &[]));
        req.metadata.uid = Some("3f2a9c1b-aaaa".into());
        assert_eq!(request_ref(&req), "orders/r1@3f2a9c1b");
    }

    #[test]
    fn progress_says_what_a_request_waits_for() {
        let mut req = request("r", "payments", "x", requester("alice", &[]));
        req.status = None;
        assert!(progress(&req).starts_with("submitted"));
        pending(&mut req);
        let s = req.status.as_mut().unwrap();
        crate::decide::request::set_condition(
            &mut s.conditions,
            CONDITION_APPROVED,
            false,
            "Pending",
            "waiting for 1 more approval",
            t0(),
            None,
        );
        assert_eq!(progress(&req), "Pending: waiting for 1 more approval");
        let s = req.status.as_mut().unwrap();
        s.phase = Some(RequestPhase::Denied);
        s.history.push(HistoryEntry {
            seq: 2,
            time: t0(),
            actor: "bob".into(),
            action: HistoryAction::Denied,
            message: Some("denied by bob: not now".into()),
        });
        assert_eq!(progress(&req), "Denied: denied by bob: not now");
        assert!(wait_is_over(Some(RequestPhase::Denied)));
        assert!(wait_is_over(Some(RequestPhase::Active)));
        assert!(!wait_is_over(Some(RequestPhase::Scheduled)));
        assert!(!wait_is_over(None));
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = t0();
        assert_eq!(
            relative(Some(now + chrono::TimeDelta::minutes(43)), now),
            "in 43m"
        );
        assert_eq!(
            relative(Some(now - chrono::TimeDelta::hours(2)), now),
            "2h ago"
        );
        assert_eq!(relative(None, now), "-");
        let mut req = request("r", "payments", "x", requester("alice", &[]));
        req.status = Some(ActivationRequestStatus {
            phase: Some(RequestPhase::Deactivated),
            expiration_time: Some(now + chrono::TimeDelta::hours(1)),
            history: vec![HistoryEntry {
                seq: 4,
                time: now - chrono::TimeDelta::minutes(2),
                actor: "alice".into(),
                action: HistoryAction::Deactivated,
                message: None,
            }],
            ..Default::default()
        });
        assert_eq!(expires_text(&req, now), "ended 2m ago");
        req.status.as_mut().unwrap().phase = Some(RequestPhase::Active);
        assert_eq!(expires_text(&req, now), "in 1h");
        assert_eq!(short("abcdef", 4), "abc…");
    }
}
