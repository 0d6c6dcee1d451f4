//! Running one CNI plugin (spec 1.0.0, "execution protocol"): the plugin binary from the
//! plugin directory, the operation and the container in `CNI_*` environment variables, its
//! configuration on stdin; a result (ADD) or nothing (DEL, CHECK) on stdout and exit status
//! 0, or an error object on stdout and a non-zero status. Every run has a time limit and its
//! stderr is kept for the error.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::spec::PluginError;

/// How long one plugin may run.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

/// The container side of one operation.
pub struct Invocation<'a> {
    pub command: Command,
    pub container_id: &'a str,
    /// The namespace path; empty on a DEL whose namespace is gone.
    pub netns: &'a str,
    pub ifname: &'a str,
    /// The plugin directory (also `CNI_PATH`, where plugins find their IPAM plugin).
    pub bin_dir: &'a Path,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("CNI plugin {plugin:?} not found in {dir} (--cni-bin-dir)")]
    NotFound { plugin: String, dir: PathBuf },
    #[error("CNI plugin {plugin} {command} failed: {msg}{}{}", detail(.details), stderr_note(.stderr))]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u32,
        msg: String,
        details: String,
        stderr: String,
    },
    #[error("CNI plugin {plugin} {command} did not finish within {}s", TIMEOUT.as_secs())]
    Timeout {
        plugin: String,
        command: &'static str,
    },
    #[error("CNI plugin {plugin} {command}: {what}: {source}")]
    Io {
        plugin: String,
        command: &'static str,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} printed no valid result: {why}")]
    BadOutput {
        plugin: String,
        command: &'static str,
        why: String,
    },
}

fn detail(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(" ({d})")
    }
}

fn stderr_note(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        // One line, bounded: the error goes back to the client.
        let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
        let cut: String = one.chars().take(400).collect();
        format!("; stderr: {cut}")
    }
}

/// Runs `plugin` once. ADD returns its result; DEL and CHECK return None. Also returns how
/// long the plugin ran.
pub async fn run(
    plugin: &str,
    inv: &Invocation<'_>,
    stdin: Vec<u8>,
) -> Result<(Option<Value>, Duration), ExecError> {
    let command = inv.command.as_str();
    let bin = inv.bin_dir.join(plugin);
    if !bin.is_file() {
        return Err(ExecError::NotFound {
            plugin: plugin.to_string(),
            dir: inv.bin_dir.to_path_buf(),
        });
    }
    let io = |what: &'static str| {
        let plugin = plugin.to_string();
        move |source| ExecError::Io {
            plugin,
            command,
            what,
            source,
        }
    };
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", "")
        .env("CNI_PATH", inv.bin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io("starting it"))?;
    if let Some(mut w) = child.stdin.take() {
        // A plugin that exits without reading its stdin is reported by its status.
        let _ = w.write_all(&stdin).await;
        drop(w);
    }
    let out = match tokio::time::timeout(TIMEOUT, child.wait_with_output()).await {
        Ok(r) => r.map_err(io("waiting for it"))?,
        // Dropping the future kills the child (kill_on_drop) and reaps it.
        Err(_) => {
            return Err(ExecError::Timeout {
                plugin: plugin.to_string(),
                command,
            });
        }
    };
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let e: PluginError = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| PluginError {
            code: 0,
            msg: match String::from_utf8_lossy(&out.stdout).trim() {
                "" => format!("exited with {}", out.status),
                s => format!("exited with {}: {s}", out.status),
            },
            details: String::new(),
        });
        return Err(ExecError::Plugin {
            plugin: plugin.to_string(),
            command,
            code: e.code,
            msg: e.msg,
            details: e.details,
            stderr,
        });
    }
    if inv.command != Command::Add {
        return Ok((None, took));
    }
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(v @ Value::Object(_)) => Ok((Some(v), took)),
        Ok(_) => Err(ExecError::BadOutput {
            plugin: plugin.to_string(),
            command,
            why: "not a JSON object".into(),
        }),
        Err(e) => Err(ExecError::BadOutput {
            plugin: plugin.to_string(),
            command,
            why: e.to_string(),
        }),
    }
}
