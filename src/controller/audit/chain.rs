//! The audit stream's hash chain: every line carries its position in the stream (`n`) and the
//! SHA-256 of the line before it (`prev`), so a removed, inserted, reordered or edited line is
//! detectable by anyone holding the file, without a key: `kube-pim audit verify FILE...`.
//!
//! `chain` is a property of the stream, not of the record: `kubectl pim audit` exports the same
//! records without it. A chain starts with `prev` = 64 zeros (a new file, or a process writing
//! to standard output); a process appending to an existing file continues its chain.
//! Truncating the end of a file leaves a valid shorter chain: ship the stream off the host
//! (the HTTP sink) to anchor it. Pure functions.

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `prev` of the first line of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where the next line goes in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The next line's position (0 for the first line of a chain).
    pub n: u64,
    /// The hex SHA-256 of the previous line (without its newline), or [`GENESIS`].
    pub prev: String,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            n: 0,
            prev: GENESIS.into(),
        }
    }
}

/// Hex SHA-256 of a line's bytes (without the newline).
pub fn hash(line: &str) -> String {
    Sha256::digest(line.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `record` (a serialized JSON object) with `"chain":{"n":..,"prev":".."}` appended, and the
/// link for the line after it.
pub fn append(record: &str, link: &Link) -> (String, Link) {
    let body = record
        .strip_suffix('}')
        .expect("audit records are JSON objects");
    let sep = if body.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    let line = format!(
        "{body}{sep}\"chain\":{{\"n\":{},\"prev\":\"{}\"}}}}",
        link.n, link.prev
    );
    let next = Link {
        n: link.n + 1,
        prev: hash(&line),
    };
    (line, next)
}

/// The link after `last_line` (the last line of an existing stream), to continue it.
pub fn after(last_line: &str) -> Option<Link> {
    let chain = read(last_line)?;
    Some(Link {
        n: chain.n + 1,
        prev: hash(last_line),
    })
}

#[derive(Deserialize)]
struct Chained {
    chain: Option<ChainField>,
}

#[derive(Deserialize)]
struct ChainField {
    n: u64,
    prev: String,
}

fn read(line: &str) -> Option<ChainField> {
    serde_json::from_str::<Chained>(line).ok()?.chain
}

/// What `verify` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Lines checked.
    pub lines: u64,
    /// Where a chain starts (file, line number in it).
    pub starts: Vec<(String, u64)>,
    /// When the first line given continues an older chain (its earlier files rotated away
    /// or not given): that line's `n`.
    pub continues_from: Option<u64>,
    /// The first break, if any: (file, line number in it, what is wrong).
    pub broken: Option<(String, u64, String)>,
}

/// Checks the chain over `files` (name, contents), in order: every line must follow the one
/// before it, across files too; a file may start a new chain at its first line. The very first
/// line may continue an older chain whose files are gone (reported in `continues_from`).
pub fn verify<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Report {
    let mut report = Report::default();
    let mut expect: Option<Link> = None;
    for (name, text) in files {
        for (i, line) in text.lines().enumerate() {
            let at = i as u64 + 1;
            report.lines += 1;
            let Some(chain) = read(line) else {
                report.broken = Some((
                    name.into(),
                    at,
                    "not a chained audit record (no \"chain\" field, or not JSON)".into(),
                ));
                return report;
            };
            let fresh = chain.prev == GENESIS && chain.n == 0;
            match &expect {
                // kube-pim starts a chain only in a new stream: never after lines given before.
                None if fresh => report.starts.push((name.into(), at)),
                // The stream's oldest lines were rotated away (or not given): what is here can
                // still be checked from this line on.
                None => report.continues_from = Some(chain.n),
                Some(_) if fresh => {
                    report.broken = Some((
                        name.into(),
                        at,
                        if i == 0 {
                            "a new chain starts here although earlier lines were given: the lines before it were replaced, or these are different streams (verify them separately)".into()
                        } else {
                            "a new chain starts in the middle of the file: lines before it were replaced".into()
                        },
                    ));
                    return report;
                }
                Some(e) if chain.prev != e.prev => {
                    report.broken = Some((
                        name.into(),
                        at,
                        "prev does not match the line before it: a line was edited, removed or inserted here".into(),
                    ));
                    return report;
                }
                Some(e) if chain.n != e.n => {
                    report.broken = Some((
                        name.into(),
                        at,
                        format!("n is {} where {} was expected", chain.n, e.n),
                    ));
                    return report;
                }
                Some(_) => {}
            }
            expect = Some(Link {
                n: chain.n + 1,
                prev: hash(line),
            });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: usize) -> (String, Link) {
        let mut link = Link::default();
        let mut out = String::new();
        for i in 0..n {
            let (line, next) = append(&format!("{{\"id\":\"r/{i}\",\"kind\":\"X\"}}"), &link);
            out.push_str(&line);
            out.push('\n');
            link = next;
        }
        (out, link)
    }

    #[test]
    fn a_written_stream_verifies() {
        let (text, link) = stream(5);
        let r = verify([("a.log", text.as_str())]);
        assert_eq!(r.broken, None);
        assert_eq!(r.lines, 5);
        assert_eq!(r.starts, vec![("a.log".to_string(), 1)]);
        assert_eq!(link.n, 5);
        assert_eq!(after(text.lines().last().unwrap()), Some(link));
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with(&format!(",\"chain\":{{\"n\":0,\"prev\":\"{GENESIS}\"}}}}"))
        );
    }

    #[test]
    fn edits_removals_insertions_and_reorders_are_found() {
        let (text, _) = stream(5);
        let lines: Vec<&str> = text.lines().collect();
        let check = |ls: Vec<String>| verify([("a.log", ls.join("\n").as_str())]).broken;
        let own = |ls: &[&str]| ls.iter().map(|l| l.to_string()).collect::<Vec<_>>();

        let mut edited = own(&lines);
        edited[2] = edited[2].replace("r/2", "r/9");
        let b = check(edited).unwrap();
        assert_eq!(b.1, 4, "the line after the edit breaks: {b:?}");

        let mut removed = own(&lines);
        removed.remove(1);
        assert_eq!(check(removed).unwrap().1, 2);

        let mut swapped = own(&lines);
        swapped.swap(1, 2);
        assert!(check(swapped).is_some());

        // A forged chain in a later file, though earlier files were given.
        let (fresh, _) = append("{\"id\":\"f\"}", &Link::default());
        let r = verify([("a.log.1", text.as_str()), ("a.log", fresh.as_str())]);
        assert!(r.broken.is_some());

        let mut replaced = own(&lines);
        let (fake, _) = append("{\"id\":\"fake\"}", &Link::default());
        replaced[3] = fake;
        assert!(check(replaced).unwrap().2.contains("new chain starts"));
    }

    #[test]
    fn files_chain_across_rotation_and_need_their_predecessors() {
        let (text, _) = stream(6);
        let lines: Vec<&str> = text.lines().collect();
        let first = lines[..3].join("\n");
        let second = lines[3..].join("\n");
        let r = verify([("a.log.1", first.as_str()), ("a.log", second.as_str())]);
        assert_eq!(r.broken, None);
        assert_eq!(r.lines, 6);
        // Older files rotated away: the rest still verifies, and says where it starts.
        let r = verify([("a.log", second.as_str())]);
        assert_eq!(r.broken, None);
        assert_eq!(r.continues_from, Some(3));
        // But a file in the middle cannot be left out.
        let third: String = lines[4..].join("\n");
        let r = verify([("a.log.1", first.as_str()), ("a.log", third.as_str())]);
        assert!(r.broken.is_some());
    }
}
