//! Real Podman (Debian's 4.3, with its netavark 1.4 and runc) using `sdctl` as its
//! aardvark-dns, the way a user switches: a `helper_binaries_dir` in containers.conf whose
//! `aardvark-dns` is a symlink to sdctl. Containers are real (`podman run --rootfs` over a
//! busybox tree); names are asked from inside them with busybox's nslookup (through the
//! resolv.conf Podman wrote) and with dig in their network namespaces. The same scenario runs
//! with Debian's aardvark-dns behind the same symlink (the baseline): both must answer alike,
//! and sdctl must answer right the moment `podman run` returns.
//!
//! Everything Podman keeps is the test's own: storage, run root and network configs in a
//! temporary directory; Podman and netavark run inside a throw-away network namespace and a
//! private mount namespace with its own tmpfs on /run (netavark's `/run/containers/networks`,
//! the containers' namespaces) and /dev/shm (libpod's locks); the containers' cgroups under
//! a parent of the test's own, removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use sdnet_tests::{Dig, Dnsmasq, Ns, TempDir, netns_id, require_root, sdctl, unique, wait_for};

const REAL_AARDVARK: &str = "/usr/lib/podman/aardvark-dns";

/// One Podman "host": a namespace, a private mount namespace held by a sleeping process, a
/// containers.conf and storage of its own.
struct Podman {
    ns: Ns,
    dir: TempDir,
    holder: Child,
    cgroup: String,
    _upstream: Dnsmasq,
}

fn rlimit(res: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    unsafe { libc::getrlimit(res, &mut r) };
    r.rlim_max
}

impl Podman {
    fn new(aardvark: &Path) -> Podman {
        require_root();
        for p in [
            "/usr/bin/podman",
            "/usr/sbin/runc",
            "/usr/lib/podman/netavark",
        ] {
            assert!(
                Path::new(p).exists() || Path::new(&p.replace("/sbin/", "/bin/")).exists(),
                "{p} is missing: scripts/test-all.sh installs podman and runc"
            );
        }
        let ns = Ns::new("pdm");
        let dir = TempDir::new("pdm");
        let d = dir.path();
        for sub in ["root", "runroot", "tmp", "netcfg", "helpers", "rootfs/bin"] {
            std::fs::create_dir_all(d.join(sub)).expect("podman dirs");
        }
        for sub in ["etc", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(d.join("rootfs").join(sub)).expect("rootfs dirs");
        }
        std::fs::copy("/bin/busybox", d.join("rootfs/bin/busybox")).expect("busybox");
        for applet in ["sh", "sleep", "nslookup", "cat"] {
            std::os::unix::fs::symlink("busybox", d.join("rootfs/bin").join(applet))
                .expect("applet link");
        }
        std::os::unix::fs::symlink(aardvark, d.join("helpers/aardvark-dns")).expect("symlink");
        // The containers' rlimits may not exceed ours (Podman's default nofile does).
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
             [network]\nnetwork_backend = \"netavark\"\nnetwork_config_dir = \"{net}\"\n\
             [engine]\nhelper_binaries_dir = [\"{helpers}\", \"/usr/lib/podman\"]\n\
             runtime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             tmp_dir = \"{tmp}\"\n",
            net = d.join("netcfg").display(),
            helpers = d.join("helpers").display(),
            tmp = d.join("tmp").display(),
            nofile = rlimit(libc::RLIMIT_NOFILE).min(1024),
            nproc = rlimit(libc::RLIMIT_NPROC).min(1024),
        );
        std::fs::write(d.join("containers.conf"), conf).expect("containers.conf");
        // The host's upstream, as the servers read it from /etc/resolv.conf: a dnsmasq in the
        // namespace that knows one name and, for plain names, says NXDOMAIN.
        std::fs::write(d.join("resolv.conf"), "nameserver 127.0.0.1\n").expect("resolv.conf");
        let upstream = Dnsmasq::start(
            &ns,
            d,
            "127.0.0.1",
            53,
            &[
                "--domain-needed",
                "--host-record=outside.example,192.0.2.77",
            ],
        );
        // The holder: in the test's network namespace (nsenter, not `ip netns exec`, which
        // would remount /sys and hide the cgroup hierarchy runc needs), a private mount
        // namespace with fresh /run and /dev/shm and that resolv.conf.
        let holder = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
            ])
            .arg(format!(
                "mount -t tmpfs sdt-podman-run /run && mount --bind {} /etc/resolv.conf \
                 && mount -t tmpfs sdt-podman-shm /dev/shm && exec sleep 600",
                d.join("resolv.conf").display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("mount namespace holder");
        let pid = holder.id();
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
                .ok()?
                .contains("sdt-podman-shm")
                .then_some(())
        })
        .expect("the holder's mounts");
        Podman {
            ns,
            dir,
            holder,
            cgroup: format!("sdt-podman-{}", unique()),
            _upstream: upstream,
        }
    }

    /// `podman ARGS` in the holder's namespaces, bounded by `timeout 120`.
    fn podman(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["--mount", "--net", "timeout", "120", "podman", "--root"])
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .args(args)
            .stdin(Stdio::null());
        c.output().expect("podman")
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `podman run -d --name NAME` on `nets` (comma-separated), sleeping.
    fn run(&self, name: &str, nets: &str) {
        let rootfs = self.dir.path().join("rootfs");
        let parent = format!("/{}", self.cgroup);
        self.podman_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            nets,
            "--cgroup-parent",
            &parent,
            // A flag: the first argument after the options is the rootfs, then the command.
            "--rootfs",
            &rootfs.display().to_string(),
            "sleep",
            "600",
        ]);
    }

    fn ip(&self, ctr: &str, net: &str) -> String {
        let f = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
        self.podman_ok(&["inspect", "-f", &f, ctr])
    }

    fn gateway(&self, net: &str) -> String {
        self.podman_ok(&[
            "network",
            "inspect",
            "-f",
            "{{(index .Subnets 0).Gateway}}",
            net,
        ])
    }

    /// dig from inside container `ctr`'s network namespace (its own source address).
    fn dig(&self, ctr: &str, server: &str, args: &[&str]) -> Option<Dig> {
        let pid = self.podman_ok(&["inspect", "-f", "{{.State.Pid}}", ctr]);
        // netavark 1.4 leaves a bridge's MAC address to the kernel, which gives it the lowest
        // of its ports' MACs: a container joining or leaving can change the gateway's MAC,
        // and the others' neighbour entries then fail for several seconds (with any DNS
        // server). Forget them first; this test is about names.
        let _ = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["ip", "neigh", "flush", "all"])
            .output();
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["dig", "+tries=1", "+time=2"])
            .arg(format!("@{server}"))
            .args(args)
            .output()
            .expect("dig");
        Dig::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// The sorted answers of type `rtype` for `name` asked from `ctr` (status if none).
    /// `retry`: ask again for up to 5 s until `want` comes (aardvark-dns 1.4 may answer
    /// from the data before a container's setup for a moment); without it, the first answer.
    fn ask(&self, ctr: &str, server: &str, name: &str, rtype: &str, want: Option<&str>) -> String {
        let once = || {
            let d = self.dig(ctr, server, &[name, rtype])?;
            let mut data = d.data(rtype);
            data.sort();
            Some(if data.is_empty() {
                d.status
            } else {
                data.join(" ")
            })
        };
        match want {
            Some(w) => wait_for(Duration::from_secs(5), || {
                let got = once()?;
                (got == w).then_some(got)
            })
            .or_else(once)
            .unwrap_or_else(|| "no reply".into()),
            None => once().unwrap_or_else(|| "no reply".into()),
        }
    }

    /// The DNS server netavark started: (pid, its executable).
    fn dns_server(&self) -> Option<(i32, PathBuf)> {
        let p = format!(
            "/proc/{}/root/run/containers/networks/aardvark-dns/aardvark.pid",
            self.holder.id()
        );
        let pid: i32 = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        Some((pid, exe))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        let _ = self.podman(&["network", "prune", "-f"]);
        // The DNS server, if it still runs in our namespace (it exits with its last network).
        if let Some((pid, _)) = self.dns_server() {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .map(|p| p.display().to_string());
            if pid > 1 && theirs.is_some() && theirs == netns_id(&self.ns.path()) {
                // SAFETY: signalling the DNS server this test's netavark started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // The cgroups runc and conmon made under our parent: empty once their processes are
        // reaped (an orphaned conmon is reaped by init, a moment later).
        let roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(&self.cgroup))
            .chain(std::iter::once(
                Path::new("/sys/fs/cgroup").join(&self.cgroup),
            ))
            .filter(|p| p.is_dir())
            .collect();
        let _ = wait_for(Duration::from_secs(10), || {
            for r in &roots {
                remove_cgroup(r);
            }
            roots.iter().all(|r| !r.exists()).then_some(())
        });
    }
}

/// rmdir of a cgroup directory and its children, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// What a scenario saw: (question, answer) in order.
type Seen = Vec<(String, String)>;

/// The scenario, with `aardvark` as Podman's aardvark-dns. `strict`: every present name must
/// be right on the first query after `podman run` returned (sdctl's promise).
fn scenario(aardvark: &Path, strict: bool) -> Seen {
    let p = Podman::new(aardvark);
    let mut seen = Seen::new();
    let mut note = |q: &str, a: String| seen.push((q.to_string(), a));
    p.podman_ok(&["network", "create", "front"]);
    p.podman_ok(&["network", "create", "back"]);
    p.run("alpha", "front");
    p.run("beta", "front,back");
    let (gw_front, gw_back) = (p.gateway("front"), p.gateway("back"));

    // The server netavark started is the one behind the symlink.
    let (_, exe) = p.dns_server().expect("netavark started a DNS server");
    assert_eq!(
        exe.canonicalize().ok(),
        aardvark.canonicalize().ok(),
        "the DNS server netavark started"
    );

    let a_front = p.ip("alpha", "front");
    let b_front = p.ip("beta", "front");
    let b_back = p.ip("beta", "back");
    let want = |w: &str| if strict { None } else { Some(w.to_string()) };

    // From inside alpha, through the resolv.conf Podman wrote (busybox nslookup).
    let out = p.podman_ok(&["exec", "alpha", "nslookup", "beta"]);
    assert!(
        out.contains(&b_front),
        "nslookup beta in alpha gave {out} (want {b_front})"
    );
    note("nslookup beta (alpha)", b_front.clone());

    // Names by network: alpha sees beta's front address only; beta sees alpha's.
    let ask = |ctr: &str, gw: &str, name: &str, t: &str, w: Option<String>| {
        p.ask(ctr, gw, name, t, w.as_deref())
    };
    let got = ask("alpha", &gw_front, "beta", "A", want(&b_front));
    assert_eq!(got, b_front, "beta from alpha");
    note("beta A (alpha)", got);
    let got = ask("beta", &gw_front, "alpha.dns.podman", "A", want(&a_front));
    assert_eq!(got, a_front, "alpha.dns.podman from beta");
    note("alpha.dns.podman A (beta)", got);
    // PTR: every name of the address (the container's name and its short ID).
    let short = p.podman_ok(&["inspect", "-f", "{{.Id}}", "alpha"])[..12].to_string();
    let rev = {
        let o: Vec<&str> = a_front.split('.').rev().collect();
        format!("{}.in-addr.arpa", o.join("."))
    };
    let ptr = ask("beta", &gw_front, &rev, "PTR", None);
    let names: Vec<String> = ptr.split(' ').map(str::to_string).collect();
    assert!(
        names.iter().any(|n| n.starts_with("alpha."))
            && names.iter().any(|n| n.starts_with(&short)),
        "PTR of alpha's address: {ptr}"
    );
    // The ID differs between the two runs: sorted once it reads "<id>".
    let mut names: Vec<String> = names
        .iter()
        .map(|n| n.replacen(short.as_str(), "<id>", 1))
        .collect();
    names.sort();
    note("alpha PTR (beta)", names.join(" "));

    // gamma, on back only: beta's back address, nothing of alpha's.
    p.run("gamma", "back");
    let g_back = p.ip("gamma", "back");
    let got = ask("gamma", &gw_back, "beta", "A", want(&b_back));
    assert_eq!(got, b_back, "beta from gamma");
    note("beta A (gamma)", got);
    let got = ask("gamma", &gw_back, "alpha", "A", None);
    assert_eq!(got, "NXDOMAIN", "alpha from gamma (no shared network)");
    note("alpha A (gamma)", got);
    // Other names go to the host's upstream.
    let got = ask("gamma", &gw_back, "outside.example", "A", None);
    assert_eq!(got, "192.0.2.77", "outside.example from gamma (forwarded)");
    note("outside.example A (gamma)", got);
    let got = ask("beta", &gw_back, "gamma", "A", want(&g_back));
    assert_eq!(got, g_back, "gamma from beta");
    note("gamma A (beta)", got);

    // `podman network connect`: alpha joins back, gamma sees it there at once.
    p.podman_ok(&["network", "connect", "back", "alpha"]);
    let a_back = p.ip("alpha", "back");
    let got = ask("gamma", &gw_back, "alpha", "A", want(&a_back));
    assert_eq!(got, a_back, "alpha from gamma after connect");
    note("alpha A (gamma, after connect)", got);

    // `podman rm`: the name goes.
    p.podman_ok(&["rm", "-f", "-t", "0", "beta"]);
    let got = ask("alpha", &gw_front, "beta", "A", Some("NXDOMAIN".into()));
    assert_eq!(got, "NXDOMAIN", "beta after rm");
    note("beta A (alpha, after rm)", got);
    seen
}

#[test]
fn podman_uses_sdctl_as_its_aardvark_dns() {
    let ours = scenario(&sdctl(), true);
    let theirs = scenario(Path::new(REAL_AARDVARK), false);
    // The same answers where the addresses are the same (both hosts allocate alike: same
    // networks created in the same order, same containers).
    assert_eq!(ours, theirs, "sdctl vs aardvark-dns under the same Podman");
}
