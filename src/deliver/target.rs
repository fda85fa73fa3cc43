//! Where a subscription may send (SPEC §9): the SSRF guard. A subscription's URL is
//! refused when any address its host resolves to is private, loopback, link-local (the
//! cloud metadata address among them), multicast or otherwise not a public unicast
//! address, unless `[outbound] allow_private` lists it.
//!
//! The guard runs twice: [`check_url`] when a subscription is created (the admin API's
//! 422 `target_not_allowed`), and [`resolve`] inside the client's connector on every
//! attempt, which then connects to exactly the addresses it judged. A name that resolves
//! somewhere else between the two (DNS rebinding) is caught by the second.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::uri::Scheme;
use http::Uri;
use ipnet::IpNet;

/// The networks a subscription may reach besides public addresses (`allow_private`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(Vec<IpNet>);

impl AllowList {
    /// From CIDRs (`127.0.0.0/8`, `::1/128`) or single addresses (`10.1.2.3`).
    pub fn parse(items: &[String]) -> Result<AllowList, String> {
        items
            .iter()
            .map(|item| {
                let text = item.trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{text}` is neither a CIDR nor an IP address"))
            })
            .collect::<Result<_, _>>()
            .map(AllowList)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why hookgate will not connect to `ip`, or `None` if it may: public unicast addresses
/// and anything `allow` lists. IPv6 forms that carry an IPv4 address (mapped, NAT64,
/// 6to4) are judged by that IPv4 address.
pub fn refused(ip: IpAddr, allow: &AllowList) -> Option<&'static str> {
    if allow.contains(ip) {
        return None;
    }
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => refused(IpAddr::V4(v4), allow),
            None => refused_v6(v6),
        },
    }
}

/// The ranges refused, most specific first (the metadata address before link-local).
const V4_RANGES: &[(Ipv4Addr, u8, &str)] = &[
    (
        Ipv4Addr::new(169, 254, 169, 254),
        32,
        "link-local (metadata)",
    ),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "broadcast"),
    (Ipv4Addr::new(0, 0, 0, 0), 8, "unspecified"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space (CGNAT)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
    // 192.0.0.0/24 holds Oracle's metadata address 192.0.0.192 among others.
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "reserved (IETF protocol assignments)",
    ),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "reserved (6to4 relay)"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

const V6_RANGES: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified"),
    (Ipv6Addr::LOCALHOST, 128, "loopback"),
    // The rest of ::/96: deprecated IPv4-compatible addresses.
    (Ipv6Addr::UNSPECIFIED, 96, "reserved (IPv4-compatible)"),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "NAT64 (local use)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, "Teredo"),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique-local",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_RANGES.iter().find_map(|&(net, len, reason)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        (bits & mask == u32::from(net)).then_some(reason)
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    V6_RANGES.iter().find_map(|&(net, len, reason)| {
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        (bits & mask == u128::from(net)).then_some(reason)
    })
}

/// The IPv4 address an IPv6 address reaches in the end: IPv4-mapped `::ffff:a.b.c.d`,
/// the NAT64 well-known prefix `64:ff9b::/96` and 6to4 `2002:AABB:CCDD::/48`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let bits = u128::from(ip);
    if bits >> 32 == u128::from(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)) >> 32 {
        return Some(Ipv4Addr::from(bits as u32));
    }
    if ip.segments()[0] == 0x2002 {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// Why a subscription's URL cannot be used. The messages name the host, never the
/// URL's path, query or credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("bad url: {0}")]
    BadUrl(&'static str),
    #[error("dns: {host}: {reason}")]
    Dns { host: String, reason: String },
    #[error("refused: {}", refusal(host, ip, reason))]
    Refused {
        host: String,
        ip: IpAddr,
        reason: &'static str,
    },
}

fn refusal(host: &str, ip: &IpAddr, reason: &str) -> String {
    if host.parse::<IpAddr>().as_ref() == Ok(ip) {
        format!("{ip} is {reason}")
    } else {
        format!("{host} resolves to {ip}, which is {reason}")
    }
}

/// Parses a subscription URL: `http` or `https`, a host, no `user:password@`.
pub fn parse_url(url: &str) -> Result<Uri, TargetError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| TargetError::BadUrl("not an absolute http(s) URL"))?;
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => {}
        _ => return Err(TargetError::BadUrl("the scheme must be http or https")),
    }
    let authority = uri.authority().ok_or(TargetError::BadUrl("no host"))?;
    if authority.as_str().contains('@') {
        return Err(TargetError::BadUrl(
            "credentials in the URL are not allowed (use headers)",
        ));
    }
    if host(&uri).is_empty() {
        return Err(TargetError::BadUrl("no host"));
    }
    Ok(uri)
}

/// The URI's host without the brackets of an IPv6 literal.
pub fn host(uri: &Uri) -> &str {
    let host = uri.host().unwrap_or_default();
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The port, or the scheme's default.
pub fn port(uri: &Uri) -> u16 {
    uri.port_u16().unwrap_or(match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => 443,
        _ => 80,
    })
}

/// Resolves `host` and judges every address: all of them, or the first refusal. An IP
/// literal is judged as is, without asking DNS.
pub async fn resolve(
    host: &str,
    port: u16,
    allow: &AllowList,
) -> Result<Vec<SocketAddr>, TargetError> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| TargetError::Dns {
                host: host.to_string(),
                reason: e.to_string(),
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(TargetError::Dns {
            host: host.to_string(),
            reason: "no addresses".to_string(),
        });
    }
    for addr in &addrs {
        if let Some(reason) = refused(addr.ip(), allow) {
            return Err(TargetError::Refused {
                host: host.to_string(),
                ip: addr.ip(),
                reason,
            });
        }
    }
    Ok(addrs)
}

/// Whether a subscription may use `url`: parsed, resolved now, and every address
/// allowed. The client checks again on every attempt.
pub async fn check_url(url: &str, allow: &AllowList) -> Result<(), TargetError> {
    let uri = parse_url(url)?;
    resolve(host(&uri), port(&uri), allow).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(ip: &str) -> Option<&'static str> {
        refused(ip.parse().unwrap(), &AllowList::default())
    }

    #[test]
    fn every_refused_ipv4_range_says_why() {
        let cases = [
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.254", "private"),
            ("192.168.1.1", "private"),
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("169.254.169.254", "link-local (metadata)"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("100.127.255.255", "shared address space (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("192.0.0.192", "reserved (IETF protocol assignments)"),
            ("192.0.2.10", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
        ];
        for (ip, reason) in cases {
            assert_eq!(judge(ip), Some(reason), "{ip}");
        }
    }

    #[test]
    fn public_addresses_and_range_edges_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "11.0.0.1",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
        ] {
            assert_eq!(judge(ip), None, "{ip}");
        }
    }

    #[test]
    fn every_refused_ipv6_range_says_why() {
        let cases = [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fc00::1", "unique-local"),
            ("fd00:ec2::254", "unique-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("::7f00:1", "reserved (IPv4-compatible)"),
            ("64:ff9b:1::1", "NAT64 (local use)"),
            ("100::1", "discard-only"),
            ("2001::1", "Teredo"),
            ("fec0::1", "site-local"),
        ];
        for (ip, reason) in cases {
            assert_eq!(judge(ip), Some(reason), "{ip}");
        }
    }

    #[test]
    fn ipv6_carrying_ipv4_is_judged_by_the_ipv4() {
        assert_eq!(judge("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(
            judge("::ffff:169.254.169.254"),
            Some("link-local (metadata)")
        );
        assert_eq!(judge("::ffff:10.1.2.3"), Some("private"));
        assert_eq!(judge("::ffff:8.8.8.8"), None);
        assert_eq!(judge("64:ff9b::a9fe:a9fe"), Some("link-local (metadata)"));
        assert_eq!(judge("64:ff9b::192.168.0.1"), Some("private"));
        assert_eq!(judge("64:ff9b::8.8.8.8"), None);
        assert_eq!(judge("2002:7f00:1::1"), Some("loopback"));
        assert_eq!(judge("2002:808:808::1"), None);
    }

    #[test]
    fn the_allow_list_lets_its_networks_through() {
        let allow =
            AllowList::parse(&["127.0.0.0/8".into(), "::1/128".into(), " 10.1.2.3 ".into()])
                .unwrap();
        let ok = |ip: &str| refused(ip.parse().unwrap(), &allow);
        assert_eq!(ok("127.0.0.1"), None);
        assert_eq!(ok("127.1.2.3"), None);
        assert_eq!(ok("::1"), None);
        assert_eq!(ok("::ffff:127.0.0.1"), None, "mapped, judged by its IPv4");
        assert_eq!(ok("10.1.2.3"), None);
        assert_eq!(ok("10.1.2.4"), Some("private"));
        assert_eq!(ok("169.254.169.254"), Some("link-local (metadata)"));
        assert!(AllowList::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(AllowList::parse(&["localhost".into()]).is_err());
        assert!(AllowList::parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn urls_need_http_a_host_and_no_credentials() {
        assert!(parse_url("https://example.com/hooks?x=1").is_ok());
        assert!(parse_url("http://[::1]:8080/").is_ok());
        for bad in [
            "ftp://example.com/",
            "example.com/hooks",
            "/hooks",
            "https://user:pw@example.com/",
            "https:///path",
            "not a url",
        ] {
            let err = parse_url(bad).unwrap_err();
            assert!(matches!(err, TargetError::BadUrl(_)), "{bad}: {err}");
            assert!(!err.to_string().contains("pw"));
        }
        let uri = parse_url("http://[::1]:8080/").unwrap();
        assert_eq!((host(&uri), port(&uri)), ("::1", 8080));
        let uri = parse_url("https://example.com/").unwrap();
        assert_eq!((host(&uri), port(&uri)), ("example.com", 443));
    }

    #[tokio::test]
    async fn check_url_names_the_host_and_the_reason() {
        let none = AllowList::default();
        let err = check_url("http://169.254.169.254/latest/meta-data", &none)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused: 169.254.169.254 is link-local (metadata)"
        );
        let err = check_url("http://localhost:9/x", &none).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("refused: localhost resolves to "),
            "{err}"
        );
        // Other spellings of loopback are judged by what they resolve to.
        for url in ["http://127.1/", "http://2130706433/", "http://0x7f000001/"] {
            assert!(check_url(url, &none).await.is_err(), "{url}");
        }
        let allow = AllowList::parse(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
        assert_eq!(check_url("http://127.0.0.1:9/x", &allow).await, Ok(()));
        assert!(matches!(
            check_url("http://nothing.invalid/", &none).await,
            Err(TargetError::Dns { .. })
        ));
    }
}
