//! Concurrent API clients: no update lost, no address shared, removals racing connects.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sdnet_tests::{Daemon, KillMarked, procs_with_env, unique, wait_for};
use serde_json::Value;

use crate::common::{Rng, ip_on, out_text, resolve_all, s};

#[test]
fn concurrent_clients_lose_no_update_and_share_no_address() {
    const THREADS: usize = 8;
    const CYCLES: usize = 15;
    let d = Daemon::start("rconc");
    d.ok(&["network", "create", "--subnet", "10.62.0.0/22", "n"]);
    // Every thread creates its sandboxes one after the other and removes all but every third
    // one — the previous one after creating the next, so removals and creations overlap.
    let keep = |i: usize| i % 3 == 2;
    let (kept, removed): (Vec<String>, Vec<String>) = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let d = &d;
                sc.spawn(move || {
                    let (mut kept, mut removed) = (Vec::new(), Vec::new());
                    let name = |i: usize| format!("c{t}x{i}");
                    for i in 0..=CYCLES {
                        if i < CYCLES {
                            let out = d.sdctl(&["run", "-d", "--name", &name(i), "--network", "n"]);
                            assert!(out.status.success(), "run {}: {}", name(i), out_text(&out));
                        }
                        if i > 0 {
                            let prev = name(i - 1);
                            if keep(i - 1) {
                                kept.push(prev);
                            } else {
                                let out = d.sdctl(&["rm", "-f", &prev]);
                                assert!(out.status.success(), "rm {prev}: {}", out_text(&out));
                                removed.push(prev);
                            }
                        }
                    }
                    (kept, removed)
                })
            })
            .collect();
        let mut k = Vec::new();
        let mut r = Vec::new();
        for h in handles {
            let (a, b) = h.join().expect("client thread");
            k.extend(a);
            r.extend(b);
        }
        (k, r)
    });
    assert_eq!(kept.len(), THREADS * CYCLES / 3);

    // Exactly the kept sandboxes exist, each with its own address.
    let ps = d.try_ps().unwrap();
    let names: BTreeSet<String> = ps.iter().map(|v| s(&v["name"])).collect();
    let want: BTreeSet<String> = kept.iter().cloned().collect();
    assert_eq!(names, want, "lost or resurrected sandboxes");
    let mut by_ip: BTreeMap<String, String> = BTreeMap::new();
    for sb in &ps {
        let ip = ip_on(sb, "n").unwrap_or_else(|| panic!("no address on n: {sb}"));
        assert!(ip.starts_with("10.62."), "{ip}");
        if let Some(other) = by_ip.insert(ip.clone(), s(&sb["name"])) {
            panic!("{ip} is both {other}'s and {}'s", sb["name"]);
        }
    }
    // The network's endpoints are exactly those.
    let net: Value = serde_json::from_str(&d.ok(&["network", "inspect", "n"])).unwrap();
    let eps: BTreeMap<String, String> = net[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (s(&e["ipv4"]), s(&e["sandbox"])))
        .collect();
    assert_eq!(eps, by_ip, "network inspect and ps disagree");
    // The kernel too: one namespace and one veth per kept sandbox (+ two bridges). Links of
    // removed sandboxes go in the background after `rm` returns: wait for them (bounded).
    assert_eq!(d.netns_mounts().len(), kept.len(), "{:?}", d.netns_mounts());
    let veths = || {
        d.our_links()
            .iter()
            .filter(|l| l.starts_with("sdv"))
            .count()
    };
    let settled = wait_for(Duration::from_secs(10), || {
        (veths() == kept.len()).then_some(())
    });
    assert!(
        settled.is_some(),
        "{} veths for {} sandboxes: {:?}",
        veths(),
        kept.len(),
        d.our_links()
    );
    // Every kept name answers from another sandbox with its address; no removed one does.
    let asker = &kept[0];
    let mut all: Vec<String> = kept[1..].to_vec();
    all.extend(removed.iter().cloned());
    let got = resolve_all(&d, asker, &all).unwrap();
    for n in &kept[1..] {
        let want_ip = by_ip.iter().find(|(_, v)| *v == n).unwrap().0;
        assert_eq!(got.get(n), Some(&vec![want_ip.clone()]), "{n}");
    }
    for n in &removed {
        assert_eq!(got.get(n), Some(&Vec::new()), "removed {n} still answers");
    }
    let last_ip = by_ip
        .iter()
        .find(|(_, v)| *v == kept.last().unwrap())
        .unwrap()
        .0;
    d.exec_ok(asker, &["ping", "-c1", "-W2", last_ip]);
}

#[test]
fn removals_racing_connects_and_new_tasks_leave_nothing_behind() {
    // A connect committed while a removal of the same sandbox was being decided must not
    // survive it as an endpoint (and an address) without a sandbox: that would hold the
    // network "in use" by nobody forever.
    const THREADS: usize = 4;
    const ROUNDS: usize = 12;
    let d = Daemon::start("rrace");
    let mark = format!("SDNET_TEST_MARK={}", unique());
    let _reaper = KillMarked(mark.clone());
    d.ok(&["network", "create", "--subnet", "10.63.1.0/24", "home"]);
    d.ok(&["network", "create", "--subnet", "10.63.2.0/24", "away"]);
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let d = &d;
            sc.spawn(move || {
                for i in 0..ROUNDS {
                    let name = format!("k{t}x{i}");
                    d.ok(&["run", "-d", "--name", &name, "--network", "home"]);
                    std::thread::scope(|inner| {
                        let n = name.clone();
                        inner.spawn(move || d.sdctl(&["network", "connect", "away", &n]));
                        // Either may come first; neither may leave half of the other behind.
                        let out = d.sdctl(&["rm", "-f", &name]);
                        assert!(out.status.success(), "rm -f {name}: {}", out_text(&out));
                    });
                }
            });
        }
    });
    assert!(d.try_ps().unwrap().is_empty(), "{}", d.ok(&["ps", "-a"]));
    let out = d.sdctl(&["network", "rm", "away"]);
    assert!(out.status.success(), "network rm away: {}", out_text(&out));

    // Likewise a service removed while the scheduler starts its tasks: no task (and no
    // process of one) outlives its service.
    std::thread::scope(|sc| {
        for t in 0..3u64 {
            let (d, mark) = (&d, &mark);
            sc.spawn(move || {
                let mut r = Rng::new(t + 1);
                for i in 0..10 {
                    let name = format!("w{t}x{i}");
                    d.ok(&[
                        "services",
                        "create",
                        "--name",
                        &name,
                        "--replicas",
                        "4",
                        "--network",
                        "home",
                        "--detach",
                        "-e",
                        mark,
                        "--",
                        "sleep",
                        "300",
                    ]);
                    // At a random point of the scheduler's work.
                    std::thread::sleep(Duration::from_millis(r.below(250)));
                    d.ok(&["services", "rm", &name]);
                }
            });
        }
    });
    let mut left = (Vec::new(), Vec::new());
    let clean = wait_for(Duration::from_secs(10), || {
        left = (d.try_ps().unwrap(), procs_with_env(&mark));
        (left.0.is_empty() && left.1.is_empty()).then_some(())
    });
    assert!(
        clean.is_some(),
        "tasks left: {:?}, processes left: {:?}",
        left.0.iter().map(|v| s(&v["name"])).collect::<Vec<_>>(),
        left.1
    );
    let out = d.sdctl(&["network", "rm", "home"]);
    assert!(out.status.success(), "network rm home: {}", out_text(&out));
}
