//! The command line: `stoa --version`, `stoa serve [--dev] [--config FILE] [flags]`,
//! `stoa token --identity ID --room ROOM [flags]`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
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

    /// Print an access token that admits one participant to one room, like `lk token create`.
    ///
    /// The token is signed with the same API keys `stoa serve` would use (config file, STOA_KEYS,
    /// or devkey/secret with --dev). Only the token is printed, so it can be captured:
    /// `TOKEN=$(stoa token --dev --identity alice --room lobby)`.
    Token(TokenArgs),

    /// Run only the TURN relay, configured by `[turn]` (and `bind_ip`, `advertise_ip`) of the
    /// config file, until Ctrl-C or SIGTERM. `[turn] secret` is required: whoever hands out the
    /// credentials mints them with it. `stoa serve` runs the same relay in-process instead when
    /// `[turn] enabled = true`.
    Turn(TurnArgs),
}

/// Flags of `stoa turn`.
#[derive(Debug, Args)]
pub struct TurnArgs {
    /// Bind to and advertise 127.0.0.1 unless configured otherwise.
    #[arg(long)]
    pub dev: bool,

    /// TOML config file; see the `[turn]` table of config.example.toml.
    #[arg(long, value_name = "FILE", env = ENV_CONFIG)]
    pub config: Option<PathBuf>,

    /// Address the listeners and relay ports bind to.
    #[arg(long, value_name = "IP")]
    pub bind_ip: Option<IpAddr>,

    /// Address clients and peers reach the relay at (in relayed addresses).
    #[arg(long, value_name = "IP")]
    pub advertise_ip: Option<IpAddr>,

    /// Log level or filter, e.g. `debug`.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
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

    /// A LiveKit server config file (YAML) to read first: every key Stoa has a concept for is
    /// used (port, rtc ports and node_ip, keys, room, webhook, logging), every other key is
    /// ignored with a warning. The Stoa config file, environment and flags override it.
    #[arg(long, value_name = "FILE")]
    pub livekit_config: Option<PathBuf>,

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
            livekit_config: self.livekit_config.clone(),
        }
    }
}

/// Flags of `stoa token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Participant identity (the token's `sub`); unique within a room.
    #[arg(long, value_name = "ID")]
    pub identity: String,

    /// Room the token admits to (not with `--user`).
    #[arg(
        long,
        value_name = "ROOM",
        required_unless_present = "user",
        conflicts_with = "user"
    )]
    pub room: Option<String>,

    /// Print a user token for the control API (`/api`, `Authorization: Bearer …`) instead of a
    /// room token: `--identity` is the user id, `--name` the display name.
    #[arg(long, conflicts_with_all = ["admin", "can_publish", "can_subscribe", "can_publish_data"])]
    pub user: bool,

    /// Display name shown to other participants.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Whether the participant may publish tracks [default: true].
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub can_publish: Option<bool>,

    /// Whether the participant may subscribe to tracks [default: true].
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub can_subscribe: Option<bool>,

    /// Whether the participant may send data messages [default: same as --can-publish].
    #[arg(long, value_name = "BOOL", value_parser = BoolishValueParser::new())]
    pub can_publish_data: Option<bool>,

    /// Make the participant an administrator of the room (`roomAdmin`).
    #[arg(long)]
    pub admin: bool,

    /// How long the token stays valid, e.g. `30m`, `6h`, `7d` or `1h30m`.
    #[arg(long, value_name = "DURATION", default_value = "6h", value_parser = parse_duration)]
    pub valid_for: Duration,

    /// Which configured API key signs the token; needed only when several are configured.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,

    /// Sign with the dev key (`devkey` / `secret`) unless keys are configured, as `serve --dev`.
    #[arg(long)]
    pub dev: bool,

    /// TOML config file whose `[keys]` sign the token; see config.example.toml.
    #[arg(long, value_name = "FILE", env = ENV_CONFIG)]
    pub config: Option<PathBuf>,
}

impl TokenArgs {
    /// Which defaults apply to the keys.
    pub fn mode(&self) -> Mode {
        if self.dev {
            Mode::Dev
        } else {
            Mode::Production
        }
    }
}

/// Parses a duration written as one or more `<number><unit>` groups, units `s`, `m`, `h`, `d`
/// (`90s`, `30m`, `6h`, `1h30m`, `7d`). Zero is refused: such a token would be born expired.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("`{text}` is not a duration; write e.g. 30m, 6h, 7d or 1h30m");
    let mut total: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let (number, tail) = rest.split_at(digits);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let mut chars = tail.chars();
        let unit = match chars.next() {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 3600,
            Some('d') => 86_400,
            _ => return Err(invalid()),
        };
        total = number
            .checked_mul(unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(|| format!("`{text}` is too long"))?;
        rest = chars.as_str();
    }
    if total == 0 {
        return Err("the duration must be at least one second".to_owned());
    }
    Ok(Duration::from_secs(total))
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
        let Command::Serve(args) = cli.command else {
            panic!("expected serve, got {:?}", cli.command);
        };
        assert_eq!(args.mode(), Mode::Dev);
        let overrides = args.overrides();
        assert_eq!(overrides.http_port, Some(9000));
        assert_eq!(overrides.bind_ip, Some("::1".parse().expect("ip")));
        assert_eq!(overrides.rtc_udp_port, None);
    }

    #[test]
    fn token_flags_parse() {
        let cli = Cli::try_parse_from([
            "stoa",
            "token",
            "--identity",
            "alice",
            "--room",
            "lobby",
            "--can-publish",
            "false",
            "--can-subscribe=yes",
            "--admin",
            "--valid-for",
            "1h30m",
        ])
        .expect("parse");
        let Command::Token(args) = cli.command else {
            panic!("expected token, got {:?}", cli.command);
        };
        assert_eq!(args.identity, "alice");
        assert_eq!(args.room.as_deref(), Some("lobby"));
        assert_eq!(args.can_publish, Some(false));
        assert_eq!(args.can_subscribe, Some(true));
        assert_eq!(args.can_publish_data, None);
        assert!(args.admin);
        assert_eq!(args.valid_for, Duration::from_secs(5400));
        assert_eq!(args.mode(), Mode::Production);
    }

    #[test]
    fn token_defaults_to_six_hours() {
        let cli = Cli::try_parse_from(["stoa", "token", "--dev", "--identity", "a", "--room", "r"])
            .expect("parse");
        let Command::Token(args) = cli.command else {
            panic!("expected token, got {:?}", cli.command);
        };
        assert_eq!(args.valid_for, Duration::from_secs(6 * 3600));
        assert_eq!(args.mode(), Mode::Dev);
        assert!(Cli::try_parse_from(["stoa", "token", "--room", "r"]).is_err());
    }

    #[test]
    fn durations() {
        for (text, seconds) in [
            ("90s", 90),
            ("30m", 1800),
            ("6h", 21_600),
            ("7d", 604_800),
            ("1h30m", 5400),
            (" 2m ", 120),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        for bad in [
            "",
            "6",
            "h",
            "6x",
            "-1h",
            "1.5h",
            "0s",
            "1h 30m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }
}
