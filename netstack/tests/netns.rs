//! Namespaces: create/open/delete, running code inside, lo up, sysctls.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use common::*;
use sdnet_netstack::netns::{self, Netns};
use sdnet_netstack::sysctl;

#[test]
fn create_open_delete() {
    if !root() {
        return;
    }
    let lab = Lab::new();
    // Parent directories are created.
    let path = lab.dir.join("sub/dir/a");
    let ns = Netns::create(&path).unwrap();
    assert!(netns::is_netns(&path));
    assert!(mounted(&path));
    assert_eq!(ns.path(), path);

    // Idempotent: the same namespace comes back, no second mount.
    let again = Netns::create(&path).unwrap();
    assert_eq!(ns_ino(&ns), ns_ino(&again));
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy();
    assert_eq!(
        info.lines()
            .filter(|l| l.split_whitespace().nth(4) == Some(p.as_ref()))
            .count(),
        1
    );
    assert_eq!(ns_ino(&Netns::open(&path).unwrap()), ns_ino(&ns));

    // It is not ours.
    let here = Netns::current().unwrap();
    assert_ne!(ns_ino(&here), ns_ino(&ns));

    // Code runs inside it.
    let inside = ns
        .run(|| Netns::current().map(|n| ns_ino(&n)))
        .unwrap()
        .unwrap();
    assert_eq!(inside, ns_ino(&ns));
    // …and this thread did not move.
    assert_eq!(ns_ino(&Netns::current().unwrap()), ns_ino(&here));

    // list_netns sees namespace files only.
    std::fs::write(lab.dir.join("sub/dir/plain"), b"").unwrap();
    assert_eq!(
        netns::list_netns(&lab.dir.join("sub/dir")).unwrap(),
        vec![path.clone()]
    );
    assert!(
        netns::list_netns(&lab.dir.join("missing"))
            .unwrap()
            .is_empty()
    );
    assert!(!netns::is_netns(&lab.dir.join("sub/dir/plain")));
    assert!(!netns::is_netns(&lab.dir.join("nothing")));
    assert!(Netns::open(&lab.dir.join("sub/dir/plain")).is_err());
    // A namespace of another type is not a network namespace.
    assert!(!netns::is_netns(Path::new("/proc/self/ns/mnt")));
    assert!(Netns::open(Path::new("/proc/self/ns/mnt")).is_err());

    // Delete: no mount, no file; again is fine. The open handle stays usable.
    Netns::delete(&path).unwrap();
    assert!(!mounted(&path));
    assert!(!path.exists());
    Netns::delete(&path).unwrap();
    assert!(ns.run(|| 7).unwrap() == 7);
}

#[test]
fn bind_adopts_an_existing_namespace() {
    if !root() {
        return;
    }
    let lab = Lab::new();
    let a = lab.ns("a");
    let b_path = lab.path("b");
    let b = Netns::bind(a.path(), &b_path).unwrap();
    assert_eq!(ns_ino(&a), ns_ino(&b));
    assert!(Netns::bind(a.path(), &b_path).is_ok());
    Netns::delete(&b_path).unwrap();
    assert!(!mounted(&b_path));
    assert!(Netns::bind(&lab.path("missing"), &b_path).is_err());
    assert!(!b_path.exists());
}

/// lo is up in a new namespace, so a socket on 127.0.0.11 answers from 127.0.0.11.
#[test]
fn lo_is_up_and_replies_come_from_the_bound_address() {
    if !root() {
        return;
    }
    let lab = Lab::new();
    let ns = lab.ns("dns");
    let up = out_in(ns.path(), &["ip", "-o", "link", "show", "lo"]);
    assert!(up.contains("UP"), "{up}");
    let r = ns
        .run(|| -> std::io::Result<_> {
            let server = UdpSocket::bind("127.0.0.11:0")?;
            let client = UdpSocket::bind("127.0.0.1:0")?;
            client.set_read_timeout(Some(Duration::from_secs(2)))?;
            server.set_read_timeout(Some(Duration::from_secs(2)))?;
            client.send_to(b"q", server.local_addr()?)?;
            let mut buf = [0u8; 8];
            let (_, from) = server.recv_from(&mut buf)?;
            server.send_to(b"a", from)?;
            let (_, reply_from) = client.recv_from(&mut buf)?;
            Ok(reply_from.ip())
        })
        .unwrap()
        .unwrap();
    assert_eq!(r.to_string(), "127.0.0.11");
}

#[test]
fn sysctl_set_get_inside_only() {
    if !root() {
        return;
    }
    let lab = Lab::new();
    let ns = lab.ns("s");
    let root_fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let root_lo = std::fs::read_to_string("/proc/sys/net/ipv4/conf/lo/route_localnet").unwrap();

    // A new namespace may inherit ip_forward from the initial one (a daemon on this host may
    // have turned it on): set the opposite of the root's value, so both the change inside and
    // the unchanged root are visible whatever the host's state.
    let want = if root_fwd.trim() == "1" { "0" } else { "1" };
    for _ in 0..2 {
        sysctl::set(&ns, "net.ipv4.ip_forward", want).unwrap();
    }
    assert_eq!(sysctl::get(&ns, "net.ipv4.ip_forward").unwrap(), want);
    sysctl::set(&ns, "net/ipv4/conf/lo/route_localnet", "1").unwrap();
    assert_eq!(
        sysctl::get(&ns, "net.ipv4.conf.lo.route_localnet").unwrap(),
        "1"
    );
    assert!(sysctl::set(&ns, "net.ipv4.no_such_key", "1").is_err());
    assert!(sysctl::set(&ns, "net/../../etc/x", "1").is_err());

    // The root namespace did not change.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_fwd
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/lo/route_localnet").unwrap(),
        root_lo
    );
}
