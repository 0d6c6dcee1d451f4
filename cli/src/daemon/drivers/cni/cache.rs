//! What was added for an endpoint, kept like libcni's result cache: one JSON file per
//! (network, sandbox) in `<state-dir>/cni/`, holding the configuration list as it was run,
//! the container's side (ID, interface, namespace path, port mappings) and the ADD result.
//! DEL and CHECK need that result as `prevResult`, and a restarted daemon or `--cleanup`
//! needs all of it to run DEL without the store.
//!
//! The file is written before the first plugin runs (without a result) and again with the
//! result, so a crash in the middle of an ADD still leaves a record to DEL from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spec::PortMapping;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cached {
    pub network: String,
    pub sandbox: String,
    pub ifname: String,
    /// The namespace path the plugins were given on ADD.
    pub netns: String,
    /// The configuration list as JSON, as it was run.
    pub config: String,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// The addresses asked for with the `ips` capability (a repair keeping its address):
    /// DEL and CHECK get the same runtime values as the ADD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// A CHECK failure that came right after this ADD (a repair, which makes the same ADD,
    /// would not cure it): while CHECK fails just so, the endpoint is not repaired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_fails: Option<String>,
    /// The chain's final ADD result; None while the ADD runs (or if it never finished).
    #[serde(default)]
    pub result: Option<Value>,
}

pub fn path(dir: &Path, network: &str, sandbox: &str) -> PathBuf {
    dir.join(format!("{network}-{sandbox}.json"))
}

/// The cached record, None if there is none. An unreadable record is an error (not "none":
/// its plugins' state would be forgotten).
pub async fn load(p: &Path) -> std::io::Result<Option<Cached>> {
    match tokio::fs::read(p).await {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a record whole (a temporary file renamed over the old one).
pub async fn store(p: &Path, c: &Cached) -> std::io::Result<()> {
    if let Some(dir) = p.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = p.with_extension("tmp");
    tokio::fs::write(&tmp, serde_json::to_vec(c).unwrap_or_default()).await?;
    tokio::fs::rename(&tmp, p).await
}

/// [`store`] from a thread that may block (a small file, written rarely).
pub fn store_blocking(p: &Path, c: &Cached) -> std::io::Result<()> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(c).unwrap_or_default())?;
    std::fs::rename(&tmp, p)
}

pub async fn remove(p: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_file(p).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every record in `dir` (unreadable ones are skipped with a warning).
pub async fn list(dir: &Path) -> Vec<(PathBuf, Cached)> {
    let mut out = Vec::new();
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return out;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match load(&p).await {
            Ok(Some(c)) => out.push((p, c)),
            Ok(None) => {}
            Err(e) => tracing::warn!(file = %p.display(), "unreadable CNI cache record: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn store_load_remove() {
        let dir = std::env::temp_dir().join(format!("sdnet-cni-cache-{}", std::process::id()));
        let p = path(&dir, "n", "s");
        assert_eq!(load(&p).await.unwrap(), None);
        let c = Cached {
            network: "n".into(),
            sandbox: "s".into(),
            ifname: "eth0".into(),
            netns: "/run/x".into(),
            config: "{}".into(),
            ports: vec![],
            ips: vec![],
            check_fails: None,
            result: Some(serde_json::json!({"ips": []})),
        };
        store(&p, &c).await.unwrap();
        assert_eq!(load(&p).await.unwrap(), Some(c.clone()));
        assert_eq!(list(&dir).await, vec![(p.clone(), c)]);
        remove(&p).await.unwrap();
        remove(&p).await.unwrap();
        assert_eq!(load(&p).await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
