//! The audit sink: ships the audit file's lines, in stream order, to an HTTP endpoint as
//! CloudEvents (batched, `application/cloudevents-batch+json`), so the record outlives the
//! cluster's retention. The file is the outbox: the shipper reads it from the position after
//! the last line the endpoint accepted (`chain.n`, kept in `FILE.shipped` so a restart
//! resumes there), retries with backoff while the endpoint fails, and never holds up a
//! reconcile. Retention deletes no ActivationRequest while the sink is behind
//! ([`Shipper::caught_up`]).

use std::{
    io::{BufRead, BufReader, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{Client as HttpClient, connect::HttpConnector};
use serde_json::{Value, json};

/// Lines read, with their `chain.n`.
type Lines = Vec<(u64, Value)>;

/// How many lines go in one POST.
const BATCH: usize = 100;

/// The CloudEvent for one audit line (`data` is the line itself, chain included).
pub fn cloudevent(line: &Value, source: &str) -> Value {
    let kind = line["kind"].as_str().unwrap_or("Record").to_lowercase();
    let subject = match (line["namespace"].as_str(), line["name"].as_str()) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_string(),
        _ => String::new(),
    };
    json!({
        "specversion": "1.0",
        "type": format!("io.kubepim.audit.{kind}"),
        "source": source,
        "id": line["id"],
        "subject": subject,
        "time": line["time"],
        "datacontenttype": "application/json",
        "data": line,
    })
}

/// Where the shipper is in the file: the byte after the last shipped line, in the file with
/// this inode.
#[derive(Clone, Copy)]
struct Position {
    inode: u64,
    offset: u64,
}

/// Ships the audit file to the sink.
#[derive(Clone)]
pub struct Shipper {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    path: PathBuf,
    source: String,
    /// `chain.n + 1` of the last shipped line (0: nothing shipped yet); shared with the writer,
    /// which keeps every rotated file holding lines at or after it.
    shipped: Arc<AtomicU64>,
    /// `chain.n + 1` of the last written line, as the writer reports it.
    written: AtomicU64,
    wake: tokio::sync::Notify,
    http: HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Shipper {
    /// A shipper of `path` to `url`, resuming after what `FILE.shipped` records.
    pub fn new(url: &str, path: &Path, source: &str, written: u64) -> crate::Result<Self> {
        let mut shipped = std::fs::read_to_string(cursor_file(path))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if shipped > written {
            // The file was replaced (a new chain): its lines were never shipped.
            tracing::warn!(
                cursor = shipped,
                written,
                "audit sink: the audit file starts a new chain; shipping it from the start"
            );
            shipped = 0;
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(crate::Error::io("load", "the system's CA certificates"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_string(),
                path: path.to_path_buf(),
                source: source.to_string(),
                shipped: Arc::new(AtomicU64::new(shipped)),
                written: AtomicU64::new(written),
                wake: tokio::sync::Notify::new(),
                http: HttpClient::builder(hyper_util::rt::TokioExecutor::new()).build(https),
            }),
        })
    }

    /// The writer wrote the line with `chain.n = n`.
    pub fn wrote(&self, n: u64) {
        self.inner.written.fetch_max(n + 1, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }

    /// The shipped cursor (`chain.n` + 1 of the last accepted line), for the writer's rotation.
    pub fn shipped_handle(&self) -> Arc<AtomicU64> {
        self.inner.shipped.clone()
    }

    /// Whether the sink has accepted every line written so far.
    pub fn caught_up(&self) -> bool {
        self.inner.shipped.load(Ordering::SeqCst) >= self.inner.written.load(Ordering::SeqCst)
    }

    /// Lines written but not yet accepted by the sink.
    pub fn lag(&self) -> u64 {
        self.inner
            .written
            .load(Ordering::SeqCst)
            .saturating_sub(self.inner.shipped.load(Ordering::SeqCst))
    }

    /// Ships forever (spawn it).
    pub async fn run(self) {
        let mut pos: Option<Position> = None;
        let mut delay = Duration::from_millis(500);
        loop {
            if self.caught_up() {
                // Also wake now and then: another process may have written the file.
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), self.inner.wake.notified()).await;
                continue;
            }
            let next = self.inner.shipped.load(Ordering::SeqCst);
            // File reading and parsing off the async workers (the webhook and the
            // controllers share them).
            let path = self.inner.path.clone();
            let read = tokio::task::spawn_blocking(move || read_from(&path, next, pos)).await;
            let (lines, after) = match read {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "audit sink: stopped: cannot read the audit file in order (nothing is skipped; fix the file or move it aside)");
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit sink: the reader failed");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            if lines.is_empty() {
                // The writer is ahead of what is on disk for a moment.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let last_n = lines.last().map(|(n, _)| *n).unwrap_or(next);
            match self.post(&lines).await {
                Ok(()) => {
                    self.inner.shipped.store(last_n + 1, Ordering::SeqCst);
                    pos = after;
                    delay = Duration::from_millis(500);
                    if let Err(e) = write_cursor(&self.inner.path, last_n + 1) {
                        tracing::warn!(error = %e, "audit sink: cannot record progress (lines may be sent again after a restart)");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, url = %self.inner.url, retry_in_ms = delay.as_millis() as u64, "audit sink: delivery failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn post(&self, lines: &[(u64, Value)]) -> Result<(), String> {
        let events: Vec<Value> = lines
            .iter()
            .map(|(_, l)| cloudevent(l, &self.inner.source))
            .collect();
        let body = Bytes::from(serde_json::to_vec(&events).expect("events serialize"));
        let req = http::Request::post(&self.inner.url)
            .header(
                http::header::CONTENT_TYPE,
                "application/cloudevents-batch+json; charset=utf-8",
            )
            .header(http::header::USER_AGENT, "kube-pim-audit-sink")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.inner.http.request(req))
            .await
            .map_err(|_| "the sink did not answer in time".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("the sink answered {}", resp.status()))
        }
    }
}

/// Up to [`BATCH`] lines from `chain.n = next` on, in order, and where the next read can
/// start. Reads on from `pos` when it is still valid; else goes through the rotated files
/// (skipping those whose name says they end before `next`) and the current one. A line that
/// cannot be read, or a gap in `n`, stops shipping: nothing is skipped silently.
fn read_from(
    path: &Path,
    next: u64,
    pos: Option<Position>,
) -> std::io::Result<(Lines, Option<Position>)> {
    let current = std::fs::metadata(path)?.ino();
    let mut files = super::rotated_files(path);
    files.push(path.to_path_buf());
    for f in files {
        let last_in_name = f
            .file_name()
            .and_then(|n| {
                n.to_string_lossy()
                    .rsplit_once('.')
                    .map(|(_, n)| n.to_string())
            })
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|_| f != path);
        if last_in_name.is_some_and(|last| last < next) {
            continue;
        }
        let inode = std::fs::metadata(&f)?.ino();
        let offset = pos.filter(|p| p.inode == inode).map_or(0, |p| p.offset);
        let (lines, end) = read_file(&f, offset, next)?;
        if !lines.is_empty() {
            return Ok((lines, Some(Position { inode, offset: end })));
        }
        if f == path && inode == current {
            return Ok((Vec::new(), Some(Position { inode, offset: end })));
        }
    }
    Ok((Vec::new(), None))
}

/// Complete lines of `file` from byte `offset` with `chain.n >= next` (at most [`BATCH`],
/// consecutive from `next`), and the offset after the last line read.
fn read_file(file: &Path, offset: u64, next: u64) -> std::io::Result<(Lines, u64)> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(f);
    let mut out = Vec::new();
    let mut at = offset;
    let mut expect = next;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf)?;
        if read == 0 || buf.last() != Some(&b'\n') {
            // The end, or a line still being written.
            break;
        }
        let v: Value = serde_json::from_slice(&buf).map_err(|e| {
            bad(format!(
                "{} at byte {at}: not a JSON line ({e})",
                file.display()
            ))
        })?;
        let n = v["chain"]["n"]
            .as_u64()
            .ok_or_else(|| bad(format!("{} at byte {at}: no chain.n", file.display())))?;
        at += read as u64;
        if expect == 0 && out.is_empty() {
            // Never shipped before: start at the oldest line there is (older files may have
            // been rotated away before the sink was configured).
            expect = n;
        }
        if n < expect {
            continue;
        }
        if n > expect {
            return Err(bad(format!(
                "{}: line n={n} follows n={} (lines missing)",
                file.display(),
                expect.saturating_sub(1)
            )));
        }
        out.push((n, v));
        expect += 1;
        if out.len() == BATCH {
            break;
        }
    }
    Ok((out, at))
}

fn cursor_file(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.shipped", path.display()))
}

/// Records progress atomically (temporary file, then rename).
fn write_cursor(path: &Path, shipped: u64) -> std::io::Result<()> {
    let target = cursor_file(path);
    let tmp = PathBuf::from(format!("{}.tmp", target.display()));
    std::fs::write(&tmp, format!("{shipped}\n"))?;
    std::fs::rename(tmp, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_become_cloudevents_of_their_kind() {
        let line = json!({"apiVersion": "audit.kubepim.io/v1alpha1", "kind": "ActivationRequestTransition",
            "id": "u/2", "namespace": "payments", "name": "alice-x", "time": "2026-11-24T04:20:00Z",
            "chain": {"n": 7, "prev": "ab"}});
        let ce = cloudevent(&line, "/kube-pim");
        assert_eq!(ce["type"], "io.kubepim.audit.activationrequesttransition");
        assert_eq!(ce["id"], "u/2");
        assert_eq!(ce["subject"], "payments/alice-x");
        assert_eq!(ce["data"], line, "the line as written, chain included");
        let policy =
            json!({"kind": "PolicyWrite", "id": "adm-1", "name": "ns-admin", "namespace": null});
        assert_eq!(cloudevent(&policy, "/kube-pim")["subject"], "ns-admin");
    }

    #[test]
    fn reads_complete_lines_from_a_position_on() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("audit.log");
        let line =
            |n: u64| format!("{{\"id\":\"r/{n}\",\"chain\":{{\"n\":{n},\"prev\":\"x\"}}}}\n");
        std::fs::write(&f, format!("{}{}{}{{\"torn", line(0), line(1), line(2))).unwrap();
        let (lines, after) = read_file(&f, 0, 1).unwrap();
        assert_eq!(lines.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            after,
            (line(0).len() * 3) as u64,
            "stops before the torn line"
        );
        let (lines, _) = read_file(&f, after, 3).unwrap();
        assert!(lines.is_empty());
    }
}
