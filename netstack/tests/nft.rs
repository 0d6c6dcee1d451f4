//! nftables inside namespaces: apply/list/delete, atomicity, errors, both backends, the root
//! namespace untouched, and the cost of an apply.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sdnet_netstack::nft::{self, Backend, Nft};

/// `nft list tables` of the root namespace (read only).
fn root_tables() -> String {
    let o = std::process::Command::new("timeout")
        .args(["10", "nft", "list", "tables"])
        .output()
        .expect("running nft");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn table_name() -> String {
    format!("snt_{}", uniq().replace('-', "_"))
}

const RULESET: &str = r#"
table ip NAME {
    set vips {
        type ipv4_addr . inet_service
        elements = { 10.0.0.5 . 80 }
    }
    chain pre {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr . tcp dport @vips dnat to numgen inc mod 2 map { 0 : 10.1.0.2, 1 : 10.1.0.3 }
    }
    chain out {
        type filter hook output priority 0; policy accept;
        ip daddr 10.9.9.9 counter drop
    }
}
"#;

#[test]
fn apply_list_delete_in_a_namespace() {
    if !root() {
        return;
    }
    let before = root_tables();
    let lab = Lab::new();
    let ns = lab.ns("fw");
    let name = table_name();
    let text = RULESET.replace("NAME", &name);

    assert_eq!(Nft::list_table(&ns, "ip", &name).unwrap(), None);
    for _ in 0..2 {
        Nft::apply(&ns, &text).unwrap();
    }
    assert!(
        Nft::list_tables(&ns)
            .unwrap()
            .contains(&("ip".to_string(), name.clone()))
    );
    let listed = Nft::list_table(&ns, "ip", &name).unwrap().unwrap();
    assert!(listed.contains("numgen inc mod 2"), "{listed}");
    assert!(listed.contains("10.0.0.5 . 80"), "{listed}");

    // Several commands, one transaction: flush the set, add elements, replace a chain.
    Nft::apply(
        &ns,
        &format!(
            "flush set ip {name} vips\n\
             add element ip {name} vips {{ 10.0.0.6 . 443, 10.0.0.7 . 53 }}\n\
             flush chain ip {name} out; add rule ip {name} out ip daddr 10.8.8.8 drop"
        ),
    )
    .unwrap();
    let listed = Nft::list_table(&ns, "ip", &name).unwrap().unwrap();
    assert!(!listed.contains("10.0.0.5 . 80"), "{listed}");
    assert!(listed.contains("10.0.0.6 . 443"), "{listed}");
    assert!(listed.contains("10.8.8.8"), "{listed}");
    assert!(!listed.contains("10.9.9.9"), "{listed}");

    // Atomic: a failing command leaves nothing of the transaction behind.
    let other = table_name();
    let err = Nft::apply(
        &ns,
        &format!("add table ip {other}\nadd chain ip {other}_missing c"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("Error"), "{err}");
    assert_eq!(Nft::list_table(&ns, "ip", &other).unwrap(), None);

    // Errors carry nft's text.
    let err = Nft::apply(&ns, "add tabel ip x").unwrap_err();
    assert!(err.to_string().contains("syntax error"), "{err}");

    // The free-function API is the same thing.
    nft::apply(&ns, &format!("delete table ip {name}")).unwrap();
    assert_eq!(nft::list_table(&ns, "ip", &name).unwrap(), None);
    assert!(nft::list_tables(&ns).unwrap().is_empty());
    assert!(Nft::list_table(&ns, "ip", "bad name").is_err());

    // Tables live and die with the namespace; the root namespace never saw any of this.
    assert_eq!(root_tables(), before);
    assert!(!root_tables().contains(&name));
}

#[test]
fn binary_backend_matches_library() {
    if !root() {
        return;
    }
    assert_eq!(
        Nft::backend(),
        Backend::Library,
        "libnftables should load here"
    );
    let lab = Lab::new();
    let ns = lab.ns("fw");
    let name = table_name();
    Nft::apply_with(&ns, &RULESET.replace("NAME", &name), Backend::Binary).unwrap();
    let listed = Nft::list_table(&ns, "ip", &name).unwrap().unwrap();
    assert!(listed.contains("numgen inc mod 2"), "{listed}");
    let err = Nft::apply_with(&ns, "add tabel ip x", Backend::Binary).unwrap_err();
    assert!(err.to_string().contains("syntax error"), "{err}");
    Nft::apply_with(&ns, &format!("delete table ip {name}"), Backend::Library).unwrap();
    assert!(Nft::list_tables(&ns).unwrap().is_empty());
}

/// Applies from several threads into several namespaces at once (libnftables has global
/// state; calls are serialized inside).
#[test]
fn concurrent_applies() {
    if !root() {
        return;
    }
    let lab = Lab::new();
    let spaces: Vec<_> = (0..4).map(|i| lab.ns(&format!("c{i}"))).collect();
    std::thread::scope(|s| {
        for ns in &spaces {
            s.spawn(move || {
                for i in 0..20 {
                    Nft::apply(ns, &format!("add table inet t{i}\nadd chain inet t{i} c")).unwrap();
                }
            });
        }
    });
    for ns in &spaces {
        assert_eq!(Nft::list_tables(ns).unwrap().len(), 20);
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Not an assertion: prints what an apply costs (run with --nocapture to see it).
#[test]
fn apply_timing() {
    if !root() {
        return;
    }
    let lab = Lab::new();
    let ns = lab.ns("t");
    let name = table_name();
    Nft::apply(&ns, &RULESET.replace("NAME", &name)).unwrap();
    let mut lib = Vec::new();
    for i in 0..50 {
        let t = Instant::now();
        Nft::apply(
            &ns,
            &format!("add element ip {name} vips {{ 10.0.1.{i} . 80 }}"),
        )
        .unwrap();
        lib.push(t.elapsed());
    }
    let mut bin = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        Nft::apply_with(
            &ns,
            &format!("add element ip {name} vips {{ 10.0.2.{i} . 80 }}"),
            Backend::Binary,
        )
        .unwrap();
        bin.push(t.elapsed());
    }
    // The daemon's usual pattern: replace a whole table atomically (the delete is what makes
    // the socket release slow, which the reaper takes off this path).
    let mut replace = Vec::new();
    let full = RULESET.replace("NAME", &name);
    for _ in 0..20 {
        let t = Instant::now();
        Nft::apply(
            &ns,
            &format!("table ip {name} {{}}\ndelete table ip {name}\n{full}"),
        )
        .unwrap();
        replace.push(t.elapsed());
    }
    let lib_max = lib.iter().max().copied().unwrap_or_default();
    eprintln!(
        "nft apply (libnftables, including the namespace thread): median over 50 element adds \
         {:?} (max {:?}); median over 20 whole-table replacements {:?}; \
         nft binary: median over 10 {:?}",
        median(lib),
        lib_max,
        median(replace),
        median(bin)
    );
}

/// A context kept for reuse must not keep a deleted namespace (and its links) alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_contexts_do_not_pin_deleted_namespaces() {
    use sdnet_netstack::link::Netlink;
    use sdnet_netstack::netns::Netns;

    if !root() {
        return;
    }
    let lab = Lab::new();
    let host = lab.ns("host");
    let hnl = Netlink::connect(&host).await.unwrap();
    let gone = |name: &'static str| {
        let hnl = hnl.clone();
        move || {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(hnl.link_index(name))
            })
            .unwrap()
            .is_none()
        }
    };

    // Deleted through Netns::delete: freed at once, well before the idle sweep.
    {
        let sb = lab.ns("a");
        hnl.create_veth("pa", "eth0", Some(&sb)).await.unwrap();
        Nft::apply(&sb, "table ip t {}\ndelete table ip t\ntable ip t {}").unwrap();
    }
    Netns::delete(&lab.path("a")).unwrap();
    assert!(
        wait_for(Duration::from_millis(1500), gone("pa")),
        "namespace pinned after Netns::delete"
    );

    // Unmounted behind our back: the idle sweep lets it go within seconds.
    let b = lab.path("b");
    {
        let sb = lab.ns("b");
        hnl.create_veth("pb", "eth0", Some(&sb)).await.unwrap();
        Nft::apply(&sb, "add table ip t").unwrap();
    }
    assert_eq!(
        nix::mount::umount2(&b, nix::mount::MntFlags::MNT_DETACH),
        Ok(())
    );
    assert!(
        wait_for(Duration::from_secs(10), gone("pb")),
        "namespace pinned by an idle context"
    );

    // Nft::forget frees on demand.
    let d = lab.ns("d");
    Nft::apply(&d, "add table ip t").unwrap();
    Nft::forget(&d);
    Nft::forget(&d);
    assert_eq!(Nft::list_tables(&d).unwrap().len(), 1);
}
