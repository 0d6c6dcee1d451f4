//! The host's `/etc/resolv.conf` is watched (inotify): a rewrite sends the next forwarded
//! query to the new server at once (it was polled at most once a second). aardvark-dns reads
//! the fixed path `/etc/resolv.conf`, so the server runs in a private mount namespace where
//! a temporary file is bind-mounted there; the machine's own file is never touched.

use std::time::Duration;

use sdnet_tests::{Dnsmasq, Ns, TempDir, require_root};

use super::{our_aardvark, stop_server};

#[test]
fn host_resolv_conf_rewrite_is_followed_at_once() {
    require_root();
    let ns = Ns::new("avr");
    let dir = TempDir::new("avr");
    let bin = TempDir::new("avbin");
    let exe = our_aardvark(bin.path());
    // Two upstreams knowing the same names with different addresses: the answer says which
    // one was asked.
    let records = |addr: &str| {
        ["first", "warm", "second"]
            .map(|n| format!("--host-record={n}.example,{addr}"))
            .to_vec()
    };
    let r1 = records("192.0.2.1");
    let r3 = records("192.0.2.3");
    let up1 = Dnsmasq::start(
        &ns,
        dir.path(),
        "127.0.0.1",
        53,
        &r1.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let up3 = Dnsmasq::start(
        &ns,
        dir.path(),
        "127.0.0.3",
        53,
        &r3.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let cfg = dir.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    // No network or container servers: forwarding uses the host's resolv.conf.
    std::fs::write(cfg.join("netr"), "127.0.0.2\nabc 127.0.0.5  web\n").unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();

    struct Stop<'a>(&'a std::path::Path, &'a Ns);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            stop_server(self.0, self.1);
        }
    }
    let _stop = Stop(&cfg, &ns);
    // `unshare -m` makes the mount private (util-linux's default propagation), so the bind
    // mount lives and dies with the server's mount namespace.
    let script = format!(
        "mount --bind '{}' /etc/resolv.conf && exec '{}' --config '{}' -p 5397 run",
        resolv.display(),
        exe.display(),
        cfg.display()
    );
    let out = ns
        .cmd("timeout", &["20", "unshare", "-m", "sh", "-c", &script])
        .output()
        .expect("starting the server");
    assert!(out.status.success(), "{out:?}");

    let ask = |name: &str| {
        ns.dig(&[
            "+tries=1",
            "+time=3",
            "-b",
            "127.0.0.5",
            "@127.0.0.2",
            "-p",
            "5397",
            name,
            "A",
        ])
    };
    assert_eq!(ask("first.example").sorted("A"), ["192.0.2.1"]);
    // A forward more than a second after the first: a server that polls the file has just
    // looked at it, so only a watch can see the rewrite below in time.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(ask("warm.example").sorted("A"), ["192.0.2.1"]);
    // Rewritten in place (through the file's other path, as a bind mount's source is).
    std::fs::write(&resolv, "nameserver 127.0.0.3\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let d = ask("second.example");
    assert_eq!(d.sorted("A"), ["192.0.2.3"], "{}", d.raw);
    assert_eq!(up3.queries_for("second.example"), 1);
    assert_eq!(up1.queries_for("second.example"), 0);
}
