//! Which peers the relay may reach. It is never an open relay: by default only the addresses
//! the operator lists (Stoa's own SFU media addresses) are reachable. Loopback, private,
//! link-local and other special-purpose addresses are refused unless a rule lists them; public
//! addresses beyond the rules are reachable only with [`PublicPeers::Allow`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::str::FromStr;

/// One allowed peer range: an address or network, and optionally a port range.
///
/// Written `IP`, `IP/PREFIX`, `IP:PORT`, `IP:FIRST-LAST`, `IP/PREFIX:FIRST-LAST`; IPv6 addresses
/// with ports in brackets: `[::1]:7882`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRule {
    network: IpAddr,
    prefix: u8,
    ports: RangeInclusive<u16>,
}

impl PeerRule {
    /// A rule for exactly `addr`'s IP and port range `ports`.
    pub fn new(ip: IpAddr, ports: RangeInclusive<u16>) -> Self {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        Self {
            network: ip,
            prefix,
            ports,
        }
    }

    /// Whether `ip` is inside the network (ports aside).
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// Whether `addr` is inside the network and the port range.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.contains_ip(addr.ip()) && self.ports.contains(&addr.port())
    }
}

impl fmt::Display for PeerRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.network {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        write!(f, "{host}/{}", self.prefix)?;
        if self.ports != (0..=u16::MAX) {
            write!(f, ":{}-{}", self.ports.start(), self.ports.end())?;
        }
        Ok(())
    }
}

/// Why a peer rule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad peer rule {rule:?}: {reason} (expected IP, IP/PREFIX, IP:PORT or IP/PREFIX:FIRST-LAST)"
)]
pub struct PeerRuleError {
    rule: String,
    reason: &'static str,
}

impl FromStr for PeerRule {
    type Err = PeerRuleError;

    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let error = |reason| PeerRuleError {
            rule: rule.to_owned(),
            reason,
        };
        // Split off the port part: after `]` for bracketed IPv6, else after the only `:`.
        let (host, ports) = if let Some(rest) = rule.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| error("unclosed ["))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| error("junk after ]"))?,
                    ),
                ),
            }
        } else if rule.matches(':').count() == 1 {
            let (host, ports) = rule.split_once(':').ok_or_else(|| error("no port"))?;
            (host, Some(ports))
        } else {
            (rule, None)
        };
        // `[v6/64]:ports` and `v4/24:ports` both put the prefix inside `host`.
        let (ip, prefix) = match host.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (host, None),
        };
        let network: IpAddr = ip.parse().map_err(|_| error("not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| error("bad prefix length"))?,
            None => max,
        };
        let ports = match ports {
            None => 0..=u16::MAX,
            Some(ports) => {
                let (first, last) = ports.split_once('-').unwrap_or((ports, ports));
                let first: u16 = first.parse().map_err(|_| error("bad port"))?;
                let last: u16 = last.parse().map_err(|_| error("bad port"))?;
                if first > last {
                    return Err(error("empty port range"));
                }
                first..=last
            }
        };
        Ok(Self {
            network: canonical(network),
            prefix,
            ports,
        })
    }
}

/// Whether public peers outside the rules are reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublicPeers {
    /// Only the rules' peers (the default): the relay serves Stoa's SFU and nothing else.
    #[default]
    Refuse,
    /// Also any globally routable address (a general-purpose TURN server). Special-purpose
    /// addresses stay refused unless a rule lists them.
    Allow,
}

/// The relay's peer policy.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// Peers always allowed (the SFU's media addresses, and whatever the operator adds).
    pub allow: Vec<PeerRule>,
    /// Whether other public peers are allowed.
    pub public: PublicPeers,
}

impl PeerPolicy {
    /// Whether a permission for `ip` may be installed (CreatePermission looks at IPs only).
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|rule| rule.contains_ip(ip))
            || (self.public == PublicPeers::Allow && is_public(ip))
    }

    /// Whether data may be relayed to `addr` (ChannelBind and Send look at the port too).
    pub fn permits(&self, addr: SocketAddr) -> bool {
        self.allow.iter().any(|rule| rule.contains(addr))
            || (self.public == PublicPeers::Allow && is_public(addr.ip()))
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so that rules cannot be sidestepped with `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Whether `ip` is a globally routable unicast address: not loopback, private, link-local,
/// shared (CGNAT), unspecified, broadcast, multicast, documentation or otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xFE00) == 0xFC00
        || (first & 0xFFC0) == 0xFE80
        || first == 0x2001 && ip.segments()[1] == 0x0DB8
        || first == 0x0064
        || first == 0x0000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> PeerRule {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_every_form() {
        let r = rule("127.0.0.1");
        assert!(r.contains("127.0.0.1:1".parse().unwrap()));
        assert!(!r.contains("127.0.0.2:1".parse().unwrap()));
        let r = rule("10.1.0.0/16:50000-50099");
        assert!(r.contains("10.1.200.3:50000".parse().unwrap()));
        assert!(!r.contains("10.1.200.3:50100".parse().unwrap()));
        assert!(!r.contains("10.2.0.1:50000".parse().unwrap()));
        let r = rule("[::1]:7882");
        assert!(r.contains("[::1]:7882".parse().unwrap()));
        assert!(!r.contains("[::1]:7883".parse().unwrap()));
        assert!(rule("2001:db8::/32").contains_ip("2001:db8::5".parse().unwrap()));
        assert!(rule("0.0.0.0/0").contains_ip("8.8.8.8".parse().unwrap()));
        for bad in ["", "x", "1.2.3.4/33", "1.2.3.4:9-1", "[::1", "1.2.3.4:port"] {
            assert!(bad.parse::<PeerRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_policy_refuses_everything_not_listed() {
        let policy = PeerPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.1.1",
            "8.8.8.8",
            "::1",
            "fe80::1",
        ] {
            assert!(!policy.permits_ip(ip.parse().unwrap()), "{ip}");
        }
        let sfu = PeerPolicy {
            allow: vec![rule("127.0.0.1:7882")],
            public: PublicPeers::Refuse,
        };
        assert!(sfu.permits("127.0.0.1:7882".parse().unwrap()));
        assert!(!sfu.permits("127.0.0.1:7880".parse().unwrap()));
        // A mapped address is the same address.
        assert!(sfu.permits("[::ffff:127.0.0.1]:7882".parse().unwrap()));
    }

    #[test]
    fn public_peers_never_include_special_addresses() {
        let open = PeerPolicy {
            allow: vec![],
            public: PublicPeers::Allow,
        };
        assert!(open.permits_ip("8.8.8.8".parse().unwrap()));
        assert!(open.permits_ip("2a00:1450::1".parse().unwrap()));
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!open.permits_ip(ip.parse().unwrap()), "{ip}");
        }
    }
}
