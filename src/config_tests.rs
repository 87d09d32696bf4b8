//! Tests of config loading: defaults, layers, every rejected input.
use std::collections::HashMap;

use super::*;
use crate::turn_config::TurnCertificates;

const CORES: NonZeroUsize = NonZeroUsize::MIN;

fn no_env(_: &str) -> Option<String> {
    None
}

/// Loads `text` as a file named `test.toml`, with `env` and `flags` on top.
fn load_with(mode: Mode, text: &str, env: &[(&str, &str)], flags: &Overrides) -> Result<Config> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut layers = Layers::default();
    layers.apply_file("test.toml", text)?;
    layers.apply_env(&|name| env.get(name).cloned())?;
    layers.apply_flags(flags)?;
    layers.finish(mode, CORES)
}

fn load_file(mode: Mode, text: &str) -> Result<Config> {
    load_with(mode, text, &[], &Overrides::default())
}

fn error(result: Result<Config>) -> String {
    let message = format!("{:#}", result.expect_err("config should be rejected"));
    assert!(!message.contains('\n'), "error spans lines: {message}");
    message
}

const VALID: &str = r#"
bind_ip = "127.0.0.1"
[keys]
k = "s"
"#;

#[test]
fn example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let config = load(
        Mode::Production,
        Some(&path),
        &no_env,
        &Overrides::default(),
    )
    .expect("config.example.toml should load");
    assert_eq!(config.bind_ip, "0.0.0.0".parse::<IpAddr>().expect("ip"));
    assert_eq!(
        config.advertise_ip,
        "203.0.113.10".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(config.http_port, DEFAULT_HTTP_PORT);
    assert_eq!(
        config.rtc.ports,
        RtcPorts::Range {
            start: 50000,
            end: 50200
        }
    );
    assert_eq!(config.rtc.shards.get(), 2);
    assert_eq!(config.rtc.room_peers_per_shard.get(), 2000);
    assert_eq!(config.keys.ids().collect::<Vec<_>>(), ["APIexample"]);
    assert_eq!(config.logging.filter.to_string(), "info,stoa_sfu=info");
    assert_eq!(config.logging.format, LogFormat::Text);
    assert_eq!(config.shutdown.drain, std::time::Duration::from_secs(30));
    assert_eq!(config.control.ended_room_retention, 90 * 24 * 3600);
    assert_eq!(config.control.node_ttl, 3);
    assert_eq!(
        config.recording,
        RecordingSettings {
            dir: "stoa-data/recordings".into(),
            track_files: false,
        }
    );
}

#[test]
fn recording_settings() {
    // Default: under the control plane's data directory.
    let config = load_with(
        Mode::Dev,
        "[control]\ndata_dir = \"/var/lib/stoa\"\n",
        &[("STOA_DATA_DIR", "")],
        &Overrides::default(),
    )
    .expect("config");
    assert_eq!(config.recording.dir, Path::new("/var/lib/stoa/recordings"));
    assert!(!config.recording.track_files);
    let config = load_with(
        Mode::Dev,
        "[recording]\ndir = \"/srv/rec\"\ntrack_files = true\n",
        &[],
        &Overrides::default(),
    )
    .expect("config");
    assert_eq!(config.recording.dir, Path::new("/srv/rec"));
    assert!(config.recording.track_files);
    let err = load_with(
        Mode::Dev,
        "[recording]\ndir = \"\"\n",
        &[],
        &Overrides::default(),
    )
    .expect_err("empty dir");
    assert!(err.to_string().contains("recording.dir"), "{err}");
    let err = load_with(
        Mode::Dev,
        "[recording]\nformat = \"mp3\"\n",
        &[],
        &Overrides::default(),
    )
    .expect_err("unknown key");
    assert!(err.to_string().contains("format"), "{err}");
}

#[test]
fn drain_seconds_from_file_and_env() {
    let config = load_with(
        Mode::Dev,
        "[shutdown]\ndrain_seconds = 5\n",
        &[],
        &Overrides::default(),
    )
    .expect("config");
    assert_eq!(config.shutdown.drain, std::time::Duration::from_secs(5));
    let config = load_with(
        Mode::Dev,
        "[shutdown]\ndrain_seconds = 5\n",
        &[("STOA_DRAIN_SECONDS", "0")],
        &Overrides::default(),
    )
    .expect("config");
    assert_eq!(config.shutdown.drain, std::time::Duration::ZERO);
    // Shards from the environment replace the file's.
    let config = load_with(
        Mode::Dev,
        "[rtc]\nshards = 1\n",
        &[("STOA_RTC_SHARDS", "3")],
        &Overrides::default(),
    )
    .expect("config");
    assert_eq!(config.rtc.shards.get(), 3);
    let err = load_with(
        Mode::Dev,
        "[shutdown]\ndrain_seconds = 99999\n",
        &[],
        &Overrides::default(),
    )
    .expect_err("too long");
    assert!(err.to_string().contains("shutdown.drain_seconds"), "{err}");
    let err = load_with(
        Mode::Dev,
        "",
        &[("STOA_DRAIN_SECONDS", "soon")],
        &Overrides::default(),
    )
    .expect_err("not a number");
    assert!(err.to_string().starts_with("STOA_DRAIN_SECONDS: "), "{err}");
}

#[test]
fn example_config_documents_every_key() {
    // Every key the file format accepts appears in the example (commented out or not).
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml"))
            .expect("read config.example.toml");
    for key in [
        "bind_ip",
        "advertise_ip",
        "[http]",
        "port",
        "[rtc]",
        "udp_port",
        "port_range_start",
        "port_range_end",
        "shards",
        "room_peers_per_shard",
        "[keys]",
        "[logging]",
        "level",
        "json",
        "[webhook]",
        "urls",
        "api_key",
        "[shutdown]",
        "drain_seconds",
        "[room]",
        "empty_timeout",
        "departure_timeout",
        "max_participants",
        "[turn]",
        "enabled",
        "tcp_port",
        "tls_port",
        "tls_certificate",
        "tls_private_key",
        "relay_port_range_start",
        "relay_port_range_end",
        "secret",
        "realm",
        "credential_ttl_seconds",
        "allowed_peers",
        "allow_public_peers",
        "max_allocations",
        "max_allocations_per_user",
        "allocate_burst",
        "allocate_per_second",
        "threads",
        "tls_certificate",
        "use_external_ip",
        "stun_servers",
        "ended_room_retention",
        "node_ttl",
        "[recording]",
        "track_files",
    ] {
        assert!(
            text.contains(key),
            "config.example.toml does not mention `{key}`"
        );
    }
}

#[test]
fn dev_defaults() {
    let config = load_with(Mode::Dev, "", &[], &Overrides::default()).expect("dev config");
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(config.bind_ip, localhost);
    assert_eq!(config.advertise_ip, localhost);
    assert_eq!(config.http_addr(), SocketAddr::new(localhost, 7880));
    assert_eq!(config.rtc.ports, RtcPorts::Mux(7882));
    // One shared port (dev): one shard per core.
    assert_eq!(config.rtc.shards, CORES);
    assert_eq!(config.keys.ids().collect::<Vec<_>>(), [DEV_API_KEY]);
    let secret = config.keys.secret(DEV_API_KEY).expect("dev key");
    assert_eq!(secret.expose(), DEV_API_SECRET);
    assert!(config.keys.has_dev_key());
}

#[test]
fn configured_keys_replace_dev_keys() {
    let config = load_file(Mode::Dev, VALID).expect("config");
    assert_eq!(config.keys.ids().collect::<Vec<_>>(), ["k"]);
    assert!(!config.keys.has_dev_key());
}

#[test]
fn production_defaults() {
    let config = load_file(Mode::Production, VALID).expect("config");
    assert_eq!(config.advertise_ip, config.bind_ip);
    assert_eq!(
        config.rtc.ports,
        RtcPorts::Range {
            start: 50000,
            end: 50200
        }
    );
    // A port range: two shards on one core, so that rooms can be kept apart.
    assert_eq!(config.rtc.shards, MIN_DEFAULT_SHARDS);
    // No more by default than the range has ports; more when asked is refused.
    let one_port = format!("{VALID}[rtc]\nport_range_start = 50000\nport_range_end = 50000\n");
    let config = load_file(Mode::Production, &one_port).expect("one-port range");
    assert_eq!(config.rtc.shards.get(), 1);
    let message = error(load_file(
        Mode::Production,
        &format!("{one_port}shards = 2\n"),
    ));
    assert!(message.contains("fewer than the 2 shards"), "{message}");
}

#[test]
fn production_requires_keys() {
    let message = error(load_file(Mode::Production, "bind_ip = \"127.0.0.1\"\n"));
    assert!(message.starts_with("no API keys configured"), "{message}");
    let message = error(load_file(
        Mode::Production,
        "bind_ip = \"127.0.0.1\"\n[keys]\n",
    ));
    assert!(message.starts_with("no API keys configured"), "{message}");
}

#[test]
fn production_requires_advertise_ip_when_bound_to_all_interfaces() {
    let message = error(load_file(Mode::Production, "[keys]\nk = \"s\"\n"));
    assert!(
        message.starts_with("advertise_ip is required when bind_ip is 0.0.0.0"),
        "{message}"
    );
}

#[test]
fn unknown_key_is_rejected_with_its_name_and_line() {
    let message = error(load_file(
        Mode::Dev,
        "bind_ip = \"127.0.0.1\"\n\nfrobnicate = 1\n",
    ));
    assert!(
        message.starts_with("config test.toml:3: unknown field `frobnicate`"),
        "{message}"
    );
    assert!(message.contains("expected one of"), "{message}");

    let message = error(load_file(
        Mode::Dev,
        "[rtc]\nudp_port = 7882\ntypo_port = 1\n",
    ));
    assert!(
        message.contains(":3: unknown field `typo_port`"),
        "{message}"
    );
}

#[test]
fn invalid_toml_is_rejected_on_one_line() {
    let message = error(load_file(Mode::Dev, "bind_ip = \n"));
    assert!(message.starts_with("config test.toml:1: "), "{message}");
    let message = error(load_file(Mode::Dev, "[http]\nport = 70000\n"));
    assert!(message.starts_with("config test.toml:2: "), "{message}");
}

#[test]
fn empty_secret_is_rejected() {
    let message = error(load_file(
        Mode::Production,
        "bind_ip = \"127.0.0.1\"\n[keys]\nk = \"s\"\nempty = \"\"\n",
    ));
    assert_eq!(
        message,
        "config test.toml:4: keys.empty: secret for API key `empty` is empty"
    );

    let message = error(load_with(
        Mode::Dev,
        "",
        &[(ENV_KEYS, "a: b, c:  ")],
        &Overrides::default(),
    ));
    assert_eq!(message, "STOA_KEYS: secret for API key `c` is empty");
}

#[test]
fn a_node_ttl_of_zero_is_rejected() {
    let message = error(load_file(
        Mode::Production,
        &format!("{VALID}[control]\nnode_ttl = 0\n"),
    ));
    assert!(message.contains("node_ttl"), "{message}");
}

#[test]
fn unspecified_advertise_ip_is_rejected() {
    let message = error(load_file(Mode::Dev, "advertise_ip = \"0.0.0.0\"\n"));
    assert!(
        message.starts_with("config test.toml:1: advertise_ip: 0.0.0.0 is not a concrete address"),
        "{message}"
    );

    let message = error(load_with(
        Mode::Dev,
        "",
        &[(ENV_ADVERTISE_IP, "::")],
        &Overrides::default(),
    ));
    assert!(
        message.starts_with("STOA_ADVERTISE_IP: :: is not a concrete address"),
        "{message}"
    );

    let flags = Overrides {
        advertise_ip: Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ..Overrides::default()
    };
    let message = error(load_with(Mode::Dev, "", &[], &flags));
    assert!(message.starts_with("--advertise-ip: 0.0.0.0"), "{message}");
}

#[test]
fn bad_address_is_rejected() {
    let message = error(load_file(Mode::Dev, "bind_ip = \"localhost:80\"\n"));
    assert_eq!(
        message,
        "config test.toml:1: bind_ip: `localhost:80` is not an IP address"
    );
    let message = error(load_with(
        Mode::Dev,
        "",
        &[(ENV_BIND_IP, "1.2.3")],
        &Overrides::default(),
    ));
    assert_eq!(message, "STOA_BIND_IP: `1.2.3` is not an IP address");
}

#[test]
fn port_range_and_udp_port_are_exclusive() {
    let text = "[rtc]\nudp_port = 7882\nport_range_start = 50000\nport_range_end = 50200\n";
    let message = error(load_file(Mode::Dev, text));
    assert!(
        message.starts_with("config test.toml:2: rtc.udp_port: set either rtc.udp_port or"),
        "{message}"
    );

    let message = error(load_file(
        Mode::Dev,
        "[rtc]\nudp_port = 7882\nport_range_end = 50200\n",
    ));
    assert!(message.contains("not both"), "{message}");
}

#[test]
fn port_range_is_checked() {
    let config = load_file(
        Mode::Dev,
        "[rtc]\nport_range_start = 50000\nport_range_end = 50000\n",
    )
    .expect("config");
    assert_eq!(
        config.rtc.ports,
        RtcPorts::Range {
            start: 50000,
            end: 50000
        }
    );

    let message = error(load_file(
        Mode::Dev,
        "[rtc]\nport_range_start = 50200\nport_range_end = 50000\n",
    ));
    assert!(
        message.contains("port range 50200-50000 is empty"),
        "{message}"
    );

    let message = error(load_file(Mode::Dev, "[rtc]\nport_range_start = 50200\n"));
    assert!(
        message.contains("rtc.port_range_end is missing"),
        "{message}"
    );

    let message = error(load_file(Mode::Dev, "[rtc]\nudp_port = 0\n"));
    assert!(
        message.contains("rtc.udp_port: port 0 is not allowed"),
        "{message}"
    );

    let message = error(load_file(Mode::Dev, "[rtc]\nroom_peers_per_shard = 0\n"));
    assert!(
        message.contains("rtc.room_peers_per_shard: must be at least 1"),
        "{message}"
    );

    let message = error(load_file(Mode::Dev, "[rtc]\nshards = 256\n"));
    assert!(
        message.contains("rtc.shards: must be between 1 and 255"),
        "{message}"
    );

    let text = "[rtc]\nshards = 3\nport_range_start = 50000\nport_range_end = 50001\n";
    let message = error(load_file(Mode::Dev, text));
    assert!(
        message.starts_with("rtc port range 50000-50001 has 2 ports, fewer than the 3 shards"),
        "{message}"
    );
    let text = "[rtc]\nshards = 2\nport_range_start = 50000\nport_range_end = 50001\n";
    assert_eq!(
        load_file(Mode::Dev, text).expect("config").rtc.shards.get(),
        2
    );

    let message = error(load_file(Mode::Dev, "[rtc]\nshards = 0\n"));
    assert!(
        message.contains("rtc.shards: must be between 1 and 255"),
        "{message}"
    );
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let file = r#"
bind_ip = "127.0.0.1"
advertise_ip = "192.0.2.1"
[http]
port = 8000
[rtc]
port_range_start = 40000
port_range_end = 40010
[keys]
filekey = "filesecret"
[logging]
level = "warn"
"#;
    let env = [
        (ENV_BIND_IP, "127.0.0.2"),
        (ENV_ADVERTISE_IP, "192.0.2.2"),
        (ENV_HTTP_PORT, "9000"),
        (ENV_RTC_UDP_PORT, " 9001 "),
        (ENV_KEYS, "key1: secret1, key2:secret2"),
        (ENV_LOG_LEVEL, "debug"),
    ];
    let config = load_with(Mode::Production, file, &env, &Overrides::default()).expect("config");
    assert_eq!(config.bind_ip, "127.0.0.2".parse::<IpAddr>().expect("ip"));
    assert_eq!(
        config.advertise_ip,
        "192.0.2.2".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(config.http_port, 9000);
    assert_eq!(config.rtc.ports, RtcPorts::Mux(9001));
    assert_eq!(config.keys.ids().collect::<Vec<_>>(), ["key1", "key2"]);
    assert_eq!(
        config.keys.secret("key2").map(ApiSecret::expose),
        Some("secret2")
    );
    assert_eq!(config.logging.filter.to_string(), "debug");

    let flags = Overrides {
        bind_ip: Some("127.0.0.3".parse().expect("ip")),
        advertise_ip: Some("192.0.2.3".parse().expect("ip")),
        http_port: Some(10000),
        rtc_udp_port: Some(10001),
        log_level: Some("error".to_owned()),
        livekit_config: None,
    };
    let config = load_with(Mode::Production, file, &env, &flags).expect("config");
    assert_eq!(config.bind_ip, "127.0.0.3".parse::<IpAddr>().expect("ip"));
    assert_eq!(
        config.advertise_ip,
        "192.0.2.3".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(config.http_port, 10000);
    assert_eq!(config.rtc.ports, RtcPorts::Mux(10001));
    assert_eq!(config.logging.filter.to_string(), "error");

    // Empty variables count as unset.
    let blank = [(ENV_HTTP_PORT, ""), (ENV_KEYS, "  ")];
    let config = load_with(Mode::Production, file, &blank, &Overrides::default()).expect("config");
    assert_eq!(config.http_port, 8000);
    assert_eq!(config.keys.ids().collect::<Vec<_>>(), ["filekey"]);
}

#[test]
fn bad_env_values_are_rejected() {
    let cases = [
        (
            ENV_HTTP_PORT,
            "http",
            "STOA_HTTP_PORT: `http` is not a port number (1-65535)",
        ),
        (
            ENV_RTC_UDP_PORT,
            "0",
            "STOA_RTC_UDP_PORT: port 0 is not allowed; choose a port between 1 and 65535",
        ),
        (
            ENV_KEYS,
            "justakey",
            "STOA_KEYS: entry `justakey` is not `key: secret`",
        ),
        (
            ENV_RTC_SHARDS,
            "0",
            "STOA_RTC_SHARDS: `0` is not a number of shards (1-255)",
        ),
        (
            ENV_RTC_SHARDS,
            "many",
            "STOA_RTC_SHARDS: `many` is not a number of shards (1-255)",
        ),
        (
            ENV_KEYS,
            "a: b, a: c",
            "STOA_KEYS: API key `a` is given twice",
        ),
        (
            ENV_LOG_LEVEL,
            "verbose",
            "STOA_LOG_LEVEL: `verbose` is not a log level (one of trace, debug, info, warn, error, off) or a `target=level` directive",
        ),
    ];
    for (name, value, expected) in cases {
        let message = error(load_with(
            Mode::Dev,
            "",
            &[(name, value)],
            &Overrides::default(),
        ));
        assert_eq!(message, expected);
    }
}

#[test]
fn log_filters() {
    for good in ["info", "WARN", "info,stoa_sfu=debug", "stoa=trace"] {
        LogFilter::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in ["", "verbose", "info,stoa_sfu", "stoa=loud"] {
        assert!(LogFilter::parse(bad).is_err(), "{bad} should be rejected");
    }
    let config =
        load_file(Mode::Dev, "[logging]\nlevel = \"debug\"\njson = true\n").expect("config");
    assert_eq!(config.logging.format, LogFormat::Json);
}

#[test]
fn unreadable_file_is_named() {
    let path = Path::new("/nonexistent/stoa.toml");
    let message = error(load(Mode::Dev, Some(path), &no_env, &Overrides::default()));
    assert!(
        message.starts_with("config /nonexistent/stoa.toml: cannot read: "),
        "{message}"
    );
}

#[test]
fn debug_output_hides_secrets() {
    let config = load_with(
        Mode::Dev,
        "",
        &[(ENV_KEYS, "key1: hunter2-very-secret")],
        &Overrides::default(),
    )
    .expect("config");
    let debug = format!("{config:?}");
    assert!(debug.contains("key1"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
}

#[test]
fn webhook_settings() {
    let config = load_file(Mode::Dev, "").expect("dev config");
    assert!(config.webhook.urls.is_empty());
    let config = load_file(
        Mode::Dev,
        "[keys]\nk1 = \"s1\"\nk2 = \"s2\"\n[webhook]\nurls = [\"http://127.0.0.1:9/hook\"]\napi_key = \"k2\"\n",
    )
    .expect("webhook config");
    assert_eq!(config.webhook.urls, ["http://127.0.0.1:9/hook"]);
    assert_eq!(config.webhook.api_key, "k2");
    let config = load_file(Mode::Dev, "[webhook]\nurls = [\"http://h/\"]\n").expect("config");
    assert_eq!(config.webhook.api_key, DEV_API_KEY);
    let config = load_file(
        Mode::Dev,
        "[webhook]\nurls = [\"https://hooks.example.com/in\"]\nca_file = \"/etc/stoa/ca.pem\"\n",
    )
    .expect("https webhook config");
    assert_eq!(config.webhook.urls, ["https://hooks.example.com/in"]);
    assert_eq!(
        config.webhook.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/stoa/ca.pem"))
    );
    for bad in ["ftp://h/", "https://", "https:///x", "h:80"] {
        let message = error(load_file(
            Mode::Dev,
            &format!("[webhook]\nurls = [\"{bad}\"]\n"),
        ));
        assert!(message.contains("webhook.urls"), "{bad}: {message}");
    }
    let message = error(load_file(
        Mode::Dev,
        "[webhook]\nurls = [\"http://h/\"]\napi_key = \"nope\"\n",
    ));
    assert!(message.contains("webhook.api_key"), "{message}");
}

#[test]
fn https_needs_both_files_and_turn_shares_them() {
    let config = load_file(
        Mode::Dev,
        "[http]\ntls_certificate = \"/etc/stoa/node.crt\"\ntls_private_key = \"/etc/stoa/node.key\"\n\
         [turn]\nenabled = true\n",
    )
    .expect("config");
    let tls = config.http_tls.expect("https");
    assert_eq!(tls.certificate, Path::new("/etc/stoa/node.crt"));
    assert_eq!(tls.private_key, Path::new("/etc/stoa/node.key"));
    // TURN over TLS uses the same files on its default port.
    let turns = config.turn.tls.expect("turns");
    assert_eq!(
        turns.certificates,
        TurnCertificates::Files {
            certificate: tls.certificate.clone(),
            private_key: tls.private_key.clone()
        }
    );
    assert_eq!(turns.port, 5349);

    // TURN's own files win.
    let config = load_file(
        Mode::Dev,
        "[http]\ntls_certificate = \"a.crt\"\ntls_private_key = \"a.key\"\n\
         [turn]\nenabled = true\ntls_certificate = \"t.crt\"\ntls_private_key = \"t.key\"\n",
    )
    .expect("config");
    assert!(matches!(
        config.turn.tls.expect("turns").certificates,
        TurnCertificates::Files { certificate, .. } if certificate == Path::new("t.crt")
    ));

    let message = error(load_file(
        Mode::Dev,
        "[http]\ntls_private_key = \"a.key\"\n",
    ));
    assert!(
        message.starts_with("config test.toml:2: http: set both http.tls_certificate"),
        "{message}"
    );
    // Without TLS settings: plain HTTP.
    assert_eq!(load_file(Mode::Dev, "").expect("config").http_tls, None);
}

#[test]
fn use_external_ip_discovers_unless_advertise_ip_is_set() {
    // Production on 0.0.0.0 needs no advertise_ip when it is discovered.
    let config = load_with(
        Mode::Production,
        "[rtc]\nuse_external_ip = true\n[keys]\nk = \"a-long-secret\"\n",
        &[],
        &Overrides::default(),
    )
    .expect("config");
    assert_eq!(
        config.stun_servers,
        ["stun.l.google.com:19302", "stun1.l.google.com:19302"]
    );
    let config = load_file(
        Mode::Dev,
        "[rtc]\nuse_external_ip = true\nstun_servers = [\"stun:stun.example.com:3478\", \"192.0.2.1:3478\"]\n",
    )
    .expect("config");
    assert_eq!(
        config.stun_servers,
        ["stun.example.com:3478", "192.0.2.1:3478"]
    );

    // An explicit address wins, with a warning.
    let config = load_file(
        Mode::Dev,
        "advertise_ip = \"192.0.2.9\"\n[rtc]\nuse_external_ip = true\n",
    )
    .expect("config");
    assert!(config.stun_servers.is_empty());
    assert_eq!(
        config.advertise_ip,
        "192.0.2.9".parse::<std::net::IpAddr>().expect("ip")
    );
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("use_external_ip is ignored")),
        "{:?}",
        config.warnings
    );

    let message = error(load_file(
        Mode::Dev,
        "[rtc]\nuse_external_ip = true\nstun_servers = [\"no-port\"]\n",
    ));
    assert!(
        message.starts_with("config test.toml:3: rtc.stun_servers: \"no-port\" is not host:port"),
        "{message}"
    );
    let message = error(load_file(
        Mode::Dev,
        "[rtc]\nuse_external_ip = true\nstun_servers = []\n",
    ));
    assert!(message.contains("needs at least one entry"), "{message}");
}

#[test]
fn acme_settings() {
    let config = load_file(
        Mode::Dev,
        "[http]\nacme_domains = [\"Rooms.Example.com\", \"rooms.example.com\"]\n\
         acme_email = \"mailto:ops@example.com\"\n[turn]\nenabled = true\n",
    )
    .expect("acme config");
    let acme = config.acme.expect("acme");
    assert_eq!(acme.domains, ["rooms.example.com"]);
    assert_eq!(acme.email.as_deref(), Some("ops@example.com"));
    assert_eq!(acme.directory, crate::acme::LETS_ENCRYPT);
    assert_eq!(acme.cache_dir, Path::new("stoa-data/acme"));
    assert_eq!(
        acme.account_key,
        Path::new("stoa-data/acme/account-key.pem")
    );
    // TURN over TLS shares the ACME certificate on its default port.
    let turns = config.turn.tls.expect("turns");
    assert_eq!(turns.certificates, TurnCertificates::Acme);
    assert_eq!(turns.port, 5349);

    let config = load_file(
        Mode::Dev,
        "[http]\nacme_domains = [\"a.example.com\"]\nacme_directory = \"https://ca.internal/dir\"\n\
         acme_ca_file = \"/etc/stoa/ca.pem\"\nacme_account_key = \"/etc/stoa/acme.key\"\n\
         acme_cache_dir = \"/var/cache/stoa\"\n",
    )
    .expect("acme config");
    let acme = config.acme.expect("acme");
    assert_eq!(acme.directory, "https://ca.internal/dir");
    assert_eq!(acme.ca_file.as_deref(), Some(Path::new("/etc/stoa/ca.pem")));
    assert_eq!(acme.account_key, Path::new("/etc/stoa/acme.key"));
    assert_eq!(acme.cache_dir, Path::new("/var/cache/stoa"));
    assert!(load_file(Mode::Dev, "").expect("config").acme.is_none());

    for (text, needle) in [
        ("acme_domains = [\"*.example.com\"]", "http.acme_domains"),
        ("acme_domains = [\"127.0.0.1\"]", "http.acme_domains"),
        (
            "acme_domains = [\"a.example.com\"]\nacme_email = \"nobody\"",
            "http.acme_email",
        ),
        (
            "acme_domains = [\"a.example.com\"]\nacme_directory = \"http://ca/dir\"",
            "http.acme_directory",
        ),
        ("acme_email = \"ops@example.com\"", "acme_domains is empty"),
        (
            "acme_domains = [\"a.example.com\"]\ntls_certificate = \"c\"\ntls_private_key = \"k\"",
            "not both",
        ),
    ] {
        let message = error(load_file(Mode::Dev, &format!("[http]\n{text}\n")));
        assert!(message.contains(needle), "{text}: {message}");
    }
}

#[test]
fn shutdown_clients_from_file_and_env() {
    let config = load_file(Mode::Dev, "").expect("config");
    assert_eq!(config.shutdown.clients, ShutdownClients::Leave);
    let config = load_file(Mode::Dev, "[shutdown]\nclients = \"reconnect\"\n").expect("config");
    assert_eq!(config.shutdown.clients, ShutdownClients::Reconnect);
    let message = error(load_file(Mode::Dev, "[shutdown]\nclients = \"stay\"\n"));
    assert!(message.contains("shutdown.clients"), "{message}");
    let env = HashMap::from([("STOA_SHUTDOWN_CLIENTS", "reconnect")]);
    let config = load(
        Mode::Dev,
        None,
        &|name| env.get(name).map(|v| (*v).to_owned()),
        &Overrides::default(),
    )
    .expect("config");
    assert_eq!(config.shutdown.clients, ShutdownClients::Reconnect);
}
