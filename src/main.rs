//! `stoa`: live audio rooms in one binary.
//!
//! This binary owns the command line, the configuration and the wiring of the crates below it
//! (media engine, signaling, TURN, control plane). A failure is reported as a single
//! `error: …` line on stderr and a non-zero exit status; logs go to stdout (`stoa token` prints
//! only the token there).

mod acme;
mod archive;
mod cli;
mod config;
mod egress_service;
mod livekit_config;
mod media_plane;
mod metrics;
mod node_load;
mod ops;
mod public_ip;
mod recording;
mod serve;
mod tls;
mod token_cmd;
mod turn_cmd;
mod turn_config;
mod web;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Command, ServeArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve(args) => serve_command(args),
        Command::Token(args) => token_cmd::run(args, &env_var),
        Command::Turn(args) => turn_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The whole chain on one line, so an operator sees exactly what went wrong.
            let message = format!("{err:#}").replace('\n', " ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve_command(args: &ServeArgs) -> Result<()> {
    let config = config::load(
        args.mode(),
        args.config.as_deref(),
        &env_var,
        &args.overrides(),
    )?;
    serve::run(&config)
}

/// Reads an environment variable; a value that is not UTF-8 is kept (lossily) so that it fails
/// validation loudly instead of being ignored.
fn env_var(name: &str) -> Option<String> {
    std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
}
