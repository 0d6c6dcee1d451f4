//! A cluster on one machine: an underlay bridge in a namespace of its own, etcd in its own
//! namespace on it, and one `sdctl daemon --cluster-store …` per node namespace on it — all
//! real processes, torn down (daemons, etcd, namespaces) when the value is dropped.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::{Daemon, Ns, TempDir, run_ok, unique, wait_for};

/// The underlay: 100.64.0.0/24 (nodes .1…, etcd .250).
pub const ETCD_ADDR: &str = "100.64.0.250";

pub struct Cluster {
    /// Dropped first: the daemons leave before etcd and the underlay.
    pub nodes: Vec<Daemon>,
    pub etcd: Ns,
    pub etcd_pid: u32,
    _etcd_dir: TempDir,
    pub underlay: Ns,
    tag: String,
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
        assert!(
            have_etcd(),
            "etcd is not installed (Debian: etcd-server; scripts/test-all.sh installs it)"
        );
        let underlay = Ns::new(&format!("{tag}u"));
        underlay.run_ok("ip", &["link", "add", "ul", "type", "bridge"]);
        underlay.run_ok("ip", &["link", "set", "ul", "up"]);
        let etcd = Ns::new(&format!("{tag}e"));
        wire(&underlay, &etcd, ETCD_ADDR);
        let dir = TempDir::new(&format!("{tag}-etcd"));
        let client = format!("http://{ETCD_ADDR}:2379");
        let cmd = etcd.cmd(
            "etcd",
            &[
                "--name",
                "e0",
                "--data-dir",
                dir.path().join("data").to_str().unwrap_or_default(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "e0=http://127.0.0.1:2380",
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "10000",
            ],
        );
        let etcd_pid = etcd.spawn(cmd, Some(&dir.path().join("etcd.log")));
        let up = wait_for(Duration::from_secs(20), || {
            etcd.enter(|| TcpStream::connect((ETCD_ADDR, 2379)).ok())
                .map(|_| ())
        });
        assert!(up.is_some(), "etcd did not start");
        let mut c = Cluster {
            nodes: Vec::new(),
            etcd,
            etcd_pid,
            _etcd_dir: dir,
            underlay,
            tag: tag.to_string(),
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
        let store = format!("etcd://{ETCD_ADDR}:2379");
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

    /// Freezes etcd (SIGSTOP): it neither answers nor refuses.
    pub fn freeze_etcd(&self, on: bool) {
        let sig = if on { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling the etcd this cluster started.
        unsafe { libc::kill(self.etcd_pid as i32, sig) };
    }
}
