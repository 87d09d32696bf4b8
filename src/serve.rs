//! `stoa serve`: logging, the HTTP listener and the media engine, until Ctrl-C or SIGTERM.

use std::fmt;
use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use stoa_sfu::shell::{SfuRuntime, SfuSettings, UdpPorts};
use stoa_signaling::room::RoomLimits;
use stoa_signaling::service::{RelayAuth, ServiceConfig, Signaling, TokenRefresh};
use stoa_signaling::token::ApiKeys;
use stoa_signaling::webhook::{Notifier, WebhookConfig, client_tls_config};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{
    Config, DEV_API_KEY, LogFormat, LoggingConfig, Mode, RtcPorts, ShutdownClients,
};
use crate::metrics::Sources;
use crate::ops::{self, Draining};

/// How often connected clients get a fresh access token (LiveKit's `refresh_token`), and how
/// long each is valid: a client can always reconnect with the newest, whatever the lifetime of
/// the token it joined with.
const TOKEN_REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(5 * 60);
const TOKEN_REFRESH_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// How long a relay link's token is valid: it is used once, to join the origin's room.
const RELAY_TOKEN_TTL: Duration = Duration::from_secs(60);

/// How long running recordings may take to finish their files at shutdown.
const RECORDER_GRACE: Duration = Duration::from_secs(5);

/// How long open HTTP connections may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the server with a validated `config` until Ctrl-C or SIGTERM.
pub fn run(config: &Config) -> Result<()> {
    init_tracing(&config.logging)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // tokio reads TOKIO_WORKER_THREADS itself when it is set.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(runtime_workers());
    }
    let runtime = builder
        .enable_all()
        .thread_name("stoa")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

/// Fewest worker threads of the async runtime (signaling, WebSockets, HTTP): with one, a busy
/// room's burst of WebSocket writes (a floor change told to thousands of listeners) holds every
/// task of every other room behind it; with a second, another room's join runs meanwhile, the
/// kernel sharing the core between them (BENCHMARKS.md, two rooms on one node).
const MIN_RUNTIME_WORKERS: usize = 2;

/// Worker threads of the async runtime: one per core, at least [`MIN_RUNTIME_WORKERS`].
fn runtime_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .max(MIN_RUNTIME_WORKERS)
}

/// The media engine's settings derived from the validated config.
pub fn sfu_config(config: &Config) -> SfuSettings {
    SfuSettings {
        bind_ip: config.bind_ip,
        advertise_ip: config.advertise_ip,
        ports: match config.rtc.ports {
            RtcPorts::Mux(port) => UdpPorts::Mux(port),
            RtcPorts::Range { start, end } => UdpPorts::Range { start, end },
        },
        shards: config.rtc.shards.get(),
    }
}

async fn serve(config: &Config) -> Result<()> {
    let mut config = config.clone();
    if !config.stun_servers.is_empty() {
        config.advertise_ip =
            crate::public_ip::discover(config.bind_ip, &config.stun_servers).await?;
        info!(advertise_ip = %config.advertise_ip, "advertising the address STUN reported");
    }
    let config = &config;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        mode = %config.mode,
        api_keys = %config.keys.ids().collect::<Vec<_>>().join(","),
        log = %config.logging.filter,
        "starting"
    );
    for warning in &config.warnings {
        warn!("{warning}");
    }
    if config.mode == Mode::Dev {
        warn!("development mode: do not expose this server to a network");
    }
    if config.keys.has_dev_key() {
        warn!(
            api_key = DEV_API_KEY,
            "the API key's secret is well known; configure your own keys outside development"
        );
    }

    // Installed before anything records, and before the signal handlers, so that a failure
    // leaves nothing running.
    let prometheus = crate::metrics::install()?;
    let mut signals = Signals::new()?;

    let http_addr = config.http_addr();
    let listener = TcpListener::bind(http_addr)
        .await
        .map_err(|err| bind_error("HTTP port", http_addr, &err))?;
    let http_addr = listener
        .local_addr()
        .context("cannot read the HTTP listener's address")?;
    // Certificates are read before anything starts, so a bad file fails start-up. With ACME,
    // the cached certificate (if any) is served at once and a task obtains or renews it.
    let acme = config
        .acme
        .clone()
        .map(crate::acme::Acme::start)
        .transpose()?;
    let tls = match (&config.http_tls, &acme) {
        (Some(files), _) => Some(crate::tls::server_config(files)?),
        (None, Some(acme)) => Some(acme.https_config()),
        (None, None) => None,
    };

    // So is the webhooks' CA file. Without one, an unreadable system trust store only fails
    // https:// deliveries (with the reason logged), as http:// ones still work.
    let webhook_tls = config
        .webhook
        .ca_file
        .as_deref()
        .map(|ca_file| client_tls_config(Some(ca_file)))
        .transpose()
        .map_err(|e| anyhow!("webhook.ca_file: {e}"))?;

    let sfu = sfu_config(config);
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow!("cannot seed the media engine: {e}"))?;
    let (engine, engine_handle, engine_events) = SfuRuntime::start(&sfu, seed)?;
    info!(advertise_ip = %sfu.advertise_ip, shards = sfu.shards, "media engine started");
    let key_pairs: Vec<(String, String)> = config
        .keys
        .ids()
        .filter_map(|id| {
            let secret = config.keys.secret(id)?;
            Some((id.to_owned(), secret.expose().to_owned()))
        })
        .collect();
    let keys = Arc::new(ApiKeys::new(key_pairs.clone()));
    let webhooks = match config.keys.secret(&config.webhook.api_key) {
        Some(secret) if !config.webhook.urls.is_empty() => {
            let webhook = WebhookConfig {
                urls: config.webhook.urls.clone(),
                api_key: config.webhook.api_key.clone(),
                api_secret: secret.expose().to_owned(),
            };
            Some(match webhook_tls {
                Some(tls) => Notifier::start_with_tls(webhook, tls),
                None => Notifier::start(webhook),
            })
        }
        _ => None,
    };
    if webhooks.is_some() {
        info!(urls = %config.webhook.urls.join(","), api_key = %config.webhook.api_key, "webhooks enabled");
    }
    let (_turn_relay, turn) = match config.turn.enabled {
        true => {
            let (relay, servers) =
                crate::turn_cmd::start_with_sfu(&config.turn, &sfu, acme.as_ref()).await?;
            (Some(relay), Some(servers))
        }
        false => (None, None),
    };
    let room_defaults = RoomLimits {
        empty_timeout: config.room.empty_timeout,
        departure_timeout: config.room.departure_timeout,
        max_participants: config.room.max_participants,
    };
    let (presence_tx, presence_rx) = tokio::sync::mpsc::channel(crate::media_plane::PRESENCE_QUEUE);
    let (recordings, taps, recording_failures) =
        crate::recording::Recordings::start(&config.recording, &engine_handle, webhooks.clone())?;
    let recorder = recordings.clone();
    // This node's id: in the registry, in members' presence, and in its relay links' identity
    // (`node:{id}`), whose tokens are signed with the first configured key (alphabetical), which
    // every node of a cluster shares.
    let node_id = stoa_control::nodes::new_id();
    // The registry an edge's URL is checked against before this node opens a feed from it:
    // bound to the control plane once that has started.
    let directory = stoa_signaling::cluster::NodeDirectory::default();
    let relay = key_pairs.first().map(|(key, secret)| RelayAuth {
        node: node_id.clone(),
        api_key: key.clone(),
        secret: secret.clone(),
        ttl: RELAY_TOKEN_TTL,
        tls: None,
        // Where an origin opens a feed of this node's speakers (as the room's `media_url`).
        url: Some(config.control.public_url.clone()).filter(|u| !u.is_empty()),
        nodes: directory.clone(),
    });
    let service = ServiceConfig {
        token_refresh: Some(TokenRefresh {
            keys: keys.clone(),
            every: TOKEN_REFRESH_EVERY,
            ttl: TOKEN_REFRESH_TTL,
        }),
        turn,
        webhooks: webhooks.clone(),
        observer: Some(presence_tx),
        recorder: Some(taps),
        room_defaults,
        relay,
        room_peers_per_shard: config.rtc.room_peers_per_shard.get(),
        ..ServiceConfig::default()
    };
    let signaling = Signaling::start(service, engine_handle.clone(), engine_events);

    let store = stoa_control::open_store(&config.control)
        .await
        .map_err(|e| anyhow!("control store: {}", e.message))?;
    info!(store = ?config.control.store, "control plane store opened");
    let control = stoa_control::Control::start_as(
        store,
        Arc::new(crate::media_plane::LocalMedia {
            signaling: signaling.clone(),
            limits: room_defaults,
            recordings: recordings.clone(),
        }),
        stoa_control::auth::Keys::new(key_pairs).map_err(|e| anyhow!("{}", e.message))?,
        config.control.clone(),
        node_id,
    );
    // Only a node with a public URL knows its peers from the registry (the control plane
    // leaves itself out by that URL); without one it is no origin of any edge, and nothing is
    // checked. A failed registry read refuses the feed until the next try (every 2 s).
    if !config.control.public_url.is_empty() {
        directory.bind(Arc::new(crate::media_plane::ControlRoomNodes(
            control.clone(),
        )));
    }
    control.set_load_source(Arc::new(crate::node_load::MediaLoad::new(
        signaling.clone(),
        engine_handle.clone(),
    )));
    let node = control.clone();
    if let Some(notifier) = &webhooks {
        control.set_webhooks(Arc::new(crate::media_plane::ControlHooks(notifier.clone())));
    }
    let egress = Arc::new(crate::egress_service::LocalEgress {
        signaling: signaling.clone(),
        recordings: recordings.clone(),
        control: control.clone(),
    });
    crate::media_plane::spawn_recording_failures(
        control.clone(),
        signaling.clone(),
        recordings.clone(),
        recording_failures,
    );
    crate::media_plane::spawn_presence(control.clone(), recordings, presence_rx);
    // Replays and clips: the recordings' records, and their files.
    control.set_archive(Arc::new(crate::archive::Files::new(
        config.recording.dir.clone(),
    )));
    if let Some(reports) = recorder.take_reports() {
        crate::archive::spawn_reports(control.clone(), reports);
    }
    let draining = Draining::default();
    let sources = Sources {
        signaling: signaling.clone(),
        sfu: engine_handle,
        webhooks,
    };
    // While draining, joins are refused before the WebSocket upgrade.
    let joins = stoa_signaling::ws::router_with(
        signaling.clone(),
        keys.clone(),
        Some(crate::media_plane::admission(&control)),
    )
    .layer(axum::middleware::from_fn_with_state(
        draining.clone(),
        ops::refuse_while_draining,
    ));
    let routes = ops::router(draining.clone(), Some(sources), Some(prometheus))
        .merge(joins)
        .merge(stoa_signaling::egress::router(egress, keys.clone()))
        .merge(stoa_signaling::twirp::router_with(
            signaling.clone(),
            keys,
            Some(stoa_signaling::cluster::Forwarder::new(Arc::new(
                crate::media_plane::ControlRoomNodes(control.clone()),
            ))),
        ))
        .merge(stoa_control::api::router(control.clone()))
        .merge(crate::web::router(control))
        .fallback(crate::web::app);

    if !crate::web::built() {
        warn!("the web app was not built into this binary; ./run.sh builds it (see README)");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(http = %http_addr, scheme, rtc_udp = %RtcListen(&sfu), "listening");

    let (stop_tx, stop_rx) = watch::channel(());
    let mut server = match tls {
        Some(tls) => {
            // `tap_io` only so that axum hands the handlers the client's address.
            let listener = axum::serve::ListenerExt::tap_io(
                crate::tls::TlsListener::new(listener, tls)
                    .context("cannot start the HTTPS listener")?,
                |_| {},
            );
            spawn_http(listener, routes, stop_rx)
        }
        None => spawn_http(without_nagle(listener), routes, stop_rx),
    };

    tokio::select! {
        result = &mut server => {
            result.context("HTTP server task failed")?.context("HTTP server failed")?;
            return Err(anyhow!("HTTP server stopped unexpectedly"));
        }
        signal = signals.recv() => info!(signal, "shutting down"),
    }

    // Stop new joins, tell every client to leave, and wait for the sessions to end; a second
    // signal cuts every wait short. For a restart, close the connections instead: without a
    // Leave, LiveKit clients reconnect by themselves and rejoin once the node is back.
    draining.start();
    // No new rooms come here (the node registry says so at once).
    if tokio::time::timeout(crate::metrics::QUERY_TIMEOUT, node.set_draining(true))
        .await
        .is_err()
    {
        warn!("the node registry did not answer; the node's record says draining later");
    }
    let mut forced = false;
    match config.shutdown.clients {
        ShutdownClients::Reconnect => {
            let sessions = signaling.stats().await.map_or(0, |s| s.sessions);
            info!(
                sessions,
                "restarting: refusing new joins, closing connections so that clients reconnect"
            );
            forced = true;
        }
        ShutdownClients::Leave => {
            let deadline = config.shutdown.drain;
            info!(deadline = ?deadline, "draining: refusing new joins, asking clients to leave");
            tokio::select! {
                () = drain(&signaling, deadline) => {}
                signal = signals.recv() => {
                    warn!(signal, "second signal; exiting now");
                    forced = true;
                }
            }
        }
    }

    let _ = stop_tx.send(());
    if forced {
        server.abort();
    } else {
        tokio::select! {
            result = tokio::time::timeout(SHUTDOWN_GRACE, &mut server) => match result {
                Ok(result) => result
                    .context("HTTP server task failed")?
                    .context("HTTP server failed")?,
                Err(_) => {
                    warn!(grace = ?SHUTDOWN_GRACE, "HTTP connections still open; closing them");
                    server.abort();
                }
            },
            signal = signals.recv() => {
                warn!(signal, "second signal; exiting now");
                server.abort();
            }
        }
    }
    // Recordings still running get their end, so players see them complete.
    recorder.shutdown(RECORDER_GRACE).await;
    engine.shutdown();
    info!("stopped");
    Ok(())
}

/// `listener`, its connections sending small writes at once (`TCP_NODELAY`). Signaling
/// writes a few hundred bytes per message, often two back to back (a join response, then the
/// subscriber's offer); with Nagle's algorithm the second waits for the client's ACK of the
/// first, which Linux delays by 40 ms. Browsers, Go's net package (LiveKit's server) and the
/// TURN and HTTPS listeners here set it too.
fn without_nagle(
    listener: TcpListener,
) -> axum::serve::TapIo<TcpListener, fn(&mut tokio::net::TcpStream)> {
    fn nodelay(tcp: &mut tokio::net::TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    }
    axum::serve::ListenerExt::tap_io(listener, nodelay as fn(&mut tokio::net::TcpStream))
}

/// Serves `routes` on `listener` until `stop` changes (or its sender is gone). Handlers see the
/// client's address as `ConnectInfo<SocketAddr>`.
fn spawn_http<L>(
    listener: L,
    routes: axum::Router,
    mut stop: watch::Receiver<()>,
) -> tokio::task::JoinHandle<io::Result<()>>
where
    L: axum::serve::Listener,
    L::Addr: fmt::Debug,
    for<'a> SocketAddr: axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    tokio::spawn(
        axum::serve(
            listener,
            routes.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            // An error means the sender is gone, which is a stop signal too.
            let _ = stop.changed().await;
        })
        .into_future(),
    )
}

/// How often the drain re-checks for sessions.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Asks every client to leave (`Leave { SERVER_SHUTDOWN }`), then waits until every session has
/// closed and so every room has emptied, up to `deadline`. Sessions still open then are closed
/// by the server. Sessions that slipped in past the join gate are asked on the next poll.
async fn drain(signaling: &Signaling, deadline: Duration) {
    let waited = tokio::time::timeout(deadline, async {
        loop {
            match signaling.ask_to_leave().await {
                Ok(told) if told > 0 => info!(sessions = told, "asked clients to leave"),
                Ok(_) => {}
                Err(_) => return,
            }
            match signaling.stats().await {
                Ok(stats) if stats.sessions == 0 => return,
                Ok(_) => {}
                Err(_) => return,
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    })
    .await;
    match waited {
        Ok(()) => info!("drained: every room is empty"),
        Err(_) => {
            match tokio::time::timeout(crate::metrics::QUERY_TIMEOUT, signaling.drain()).await {
                Ok(Ok(ended)) => warn!(
                    deadline = ?deadline,
                    sessions = ended,
                    "drain deadline passed; closed the sessions left"
                ),
                _ => warn!(deadline = ?deadline, "drain deadline passed; signaling did not answer"),
            }
        }
    }
}

/// Installs the global `tracing` subscriber, writing to stdout.
fn init_tracing(logging: &LoggingConfig) -> Result<()> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(logging.filter.env_filter())
        .with_writer(io::stdout);
    let result = match logging.format {
        LogFormat::Text => builder.with_ansi(io::stdout().is_terminal()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|err| anyhow!("cannot set up logging: {err}"))
}

fn bind_error(what: &str, addr: SocketAddr, err: &io::Error) -> anyhow::Error {
    if err.kind() == io::ErrorKind::AddrInUse {
        anyhow!("{what} {addr} is already in use")
    } else {
        anyhow!("cannot bind {what} {addr}: {err}")
    }
}

/// SIGTERM and SIGINT (Ctrl-C) listeners, registered once so that no signal is missed between
/// the first and the second.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            terminate: tokio::signal::unix::signal(SignalKind::terminate())
                .context("cannot listen for SIGTERM")?,
            interrupt: tokio::signal::unix::signal(SignalKind::interrupt())
                .context("cannot listen for Ctrl-C")?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// Shows the RTC socket address(es) as `127.0.0.1:7882` or `127.0.0.1:50000-50200`.
struct RtcListen<'a>(&'a SfuSettings);

impl fmt::Display for RtcListen<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.ports {
            UdpPorts::Mux(port) => SocketAddr::new(self.0.bind_ip, port).fmt(f),
            UdpPorts::Range { start, end } => {
                let first = SocketAddr::new(self.0.bind_ip, start).to_string();
                write!(f, "{first}-{end}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::num::NonZeroUsize;

    use super::*;
    use crate::config::{self, Overrides};

    fn dev_config() -> Config {
        config::load(Mode::Dev, None, &|_| None, &Overrides::default()).expect("dev config")
    }

    #[test]
    fn sfu_config_mirrors_the_config() {
        let mut config = dev_config();
        config.advertise_ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        config.rtc.shards = NonZeroUsize::new(3).expect("non-zero");
        let sfu = sfu_config(&config);
        assert_eq!(
            sfu,
            SfuSettings {
                bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                advertise_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                ports: UdpPorts::Mux(7882),
                shards: 3,
            }
        );
        config.rtc.ports = RtcPorts::Range {
            start: 50000,
            end: 50200,
        };
        assert_eq!(
            sfu_config(&config).ports,
            UdpPorts::Range {
                start: 50000,
                end: 50200
            }
        );
    }

    #[tokio::test]
    async fn http_connections_send_small_writes_at_once() {
        use axum::serve::Listener as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut listener = without_nagle(listener);
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, from) = listener.accept().await;
        assert_eq!(from, client.local_addr().expect("client addr"));
        assert!(accepted.nodelay().expect("read TCP_NODELAY"));
        assert!(
            !client.nodelay().expect("read TCP_NODELAY"),
            "the default is off"
        );
    }

    #[test]
    fn rtc_listen_display() {
        let mut sfu = sfu_config(&dev_config());
        assert_eq!(RtcListen(&sfu).to_string(), "127.0.0.1:7882");
        sfu.ports = UdpPorts::Range {
            start: 50000,
            end: 50200,
        };
        assert_eq!(RtcListen(&sfu).to_string(), "127.0.0.1:50000-50200");
        sfu.bind_ip = "::1".parse().expect("ip");
        assert_eq!(RtcListen(&sfu).to_string(), "[::1]:50000-50200");
    }
}
