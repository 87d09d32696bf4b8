//! Reading a LiveKit server config file (`livekit.yaml`), so an operator moving off LiveKit keeps
//! their file: `stoa serve --livekit-config FILE`.
//!
//! [`translate`] maps every key Stoa has a concept for onto Stoa's own TOML format, which then
//! goes through the same validation as a Stoa config file, and lists every other key so that the
//! caller warns about it once. Mapped keys:
//!
//! | LiveKit | Stoa |
//! |---|---|
//! | `port` | `http.port` |
//! | `bind_addresses` (first entry) | `bind_ip` |
//! | `rtc.udp_port` | `rtc.udp_port` (wins over a port range, as in LiveKit) |
//! | `rtc.port_range_start`, `rtc.port_range_end` | the same |
//! | `rtc.node_ip` | `advertise_ip` |
//! | `rtc.use_external_ip`, `rtc.stun_servers` | the same (STUN discovery at start-up) |
//! | `turn.enabled`, `udp_port`, `tls_port` | `[turn]` `enabled`, `udp_port`, `tls_port` |
//! | `turn.cert_file`, `turn.key_file` | `[turn]` `tls_certificate`, `tls_private_key` |
//! | `turn.relay_range_start`, `relay_range_end` | `[turn]` `relay_port_range_start`, `_end` |
//! | `turn.domain` | `[turn]` `urls` (`turn:DOMAIN:UDP?transport=udp`, `turns:DOMAIN:TLS?transport=tcp`) |
//! | `keys` | `[keys]` |
//! | `room.empty_timeout`, `departure_timeout`, `max_participants` | `[room]` |
//! | `webhook.urls`, `webhook.api_key` | `[webhook]` |
//! | `logging.level`, `logging.json` | `[logging]` |
//! | `redis.address`, `username`, `password`, `db` | `[control] store = "redis"`, `redis_url` |

use anyhow::{Result, anyhow, bail};
use serde_yaml::Value;
use toml::Table;

/// Translates LiveKit YAML `text` (from the file called `name`) into Stoa TOML, and returns the
/// dotted names of the keys Stoa ignores, each once, in file order.
pub fn translate(name: &str, text: &str) -> Result<(String, Vec<String>)> {
    let root: Value = serde_yaml::from_str(text)
        .map_err(|err| anyhow!("LiveKit config {name}: {}", one_line(&err.to_string())))?;
    let mut out = Translation::default();
    match &root {
        Value::Null => {}
        Value::Mapping(map) => {
            for (key, value) in map {
                let key = key_name(key);
                out.top(&key, value)
                    .map_err(|e| anyhow!("LiveKit config {name}: {e}"))?;
            }
        }
        _ => bail!("LiveKit config {name}: expected a mapping of keys at the top level"),
    }
    out.finish();
    Ok((out.toml.to_string(), out.ignored))
}

#[derive(Debug, Default)]
struct Translation {
    toml: Table,
    ignored: Vec<String>,
    /// `redis.*` values, turned into one URL at the end.
    redis: std::collections::BTreeMap<String, String>,
    /// `rtc.udp_port` was set, so a port range is ignored (LiveKit muxes on the one port).
    udp_port: bool,
    /// `turn.domain`, `udp_port`, `tls_port` and whether TLS files were given, for the URLs.
    turn_domain: Option<String>,
    turn_udp_port: Option<i64>,
    turn_tls_port: Option<i64>,
    turn_tls: bool,
}

impl Translation {
    fn ignore(&mut self, key: String) {
        if !self.ignored.contains(&key) {
            self.ignored.push(key);
        }
    }

    fn set(&mut self, section: Option<&str>, key: &str, value: toml::Value) {
        let table = match section {
            None => &mut self.toml,
            Some(section) => {
                let entry = self
                    .toml
                    .entry(section.to_owned())
                    .or_insert_with(|| toml::Value::Table(Table::new()));
                match entry {
                    toml::Value::Table(table) => table,
                    // Only this module writes sections, always as tables.
                    _ => return,
                }
            }
        };
        table.insert(key.to_owned(), value);
    }

    fn top(&mut self, key: &str, value: &Value) -> Result<()> {
        match key {
            "port" => self.set(Some("http"), "port", integer(key, value)?),
            "bind_addresses" => {
                let addresses = strings(key, value)?;
                if let Some(first) = addresses.first() {
                    self.set(None, "bind_ip", toml::Value::String(first.clone()));
                }
                if addresses.len() > 1 {
                    self.ignore("bind_addresses (all but the first)".to_owned());
                }
            }
            "keys" => {
                let Value::Mapping(map) = value else {
                    bail!("keys: expected a mapping of API key to secret");
                };
                let mut keys = Table::new();
                for (k, v) in map {
                    let k = key_name(k);
                    let secret = string(&format!("keys.{k}"), v)?;
                    keys.insert(k, toml::Value::String(secret));
                }
                self.toml
                    .insert("keys".to_owned(), toml::Value::Table(keys));
            }
            "rtc" | "room" | "webhook" | "logging" | "redis" | "turn" => {
                let Value::Mapping(map) = value else {
                    if value.is_null() {
                        return Ok(());
                    }
                    bail!("{key}: expected a mapping");
                };
                for (k, v) in map {
                    let k = key_name(k);
                    self.section(key, &k, v)?;
                }
            }
            _ => self.ignore(key.to_owned()),
        }
        Ok(())
    }

    fn section(&mut self, section: &str, key: &str, value: &Value) -> Result<()> {
        let dotted = format!("{section}.{key}");
        match (section, key) {
            ("rtc", "udp_port") => {
                if let Value::String(_) = value {
                    // Newer LiveKit accepts a port range string here; Stoa wants a number.
                    bail!(
                        "{dotted}: expected one port number (use port_range_start/_end for a range)"
                    );
                }
                self.udp_port = true;
                self.set(Some("rtc"), "udp_port", integer(&dotted, value)?);
            }
            ("rtc", "port_range_start" | "port_range_end") => {
                self.set(Some("rtc"), key, integer(&dotted, value)?);
            }
            ("rtc", "node_ip") => {
                self.set(
                    None,
                    "advertise_ip",
                    toml::Value::String(string(&dotted, value)?),
                );
            }
            ("rtc", "use_external_ip") => {
                let on = value
                    .as_bool()
                    .ok_or_else(|| anyhow!("{dotted}: expected true or false"))?;
                self.set(Some("rtc"), "use_external_ip", toml::Value::Boolean(on));
            }
            ("rtc", "stun_servers") => {
                let servers = strings(&dotted, value)?;
                let servers = servers.into_iter().map(toml::Value::String).collect();
                self.set(Some("rtc"), "stun_servers", toml::Value::Array(servers));
            }
            ("turn", "enabled") => {
                let on = value
                    .as_bool()
                    .ok_or_else(|| anyhow!("{dotted}: expected true or false"))?;
                self.set(Some("turn"), "enabled", toml::Value::Boolean(on));
            }
            ("turn", "udp_port" | "tls_port") => {
                let port = integer(&dotted, value)?;
                if key == "udp_port" {
                    self.turn_udp_port = port.as_integer();
                } else {
                    self.turn_tls_port = port.as_integer();
                }
                self.set(Some("turn"), key, port);
            }
            ("turn", "relay_range_start" | "relay_range_end") => {
                let stoa_key = key.replace("relay_range", "relay_port_range");
                self.set(Some("turn"), &stoa_key, integer(&dotted, value)?);
            }
            ("turn", "cert_file" | "key_file") => {
                let stoa_key = if key == "cert_file" {
                    "tls_certificate"
                } else {
                    "tls_private_key"
                };
                self.turn_tls = true;
                self.set(
                    Some("turn"),
                    stoa_key,
                    toml::Value::String(string(&dotted, value)?),
                );
            }
            ("turn", "domain") => self.turn_domain = Some(string(&dotted, value)?),
            ("room", "empty_timeout" | "departure_timeout" | "max_participants") => {
                self.set(Some("room"), key, integer(&dotted, value)?);
            }
            ("webhook", "urls") => {
                let urls = strings(&dotted, value)?;
                let urls = urls.into_iter().map(toml::Value::String).collect();
                self.set(Some("webhook"), "urls", toml::Value::Array(urls));
            }
            ("webhook", "api_key") => {
                self.set(
                    Some("webhook"),
                    "api_key",
                    toml::Value::String(string(&dotted, value)?),
                );
            }
            ("logging", "level") => {
                self.set(
                    Some("logging"),
                    "level",
                    toml::Value::String(string(&dotted, value)?),
                );
            }
            ("logging", "json") => {
                let json = value
                    .as_bool()
                    .ok_or_else(|| anyhow!("{dotted}: expected true or false"))?;
                self.set(Some("logging"), "json", toml::Value::Boolean(json));
            }
            ("redis", "address" | "username" | "password" | "db") => {
                let text = match value {
                    Value::Number(n) => n.to_string(),
                    _ => string(&dotted, value)?,
                };
                if key == "db" && text.parse::<u32>().is_err() {
                    bail!("{dotted}: expected a database number");
                }
                self.redis.insert(key.to_owned(), text);
            }
            _ => self.ignore(dotted),
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let Some(address) = self.redis.get("address").cloned() {
            let auth = match (self.redis.get("username"), self.redis.get("password")) {
                (Some(u), Some(p)) => format!("{}:{}@", encode(u), encode(p)),
                (None, Some(p)) => format!(":{}@", encode(p)),
                _ => String::new(),
            };
            let db = self
                .redis
                .get("db")
                .map_or(String::new(), |d| format!("/{d}"));
            self.set(
                Some("control"),
                "store",
                toml::Value::String("redis".into()),
            );
            self.set(
                Some("control"),
                "redis_url",
                toml::Value::String(format!("redis://{auth}{address}{db}")),
            );
        } else if !self.redis.is_empty() {
            self.ignore("redis (no address)".to_owned());
        }
        if self.udp_port {
            let mut dropped = Vec::new();
            if let Some(toml::Value::Table(rtc)) = self.toml.get_mut("rtc") {
                for key in ["port_range_start", "port_range_end"] {
                    if rtc.remove(key).is_some() {
                        dropped.push(format!("rtc.{key} (rtc.udp_port is set)"));
                    }
                }
            }
            for key in dropped {
                self.ignore(key);
            }
        }
        if let Some(domain) = self.turn_domain.take() {
            // LiveKit hands clients its TURN servers under the domain (the certificate's name).
            let udp = self.turn_udp_port.unwrap_or(3478);
            let mut urls = vec![toml::Value::String(format!(
                "turn:{domain}:{udp}?transport=udp"
            ))];
            if self.turn_tls {
                let tls = self.turn_tls_port.unwrap_or(5349);
                urls.push(toml::Value::String(format!(
                    "turns:{domain}:{tls}?transport=tcp"
                )));
            }
            self.set(Some("turn"), "urls", toml::Value::Array(urls));
        }
    }
}

fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "?".to_owned(),
    }
}

fn integer(key: &str, value: &Value) -> Result<toml::Value> {
    value
        .as_i64()
        .map(toml::Value::Integer)
        .ok_or_else(|| anyhow!("{key}: expected a whole number"))
}

fn string(key: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => bail!("{key}: expected a string"),
    }
}

fn strings(key: &str, value: &Value) -> Result<Vec<String>> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Sequence(items) => items.iter().map(|v| string(key, v)).collect(),
        _ => bail!("{key}: expected a list of strings"),
    }
}

/// Percent-encodes a Redis URL's user or password.
fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn one_line(text: &str) -> String {
    text.trim().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use super::*;
    use crate::config::{self, Mode, Overrides, RtcPorts};

    /// A LiveKit server config as operators write it (LiveKit's `config-sample.yaml` keys).
    const SAMPLE: &str = r#"
port: 7881
bind_addresses:
  - "127.0.0.1"
rtc:
  tcp_port: 7881
  port_range_start: 51000
  port_range_end: 51100
  use_external_ip: false
  node_ip: 198.51.100.7
  stun_servers:
    - stun.l.google.com:19302
redis:
  address: localhost:6379
keys:
  APIlk: lk-secret-value
room:
  empty_timeout: 120
  departure_timeout: 10
  max_participants: 50
  enabled_codecs:
    - mime: audio/opus
webhook:
  api_key: APIlk
  urls:
    - http://127.0.0.1:9999/hook
logging:
  level: debug
  pion_level: error
turn:
  enabled: false
"#;

    #[test]
    fn sample_livekit_file_maps_known_keys_and_lists_the_rest() {
        let (toml_text, ignored) = translate("livekit.yaml", SAMPLE).expect("translate");
        assert_eq!(
            ignored,
            ["rtc.tcp_port", "room.enabled_codecs", "logging.pion_level",]
        );

        let dir = std::env::temp_dir();
        let path = dir.join(format!("stoa-livekit-test-{}.yaml", std::process::id()));
        std::fs::write(&path, SAMPLE).expect("write sample");
        let flags = Overrides {
            livekit_config: Some(path.clone()),
            ..Overrides::default()
        };
        let config = config::load(Mode::Production, None, &|_| None, &flags);
        let _ = std::fs::remove_file(&path);
        let config = config.expect("the translated LiveKit config loads");
        assert_eq!(config.http_port, 7881);
        assert_eq!(config.bind_ip, "127.0.0.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(
            config.advertise_ip,
            "198.51.100.7".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            config.rtc.ports,
            RtcPorts::Range {
                start: 51000,
                end: 51100
            }
        );
        assert_eq!(config.keys.ids().collect::<Vec<_>>(), ["APIlk"]);
        assert_eq!(config.room.empty_timeout, 120);
        assert_eq!(config.room.departure_timeout, 10);
        assert_eq!(config.room.max_participants, 50);
        assert_eq!(config.control.store, stoa_control::StoreKind::Redis);
        assert_eq!(config.control.redis_url, "redis://localhost:6379");
        assert_eq!(config.webhook.urls, ["http://127.0.0.1:9999/hook"]);
        assert_eq!(config.webhook.api_key, "APIlk");
        assert_eq!(config.logging.filter.to_string(), "debug");
        assert_eq!(config.warnings.len(), 3);
        assert!(
            config.stun_servers.is_empty(),
            "node_ip is set, nothing to discover"
        );
        assert!(!config.turn.enabled);
        assert!(
            config.warnings[0].ends_with("`rtc.tcp_port` is not supported by Stoa; ignored"),
            "{:?}",
            config.warnings
        );
        assert!(toml_text.contains("[room]"), "{toml_text}");
    }

    #[test]
    fn udp_port_wins_over_a_range_and_external_ip_is_discovered() {
        let (toml_text, ignored) = translate(
            "lk.yaml",
            "rtc:\n  udp_port: 7882\n  port_range_start: 50000\n  port_range_end: 60000\n  use_external_ip: true\n  stun_servers: [\"stun.example.com:3478\"]\n",
        )
        .expect("translate");
        assert!(toml_text.contains("udp_port = 7882"), "{toml_text}");
        assert!(!toml_text.contains("port_range"), "{toml_text}");
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        let dir = std::env::temp_dir();
        let path = dir.join(format!("stoa-livekit-stun-{}.toml", std::process::id()));
        std::fs::write(&path, &toml_text).expect("write");
        let config = config::load(Mode::Dev, Some(&path), &|_| None, &Overrides::default());
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            config.expect("loads").stun_servers,
            ["stun.example.com:3478"]
        );
    }

    #[test]
    fn livekit_turn_settings_become_the_relay_config() {
        let (toml_text, ignored) = translate(
            "lk.yaml",
            "turn:\n  enabled: true\n  domain: turn.example.com\n  tls_port: 5349\n  udp_port: 3478\n  cert_file: /etc/lk/turn.crt\n  key_file: /etc/lk/turn.key\n  relay_range_start: 50100\n  relay_range_end: 50200\n  external_tls: false\n",
        )
        .expect("translate");
        assert_eq!(ignored, ["turn.external_tls"]);
        let table: toml::Table = toml::from_str(&toml_text).expect("toml");
        let turn = table["turn"].as_table().expect("[turn]");
        assert_eq!(turn["enabled"].as_bool(), Some(true));
        assert_eq!(turn["tls_certificate"].as_str(), Some("/etc/lk/turn.crt"));
        assert_eq!(turn["tls_private_key"].as_str(), Some("/etc/lk/turn.key"));
        assert_eq!(turn["relay_port_range_start"].as_integer(), Some(50100));
        assert_eq!(turn["relay_port_range_end"].as_integer(), Some(50200));
        let urls: Vec<&str> = turn["urls"]
            .as_array()
            .expect("urls")
            .iter()
            .filter_map(toml::Value::as_str)
            .collect();
        assert_eq!(
            urls,
            [
                "turn:turn.example.com:3478?transport=udp",
                "turns:turn.example.com:5349?transport=tcp"
            ]
        );
    }

    #[test]
    fn bad_livekit_files_are_one_clear_error() {
        let err = translate("lk.yaml", "port: [1, 2]\n").expect_err("bad port");
        assert_eq!(
            err.to_string(),
            "LiveKit config lk.yaml: port: expected a whole number"
        );
        let err = translate("lk.yaml", "rtc: [\n").expect_err("bad yaml");
        assert!(
            err.to_string().starts_with("LiveKit config lk.yaml: "),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'), "{err}");
        let err = translate("lk.yaml", "- a\n- b\n").expect_err("not a mapping");
        assert!(err.to_string().contains("top level"), "{err}");

        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-livekit.yaml");
        let flags = Overrides {
            livekit_config: Some(path),
            ..Overrides::default()
        };
        let err = config::load(Mode::Dev, None, &|_| None, &flags).expect_err("missing file");
        assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
    }

    #[test]
    fn redis_credentials_and_database_become_one_url() {
        let (toml_text, ignored) = translate(
            "lk.yaml",
            "redis:\n  address: 10.0.0.5:6380\n  username: stoa\n  password: \"p@ss:w/rd\"\n  db: 2\n  use_tls: false\n",
        )
        .expect("translate");
        assert_eq!(ignored, ["redis.use_tls"]);
        assert!(
            toml_text.contains("redis_url = \"redis://stoa:p%40ss%3Aw%2Frd@10.0.0.5:6380/2\""),
            "{toml_text}"
        );
        let err = translate("lk.yaml", "redis:\n  address: h:1\n  db: two\n").unwrap_err();
        assert!(err.to_string().contains("redis.db"), "{err}");
    }
}
