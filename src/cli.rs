//! The command line: `stoa --version`, `stoa serve [--dev] [--config FILE] [flags]`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ENV_CONFIG, Mode, Overrides};

/// Live audio rooms in one binary: WebRTC SFU, TURN, LiveKit-compatible signaling and control
/// plane.
#[derive(Debug, Parser)]
#[command(name = "stoa", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server until Ctrl-C or SIGTERM.
    ///
    /// Settings come from built-in defaults, then the config file, then STOA_* environment
    /// variables, then these flags; each overrides the one before.
    Serve(ServeArgs),
}

/// Flags of `stoa serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Development mode: API key `devkey` / secret `secret` (unless keys are configured), bound
    /// and advertised on 127.0.0.1, HTTP on 7880, RTC UDP on 7882. Never expose it to a network.
    #[arg(long)]
    pub dev: bool,

    /// TOML config file; see config.example.toml for every key.
    #[arg(long, value_name = "FILE", env = ENV_CONFIG)]
    pub config: Option<PathBuf>,

    /// Address to bind the HTTP listener and RTC sockets to [env: STOA_BIND_IP].
    #[arg(long, value_name = "IP")]
    pub bind_ip: Option<IpAddr>,

    /// Address clients reach this server at, given to them in ICE candidates
    /// [env: STOA_ADVERTISE_IP].
    #[arg(long, value_name = "IP")]
    pub advertise_ip: Option<IpAddr>,

    /// HTTP and WebSocket port [env: STOA_HTTP_PORT].
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,

    /// One UDP port for all WebRTC media, instead of a range [env: STOA_RTC_UDP_PORT].
    #[arg(long, value_name = "PORT")]
    pub rtc_udp_port: Option<u16>,

    /// Log level or filter, e.g. `debug` or `info,stoa_sfu=debug` [env: STOA_LOG_LEVEL].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

impl ServeArgs {
    /// Which defaults apply.
    pub fn mode(&self) -> Mode {
        if self.dev {
            Mode::Dev
        } else {
            Mode::Production
        }
    }

    /// The values given as flags, which override the file and the environment.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            bind_ip: self.bind_ip,
            advertise_ip: self.advertise_ip,
            http_port: self.http_port,
            rtc_udp_port: self.rtc_udp_port,
            log_level: self.log_level.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_become_overrides() {
        let cli = Cli::try_parse_from([
            "stoa",
            "serve",
            "--dev",
            "--http-port",
            "9000",
            "--bind-ip",
            "::1",
        ])
        .expect("parse");
        let Command::Serve(args) = cli.command;
        assert_eq!(args.mode(), Mode::Dev);
        let overrides = args.overrides();
        assert_eq!(overrides.http_port, Some(9000));
        assert_eq!(overrides.bind_ip, Some("::1".parse().expect("ip")));
        assert_eq!(overrides.rtc_udp_port, None);
    }
}
