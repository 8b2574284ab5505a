//! Where notifications may go (SPEC section 3): https only, and never to loopback,
//! link-local, private or cluster-internal addresses unless an operator flag allows them. A
//! RoleSetting writer must not be able to make the operator — which runs inside the cluster
//! with a privileged identity — call internal services (server-side request forgery).
//!
//! The rule is checked on the URL at admission and again on every address the name resolves
//! to when delivering, so a name that later resolves to an internal address (DNS rebinding) is
//! refused too. Pure functions.

use std::net::IpAddr;

use ipnet::IpNet;

/// What the operator allows beyond public https endpoints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetPolicy {
    /// Allow `http://` (the local test environment and demo).
    pub allow_http: bool,
    /// Addresses allowed although internal (e.g. `127.0.0.0/8` for a receiver on loopback,
    /// or the CIDR of an in-cluster receiver).
    pub allow_cidrs: Vec<IpNet>,
    /// Allow cluster-internal host names (`*.svc`, `*.cluster.local`, single-label names).
    pub allow_cluster_names: bool,
}

/// The address ranges refused unless allowed: loopback, link-local (including cloud metadata
/// at 169.254.169.254), unspecified, private (RFC 1918, unique-local IPv6, site-local),
/// shared (CGNAT, often pod networks), benchmarking (198.18/15), IETF protocol assignments
/// (192.0.0/24), reserved (240/4), multicast and broadcast. IPv6 addresses that embed an IPv4
/// one (mapped, compatible, NAT64, 6to4) are judged by the IPv4 address they reach.
fn internal(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                Some("private or cluster-internal")
            } else if (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240
            {
                Some("reserved")
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some("multicast or broadcast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
                Some("private or cluster-internal")
            } else if v6.is_multicast() {
                Some("multicast or broadcast")
            } else {
                None
            }
        }
    }
}

/// The IPv4 address an IPv6 address leads to: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`) and 6to4 (`2002:AABB:CCDD::/16`).
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let last =
        |a: u16, b: u16| std::net::Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0; 6] && (s[6], s[7]) != (0, 0) && (s[6], s[7]) != (0, 1) {
        return Some(last(s[6], s[7]));
    }
    if (s[0], s[1]) == (0x64, 0xff9b) {
        return Some(last(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(last(s[1], s[2]));
    }
    None
}

impl TargetPolicy {
    /// Whether the operator may connect to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        match internal(ip) {
            Some(_) if self.allow_cidrs.iter().any(|n| n.contains(&ip)) => Ok(()),
            Some(kind) => Err(format!(
                "{ip} is a {kind} address: notifications go to public https endpoints only (an operator may allow it with --notification-allow-cidr)"
            )),
            None => Ok(()),
        }
    }

    /// Whether `url` is an allowed target (scheme, host; the addresses a name resolves to are
    /// checked again when delivering).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("notification url {url:?} is not a URL ({e})"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http => {}
            _ => {
                return Err(format!(
                    "notification url {url:?} must use https:// (receivers see who activated what)"
                ));
            }
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("notification url {url:?} has no host"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self
                .check_ip(ip)
                .map_err(|e| format!("notification url {url:?}: {e}"));
        }
        let name = bare.trim_end_matches('.').to_ascii_lowercase();
        let cluster_name = !name.contains('.')
            || ["localhost", "svc", "cluster.local", "internal", "local"]
                .iter()
                .any(|suffix| name == *suffix || name.ends_with(&format!(".{suffix}")));
        if cluster_name && !self.allow_cluster_names {
            return Err(format!(
                "notification url {url:?}: {name} is a cluster-internal or local name: use a public https endpoint (an operator may allow such names with --notification-allow-cluster-names)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_https_endpoints_by_default() {
        let p = TargetPolicy::default();
        assert!(
            p.check_url("https://hooks.slack.com/services/T/B/X")
                .is_ok()
        );
        assert!(p.check_url("https://203.0.113.7/hook").is_ok());
        for bad in [
            "http://hooks.example.com/x",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.1/x",
            "https://192.168.1.1/x",
            "https://172.16.5.4/x",
            "https://100.64.0.1/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://[::10.0.0.5]/x",
            "https://[64:ff9b::a00:5]/x",
            "https://[2002:a00:5::1]/x",
            "https://[fec0::1]/x",
            "https://198.18.0.1/x",
            "https://240.0.0.1/x",
            "https://0.0.0.0/x",
            "https://localhost/x",
            "https://kubernetes.default.svc/x",
            "https://receiver.ns.svc.cluster.local/x",
            "https://receiver/x",
            "ftp://example.com/x",
            "not a url",
        ] {
            assert!(p.check_url(bad).is_err(), "{bad} should be refused");
        }
        let e = p.check_url("https://127.0.0.1/x").unwrap_err();
        assert!(e.contains("--notification-allow-cidr"), "{e}");
    }

    #[test]
    fn operator_flags_open_exactly_what_they_name() {
        let p = TargetPolicy {
            allow_http: true,
            allow_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
            allow_cluster_names: false,
        };
        assert!(p.check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(
            p.check_url("http://10.0.0.1/hook").is_err(),
            "only loopback"
        );
        assert!(
            p.check_url("http://localhost:8080/hook").is_err(),
            "names stay refused"
        );
        let p = TargetPolicy {
            allow_cluster_names: true,
            ..Default::default()
        };
        assert!(p.check_url("https://receiver.ns.svc/hook").is_ok());
        assert!(
            p.check_ip("10.1.2.3".parse().unwrap()).is_err(),
            "addresses still checked"
        );
    }
}
