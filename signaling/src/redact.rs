//! What logs may say about a client. At `info` level a client's address is shown as its network
//! only ([`ClientIp`]: the /24 of IPv4, the /48 of IPv6) and tokens never appear; `JoinParams`'
//! `Debug` already hides the access token.

use std::fmt;
use std::net::IpAddr;

/// A client's IP address as logs show it: enough to tell networks apart (abuse, routing), not
/// enough to identify a person's connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => {
                let [a, b, c, _] = ip.octets();
                write!(f, "{a}.{b}.{c}.x")
            }
            IpAddr::V6(ip) => {
                if let Some(v4) = ip.to_ipv4_mapped() {
                    return ClientIp(IpAddr::V4(v4)).fmt(f);
                }
                let s = ip.segments();
                write!(f, "{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
            }
        }
    }
}

impl fmt::Debug for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_hidden_networks_kept() {
        let show = |ip: &str| ClientIp(ip.parse().expect("ip")).to_string();
        assert_eq!(show("203.0.113.57"), "203.0.113.x");
        assert_eq!(
            show("2001:db8:85a3:8d3:1319:8a2e:370:7348"),
            "2001:db8:85a3::/48"
        );
        assert_eq!(show("::ffff:198.51.100.9"), "198.51.100.x");
        let debug = format!("{:?}", ClientIp("192.0.2.200".parse().expect("ip")));
        assert_eq!(debug, "192.0.2.x");
        assert!(!debug.contains("200"));
    }
}
