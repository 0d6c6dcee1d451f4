//! Command-line grammar (clap). Docker's verbs and flags where Docker has them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sdnet_resolver::model::Upstream;

use crate::api::{
    DeclaredPort, Driver, ExposedPort, LinkSpec, PortSpec, RestartPolicy, ServiceNetworkReq,
};
use sdnet_resolver::model::EndpointMode;

mod daemon;
mod objects;
pub use daemon::*;
pub use objects::*;

/// Where clients look for the daemon when neither `--socket` nor `SDNET_SOCKET` says.
pub const DEFAULT_SOCKET: &str = "/run/sdnet/sdnet.sock";
/// The environment variable clients take the socket from (the daemon ignores it).
pub const SOCKET_ENV: &str = "SDNET_SOCKET";

#[derive(Parser, Debug)]
#[command(
    name = "sdctl",
    version,
    about = "Embedded DNS, service discovery and network plumbing for sandboxes",
    after_help = "Start the daemon with `sdctl daemon` (as root), then use the other commands."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes, before or after the subcommand (`sdctl --socket S ps` and
/// `sdctl ps --socket S` alike, as `docker -H … ps`).
#[derive(Args, Debug, Clone, Default)]
pub struct GlobalOpts {
    /// The daemon's API socket (PATH or unix://PATH). Clients: default $SDNET_SOCKET, else
    /// /run/sdnet/sdnet.sock. `sdctl daemon`: default <run-dir>/sdnet.sock.
    #[arg(
        long,
        short = 'H',
        visible_alias = "host",
        global = true,
        value_name = "PATH",
        value_parser = parse_socket
    )]
    pub socket: Option<PathBuf>,
    /// Log level of sdnet's own messages (default: RUST_LOG, else info).
    #[arg(long, global = true, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
}

impl GlobalOpts {
    /// The socket a client talks to: `--socket`, else `SDNET_SOCKET`, else the default.
    pub fn client_socket(&self) -> PathBuf {
        client_socket(self.socket.as_deref(), std::env::var_os(SOCKET_ENV))
    }
}

fn client_socket(flag: Option<&Path>, env: Option<std::ffi::OsString>) -> PathBuf {
    match (flag, env) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(e)) if !e.is_empty() => {
            parse_socket(&e.to_string_lossy()).unwrap_or_else(|_| PathBuf::from(e))
        }
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// A unix socket path, also written as Docker's `unix:///path`.
fn parse_socket(s: &str) -> Result<PathBuf, String> {
    let path = match s.split_once("://") {
        Some(("unix", p)) => p,
        Some((scheme, _)) => {
            return Err(format!(
                "{scheme}:// is not supported: the API is a unix socket (PATH or unix://PATH)"
            ));
        }
        None => s,
    };
    if path.is_empty() {
        return Err("empty socket path".into());
    }
    Ok(PathBuf::from(path))
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The tracing filter: this level for sdnet's crates, at most warn for the rest.
    pub fn filter(self) -> String {
        let ours = match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        };
        let rest = if self == LogLevel::Error {
            "error"
        } else {
            "warn"
        };
        format!(
            "{rest},sdctl={ours},sdnet={ours},sdnet_resolver={ours},sdnet_netstack={ours},sdnet_lb={ours}"
        )
    }
}

/// What the client half needs from the global flags.
#[derive(Debug, Clone)]
pub struct ClientOpts {
    pub socket: PathBuf,
}

/// `--subnet`/`--ip-range`: a CIDR, with errors that say what is wrong (ipnet only says
/// "invalid IP address syntax" for a prefix that is too long).
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| "expected CIDR notation ADDRESS/PREFIX, e.g. 10.1.0.0/24".to_string())?;
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("prefix length {len:?} is not a number"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("prefix length {len} is longer than {max}"));
    }
    ipnet::IpNet::new(ip, len).map_err(|e| e.to_string())
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct OutputOpts {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only print IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: owns sandboxes and networks, serves 127.0.0.11 in every sandbox.
    Daemon(DaemonArgs),
    /// Manage networks.
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// The nodes of the cluster (with `sdctl daemon --cluster-store`).
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Create a sandbox (network namespace), attach it, optionally run a command in it.
    Run(RunArgs),
    /// List sandboxes.
    Ps {
        /// Also sandboxes whose process exited.
        #[arg(short, long)]
        all: bool,
        #[command(flatten)]
        out: OutputOpts,
    },
    /// Show sandboxes as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Run a command inside a sandbox (its network, hostname, resolv.conf and hosts).
    Exec {
        name: String,
        /// The command; starts at `--` or at the first word that is not a flag.
        #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Remove sandboxes (with --link: remove links, no sandbox).
    Rm {
        /// Kill a running process first.
        #[arg(short, long)]
        force: bool,
        /// Remove the specified links (arguments `/LINKING/ALIAS`) instead of sandboxes.
        #[arg(short, long)]
        link: bool,
        /// Sandboxes (names or IDs); with --link, links as `/LINKING/ALIAS`.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Start stopped sandboxes' commands again (a sandbox keeps its namespace, addresses
    /// and names while stopped).
    Start {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop sandboxes' processes: SIGTERM, then SIGKILL after the timeout.
    Stop(StopArgs),
    /// Stop, then start sandboxes' processes.
    Restart(StopArgs),
    /// Send a signal to sandboxes' processes (the restart policy applies when they die).
    Kill {
        /// Signal name or number.
        #[arg(short = 's', long = "signal", default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Block until sandboxes' processes exit, then print their exit codes.
    Wait {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List a sandbox's published ports, or the host address of one.
    Port {
        name: String,
        /// PORT[/tcp|udp]
        private: Option<String>,
    },
    /// Freeze sandboxes' processes (SIGSTOP to the process group).
    Pause {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Thaw paused sandboxes' processes.
    Unpause {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stream what happens: sandboxes, networks and services created, connected, started,
    /// dying, removed…
    Events {
        /// Also events since this time (RFC 3339, Unix seconds, or a duration ago: 10m).
        #[arg(long)]
        since: Option<String>,
        /// Stop at this time (same forms).
        #[arg(long)]
        until: Option<String>,
        /// type=sandbox|network|service, event=NAME, sandbox=NAME, network=NAME (repeat
        /// the flag: the same key ORs, different keys AND).
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print a sandbox's process output.
    Logs {
        /// Keep following the output until the process exits.
        #[arg(short, long)]
        follow: bool,
        name: String,
    },
    /// Swarm-style services: replicated tasks behind a VIP (or DNS round robin).
    #[command(alias = "service")]
    Services {
        #[command(subcommand)]
        command: ServicesCommand,
    },
    /// DNS tools.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// Podman's aardvark-dns, as netavark starts it (also what sdctl does when started under
    /// the name `aardvark-dns`, e.g. through a symlink).
    AardvarkDns(AardvarkArgs),
    /// Show the client's version and the daemon's, if one answers.
    Version,
    /// Print a shell completion script (e.g. `sdctl completion bash > /etc/bash_completion.d/sdctl`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into --dir.
    Man {
        /// Write sdctl.1, sdctl-network.1, sdctl-network-create.1 … into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// How parsing the command line ended when it did not yield a command.
/// `stop` and `restart`: how long to wait after SIGTERM, and which sandboxes.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait before killing the process.
    #[arg(
        short = 't',
        long = "time",
        visible_alias = "timeout",
        value_name = "SECONDS"
    )]
    pub time: Option<u64>,
    #[arg(required = true)]
    pub names: Vec<String>,
}

pub enum ParseExit {
    /// Help or version text (already complete), with clap's exit code.
    Print(clap::Error),
    /// A usage error: one line, exit code 2.
    Usage(String),
}

/// Parses the command line; usage errors become one line naming the command's help.
pub fn parse(args: Vec<std::ffi::OsString>) -> Result<Cli, ParseExit> {
    use clap::error::ErrorKind;
    match Cli::try_parse_from(&args) {
        Ok(cli) => Ok(cli),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Err(ParseExit::Print(e)),
            _ => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                cmd.build();
                Err(ParseExit::Usage(one_line(&e, &command_path(&cmd, &args))))
            }
        },
    }
}

/// clap's "error: …\n\nUsage: …\n\nFor more information…" as one line.
fn one_line(e: &clap::Error, path: &[String]) -> String {
    let text = e.render().to_string();
    let mut parts: Vec<String> = Vec::new();
    for block in text.split("\n\n") {
        let b = block.trim();
        if b.is_empty()
            || b.starts_with("Usage:")
            || b.starts_with("For more information")
            // "to pass '--x' as a value, use '-- --x'" would make it the command.
            || b.starts_with("tip: to pass")
        {
            continue;
        }
        let b = b.strip_prefix("error:").unwrap_or(b);
        let line: Vec<&str> = b.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        parts.push(line.join(" "));
    }
    format!(
        "sdctl: {} (see '{} --help')",
        parts.join("; "),
        path.join(" ")
    )
}

/// The subcommands named on the command line (`["sdctl", "network", "create"]`), skipping
/// flags and their values.
fn command_path(root: &clap::Command, args: &[std::ffi::OsString]) -> Vec<String> {
    let mut path = vec![root.get_name().to_string()];
    let mut cur = root;
    let takes_value = |a: &clap::Arg| a.get_action().takes_values();
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str() else { break };
        if s == "--" {
            break;
        }
        if let Some(long) = s.strip_prefix("--") {
            if !long.contains('=')
                && cur
                    .get_arguments()
                    .find(|a| {
                        a.get_long() == Some(long)
                            || a.get_all_aliases().is_some_and(|v| v.contains(&long))
                    })
                    .is_some_and(takes_value)
            {
                it.next();
            }
            continue;
        }
        if let Some(shorts) = s.strip_prefix('-').filter(|x| !x.is_empty()) {
            // -abc: a short flag that takes a value ends the group; it is the next word when
            // nothing follows it.
            let chars: Vec<char> = shorts.chars().collect();
            for (i, c) in chars.iter().enumerate() {
                if cur
                    .get_arguments()
                    .find(|a| a.get_short() == Some(*c))
                    .is_some_and(takes_value)
                {
                    if i + 1 == chars.len() {
                        it.next();
                    }
                    break;
                }
            }
            continue;
        }
        match cur.find_subcommand(s) {
            Some(sc) => {
                path.push(sc.get_name().to_string());
                cur = sc;
            }
            None => break,
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(args: &[&str]) -> Cli {
        let argv = std::iter::once("sdctl").chain(args.iter().copied());
        match parse(argv.map(Into::into).collect()) {
            Ok(c) => c,
            Err(ParseExit::Usage(m)) => panic!("{args:?}: {m}"),
            Err(ParseExit::Print(e)) => panic!("{args:?}: {e}"),
        }
    }

    fn usage_error(args: &[&str]) -> String {
        let argv = std::iter::once("sdctl").chain(args.iter().copied());
        match parse(argv.map(Into::into).collect()) {
            Ok(c) => panic!("{args:?} parsed: {c:?}"),
            Err(ParseExit::Usage(m)) => m,
            Err(ParseExit::Print(e)) => panic!("{args:?}: printed {e}"),
        }
    }

    #[test]
    fn grammar_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn socket_before_or_after_the_subcommand() {
        for args in [
            &["--socket", "/s", "ps"][..],
            &["ps", "--socket", "/s"],
            &["-H", "/s", "ps"],
            &["-H", "unix:///s", "ps"],
            &["--host=unix:///s", "ps"],
            &["network", "--socket", "/s", "ls"],
            &["--socket=/s", "network", "ls"],
            &["network", "ls", "--socket", "/s"],
            &["services", "ls", "-H", "/s"],
            &["--socket", "/s", "run", "-d", "--", "sleep", "1"],
            &["--socket", "/s", "exec", "a", "--", "true"],
            &["--socket", "/s", "dns", "query", "x"],
        ] {
            let cli = parse_ok(args);
            assert_eq!(
                cli.global.socket.as_deref(),
                Some(Path::new("/s")),
                "{args:?}"
            );
        }
        assert!(usage_error(&["-H", "tcp://1.2.3.4:2375", "ps"]).contains("unix socket"));
        let cli = parse_ok(&["--log-level", "debug", "ps"]);
        assert_eq!(cli.global.log_level, Some(LogLevel::Debug));
        let cli = parse_ok(&["ps", "--log-level", "error"]);
        assert_eq!(cli.global.log_level, Some(LogLevel::Error));
        assert!(LogLevel::Debug.filter().contains("sdctl=debug"));
    }

    #[test]
    fn client_socket_flag_then_env_then_default() {
        let p = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            client_socket(Some(Path::new("/f")), p("/e")),
            Path::new("/f")
        );
        assert_eq!(client_socket(None, p("/e")), Path::new("/e"));
        assert_eq!(client_socket(None, p("unix:///e")), Path::new("/e"));
        assert_eq!(client_socket(None, p("")), Path::new(DEFAULT_SOCKET));
        assert_eq!(client_socket(None, None), Path::new(DEFAULT_SOCKET));
    }

    #[test]
    fn daemon_socket_follows_the_run_dir() {
        let daemon = |cli: Cli| match cli.command {
            Command::Daemon(mut a) => {
                a.resolve_socket(cli.global.socket.as_deref());
                a.socket
            }
            _ => panic!("not daemon"),
        };
        assert_eq!(
            daemon(parse_ok(&["daemon", "--cleanup", "--run-dir", "/x"])),
            Path::new("/x/sdnet.sock")
        );
        assert_eq!(
            daemon(parse_ok(&["daemon"])),
            Path::new(DEFAULT_SOCKET),
            "the defaults still meet"
        );
        assert_eq!(
            daemon(parse_ok(&["--socket", "/y", "daemon", "--run-dir", "/x"])),
            Path::new("/y")
        );
        assert_eq!(
            daemon(parse_ok(&["daemon", "--run-dir", "/x", "--socket", "/y"])),
            Path::new("/y")
        );
    }

    #[test]
    fn unknown_flags_are_errors_not_commands() {
        let e = usage_error(&[
            "run",
            "-d",
            "--name",
            "b2",
            "--volume",
            "/data:/data",
            "--network",
            "net1",
        ]);
        assert_eq!(
            e,
            "sdctl: unexpected argument '--volume' found (see 'sdctl run --help')"
        );
        let e = usage_error(&[
            "services",
            "create",
            "--name",
            "w",
            "--network",
            "n",
            "--bogus",
            "x",
        ]);
        assert!(
            e.contains("'--bogus'") && e.ends_with("(see 'sdctl services create --help')"),
            "{e}"
        );
        let e = usage_error(&["services", "update", "w", "--bogus", "x"]);
        assert!(
            e.contains("'--bogus'") && e.ends_with("(see 'sdctl services update --help')"),
            "{e}"
        );
        let e = usage_error(&["exec", "a", "-z", "true"]);
        assert!(e.contains("'-z'"), "{e}");

        // The command starts at `--` or at the first word that is not a flag.
        let run = |args: &[&str]| match parse_ok(args).command {
            Command::Run(r) => r,
            c => panic!("{c:?}"),
        };
        let r = run(&["run", "-d", "--name", "b", "--", "--link", "x"]);
        assert_eq!(r.command, ["--link", "x"]);
        let r = run(&["run", "-d", "--name", "b", "sh", "-c", "echo --x"]);
        assert_eq!(
            (r.name.as_deref(), &r.command[..]),
            (Some("b"), &["sh", "-c", "echo --x"].map(String::from)[..])
        );
        let r = run(&["run", "-d", "sleep", "--network", "n"]);
        assert!(r.networks.is_empty());
        assert_eq!(r.command, ["sleep", "--network", "n"]);
        match parse_ok(&["exec", "a", "ping", "-c", "1", "b"]).command {
            Command::Exec { name, command } => {
                assert_eq!(name, "a");
                assert_eq!(command, ["ping", "-c", "1", "b"]);
            }
            c => panic!("{c:?}"),
        }
        match parse_ok(&[
            "services",
            "create",
            "--name",
            "w",
            "--network",
            "n",
            "socat",
            "-d",
            "x",
        ])
        .command
        {
            Command::Services {
                command: ServicesCommand::Create(a),
            } => {
                assert_eq!(a.command, ["socat", "-d", "x"]);
                assert!(!a.detach);
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn usage_errors_are_one_line() {
        for (args, want) in [
            (&["run", "--volume", "a"][..], "(see 'sdctl run --help')"),
            (
                &["--socket", "/s", "network", "create"],
                "(see 'sdctl network create --help')",
            ),
            (
                &["network", "-H", "/s", "create", "--nope", "x"],
                "(see 'sdctl network create --help')",
            ),
            (&["nosuch"], "(see 'sdctl --help')"),
            (
                &["service", "ls", "--bad"],
                "(see 'sdctl services ls --help')",
            ),
            (&["ps", "-x"], "(see 'sdctl ps --help')"),
        ] {
            let e = usage_error(args);
            assert!(!e.contains('\n'), "{args:?}: {e}");
            assert!(
                e.starts_with("sdctl: ") && e.ends_with(want),
                "{args:?}: {e}"
            );
        }
        let e = usage_error(&["network", "create"]);
        assert!(e.contains("<NAME>"), "{e}");
    }

    #[test]
    fn subnets_say_what_is_wrong() {
        let e = usage_error(&["network", "create", "--subnet", "10.20.0.0/33", "x"]);
        assert!(e.contains("prefix length 33 is longer than 32"), "{e}");
        assert!(!e.contains("invalid IP address syntax"), "{e}");
        assert_eq!(
            parse_cidr("fd00::/129").unwrap_err(),
            "prefix length 129 is longer than 128"
        );
        assert!(parse_cidr("10.0.0.0").unwrap_err().contains("CIDR"));
        assert!(
            parse_cidr("10.0.0/8")
                .unwrap_err()
                .contains("not an IP address")
        );
        assert!(
            parse_cidr("10.0.0.0/x")
                .unwrap_err()
                .contains("not a number")
        );
        assert_eq!(
            parse_cidr("10.20.0.0/16").unwrap().to_string(),
            "10.20.0.0/16"
        );
        assert_eq!(
            parse_cidr("fd00:1::/64").unwrap().to_string(),
            "fd00:1::/64"
        );
        // Host bits are the daemon's to refuse ("host bits set"), as before.
        assert_eq!(
            parse_cidr("10.20.0.1/16").unwrap().to_string(),
            "10.20.0.1/16"
        );
        let e = usage_error(&["network", "create", "--ip-range", "10.20.0.0/40", "x"]);
        assert!(e.contains("prefix length 40"), "{e}");
    }
}
