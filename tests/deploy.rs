//! The deployment files in `docker/` are well formed and agree with each other and with the
//! binary's defaults: a malformed compose file, a unit that does not start `stoa serve`, or a
//! port or path that drifted. The image itself is built and run by tests/container.rs.

use std::path::Path;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

#[test]
fn compose_file_parses_and_runs_stoa_with_redis() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&read("docker/compose.yml")).expect("docker/compose.yml is YAML");
    let services = &compose["services"];
    let stoa = &services["stoa"];
    assert!(stoa.is_mapping(), "services.stoa missing");
    assert!(services["redis"].is_mapping(), "services.redis missing");
    assert_eq!(
        stoa["build"]["dockerfile"].as_str(),
        Some("docker/Dockerfile")
    );
    let host_network = stoa["network_mode"].as_str() == Some("host");
    let publishes_udp = stoa["ports"].as_sequence().is_some_and(|ports| {
        ports
            .iter()
            .any(|p| p.as_str() == Some("50000-50200:50000-50200/udp"))
    });
    assert!(
        host_network || publishes_udp,
        "stoa needs host networking or the UDP range published"
    );
    let volumes = stoa["volumes"].as_sequence().expect("stoa volumes");
    assert!(
        volumes.iter().any(|v| v
            .as_str()
            .is_some_and(|v| v.ends_with(":/etc/stoa/stoa.toml:ro"))),
        "the config is mounted where the image's CMD reads it"
    );
    // Longer than the default drain, so `docker compose stop` does not cut it short.
    let grace = stoa["stop_grace_period"]
        .as_str()
        .expect("stop_grace_period");
    let seconds: u64 = grace
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .expect("stop_grace_period in seconds");
    assert!(seconds > 30, "{grace}");
}

#[test]
fn systemd_unit_starts_stoa_serve() {
    let unit = read("docker/stoa.service");
    let exec: Vec<&str> = unit
        .lines()
        .filter_map(|line| line.strip_prefix("ExecStart="))
        .collect();
    assert_eq!(exec.len(), 1, "one ExecStart");
    let mut words = exec[0].split_whitespace();
    assert!(
        words.next().is_some_and(|bin| bin.ends_with("/stoa")),
        "{exec:?}"
    );
    assert_eq!(words.next(), Some("serve"), "{exec:?}");
    assert!(exec[0].contains("--config /etc/stoa/stoa.toml"), "{exec:?}");
    assert!(unit.contains("\nUser=stoa\n"), "runs as a dedicated user");
    let stop: u64 = unit
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .and_then(|s| s.parse().ok())
        .expect("TimeoutStopSec");
    assert!(stop > 30, "TimeoutStopSec must exceed the default drain");
}

#[test]
fn dockerfile_is_multi_stage_and_non_root() {
    let dockerfile = read("docker/Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = instructions
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    // A Rust builder; one runtime base; the binary from the builder (the default, last target)
    // or from the build context (`--target prebuilt`, what CI builds).
    assert_eq!(
        froms,
        [
            "FROM rust:1.95-bookworm AS builder",
            "FROM debian:bookworm-slim AS runtime-base",
            "FROM runtime-base AS prebuilt",
            "FROM runtime-base AS runtime",
        ]
    );
    let last_stage = &dockerfile[dockerfile.rfind("FROM ").unwrap_or(0)..];
    assert!(last_stage.contains("COPY --from=builder /usr/local/bin/stoa /usr/local/bin/stoa"));
    assert!(dockerfile.contains("cargo build --release --locked --bin stoa"));
    // The web app is built by the same script as ./run.sh and ./test.sh, before the binary
    // that embeds it.
    let web = dockerfile
        .find("bash web/build.sh")
        .expect("the image builds the web app");
    assert!(web < dockerfile.find("cargo build --release").unwrap_or(0));
    let test_sh = read("test.sh");
    assert!(
        test_sh.contains("web/build.sh"),
        "test.sh builds the web app the same way"
    );
    let user = instructions
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "{user}"
    );
    let expose = instructions
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    for port in ["7880/tcp", "50000-50200/udp"] {
        assert!(expose.split_whitespace().any(|p| p == port), "{expose}");
    }
    assert!(dockerfile.contains(r#"CMD ["serve", "--config", "/etc/stoa/stoa.toml"]"#));
}

#[test]
fn deploy_guide_names_the_ports_and_files() {
    let guide = read("docs/deploy.md");
    for needle in [
        "50000:50200/udp",
        "443/tcp",
        "7880/tcp",
        "advertise_ip",
        "docker/stoa.service",
        "docker/compose.yml",
        "/readyz",
        "/metrics",
        "drain_seconds",
    ] {
        assert!(
            guide.contains(needle),
            "docs/deploy.md does not mention {needle}"
        );
    }
}
