//! The audit stream (SPEC section 3, *Audit (outbox)*): `status.history` is the source of
//! truth; each entry is written here as one JSON line, keyed `<request uid>/<seq>` so a
//! consumer can drop the duplicates that at-least-once delivery may produce, before
//! `status.auditedThrough` says it was.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use serde::Serialize;

use crate::{
    Error, Result,
    api::{ActivationRequest, HistoryAction, HistoryEntry, RequestPhase},
};

/// The versioned record type of an audit line.
pub const AUDIT_API_VERSION: &str = "audit.kubepim.io/v1alpha1";

/// One audit line: a transition of an ActivationRequest.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    /// Always [`AUDIT_API_VERSION`].
    pub api_version: &'static str,
    /// Always `ActivationRequestTransition`.
    pub kind: &'static str,
    /// `<request uid>/<seq>`: the idempotency key.
    pub id: String,
    /// The request's namespace.
    pub namespace: &'a str,
    /// The request's name.
    pub name: &'a str,
    /// The request's uid.
    pub uid: &'a str,
    /// The RoleSetting.
    pub role_setting: &'a str,
    /// Namespace or Cluster.
    pub scope: crate::api::Scope,
    /// Who asked.
    pub requester: &'a str,
    /// The phase this transition leaves the request in, replayed from its history (so the
    /// stream and `kubectl pim audit` agree whenever either is produced).
    pub phase: Option<RequestPhase>,
    /// The history entry itself.
    #[serde(flatten)]
    pub entry: &'a HistoryEntry,
}

/// The phase a request is in after `action`, given the phase before it (`None`: unchanged).
fn phase_after(action: HistoryAction) -> Option<RequestPhase> {
    use HistoryAction as A;
    use RequestPhase as P;
    match action {
        A::Requested => Some(P::Pending),
        // The decision is committed before bindings exist: still Pending until Activated.
        A::Approved | A::AssignmentSwitched => None,
        A::Denied => Some(P::Denied),
        A::Scheduled => Some(P::Scheduled),
        A::Activated => Some(P::Active),
        A::Expired => Some(P::Expired),
        A::TimedOut => Some(P::TimedOut),
        A::Canceled => Some(P::Canceled),
        A::Deactivated => Some(P::Deactivated),
        A::Revoked => Some(P::Revoked),
        A::Superseded => Some(P::Superseded),
        A::Failed => Some(P::Failed),
    }
}

/// One record per history entry of `req`, in order: what the audit stream carries and what
/// `kubectl pim audit` exports. Pure, so both produce the same record for the same entry.
pub fn transition_records(req: &ActivationRequest) -> Vec<Record<'_>> {
    let Some(status) = req.status.as_ref() else {
        return Vec::new();
    };
    let uid = req.metadata.uid.as_deref().unwrap_or_default();
    let mut phase = None;
    status
        .history
        .iter()
        .map(|entry| {
            phase = phase_after(entry.action).or(phase);
            Record {
                api_version: AUDIT_API_VERSION,
                kind: "ActivationRequestTransition",
                id: format!("{uid}/{}", entry.seq),
                namespace: req.metadata.namespace.as_deref().unwrap_or_default(),
                name: req.metadata.name.as_deref().unwrap_or_default(),
                uid,
                role_setting: &req.spec.role_setting,
                scope: req.spec.scope,
                requester: &req.spec.requester.username,
                phase,
                entry,
            }
        })
        .collect()
}

/// Where audit lines go: a file (appended) or standard output.
///
/// Delivery is at least once: a line is written before the status write that records it as
/// audited, so a failed write repeats it later (consumers drop repeats by `id`). Within one
/// process a high-water mark per request avoids the common repeat, a reconcile that reads a
/// cache one event behind.
#[derive(Clone)]
pub struct AuditLog {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    written: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

impl AuditLog {
    /// `-` for standard output, else a file appended to (created if missing).
    pub fn open(target: &str) -> Result<Self> {
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            let path = PathBuf::from(target);
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(Error::io("open audit log", &path))?,
            )
        };
        Ok(Self {
            out: Arc::new(Mutex::new(out)),
            written: Default::default(),
        })
    }

    /// An audit log that writes into memory (tests).
    pub fn memory() -> (Self, Arc<Mutex<Vec<u8>>>) {
        #[derive(Clone)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("not poisoned").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                out: Arc::new(Mutex::new(Box::new(Shared(buf.clone())))),
                written: Default::default(),
            },
            buf,
        )
    }

    /// Writes the entries of `req` after `from` (its auditedThrough) that this process has not
    /// written yet, and flushes. Returns (how many entries are now audited, the range of
    /// entries written by this call).
    pub fn write_pending(
        &self,
        req: &ActivationRequest,
        from: usize,
    ) -> Result<(usize, std::ops::Range<usize>)> {
        let Some(status) = req.status.as_ref() else {
            return Ok((from, from..from));
        };
        let uid = req.metadata.uid.as_deref().unwrap_or_default();
        let mut written = self.written.lock().expect("audit index not poisoned");
        let start = from
            .max(written.get(uid).copied().unwrap_or(0))
            .min(status.history.len());
        let mut out = self.out.lock().expect("audit writer not poisoned");
        for rec in &transition_records(req)[start..] {
            let line = serde_json::to_string(&rec).expect("audit records serialize");
            writeln!(out, "{line}").map_err(Error::io("write audit log", "audit"))?;
        }
        out.flush().map_err(Error::io("flush audit log", "audit"))?;
        written.insert(uid.to_string(), status.history.len());
        Ok((status.history.len(), start..status.history.len()))
    }

    /// Writes one record that is not a request transition (e.g. a policy write) and flushes.
    pub fn write_record(&self, record: &serde_json::Value) -> Result<()> {
        let mut out = self.out.lock().expect("audit writer not poisoned");
        writeln!(out, "{record}").map_err(Error::io("write audit log", "audit"))?;
        out.flush().map_err(Error::io("flush audit log", "audit"))
    }

    /// Forgets a request's high-water mark (the request is gone).
    pub fn forget(&self, uid: &str) {
        self.written
            .lock()
            .expect("audit index not poisoned")
            .remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{ActivationRequestStatus, HistoryAction},
        decide::test_fixtures::*,
    };

    #[test]
    fn each_record_carries_the_phase_its_transition_left_the_request_in() {
        let mut req = request("r", "payments", "ns-admin", requester("alice", &[]));
        let actions = [
            HistoryAction::Requested,
            HistoryAction::Approved,
            HistoryAction::Activated,
            HistoryAction::AssignmentSwitched,
            HistoryAction::Deactivated,
        ];
        req.status = Some(ActivationRequestStatus {
            // The current phase must not leak into earlier records.
            phase: Some(RequestPhase::Deactivated),
            history: actions
                .iter()
                .enumerate()
                .map(|(i, a)| HistoryEntry {
                    seq: i as i64 + 1,
                    time: t0(),
                    actor: "alice".into(),
                    action: *a,
                    message: None,
                })
                .collect(),
            ..Default::default()
        });
        let phases: Vec<Option<RequestPhase>> =
            transition_records(&req).iter().map(|r| r.phase).collect();
        use RequestPhase::*;
        assert_eq!(
            phases,
            [
                Some(Pending),
                Some(Pending),
                Some(Active),
                Some(Active),
                Some(Deactivated)
            ]
        );
    }

    #[test]
    fn writes_each_pending_entry_once_as_a_json_line() {
        let (log, buf) = AuditLog::memory();
        let mut req = request(
            "alice-x",
            "payments",
            "namespace-admin",
            requester("alice", &[]),
        );
        let entry = |seq, action| HistoryEntry {
            seq,
            time: t0(),
            actor: "alice".into(),
            action,
            message: Some("m".into()),
        };
        req.status = Some(ActivationRequestStatus {
            phase: Some(RequestPhase::Pending),
            history: vec![
                entry(1, HistoryAction::Requested),
                entry(2, HistoryAction::Approved),
            ],
            ..Default::default()
        });
        assert_eq!(log.write_pending(&req, 1).unwrap(), (2, 1..2));
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0],
            serde_json::json!({
                "apiVersion": "audit.kubepim.io/v1alpha1", "kind": "ActivationRequestTransition",
                "id": "uid-alice-x/2", "namespace": "payments", "name": "alice-x", "uid": "uid-alice-x",
                "roleSetting": "namespace-admin", "scope": "Namespace", "requester": "alice", "phase": "Pending",
                "seq": 2, "time": "2026-12-01T12:00:00Z", "actor": "alice", "action": "Approved", "message": "m"
            })
        );
        assert_eq!(log.write_pending(&req, 2).unwrap(), (2, 2..2));
        // A reconcile from a stale cache (auditedThrough still 1) does not repeat the line.
        assert_eq!(log.write_pending(&req, 1).unwrap(), (2, 2..2));
        assert_eq!(
            buf.lock().unwrap().iter().filter(|b| **b == b'\n').count(),
            1,
            "nothing new, nothing written"
        );
        // Another process (a restart) starts from auditedThrough: at least once.
        let (other, buf2) = AuditLog::memory();
        assert_eq!(other.write_pending(&req, 1).unwrap(), (2, 1..2));
        assert_eq!(
            buf2.lock().unwrap().iter().filter(|b| **b == b'\n').count(),
            1
        );
    }
}
