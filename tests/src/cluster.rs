//! A cluster on one machine: an underlay bridge in a namespace of its own, etcd in its own
//! namespace on it, and one `sdctl daemon --cluster-store …` per node namespace on it — all
//! real processes, torn down (daemons, etcd, namespaces) when the value is dropped.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::{Daemon, Ns, TempDir, run_ok, unique, wait_for};

/// A cluster on an underlay bridge, 100.64.0.0/24 (nodes .1…, etcd's members .250…).
pub struct Cluster {
    /// Dropped first: the daemons leave before etcd and the underlay.
    pub nodes: Vec<Daemon>,
    /// etcd's members, each in a namespace of its own (the first is `etcd`).
    pub members: Vec<(Ns, u32)>,
    pub etcd_pid: u32,
    _etcd_dir: TempDir,
    pub underlay: Ns,
    tag: String,
    store: String,
    /// Dropped last: one cluster at a time per test binary. Each is an etcd and several
    /// daemons; four at once on a 2-core machine made etcd and the daemons miss their
    /// deadlines (every test of cluster_services timed out once in test-all).
    _turn: std::sync::MutexGuard<'static, ()>,
}

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The underlay address of etcd member `i` (100.64.0.250, .251, …).
pub fn etcd_addr(i: usize) -> String {
    format!("100.64.0.{}", 250 + i)
}

/// Connects `ns` to the underlay bridge with address `addr`/24.
fn wire(underlay: &Ns, ns: &Ns, addr: &str) {
    let t = unique();
    let (a, b) = (format!("ua{t}"), format!("ub{t}"));
    run_ok(Command::new("ip").args([
        "link",
        "add",
        &a,
        "netns",
        &underlay.name,
        "type",
        "veth",
        "peer",
        "name",
        &b,
        "netns",
        &ns.name,
    ]));
    underlay.run_ok("ip", &["link", "set", &a, "master", "ul", "up"]);
    ns.run_ok("ip", &["addr", "add", &format!("{addr}/24"), "dev", &b]);
    ns.run_ok("ip", &["link", "set", &b, "up"]);
}

/// Whether Debian's etcd is installed (scripts/test-all.sh installs etcd-server).
pub fn have_etcd() -> bool {
    Command::new("etcd").arg("--version").output().is_ok()
}

impl Cluster {
    /// `n` nodes named n0, n1…; `extra`: more daemon flags for every node.
    pub fn start(tag: &str, n: usize, extra: &[&str]) -> Cluster {
        Self::start_with(tag, n, 1, extra)
    }

    /// With an etcd of `members` members (each node is told all of them).
    pub fn start_with(tag: &str, n: usize, members: usize, extra: &[&str]) -> Cluster {
        let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            have_etcd(),
            "etcd is not installed (Debian: etcd-server; scripts/test-all.sh installs it)"
        );
        let underlay = Ns::new(&format!("{tag}u"));
        underlay.run_ok("ip", &["link", "add", "ul", "type", "bridge"]);
        underlay.run_ok("ip", &["link", "set", "ul", "up"]);
        let dir = TempDir::in_memory(&format!("{tag}-etcd"));
        let initial: Vec<String> = (0..members)
            .map(|i| format!("e{i}=http://{}:2380", etcd_addr(i)))
            .collect();
        // One token for all members (a member with another token is another cluster).
        let token = format!("{tag}-{}", unique());
        let mut ms = Vec::new();
        for i in 0..members {
            let ns = Ns::new(&format!("{tag}e{i}"));
            wire(&underlay, &ns, &etcd_addr(i));
            let client = format!("http://{}:2379", etcd_addr(i));
            let peer = format!("http://{}:2380", etcd_addr(i));
            let data = dir.path().join(format!("data{i}"));
            let cmd = ns.cmd(
                "etcd",
                &[
                    "--name",
                    &format!("e{i}"),
                    "--data-dir",
                    data.to_str().unwrap_or_default(),
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-token",
                    &token,
                    "--auto-compaction-mode",
                    "revision",
                    "--auto-compaction-retention",
                    "10000",
                ],
            );
            let pid = ns.spawn(cmd, Some(&dir.path().join(format!("etcd{i}.log"))));
            ms.push((ns, pid));
        }
        for (i, (ns, _)) in ms.iter().enumerate() {
            let a = etcd_addr(i);
            let up = wait_for(Duration::from_secs(30), || {
                ns.enter(|| TcpStream::connect((a.as_str(), 2379)).ok())
                    .map(|_| ())
            });
            assert!(up.is_some(), "etcd member {i} did not start");
        }
        let store = format!(
            "etcd://{}",
            (0..members)
                .map(|i| format!("{}:2379", etcd_addr(i)))
                .collect::<Vec<_>>()
                .join(",")
        );
        let etcd_pid = ms[0].1;
        let mut c = Cluster {
            nodes: Vec::new(),
            members: ms,
            etcd_pid,
            _etcd_dir: dir,
            underlay,
            tag: tag.to_string(),
            store,
            _turn: turn,
        };
        for i in 0..n {
            c.add_node(i, extra);
        }
        c
    }

    /// The underlay address of node `i`.
    pub fn addr(i: usize) -> String {
        format!("100.64.0.{}", i + 1)
    }

    fn add_node(&mut self, i: usize, extra: &[&str]) {
        let ns = Ns::new(&format!("{}n{i}", self.tag));
        wire(&self.underlay, &ns, &Self::addr(i));
        let store = self.store.clone();
        let addr = Self::addr(i);
        let name = format!("n{i}");
        let mut args = vec![
            "--cluster-store",
            store.as_str(),
            "--advertise-addr",
            addr.as_str(),
            "--node-name",
            name.as_str(),
        ];
        args.extend_from_slice(extra);
        let d = Daemon::start_in(
            ns,
            &format!("{}n{i}", self.tag),
            &args,
            "nameserver 127.0.0.53\noptions edns0\n",
        );
        self.nodes.push(d);
    }

    /// Kills etcd member `i` (by its PID).
    pub fn kill_member(&self, i: usize) {
        // SAFETY: signalling an etcd this cluster started.
        unsafe { libc::kill(self.members[i].1 as i32, libc::SIGKILL) };
    }

    /// The keys under `prefix` in etcd, one per line (etcdctl, from the first member's
    /// namespace).
    pub fn etcd_keys(&self, prefix: &str) -> String {
        let ep = format!("http://{}:2379", etcd_addr(0));
        self.members[0].0.run_ok(
            "etcdctl",
            &["--endpoints", &ep, "get", "--prefix", "--keys-only", prefix],
        )
    }

    /// Freezes etcd (SIGSTOP): it neither answers nor refuses.
    pub fn freeze_etcd(&self, on: bool) {
        let sig = if on { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling the etcd this cluster started.
        unsafe { libc::kill(self.etcd_pid as i32, sig) };
    }

    /// Cuts node `i` off the underlay (its link down) or joins it again: a partition, the
    /// daemon keeps running.
    pub fn cut(&self, i: usize, off: bool) {
        let ns = &self.nodes[i].ns;
        let out = ns.run_ok("ip", &["-o", "-4", "addr", "show", "to", &Self::addr(i)]);
        let dev = out
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("no underlay link on n{i}: {out}"))
            .to_string();
        ns.run_ok(
            "ip",
            &["link", "set", &dev, if off { "down" } else { "up" }],
        );
    }
}
