//! The CNI driver (`-d cni`): a sandbox joins the network by running the network's CNI
//! plugins (spec 1.0.0) — ADD through the configuration list in order, each plugin given the
//! previous one's result; DEL in reverse order with the cached ADD result — from the
//! plugin directory (`--cni-bin-dir`). The plugins make every kernel object (a bridge, veths,
//! macvlans, iptables rules of portmap) and pick the addresses (their IPAM); sdnet makes
//! none and keeps no IPAM for the network.
//!
//! The addresses the plugins chose are read from the ADD result (`ips` on the container's
//! interface) and written back into the endpoint's record by the reconciler, like an
//! address IPAM picked: DNS, `inspect`, hosts files and other readers then see them, and a
//! restarted daemon does not run ADD again (the cached result says it was done). The
//! result's `dns` field is not used: the embedded resolver is the sandbox's DNS.
//!
//! A failed ADD is undone before the error is returned: DEL runs for the whole list (the
//! spec's way to release what the plugins that succeeded took).
//!
//! CHECK (`check.rs`) runs on the reconciler's full passes; an endpoint it finds broken
//! (`health.rs`) is repaired by its next `attach`: DEL, then ADD, asking for the addresses
//! it had when a plugin takes the `ips` capability (host-local, static), else taking what
//! the plugins give.

pub mod cache;
pub mod check;
pub mod exec;
pub mod health;
pub mod spec;

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use sdnet_netstack::netns::{Netns, is_netns};
use serde_json::Value;
use tracing::{info, warn};

use self::cache::Cached;
use self::exec::{Command, ExecError, Invocation};
use self::health::Health;
use self::spec::{AddResult, Assigned, ConfList, PortMapping, RuntimeConfig};
use super::{Links, NetworkDriver, SandboxNs};
use crate::daemon::store::schema::{CNI_CONFIG_OPTION, EndpointRec, NetworkRec, PublishRec};

impl Cached {
    /// What every plugin run for this endpoint is told: its IDs, interface and plugin
    /// directory, and `netns` (the ADD's path; empty on a DEL whose namespace is gone).
    fn invocation<'a>(
        &'a self,
        command: Command,
        netns: &'a str,
        bin_dir: &'a Path,
    ) -> Invocation<'a> {
        Invocation {
            command,
            container_id: &self.sandbox,
            netns,
            ifname: &self.ifname,
            bin_dir,
        }
    }

    /// The capabilities' runtime values, the same for ADD, CHECK and DEL.
    fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            port_mappings: self.ports.clone(),
            ips: self.ips.clone(),
        }
    }
}

pub struct CniDriver {
    /// Where plugin binaries are (`--cni-bin-dir`).
    pub bin_dir: PathBuf,
    /// The result cache (`<state-dir>/cni`).
    pub cache_dir: PathBuf,
    /// What CHECK found per endpoint.
    pub health: Health,
}

fn conf_of(net: &NetworkRec) -> Result<ConfList> {
    let text = net
        .options
        .get(CNI_CONFIG_OPTION)
        .ok_or_else(|| anyhow!("CNI network {} has no configuration", net.name))?;
    Ok(ConfList::parse(text)?)
}

/// A sandbox's published ports as the `portMappings` capability.
pub fn port_mappings(ports: &[PublishRec]) -> Vec<PortMapping> {
    ports
        .iter()
        .map(|p| PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: p.protocol.to_string(),
            host_ip: p.host_ip.map(|ip| ip.to_string()),
        })
        .collect()
}

/// A path a plugin can open for a namespace we hold, whether or not it is mounted anywhere.
fn fd_path(ns: &Netns) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), ns.as_raw_fd())
}

/// Unsolicited ARP for each IPv4 address of `ifname` in the sandbox (failures are only
/// logged: the neighbours' caches time out anyway).
async fn announce(ns: &Netns, ifname: &str, addresses: &[ipnet::IpNet]) {
    let v4: Vec<Ipv4Addr> = addresses
        .iter()
        .filter_map(|a| match a.addr() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    if v4.is_empty() {
        return;
    }
    let ns = match ns.try_clone() {
        Ok(ns) => ns,
        Err(e) => {
            warn!("announcing a repaired endpoint: {e}");
            return;
        }
    };
    let ifname = ifname.to_string();
    let sent = tokio::task::spawn_blocking(move || {
        for ip in v4 {
            sdnet_netstack::link::send_gratuitous_arp(&ns, &ifname, ip)?;
        }
        Ok::<_, sdnet_netstack::Error>(())
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("announcing a repaired endpoint: {e}"),
        Err(e) => warn!("announcing a repaired endpoint: {e}"),
    }
}

impl CniDriver {
    /// Checks a configuration for `network create`: it parses, and every plugin it names
    /// (IPAM plugins too) is in the plugin directory. Returns the list to store.
    pub fn check(&self, text: &str) -> Result<ConfList, String> {
        let list = ConfList::parse(text).map_err(|e| e.to_string())?;
        for t in list.binaries().map_err(|e| e.to_string())? {
            if !self.bin_dir.join(&t).is_file() {
                return Err(format!(
                    "unknown CNI plugin type {t:?}: no such plugin in {} (--cni-bin-dir)",
                    self.bin_dir.display()
                ));
            }
        }
        Ok(list)
    }

    fn cache_path(&self, net: &str, sandbox: &str) -> PathBuf {
        cache::path(&self.cache_dir, net, sandbox)
    }

    /// What the plugins assigned to a sandbox's endpoint, from the cached ADD result.
    pub async fn assigned(&self, net: &str, sandbox: &str) -> Result<Option<Assigned>> {
        let Some(c) = cache::load(&self.cache_path(net, sandbox)).await? else {
            return Ok(None);
        };
        let Some(r) = c.result else { return Ok(None) };
        let r: AddResult = serde_json::from_value(r).context("the cached CNI result")?;
        Ok(Some(r.assigned(&c.ifname)))
    }

    /// ADD through the list; the final result. On a failure, what succeeded is undone (DEL
    /// of the whole list) and the first error returned.
    async fn add(&self, c: &Cached, list: &ConfList) -> Result<Value> {
        let inv = c.invocation(Command::Add, &c.netns, &self.bin_dir);
        let rc = c.runtime_config();
        let mut prev: Option<Value> = None;
        let mut took = Duration::ZERO;
        for i in 0..list.plugins.len() {
            let stdin = list.plugin_stdin(i, prev.as_ref(), &rc);
            match exec::run(list.plugin_type(i), &inv, stdin).await {
                Ok((r, t)) => {
                    took += t;
                    prev = r;
                }
                Err(e) => {
                    if let Err(d) = self.del(c, list, prev.as_ref(), &c.netns).await {
                        warn!(network = %list.name, sandbox = %c.sandbox, "undoing a failed CNI ADD: {d:#}");
                    }
                    return Err(e.into());
                }
            }
        }
        info!(
            network = %list.name,
            sandbox = %c.sandbox,
            ifname = %c.ifname,
            cni_exec_ms = took.as_secs_f64() * 1000.0,
            "CNI ADD"
        );
        prev.ok_or_else(|| {
            anyhow!(
                "CNI ADD of network {}: the plugins returned no result",
                list.name
            )
        })
    }

    /// DEL through the list in reverse order, every plugin tried; the first error.
    async fn del(
        &self,
        c: &Cached,
        list: &ConfList,
        prev: Option<&Value>,
        netns: &str,
    ) -> Result<(), ExecError> {
        let inv = c.invocation(Command::Del, netns, &self.bin_dir);
        let rc = c.runtime_config();
        let mut first = None;
        for i in (0..list.plugins.len()).rev() {
            let stdin = list.plugin_stdin(i, prev, &rc);
            if let Err(e) = exec::run(list.plugin_type(i), &inv, stdin).await {
                warn!(network = %list.name, sandbox = %c.sandbox, "{e}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// DEL of one cached record, then the record removed. `netns`: the namespace when we
    /// hold it; else the recorded path if it still is one, else none (the plugins release
    /// what lives outside the namespace).
    async fn del_cached(&self, p: &Path, c: &Cached, netns: Option<&Netns>) -> Result<()> {
        let list = ConfList::parse(&c.config)?;
        let ns = match netns {
            Some(ns) => fd_path(ns),
            None if is_netns(Path::new(&c.netns)) => c.netns.clone(),
            None => String::new(),
        };
        self.del(c, &list, c.result.as_ref(), &ns)
            .await
            .with_context(|| format!("CNI DEL of network {}", list.name))?;
        cache::remove(p).await?;
        Ok(())
    }

    /// ADD with its record written before (without a result) and after (with it); on a
    /// failure, nothing is left (the plugins' part undone, the record removed).
    async fn add_recorded(&self, p: &Path, c: &mut Cached, list: &ConfList) -> Result<()> {
        self.health.changed(&c.network, &c.sandbox);
        c.result = None;
        cache::store(p, c)
            .await
            .context("writing the CNI cache record")?;
        match self.add(c, list).await {
            Ok(r) => {
                c.result = Some(r);
                if let Err(e) = cache::store(p, c).await {
                    let _ = self.del(c, list, c.result.as_ref(), &c.netns).await;
                    let _ = cache::remove(p).await;
                    return Err(e).context("writing the CNI cache record");
                }
                self.health.added(&c.network, &c.sandbox);
                Ok(())
            }
            Err(e) => {
                let _ = cache::remove(p).await;
                Err(e)
            }
        }
    }

    /// Endpoints whose records remain though nobody wants them (removed while no daemon
    /// ran, or a DEL that failed): DEL and forget them.
    pub async fn collect(&self, wanted: &(dyn Fn(&str, &str) -> bool + Sync)) {
        for (p, c) in cache::list(&self.cache_dir).await {
            if wanted(&c.network, &c.sandbox) {
                continue;
            }
            info!(network = %c.network, sandbox = %c.sandbox, "CNI DEL of an endpoint nobody wants");
            self.health.changed(&c.network, &c.sandbox);
            if let Err(e) = self.del_cached(&p, &c, None).await {
                warn!("{e:#}");
            }
            self.health.forget(&c.network, &c.sandbox);
        }
    }
}

#[async_trait]
impl NetworkDriver for CniDriver {
    /// The plugins make what a network needs on the first ADD; nothing to do before.
    async fn ensure_network(&self, net: &NetworkRec) -> Result<()> {
        conf_of(net).map(|_| ())
    }

    /// CNI has no network-wide teardown: what is left of the network is what its endpoints'
    /// DELs did not remove (a bridge the bridge plugin made stays, as with every CNI
    /// runtime). Records of endpoints still cached are DELed here.
    async fn remove_network(&self, net: &NetworkRec) -> Result<()> {
        self.collect(&|n, _| n != net.id).await;
        Ok(())
    }

    async fn attach(
        &self,
        net: &NetworkRec,
        ep: &EndpointRec,
        sb: SandboxNs<'_>,
        _default_route: bool,
    ) -> Result<()> {
        let p = self.cache_path(&net.id, &ep.sandbox);
        let ifname = format!("eth{}", ep.index);
        let broken = self.health.broken(&net.id, &ep.sandbox);
        if let Some(c) = cache::load(&p).await? {
            if c.result.is_some() && c.ifname == ifname && broken.is_none() {
                // Added already (the plugins' routes and addresses are theirs to keep).
                return Ok(());
            }
            if let Some(why) = &broken {
                info!(network = %net.name, sandbox = %ep.sandbox, "repairing a broken CNI endpoint (DEL, then ADD): {why}");
            }
            // Broken, an ADD that never finished (a crash) or another interface: undo it.
            self.health.changed(&net.id, &ep.sandbox);
            if let Err(e) = self.del_cached(&p, &c, Some(sb.ns)).await {
                if broken.is_some() {
                    self.health
                        .repair_failed(&net.id, &ep.sandbox, format!("{e:#}"));
                }
                return Err(e);
            }
        }
        let list = conf_of(net)?;
        // A repair asks for the addresses the endpoint had, where a plugin can take them.
        let keep = match broken {
            Some(_) if list.declares("ips") => self.health.keep(&net.id, &ep.sandbox),
            _ => Vec::new(),
        };
        let mut c = Cached {
            network: net.id.clone(),
            sandbox: ep.sandbox.clone(),
            ifname,
            netns: sb.ns.path().to_string_lossy().into_owned(),
            config: list.to_json(),
            ports: port_mappings(sb.ports),
            ips: keep.clone(),
            check_fails: None,
            result: None,
        };
        let mut r = self.add_recorded(&p, &mut c, &list).await;
        if let Err(e) = &r
            && !keep.is_empty()
        {
            warn!(network = %net.name, sandbox = %ep.sandbox, "the endpoint's addresses {keep:?} cannot be had again ({e:#}): taking new ones");
            c.ips.clear();
            r = self.add_recorded(&p, &mut c, &list).await;
        }
        if broken.is_some() {
            match &r {
                Ok(()) => {
                    self.health.repaired(&net.id, &ep.sandbox);
                    let now = c
                        .result
                        .clone()
                        .and_then(|v| serde_json::from_value::<AddResult>(v).ok())
                        .map(|a| a.addresses(&c.ifname))
                        .unwrap_or_default();
                    info!(network = %net.name, sandbox = %ep.sandbox, addresses = ?now, "CNI endpoint repaired");
                    // The interface is new (a new MAC), its address maybe not: neighbours
                    // that cached the old MAC learn the new one now, not in 30 s.
                    announce(sb.ns, &c.ifname, &now).await;
                }
                Err(e) => {
                    self.health
                        .repair_failed(&net.id, &ep.sandbox, format!("{e:#}"));
                }
            }
        }
        r
    }

    async fn detach(
        &self,
        net: &NetworkRec,
        ep: &EndpointRec,
        sandbox: Option<&Netns>,
    ) -> Result<()> {
        let p = self.cache_path(&net.id, &ep.sandbox);
        // A CHECK under way judges an endpoint on its way out: dropped.
        self.health.changed(&net.id, &ep.sandbox);
        let r = match cache::load(&p).await {
            Ok(Some(c)) => self.del_cached(&p, &c, sandbox).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        };
        self.health.forget(&net.id, &ep.sandbox);
        r
    }

    fn network_intact(&self, _: &NetworkRec, _: &Links) -> bool {
        true
    }

    /// The plugins' objects are theirs: the cheap check is that the record of the ADD is
    /// there; CHECK (an exec per plugin) runs beside the reconciler on full passes, and
    /// what it finds broken is [`NetworkDriver::needs_repair`].
    fn endpoint_intact(&self, net: &NetworkRec, ep: &EndpointRec, _: &Links) -> bool {
        self.cache_path(&net.id, &ep.sandbox).is_file()
    }

    fn needs_repair(&self, net: &NetworkRec, ep: &EndpointRec) -> bool {
        self.health.broken(&net.id, &ep.sandbox).is_some()
    }
}

/// `sdctl daemon --cleanup`: DEL of every cached endpoint.
pub async fn cleanup(cache_dir: &Path, bin_dir: &Path) {
    let d = CniDriver {
        bin_dir: bin_dir.to_path_buf(),
        cache_dir: cache_dir.to_path_buf(),
        health: Health::default(),
    };
    d.collect(&|_, _| false).await;
}
