//! Per-namespace sysctls: /proc/sys/net/* shows the namespace of the task that opens it, so
//! reads and writes happen on a thread inside the namespace.

use crate::Error;
use crate::netns::Netns;

fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

pub fn set(ns: &Netns, key: &str, value: &str) -> Result<(), Error> {
    let p = path(key);
    let v = value.to_string();
    ns.run(move || std::fs::write(&p, v.as_bytes()))?
        .map_err(|source| Error::Io {
            what: format!("setting {key}"),
            source,
        })
}

pub fn get(ns: &Netns, key: &str) -> Result<String, Error> {
    let p = path(key);
    ns.run(move || std::fs::read_to_string(&p))?
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Io {
            what: format!("reading {key}"),
            source,
        })
}
