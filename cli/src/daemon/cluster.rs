//! This node as a member of a cluster (`--cluster-store etcd://…`): its identity, its
//! registration (`nodes/<id>`, and `alive/<id>` under a lease it keeps alive), and the lease
//! every record of this node that must vanish with it is put under (its peers: its endpoints
//! on swarm networks as the other nodes see them). A lease lost while the store was
//! unreachable is replaced when it is back; the reconciler publishes the node's peers again
//! under the new one (they vanished with the old).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::daemon::store::schema::{self, NodeRec};
use crate::daemon::store::{LeaseId, Store, StoreError, Txn};

/// What `sdctl daemon` was told about the cluster.
#[derive(Clone, Debug)]
pub struct ClusterArgs {
    pub endpoints: Vec<String>,
    pub advertise: IpAddr,
    pub node_name: String,
    pub data_port: u16,
    pub ttl: Duration,
}

pub struct Cluster {
    pub store: Arc<dyn Store>,
    pub id: String,
    pub name: String,
    pub addr: IpAddr,
    pub data_port: u16,
    pub ttl: Duration,
    lease: AtomicI64,
    /// Held while registering, so a lost lease is replaced once however many notice.
    renewing: tokio::sync::Mutex<()>,
}

/// This node's ID: made once, kept in the state directory.
fn node_id(state_dir: &Path) -> Result<String> {
    let path = state_dir.join("node-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(s.to_string());
        }
    }
    let id = crate::daemon::api::random_id();
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

impl Cluster {
    /// Connects to the cluster store (retrying for a while: etcd may start after us) and
    /// registers this node.
    pub async fn join(args: &ClusterArgs, state_dir: &Path) -> Result<Arc<Cluster>> {
        let id = node_id(state_dir)?;
        let mut wait = Duration::from_millis(200);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let store = loop {
            match crate::daemon::store::etcd::EtcdStore::connect(
                &args.endpoints,
                Duration::from_secs(5),
            )
            .await
            {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!("cluster store: {e}; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e).context("connecting to the cluster store"),
            }
        };
        let c = Arc::new(Cluster {
            store: Arc::new(store),
            id,
            name: args.node_name.clone(),
            addr: args.advertise,
            data_port: args.data_port,
            ttl: args.ttl,
            lease: AtomicI64::new(0),
            renewing: tokio::sync::Mutex::new(()),
        });
        c.register().await.context("registering this node")?;
        info!(node = %c.name, id = %&c.id[..12], addr = %c.addr, "joined the cluster");
        Ok(c)
    }

    /// The lease this node's records are put under.
    pub fn lease(&self) -> LeaseId {
        self.lease.load(Ordering::Relaxed)
    }

    async fn register(&self) -> Result<(), StoreError> {
        let lease = self.store.grant(self.ttl).await?;
        let rec = NodeRec {
            id: self.id.clone(),
            name: self.name.clone(),
            addr: self.addr,
            data_port: self.data_port,
            joined: crate::daemon::api::now(),
        };
        self.store
            .txn(
                Txn::new()
                    .put(schema::node(&self.id), schema::encode(&rec))
                    .put_leased(schema::alive(&self.id), Vec::new(), lease),
            )
            .await?;
        self.lease.store(lease, Ordering::Relaxed);
        Ok(())
    }

    /// Registers again under a new lease, unless that was done already since `lost` was
    /// found gone (by the keep-alive loop or a writer that got "lease not found").
    pub async fn renew(&self, lost: LeaseId) -> Result<(), StoreError> {
        let _one = self.renewing.lock().await;
        if self.lease() != lost {
            return Ok(());
        }
        warn!("this node's lease expired (the cluster store was unreachable): registering again");
        self.register().await?;
        info!(node = %self.name, "registered again under a new lease");
        Ok(())
    }

    /// Keeps the lease alive; registers again (a new lease) when it was lost.
    pub async fn keep_alive(self: Arc<Self>) {
        let every = (self.ttl / 3).max(Duration::from_millis(300));
        loop {
            tokio::time::sleep(every).await;
            let lease = self.lease();
            match self.store.keep_alive(lease).await {
                Ok(()) => {}
                Err(StoreError::LeaseNotFound(_)) => {
                    if let Err(e) = self.renew(lease).await {
                        warn!("registering again: {e}");
                    }
                }
                Err(e) => warn!("keeping this node's lease alive: {e}"),
            }
        }
    }
}
