//! `sdctl`: the sdnet daemon and its Docker-style client in one binary.

mod api;
mod cli;
mod client;
mod daemon;
mod duration;
mod enter;

use clap::Parser;

use cli::{Cli, Command, DnsCommand};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Daemon(args) => daemon::run(args).map(|()| 0),
        Command::Dns {
            command: DnsCommand::Serve(args),
        } => daemon::dns_serve::run(args).map(|()| 0),
        other => client::run(other),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("sdctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by RUST_LOG (default: info for us, warn for the rest).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,sdctl=info,sdnet=info,sdnet_resolver=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
