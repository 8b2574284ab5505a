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

pub mod chain;
pub mod ship;

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

/// When the audit file is rotated.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    /// Rotate once the file is this large.
    pub max_bytes: u64,
    /// Keep this many rotated files (the oldest beyond it are deleted).
    pub max_files: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: 100 * 1024 * 1024,
            max_files: 10,
        }
    }
}

/// Where the lines physically go.
enum Sink {
    /// Standard output, or memory in tests.
    Stream(Box<dyn Write + Send>),
    /// A file, appended to and rotated.
    File {
        path: PathBuf,
        file: std::fs::File,
        size: u64,
        rotation: Rotation,
        /// With a sink: its cursor (`chain.n` + 1 of the last line it accepted). Rotated
        /// files holding lines at or after it are kept whatever `max_files` says.
        shipped: Option<Arc<std::sync::atomic::AtomicU64>>,
    },
}

/// An exclusive lock on an open audit file, released when dropped, on every path out. (The
/// lock belongs to the open file, which the writer keeps open, so it must be released
/// explicitly rather than by closing this handle.)
struct Locked(std::fs::File);

impl Locked {
    fn new(file: &std::fs::File) -> std::io::Result<Self> {
        let f = file.try_clone()?;
        f.lock()?;
        Ok(Self(f))
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// The writer: the sink and the chain's next link.
struct Writer {
    sink: Sink,
    link: chain::Link,
}

impl Writer {
    /// Writes `record` (a JSON object) as the next chained line, and flushes; returns its
    /// `chain.n`.
    fn line(&mut self, record: &str) -> Result<u64> {
        let n = self.link.n;
        let (line, next) = chain::append(record, &self.link);
        let io = |e| Error::io("write audit log", "audit")(e);
        // One write per line, so a crash leaves at most one torn last line (repaired at the
        // next start: it was never acknowledged as audited).
        let bytes = format!("{line}\n");
        match &mut self.sink {
            Sink::Stream(out) => {
                out.write_all(bytes.as_bytes()).map_err(io)?;
                out.flush().map_err(io)?;
            }
            Sink::File {
                path, file, size, ..
            } => {
                // Other processes may append to the same file (a second replica, a restarted
                // one): an exclusive lock per line, and a look at what they wrote since, keep
                // one chain over everything in the file.
                let mut locked = Locked::new(file).map_err(io)?;
                use std::os::unix::fs::MetadataExt;
                let on_disk = std::fs::metadata(&*path).ok();
                let ours = locked.0.metadata().map_err(io)?;
                if on_disk.as_ref().is_none_or(|m| m.ino() != ours.ino()) {
                    // Rotated by another process: write to the new file.
                    drop(locked);
                    *file = open_append(path)?;
                    locked = Locked::new(file).map_err(io)?;
                }
                let len = locked.0.metadata().map_err(io)?.len();
                let (line, next) = if len != *size {
                    *size = len;
                    self.link = link_after_newest(path)?;
                    chain::append(record, &self.link)
                } else {
                    (line, next)
                };
                let bytes = format!("{line}\n");
                let n = self.link.n;
                let written = locked
                    .0
                    .write_all(bytes.as_bytes())
                    .and_then(|()| locked.0.flush())
                    // Durable before anyone is told it was audited.
                    .and_then(|()| locked.0.sync_data());
                if let Err(e) = written {
                    // Leave no fragment for the next line to be glued to.
                    let _ = locked.0.set_len(*size);
                    return Err(io(e));
                }
                *size += bytes.len() as u64;
                self.link = next;
                self.rotate_if_due()?;
                return Ok(n);
            }
        }
        self.link = next;
        Ok(n)
    }

    /// Renames a full file to `FILE.<n of its last line, zero-padded>` (so names sort in
    /// stream order) and starts an empty one; the chain goes on across files.
    fn rotate_if_due(&mut self) -> Result<()> {
        let Sink::File {
            path,
            file,
            size,
            rotation,
            shipped,
        } = &mut self.sink
        else {
            return Ok(());
        };
        if *size < rotation.max_bytes {
            return Ok(());
        }
        let last = self.link.n.saturating_sub(1);
        let rotated = PathBuf::from(format!("{}.{last:020}", path.display()));
        std::fs::rename(&*path, &rotated).map_err(Error::io("rotate audit log", &*path))?;
        *file = open_append(path)?;
        *size = 0;
        let mut old = rotated_files(path);
        while old.len() > rotation.max_files {
            let oldest = old.remove(0);
            // Its name is the n of its last line: keep it until the sink has that line.
            let last = oldest
                .to_string_lossy()
                .rsplit_once('.')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            if shipped
                .as_ref()
                .is_some_and(|s| last >= s.load(std::sync::atomic::Ordering::SeqCst))
            {
                tracing::warn!(file = %oldest.display(), "keeping a rotated audit file the sink does not have yet");
                break;
            }
            std::fs::remove_file(&oldest).map_err(Error::io("remove old audit log", &oldest))?;
        }
        tracing::info!(rotated = %rotated.display(), "audit log rotated");
        Ok(())
    }
}

fn open_append(path: &std::path::Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io("open audit log", path))
}

/// The rotated files of `path`, oldest first.
pub fn rotated_files(path: &std::path::Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|f| f.to_string_lossy().to_string())
                .and_then(|f| f.strip_prefix(&prefix).map(str::to_string))
                .is_some_and(|rest| rest.len() == 20 && rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    found.sort();
    found
}

/// Cuts a torn last line (no newline: the process died while writing it) off the file. Safe:
/// a line counts as audited only after it was written whole and flushed, so the torn one is
/// written again by the reconcile that retries it.
fn repair_torn_tail(path: &std::path::Path) -> Result<()> {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("open audit log", path)(e)),
    };
    // Under the writers' lock: a line another process is writing right now is not torn.
    f.lock().map_err(Error::io("lock audit log", path))?;
    let (from, len, tail) = read_tail(&mut f, path)?;
    if len == 0 || tail.last() == Some(&b'\n') {
        return Ok(());
    }
    let keep = tail
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(from, |i| from + i as u64 + 1);
    tracing::warn!(path = %path.display(), bytes = len - keep, "cutting a torn last audit line (written whole again when its reconcile retries)");
    f.set_len(keep).map_err(Error::io("repair audit log", path))
}

/// The last MiB of a file as bytes: (where it starts, the file's length, the bytes).
fn read_tail(f: &mut std::fs::File, path: &std::path::Path) -> Result<(u64, u64, Vec<u8>)> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f
        .metadata()
        .map_err(Error::io("read audit log", path))?
        .len();
    let from = len.saturating_sub(1024 * 1024);
    f.seek(SeekFrom::Start(from))
        .map_err(Error::io("read audit log", path))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)
        .map_err(Error::io("read audit log", path))?;
    Ok((from, len, tail))
}

/// The last line of a file (read from its tail).
fn last_line(path: &std::path::Path) -> Result<Option<String>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read audit log", path)(e)),
    };
    // Bytes, not text: the tail may start inside a multi-byte character (requesters write
    // justifications in any script); only the last complete line is decoded.
    let (_, _, tail) = read_tail(&mut f, path)?;
    Ok(tail
        .split(|b| *b == b'\n')
        .rev()
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(|l| String::from_utf8_lossy(l).into_owned()))
}

/// The link after the newest line of the stream at `path` (the current file, or the newest
/// rotated one when the current file is new or empty).
fn link_after_newest(path: &std::path::Path) -> Result<chain::Link> {
    let newest = match last_line(path)? {
        Some(l) => Some(l),
        None => match rotated_files(path).last() {
            Some(p) => last_line(p)?,
            None => None,
        },
    };
    match newest {
        None => Ok(chain::Link::default()),
        Some(line) => chain::after(&line).ok_or_else(|| {
            Error::Audit(format!(
                "the last line of {} is not a chained audit record (written by an older kube-pim?): move the file aside so a new chain can start",
                path.display()
            ))
        }),
    }
}

/// Where audit lines go: a file (appended, rotated) or standard output; every line is
/// chained to the one before it ([`chain`]).
///
/// Delivery is at least once: a line is written before the status write that records it as
/// audited, so a failed write repeats it later (consumers drop repeats by `id`). Within one
/// process a high-water mark per request avoids the common repeat, a reconcile that reads a
/// cache one event behind.
#[derive(Clone)]
pub struct AuditLog {
    out: Arc<Mutex<Writer>>,
    written: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    sink: Option<ship::Shipper>,
    /// Writes waiting on a blocking thread at a time (see [`AuditLog::pending`]).
    slots: Arc<tokio::sync::Semaphore>,
}

/// Audit writes on blocking threads at a time. They take turns on the writer anyway; more
/// would only park threads (each with its stack) behind a slow disk.
const WRITE_SLOTS: usize = 2;

impl AuditLog {
    /// `-` for standard output (a new chain per process), else a file appended to (created if
    /// missing, its chain continued, rotated by `rotation`).
    pub fn open(target: &str, rotation: Rotation) -> Result<Self> {
        let writer = if target == "-" {
            Writer {
                sink: Sink::Stream(Box::new(std::io::stdout())),
                link: chain::Link::default(),
            }
        } else {
            let path = PathBuf::from(target);
            repair_torn_tail(&path)?;
            // Continue the chain from the newest line on disk.
            let link = link_after_newest(&path)?;
            let file = open_append(&path)?;
            let size = file
                .metadata()
                .map_err(Error::io("read audit log", &path))?
                .len();
            let mut w = Writer {
                sink: Sink::File {
                    path,
                    file,
                    size,
                    rotation,
                    shipped: None,
                },
                link,
            };
            w.rotate_if_due()?;
            w
        };
        Ok(Self {
            out: Arc::new(Mutex::new(writer)),
            written: Default::default(),
            sink: None,
            slots: Arc::new(tokio::sync::Semaphore::new(WRITE_SLOTS)),
        })
    }

    /// Also ships the file to `url` ([`ship`]); needs a file, not standard output. Spawn
    /// [`AuditLog::sink`]'s `run` to start shipping.
    pub fn with_sink(mut self, url: &str, source: &str) -> Result<Self> {
        let (path, written) = {
            let w = self.out.lock().expect("audit writer not poisoned");
            match &w.sink {
                Sink::File { path, .. } => (path.clone(), w.link.n),
                Sink::Stream(_) => {
                    return Err(Error::Audit(
                        "--audit-sink-url ships the audit file: set --audit-log to a file (on a persistent volume, so unshipped lines survive a restart)".into(),
                    ));
                }
            }
        };
        let shipper = ship::Shipper::new(url, &path, source, written)?;
        if let Sink::File { shipped, .. } =
            &mut self.out.lock().expect("audit writer not poisoned").sink
        {
            *shipped = Some(shipper.shipped_handle());
        }
        self.sink = Some(shipper);
        Ok(self)
    }

    /// The shipper to the HTTP sink, if one is configured.
    pub fn sink(&self) -> Option<&ship::Shipper> {
        self.sink.as_ref()
    }

    /// Whether every line written so far has been delivered (always, without a sink):
    /// retention deletes requests only then.
    pub fn delivered(&self) -> bool {
        self.sink.as_ref().is_none_or(ship::Shipper::caught_up)
    }

    fn shipped_after(&self, n: u64) {
        if let Some(s) = &self.sink {
            s.wrote(n);
        }
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
                out: Arc::new(Mutex::new(Writer {
                    sink: Sink::Stream(Box::new(Shared(buf.clone()))),
                    link: chain::Link::default(),
                })),
                written: Default::default(),
                slots: Arc::new(tokio::sync::Semaphore::new(WRITE_SLOTS)),
                sink: None,
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
        // Not held across the write: `forget` takes it on an async worker. (Two writes of one
        // request at once do not happen: kube-runtime reconciles an object one pass at a time.)
        let before = self
            .written
            .lock()
            .expect("audit index not poisoned")
            .get(uid)
            .copied()
            .unwrap_or(0);
        let start = from.max(before).min(status.history.len());
        let mut out = self.out.lock().expect("audit writer not poisoned");
        for rec in &transition_records(req)[start..] {
            let line = serde_json::to_string(&rec).expect("audit records serialize");
            let n = out.line(&line)?;
            self.shipped_after(n);
        }
        drop(out);
        let mut written = self.written.lock().expect("audit index not poisoned");
        let mark = written.entry(uid.to_string()).or_insert(0);
        *mark = (*mark).max(status.history.len());
        Ok((status.history.len(), start..status.history.len()))
    }

    /// [`Self::write_pending`] on a blocking thread. Each line is made durable (fdatasync)
    /// before this returns; waiting for the disk on a runtime worker would hold up the
    /// reconciles and webhook calls queued on that worker (there are two on two cores), and the
    /// writer's lock would hold up the other worker's audit writes the same way.
    pub async fn pending(
        &self,
        req: &ActivationRequest,
        from: usize,
    ) -> Result<(usize, std::ops::Range<usize>)> {
        let (log, req) = (self.clone(), req.clone());
        self.off_runtime(move || log.write_pending(&req, from))
            .await
    }

    /// [`Self::write_record`] on a blocking thread (see [`Self::pending`]).
    pub async fn record(&self, record: serde_json::Value) -> Result<()> {
        let log = self.clone();
        self.off_runtime(move || log.write_record(&record)).await
    }

    /// Runs a blocking audit write on tokio's blocking pool, [`WRITE_SLOTS`] at a time, and
    /// waits for it. A panic in it (a poisoned lock) goes on in the caller, as it did when the
    /// write ran there.
    async fn off_runtime<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the audit write slots are never closed");
        match tokio::task::spawn_blocking(f).await {
            Ok(written) => written,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Audit(format!(
                "the audit write did not run ({e}): the operator is shutting down; the entries stay unaudited and are written after the restart"
            ))),
        }
    }

    /// Writes one record that is not a request transition (e.g. a policy write) and flushes.
    pub fn write_record(&self, record: &serde_json::Value) -> Result<()> {
        let mut out = self.out.lock().expect("audit writer not poisoned");
        let n = out.line(&record.to_string())?;
        self.shipped_after(n);
        Ok(())
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
                "seq": 2, "time": "2026-12-01T12:00:00Z", "actor": "alice", "action": "Approved", "message": "m",
                "chain": {"n": 0, "prev": chain::GENESIS}
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

    #[tokio::test]
    async fn the_async_writes_write_what_the_blocking_ones_do() {
        let (log, buf) = AuditLog::memory();
        let mut req = request(
            "bob-x",
            "payments",
            "namespace-admin",
            requester("bob", &[]),
        );
        req.status = Some(ActivationRequestStatus {
            phase: Some(RequestPhase::Pending),
            history: vec![HistoryEntry {
                seq: 1,
                time: t0(),
                actor: "bob".into(),
                action: HistoryAction::Requested,
                message: None,
            }],
            ..Default::default()
        });
        assert_eq!(log.pending(&req, 0).await.unwrap(), (1, 0..1));
        assert_eq!(log.pending(&req, 0).await.unwrap(), (1, 1..1), "once");
        log.record(serde_json::json!({"kind": "T", "id": "t/1"}))
            .await
            .unwrap();
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["id"], "uid-bob-x/1");
        assert_eq!(lines[1]["id"], "t/1");
        assert_eq!(lines[1]["chain"]["n"], 1, "one chain across both");
    }

    #[test]
    fn a_file_rotates_and_its_chain_continues_across_files_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let target = path.to_str().unwrap();
        let rotation = Rotation {
            max_bytes: 300,
            max_files: 2,
        };
        let write = |log: &AuditLog, n: usize| {
            for i in 0..n {
                log.write_record(&serde_json::json!({"kind": "Test", "id": format!("r/{i}")}))
                    .unwrap();
            }
        };
        write(&AuditLog::open(target, rotation).unwrap(), 6);
        // A restarted process continues the same chain.
        write(&AuditLog::open(target, rotation).unwrap(), 6);
        let rotated = rotated_files(&path);
        assert_eq!(rotated.len(), 2, "older files beyond max_files are deleted");
        let mut files: Vec<(String, String)> = rotated
            .iter()
            .chain([&path])
            .map(|p| (p.display().to_string(), std::fs::read_to_string(p).unwrap()))
            .collect();
        let report = chain::verify(files.iter().map(|(n, t)| (n.as_str(), t.as_str())));
        assert_eq!(report.broken, None, "{files:?}");
        assert!(report.lines >= 4);
        // An edit anywhere is found.
        files[0].1 = files[0].1.replacen("r/", "x/", 1);
        let report = chain::verify(files.iter().map(|(n, t)| (n.as_str(), t.as_str())));
        assert!(report.broken.is_some());
    }

    #[test]
    fn two_writers_on_one_file_keep_one_chain_and_multibyte_tails_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let target = path.to_str().unwrap();
        let a = AuditLog::open(target, Rotation::default()).unwrap();
        let b = AuditLog::open(target, Rotation::default()).unwrap();
        for i in 0..5 {
            // Multi-byte text, so a tail read can start inside a character.
            let text = "é".repeat(300 + i);
            a.write_record(&serde_json::json!({"kind": "T", "id": format!("a/{i}"), "m": text}))
                .unwrap();
            b.write_record(&serde_json::json!({"kind": "T", "id": format!("b/{i}"), "m": text}))
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let report = chain::verify([("audit.log", text.as_str())]);
        assert_eq!(report.broken, None);
        assert_eq!(report.lines, 10);
        // A third process continues it.
        let c = AuditLog::open(target, Rotation::default()).unwrap();
        c.write_record(&serde_json::json!({"kind": "T", "id": "c"}))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(chain::verify([("audit.log", text.as_str())]).broken, None);
    }

    #[test]
    fn the_last_line_is_found_even_when_the_tail_starts_inside_a_character() {
        let dir = tempfile::tempdir().unwrap();
        for pad in ["", "x"] {
            let path = dir.path().join(format!("t{}.log", pad.len()));
            let big = "é".repeat(600_000);
            std::fs::write(&path, format!("{pad}{big}\nlast\n")).unwrap();
            assert_eq!(last_line(&path).unwrap().as_deref(), Some("last"));
        }
    }

    #[test]
    fn a_torn_last_line_is_cut_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let target = path.to_str().unwrap();
        let log = AuditLog::open(target, Rotation::default()).unwrap();
        log.write_record(&serde_json::json!({"kind": "T", "id": "1"}))
            .unwrap();
        // A crash in the middle of the next line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"kind\":\"T\",\"id\":\"2\",\"cha").unwrap();
        drop(f);
        let log = AuditLog::open(target, Rotation::default()).unwrap();
        log.write_record(&serde_json::json!({"kind": "T", "id": "2"}))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(chain::verify([("audit.log", text.as_str())]).broken, None);
    }
}
