//! Per-namespace sysctls. `/proc/sys/net/*` shows the namespace of the task that opens it, so
//! reads and writes happen on a thread inside the namespace.
//!
//! Keys use dots (`net.ipv4.ip_forward`) or, when a component itself contains dots (an
//! interface such as `eth0.100`), slashes (`net/ipv4/conf/eth0.100/forwarding`), as sysctl(8)
//! accepts.

use std::path::PathBuf;

use crate::netns::Netns;
use crate::{Error, Result};

fn path(key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') {
        key.trim_matches('/').to_string()
    } else {
        key.replace('.', "/")
    };
    // The key names a file under /proc/sys and nothing else.
    let bad = rel.is_empty()
        || rel.contains('\0')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::Invalid(format!("invalid sysctl key {key:?}")));
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// Writes `value` to the sysctl `key` inside `ns`.
pub fn set(ns: &Netns, key: &str, value: &str) -> Result<()> {
    let p = path(key)?;
    ns.run(|| std::fs::write(&p, value.as_bytes()))?
        .map_err(Error::io(format!("setting {key}={value}")))
}

/// Reads the sysctl `key` inside `ns` (surrounding whitespace trimmed).
pub fn get(ns: &Netns, key: &str) -> Result<String> {
    let p = path(key)?;
    ns.run(|| std::fs::read_to_string(&p))?
        .map(|s| s.trim().to_string())
        .map_err(Error::io(format!("reading {key}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in ["", "net..x", "net/../../etc/passwd", "a\0b", "/"] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
    }
}
