//! `sdctl dns serve` end to end: the real binary in a throw-away namespace, queried with real
//! dig and kdig, forwarding to real dnsmasq upstreams (alive, refusing, stopped = slow), to a
//! real BIND (TSIG), and to small fixtures for what those cannot be made to do (SERVFAIL, never
//! answering, malformed or oversized replies, COOKIE/NSID options, the AD bit).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sdnet_tests::{
    Dig, Dnsmasq, Ns, TempDir, fixed_rcode_upstream, sdctl, silent_upstream, wait_for,
};
use serde_json::json;

/// The forwarding path against scripted upstreams and BIND (checks, truncation, EDNS, AD,
/// TSIG).
#[path = "dns_serve/forwarding.rs"]
mod forwarding;

fn id(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

fn state() -> serde_json::Value {
    json!({
        "networks": [
            {"id": "n1", "name": "net1"},
            {"id": "n2", "name": "net2"},
            {"id": "n3", "name": "inner", "internal": true},
        ],
        "services": [
            {"id": "s1", "name": "web", "networks": [{"network": "n1", "vip": "10.1.0.100"}],
             "ports": [{"name": "http", "port": 80, "protocol": "tcp"}]},
        ],
        "sandboxes": [
            {"id": id(1), "name": "a", "hostname": "alpha",
             "endpoints": [{"network": "n1", "ipv4": "10.1.0.2", "aliases": ["db"]}]},
            {"id": id(2), "name": "b",
             "endpoints": [{"network": "n1", "ipv4": "10.1.0.3", "ipv6": "fd00:1::3", "aliases": ["db"]},
                           {"network": "n2", "ipv4": "10.2.0.3"}]},
            {"id": id(3), "name": "c", "endpoints": [{"network": "n2", "ipv4": "10.2.0.4"}]},
            {"id": id(4), "name": "i", "endpoints": [{"network": "n3", "ipv4": "10.3.0.2"}]},
            {"id": id(10), "name": "web.1.t1", "task": {"service": "s1", "slot": 1},
             "endpoints": [{"network": "n1", "ipv4": "10.1.0.10"}]},
            {"id": id(11), "name": "web.2.t2", "task": {"service": "s1", "slot": 2},
             "endpoints": [{"network": "n1", "ipv4": "10.1.0.11"}]},
        ]
    })
}

/// A running `sdctl dns serve` on 127.0.0.1:53 inside `ns`.
struct Serve<'a> {
    ns: &'a Ns,
    pid: u32,
    state: std::path::PathBuf,
    log: std::path::PathBuf,
}

fn serve<'a>(ns: &'a Ns, dir: &TempDir, st: &serde_json::Value, extra: &[&str]) -> Serve<'a> {
    let state = dir.path().join("state.json");
    std::fs::write(&state, st.to_string()).unwrap();
    let log = dir.path().join("serve.log");
    let mut args = vec![
        "dns",
        "serve",
        "--state",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:53",
    ];
    args.extend_from_slice(extra);
    let mut cmd = ns.cmd(sdctl(), &args);
    cmd.env("RUST_LOG", "info,sdnet_resolver=debug");
    let pid = ns.spawn(cmd, Some(&log));
    // "serving" is logged once both sockets are bound.
    wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("serving")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "sdctl dns serve did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    Serve {
        ns,
        pid,
        state,
        log,
    }
}

impl Serve<'_> {
    fn dig(&self, args: &[&str]) -> Dig {
        let mut a = vec!["@127.0.0.1", "+tries=1", "+time=4"];
        a.extend_from_slice(args);
        self.ns.dig(&a)
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[test]
fn answers_local_names_with_dig_and_kdig() {
    let ns = Ns::new("dnsa");
    let dir = TempDir::new("dnsa");
    let s = serve(
        &ns,
        &dir,
        &state(),
        &["--as", "a", "--upstream", "127.0.0.9:9"],
    );

    let d = s.dig(&["b"]);
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.data("A"), ["10.1.0.3"]);
    assert!(
        d.has_flag("aa") && d.has_flag("ra") && d.has_flag("rd"),
        "{:?}",
        d.flags
    );
    assert!(d.opt, "EDNS echoed (dig sends EDNS by default)");
    assert!(
        !s.dig(&["b", "+noedns"]).opt,
        "no OPT without EDNS in the query"
    );
    // Case kept, hostname, short ID, alias with several holders.
    let d = s.dig(&["ALPHA"]);
    assert_eq!(d.answer[0].name, "ALPHA.");
    assert_eq!(d.data("A"), ["10.1.0.2"]);
    assert_eq!(s.dig(&["010101010101"]).data("A"), ["10.1.0.2"]);
    assert_eq!(s.dig(&["db"]).sorted("A"), ["10.1.0.2", "10.1.0.3"]);
    // AAAA and NODATA.
    assert_eq!(s.dig(&["b", "AAAA"]).data("AAAA"), ["fd00:1::3"]);
    let d = s.dig(&["alpha", "AAAA"]);
    assert_eq!(d.status, "NOERROR");
    assert!(d.answer.is_empty());
    assert_eq!(d.authority[0].rtype, "SOA");
    // Services: VIP, tasks, SRV with additional records, PTR of VIP and sandbox.
    let d = s.dig(&["web"]);
    assert_eq!(d.data("A"), ["10.1.0.100"]);
    assert_eq!(d.answer[0].ttl, 600);
    assert_eq!(
        s.dig(&["tasks.web"]).sorted("A"),
        ["10.1.0.10", "10.1.0.11"]
    );
    let d = s.dig(&["_http._tcp.web", "SRV"]);
    let mut srv = d.data("SRV");
    srv.sort();
    assert_eq!(srv, ["0 1 80 web.1.t1.net1.", "0 1 80 web.2.t2.net1."]);
    assert_eq!(d.additional.iter().filter(|r| r.rtype == "A").count(), 2);
    assert_eq!(s.dig(&["-x", "10.1.0.3"]).data("PTR"), ["b.net1."]);
    assert_eq!(s.dig(&["-x", "10.1.0.100"]).data("PTR"), ["web.net1."]);
    // TCP.
    let d = s.dig(&["+tcp", "b.net1"]);
    assert_eq!(d.data("A"), ["10.1.0.3"]);
    // Names on a network a does not share never resolve to that network's address: they are
    // forwarded (to a dead upstream here, so SERVFAIL).
    let d = s.dig(&["c"]);
    assert_eq!(d.status, "SERVFAIL");
    assert!(d.answer.is_empty());
    assert_eq!(s.dig(&["b.net2"]).status, "SERVFAIL");

    // kdig: UDP, TCP, several queries on one TCP connection.
    let k = ns.kdig(&["@127.0.0.1", "b", "A"]);
    assert_eq!(k.data("A"), ["10.1.0.3"]);
    let k = ns.kdig(&["@127.0.0.1", "+tcp", "-x", "10.1.0.10"]);
    assert_eq!(k.data("PTR"), ["web.1.t1.net1."]);
    let out = ns.run_ok(
        "kdig",
        &[
            "@127.0.0.1",
            "+tcp",
            "+keepopen",
            "b",
            "A",
            "alpha",
            "A",
            "web",
            "A",
        ],
    );
    for want in ["10.1.0.3", "10.1.0.2", "10.1.0.100"] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
}

#[test]
fn truncation_at_512_and_edns_size() {
    let ns = Ns::new("dnst");
    let dir = TempDir::new("dnst");
    let mut st = state();
    let sbs = st["sandboxes"].as_array_mut().unwrap();
    for i in 0..60u8 {
        sbs.push(json!({"id": id(100 + i), "name": format!("m{i}"),
            "endpoints": [{"network": "n1", "ipv4": format!("10.1.1.{}", i + 1), "aliases": ["many"]}]}));
    }
    let s = serve(&ns, &dir, &st, &["--as", "a", "--upstream", "127.0.0.9:9"]);
    let d = s.dig(&["many", "+noedns", "+ignore"]);
    assert!(d.has_flag("tc"), "{:?}", d.flags);
    assert!(d.answer.len() < 60);
    let d = s.dig(&["many", "+bufsize=600", "+ignore"]);
    assert!(d.has_flag("tc"));
    let d = s.dig(&["many", "+bufsize=4096"]);
    assert!(!d.has_flag("tc"));
    assert_eq!(d.answer.len(), 60);
    // dig retries over TCP by itself when TC is set.
    assert_eq!(s.dig(&["many", "+noedns"]).answer.len(), 60);
}

#[test]
fn scoping_by_source_address() {
    let ns = Ns::new("dnss");
    let dir = TempDir::new("dnss");
    for ip in ["10.1.0.2/32", "10.2.0.4/32", "10.3.0.2/32"] {
        ns.run_ok("ip", &["addr", "add", ip, "dev", "lo"]);
    }
    let up = fixed_rcode_upstream(&ns, "127.0.0.5:53", 3);
    let s = serve(&ns, &dir, &state(), &["--upstream", &up.to_string()]);
    // From a (net1): b's net1 address. From c (net2): b's net2 address.
    assert_eq!(s.dig(&["-b", "10.1.0.2", "b"]).data("A"), ["10.1.0.3"]);
    assert_eq!(s.dig(&["-b", "10.2.0.4", "b"]).data("A"), ["10.2.0.3"]);
    // c cannot see a; an unknown source sees nothing local.
    assert_eq!(s.dig(&["-b", "10.2.0.4", "a"]).status, "NXDOMAIN");
    assert_eq!(s.dig(&["-b", "127.0.0.1", "b"]).status, "NXDOMAIN");
    // i is only on an internal network: NXDOMAIN from us, RA=0, nothing forwarded.
    let d = s.dig(&["-b", "10.3.0.2", "example.com"]);
    assert_eq!(d.status, "NXDOMAIN");
    assert!(d.has_flag("aa") && !d.has_flag("ra"));
}

#[test]
fn forwarding_relays_and_caches() {
    let ns = Ns::new("dnsf");
    let dir = TempDir::new("dnsf");
    let up = Dnsmasq::start(
        &ns,
        dir.path(),
        "127.0.0.5",
        53,
        &[
            "--local-ttl=60",
            "--host-record=ok.example,192.0.2.7",
            "--local=/example/",
        ],
    );
    let s = serve(
        &ns,
        &dir,
        &state(),
        &["--as", "a", "--upstream", "127.0.0.5"],
    );
    let d = s.dig(&["OK.example"]);
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.data("A"), ["192.0.2.7"]);
    assert_eq!(d.answer[0].name, "OK.example.", "client's case");
    // Second time from the cache: dnsmasq sees one query only.
    let d = s.dig(&["ok.example"]);
    assert_eq!(d.data("A"), ["192.0.2.7"]);
    assert!(d.answer[0].ttl <= 60);
    assert_eq!(
        up.queries_for("OK.example") + up.queries_for("ok.example"),
        1
    );
    // NXDOMAIN relayed as such, over UDP and TCP.
    assert_eq!(s.dig(&["nope.example"]).status, "NXDOMAIN");
    assert_eq!(s.dig(&["+tcp", "nope2.example"]).status, "NXDOMAIN");
    // Local names never go upstream.
    s.dig(&["b"]);
    assert_eq!(up.queries_for("b"), 0);
    assert!(s.log().contains("serving"));
}

#[test]
fn failover_dead_refused_servfail_then_alive() {
    let ns = Ns::new("dnso");
    let dir = TempDir::new("dnso");
    let _refusing = Dnsmasq::start(&ns, dir.path(), "127.0.0.6", 53, &[]);
    let servfail = fixed_rcode_upstream(&ns, "127.0.0.7:53", 2);
    let alive = Dnsmasq::start(
        &ns,
        dir.path(),
        "127.0.0.8",
        53,
        &["--host-record=x.example,192.0.2.9", "--local=/example/"],
    );
    // 127.0.0.9:53 has nothing listening (dead), .6 REFUSES, .7 SERVFAILs, .8 answers.
    let s = serve(
        &ns,
        &dir,
        &state(),
        &[
            "--as",
            "a",
            "--upstream",
            "127.0.0.9",
            "--upstream",
            "127.0.0.6",
            "--upstream",
            &servfail.to_string(),
            "--upstream",
            "127.0.0.8",
        ],
    );
    let d = s.dig(&["x.example"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.data("A"), ["192.0.2.9"]);
    assert_eq!(alive.queries_for("x.example"), 1);
    // NXDOMAIN from the alive server is relayed, not failed over.
    assert_eq!(s.dig(&["y.example"]).status, "NXDOMAIN");
}

#[test]
fn slow_and_silent_upstreams_stay_within_budget() {
    let ns = Ns::new("dnsw");
    let dir = TempDir::new("dnsw");
    let slow = Dnsmasq::start(
        &ns,
        dir.path(),
        "127.0.0.5",
        53,
        &["--host-record=s.example,192.0.2.5", "--local=/example/"],
    );
    let (_hole, hole) = silent_upstream(&ns, "127.0.0.6:53");
    // Only a black hole: SERVFAIL within the budget, well before dig's 4 s timeout.
    let s = serve(
        &ns,
        &dir,
        &state(),
        &[
            "--as",
            "a",
            "--upstream",
            &hole.to_string(),
            "--forward-budget",
            "1s",
        ],
    );
    let d = s.dig(&["z.example"]);
    assert_eq!(d.status, "SERVFAIL");
    drop(s);

    // A stopped (slow) dnsmasq answers once resumed, inside the budget.
    let dir2 = TempDir::new("dnsw2");
    let ns2 = &ns;
    let s2 = {
        let state = dir2.path().join("state.json");
        std::fs::write(&state, state_json()).unwrap();
        let mut cmd = ns2.cmd(
            sdctl(),
            &[
                "dns",
                "serve",
                "--state",
                state.to_str().unwrap(),
                "--listen",
                "127.0.0.1:5300",
                "--as",
                "a",
                "--upstream",
                "127.0.0.5",
                "--forward-budget",
                "3s",
            ],
        );
        cmd.env("RUST_LOG", "info");
        ns2.spawn(cmd, Some(&dir2.path().join("log")))
    };
    wait_for(Duration::from_secs(10), || {
        let out = ns.run(
            "dig",
            &["+tries=1", "+time=1", "@127.0.0.1", "-p", "5300", "b"],
        );
        String::from_utf8_lossy(&out.stdout)
            .contains("10.1.0.3")
            .then_some(())
    })
    .expect("second server up");
    slow.signal(libc::SIGSTOP);
    let resume = std::thread::spawn({
        let pid = slow.pid;
        move || {
            std::thread::sleep(Duration::from_millis(700));
            // SAFETY: resuming the dnsmasq this test stopped.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        }
    });
    let d = ns.dig(&[
        "@127.0.0.1",
        "-p",
        "5300",
        "+tries=1",
        "+time=5",
        "s.example",
    ]);
    resume.join().unwrap();
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.data("A"), ["192.0.2.5"]);
    ns.stop(s2);
}

fn state_json() -> String {
    state().to_string()
}

#[test]
fn inflight_bound_gives_refused_fast() {
    let ns = Ns::new("dnsl");
    let dir = TempDir::new("dnsl");
    let (_hole, hole) = silent_upstream(&ns, "127.0.0.6:53");
    // Held to keep the server running until the end of the test.
    let _server = serve(
        &ns,
        &dir,
        &state(),
        &[
            "--as",
            "a",
            "--upstream",
            &hole.to_string(),
            "--max-inflight",
            "2",
            "--forward-budget",
            "6s",
        ],
    );
    // Two queries occupy the slots (the upstream never answers); the next is refused at once.
    let mut bg = Vec::new();
    for n in ["q1.example", "q2.example"] {
        bg.push(
            ns.cmd("dig", &["@127.0.0.1", "+tries=1", "+time=8", n])
                .spawn()
                .unwrap(),
        );
    }
    let refused = wait_for(Duration::from_secs(4), || {
        let d = ns.try_dig(&["@127.0.0.1", "+tries=1", "+time=1", "q3.example"])?;
        (d.status == "REFUSED").then_some(d)
    });
    assert!(refused.is_some(), "no REFUSED past the in-flight bound");
    for mut c in bg {
        let _ = c.wait();
    }
}

#[test]
fn reload_on_sighup_keeps_sockets() {
    let ns = Ns::new("dnsr");
    let dir = TempDir::new("dnsr");
    let s = serve(
        &ns,
        &dir,
        &state(),
        &["--as", "a", "--upstream", "127.0.0.9:9"],
    );
    assert_eq!(s.dig(&["newbie"]).status, "SERVFAIL");
    let mut st = state();
    st["sandboxes"].as_array_mut().unwrap().push(json!({
        "id": id(50), "name": "newbie", "endpoints": [{"network": "n1", "ipv4": "10.1.0.50"}]}));
    std::fs::write(&s.state, st.to_string()).unwrap();
    // SAFETY: signalling the server this test started.
    unsafe { libc::kill(s.pid as i32, libc::SIGHUP) };
    let ok = wait_for(Duration::from_secs(5), || {
        let d = s.dig(&["newbie"]);
        (d.data("A") == ["10.1.0.50"]).then_some(())
    });
    assert!(ok.is_some(), "reload did not take effect:\n{}", s.log());
    // A broken file keeps the old state.
    std::fs::write(&s.state, "{ not json").unwrap();
    unsafe { libc::kill(s.pid as i32, libc::SIGHUP) };
    wait_for(Duration::from_secs(5), || {
        s.log().contains("reload failed").then_some(())
    })
    .expect("reload failure logged");
    assert_eq!(s.dig(&["newbie"]).data("A"), ["10.1.0.50"]);
}

/// A burst from one socket is answered in batches, replies of one size to one destination
/// as one UDP GSO send: every reply must still arrive whole, as its own datagram.
#[test]
fn bursts_from_one_socket_get_every_reply_intact() {
    let ns = Ns::new("dnsb");
    let dir = TempDir::new("dnsb");
    let s = serve(
        &ns,
        &dir,
        &state(),
        &["--as", "a", "--upstream", "127.0.0.9:9", "--threads", "1"],
    );
    let sock = ns.udp("127.0.0.1:0");
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // (name, answers): three reply sizes, so several groups per batch.
    let names: [(&str, u16); 4] = [("db", 2), ("alpha", 1), ("web", 1), ("tasks.web", 2)];
    let query = |id: u16, name: &str| {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    };
    for round in 0..3u16 {
        // Stopped, the server lets the whole burst queue up; resumed, it reads it in batches.
        // SAFETY: signalling the server this test started.
        unsafe { libc::kill(s.pid as i32, libc::SIGSTOP) };
        for i in 0..100u16 {
            let id = round * 1000 + i;
            sock.send_to(&query(id, names[i as usize % 4].0), "127.0.0.1:53")
                .unwrap();
        }
        // SAFETY: as above.
        unsafe { libc::kill(s.pid as i32, libc::SIGCONT) };
        let mut seen = std::collections::BTreeSet::new();
        let mut buf = [0u8; 4096];
        while seen.len() < 100 {
            let (n, _) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("round {round}: {} of 100 replies: {e}", seen.len()));
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            let i = id - round * 1000;
            let (name, answers) = names[i as usize % 4];
            let q = query(id, name);
            // Same ID and question, NOERROR, the right number of answers, nothing glued on:
            // an answer record here is 16 bytes (pointer, type, class, TTL, length, IPv4).
            assert_eq!(&buf[4..6], &[0, 1], "reply {id}: one question");
            assert_eq!(
                &buf[12..q.len()],
                &q[12..],
                "reply {id} asks something else"
            );
            assert_eq!(buf[3] & 0xF, 0, "reply {id}: rcode");
            assert_eq!(u16::from_be_bytes([buf[6], buf[7]]), answers, "reply {id}");
            assert_eq!(
                n,
                q.len() + 16 * answers as usize,
                "reply {id} is {n} bytes"
            );
            assert!(seen.insert(id), "reply {id} twice");
        }
    }
}

#[test]
fn malformed_input_never_breaks_the_server() {
    let ns = Ns::new("dnsm");
    let dir = TempDir::new("dnsm");
    let s = serve(
        &ns,
        &dir,
        &state(),
        &["--as", "a", "--upstream", "127.0.0.9:9"],
    );
    let sock = ns.udp("127.0.0.1:0");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let server = "127.0.0.1:53";
    let mut buf = [0u8; 4096];
    // Runt: dropped.
    sock.send_to(&[1, 2, 3], server).unwrap();
    assert!(sock.recv_from(&mut buf).is_err(), "runt answered");
    // QR=1 (a response): dropped, so no reflection loops.
    let mut resp = vec![
        0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'b', 0, 0, 1, 0, 1,
    ];
    sock.send_to(&resp, server).unwrap();
    assert!(sock.recv_from(&mut buf).is_err(), "response answered");
    // Opcode STATUS: NOTIMP.
    resp[2] = 0x10;
    sock.send_to(&resp, server).unwrap();
    let (n, _) = sock.recv_from(&mut buf).expect("NOTIMP reply");
    assert!(n >= 12 && buf[3] & 0xF == 4 && buf[0..2] == [0x12, 0x34]);
    // Opcode 15 with RD and CD set: NOTIMP with RD and CD cleared (BIND does; ISC genreport's
    // `opcodeflg` checks it), the opcode echoed.
    resp[2] = (15 << 3) | 0x01;
    resp[3] = 0x10;
    sock.send_to(&resp, server).unwrap();
    let (n, _) = sock.recv_from(&mut buf).expect("NOTIMP reply");
    assert!(n >= 12 && buf[3] & 0xF == 4, "{:?}", &buf[..n]);
    assert_eq!(
        buf[2],
        0x80 | (15 << 3),
        "QR and opcode only: {:#04x}",
        buf[2]
    );
    assert_eq!(
        buf[3] & 0xF0,
        0,
        "CD (or anything else) echoed: {:#04x}",
        buf[3]
    );
    // Two questions: FORMERR.
    let mut two = vec![0x55, 0x66, 0x01, 0x00, 0, 2, 0, 0, 0, 0, 0, 0];
    two.extend_from_slice(&[1, b'b', 0, 0, 1, 0, 1, 1, b'c', 0, 0, 1, 0, 1]);
    sock.send_to(&two, server).unwrap();
    let (n, _) = sock.recv_from(&mut buf).expect("FORMERR reply");
    assert!(n >= 12 && buf[3] & 0xF == 1);
    // A name running off the end of the packet: FORMERR.
    sock.send_to(&[0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'x'], server)
        .unwrap();
    let (_, _) = sock
        .recv_from(&mut buf)
        .expect("FORMERR for truncated name");
    assert_eq!(buf[3] & 0xF, 1);
    // Garbage storm, then still answering.
    let mut seed: u32 = 12345;
    for _ in 0..2000 {
        let len = (seed % 300) as usize;
        let pkt: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 16) as u8
            })
            .collect();
        let _ = sock.send_to(&pkt, server);
    }
    // TCP: a frame of garbage, then a connection that never sends (idle), then a good query.
    let garbage = ns.enter(|| {
        let mut t = TcpStream::connect(server).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        t.write_all(&[0, 5, 9, 9, 9, 9, 9]).unwrap();
        let mut r = Vec::new();
        let _ = t.read_to_end(&mut r);
        r
    });
    assert!(
        garbage.is_empty() || garbage.len() >= 14,
        "odd TCP reply {garbage:?}"
    );
    let d = s.dig(&["b"]);
    assert_eq!(d.data("A"), ["10.1.0.3"]);
    assert_eq!(s.dig(&["+tcp", "b"]).data("A"), ["10.1.0.3"]);
    assert!(!s.log().contains("panicked"));
}

/// 64 connections (the cap) that each sent half a query do not block TCP DNS until the idle
/// timeout (10 s): the connection idle the longest is closed to make room for a new one.
#[test]
fn tcp_cap_makes_room_by_closing_the_longest_idle_connection() {
    let ns = Ns::new("dnsp");
    let dir = TempDir::new("dnsp");
    let s = serve(
        &ns,
        &dir,
        &state(),
        &["--as", "a", "--upstream", "127.0.0.9:9"],
    );
    let mut half: Vec<TcpStream> = ns.enter(|| {
        (0..64)
            .map(|_| {
                let mut c = TcpStream::connect("127.0.0.1:53").expect("connect");
                // A length of 30, then 2 of those 30 bytes.
                c.write_all(&[0, 30, 0x12, 0x34]).expect("half a query");
                c
            })
            .collect()
    });
    // A 65th connection with a whole query: answered (dig waits up to 5 s for it).
    let d = ns.try_dig(&["@127.0.0.1", "+tcp", "+tries=1", "+time=5", "b"]);
    let d = d.unwrap_or_else(|| panic!("no TCP answer at the cap:\n{}", s.log()));
    assert_eq!(d.data("A"), ["10.1.0.3"]);
    // The first of the 64 was closed for it.
    half[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(half[0].read_to_end(&mut rest).ok(), Some(0), "still open");
}
