//! Stoa's configuration, parsed once at startup into the validated [`Config`].
//!
//! Values are layered, each layer overriding the one before it:
//!
//! 1. built-in defaults, which depend on the [`Mode`] (`stoa serve --dev` or not);
//! 2. the TOML config file (`--config FILE` or `STOA_CONFIG`), see `config.example.toml`;
//! 3. `STOA_*` environment variables (an empty variable counts as unset);
//! 4. command-line flags ([`Overrides`]).
//!
//! Every problem is reported as one line that says where the bad value came from
//! (`config /etc/stoa.toml:3: …`, `STOA_HTTP_PORT: …`, `--http-port: …`), so an operator can fix
//! it without reading a stack trace. Nothing malformed is silently ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use toml::Spanned;
use tracing_subscriber::EnvFilter;

/// HTTP and WebSocket port, in every mode (LiveKit's default too).
pub const DEFAULT_HTTP_PORT: u16 = 7880;
/// RTC UDP port in dev mode: every peer connection multiplexed on it (LiveKit's dev default).
pub const DEV_RTC_UDP_PORT: u16 = 7882;
/// First RTC UDP port outside dev mode.
pub const DEFAULT_RTC_PORT_RANGE_START: u16 = 50000;
/// Last RTC UDP port outside dev mode (inclusive).
pub const DEFAULT_RTC_PORT_RANGE_END: u16 = 50200;
/// API key used in dev mode when no keys are configured.
pub const DEV_API_KEY: &str = "devkey";
/// Secret of [`DEV_API_KEY`]; well known, so dev mode must never face a network.
pub const DEV_API_SECRET: &str = "secret";
/// Fewest media engine shards by default with a port range, whatever the cores: rooms are kept
/// on different shards (`stoa_signaling::proto` placement), so that on one core too a busy
/// room's fan-out runs on another thread than a quiet room's joins, and the kernel shares the
/// core between them. (On one shared port the default stays one per core: there a datagram
/// lands on any shard's socket and waits for that shard's turn before it is passed on.)
pub const MIN_DEFAULT_SHARDS: NonZeroUsize = NonZeroUsize::new(2).expect("2 > 0");
/// Most media engine shards supported; the engine refuses more.
pub const MAX_SHARDS: usize = 255;
/// Log filter when none is configured.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// How long a graceful shutdown waits for sessions to end, when not configured.
pub const DEFAULT_DRAIN_SECONDS: u64 = 30;
/// Longest drain deadline accepted (one hour).
pub const MAX_DRAIN_SECONDS: u64 = 3600;

/// Environment variable naming the config file (read by the command line parser).
pub const ENV_CONFIG: &str = "STOA_CONFIG";
const ENV_BIND_IP: &str = "STOA_BIND_IP";
const ENV_ADVERTISE_IP: &str = "STOA_ADVERTISE_IP";
const ENV_HTTP_PORT: &str = "STOA_HTTP_PORT";
const ENV_RTC_UDP_PORT: &str = "STOA_RTC_UDP_PORT";
const ENV_RTC_SHARDS: &str = "STOA_RTC_SHARDS";
const ENV_KEYS: &str = "STOA_KEYS";
const ENV_LOG_LEVEL: &str = "STOA_LOG_LEVEL";
const ENV_DRAIN_SECONDS: &str = "STOA_DRAIN_SECONDS";
const ENV_SHUTDOWN_CLIENTS: &str = "STOA_SHUTDOWN_CLIENTS";
const ENV_DATA_DIR: &str = "STOA_DATA_DIR";
const ENV_REDIS_URL: &str = "STOA_REDIS_URL";
const ENV_PUBLIC_URL: &str = "STOA_PUBLIC_URL";

/// Level names accepted on their own in a log filter.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// How the defaults are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `--dev`: API key `devkey` / secret `secret` unless keys are configured, bound and advertised
    /// on 127.0.0.1, HTTP on 7880, RTC UDP on 7882.
    Dev,
    /// Normal operation: API keys are required, bound on 0.0.0.0 (so `advertise_ip` is required),
    /// HTTP on 7880, RTC UDP on ports 50000-50200.
    Production,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Dev => "dev",
            Mode::Production => "production",
        })
    }
}

/// Values given on the command line; each one wins over the file and the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--bind-ip`.
    pub bind_ip: Option<IpAddr>,
    /// `--advertise-ip`.
    pub advertise_ip: Option<IpAddr>,
    /// `--http-port`.
    pub http_port: Option<u16>,
    /// `--rtc-udp-port`.
    pub rtc_udp_port: Option<u16>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--livekit-config`: a LiveKit server YAML file read before the Stoa config file.
    pub livekit_config: Option<PathBuf>,
}

/// The validated configuration `stoa serve` runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Which defaults applied.
    pub mode: Mode,
    /// Address the HTTP listener and the RTC sockets bind to.
    pub bind_ip: IpAddr,
    /// Address given to clients in ICE candidates; never unspecified (0.0.0.0 or ::).
    pub advertise_ip: IpAddr,
    /// HTTP and WebSocket port.
    pub http_port: u16,
    /// Certificate and key for serving HTTPS and WSS directly; `None`: plain HTTP (behind a
    /// TLS proxy, or in development).
    pub http_tls: Option<crate::tls::TlsFiles>,
    /// Certificates obtained and renewed by ACME for HTTPS, WSS and TURN over TLS
    /// (`[http] acme_domains`); never set together with `http_tls`.
    pub acme: Option<crate::acme::AcmeSettings>,
    /// STUN servers to discover the public address with at start-up (`rtc.use_external_ip`);
    /// empty: `advertise_ip` is used as it is.
    pub stun_servers: Vec<String>,
    /// Media engine sockets.
    pub rtc: RtcConfig,
    /// API keys and their secrets; never empty.
    pub keys: ApiKeys,
    /// Log filter and format.
    pub logging: LoggingConfig,
    /// Where webhooks go.
    pub webhook: WebhookSettings,
    /// The control plane (`[control]`).
    pub control: stoa_control::ControlConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Defaults of rooms created on join.
    pub room: RoomSettings,
    /// The embedded TURN relay (`[turn]`, see `turn_config.rs`).
    pub turn: crate::turn_config::TurnSettings,
    /// Room recordings (`[recording]`).
    pub recording: RecordingSettings,
    /// Problems that did not stop startup (keys of a LiveKit config that Stoa ignores), logged
    /// as warnings once logging is up.
    pub warnings: Vec<String>,
}

/// Room recordings (`[recording]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingSettings {
    /// Where recordings are written: one directory per room and recording under it. Default
    /// `<control.data_dir>/recordings`.
    pub dir: PathBuf,
    /// Whether each speaker also gets a file of their own (their Opus as received, no
    /// transcoding) beside the room mix.
    pub track_files: bool,
}

/// Room defaults (`[room]`), LiveKit's names and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomSettings {
    /// Seconds a room nobody joined stays open.
    pub empty_timeout: u32,
    /// Seconds a room stays open after the last participant left.
    pub departure_timeout: u32,
    /// Most participants in a room; 0 for no limit.
    pub max_participants: u32,
}

impl Default for RoomSettings {
    fn default() -> Self {
        RoomSettings {
            empty_timeout: 300,
            departure_timeout: 20,
            max_participants: 0,
        }
    }
}

/// Graceful shutdown settings (`[shutdown]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long to wait for connected sessions to leave before exiting.
    pub drain: std::time::Duration,
    /// What connected clients are told on SIGTERM.
    pub clients: ShutdownClients,
}

/// What a stopping server does with its connected clients (`[shutdown] clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownClients {
    /// Ask them to leave for good (`Leave { SERVER_SHUTDOWN }`) and wait for the rooms to empty,
    /// at most the drain deadline: the node is going away.
    Leave,
    /// Close their connections at once without a `Leave`, so that LiveKit clients reconnect by
    /// themselves and rejoin their rooms when the node (or its replacement) is back: a restart.
    Reconnect,
}

impl ShutdownClients {
    fn parse(value: &str) -> Result<ShutdownClients, String> {
        match value {
            "leave" => Ok(ShutdownClients::Leave),
            "reconnect" => Ok(ShutdownClients::Reconnect),
            other => Err(format!("`{other}` is not one of \"leave\", \"reconnect\"")),
        }
    }
}

/// Webhook destinations (`[webhook]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookSettings {
    /// `http://` or `https://` URLs every event is posted to; empty: no webhooks.
    pub urls: Vec<String>,
    /// The configured API key whose secret signs them.
    pub api_key: String,
    /// PEM CA certificates trusted for `https://` receivers besides the system's store.
    pub ca_file: Option<PathBuf>,
}

impl Config {
    /// Where the HTTP listener binds.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_ip, self.http_port)
    }
}

/// Media engine socket settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcConfig {
    /// UDP port(s) for WebRTC media.
    pub ports: RtcPorts,
    /// Number of media engine shards (by default one per core; with a port range at least
    /// [`MIN_DEFAULT_SHARDS`], at most one per port).
    pub shards: NonZeroUsize,
    /// Peers a room puts on one shard before it spreads to another.
    pub room_peers_per_shard: NonZeroU32,
}

/// UDP port(s) for WebRTC media. Ports are never 0, and a range is never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcPorts {
    /// Every peer connection on one port, demultiplexed by the engine.
    Mux(u16),
    /// Ports `start..=end`.
    Range {
        /// First port.
        start: u16,
        /// Last port, inclusive.
        end: u16,
    },
}

/// API keys and their secrets, as used to sign and verify access tokens.
///
/// Its `Debug` output shows the keys and hides the secrets, so it can be logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(BTreeMap<String, ApiSecret>);

impl ApiKeys {
    fn dev() -> Self {
        let mut keys = Self::default();
        keys.0
            .insert(DEV_API_KEY.to_owned(), ApiSecret(DEV_API_SECRET.to_owned()));
        keys
    }

    fn insert(&mut self, key: &str, secret: &str) -> Result<(), String> {
        let (key, secret) = (key.trim(), secret.trim());
        if key.is_empty() {
            return Err("API key name is empty".to_owned());
        }
        if secret.is_empty() {
            return Err(format!("secret for API key `{key}` is empty"));
        }
        if self
            .0
            .insert(key.to_owned(), ApiSecret(secret.to_owned()))
            .is_some()
        {
            return Err(format!("API key `{key}` is given twice"));
        }
        Ok(())
    }

    /// The key names, which are not secret and may be logged.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The secret of `key`, if it is configured.
    pub fn secret(&self, key: &str) -> Option<&ApiSecret> {
        self.0.get(key)
    }

    /// Whether the well-known dev credentials are accepted.
    pub fn has_dev_key(&self) -> bool {
        self.0
            .get(DEV_API_KEY)
            .is_some_and(|secret| secret.0 == DEV_API_SECRET)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An API secret. Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiSecret(String);

impl ApiSecret {
    /// The secret itself: for signing and verifying tokens, never for logs or clients.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiSecret(<redacted>)")
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    /// Which events are logged.
    pub filter: LogFilter,
    /// How they are written.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A log filter known to parse: a level (`info`) or `tracing` directives
/// (`info,stoa_sfu=debug`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter(String);

impl LogFilter {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("log filter is empty".to_owned());
        }
        let bare_target = text.split(',').map(str::trim).find(|directive| {
            !directive.contains('=')
                && !LOG_LEVELS.contains(&directive.to_ascii_lowercase().as_str())
        });
        if let Some(directive) = bare_target {
            return Err(format!(
                "`{directive}` is not a log level (one of {}) or a `target=level` directive",
                LOG_LEVELS.join(", ")
            ));
        }
        EnvFilter::builder()
            .parse(text)
            .map_err(|err| format!("invalid log filter `{text}`: {err}"))?;
        Ok(Self(text.to_owned()))
    }

    /// The filter for `tracing-subscriber`.
    pub fn env_filter(&self) -> EnvFilter {
        // INVARIANT: `parse` accepted this text, so it parses again.
        EnvFilter::builder()
            .parse(&self.0)
            .expect("log filter was validated when the config was loaded")
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Loads the configuration: defaults for `mode`, then the file at `path` (if any), then the
/// environment as seen through `env`, then `flags`.
pub fn load(
    mode: Mode,
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    flags: &Overrides,
) -> Result<Config> {
    let mut layers = Layers::default();
    if let Some(path) = &flags.livekit_config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("LiveKit config {}: cannot read", path.display()))?;
        let name = path.display().to_string();
        let (toml_text, ignored) = crate::livekit_config::translate(&name, &text)?;
        layers
            .apply_file(&format!("{name} (LiveKit config, translated)"), &toml_text)
            .with_context(|| format!("LiveKit config {name}"))?;
        layers.warnings.extend(ignored.into_iter().map(|key| {
            format!("LiveKit config {name}: `{key}` is not supported by Stoa; ignored")
        }));
    }
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("config {}: cannot read", path.display()))?;
        layers.apply_file(&path.display().to_string(), &text)?;
    }
    layers.apply_env(env)?;
    layers.apply_flags(flags)?;
    let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    layers.finish(mode, cores)
}

/// The config file's shape. Every key is optional; defaults are applied by [`Layers::finish`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind_ip: Option<Spanned<String>>,
    advertise_ip: Option<Spanned<String>>,
    #[serde(default)]
    http: FileHttp,
    #[serde(default)]
    rtc: FileRtc,
    keys: Option<BTreeMap<String, Spanned<String>>>,
    #[serde(default)]
    logging: FileLogging,
    #[serde(default)]
    webhook: FileWebhook,
    #[serde(default)]
    shutdown: FileShutdown,
    #[serde(default)]
    room: FileRoom,
    #[serde(default)]
    recording: FileRecording,
    turn: Option<crate::turn_config::FileTurn>,
    control: Option<stoa_control::ControlConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoom {
    empty_timeout: Option<u32>,
    departure_timeout: Option<u32>,
    max_participants: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecording {
    dir: Option<PathBuf>,
    track_files: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShutdown {
    drain_seconds: Option<Spanned<u64>>,
    clients: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    #[serde(default)]
    urls: Vec<String>,
    api_key: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    port: Option<Spanned<u16>>,
    tls_certificate: Option<Spanned<std::path::PathBuf>>,
    tls_private_key: Option<Spanned<std::path::PathBuf>>,
    acme_domains: Option<Vec<Spanned<String>>>,
    acme_email: Option<Spanned<String>>,
    acme_directory: Option<Spanned<String>>,
    acme_ca_file: Option<PathBuf>,
    acme_account_key: Option<PathBuf>,
    acme_cache_dir: Option<PathBuf>,
}

/// `[http] acme_*` as read so far (validated one by one; as a whole in `finish`).
#[derive(Debug, Default)]
struct AcmeLayer {
    domains: Vec<String>,
    email: Option<String>,
    directory: Option<String>,
    ca_file: Option<PathBuf>,
    account_key: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRtc {
    udp_port: Option<Spanned<u16>>,
    port_range_start: Option<Spanned<u16>>,
    port_range_end: Option<Spanned<u16>>,
    shards: Option<Spanned<usize>>,
    room_peers_per_shard: Option<Spanned<u32>>,
    use_external_ip: Option<bool>,
    stun_servers: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLogging {
    level: Option<Spanned<String>>,
    json: Option<bool>,
}

/// Values set so far, each already valid on its own; `None` means "use the default".
#[derive(Debug, Default)]
struct Layers {
    bind_ip: Option<IpAddr>,
    advertise_ip: Option<IpAddr>,
    http_port: Option<u16>,
    http_tls: Option<crate::tls::TlsFiles>,
    acme: AcmeLayer,
    use_external_ip: bool,
    stun_servers: Option<Vec<String>>,
    rtc_ports: Option<RtcPorts>,
    shards: Option<NonZeroUsize>,
    room_peers_per_shard: Option<NonZeroU32>,
    keys: Option<ApiKeys>,
    log_filter: Option<LogFilter>,
    log_format: Option<LogFormat>,
    webhook_urls: Vec<String>,
    webhook_api_key: Option<String>,
    webhook_ca_file: Option<PathBuf>,
    drain_seconds: Option<u64>,
    shutdown_clients: Option<ShutdownClients>,
    room: RoomSettings,
    recording_dir: Option<PathBuf>,
    recording_track_files: bool,
    /// `[turn]` as read, and the file it came from (validated in `finish`).
    turn: Option<(String, crate::turn_config::FileTurn)>,
    control: stoa_control::ControlConfig,
    warnings: Vec<String>,
}

impl Layers {
    /// Applies `[http] acme_*`; `at` names a key and its line.
    fn apply_acme(
        &mut self,
        http: &FileHttp,
        at: &dyn Fn(&str, std::ops::Range<usize>) -> String,
    ) -> Result<()> {
        if let Some(domains) = &http.acme_domains {
            let mut checked = Vec::with_capacity(domains.len());
            for domain in domains {
                let domain_ok = crate::acme::check_domain(domain.get_ref())
                    .map_err(|e| anyhow!("{}: {e}", at("http.acme_domains", domain.span())))?;
                if !checked.contains(&domain_ok) {
                    checked.push(domain_ok);
                }
            }
            self.acme.domains = checked;
        }
        if let Some(email) = &http.acme_email {
            let value = email.get_ref().trim();
            let value = value.strip_prefix("mailto:").unwrap_or(value);
            let (user, host) = value.split_once('@').unwrap_or_default();
            if user.is_empty() || !host.contains('.') || value.contains(char::is_whitespace) {
                bail!(
                    "{}: {value:?} is not an e-mail address",
                    at("http.acme_email", email.span())
                );
            }
            self.acme.email = Some(value.to_owned());
        }
        if let Some(directory) = &http.acme_directory {
            let value = directory.get_ref().trim();
            if !value.starts_with("https://") || value.len() <= "https://".len() {
                bail!(
                    "{}: {value:?} is not an https:// URL (ACME directories are served over HTTPS)",
                    at("http.acme_directory", directory.span())
                );
            }
            self.acme.directory = Some(value.to_owned());
        }
        if let Some(path) = &http.acme_ca_file {
            self.acme.ca_file = Some(path.clone());
        }
        if let Some(path) = &http.acme_account_key {
            self.acme.account_key = Some(path.clone());
        }
        if let Some(path) = &http.acme_cache_dir {
            self.acme.cache_dir = Some(path.clone());
        }
        Ok(())
    }

    /// The validated ACME settings: `None` without domains. Defaults live under the control
    /// plane's data directory (a container's volume).
    fn finish_acme(
        acme: AcmeLayer,
        http_tls: Option<&crate::tls::TlsFiles>,
        data_dir: &Path,
    ) -> Result<Option<crate::acme::AcmeSettings>> {
        if acme.domains.is_empty() {
            let stray = [
                ("acme_email", acme.email.is_some()),
                ("acme_directory", acme.directory.is_some()),
                ("acme_ca_file", acme.ca_file.is_some()),
                ("acme_account_key", acme.account_key.is_some()),
                ("acme_cache_dir", acme.cache_dir.is_some()),
            ];
            if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                bail!(
                    "http.{key} is set but http.acme_domains is empty: list the domains to obtain a certificate for"
                );
            }
            return Ok(None);
        }
        if http_tls.is_some() {
            bail!(
                "http.acme_domains and http.tls_certificate are both set: use certificate files or ACME, not both"
            );
        }
        let cache_dir = acme.cache_dir.unwrap_or_else(|| data_dir.join("acme"));
        Ok(Some(crate::acme::AcmeSettings {
            domains: acme.domains,
            email: acme.email,
            directory: acme
                .directory
                .unwrap_or_else(|| crate::acme::LETS_ENCRYPT.to_owned()),
            ca_file: acme.ca_file,
            account_key: acme
                .account_key
                .unwrap_or_else(|| cache_dir.join("account-key.pem")),
            cache_dir,
        }))
    }

    /// Applies a config file; `name` is how messages refer to it.
    fn apply_file(&mut self, name: &str, text: &str) -> Result<()> {
        let file: FileConfig = toml::from_str(text).map_err(|err| {
            let line = err
                .span()
                .map(|span| format!(":{}", line_of(text, span.start)));
            let message = err.message().trim().replace('\n', " ");
            anyhow!("config {name}{}: {message}", line.unwrap_or_default())
        })?;
        let at = |key: &str, span: std::ops::Range<usize>| {
            format!("config {name}:{}: {key}", line_of(text, span.start))
        };

        if let Some(value) = &file.bind_ip {
            self.bind_ip = Some(
                parse_bind_ip(value.get_ref())
                    .map_err(|e| anyhow!("{}: {e}", at("bind_ip", value.span())))?,
            );
        }
        if let Some(value) = &file.advertise_ip {
            let where_ = at("advertise_ip", value.span());
            self.advertise_ip =
                Some(parse_advertise_ip(value.get_ref()).map_err(|e| anyhow!("{where_}: {e}"))?);
        }
        if let Some(port) = &file.http.port {
            self.http_port = Some(
                check_port(*port.get_ref())
                    .map_err(|e| anyhow!("{}: {e}", at("http.port", port.span())))?,
            );
        }

        match (&file.http.tls_certificate, &file.http.tls_private_key) {
            (None, None) => {}
            (Some(certificate), Some(private_key)) => {
                self.http_tls = Some(crate::tls::TlsFiles {
                    certificate: certificate.get_ref().clone(),
                    private_key: private_key.get_ref().clone(),
                });
            }
            (Some(file), None) | (None, Some(file)) => bail!(
                "{}: set both http.tls_certificate and http.tls_private_key, or neither",
                at("http", file.span())
            ),
        }

        self.apply_acme(&file.http, &at)?;

        let rtc = &file.rtc;
        if let Some(on) = rtc.use_external_ip {
            self.use_external_ip = on;
        }
        if let Some(servers) = &rtc.stun_servers {
            let mut checked = Vec::with_capacity(servers.len());
            for server in servers {
                checked.push(
                    check_stun_server(server.get_ref())
                        .map_err(|e| anyhow!("{}: {e}", at("rtc.stun_servers", server.span())))?,
                );
            }
            self.stun_servers = Some(checked);
        }
        match (&rtc.udp_port, &rtc.port_range_start, &rtc.port_range_end) {
            (None, None, None) => {}
            (Some(port), None, None) => {
                let port = check_port(*port.get_ref())
                    .map_err(|e| anyhow!("{}: {e}", at("rtc.udp_port", port.span())))?;
                self.rtc_ports = Some(RtcPorts::Mux(port));
            }
            (Some(port), _, _) => bail!(
                "{}: set either rtc.udp_port or rtc.port_range_start/rtc.port_range_end, not both",
                at("rtc.udp_port", port.span())
            ),
            (None, Some(start), Some(end)) => {
                let where_ = at("rtc.port_range_start", start.span());
                let start = check_port(*start.get_ref()).map_err(|e| anyhow!("{where_}: {e}"))?;
                let end = check_port(*end.get_ref())
                    .map_err(|e| anyhow!("{}: {e}", at("rtc.port_range_end", end.span())))?;
                if start > end {
                    bail!("{where_}: port range {start}-{end} is empty (start is after end)");
                }
                self.rtc_ports = Some(RtcPorts::Range { start, end });
            }
            (None, Some(start), None) => bail!(
                "{}: rtc.port_range_end is missing; set both ends of the range",
                at("rtc.port_range_start", start.span())
            ),
            (None, None, Some(end)) => bail!(
                "{}: rtc.port_range_start is missing; set both ends of the range",
                at("rtc.port_range_end", end.span())
            ),
        }
        if let Some(shards) = &rtc.shards {
            let count = shard_count(*shards.get_ref()).ok_or_else(|| {
                anyhow!(
                    "{}: must be between 1 and {MAX_SHARDS}",
                    at("rtc.shards", shards.span())
                )
            })?;
            self.shards = Some(count);
        }
        if let Some(peers) = &rtc.room_peers_per_shard {
            let peers = NonZeroU32::new(*peers.get_ref()).ok_or_else(|| {
                anyhow!(
                    "{}: must be at least 1",
                    at("rtc.room_peers_per_shard", peers.span())
                )
            })?;
            self.room_peers_per_shard = Some(peers);
        }

        if let Some(table) = &file.keys {
            let mut keys = ApiKeys::default();
            for (key, secret) in table {
                keys.insert(key, secret.get_ref())
                    .map_err(|e| anyhow!("{}: {e}", at(&format!("keys.{key}"), secret.span())))?;
            }
            self.keys = Some(keys);
        }

        for url in &file.webhook.urls {
            let host = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                bail!("config {name}: webhook.urls: {url:?} is not an http:// or https:// URL");
            }
        }
        if let Some(ca_file) = &file.webhook.ca_file {
            self.webhook_ca_file = Some(ca_file.clone());
        }
        if !file.webhook.urls.is_empty() {
            self.webhook_urls = file.webhook.urls.clone();
        }
        if let Some(key) = &file.webhook.api_key {
            self.webhook_api_key = Some(key.clone());
        }

        if let Some(level) = &file.logging.level {
            let filter = LogFilter::parse(level.get_ref())
                .map_err(|e| anyhow!("{}: {e}", at("logging.level", level.span())))?;
            self.log_filter = Some(filter);
        }
        if let Some(clients) = &file.shutdown.clients {
            self.shutdown_clients = Some(
                ShutdownClients::parse(clients.get_ref())
                    .map_err(|e| anyhow!("{}: {e}", at("shutdown.clients", clients.span())))?,
            );
        }
        if let Some(seconds) = &file.shutdown.drain_seconds {
            self.drain_seconds =
                Some(check_drain_seconds(*seconds.get_ref()).map_err(|e| {
                    anyhow!("{}: {e}", at("shutdown.drain_seconds", seconds.span()))
                })?);
        }
        if let Some(control) = &file.control {
            control
                .validate()
                .map_err(|e| anyhow!("config {name}: {e}"))?;
            self.control = control.clone();
        }
        if let Some(dir) = &file.recording.dir {
            if dir.as_os_str().is_empty() {
                bail!("config {name}: recording.dir: must not be empty");
            }
            self.recording_dir = Some(dir.clone());
        }
        if let Some(on) = file.recording.track_files {
            self.recording_track_files = on;
        }
        if let Some(v) = file.room.empty_timeout {
            self.room.empty_timeout = v;
        }
        if let Some(v) = file.room.departure_timeout {
            self.room.departure_timeout = v;
        }
        if let Some(turn) = file.turn {
            self.turn = Some((format!("config {name}: turn"), turn));
        }
        if let Some(v) = file.room.max_participants {
            self.room.max_participants = v;
        }
        if let Some(json) = file.logging.json {
            self.log_format = Some(if json {
                LogFormat::Json
            } else {
                LogFormat::Text
            });
        }
        Ok(())
    }

    /// Applies the `STOA_*` variables that `env` returns (except `STOA_CONFIG`, read earlier).
    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
        let var = |name: &str| {
            env(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };

        if let Some(value) = var(ENV_BIND_IP) {
            self.bind_ip = Some(parse_bind_ip(&value).map_err(|e| anyhow!("{ENV_BIND_IP}: {e}"))?);
        }
        if let Some(value) = var(ENV_ADVERTISE_IP) {
            self.advertise_ip =
                Some(parse_advertise_ip(&value).map_err(|e| anyhow!("{ENV_ADVERTISE_IP}: {e}"))?);
        }
        if let Some(value) = var(ENV_HTTP_PORT) {
            self.http_port = Some(parse_port(&value).map_err(|e| anyhow!("{ENV_HTTP_PORT}: {e}"))?);
        }
        if let Some(value) = var(ENV_RTC_UDP_PORT) {
            // A port from the environment replaces whatever the file chose, range included.
            let port = parse_port(&value).map_err(|e| anyhow!("{ENV_RTC_UDP_PORT}: {e}"))?;
            self.rtc_ports = Some(RtcPorts::Mux(port));
        }
        if let Some(value) = var(ENV_RTC_SHARDS) {
            let count = value
                .parse::<usize>()
                .ok()
                .and_then(shard_count)
                .ok_or_else(|| {
                    anyhow!(
                        "{ENV_RTC_SHARDS}: `{value}` is not a number of shards (1-{MAX_SHARDS})"
                    )
                })?;
            self.shards = Some(count);
        }
        if let Some(value) = var(ENV_KEYS) {
            self.keys = Some(parse_key_list(&value).map_err(|e| anyhow!("{ENV_KEYS}: {e}"))?);
        }
        if let Some(value) = var(ENV_LOG_LEVEL) {
            self.log_filter =
                Some(LogFilter::parse(&value).map_err(|e| anyhow!("{ENV_LOG_LEVEL}: {e}"))?);
        }
        if let Some(value) = var(ENV_DATA_DIR) {
            self.control.data_dir = value.into();
        }
        if let Some(value) = var(ENV_PUBLIC_URL) {
            self.control.public_url = value;
            self.control
                .validate()
                .map_err(|e| anyhow!("{ENV_PUBLIC_URL}: {e}"))?;
        }
        if let Some(value) = var(ENV_REDIS_URL) {
            self.control.store = stoa_control::StoreKind::Redis;
            self.control.redis_url = value;
            self.control
                .validate()
                .map_err(|e| anyhow!("{ENV_REDIS_URL}: {e}"))?;
        }
        if let Some(value) = var(ENV_DRAIN_SECONDS) {
            let seconds = value
                .parse::<u64>()
                .map_err(|_| format!("`{value}` is not a number of seconds"))
                .and_then(check_drain_seconds)
                .map_err(|e| anyhow!("{ENV_DRAIN_SECONDS}: {e}"))?;
            self.drain_seconds = Some(seconds);
        }
        if let Some(value) = var(ENV_SHUTDOWN_CLIENTS) {
            self.shutdown_clients = Some(
                ShutdownClients::parse(&value)
                    .map_err(|e| anyhow!("{ENV_SHUTDOWN_CLIENTS}: {e}"))?,
            );
        }
        Ok(())
    }

    fn apply_flags(&mut self, flags: &Overrides) -> Result<()> {
        if let Some(ip) = flags.bind_ip {
            self.bind_ip = Some(check_bind_ip(ip).map_err(|e| anyhow!("--bind-ip: {e}"))?);
        }
        if let Some(ip) = flags.advertise_ip {
            self.advertise_ip =
                Some(check_advertise_ip(ip).map_err(|e| anyhow!("--advertise-ip: {e}"))?);
        }
        if let Some(port) = flags.http_port {
            self.http_port = Some(check_port(port).map_err(|e| anyhow!("--http-port: {e}"))?);
        }
        if let Some(port) = flags.rtc_udp_port {
            let port = check_port(port).map_err(|e| anyhow!("--rtc-udp-port: {e}"))?;
            self.rtc_ports = Some(RtcPorts::Mux(port));
        }
        if let Some(level) = &flags.log_level {
            self.log_filter =
                Some(LogFilter::parse(level).map_err(|e| anyhow!("--log-level: {e}"))?);
        }
        Ok(())
    }

    /// Fills in the defaults for `mode` and checks what involves more than one value.
    fn finish(mut self, mode: Mode, cores: NonZeroUsize) -> Result<Config> {
        let keys = match (self.keys, mode) {
            (Some(keys), _) if !keys.is_empty() => keys,
            (_, Mode::Dev) => ApiKeys::dev(),
            (_, Mode::Production) => bail!(
                "no API keys configured: set [keys] in the config file or {ENV_KEYS}=\"key: secret\", \
                 or run `stoa serve --dev` for local development"
            ),
        };

        let (default_bind_ip, default_rtc_ports) = match mode {
            Mode::Dev => (
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                RtcPorts::Mux(DEV_RTC_UDP_PORT),
            ),
            Mode::Production => (
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                RtcPorts::Range {
                    start: DEFAULT_RTC_PORT_RANGE_START,
                    end: DEFAULT_RTC_PORT_RANGE_END,
                },
            ),
        };
        let bind_ip = self.bind_ip.unwrap_or(default_bind_ip);
        let mut stun_servers = Vec::new();
        let advertise_ip = match self.advertise_ip {
            Some(ip) => {
                if self.use_external_ip {
                    self.warnings.push(format!(
                        "rtc.use_external_ip is ignored: advertise_ip is set to {ip}"
                    ));
                }
                ip
            }
            // Discovered at start-up; until then the bind address stands in.
            None if self.use_external_ip => {
                stun_servers = self.stun_servers.unwrap_or_else(|| {
                    crate::public_ip::DEFAULT_STUN_SERVERS
                        .map(str::to_owned)
                        .to_vec()
                });
                if stun_servers.is_empty() {
                    bail!("rtc.use_external_ip needs at least one entry in rtc.stun_servers");
                }
                bind_ip
            }
            None if bind_ip.is_unspecified() => bail!(
                "advertise_ip is required when bind_ip is {bind_ip}: set advertise_ip in the config file \
                 or {ENV_ADVERTISE_IP} to the address clients reach this server at, or discover \
                 it with [rtc] use_external_ip = true"
            ),
            None => bind_ip,
        };

        let ports = self.rtc_ports.unwrap_or(default_rtc_ports);
        // With a range, each shard listens on its own port of it.
        let range_ports = match ports {
            RtcPorts::Range { start, end } => NonZeroUsize::new(usize::from(end - start) + 1),
            RtcPorts::Mux(_) => None,
        };
        let shards = self.shards.unwrap_or_else(|| {
            // INVARIANT: MAX_SHARDS is not zero.
            let most = NonZeroUsize::new(MAX_SHARDS).expect("MAX_SHARDS > 0");
            match range_ports {
                // At least two, no more than the range has ports.
                Some(len) => cores.max(MIN_DEFAULT_SHARDS).min(len).min(most),
                // On one shared port a datagram may land on any shard and waits for its turn
                // there: more shards than cores would not keep rooms apart.
                None => cores.min(most),
            }
        });
        if let (RtcPorts::Range { start, end }, Some(len)) = (ports, range_ports)
            && len < shards
        {
            bail!(
                "rtc port range {start}-{end} has {len} ports, fewer than the {shards} shards; \
                 widen the range or lower rtc.shards (each shard needs its own port)"
            );
        }

        let webhook_api_key = match self.webhook_api_key {
            Some(key) if keys.secret(&key).is_none() => {
                bail!("webhook.api_key {key:?} is not one of the configured API keys")
            }
            Some(key) => key,
            None => keys.ids().next().unwrap_or_default().to_owned(),
        };
        let sfu_ports = match ports {
            RtcPorts::Mux(port) => (port, port),
            RtcPorts::Range { start, .. } => {
                let last = usize::from(start) + shards.get() - 1;
                (start, u16::try_from(last).unwrap_or(u16::MAX))
            }
        };
        let acme = Layers::finish_acme(self.acme, self.http_tls.as_ref(), &self.control.data_dir)?;
        let (turn_source, turn) = self
            .turn
            .unwrap_or_else(|| ("turn".to_owned(), Default::default()));
        let turn = turn
            .with_shared_tls(self.http_tls.as_ref(), acme.is_some())
            .finish(
                &turn_source,
                Some(crate::turn_config::TakenPorts {
                    sfu: sfu_ports,
                    http: self.http_port.unwrap_or(DEFAULT_HTTP_PORT),
                }),
            )?;
        Ok(Config {
            turn,
            webhook: WebhookSettings {
                urls: self.webhook_urls,
                api_key: webhook_api_key,
                ca_file: self.webhook_ca_file,
            },
            mode,
            bind_ip,
            advertise_ip,
            http_port: self.http_port.unwrap_or(DEFAULT_HTTP_PORT),
            http_tls: self.http_tls,
            acme,
            stun_servers,
            rtc: RtcConfig {
                ports,
                shards,
                room_peers_per_shard: self.room_peers_per_shard.unwrap_or(
                    // INVARIANT: the default is not zero.
                    NonZeroU32::new(stoa_signaling::proto::ROOM_PEERS_PER_SHARD)
                        .expect("ROOM_PEERS_PER_SHARD > 0"),
                ),
            },
            keys,
            logging: LoggingConfig {
                // INVARIANT: the default filter is a plain level.
                filter: self
                    .log_filter
                    .unwrap_or_else(|| LogFilter(DEFAULT_LOG_LEVEL.to_owned())),
                format: self.log_format.unwrap_or(LogFormat::Text),
            },
            room: self.room,
            recording: RecordingSettings {
                dir: self
                    .recording_dir
                    .unwrap_or_else(|| self.control.data_dir.join("recordings")),
                track_files: self.recording_track_files,
            },
            control: self.control.with_mode_defaults(mode == Mode::Dev),
            warnings: self.warnings,
            shutdown: ShutdownConfig {
                drain: std::time::Duration::from_secs(
                    self.drain_seconds.unwrap_or(DEFAULT_DRAIN_SECONDS),
                ),
                clients: self.shutdown_clients.unwrap_or(ShutdownClients::Leave),
            },
        })
    }
}

/// A STUN server as `host:port` (a name or an IP; `[v6]:port`).
fn check_stun_server(text: &str) -> Result<String, String> {
    let text = text.trim();
    let text = text.strip_prefix("stun:").unwrap_or(text);
    let valid = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not host:port (e.g. \"stun.l.google.com:19302\")"
        ))
    }
}

fn check_drain_seconds(seconds: u64) -> Result<u64, String> {
    if seconds > MAX_DRAIN_SECONDS {
        return Err(format!(
            "{seconds} is more than the maximum of {MAX_DRAIN_SECONDS} seconds"
        ));
    }
    Ok(seconds)
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not an IP address"))
}

fn parse_bind_ip(text: &str) -> Result<IpAddr, String> {
    check_bind_ip(parse_ip(text)?)
}

fn check_bind_ip(ip: IpAddr) -> Result<IpAddr, String> {
    if ip.is_multicast() {
        return Err(format!(
            "{ip} is a multicast address; bind to a local address or 0.0.0.0"
        ));
    }
    Ok(ip)
}

fn parse_advertise_ip(text: &str) -> Result<IpAddr, String> {
    check_advertise_ip(parse_ip(text)?)
}

/// Clients send media to this address, so it must be one they can reach.
fn check_advertise_ip(ip: IpAddr) -> Result<IpAddr, String> {
    if ip.is_unspecified() {
        return Err(format!(
            "{ip} is not a concrete address; set the IP clients reach this server at"
        ));
    }
    if ip.is_multicast() {
        return Err(format!(
            "{ip} is a multicast address; set the IP clients reach this server at"
        ));
    }
    Ok(ip)
}

/// `count` as a number of media engine shards, if the engine takes it (1 to [`MAX_SHARDS`]).
fn shard_count(count: usize) -> Option<NonZeroUsize> {
    NonZeroUsize::new(count).filter(|count| count.get() <= MAX_SHARDS)
}

fn parse_port(text: &str) -> Result<u16, String> {
    let port = text
        .trim()
        .parse::<u16>()
        .map_err(|_| format!("`{text}` is not a port number (1-65535)"))?;
    check_port(port)
}

fn check_port(port: u16) -> Result<u16, String> {
    if port == 0 {
        return Err("port 0 is not allowed; choose a port between 1 and 65535".to_owned());
    }
    Ok(port)
}

/// Parses LiveKit's `LIVEKIT_KEYS` format: `key1: secret1, key2: secret2`.
fn parse_key_list(text: &str) -> Result<ApiKeys, String> {
    let mut keys = ApiKeys::default();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let (key, secret) = entry
            .split_once(':')
            .ok_or_else(|| format!("entry `{entry}` is not `key: secret`"))?;
        keys.insert(key, secret)?;
    }
    if keys.is_empty() {
        return Err("no `key: secret` entries".to_owned());
    }
    Ok(keys)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
