//! The webhook target guard (against server-side request forgery): a webhook may not
//! reach the hub's own machine or private networks — loopback, private, link-local,
//! unspecified, multicast, broadcast and carrier-grade NAT addresses, cloud metadata
//! endpoints, and IPv4 addresses of those kinds written as IPv6 — unless the operator
//! allows it ([`HubConfig::webhook_allow_private`](crate::HubConfig)).
//!
//! The check is on the address actually connected to, so a name that resolves to a
//! public address when the rule is made and to a private one later (DNS rebinding) is
//! still refused:
//! - host names go through [`GuardedResolver`], which drops forbidden addresses (an
//!   error when none is left);
//! - literal IPs, which reqwest connects to without resolving, are refused when the rule
//!   is made and again before each attempt ([`literal_refusal`]);
//! - redirects are never followed (the client's policy is `none`), so a receiver cannot
//!   bounce a delivery to another address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The flag that lifts the guard, named in refusals so operators know the way out.
const ALLOW_HINT: &str =
    "webhooks to such addresses are refused unless Herald runs with --webhook-allow-private";

/// What kind of forbidden address `ip` is, or `None` when webhooks may reach it.
pub fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => v4_class(ip),
        IpAddr::V6(ip) => v6_class(ip),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        return Some("a cloud metadata address");
    }
    let [a, b, _, _] = ip.octets();
    match (a, b) {
        // 0.0.0.0/8: "this network"; Linux connects 0.0.0.0 to the local machine.
        (0, _) => Some("an unspecified address (0.0.0.0/8)"),
        (127, _) => Some("a loopback address"),
        (10, _) | (172, 16..=31) | (192, 168) => Some("a private address (RFC 1918)"),
        (169, 254) => Some("a link-local address"),
        (100, 64..=127) => Some("a carrier-grade NAT address (100.64.0.0/10)"),
        (224..=239, _) => Some("a multicast address"),
        // 240.0.0.0/4 is reserved; 255.255.255.255 is the broadcast address.
        (240..=255, _) => Some("a broadcast or reserved address"),
        _ => None,
    }
}

/// The AWS metadata endpoint over IPv6.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    // ::ffff:a.b.c.d reaches a.b.c.d.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    if ip == METADATA_V6 {
        return Some("a cloud metadata address");
    }
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    let segments = ip.segments();
    let first = segments[0];
    if first & 0xfe00 == 0xfc00 {
        return Some("a unique local (private) address (fc00::/7)");
    }
    if first & 0xffc0 == 0xfe80 {
        return Some("a link-local address");
    }
    if first & 0xffc0 == 0xfec0 {
        return Some("a site-local (private) address");
    }
    if first & 0xff00 == 0xff00 {
        return Some("a multicast address");
    }
    // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::a.b.c.d) addresses
    // carry an IPv4 address that may be reached through them.
    let embedded = Ipv4Addr::from(((segments[6] as u32) << 16) | segments[7] as u32);
    match segments[..6] {
        [0, 0, 0, 0, 0, 0] | [0x64, 0xff9b, 0, 0, 0, 0] => v4_class(embedded),
        _ => None,
    }
}

/// A webhook target the guard refused: `host` (a name, or the address itself) and the
/// forbidden address it stands for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ForbiddenTarget {
    host: String,
    ip: IpAddr,
    class: &'static str,
}

impl fmt::Display for ForbiddenTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host == self.ip.to_string() {
            write!(f, "{} is {}; {ALLOW_HINT}", self.ip, self.class)
        } else {
            write!(
                f,
                "{} resolves only to forbidden addresses ({} is {}); {ALLOW_HINT}",
                self.host, self.ip, self.class
            )
        }
    }
}

/// The refusal of `url` when its host is a literal IP address the guard forbids.
pub fn literal_refusal(url: &reqwest::Url) -> Option<ForbiddenTarget> {
    // The URL parser writes IPv4 hosts in dotted decimal (whatever form they were given
    // in) and IPv6 hosts in brackets; a name does not parse as an address.
    let host = url.host_str()?;
    let ip: IpAddr = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()?;
    forbidden_class(ip).map(|class| ForbiddenTarget {
        host: ip.to_string(),
        ip,
        class,
    })
}

/// The guard's refusal somewhere in `error`'s chain of causes, if any: how a refusal by
/// [`GuardedResolver`] comes back out of reqwest.
pub fn find_refusal<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ForbiddenTarget> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(refusal) = error.downcast_ref::<ForbiddenTarget>() {
            return Some(refusal);
        }
        cause = error.source();
    }
    None
}

/// A DNS resolver for the webhook client that resolves with the system's resolver (on
/// tokio's blocking pool) and keeps only the addresses webhooks may reach.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match forbidden_class(addr.ip()) {
                    Some(class) => {
                        refused.get_or_insert((addr.ip(), class));
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let error: Box<dyn std::error::Error + Send + Sync> = match refused {
                    Some((ip, class)) => Box::new(ForbiddenTarget { host, ip, class }),
                    None => format!("{host} has no address").into(),
                };
                return Err(error);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<&'static str> {
        forbidden_class(text.parse().unwrap())
    }

    #[test]
    fn forbidden_addresses() {
        for (ip, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.0.1", "link-local"),
            ("169.254.169.254", "metadata"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fd00:ec2::254", "metadata"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            // IPv4-mapped, IPv4-compatible and NAT64 forms of forbidden IPv4 addresses.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:169.254.169.254", "metadata"),
            ("::ffff:0.0.0.0", "unspecified"),
            ("::ffff:100.64.0.1", "carrier-grade NAT"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::192.168.0.1", "private"),
        ] {
            let got = class(ip);
            assert!(
                got.is_some_and(|c| c.contains(expected)),
                "{ip}: {got:?}, expected {expected}"
            );
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.1",
            "192.167.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "223.255.255.255",
            "11.0.0.1",
            "2606:4700:4700::1111",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "fe00::1",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn literal_urls() {
        let refusal = |url: &str| literal_refusal(&reqwest::Url::parse(url).unwrap());
        let refused = refusal("http://127.0.0.1:8080/x").expect("loopback");
        assert_eq!(
            refused.to_string(),
            "127.0.0.1 is a loopback address; webhooks to such addresses are refused unless \
             Herald runs with --webhook-allow-private"
        );
        assert!(refusal("http://[::1]/").is_some());
        assert!(refusal("http://[::ffff:7f00:1]/").is_some());
        assert!(refusal("http://169.254.169.254/latest").is_some());
        assert!(refusal("http://8.8.8.8/").is_none());
        // Names are the resolver's business.
        assert!(refusal("http://localhost/").is_none());
        assert!(refusal("https://example.com/").is_none());
    }

    #[tokio::test]
    async fn the_resolver_drops_forbidden_addresses() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let name = reqwest::dns::Name::from_str("localhost").unwrap();
        let error = match GuardedResolver.resolve(name).await {
            Ok(addrs) => panic!(
                "localhost resolved to {:?}",
                addrs.collect::<Vec<SocketAddr>>()
            ),
            Err(error) => error,
        };
        let refusal = find_refusal(&*error).expect("a guard refusal");
        assert!(
            refusal
                .to_string()
                .starts_with("localhost resolves only to forbidden"),
            "{refusal}"
        );
    }
}
