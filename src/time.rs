//! The one place where kube-pim's domain time (`chrono::DateTime<Utc>`) meets Kubernetes'
//! `metav1.Time` (which k8s-openapi represents with `jiff`).

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A Kubernetes `Time` from a chrono instant (sub-nanosecond precision does not exist in
/// either; out-of-range instants clamp to the nearest representable one).
pub fn to_k8s(t: DateTime<Utc>) -> Time {
    let ts = jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32).unwrap_or(
        if t.timestamp() < 0 {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        },
    );
    Time(ts)
}

/// A Kubernetes `MicroTime` (Leases) from a chrono instant.
pub fn to_k8s_micro(t: DateTime<Utc>) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(to_k8s(t).0)
}

/// A chrono instant from a Kubernetes `Time`.
pub fn from_k8s(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond() as u32).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t: DateTime<Utc> = "2026-12-01T10:20:30.123456789Z".parse().unwrap();
        assert_eq!(from_k8s(&to_k8s(t)), t);
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        assert_eq!(from_k8s(&to_k8s(epoch)), epoch);
    }
}
