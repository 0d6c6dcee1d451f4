//! `sdctl`: the sdnet daemon and its Docker-style client in one binary.

mod aardvark;
mod api;
mod cli;
mod client;
mod daemon;
mod duration;
mod enter;

use cli::{Command, DnsCommand, LogLevel, ParseExit};

fn main() -> std::process::ExitCode {
    // Internal entry points the daemon starts itself (not part of the command line users see):
    // the keeper of namespaces and sockets, and the start gate of supervised processes.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("__keeper") => {
            return match argv.get(2) {
                Some(dir) => daemon::keeper::main(std::path::Path::new(dir)),
                None => std::process::ExitCode::from(2),
            };
        }
        Some("__gate") => return daemon::supervisor::gate_main(&argv[2..]),
        _ => {}
    }
    let invoked_as = argv
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str());
    if invoked_as == Some("aardvark-dns") {
        use clap::Parser;
        return match cli::AardvarkCli::try_parse_from(&argv) {
            Ok(c) => {
                aardvark::log::init();
                exit_with(aardvark::main(c.args).map(i32::from))
            }
            Err(e) => {
                let _ = e.print();
                std::process::ExitCode::from(e.exit_code().clamp(0, 255) as u8)
            }
        };
    }
    let cli = match cli::parse(argv) {
        Ok(cli) => cli,
        Err(ParseExit::Print(e)) => {
            let _ = e.print();
            return std::process::ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
        Err(ParseExit::Usage(line)) => {
            eprintln!("{line}");
            return std::process::ExitCode::from(2);
        }
    };
    match (&cli.command, cli.global.log_level) {
        (Command::AardvarkDns(_), None) => aardvark::log::init(),
        (_, level) => init_tracing(level),
    }
    let result = match cli.command {
        Command::Daemon(mut args) => {
            args.resolve_socket(cli.global.socket.as_deref());
            daemon::run(args).map(|()| 0)
        }
        Command::Dns {
            command: DnsCommand::Serve(args),
        } => daemon::dns_serve::run(args).map(|()| 0),
        Command::AardvarkDns(args) => aardvark::main(args).map(i32::from),
        other => client::run(&cli.global, other),
    };
    exit_with(result)
}

fn exit_with(result: anyhow::Result<i32>) -> std::process::ExitCode {
    match result {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("sdctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `--log-level`, else RUST_LOG, else info for us and warn for
/// the rest.
fn init_tracing(level: Option<LogLevel>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l.filter()),
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(LogLevel::Info.filter())),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
