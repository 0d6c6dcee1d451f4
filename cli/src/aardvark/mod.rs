//! `sdctl aardvark-dns` (or sdctl started under the name `aardvark-dns`): a drop-in for
//! Podman's aardvark-dns, as netavark starts it: `aardvark-dns --config DIR -p PORT run`.
//!
//! The process contract (`process.rs`): descriptors from 3 up closed, a fork whose child
//! writes `DIR/aardvark.pid`, binds UDP and TCP on every listen address, leaves the session
//! and its stdio, then tells the waiting parent (exit 0); a child that fails says why on
//! stderr and the parent exits 1. The child serves (`serve.rs`) with sdnet's resolver under
//! `Policy::Podman`; SIGHUP re-reads the directory (`config.rs`), and a query that misses
//! re-reads it first if a file changed since (`fresh.rs`). Logs: `log.rs`.

pub mod config;
mod fresh;
pub mod log;
mod process;
mod serve;

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cli::{AardvarkArgs, AardvarkCommand};

/// Runs the command; the exit code.
pub fn main(args: AardvarkArgs) -> Result<u8> {
    match args.command {
        AardvarkCommand::Version => {
            println!(
                "{}",
                serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "implementation": "sdnet",
                    "target": std::env::consts::ARCH,
                })
            );
            Ok(0)
        }
        AardvarkCommand::Run => {
            let dir: PathBuf = args
                .config
                .context("--config DIR is required: the directory of network files")?;
            let opts = serve::Options {
                dir,
                port: args.port,
                search_domain: normalize_domain(&args.filter_search_domain),
                no_proxy: std::env::var_os("AARDVARK_NO_PROXY").is_some(),
            };
            process::close_inherited_fds();
            process::fork_and_wait(|ready| serve::child(opts, ready))
        }
    }
}

/// `.dns.podman` / `dns.podman.` → `dns.podman` (lower case).
fn normalize_domain(d: &str) -> String {
    d.trim_matches('.').to_ascii_lowercase()
}
