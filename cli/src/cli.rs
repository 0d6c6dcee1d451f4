//! Command-line grammar (clap). Docker's verbs and flags where Docker has them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sdnet_resolver::model::Upstream;

use crate::api::{DeclaredPort, Driver, PortSpec, RestartPolicy, ServiceNetworkReq};
use sdnet_resolver::model::EndpointMode;

pub const DEFAULT_SOCKET: &str = "/run/sdnet/sdnet.sock";

#[derive(Parser, Debug)]
#[command(
    name = "sdctl",
    version,
    about = "Embedded DNS, service discovery and network plumbing for sandboxes",
    after_help = "Start the daemon with `sdctl daemon` (as root), then use the other commands."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "SDNET_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
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
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Create a sandbox (network namespace), attach it, optionally run a command in it.
    Run(RunArgs),
    /// List sandboxes.
    Ps {
        #[command(flatten)]
        client: ClientOpts,
        /// Also sandboxes whose process exited.
        #[arg(short, long)]
        all: bool,
        #[command(flatten)]
        out: OutputOpts,
    },
    /// Show sandboxes as JSON.
    Inspect {
        #[command(flatten)]
        client: ClientOpts,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Run a command inside a sandbox (its network, hostname, resolv.conf and hosts).
    Exec {
        #[command(flatten)]
        client: ClientOpts,
        name: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Remove sandboxes.
    Rm {
        #[command(flatten)]
        client: ClientOpts,
        /// Kill a running process first.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print a sandbox's process output.
    Logs {
        #[command(flatten)]
        client: ClientOpts,
        /// Keep following the output until the process exits.
        #[arg(short, long)]
        follow: bool,
        name: String,
    },
    /// Swarm-style services: replicated tasks behind a VIP (or DNS round robin).
    #[command(alias = "service")]
    Services {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: ServicesCommand,
    },
    /// DNS tools.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Where the store lives.
    #[arg(long, default_value = "/var/lib/sdnet")]
    pub state_dir: PathBuf,
    /// Runtime files: namespace mounts, lock.
    #[arg(long, default_value = "/run/sdnet")]
    pub run_dir: PathBuf,
    /// API socket (mode 0600).
    #[arg(long, env = "SDNET_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Per-sandbox resolv.conf and hosts go to DIR/<sandbox>/ (`ip netns exec` reads them there).
    #[arg(long, default_value = "/etc/netns")]
    pub etc_netns_dir: PathBuf,
    /// Where to link each sandbox's namespace by name, for `ip netns exec NAME`.
    #[arg(long, default_value = "/run/netns")]
    pub netns_link_dir: PathBuf,
    /// Do not link namespaces by name (tests running many daemons at once).
    #[arg(long)]
    pub no_netns_links: bool,
    /// The host resolv.conf: default upstreams, search domains and options.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Log every DNS query (info level, target sdnet::query).
    #[arg(long)]
    pub log_queries: bool,
    /// Subnet of the default `bridge` network (default: first free of Docker's pools).
    #[arg(long)]
    pub default_bridge_subnet: Option<ipnet::IpNet>,
    /// Remove every kernel object of ours (namespaces, links, nft tables, files) and exit.
    #[arg(long)]
    pub cleanup: bool,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network.
    Create(NetworkCreateArgs),
    /// List networks.
    Ls {
        #[command(flatten)]
        out: OutputOpts,
    },
    /// Show networks as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (refused while sandboxes use them).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove all networks no sandbox uses.
    Prune {
        /// Do not ask (there is nothing to ask: kept for Docker compatibility).
        #[arg(short, long)]
        force: bool,
    },
    /// Attach a running sandbox to a network.
    Connect {
        #[arg(long = "alias")]
        aliases: Vec<String>,
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        #[arg(long)]
        ip6: Option<Ipv6Addr>,
        network: String,
        sandbox: String,
    },
    /// Detach a sandbox from a network.
    Disconnect {
        #[arg(short, long)]
        force: bool,
        network: String,
        sandbox: String,
    },
}

#[derive(Args, Debug)]
pub struct NetworkCreateArgs {
    #[arg(short, long, default_value = "bridge")]
    pub driver: Driver,
    /// Subnet in CIDR form (repeat for several, IPv4 and IPv6).
    #[arg(long)]
    pub subnet: Vec<ipnet::IpNet>,
    /// Allocate sandbox addresses from this sub-range (matched to --subnet in order).
    #[arg(long)]
    pub ip_range: Vec<ipnet::IpNet>,
    /// Gateway (matched to --subnet in order).
    #[arg(long)]
    pub gateway: Vec<IpAddr>,
    /// Reserve an address: NAME=IP.
    #[arg(long = "aux-address")]
    pub aux_address: Vec<String>,
    /// No egress and no access from outside the network.
    #[arg(long)]
    pub internal: bool,
    /// Accepted for Docker compatibility (every local network is attachable).
    #[arg(long)]
    pub attachable: bool,
    /// Also an IPv6 subnet (a ULA /64 unless --subnet gives one).
    #[arg(long)]
    pub ipv6: bool,
    /// Turn the embedded DNS off for this network.
    #[arg(long)]
    pub no_dns: bool,
    /// Upstream DNS servers for sandboxes on this network (IP or IP:PORT).
    #[arg(long = "dns")]
    pub dns_servers: Vec<Upstream>,
    /// TTL of sandbox records on this network (default 0).
    #[arg(long)]
    pub dns_ttl: Option<u32>,
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Driver options KEY=VALUE (com.docker.network.driver.mtu is understood).
    #[arg(short = 'o', long = "opt")]
    pub opts: Vec<String>,
    #[arg(long = "label")]
    pub labels: Vec<String>,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    /// Return at once instead of waiting for the command to exit.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the sandbox when its command exits.
    #[arg(long)]
    pub rm: bool,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// Network to attach to, in order (default: bridge). `host` and `none` stand alone.
    #[arg(long = "network", visible_alias = "net")]
    pub networks: Vec<String>,
    /// Extra DNS name on the first network.
    #[arg(long = "network-alias", visible_alias = "net-alias")]
    pub aliases: Vec<String>,
    /// IPv4 address on the first network.
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// IPv6 address on the first network.
    #[arg(long)]
    pub ip6: Option<Ipv6Addr>,
    /// Publish a port: [HOSTIP:]HOSTPORT:PORT[/tcp|udp].
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<PortSpec>,
    /// Upstream DNS server for this sandbox's unknown names.
    #[arg(long)]
    pub dns: Vec<Upstream>,
    /// Adopt an existing network namespace instead of creating one.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Environment for the command: KEY=VALUE.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Command to run and supervise inside the sandbox.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum DnsCommand {
    /// Serve names from a JSON state file on a plain address (no daemon, no namespaces).
    Serve(DnsServeArgs),
    /// Ask the daemon's resolver what it answers for a sandbox (dig-like output).
    Query {
        #[command(flatten)]
        client: ClientOpts,
        /// The sandbox asking (default: no sandbox, only forwarding).
        #[arg(long)]
        from: Option<String>,
        /// Ask as over TCP (no 512-byte truncation).
        #[arg(long)]
        tcp: bool,
        name: String,
        #[arg(default_value = "A")]
        qtype: String,
    },
}

#[derive(Args, Debug)]
pub struct DnsServeArgs {
    /// JSON state file (networks, sandboxes, services); reloaded on SIGHUP.
    #[arg(long)]
    pub state: PathBuf,
    /// Address to serve on, UDP and TCP (e.g. 127.0.0.1:5353).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Upstream server for unknown names (IP or IP:PORT; repeat for failover order).
    /// Default: the nameservers of --resolv-conf.
    #[arg(long = "upstream")]
    pub upstreams: Vec<Upstream>,
    /// resolv.conf to take default upstreams from (followed as it changes).
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Answer every query as this sandbox (name or ID). Default: the sandbox whose endpoint
    /// address is the query's source address; other sources see no local names.
    #[arg(long = "as")]
    pub as_sandbox: Option<String>,
    /// Log every query (info level, target sdnet::query).
    #[arg(long)]
    pub log_queries: bool,
    /// Total time budget for forwarding one query, all upstreams included.
    #[arg(long, default_value = "2s", value_parser = crate::duration::parse)]
    pub forward_budget: Duration,
    /// Upstream exchanges in flight per sandbox before REFUSED.
    #[arg(long, default_value_t = 512)]
    pub max_inflight: u32,
    /// Entries in the cache of upstream answers (0 disables it).
    #[arg(long, default_value_t = 10_000)]
    pub cache_size: usize,
    /// Runtime worker threads (default: one per CPU the process may use).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum ServicesCommand {
    /// Create a service and start its tasks.
    Create(ServiceCreateArgs),
    /// List services.
    Ls {
        #[command(flatten)]
        out: OutputOpts,
    },
    /// Show services as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List a service's tasks.
    Ps {
        name: String,
        #[command(flatten)]
        out: OutputOpts,
    },
    /// Set the number of tasks: SERVICE=N…
    Scale {
        #[arg(required = true)]
        specs: Vec<String>,
        /// Return at once instead of waiting for the tasks.
        #[arg(short, long)]
        detach: bool,
    },
    /// Change a service (a new command or env rolls tasks over one at a time).
    Update(ServiceUpdateArgs),
    /// Remove services and their tasks.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Health check, run with /bin/sh -c inside each task; exit 0 = healthy.
    #[arg(long)]
    pub health_cmd: Option<String>,
    #[arg(long, value_parser = crate::duration::parse)]
    pub health_interval: Option<Duration>,
    /// Per check (default: the interval).
    #[arg(long, value_parser = crate::duration::parse)]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures before a task is unhealthy.
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// Failures in this first period after start do not count.
    #[arg(long, value_parser = crate::duration::parse)]
    pub health_start_period: Option<Duration>,
    /// Remove the health check.
    #[arg(long)]
    pub no_healthcheck: bool,
}

#[derive(Args, Debug)]
pub struct ServiceCreateArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// NET[,alias=A]… (repeat for several networks).
    #[arg(long = "network", required = true)]
    pub networks: Vec<ServiceNetworkReq>,
    #[arg(long, value_enum, default_value = "vip")]
    pub endpoint_mode: ModeArg,
    /// Declared port for SRV: NAME:PORT[/tcp|udp].
    #[arg(long = "port")]
    pub ports: Vec<DeclaredPort>,
    /// Publish a port on the host: [HOSTIP:]HOSTPORT:PORT[/tcp|udp].
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<PortSpec>,
    #[command(flatten)]
    pub health: HealthArgs,
    /// When a task exits: any (replace it), on-failure, none.
    #[arg(long, default_value = "any")]
    pub restart: RestartPolicy,
    /// How long a stopping task stays out of DNS and the LB before it is stopped.
    #[arg(long, default_value = "2s", value_parser = crate::duration::parse)]
    pub drain: Duration,
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Return at once instead of waiting for the tasks.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ServiceUpdateArgs {
    pub name: String,
    #[arg(long)]
    pub replicas: Option<u32>,
    #[command(flatten)]
    pub health: HealthArgs,
    #[arg(long)]
    pub restart: Option<RestartPolicy>,
    #[arg(long, value_parser = crate::duration::parse)]
    pub drain: Option<Duration>,
    /// Replace the environment (rolls tasks over).
    #[arg(short, long)]
    pub env: Vec<String>,
    #[arg(short, long)]
    pub detach: bool,
    /// New command (rolls tasks over).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    Vip,
    Dnsrr,
}

impl From<ModeArg> for EndpointMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Vip => EndpointMode::Vip,
            ModeArg::Dnsrr => EndpointMode::Dnsrr,
        }
    }
}
