//! The container image and docker/compose.yml, built and run with podman on every CI run.
//!
//! No registry is reachable here, so the test makes what a registry would serve
//! (tests/container/base_image.sh: a Debian bookworm base from the machine's Debian mirror,
//! tagged `debian:bookworm-slim`, and Debian's redis-server on it, tagged `redis:7-bookworm`;
//! kept by podman between runs) and packages the `stoa` binary this test run built with
//! docker/Dockerfile's `prebuilt` target, which shares every runtime layer with the published
//! image. Then, inside a private network namespace (tests/container/run.sh):
//!
//! - `image`: the container answers /healthz through its published ports, runs as uid 10001,
//!   livekit-client in Chromium joins a room through the published TCP and UDP ports and hears
//!   audio, SIGTERM asks a connected client to leave, waits for it and exits 0, and a room
//!   survives a new container on the same volume;
//! - `compose`: docker/compose.yml's services started with the equivalent `podman run` commands
//!   (below: podman-compose 1.0.3, Debian's, adds a bridge network to `network_mode: host`
//!   services, which podman refuses), plus a second Stoa node; both nodes share Redis.
//!
//! Needs podman, runc, debootstrap (./test.sh installs them), root, and Chromium with
//! tests/browser/node_modules. A missing prerequisite fails the test with what to install: it is
//! never skipped. Run alone: `cargo test -p stoa --test container -- --nocapture`.

#![allow(
    clippy::disallowed_methods,
    reason = "the test bounds real waits with the wall clock"
)]

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use support::chromium::{self, missing_prerequisites, run_in_namespace};

/// The image the scenarios run.
const IMAGE: &str = "localhost/stoa:ci";

/// Outer bound of one scenario; run.sh caps itself at 150 s.
const TIMEOUT: Duration = Duration::from_secs(170);

/// One scenario at a time: each runs Chromium or several servers on a small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn containers_conf() -> PathBuf {
    repo().join("tests/container/containers.conf")
}

/// `program args…` with the podman settings this machine needs; panics with its output unless
/// it succeeds.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .env("CONTAINERS_CONF", containers_conf())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails loudly, naming what is missing and how to get it.
fn require_prerequisites() {
    let mut missing: Vec<String> = ["podman", "runc", "debootstrap"]
        .into_iter()
        .filter(|p| !found(p))
        .map(|p| format!("{p} (Debian package {p})"))
        .collect();
    missing.extend(missing_prerequisites(
        &chromium::test_dir("browser"),
        &["livekit-client", "livekit-server-sdk", "playwright-core"],
    ));
    assert!(
        missing.is_empty(),
        "the container tests cannot run; missing: {}.\nRun ./test.sh first: it installs them.",
        missing.join(", ")
    );
}

/// Builds `IMAGE` once per test run: the base images if podman lacks them, then the `prebuilt`
/// target around this build's `stoa` (debug info stripped, to keep the layer small).
fn image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let started = Instant::now();
        run(
            "bash",
            &[repo()
                .join("tests/container/base_image.sh")
                .to_str()
                .expect("utf-8")],
        );
        let base = started.elapsed();
        let context = support::scratch_dir("container-context");
        let binary = context.join("stoa");
        let stripped = Command::new("objcopy")
            .args(["--strip-debug", env!("CARGO_BIN_EXE_stoa")])
            .arg(&binary)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(env!("CARGO_BIN_EXE_stoa"), &binary).expect("copy the stoa binary");
        }
        std::fs::copy(
            repo().join("config.example.toml"),
            context.join("config.example.toml"),
        )
        .expect("copy config.example.toml");
        let dockerfile = repo().join("docker/Dockerfile");
        let image_id = || {
            Command::new("podman")
                .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
                .env("CONTAINERS_CONF", containers_conf())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        let previous = image_id();
        run(
            "podman",
            &[
                "build",
                "--quiet",
                "-f",
                dockerfile.to_str().expect("utf-8"),
                "--target",
                "prebuilt",
                "-t",
                IMAGE,
                context.to_str().expect("utf-8"),
            ],
        );
        let _ = std::fs::remove_dir_all(&context);
        // The previous run's image, now untagged: removed so that runs do not pile up images.
        if let Some(previous) = previous.filter(|p| Some(p) != image_id().as_ref()) {
            let _ = Command::new("podman")
                .args(["rmi", &previous])
                .env("CONTAINERS_CONF", containers_conf())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        eprintln!(
            "container.rs: base images ready in {:.1} s, {IMAGE} built in {:.1} s",
            base.as_secs_f64(),
            (started.elapsed() - base).as_secs_f64()
        );
    });
}

/// Runs tests/container/run.sh with `scenario` in a private network namespace.
fn scenario(name: &str, env: &[(&str, &str)]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    require_prerequisites();
    image();
    let started = Instant::now();
    let result = run_in_namespace(
        &chromium::test_dir("container"),
        |command| {
            command
                .env("STOA_CONTAINER_SCENARIO", name)
                .env("STOA_CONTAINER_IMAGE", IMAGE)
                .env_remove("STOA_URL")
                .env_remove("STOA_API_KEY")
                .env_remove("STOA_API_SECRET");
            for (k, v) in env {
                command.env(k, v);
            }
        },
        TIMEOUT,
    );
    eprintln!(
        "----- tests/container/run.sh ({name}) stderr -----\n{}",
        result.stderr
    );
    eprintln!("----- stdout -----\n{}", result.stdout);
    let summary = result.summary();
    let Some(status) = result.status else {
        panic!("tests/container/run.sh ({name}) did not finish within {TIMEOUT:?}: {summary}");
    };
    assert!(
        status.success() && summary.contains("\"ok\":true"),
        "container scenario {name} failed ({status}); its output is above. Summary: {summary}"
    );
    eprintln!(
        "container.rs: scenario {name} passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn image_serves_a_browser_room_drains_on_sigterm_and_keeps_its_volume() {
    scenario("image", &[]);
}

#[test]
fn compose_file_runs_two_stoa_nodes_sharing_redis() {
    let compose: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("docker/compose.yml")).expect("docker/compose.yml"),
    )
    .expect("docker/compose.yml is YAML");
    let project = format!("stoa-ci-compose-{}", std::process::id());
    let script = compose_script(&compose, &project);
    let path = support::scratch_dir("compose-script").join("compose.sh");
    std::fs::write(&path, &script).expect("write compose.sh");
    eprintln!("----- docker/compose.yml as podman commands -----\n{script}");
    scenario(
        "compose",
        &[
            ("STOA_COMPOSE_SCRIPT", path.to_str().expect("utf-8")),
            ("STOA_COMPOSE_PROJECT", &project),
        ],
    );
}

/// `docker/compose.yml` as shell functions `compose_up` and `compose_down` of `podman run`
/// commands, one container `<project>-<service>` per service in `depends_on` order, plus
/// `stoa2`: the `stoa` service again on HTTP port 7881 and UDP port 7883 (a second node sharing
/// the same Redis). What CI substitutes: the services with `build:` run `$STOA_CONTAINER_IMAGE`
/// (the image built above) instead of building; `./` paths are the scenario's `$work`
/// directory. A key this translation does not know fails the test, so the file and what CI
/// runs cannot drift apart silently.
fn compose_script(compose: &serde_yaml::Value, project: &str) -> String {
    let services = compose["services"]
        .as_mapping()
        .expect("compose.yml has services");
    let mut names: Vec<String> = services
        .keys()
        .map(|k| k.as_str().expect("service name").to_owned())
        .collect();
    // depends_on first (one level is all compose.yml uses).
    names.sort_by_key(|name| {
        services[name.as_str()]["depends_on"]
            .as_sequence()
            .is_some()
    });
    let mut up = String::new();
    let mut containers = Vec::new();
    let mut volumes = Vec::new();
    for name in &names {
        let service = &services[name.as_str()];
        let mut nodes = vec![(name.clone(), Vec::<(String, String)>::new())];
        if name == "stoa" {
            nodes.push((
                "stoa2".to_owned(),
                vec![
                    ("STOA_HTTP_PORT".into(), "7881".into()),
                    ("STOA_RTC_UDP_PORT".into(), "7883".into()),
                ],
            ));
        }
        for (node, extra_env) in nodes {
            let container = format!("{project}-{node}");
            let args = run_args(service, project, &container, &extra_env, &mut volumes);
            writeln!(up, "    podman run {args}").expect("write");
            containers.push(container);
        }
    }
    format!(
        "# Generated by tests/container.rs from docker/compose.yml.\ncompose_up() {{\n{up}}}\n\
         compose_down() {{\n    podman rm -f -v -t 5 {} >/dev/null 2>&1 || true\n    podman volume rm -f {} >/dev/null 2>&1 || true\n}}\n",
        containers.join(" "),
        if volumes.is_empty() {
            "none".to_owned()
        } else {
            volumes.join(" ")
        }
    )
}

/// The `podman run` arguments of one compose service, shell-quoted.
fn run_args(
    service: &serde_yaml::Value,
    project: &str,
    container: &str,
    extra_env: &[(String, String)],
    volumes: &mut Vec<String>,
) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut args = vec!["-d".to_owned(), "--name".to_owned(), q(container)];
    let mut image = None;
    let mut command = Vec::new();
    for (key, value) in service.as_mapping().expect("service is a mapping") {
        let key = key.as_str().expect("service key");
        match key {
            // CI cannot pull the Rust image the build stage starts from: the image built from
            // this run's binary stands in for it.
            "build" => image = Some("\"$STOA_CONTAINER_IMAGE\"".to_owned()),
            "image" => {
                if image.is_none() {
                    image = Some(q(value.as_str().expect("image")));
                }
            }
            "network_mode" => args.extend([
                "--network".to_owned(),
                q(value.as_str().expect("network_mode")),
            ]),
            "ports" => {
                for port in value.as_sequence().expect("ports") {
                    args.extend(["-p".to_owned(), q(port.as_str().expect("port"))]);
                }
            }
            "volumes" => {
                for volume in value.as_sequence().expect("volumes") {
                    let volume = volume.as_str().expect("volume");
                    let mapped = match volume.strip_prefix("./") {
                        Some(relative) => format!("\"$work\"/{}", q(relative)),
                        None => {
                            let (name, rest) = volume.split_once(':').expect("name:path");
                            let named = format!("{project}-{name}");
                            if !volumes.contains(&named) {
                                volumes.push(named.clone());
                            }
                            q(&format!("{named}:{rest}"))
                        }
                    };
                    args.extend(["-v".to_owned(), mapped]);
                }
            }
            "environment" => {
                for (k, v) in value.as_mapping().expect("environment map") {
                    let k = k.as_str().expect("env name");
                    if extra_env.iter().any(|(name, _)| name == k) {
                        continue;
                    }
                    let v = match v {
                        serde_yaml::Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .expect("env value")
                            .trim()
                            .to_owned(),
                    };
                    args.extend(["-e".to_owned(), q(&format!("{k}={v}"))]);
                }
            }
            "command" => {
                command = value
                    .as_sequence()
                    .expect("command as a list")
                    .iter()
                    .map(|a| q(a.as_str().expect("command word")))
                    .collect();
            }
            "restart" => args.extend(["--restart".to_owned(), q(value.as_str().expect("restart"))]),
            "stop_grace_period" => {
                let seconds = value
                    .as_str()
                    .and_then(|s| s.strip_suffix('s'))
                    .expect("stop_grace_period in seconds");
                args.extend(["--stop-timeout".to_owned(), q(seconds)]);
            }
            // Start order: handled by sorting the services.
            "depends_on" => {}
            other => panic!(
                "docker/compose.yml uses `{other}`, which tests/container.rs does not translate \
                 into podman arguments yet: add it there"
            ),
        }
    }
    for (k, v) in extra_env {
        args.extend(["-e".to_owned(), q(&format!("{k}={v}"))]);
    }
    args.push(image.expect("a service needs image or build"));
    args.extend(command);
    args.join(" ")
}
