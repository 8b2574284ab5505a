//! `Duration`: a Go-style duration string (`90m`, `1h30m`, `30s`) as it appears in the CRDs,
//! carried as a `chrono::TimeDelta` in the domain.
//!
//! The string form is what users write and what `kubectl get` shows, so it round-trips as
//! written. Parsing reuses kube-core's implementation of Go's `time.ParseDuration` grammar; the
//! schema restricts it to positive values with units of seconds and coarser-or-finer Go units
//! (no sign, no `d`/`w`), which the apiserver checks with a pattern and CEL.

use std::{borrow::Cow, fmt, str::FromStr};

use chrono::TimeDelta;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the apiserver enforces on every duration field: one or more `<number><unit>`
/// groups with Go's units. A sign is not allowed: every kube-pim duration is a positive span.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A positive Go-style duration, e.g. `1h30m`.
#[derive(Clone, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: TimeDelta,
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}; write it like 90m, 1h30m or 30s")]
pub struct ParseDurationError {
    input: String,
    reason: String,
}

impl Duration {
    /// The span as chrono's type, for arithmetic with `DateTime<Utc>`.
    pub fn as_delta(&self) -> TimeDelta {
        self.value
    }

    /// The text as written by the user (kept so GitOps diffs stay empty).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A duration from a chrono span, rendered in Go's canonical form (`1h30m0s`).
    pub fn from_delta(value: TimeDelta) -> Self {
        Self {
            text: format_go(value),
            value,
        }
    }
}

/// Go's `time.Duration.String()`: `1h30m0s`, `30s`, `1.5s`, `500ms` (negative spans as `0s`:
/// kube-pim has none).
fn format_go(d: TimeDelta) -> String {
    let std = d.to_std().unwrap_or_default();
    let (secs, nanos) = (std.as_secs(), std.subsec_nanos());
    let frac = |whole: u64, nanos: u32, digits: usize| {
        let f = format!("{nanos:0digits$}");
        let f = f.trim_end_matches('0');
        if f.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{f}")
        }
    };
    if secs == 0 {
        return match nanos {
            0 => "0s".into(),
            n if n < 1_000 => format!("{n}ns"),
            n if n < 1_000_000 => format!("{}µs", frac(u64::from(n / 1_000), n % 1_000, 3)),
            n => format!("{}ms", frac(u64::from(n / 1_000_000), n % 1_000_000, 6)),
        };
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&frac(s, nanos, 9));
    out.push('s');
    out
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParseDurationError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s.starts_with(['-', '+']) {
            return Err(err("a sign is not allowed"));
        }
        let parsed: kube::core::Duration = s.parse().map_err(|e| err(&format!("{e}")))?;
        let std: std::time::Duration = parsed.into();
        let value = TimeDelta::from_std(std).map_err(|_| err("too long"))?;
        if value <= TimeDelta::zero() {
            return Err(err("it must be longer than zero"));
        }
        Ok(Self {
            text: s.to_string(),
            value,
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({})", self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // Not `format: duration`: the apiserver's strfmt accepts units Go does not (`d`, `w`),
        // which kube-pim could not parse. CEL's duration() parses exactly Go's grammar.
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "x-kubernetes-validations": [{
                // Only when the pattern holds: otherwise the pattern's own error is the clear one,
                // and duration() would add a type-conversion error to it.
                "rule": format!("!self.matches('{}') || duration(self) > duration('0s')", DURATION_PATTERN.replace('\\', "\\\\")),
                "message": "must be a positive duration such as 90m, 1h30m or 30s"
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Result<TimeDelta, ParseDurationError> {
        s.parse::<Duration>().map(|d| d.as_delta())
    }

    #[test]
    fn parses_go_style_strings() {
        assert_eq!(d("90m").unwrap(), TimeDelta::minutes(90));
        assert_eq!(d("1h30m").unwrap(), TimeDelta::minutes(90));
        assert_eq!(d("30s").unwrap(), TimeDelta::seconds(30));
        assert_eq!(d("1.5h").unwrap(), TimeDelta::minutes(90));
        assert_eq!(d("8760h").unwrap(), TimeDelta::hours(8760));
        assert_eq!(d("500ms").unwrap(), TimeDelta::milliseconds(500));
    }

    #[test]
    fn refuses_signs_zero_and_unknown_units() {
        for bad in ["-1h", "+1h", "0s", "0", "1d", "1w", "", "h", "1 h", "abc"] {
            let err = d(bad).expect_err(bad);
            assert!(err.to_string().contains("write it like 90m"), "{err}");
        }
    }

    #[test]
    fn keeps_the_text_as_written() {
        let v: Duration = serde_json::from_str("\"90m\"").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"90m\"");
        assert_eq!(v.to_string(), "90m");
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(
            Duration::from_delta(TimeDelta::minutes(90)).as_str(),
            "1h30m0s"
        );
        assert_eq!(Duration::from_delta(TimeDelta::seconds(30)).as_str(), "30s");
        assert_eq!(Duration::from_delta(TimeDelta::hours(1)).as_str(), "1h0m0s");
        assert_eq!(Duration::from_delta(TimeDelta::minutes(2)).as_str(), "2m0s");
        assert_eq!(
            Duration::from_delta(TimeDelta::milliseconds(1500)).as_str(),
            "1.5s"
        );
        assert_eq!(
            Duration::from_delta(TimeDelta::milliseconds(500)).as_str(),
            "500ms"
        );
        assert_eq!(Duration::from_delta(TimeDelta::zero()).as_str(), "0s");
        // What it prints, it parses back to the same span.
        for d in [
            TimeDelta::minutes(90),
            TimeDelta::milliseconds(1500),
            TimeDelta::seconds(3601),
        ] {
            let text = Duration::from_delta(d).as_str().to_string();
            assert_eq!(text.parse::<Duration>().unwrap().as_delta(), d);
        }
    }

    #[test]
    fn pattern_agrees_with_parser() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for good in ["90m", "1h30m", "30s", "1.5h", "100ms", "2h0m0s"] {
            assert!(re.is_match(good), "{good}");
            assert!(d(good).is_ok(), "{good}");
        }
        for bad in ["-1h", "1d", "", "1 h", "h1"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }
}
