//! The client commands on objects: `node`, `network`, `run`, `services`.

use super::*;

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List the cluster's nodes.
    Ls {
        #[command(flatten)]
        out: OutputOpts,
    },
    /// Show nodes as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove a node that is down, with everything it held in the cluster store.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
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
    /// Remove all networks no sandbox uses (asks first; -f does not).
    Prune {
        /// Do not ask for confirmation.
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
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub subnet: Vec<ipnet::IpNet>,
    /// Allocate sandbox addresses from this sub-range (matched to --subnet in order).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
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
    /// Accepted for Docker compatibility: sandboxes can join every bridge network at any
    /// time (`network connect`), so inspect shows them all as attachable.
    #[arg(long)]
    pub attachable: bool,
    /// Also an IPv6 subnet (a ULA /64 unless --subnet gives one).
    #[arg(long)]
    pub ipv6: bool,
    /// Turn the embedded DNS off for this network.
    #[arg(long)]
    pub no_dns: bool,
    /// Serve this network's names in the host zone (`sdctl daemon --host-dns`); internal
    /// networks never are.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub host_dns: bool,
    /// Upstream DNS servers for sandboxes on this network (IP or IP:PORT).
    #[arg(long = "dns")]
    pub dns_servers: Vec<Upstream>,
    /// TTL of sandbox records on this network (default 0).
    #[arg(long)]
    pub dns_ttl: Option<u32>,
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Driver options KEY=VALUE: com.docker.network.driver.mtu; bridge:
    /// com.docker.network.bridge.name; macvlan: parent, macvlan_mode.
    #[arg(short = 'o', long = "opt")]
    pub opts: Vec<String>,
    /// `-d cni`: the CNI network configuration (a .conflist or a .conf), stored whole.
    #[arg(long, value_name = "FILE", conflicts_with = "cni_conf_dir")]
    pub cni_conf: Option<PathBuf>,
    /// `-d cni`: the directory holding the CNI configuration whose `name` is NAME
    /// (.conflist, .conf or .json files).
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    #[arg(long = "label")]
    pub labels: Vec<String>,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Return at once instead of waiting for the command to exit.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the sandbox when its command exits.
    #[arg(long)]
    pub rm: bool,
    /// When its command exits: no, on-failure[:N], always, unless-stopped.
    #[arg(long, default_value = "no", value_name = "POLICY")]
    pub restart: crate::api::SandboxRestartSpec,
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
    /// Legacy link to another sandbox: NAME[:ALIAS]. On the default bridge: hosts-file lines
    /// and Docker's link variables; on a user-defined network: ALIAS resolves for this
    /// sandbox only.
    #[arg(long = "link", value_name = "NAME[:ALIAS]")]
    pub links: Vec<LinkSpec>,
    /// Port announced to sandboxes that link to this one: PORT[-END][/tcp|udp].
    #[arg(long, value_name = "PORT[/PROTO]")]
    pub expose: Vec<ExposedPort>,
    /// Command to run and supervise inside the sandbox; starts at `--` or at the first word
    /// that is not a flag (an unknown flag before it is an error, not the command).
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
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
    /// replicated (`--replicas` tasks) or global (one task per node).
    #[arg(long, value_enum, default_value = "replicated")]
    pub mode: ServiceModeArg,
    /// Where tasks may run: node.name==N, node.name!=N (also node.id, node.addr); repeatable.
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
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
    /// The tasks' command; starts at `--` or at the first word that is not a flag.
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
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
    /// New command (rolls tasks over); starts at `--` or at the first word that is not a flag.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceModeArg {
    Replicated,
    Global,
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
