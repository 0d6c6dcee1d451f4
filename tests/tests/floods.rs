//! Floods against the embedded resolver (issue 15 item 2), small and bounded: garbage
//! datagrams and malformed TCP mixed with valid queries, a storm of TCP connections from one
//! sandbox, slow-loris clients on several sandboxes at once. Valid queries must all be
//! answered, other sandboxes must not notice, and nothing may leak. The figures at the
//! server's saturation rate come from `tests/bench/floods.sh`.

use std::process::Output;
use std::time::Duration;

use sdnet_tests::{Daemon, wait_for};

const FLOOD: &str = env!("CARGO_BIN_EXE_flood");

/// `key=value` pairs of the flood tool's one-line report.
fn figures(out: &Output) -> std::collections::HashMap<String, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "flood failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(f: &std::collections::HashMap<String, String>, k: &str) -> u64 {
    f.get(k).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn garbage_and_malformed_tcp_never_cost_a_valid_query() {
    let d = Daemon::start("fgarb");
    d.ok(&["network", "create", "--subnet", "10.85.0.0/24", "n"]);
    for s in ["ga", "gb"] {
        d.ok(&["run", "-d", "--name", s, "--network", "n"]);
    }
    let (flood, udp, tcp) = std::thread::scope(|sc| {
        let flood = sc.spawn(|| d.exec("ga", &[FLOOD, "garbage", "127.0.0.11:53", "4", "2000"]));
        let udp = sc.spawn(|| d.exec("ga", &[FLOOD, "probe", "127.0.0.11:53", "3.5", "100", "gb"]));
        let tcp = sc.spawn(|| {
            d.exec(
                "ga",
                &[FLOOD, "probe", "127.0.0.11:53", "3.5", "20", "gb", "tcp"],
            )
        });
        (
            flood.join().expect("flood"),
            udp.join().expect("udp probe"),
            tcp.join().expect("tcp probe"),
        )
    });
    let (flood, udp, tcp) = (figures(&flood), figures(&udp), figures(&tcp));
    assert!(num(&flood, "datagrams") > 4_000, "{flood:?}");
    assert!(num(&flood, "tcp_streams") > 10, "{flood:?}");
    for p in [&udp, &tcp] {
        assert!(num(p, "sent") > 10, "{p:?}");
        assert_eq!(
            num(p, "answered"),
            num(p, "sent"),
            "valid queries lost: {p:?}"
        );
    }
    // The resolver is still whole: a name on the other sandbox answers at once.
    let ip = d.ip("ga", "n");
    let r = d.dig("gb", &["ga"]);
    assert_eq!(r.data("A"), [ip], "{}", r.raw);
}

#[test]
fn tcp_storm_and_slow_loris_stay_in_their_sandbox() {
    let d = Daemon::start("fstorm");
    d.ok(&["network", "create", "--subnet", "10.85.1.0/24", "n"]);
    for s in ["a", "b", "c", "q"] {
        d.ok(&["run", "-d", "--name", s, "--network", "n"]);
    }
    let fds_before = open_fds(d.pid);
    let (storm, loris_b, loris_c, udp_b, tcp_b, tcp_q) = std::thread::scope(|sc| {
        // 2,000 connections from a, 16 at a time, each asking one query.
        let storm = sc.spawn(|| d.exec("a", &[FLOOD, "storm", "127.0.0.11:53", "2000", "16", "q"]));
        // 200 half-sent queries held on b and on c (the cap is 64 per listener).
        let lb = sc.spawn(|| d.exec("b", &[FLOOD, "loris", "127.0.0.11:53", "200", "5"]));
        let lc = sc.spawn(|| d.exec("c", &[FLOOD, "loris", "127.0.0.11:53", "200", "5"]));
        std::thread::sleep(Duration::from_millis(500));
        // Meanwhile b's own UDP and TCP queries, and q's TCP queries.
        let ub = sc.spawn(|| d.exec("b", &[FLOOD, "probe", "127.0.0.11:53", "3", "50", "q"]));
        let tb = sc.spawn(|| {
            d.exec(
                "b",
                &[FLOOD, "probe", "127.0.0.11:53", "3", "10", "q", "tcp"],
            )
        });
        let tq = sc.spawn(|| {
            d.exec(
                "q",
                &[FLOOD, "probe", "127.0.0.11:53", "3", "20", "b", "tcp"],
            )
        });
        (
            storm.join().expect("storm"),
            lb.join().expect("loris b"),
            lc.join().expect("loris c"),
            ub.join().expect("probe"),
            tb.join().expect("probe"),
            tq.join().expect("probe"),
        )
    });
    let storm = figures(&storm);
    assert_eq!(num(&storm, "attempts"), 2000, "{storm:?}");
    assert_eq!(num(&storm, "answered"), 2000, "{storm:?}");
    for l in [figures(&loris_b), figures(&loris_c)] {
        // Slow clients are not turned away at once, but never hold more than the cap.
        assert!(num(&l, "opened") > 64, "{l:?}");
        assert!(num(&l, "still_open") <= 64, "{l:?}");
    }
    for p in [figures(&udp_b), figures(&tcp_b), figures(&tcp_q)] {
        assert!(num(&p, "sent") >= 10, "{p:?}");
        assert_eq!(
            num(&p, "answered"),
            num(&p, "sent"),
            "valid queries lost: {p:?}"
        );
    }
    // Nothing left open in the daemon once the clients are gone.
    let settled = wait_for(Duration::from_secs(20), || {
        (open_fds(d.pid) <= fds_before + 4).then_some(())
    });
    assert!(
        settled.is_some(),
        "descriptors: {fds_before} before, {} after",
        open_fds(d.pid)
    );
}
