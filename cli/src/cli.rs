//! Command-line grammar (clap). Docker's verbs and flags where Docker has them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sdnet_resolver::model::Upstream;

#[derive(Parser, Debug)]
#[command(
    name = "sdctl",
    version,
    about = "Embedded DNS, service discovery and network plumbing for sandboxes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// DNS tools: serve a state file standalone.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DnsCommand {
    /// Serve names from a JSON state file on a plain address (no daemon, no namespaces).
    Serve(DnsServeArgs),
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
