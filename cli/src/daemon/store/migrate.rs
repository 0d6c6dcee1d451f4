//! Upgrading a store written by sdnet before the revisioned layout: three redb tables
//! (`networks`, `sandboxes`, `services`) of JSON records, endpoints and process state inside
//! the sandbox record. On the first start of this version they become `/sdnet/v1/` keys in
//! one transaction and the old tables are dropped, so nothing the user made is lost. Derived
//! names changed with the layout (veth names now come from a stable hash): the first
//! reconcile pass re-plumbs endpoints and collects the old links.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use sdnet_resolver::model::{EndpointMode, Protocol};
use serde::Deserialize;
use tracing::{info, warn};

use super::schema::{
    self, DeclaredPortRec, DriverKind, EndpointRec, HealthRec, NetMode, NetworkRec, PublishRec,
    Restart, SandboxRec, Scope, ServiceNetRec, ServiceRec, StatusRec, SubnetRec, TaskRef,
};
use super::{StoreError, Txn};

const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");

#[derive(Deserialize)]
struct OldNetwork {
    id: String,
    name: String,
    driver: DriverKind,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    subnets: Vec<SubnetRec>,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    attachable: bool,
    #[serde(default)]
    dns: bool,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    dns_servers: Vec<SocketAddr>,
    #[serde(default)]
    ttl: Option<u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    predefined: bool,
}

#[derive(Deserialize)]
struct OldEndpoint {
    network: String,
    #[serde(default)]
    ifname: String,
    #[serde(default)]
    ipv4: Option<Ipv4Addr>,
    #[serde(default)]
    ipv6: Option<Ipv6Addr>,
    mac: [u8; 6],
    #[serde(default)]
    aliases: Vec<String>,
}

#[derive(Deserialize, Clone, Copy)]
struct OldProc {
    pid: u32,
    start_time: u64,
}

#[derive(Deserialize)]
struct OldTask {
    service: String,
    slot: u32,
    #[serde(default)]
    healthy: bool,
    #[serde(default)]
    unhealthy: bool,
    #[serde(default)]
    draining: bool,
    #[serde(default)]
    version: u64,
}

#[derive(Deserialize)]
struct OldSandbox {
    id: String,
    name: String,
    hostname: String,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    mode: NetMode,
    #[serde(default)]
    adopted_from: Option<PathBuf>,
    #[serde(default)]
    endpoints: Vec<OldEndpoint>,
    #[serde(default)]
    ports: Vec<PublishRec>,
    #[serde(default)]
    dns: Vec<SocketAddr>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    auto_remove: bool,
    #[serde(default)]
    process: Option<OldProc>,
    #[serde(default)]
    exited: bool,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    task: Option<OldTask>,
}

#[derive(Deserialize)]
struct OldServiceNet {
    network: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    vip: Option<Ipv4Addr>,
}

#[derive(Deserialize)]
struct OldPort {
    name: String,
    port: u16,
    #[serde(default)]
    protocol: Protocol,
}

#[derive(Deserialize)]
struct OldService {
    id: String,
    name: String,
    #[serde(default)]
    created: u64,
    command: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    replicas: u32,
    mode: EndpointMode,
    networks: Vec<OldServiceNet>,
    #[serde(default)]
    ports: Vec<OldPort>,
    #[serde(default)]
    publish: Vec<PublishRec>,
    #[serde(default)]
    health: Option<HealthRec>,
    #[serde(default)]
    restart: Restart,
    #[serde(default)]
    drain_ms: u64,
    #[serde(default)]
    version: u64,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn read_all<T: serde::de::DeserializeOwned>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
) -> Result<Vec<T>, StoreError> {
    let table = match tx.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(backend(e)),
    };
    let mut out = Vec::new();
    for entry in table.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        match serde_json::from_slice(v.value()) {
            Ok(r) => out.push(r),
            Err(e) => warn!(key = k.value(), "old record not migrated: {e}"),
        }
    }
    Ok(out)
}

/// The old records as one transaction in the new layout, or None if there are none.
pub fn plan(db: &Database) -> Result<Option<Txn>, StoreError> {
    let tx = db.begin_read().map_err(backend)?;
    let names: Vec<String> = tx
        .list_tables()
        .map_err(backend)?
        .map(|t| t.name().to_string())
        .collect();
    if !names
        .iter()
        .any(|n| n == "networks" || n == "sandboxes" || n == "services")
    {
        return Ok(None);
    }
    let nets: Vec<OldNetwork> = read_all(&tx, NETWORKS)?;
    let sbs: Vec<OldSandbox> = read_all(&tx, SANDBOXES)?;
    let svcs: Vec<OldService> = read_all(&tx, SERVICES)?;
    let mut txn = Txn::new();
    for n in &nets {
        let rec = NetworkRec {
            id: n.id.clone(),
            name: n.name.clone(),
            driver: n.driver,
            scope: Scope::Local,
            created: n.created,
            subnets: n.subnets.clone(),
            internal: n.internal,
            attachable: n.attachable,
            dns: n.dns,
            mtu: n.mtu,
            dns_servers: n.dns_servers.clone(),
            ttl: n.ttl,
            labels: n.labels.clone(),
            options: BTreeMap::new(),
            predefined: n.predefined,
            vni: None,
            host_dns: true,
        };
        txn = txn
            .put(schema::network(&rec.id), schema::encode(&rec))
            .put(schema::network_name(&rec.name), rec.id.as_bytes().to_vec());
        for s in &rec.subnets {
            txn = txn.put(schema::subnet(&s.subnet), rec.id.as_bytes().to_vec());
        }
    }
    txn = txn.put(schema::NETWORKS_GUARD, b"migrated".to_vec());
    for s in &svcs {
        let rec = ServiceRec {
            id: s.id.clone(),
            name: s.name.clone(),
            created: s.created,
            command: s.command.clone(),
            env: s.env.clone(),
            replicas: s.replicas,
            mode: s.mode,
            networks: s
                .networks
                .iter()
                .map(|n| ServiceNetRec {
                    network: n.network.clone(),
                    aliases: n.aliases.clone(),
                    vip: n.vip,
                })
                .collect(),
            ports: s
                .ports
                .iter()
                .map(|p| DeclaredPortRec {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol,
                })
                .collect(),
            publish: s.publish.clone(),
            health: s.health.clone(),
            restart: s.restart,
            drain_ms: s.drain_ms,
            version: s.version.max(1),
            placement: Default::default(),
        };
        txn = txn
            .put(schema::service(&rec.id), schema::encode(&rec))
            .put(schema::service_name(&rec.name), rec.id.as_bytes().to_vec());
        for n in &rec.networks {
            txn = txn.put(schema::service_net(&n.network, &rec.id), Vec::new());
            if let Some(v) = n.vip {
                txn = txn.put(
                    schema::ipam(&n.network, IpAddr::V4(v)),
                    format!("vip:{}", rec.id).into_bytes(),
                );
            }
        }
    }
    for s in &sbs {
        let rec = SandboxRec {
            id: s.id.clone(),
            name: s.name.clone(),
            hostname: s.hostname.clone(),
            created: s.created,
            mode: s.mode,
            adopt: s.adopted_from.clone(),
            ports: s.ports.clone(),
            dns: s.dns.clone(),
            command: s.command.clone(),
            env: s.env.clone(),
            auto_remove: s.auto_remove,
            task: s.task.as_ref().map(|t| TaskRef {
                service: t.service.clone(),
                slot: t.slot,
                version: t.version,
                draining: t.draining,
            }),
            restart: Default::default(),
            restart_max: 0,
            stopped: false,
            stop_timeout_ms: schema::default_stop_ms(),
            runs: 0,
            paused: false,
            links: Vec::new(),
            expose: Vec::new(),
        };
        txn = txn
            .put(schema::sandbox(&rec.id), schema::encode(&rec))
            .put(schema::sandbox_name(&rec.name), rec.id.as_bytes().to_vec());
        for (i, e) in s.endpoints.iter().enumerate() {
            let index = e
                .ifname
                .strip_prefix("eth")
                .and_then(|n| n.parse().ok())
                .unwrap_or(i as u32);
            let ep = EndpointRec {
                network: e.network.clone(),
                sandbox: s.id.clone(),
                index,
                order: i as u64,
                ipv4: e.ipv4,
                ipv6: e.ipv6,
                mac: e.mac,
                aliases: e.aliases.clone(),
            };
            txn = txn.put(
                schema::endpoint(&ep.network, &ep.sandbox),
                schema::encode(&ep),
            );
            for ip in [e.ipv4.map(IpAddr::V4), e.ipv6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
            {
                txn = txn.put(
                    schema::ipam(&e.network, ip),
                    format!("sandbox:{}", s.id).into_bytes(),
                );
            }
        }
        if s.process.is_some() || s.exited {
            let st = StatusRec {
                pid: s.process.map(|p| p.pid),
                start_ticks: s.process.map(|p| p.start_time).unwrap_or(0),
                exited: s.exited,
                exit_code: s.exit_code,
                healthy: s.task.as_ref().is_some_and(|t| t.healthy),
                unhealthy: s.task.as_ref().is_some_and(|t| t.unhealthy),
                ..StatusRec::default()
            };
            txn = txn.put(schema::status(&s.id), schema::encode(&st));
        }
    }
    info!(
        networks = nets.len(),
        sandboxes = sbs.len(),
        services = svcs.len(),
        "migrating the store to the revisioned layout"
    );
    Ok(Some(txn))
}

/// Drops the old tables (after their records were committed in the new layout).
pub fn drop_old(db: &Database) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(backend)?;
    for t in [NETWORKS, SANDBOXES, SERVICES] {
        tx.delete_table(t).map_err(backend)?;
    }
    tx.commit().map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::super::redb::RedbStore;
    use super::super::{Store, schema};
    use super::*;

    /// Records exactly as the previous version wrote them.
    const OLD_NET: &str = r#"{"id":"n1","name":"net1","driver":"bridge","created":5,"subnets":[{"subnet":"10.9.0.0/24","ip_range":null,"gateway":"10.9.0.1","aux":{}}],"internal":false,"attachable":false,"dns":true,"mtu":null,"dns_servers":[],"ttl":null,"labels":{},"bridge":"sd-n1","predefined":false}"#;
    const OLD_SB: &str = r#"{"id":"s1","name":"a","hostname":"alpha","created":6,"mode":"own","netns":"/run/sdnet/netns/a","adopted":false,"adopted_from":null,"endpoints":[{"network":"n1","ifname":"eth0","host_if":"sdv0123456789ab","ipv4":"10.9.0.2","ipv6":null,"mac":[2,66,10,9,0,2],"aliases":["db"]}],"ports":[{"host_ip":null,"host_port":8080,"container_port":80,"protocol":"tcp"}],"dns":[],"command":["sleep","300"],"env":[],"auto_remove":false,"process":{"pid":4242,"start_time":99},"exited":false,"exit_code":null,"task":null}"#;
    const OLD_SVC: &str = r#"{"id":"v1","name":"web","created":7,"command":["sleep","1"],"env":[],"replicas":2,"mode":"vip","networks":[{"network":"n1","aliases":["www"],"vip":"10.9.0.3"}],"ports":[{"name":"http","port":80,"protocol":"tcp"}],"publish":[],"health":null,"restart":"on-failure","drain_ms":2000,"version":3}"#;

    #[tokio::test]
    async fn old_tables_become_v1_keys_once() {
        let dir = std::env::temp_dir().join(format!("sdnet-migrate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            for (t, k, v) in [
                (NETWORKS, "n1", OLD_NET),
                (SANDBOXES, "s1", OLD_SB),
                (SERVICES, "v1", OLD_SVC),
            ] {
                tx.open_table(t).unwrap().insert(k, v.as_bytes()).unwrap();
            }
            tx.commit().unwrap();
        }
        let check = |items: &[crate::daemon::store::KeyValue]| {
            let get = |k: &str| {
                items
                    .iter()
                    .find(|kv| kv.key == k)
                    .map(|kv| kv.value.clone())
            };
            let n: NetworkRec = schema::decode("", &get(&schema::network("n1")).unwrap()).unwrap();
            assert_eq!((n.name.as_str(), n.subnets.len()), ("net1", 1));
            let s: SandboxRec = schema::decode("", &get(&schema::sandbox("s1")).unwrap()).unwrap();
            assert_eq!((s.hostname.as_str(), s.ports.len()), ("alpha", 1));
            let e: EndpointRec =
                schema::decode("", &get(&schema::endpoint("n1", "s1")).unwrap()).unwrap();
            assert_eq!(e.ipv4, Some("10.9.0.2".parse().unwrap()));
            assert_eq!(e.aliases, ["db"]);
            let st: StatusRec = schema::decode("", &get(&schema::status("s1")).unwrap()).unwrap();
            assert_eq!((st.pid, st.start_ticks), (Some(4242), 99));
            let v: ServiceRec = schema::decode("", &get(&schema::service("v1")).unwrap()).unwrap();
            assert_eq!((v.version, v.restart), (3, Restart::OnFailure));
            for k in [
                schema::ipam("n1", "10.9.0.2".parse().unwrap()),
                schema::ipam("n1", "10.9.0.3".parse().unwrap()),
                schema::sandbox_name("a"),
                schema::service_name("web"),
                schema::service_net("n1", "v1"),
            ] {
                assert!(get(&k).is_some(), "{k}");
            }
        };
        let rev = {
            let s = RedbStore::open(&path).unwrap();
            let (items, rev) = s.snapshot(schema::ROOT).await.unwrap();
            check(&items);
            rev
        };
        // A second start finds nothing left to migrate and changes nothing. (The first
        // store's lease reaper may hold it open for a moment after the drop.)
        let mut s = RedbStore::open(&path);
        for _ in 0..100 {
            if s.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            s = RedbStore::open(&path);
        }
        let s = s.unwrap();
        let (items, rev2) = s.snapshot(schema::ROOT).await.unwrap();
        check(&items);
        assert_eq!(rev, rev2);
        drop(s);
        let mut db = Database::create(&path);
        for _ in 0..100 {
            if db.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            db = Database::create(&path);
        }
        let db = db.unwrap();
        let tx = db.begin_read().unwrap();
        let names: Vec<String> = tx
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        assert!(!names.iter().any(|n| n == "networks"), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
