//! `stoa token`: prints an access token signed with the keys `stoa serve` would use.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use stoa_signaling::token::{self, VideoGrants};

use crate::cli::TokenArgs;
use crate::config::{self, ApiKeys, DEV_RTC_UDP_PORT, Overrides};

/// Mints the token `args` describe and writes it, alone, on stdout.
pub fn run(args: &TokenArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    let keys = load_keys(args, env)?;
    let (api_key, secret) = choose_key(&keys, args.api_key.as_deref())?;
    let grants = if args.user {
        // A user token names a user and grants nothing in any room.
        stoa_control::model::UserId::parse(&args.identity)
            .map_err(|e| anyhow!("--identity: {}", e.message))?;
        VideoGrants::default()
    } else {
        VideoGrants {
            room_join: true,
            room: args.room.clone().unwrap_or_default(),
            room_admin: args.admin,
            can_publish: args.can_publish,
            can_subscribe: args.can_subscribe,
            can_publish_data: args.can_publish_data,
            ..VideoGrants::default()
        }
    };
    let jwt = token::mint(
        api_key,
        secret,
        &args.identity,
        args.name.as_deref(),
        grants,
        args.valid_for,
        unix_now()?,
    )
    .context("cannot create the token")?;
    writeln!(std::io::stdout().lock(), "{jwt}").context("cannot write the token to stdout")?;
    Ok(())
}

/// The API keys exactly as `stoa serve` resolves them: dev defaults with `--dev`, then the config
/// file, then `STOA_KEYS`, with the same validation and the same one-line errors.
///
/// `config::load` also validates the network settings, and in production insists on an
/// `advertise_ip` when bound to all interfaces. A token does not depend on any of that, so the
/// network settings are overridden with loopback values that always pass; everything else in the
/// file and the environment is still checked as `serve` checks it.
fn load_keys(args: &TokenArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<ApiKeys> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let network_irrelevant = Overrides {
        bind_ip: Some(loopback),
        advertise_ip: Some(loopback),
        rtc_udp_port: Some(DEV_RTC_UDP_PORT),
        ..Overrides::default()
    };
    let config = config::load(
        args.mode(),
        args.config.as_deref(),
        env,
        &network_irrelevant,
    )?;
    Ok(config.keys)
}

/// The key named by `--api-key`, or the only one configured.
fn choose_key<'k>(keys: &'k ApiKeys, wanted: Option<&str>) -> Result<(&'k str, &'k str)> {
    let ids: Vec<&str> = keys.ids().collect();
    let id = match (wanted, ids.as_slice()) {
        (Some(wanted), _) => ids
            .iter()
            .copied()
            .find(|id| *id == wanted)
            .ok_or_else(|| {
                anyhow!(
                    "API key `{wanted}` is not configured; configured keys: {}",
                    ids.join(", ")
                )
            })?,
        (None, [only]) => only,
        (None, []) => bail!("no API keys configured"),
        (None, several) => bail!(
            "several API keys are configured ({}); choose one with --api-key",
            several.join(", ")
        ),
    };
    let secret = keys
        .secret(id)
        .ok_or_else(|| anyhow!("API key `{id}` has no secret"))?;
    Ok((id, secret.expose()))
}

/// The wall clock in Unix seconds.
fn unix_now() -> Result<u64> {
    // The binary owns the clock; the token code takes the time as input.
    #[allow(
        clippy::disallowed_methods,
        reason = "the binary owns the clock and passes it to token::mint"
    )]
    let now = SystemTime::now();
    Ok(now
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> TokenArgs {
        let mut argv = vec!["stoa", "token", "--identity", "a", "--room", "r"];
        argv.extend_from_slice(extra);
        let Command::Token(args) = Cli::try_parse_from(argv).expect("parse").command else {
            panic!("expected token");
        };
        args
    }

    fn keys_from(env: &[(&str, &str)], extra: &[&str]) -> Result<ApiKeys> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        load_keys(&args(extra), &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn dev_uses_the_dev_key() {
        let keys = keys_from(&[], &["--dev"]).expect("keys");
        assert_eq!(
            choose_key(&keys, None).expect("key"),
            (config::DEV_API_KEY, config::DEV_API_SECRET)
        );
    }

    #[test]
    fn production_takes_stoa_keys_without_network_settings() {
        let keys = keys_from(&[("STOA_KEYS", "k1: s1")], &[]).expect("keys");
        assert_eq!(choose_key(&keys, None).expect("key"), ("k1", "s1"));
    }

    #[test]
    fn production_without_keys_is_refused() {
        let err = keys_from(&[], &[]).expect_err("no keys");
        assert!(
            err.to_string().starts_with("no API keys configured"),
            "{err}"
        );
    }

    #[test]
    fn several_keys_need_a_choice() {
        let keys = keys_from(&[("STOA_KEYS", "k1: s1, k2: s2")], &[]).expect("keys");
        let err = choose_key(&keys, None).expect_err("ambiguous");
        assert_eq!(
            err.to_string(),
            "several API keys are configured (k1, k2); choose one with --api-key"
        );
        assert_eq!(choose_key(&keys, Some("k2")).expect("k2"), ("k2", "s2"));
        let err = choose_key(&keys, Some("k3")).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "API key `k3` is not configured; configured keys: k1, k2"
        );
    }
}
