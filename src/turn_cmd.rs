//! The TURN relay in the binary: started inside `stoa serve` when `[turn] enabled = true`, or
//! alone with `stoa turn`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use stoa_sfu::shell::{SfuSettings, UdpPorts};
use stoa_signaling::service::TurnServers;
use stoa_turn::proto::{PeerRule, Secret};
use stoa_turn::shell::Relay;
use tracing::info;

use crate::cli::TurnArgs;
use crate::turn_config::{FileTurn, TurnSettings, credential_minter};

/// Starts the relay for `stoa serve`: it reaches the media engine's addresses, and signaling
/// hands out its URLs with credentials from the returned minter.
pub async fn start_with_sfu(
    turn: &TurnSettings,
    sfu: &SfuSettings,
    acme: Option<&crate::acme::Acme>,
) -> Result<(Relay, TurnServers)> {
    let ports = match sfu.ports {
        UdpPorts::Mux(port) => port..=port,
        UdpPorts::Range { start, .. } => {
            let last = usize::from(start) + sfu.shards.saturating_sub(1);
            start..=u16::try_from(last).unwrap_or(u16::MAX)
        }
    };
    let mut sfu_peers = vec![PeerRule::new(sfu.advertise_ip, ports.clone())];
    if !sfu.bind_ip.is_unspecified() && sfu.bind_ip != sfu.advertise_ip {
        sfu_peers.push(PeerRule::new(sfu.bind_ip, ports));
    }
    // Credentials are minted in this process, so a random secret works when none is set.
    let secret = match &turn.secret {
        Some(secret) => secret.clone(),
        None => Secret::new(random::<32>()?),
    };
    let config = turn.relay_config(
        sfu.bind_ip,
        sfu.advertise_ip,
        sfu_peers,
        secret.clone(),
        random::<16>()?,
        acme,
    )?;
    let relay = Relay::start(config).await.context("TURN relay")?;
    let urls = turn.client_urls(sfu.advertise_ip);
    info!(urls = %urls.join(" "), "TURN relay started");
    Ok((relay, credential_minter(secret, turn.credential_ttl, urls)))
}

/// `stoa turn`: the relay alone, configured from `[turn]` (plus `bind_ip` and `advertise_ip`)
/// of the config file, until Ctrl-C or SIGTERM.
pub fn run(args: &TurnArgs) -> Result<()> {
    let (settings, bind_ip, advertise_ip) = load(args)?;
    let Some(secret) = settings.secret.clone() else {
        bail!(
            "stoa turn needs [turn] secret in the config file: the credentials clients present are \
             minted with it elsewhere"
        );
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(args.log_level.as_deref().unwrap_or("info"))
            .map_err(|e| anyhow!("--log-level: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init()
        .map_err(|e| anyhow!("cannot set up logging: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stoa-turn")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let config = settings.relay_config(
            bind_ip,
            advertise_ip,
            Vec::new(),
            secret,
            random::<16>()?,
            None,
        )?;
        let relay = Relay::start(config).await.context("TURN relay")?;
        info!(urls = %settings.client_urls(advertise_ip).join(" "), "TURN relay started");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot listen for SIGTERM")?;
        tokio::select! {
            () = relay.wait() => bail!("TURN relay stopped unexpectedly"),
            _ = terminate.recv() => info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => info!("interrupt: stopping"),
        }
        Ok(())
    })
}

/// Reads `[turn]`, `bind_ip` and `advertise_ip` from the config file; other tables belong to
/// `stoa serve` and are left to it.
fn load(args: &TurnArgs) -> Result<(TurnSettings, IpAddr, IpAddr)> {
    let (table, name) = match &args.config {
        Some(path) => (read_table(path)?, format!("config {}", path.display())),
        None => (toml::Table::new(), "config".to_owned()),
    };
    let ip = |key: &str| -> Result<Option<IpAddr>> {
        table
            .get(key)
            .map(|value| {
                value
                    .as_str()
                    .and_then(|text| text.parse().ok())
                    .ok_or_else(|| anyhow!("{name}: {key}: not an IP address"))
            })
            .transpose()
    };
    let default_bind = if args.dev {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let bind_ip = args.bind_ip.or(ip("bind_ip")?).unwrap_or(default_bind);
    let advertise_ip = match args.advertise_ip.or(ip("advertise_ip")?) {
        Some(ip) => ip,
        None if bind_ip.is_unspecified() => {
            bail!(
                "advertise_ip is required when bind_ip is {bind_ip}: the relay tells clients its address"
            )
        }
        None => bind_ip,
    };
    let turn: FileTurn = match table.get("turn") {
        Some(value) => value
            .clone()
            .try_into()
            .map_err(|e| anyhow!("{name}: turn: {e}"))?,
        None => FileTurn::default(),
    };
    let settings = turn.finish(&format!("{name}: turn"), None)?;
    Ok((settings, bind_ip, advertise_ip))
}

fn read_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config {}: cannot read", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow!("config {}: {}", path.display(), e.message()))
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow!("cannot read random bytes: {e}"))?;
    Ok(bytes)
}
