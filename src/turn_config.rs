//! `[turn]`: the embedded TURN relay's settings, parsed and validated once at start-up, and
//! what `stoa serve` and `stoa turn` build from them (the relay's configuration, the peer
//! policy, the ICE servers handed to clients).
//!
//! The relay's ports share the operator's UDP range with the media engine: with the default
//! range 50000-50200 the engine's shards take 50000, 50001, … (one port each) and relay
//! allocations take 50100-50200. Overlaps are refused at start-up.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;
use stoa_signaling::service::{TurnCredentials, TurnServers};
use stoa_turn::proto::{self, Credentials, PeerPolicy, PeerRule, PublicPeers, RateLimit, Secret};
use stoa_turn::shell::{RelayConfig, TlsCertificates, TlsConfig};

/// TURN over UDP and TCP (RFC 8656's default port).
pub const DEFAULT_TURN_PORT: u16 = 3478;
/// TURN over TLS (`turns:`), RFC 8656's default; 443 gets through the strictest firewalls.
pub const DEFAULT_TURNS_PORT: u16 = 5349;
/// First relay port: the upper half of the operator's 50000-50200 range.
pub const DEFAULT_RELAY_PORT_RANGE_START: u16 = 50100;
/// Last relay port (inclusive).
pub const DEFAULT_RELAY_PORT_RANGE_END: u16 = 50200;
/// How long the credentials in a JoinResponse stay valid. Allocations are refreshed with them,
/// so this bounds how long one session can keep relaying.
pub const DEFAULT_CREDENTIAL_TTL_SECONDS: u64 = 86_400;
/// Default per-identity allocation quota: two peer connections over three transports, twice.
pub const DEFAULT_MAX_ALLOCATIONS_PER_USER: usize = 12;
/// Most relay threads accepted.
pub const MAX_THREADS: usize = 64;
/// Default REALM.
pub const DEFAULT_REALM: &str = "stoa";

/// The `[turn]` table of the config file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTurn {
    enabled: Option<bool>,
    udp_port: Option<u16>,
    tcp_port: Option<u16>,
    tls_port: Option<u16>,
    tls_certificate: Option<PathBuf>,
    tls_private_key: Option<PathBuf>,
    relay_port_range_start: Option<u16>,
    relay_port_range_end: Option<u16>,
    secret: Option<String>,
    realm: Option<String>,
    credential_ttl_seconds: Option<u64>,
    allowed_peers: Option<Vec<String>>,
    allow_public_peers: Option<bool>,
    max_allocations: Option<usize>,
    max_allocations_per_user: Option<usize>,
    allocate_burst: Option<u32>,
    /// Set by [`FileTurn::with_shared_tls`] when the HTTPS certificate comes from ACME.
    #[serde(skip)]
    shared_acme: bool,
    allocate_per_second: Option<u32>,
    threads: Option<usize>,
    urls: Option<Vec<String>>,
}

/// The validated `[turn]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnSettings {
    /// Whether `stoa serve` runs the relay (and hands out TURN servers).
    pub enabled: bool,
    /// UDP listener port, `None` when disabled (`udp_port = 0`).
    pub udp_port: Option<u16>,
    /// TCP listener port, `None` when disabled.
    pub tcp_port: Option<u16>,
    /// TLS listener, when a certificate and key are configured or ACME provides them.
    pub tls: Option<TurnTls>,
    /// Relay ports.
    pub relay_ports: RangeInclusive<u16>,
    /// Shared secret of the REST credentials; `None`: a random one per process (`stoa serve`
    /// mints the credentials itself).
    pub secret: Option<Secret>,
    /// REALM.
    pub realm: String,
    /// Lifetime of minted credentials.
    pub credential_ttl: Duration,
    /// Peers allowed besides the SFU's own media addresses.
    pub allowed_peers: Vec<PeerRule>,
    /// Whether other public peers are reachable.
    pub public_peers: PublicPeers,
    /// Most allocations in total.
    pub max_allocations: usize,
    /// Most allocations per identity.
    pub max_allocations_per_user: usize,
    /// Allocate attempts per source IP.
    pub rate_limit: RateLimit,
    /// Event-loop threads of the relay, each with its share of the relay ports.
    pub threads: usize,
    /// URLs handed to clients instead of the ones derived from `advertise_ip`.
    pub urls: Option<Vec<String>>,
}

/// The TLS listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnTls {
    /// Port.
    pub port: u16,
    /// Where the certificate comes from.
    pub certificates: TurnCertificates,
}

/// The TURN TLS listener's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnCertificates {
    /// PEM files.
    Files {
        /// PEM certificate chain.
        certificate: PathBuf,
        /// PEM private key.
        private_key: PathBuf,
    },
    /// The HTTPS listener's ACME certificate (`[http] acme_domains`), renewals included.
    Acme,
}

/// Ports the relay must not take, and what uses them.
#[derive(Debug, Clone, Copy)]
pub struct TakenPorts {
    /// UDP ports of the media engine.
    pub sfu: (u16, u16),
    /// The HTTP listener's TCP port.
    pub http: u16,
}

impl FileTurn {
    /// TURN over TLS with the HTTPS certificate when `[turn]` names no files of its own: one
    /// certificate for the domain serves `https://` and `turns:`, whether from files or from
    /// ACME (`acme`).
    pub fn with_shared_tls(mut self, https: Option<&crate::tls::TlsFiles>, acme: bool) -> FileTurn {
        if self.tls_certificate.is_none() && self.tls_private_key.is_none() {
            if let Some(files) = https {
                self.tls_certificate = Some(files.certificate.clone());
                self.tls_private_key = Some(files.private_key.clone());
            } else if acme {
                self.shared_acme = true;
            }
        }
        self
    }

    /// Validates the table; `where_` prefixes every message (e.g. `config FILE: turn`).
    pub fn finish(self, where_: &str, taken: Option<TakenPorts>) -> Result<TurnSettings> {
        let err = |key: &str, message: String| anyhow!("{where_}.{key}: {message}");
        // A relay that will not run takes no ports from the media engine or HTTP.
        let taken = taken.filter(|_| self.enabled.unwrap_or(false));
        let port_or_off = |port: Option<u16>, default| match port {
            Some(0) => None,
            Some(port) => Some(port),
            None => Some(default),
        };
        let udp_port = port_or_off(self.udp_port, DEFAULT_TURN_PORT);
        let tcp_port = port_or_off(self.tcp_port, DEFAULT_TURN_PORT);
        let tls_port = match self.tls_port {
            Some(0) => bail!("{where_}.tls_port: 0 is not a port"),
            Some(port) => port,
            None => DEFAULT_TURNS_PORT,
        };
        let tls = match (self.tls_certificate, self.tls_private_key) {
            (None, None) if self.shared_acme => Some(TurnTls {
                port: tls_port,
                certificates: TurnCertificates::Acme,
            }),
            (None, None) => None,
            (Some(certificate), Some(private_key)) => Some(TurnTls {
                port: tls_port,
                certificates: TurnCertificates::Files {
                    certificate,
                    private_key,
                },
            }),
            _ => bail!(
                "{where_}: set both tls_certificate and tls_private_key for TURN over TLS, or neither"
            ),
        };
        let start = self
            .relay_port_range_start
            .unwrap_or(DEFAULT_RELAY_PORT_RANGE_START);
        let end = self
            .relay_port_range_end
            .unwrap_or(DEFAULT_RELAY_PORT_RANGE_END);
        if start == 0 || start > end {
            return Err(err(
                "relay_port_range_start",
                format!("relay port range {start}-{end} is empty or starts at 0"),
            ));
        }
        let relay_ports = start..=end;
        if let Some(port) = udp_port.filter(|port| relay_ports.contains(port)) {
            return Err(err(
                "udp_port",
                format!("{port} is inside the relay port range {start}-{end}"),
            ));
        }
        if let Some(tls) = tls.as_ref().filter(|tls| tcp_port == Some(tls.port)) {
            return Err(err(
                "tls_port",
                format!("{} is also the TCP port; TLS needs its own", tls.port),
            ));
        }
        if let Some(taken) = taken {
            let (sfu_first, sfu_last) = taken.sfu;
            if sfu_first <= end && start <= sfu_last {
                return Err(err(
                    "relay_port_range_start",
                    format!(
                        "relay ports {start}-{end} overlap the media engine's UDP ports \
                         {sfu_first}-{sfu_last}; split the range (e.g. media 50000-50099, relay \
                         50100-50200)"
                    ),
                ));
            }
            if udp_port.is_some_and(|p| (sfu_first..=sfu_last).contains(&p)) {
                return Err(err(
                    "udp_port",
                    "is one of the media engine's UDP ports".to_owned(),
                ));
            }
            let tcp_ports = [tcp_port, tls.as_ref().map(|t| t.port)];
            if tcp_ports.contains(&Some(taken.http)) {
                return Err(err("tcp_port", format!("{} is the HTTP port", taken.http)));
            }
        }
        let secret = match self.secret {
            Some(secret) if secret.is_empty() => {
                return Err(err("secret", "must not be empty".to_owned()));
            }
            Some(secret) => Some(Secret::new(secret)),
            None => None,
        };
        let ttl = self
            .credential_ttl_seconds
            .unwrap_or(DEFAULT_CREDENTIAL_TTL_SECONDS);
        if !(60..=7 * 86_400).contains(&ttl) {
            return Err(err(
                "credential_ttl_seconds",
                format!("{ttl} is not between 60 and 604800"),
            ));
        }
        let allowed_peers = self
            .allowed_peers
            .unwrap_or_default()
            .iter()
            .map(|rule| rule.parse::<PeerRule>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err("allowed_peers", e.to_string()))?;
        let range_len = usize::from(end - start) + 1;
        let max_allocations = self.max_allocations.unwrap_or(range_len);
        if max_allocations == 0 || max_allocations > range_len {
            return Err(err(
                "max_allocations",
                format!("must be between 1 and the {range_len} relay ports"),
            ));
        }
        let max_allocations_per_user = self
            .max_allocations_per_user
            .unwrap_or(DEFAULT_MAX_ALLOCATIONS_PER_USER);
        if max_allocations_per_user == 0 {
            return Err(err(
                "max_allocations_per_user",
                "must be at least 1".to_owned(),
            ));
        }
        let defaults = RateLimit::default();
        let rate_limit = RateLimit {
            burst: self.allocate_burst.unwrap_or(defaults.burst),
            per_second: self.allocate_per_second.unwrap_or(defaults.per_second),
        };
        if rate_limit.burst == 0 || rate_limit.per_second == 0 {
            return Err(err(
                "allocate_burst",
                "allocate_burst and allocate_per_second must be at least 1".to_owned(),
            ));
        }
        let threads = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(range_len)
        });
        if threads == 0 || threads > range_len.min(MAX_THREADS) {
            return Err(err(
                "threads",
                format!(
                    "must be between 1 and {} (each thread owns relay ports)",
                    range_len.min(MAX_THREADS)
                ),
            ));
        }
        let not_turn = |u: &&String| !(u.starts_with("turn:") || u.starts_with("turns:"));
        if let Some(bad) = self.urls.iter().flatten().find(not_turn) {
            return Err(err("urls", format!("{bad:?} is not a turn: or turns: URL")));
        }
        let realm = self.realm.unwrap_or_else(|| DEFAULT_REALM.to_owned());
        if realm.is_empty() || realm.len() > 127 {
            return Err(err("realm", "must be 1 to 127 bytes".to_owned()));
        }
        Ok(TurnSettings {
            enabled: self.enabled.unwrap_or(false),
            udp_port,
            tcp_port,
            tls,
            relay_ports,
            secret,
            realm,
            credential_ttl: Duration::from_secs(ttl),
            allowed_peers,
            public_peers: if self.allow_public_peers.unwrap_or(false) {
                PublicPeers::Allow
            } else {
                PublicPeers::Refuse
            },
            max_allocations,
            max_allocations_per_user,
            rate_limit,
            threads,
            urls: self.urls,
        })
    }
}

impl TurnSettings {
    /// The relay's configuration. `sfu_peers` are the media engine's addresses, always allowed;
    /// `secret` is the one credentials are minted with; `acme` serves the TLS listener when its
    /// certificate comes from ACME.
    pub fn relay_config(
        &self,
        bind_ip: IpAddr,
        advertise_ip: IpAddr,
        sfu_peers: Vec<PeerRule>,
        secret: Secret,
        nonce_key: [u8; 16],
        acme: Option<&crate::acme::Acme>,
    ) -> Result<RelayConfig> {
        let mut allow = sfu_peers;
        allow.extend(self.allowed_peers.iter().cloned());
        let tls = match &self.tls {
            None => None,
            Some(tls) => Some(TlsConfig {
                port: tls.port,
                certificates: match (&tls.certificates, acme) {
                    (
                        TurnCertificates::Files {
                            certificate,
                            private_key,
                        },
                        _,
                    ) => TlsCertificates::Files {
                        certificate: certificate.clone(),
                        private_key: private_key.clone(),
                    },
                    (TurnCertificates::Acme, Some(acme)) => {
                        TlsCertificates::Config(acme.server_config(Vec::new()))
                    }
                    (TurnCertificates::Acme, None) => {
                        bail!(
                            "turn: TURN over TLS shares the ACME certificate, but ACME is not running"
                        )
                    }
                },
            }),
        };
        Ok(RelayConfig {
            bind_ip,
            udp_port: self.udp_port,
            tcp_port: self.tcp_port,
            tls,
            max_connections: 4096,
            shards: self.threads,
            core: proto::Config {
                realm: self.realm.clone(),
                secret,
                relay_ip: advertise_ip,
                relay_ports: self.relay_ports.clone(),
                policy: PeerPolicy {
                    allow,
                    public: self.public_peers,
                },
                quotas: proto::Quotas {
                    per_user: self.max_allocations_per_user,
                    total: self.max_allocations,
                },
                rate_limit: self.rate_limit,
                max_lifetime: Duration::from_secs(3600),
                nonce_key,
            },
        })
    }

    /// The URLs clients get: the configured ones, or one per enabled listener on `host`.
    pub fn client_urls(&self, advertise_ip: IpAddr) -> Vec<String> {
        if let Some(urls) = &self.urls {
            return urls.clone();
        }
        let host = match advertise_ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut urls = Vec::new();
        if let Some(port) = self.udp_port {
            urls.push(format!("turn:{host}:{port}?transport=udp"));
        }
        if let Some(port) = self.tcp_port {
            urls.push(format!("turn:{host}:{port}?transport=tcp"));
        }
        if let Some(tls) = &self.tls {
            urls.push(format!("turns:{host}:{}?transport=tcp", tls.port));
        }
        urls
    }
}

/// Mints per-session TURN credentials for the JoinResponse: what signaling calls, without
/// depending on the relay crate.
pub fn credential_minter(secret: Secret, ttl: Duration, urls: Vec<String>) -> TurnServers {
    TurnServers(Arc::new(move |identity: &str| {
        #[allow(clippy::disallowed_methods, reason = "the binary owns the wall clock")]
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let credentials = Credentials::mint(&secret, identity, now + ttl.as_secs());
        TurnCredentials {
            urls: urls.clone(),
            username: credentials.username,
            credential: credentials.password,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TurnSettings> {
        let file: FileTurn = toml::from_str(text)?;
        file.finish(
            "turn",
            Some(TakenPorts {
                sfu: (50000, 50001),
                http: 7880,
            }),
        )
    }

    #[test]
    fn defaults_are_off_and_split_the_operator_range() {
        let settings = parse("").expect("defaults");
        assert!(!settings.enabled);
        assert_eq!(settings.relay_ports, 50100..=50200);
        assert_eq!(
            (settings.udp_port, settings.tcp_port),
            (Some(3478), Some(3478))
        );
        assert_eq!(settings.max_allocations, 101);
        assert!(settings.threads >= 1);
        assert_eq!(
            settings.client_urls("203.0.113.10".parse().expect("ip")),
            [
                "turn:203.0.113.10:3478?transport=udp",
                "turn:203.0.113.10:3478?transport=tcp"
            ]
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (text, key) in [
            (
                "enabled = true\nrelay_port_range_start = 50000",
                "overlap the media engine",
            ),
            ("relay_port_range_start = 60000", "empty"),
            ("tls_certificate = \"c.pem\"", "both"),
            ("secret = \"\"", "secret"),
            ("allowed_peers = [\"10.0.0.0/33\"]", "allowed_peers"),
            ("urls = [\"stun:x\"]", "urls"),
            ("max_allocations = 500", "max_allocations"),
            ("enabled = true\ntcp_port = 7880", "HTTP port"),
            ("credential_ttl_seconds = 1", "credential_ttl_seconds"),
            ("threads = 0", "threads"),
            (
                "relay_port_range_start = 50100\nrelay_port_range_end = 50101\nthreads = 3",
                "threads",
            ),
        ] {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn a_disabled_relay_takes_no_ports() {
        // Media and HTTP may use the relay's default ports while the relay is off.
        let file: FileTurn = toml::from_str("").expect("empty");
        let taken = TakenPorts {
            sfu: (50144, 50144),
            http: 3478,
        };
        assert!(file.finish("turn", Some(taken)).is_ok());
    }

    #[test]
    fn minted_credentials_verify_against_the_secret() {
        let mint = credential_minter(
            Secret::new("s"),
            Duration::from_secs(60),
            vec!["turn:x".into()],
        );
        let minted = (mint.0)("alice");
        assert_eq!(minted.urls, ["turn:x"]);
        assert!(minted.username.ends_with(":alice"));
        assert_eq!(
            minted.credential,
            stoa_turn::proto::credentials::password(&Secret::new("s"), &minted.username)
        );
    }
}
