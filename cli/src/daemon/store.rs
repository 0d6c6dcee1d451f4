//! The desired state on disk: an embedded redb database with one table per kind of record,
//! values as JSON. Every API change is one durable write transaction (fsync costs ~0.2 ms
//! here), so a `kill -9` at any point leaves either the old or the new state, never half.
//! IPAM allocations are not stored: they are derived from the sandboxes' endpoints on load.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{DeclaredPort, Driver, HealthSpec, PortSpec, RestartPolicy};
use sdnet_resolver::model::EndpointMode;
use sdnet_resolver::model::Upstream;

const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("store record {key}: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("store: {0}")]
    Encode(#[from] serde_json::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A subnet as configured (allocations live in the sandboxes' endpoints).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SubnetRec {
    pub subnet: ipnet::IpNet,
    pub ip_range: Option<ipnet::IpNet>,
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub aux: BTreeMap<String, IpAddr>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NetworkRec {
    pub id: String,
    pub name: String,
    pub driver: Driver,
    pub created: u64,
    pub subnets: Vec<SubnetRec>,
    pub internal: bool,
    pub attachable: bool,
    pub dns: bool,
    pub mtu: Option<u32>,
    #[serde(default)]
    pub dns_servers: Vec<Upstream>,
    pub ttl: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Bridge device in the daemon's namespace (bridge driver).
    pub bridge: Option<String>,
    /// One of the networks every daemon has (bridge, host, none): cannot be removed.
    #[serde(default)]
    pub predefined: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EndpointRec {
    pub network: String,
    /// Interface name inside the sandbox (`ethN`).
    pub ifname: String,
    /// Host side of the veth pair.
    pub host_if: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcRec {
    pub pid: u32,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22): tells our process from
    /// a later one that reused the PID.
    pub start_time: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// Its own namespace with endpoints on bridge networks (or none).
    #[default]
    Own,
    /// Shares the daemon's namespace (`--network host`).
    Host,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SandboxRec {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub created: u64,
    #[serde(default)]
    pub mode: NetMode,
    /// Our bind mount of the sandbox's namespace.
    pub netns: PathBuf,
    /// The namespace came from elsewhere (`--netns`): we never delete it.
    pub adopted: bool,
    /// Where an adopted namespace came from.
    #[serde(default)]
    pub adopted_from: Option<PathBuf>,
    pub endpoints: Vec<EndpointRec>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub dns: Vec<Upstream>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub auto_remove: bool,
    pub process: Option<ProcRec>,
    pub exited: bool,
    pub exit_code: Option<i32>,
    /// When its process last started and exited (unix seconds; the API shows RFC 3339).
    #[serde(default)]
    pub started_at: Option<u64>,
    #[serde(default)]
    pub finished_at: Option<u64>,
    /// Set when this sandbox is a task of a service.
    #[serde(default)]
    pub task: Option<TaskRec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskRec {
    pub service: String,
    pub slot: u32,
    /// Passed its health check at least once since it last failed it (true at once without
    /// a health check). Only healthy, non-draining, running tasks are in DNS and the LB.
    pub healthy: bool,
    /// Failed its check `retries` times in a row.
    #[serde(default)]
    pub unhealthy: bool,
    /// Being stopped: out of DNS and the LB, waiting for the drain delay.
    #[serde(default)]
    pub draining: bool,
    /// The service version the task runs (a newer one rolls it over).
    #[serde(default)]
    pub version: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceNetRec {
    pub network: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub vip: Option<Ipv4Addr>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceRec {
    pub id: String,
    pub name: String,
    pub created: u64,
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub replicas: u32,
    pub mode: EndpointMode,
    pub networks: Vec<ServiceNetRec>,
    #[serde(default)]
    pub ports: Vec<DeclaredPort>,
    #[serde(default)]
    pub publish: Vec<PortSpec>,
    pub health: Option<HealthSpec>,
    #[serde(default)]
    pub restart: RestartPolicy,
    pub drain_ms: u64,
    /// Bumped by updates that need new tasks.
    #[serde(default)]
    pub version: u64,
}

pub enum Op<'a> {
    PutNetwork(&'a NetworkRec),
    DelNetwork(&'a str),
    PutSandbox(&'a SandboxRec),
    DelSandbox(&'a str),
    PutService(&'a ServiceRec),
    DelService(&'a str),
}

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        // Make sure both tables exist, so reads never fail on a fresh file.
        let tx = db.begin_write()?;
        tx.open_table(NETWORKS)?;
        tx.open_table(SANDBOXES)?;
        tx.open_table(SERVICES)?;
        tx.commit()?;
        Ok(Store { db })
    }

    pub fn load(&self) -> Result<(Vec<NetworkRec>, Vec<SandboxRec>), StoreError> {
        let tx = self.db.begin_read()?;
        Ok((read_all(&tx, NETWORKS)?, read_all(&tx, SANDBOXES)?))
    }

    pub fn load_services(&self) -> Result<Vec<ServiceRec>, StoreError> {
        let tx = self.db.begin_read()?;
        read_all(&tx, SERVICES)
    }

    /// Applies all ops in one durable transaction.
    pub fn commit(&self, ops: &[Op<'_>]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut nets = tx.open_table(NETWORKS)?;
            let mut sbs = tx.open_table(SANDBOXES)?;
            let mut svcs = tx.open_table(SERVICES)?;
            for op in ops {
                match op {
                    Op::PutNetwork(n) => {
                        nets.insert(n.id.as_str(), serde_json::to_vec(n)?.as_slice())?;
                    }
                    Op::DelNetwork(id) => {
                        nets.remove(*id)?;
                    }
                    Op::PutSandbox(s) => {
                        sbs.insert(s.id.as_str(), serde_json::to_vec(s)?.as_slice())?;
                    }
                    Op::DelSandbox(id) => {
                        sbs.remove(*id)?;
                    }
                    Op::PutService(s) => {
                        svcs.insert(s.id.as_str(), serde_json::to_vec(s)?.as_slice())?;
                    }
                    Op::DelService(id) => {
                        svcs.remove(*id)?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn read_all<T: DeserializeOwned>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
) -> Result<Vec<T>, StoreError> {
    let table = tx.open_table(def)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let rec = serde_json::from_slice(v.value()).map_err(|source| StoreError::Decode {
            key: k.value().to_string(),
            source,
        })?;
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_delete() {
        let dir = std::env::temp_dir().join(format!("sdnet-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.redb");
        let net = NetworkRec {
            id: "n1".into(),
            name: "net1".into(),
            driver: Driver::Bridge,
            created: 1,
            subnets: vec![SubnetRec {
                subnet: "10.9.0.0/24".parse().unwrap(),
                ip_range: None,
                gateway: Some("10.9.0.1".parse().unwrap()),
                aux: BTreeMap::new(),
            }],
            internal: false,
            attachable: false,
            dns: true,
            mtu: None,
            dns_servers: vec![],
            ttl: None,
            labels: BTreeMap::new(),
            bridge: Some("sd-n1".into()),
            predefined: false,
        };
        {
            let s = Store::open(&path).unwrap();
            s.commit(&[Op::PutNetwork(&net)]).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let (nets, sbs) = s.load().unwrap();
        assert_eq!(nets, vec![net]);
        assert!(sbs.is_empty());
        s.commit(&[Op::DelNetwork("n1")]).unwrap();
        assert!(s.load().unwrap().0.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
