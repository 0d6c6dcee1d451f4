//! The daemon's side of the command line: `sdctl daemon`, `sdctl aardvark-dns` (argv[0]
//! `aardvark-dns` too) and `sdctl dns serve|query`.

use super::*;

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Where the store lives.
    #[arg(long, default_value = "/var/lib/sdnet")]
    pub state_dir: PathBuf,
    /// Runtime files: namespace mounts, lock.
    #[arg(long, default_value = "/run/sdnet")]
    pub run_dir: PathBuf,
    /// API socket (mode 0600): the global `--socket`, else `<run-dir>/sdnet.sock` (set by
    /// `resolve_socket`; `SDNET_SOCKET` is the clients' and never moves the daemon's socket).
    #[arg(skip)]
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
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub default_bridge_subnet: Option<ipnet::IpNet>,
    /// Where CNI plugin binaries are (`network create -d cni`).
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
    /// Join a cluster whose store is this etcd: etcd://HOST:PORT[,HOST:PORT…]. Overlay
    /// networks, their addresses and the cluster's nodes live there; everything else stays in
    /// this node's store.
    #[arg(long, value_name = "URL")]
    pub cluster_store: Option<String>,
    /// The address other nodes reach this one at (its VXLAN tunnel endpoint); needed with
    /// --cluster-store.
    #[arg(long, value_name = "IP")]
    pub advertise_addr: Option<std::net::IpAddr>,
    /// This node's name in the cluster (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The UDP port of VXLAN between the nodes.
    #[arg(long, default_value_t = 4789)]
    pub data_path_port: u16,
    /// How long a node may be silent before the others count it as down and drop its
    /// endpoints.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub node_ttl: Duration,
    /// How often the reconciler checks the kernel against the desired state and repairs
    /// drift (a deleted veth, bridge or nft table of ours comes back).
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    pub resync_interval: Duration,
    /// Serve the host zone (`<sandbox>.<network>.sdnet.`, services, `tasks.`, SRV, PTR, SOA/NS,
    /// AXFR) on ADDR[:PORT] (port 53 by default), e.g. 127.0.0.1:5353. Off by default.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = crate::daemon::hostdns::parse_addr)]
    pub host_dns: Option<std::net::SocketAddr>,
    /// The host zone's name.
    #[arg(long, value_name = "DOMAIN", default_value = "sdnet.")]
    pub host_dns_domain: String,
    /// Send NOTIFY to this secondary when the zone changes (IP[:PORT]; repeatable).
    #[arg(long, value_name = "IP[:PORT]", value_parser = crate::daemon::hostdns::parse_addr)]
    pub host_dns_notify: Vec<std::net::SocketAddr>,
    /// Sources allowed to transfer the zone (AXFR); others are REFUSED (default: loopback).
    #[arg(long, value_name = "CIDR", num_args = 1.., value_parser = parse_cidr)]
    pub host_dns_allow_transfer: Vec<ipnet::IpNet>,
    /// Remove every kernel object of ours (namespaces, links, nft tables, files) and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Serve Prometheus metrics (OpenMetrics text) on http://ADDR/metrics, e.g. 127.0.0.1:9153.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
pub struct AardvarkArgs {
    /// Directory of network files (netavark's `aardvark-dns` directory).
    #[arg(short, long, value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// Port to serve on, UDP and TCP, on every listen address.
    #[arg(short, long, default_value_t = 5533)]
    pub port: u16,
    /// Search domain stripped from queries; names under it are never forwarded.
    #[arg(short, long, default_value = ".dns.podman", value_name = "DOMAIN")]
    pub filter_search_domain: String,
    #[command(subcommand)]
    pub command: AardvarkCommand,
}

#[derive(Subcommand, Debug, Clone, Copy)]
pub enum AardvarkCommand {
    /// Start the server (forks; the parent exits once every listener is bound).
    Run,
    /// Print the version as JSON.
    Version,
}

/// The command line when sdctl is started as `aardvark-dns`.
#[derive(Parser, Debug)]
#[command(
    name = "aardvark-dns",
    version,
    about = "sdnet as Podman's aardvark-dns"
)]
pub struct AardvarkCli {
    #[command(flatten)]
    pub args: AardvarkArgs,
}

#[derive(Subcommand, Debug)]
pub enum DnsCommand {
    /// Serve names from a JSON state file on a plain address (no daemon, no namespaces).
    Serve(DnsServeArgs),
    /// Ask the daemon's resolver what it answers for a sandbox (dig-like output).
    Query {
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

impl DaemonArgs {
    /// The daemon's socket follows its run dir unless `--socket` names one.
    pub fn resolve_socket(&mut self, global: Option<&Path>) {
        self.socket = match global {
            Some(p) => p.to_path_buf(),
            None => self.run_dir.join("sdnet.sock"),
        };
    }
}
