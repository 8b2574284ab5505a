//! What a notification says, as pure functions: which event a history transition is, its
//! idempotency key, and its body as CloudEvents 1.0 structured JSON or Slack-compatible JSON,
//! with the optional HMAC-SHA256 signature of that body.

use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{
    ActivationRequest, HistoryAction, HistoryEntry, NotificationEvent, NotificationFormat, Scope,
};

/// The header that carries the signature: `sha256=<hex of HMAC-SHA256(key, body)>`.
pub const SIGNATURE_HEADER: &str = "x-kube-pim-signature-256";

/// One notification, before it is rendered for a receiver.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The event.
    #[serde(skip)]
    pub event: NotificationEvent,
    /// The idempotency key: `<request uid>/<seq>` for a transition (the audit record's id),
    /// `<uid>/expiring` and `<uid>/residual` for the others.
    #[serde(skip)]
    pub id: String,
    /// When it happened.
    #[serde(skip)]
    pub time: DateTime<Utc>,
    /// The request's namespace.
    pub namespace: String,
    /// The request's name.
    pub name: String,
    /// The request's uid.
    pub uid: String,
    /// The RoleSetting.
    pub role_setting: String,
    /// Namespace or Cluster.
    pub scope: Scope,
    /// Who asked.
    pub requester: String,
    /// The history action behind it (e.g. `Deactivated` for a Revoked event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<HistoryAction>,
    /// Who caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// What happened, in words.
    pub message: String,
    /// When access ends (Activated, Expiring).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<DateTime<Utc>>,
    /// The justification the requester gave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// The ticket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// For Requested with approval required: the command an approver runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approve_command: Option<String>,
}

/// The event a history action announces, if any. Access withdrawn before its expiry is
/// Revoked whatever withdrew it (the action says which); requests that end without ever
/// granting access (Canceled, TimedOut, Failed) and bookkeeping transitions announce nothing.
pub fn event_of(action: HistoryAction) -> Option<NotificationEvent> {
    use HistoryAction as A;
    use NotificationEvent as E;
    match action {
        A::Requested => Some(E::Requested),
        A::Approved => Some(E::Approved),
        A::Denied => Some(E::Denied),
        A::Activated => Some(E::Activated),
        A::Expired => Some(E::Expired),
        A::Revoked | A::Deactivated => Some(E::Revoked),
        A::Scheduled
        | A::AssignmentSwitched
        | A::TimedOut
        | A::Canceled
        | A::Superseded
        | A::Failed => None,
    }
}

fn base(
    req: &ActivationRequest,
    event: NotificationEvent,
    id: String,
    time: DateTime<Utc>,
) -> Notification {
    Notification {
        event,
        id,
        time,
        namespace: req.metadata.namespace.clone().unwrap_or_default(),
        name: req.metadata.name.clone().unwrap_or_default(),
        uid: req.metadata.uid.clone().unwrap_or_default(),
        role_setting: req.spec.role_setting.clone(),
        scope: req.spec.scope,
        requester: req.spec.requester.username.clone(),
        action: None,
        actor: None,
        message: String::new(),
        expiration_time: req.status.as_ref().and_then(|s| s.expiration_time),
        justification: req.spec.justification.clone(),
        ticket: req.spec.ticket.clone(),
        approve_command: None,
    }
}

/// The notification for a history entry of `req` (None when the action announces nothing).
/// `approval_required`: whether the RoleSetting needs approval (Requested then tells
/// approvers how to decide).
pub fn from_transition(
    req: &ActivationRequest,
    entry: &HistoryEntry,
    approval_required: bool,
) -> Option<Notification> {
    let event = event_of(entry.action)?;
    let mut n = base(
        req,
        event,
        format!("{}/{}", uid(req), entry.seq),
        entry.time,
    );
    n.action = Some(entry.action);
    n.actor = Some(entry.actor.clone());
    n.message = entry.message.clone().unwrap_or_default();
    if event == NotificationEvent::Requested && approval_required {
        // With the uid: the command approves this request, not one re-created under its name.
        n.approve_command = Some(format!(
            "kubectl pim approve {}/{}@{} --reason '...'",
            n.namespace, n.name, n.uid
        ));
    }
    Some(n)
}

/// The Expiring notification of an Active request (once per request: the key is fixed).
pub fn expiring(req: &ActivationRequest, now: DateTime<Utc>) -> Notification {
    expiring_at(expiring_of(req), now)
}

/// All of `req`'s Expiring notification but its time and message: what its timer keeps until
/// then, rather than the whole request (with thousands of requests Active, their timers held
/// a copy of each).
pub fn expiring_of(req: &ActivationRequest) -> Notification {
    base(
        req,
        NotificationEvent::Expiring,
        format!("{}/expiring", uid(req)),
        DateTime::UNIX_EPOCH,
    )
}

/// [`expiring_of`]'s notification as sent at `now`.
pub fn expiring_at(mut n: Notification, now: DateTime<Utc>) -> Notification {
    n.time = now;
    let left = n
        .expiration_time
        .map(|t| crate::decide::human((t - now).max(chrono::TimeDelta::zero())))
        .unwrap_or_default();
    n.message = format!(
        "{}'s access to {} ends in {left}: extend it with kubectl pim extend {}/{} --for 30m",
        n.requester, n.role_setting, n.namespace, n.name
    );
    n
}

/// The ResidualAccess notification after a revocation that left permissions behind.
pub fn residual(req: &ActivationRequest, message: &str, now: DateTime<Utc>) -> Notification {
    let mut n = base(
        req,
        NotificationEvent::ResidualAccess,
        format!("{}/residual", uid(req)),
        now,
    );
    n.message = message.to_string();
    n
}

fn uid(req: &ActivationRequest) -> &str {
    req.metadata.uid.as_deref().unwrap_or_default()
}

/// `io.kubepim.activationrequest.<event in lower case>`.
pub fn cloudevent_type(event: NotificationEvent) -> String {
    format!(
        "io.kubepim.activationrequest.{}",
        format!("{event:?}").to_lowercase()
    )
}

/// The body for `format`. `source` is the operator (a URI reference, e.g.
/// `/apis/kubepim.io/v1alpha1/namespaces/kube-pim-system/operator`).
pub fn render(n: &Notification, format: NotificationFormat, source: &str) -> Value {
    match format {
        NotificationFormat::CloudEvents => json!({
            "specversion": "1.0",
            "type": cloudevent_type(n.event),
            "source": source,
            "subject": format!("{}/{}", n.namespace, n.name),
            "id": n.id,
            "time": n.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "datacontenttype": "application/json",
            "data": n,
        }),
        NotificationFormat::Slack => {
            // Requesters write the justification (and so part of the message): Slack's
            // control sequences (<!channel>, <url|label>) are escaped as Slack documents.
            let esc = |t: &str| {
                t.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
            };
            let mut text = format!(
                "*{:?}* {}/{}: {}",
                n.event,
                n.namespace,
                n.name,
                esc(&n.message.replace(['\n', '\r'], " "))
            );
            if let Some(j) = &n.justification {
                text.push_str(&format!("\n>{}", esc(&j.replace('\n', " "))));
            }
            if let Some(cmd) = &n.approve_command {
                text.push_str(&format!("\nTo decide: `{cmd}`"));
            }
            json!({"text": text})
        }
    }
}

/// `sha256=<hex>`: HMAC-SHA256 of the exact body bytes with `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{ActivationRequestStatus, HistoryEntry},
        decide::test_fixtures::*,
    };

    fn entry(seq: i64, action: HistoryAction) -> HistoryEntry {
        HistoryEntry {
            seq,
            time: t0(),
            actor: "bob".into(),
            action,
            message: Some("approved by bob".into()),
        }
    }

    fn req() -> ActivationRequest {
        let mut r = request("alice-x", "payments", "ns-admin", requester("alice", &[]));
        r.metadata.uid = Some("u-1".into());
        r.status = Some(ActivationRequestStatus {
            expiration_time: Some(t0() + chrono::TimeDelta::minutes(30)),
            ..Default::default()
        });
        r
    }

    #[test]
    fn transitions_map_to_the_events_people_subscribe_to() {
        use HistoryAction as A;
        use NotificationEvent as E;
        assert_eq!(event_of(A::Deactivated), Some(E::Revoked));
        assert_eq!(event_of(A::Revoked), Some(E::Revoked));
        assert_eq!(event_of(A::Activated), Some(E::Activated));
        assert_eq!(event_of(A::Superseded), None);
        assert_eq!(event_of(A::AssignmentSwitched), None);
    }

    #[test]
    fn cloudevents_carry_the_type_subject_and_id_the_spec_fixes() {
        let n = from_transition(&req(), &entry(2, HistoryAction::Approved), true).unwrap();
        let ce = render(&n, NotificationFormat::CloudEvents, "/kube-pim");
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "io.kubepim.activationrequest.approved");
        assert_eq!(ce["subject"], "payments/alice-x");
        assert_eq!(ce["id"], "u-1/2");
        assert_eq!(ce["source"], "/kube-pim");
        assert_eq!(ce["data"]["action"], "Approved");
        assert_eq!(ce["data"]["actor"], "bob");
        assert_eq!(ce["data"]["requester"], "alice");
        assert!(
            ce["data"].get("approveCommand").is_none(),
            "only on Requested"
        );
    }

    #[test]
    fn requested_tells_approvers_how_to_decide() {
        let n = from_transition(&req(), &entry(1, HistoryAction::Requested), true).unwrap();
        assert_eq!(
            n.approve_command.as_deref(),
            Some("kubectl pim approve payments/alice-x@u-1 --reason '...'")
        );
        let slack = render(&n, NotificationFormat::Slack, "/kube-pim");
        let text = slack["text"].as_str().unwrap();
        assert!(text.starts_with("*Requested* payments/alice-x"), "{text}");
        assert!(
            text.contains("kubectl pim approve payments/alice-x"),
            "{text}"
        );
        let n = from_transition(&req(), &entry(1, HistoryAction::Requested), false).unwrap();
        assert!(n.approve_command.is_none(), "nothing to decide");
        // A justification cannot ping the channel or disguise a link.
        let mut r = req();
        r.spec.justification =
            Some("<!channel> see <https://evil.example|the runbook> & go".into());
        let n = from_transition(&r, &entry(1, HistoryAction::Requested), false).unwrap();
        let text = render(&n, NotificationFormat::Slack, "/")["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            text.contains("&lt;!channel&gt; see &lt;https://evil.example|the runbook&gt; &amp; go"),
            "{text}"
        );
    }

    #[test]
    fn expiring_and_residual_have_fixed_keys() {
        let n = expiring(&req(), t0() + chrono::TimeDelta::minutes(20));
        assert_eq!(n.id, "u-1/expiring");
        assert!(n.message.contains("ends in 10m"), "{}", n.message);
        assert_eq!(n.time, t0() + chrono::TimeDelta::minutes(20));
        assert_eq!(
            expiring_at(expiring_of(&req()), t0() + chrono::TimeDelta::minutes(20)),
            n,
            "what a timer keeps makes the same notification when it fires"
        );
        assert_eq!(
            cloudevent_type(n.event),
            "io.kubepim.activationrequest.expiring"
        );
        let n = residual(&req(), "alice can still list secrets", t0());
        assert_eq!(n.id, "u-1/residual");
        assert_eq!(
            cloudevent_type(n.event),
            "io.kubepim.activationrequest.residualaccess"
        );
    }

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
