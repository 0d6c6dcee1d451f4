//! The isolation matrix: 8 networks (3 internal) × 8 sandboxes (3 on two networks). From every
//! sandbox to every other: DNS (name, alias, `name.net`, PTR) and packets (ICMP, TCP, UDP) to
//! each of its addresses. Answers and packets exactly where a network is shared, none where
//! it is not. A packet probe that must get through is tried up to three times (the machine is
//! loaded by the others running at once); one that must not is tried once and given the same
//! time to fail.

use std::collections::BTreeMap;
use std::time::Instant;

use sdnet_tests::Daemon;

/// Networks: (name, internal).
const NETS: [(&str, bool); 8] = [
    ("n0", false),
    ("n1", false),
    ("n2", false),
    ("n3", true),
    ("n4", false),
    ("n5", true),
    ("n6", false),
    ("n7", true),
];

/// Sandboxes and their networks, in attachment order.
const SANDBOXES: [(&str, &[usize]); 8] = [
    ("s0", &[0]),
    ("s1", &[0, 1]),
    ("s2", &[1, 2]),
    ("s3", &[2, 3]),
    ("s4", &[3]),
    ("s5", &[4, 5]),
    ("s6", &[6, 0]),
    ("s7", &[7, 5]),
];

const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;

fn alias(s: &str, n: usize) -> String {
    format!("al-{s}-n{n}")
}

/// How a probe is made.
enum How {
    /// A DNS question, asked with all the others of its source in one dig; what proves an
    /// answer is the records of `owner` and type `rtype`.
    Dns {
        question: String,
        owner: String,
        rtype: &'static str,
    },
    /// A shell command whose output proves a packet got through. socat waits `-t` after its
    /// input ends for the reply (the default half second is too short on a loaded machine).
    Shell(String),
}

/// One probe from a sandbox: its key, what proves it got through, and whether it must.
struct Probe {
    key: String,
    how: How,
    /// The output that proves an answer or a packet got through (empty: none may).
    want: String,
    /// The other sandbox is reachable this way (a network is shared).
    allowed: bool,
}

fn reverse(ip: &str) -> String {
    let mut o: Vec<&str> = ip.split('.').collect();
    o.reverse();
    format!("{}.in-addr.arpa.", o.join("."))
}

fn probes(ips: &BTreeMap<(usize, usize), String>, a: usize, b: usize) -> Vec<Probe> {
    let (an, anets) = SANDBOXES[a];
    let (bn, bnets) = SANDBOXES[b];
    let on_a = |n: &usize| anets.contains(n);
    let dns = |name: String| How::Dns {
        question: format!("{name} A"),
        owner: format!("{name}."),
        rtype: "A",
    };
    let mut out = Vec::new();
    // The name: the address on the first network of a's order that b is on.
    let first = anets.iter().find(|n| bnets.contains(n));
    out.push(Probe {
        key: format!("{an}>{bn} name"),
        how: dns(bn.to_string()),
        want: first.map(|n| ips[&(b, *n)].clone()).unwrap_or_default(),
        allowed: first.is_some(),
    });
    for n in bnets {
        let ip = &ips[&(b, *n)];
        let ok = on_a(n);
        let net = NETS[*n].0;
        let ptr = How::Dns {
            question: format!("-x {ip}"),
            owner: reverse(ip),
            rtype: "PTR",
        };
        for (what, how, want) in [
            ("alias", dns(alias(bn, *n)), ip.clone()),
            ("name.net", dns(format!("{bn}.{net}")), ip.clone()),
            ("ptr", ptr, format!("{bn}.{net}.")),
            (
                "icmp",
                How::Shell(format!("ping -c1 -W3 {ip} >/dev/null 2>&1 && echo ok")),
                "ok".into(),
            ),
            (
                "tcp",
                How::Shell(format!(
                    "timeout 5 socat -t3 -T3 - TCP:{ip}:{TCP_PORT},connect-timeout=3 </dev/null"
                )),
                format!("t-{bn}"),
            ),
            (
                "udp",
                How::Shell(format!(
                    "echo x | timeout 5 socat -t3 -T3 - UDP:{ip}:{UDP_PORT}"
                )),
                format!("u-{bn}"),
            ),
        ] {
            out.push(Probe {
                key: format!("{an}>{bn} {what} {ip}"),
                how,
                want,
                allowed: ok,
            });
        }
    }
    out
}

/// The script a source runs: one dig with every question, and every packet probe at once
/// (one that must get through is tried up to five times).
fn script(ps: &[Probe]) -> String {
    let questions: Vec<&str> = ps
        .iter()
        .filter_map(|p| match &p.how {
            How::Dns { question, .. } => Some(question.as_str()),
            How::Shell(_) => None,
        })
        .collect();
    let mut s = format!(
        "dig +noall +answer +time=2 +tries=2 {} | grep -v '^;' | sed 's/^/D|/' &\n",
        questions.join(" ")
    );
    for (i, p) in ps.iter().enumerate() {
        if let How::Shell(cmd) = &p.how {
            // Retries wait longer each time (1, 2, 3, 4 s): every source probes at once,
            // socat's forking UDP listener drops a datagram that arrives while it forks, and
            // a loaded machine can keep it from listening again for a while (5 tries within
            // 1.5 s all failed once).
            let tries = if p.allowed { 5 } else { 1 };
            s.push_str(&format!(
                "{{ for t in $(seq {tries}); do r=$({cmd}); [ \"$r\" = '{}' ] && break; \
                 sleep $t; done; echo \"{i}|$r\"; }} &\n",
                p.want
            ));
        }
    }
    s.push_str("wait\n");
    s
}

/// What each probe got, by index: the records of its question, or its command's output.
fn outcomes(ps: &[Probe], out: &str) -> Vec<String> {
    let mut records: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut shell: BTreeMap<usize, String> = BTreeMap::new();
    for l in out.lines() {
        if let Some(rec) = l.strip_prefix("D|") {
            let f: Vec<&str> = rec.split_whitespace().collect();
            if let [owner, _ttl, _class, rtype, value] = f[..] {
                records
                    .entry((owner.to_ascii_lowercase(), rtype.to_string()))
                    .or_default()
                    .push(value.to_string());
            }
        } else if let Some((i, r)) = l.split_once('|')
            && let Ok(i) = i.parse()
        {
            shell.insert(i, r.trim().to_string());
        }
    }
    ps.iter()
        .enumerate()
        .map(|(i, p)| match &p.how {
            How::Dns { owner, rtype, .. } => {
                let mut v = records
                    .get(&(owner.clone(), rtype.to_string()))
                    .cloned()
                    .unwrap_or_default();
                v.sort();
                v.join(" ")
            }
            How::Shell(_) => shell.get(&i).cloned().unwrap_or_default(),
        })
        .collect()
}

#[test]
fn isolation_matrix_8_networks_8_sandboxes() {
    let d = Daemon::start("iso");
    for (i, (name, internal)) in NETS.iter().enumerate() {
        let subnet = format!("10.101.{i}.0/24");
        let mut args = vec!["network", "create", "--subnet", &subnet];
        if *internal {
            args.push("--internal");
        }
        args.push(name);
        d.ok(&args);
    }
    for (s, nets) in SANDBOXES {
        let first = NETS[nets[0]].0;
        let al = alias(s, nets[0]);
        let serve = format!(
            "socat TCP-LISTEN:{TCP_PORT},fork,reuseaddr SYSTEM:'echo t-{s}' & \
             socat UDP-RECVFROM:{UDP_PORT},fork SYSTEM:'echo u-{s}' & wait"
        );
        d.ok(&[
            "run",
            "-d",
            "--name",
            s,
            "--network",
            first,
            "--network-alias",
            &al,
            "--",
            "sh",
            "-c",
            &serve,
        ]);
        for n in &nets[1..] {
            d.ok(&[
                "network",
                "connect",
                "--alias",
                &alias(s, *n),
                NETS[*n].0,
                s,
            ]);
        }
    }
    let mut ips = BTreeMap::new();
    for (i, (s, nets)) in SANDBOXES.iter().enumerate() {
        for n in nets.iter() {
            ips.insert((i, *n), d.ip(s, NETS[*n].0));
        }
    }
    // The listeners are up before anyone is asked.
    for (s, _) in SANDBOXES {
        let up = sdnet_tests::wait_for(std::time::Duration::from_secs(20), || {
            let ss = d.exec_ok(s, &["ss", "-Htlnu"]);
            (ss.contains(&format!(":{TCP_PORT}")) && ss.contains(&format!(":{UDP_PORT}")))
                .then_some(())
        });
        assert!(up.is_some(), "{s}'s listeners did not start");
    }

    // Every source runs all its probes at once (each bounded by its own timeout), the
    // sources in parallel.
    let started = Instant::now();
    let results: Vec<(Vec<Probe>, String)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..SANDBOXES.len())
            .map(|a| {
                let d = &d;
                let ips = &ips;
                sc.spawn(move || {
                    let ps: Vec<Probe> = (0..SANDBOXES.len())
                        .filter(|b| *b != a)
                        .flat_map(|b| probes(ips, a, b))
                        .collect();
                    let script = script(&ps);
                    let out = d.exec(SANDBOXES[a].0, &["timeout", "60", "bash", "-c", &script]);
                    (ps, String::from_utf8_lossy(&out.stdout).into_owned())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = started.elapsed();

    let mut pairs = 0;
    let mut probes_run = 0;
    let (mut allowed, mut through) = (0, 0);
    let mut failures = Vec::new();
    for (ps, out) in &results {
        let got = outcomes(ps, out);
        pairs += SANDBOXES.len() - 1;
        for (i, p) in ps.iter().enumerate() {
            probes_run += 1;
            let r = got[i].as_str();
            if p.allowed {
                allowed += 1;
                if r != p.want {
                    failures.push(format!("{}: want {:?}, got {r:?}", p.key, p.want));
                }
            } else if !r.is_empty() {
                through += 1;
                failures.push(format!("LEAK {}: got {r:?}", p.key));
            }
        }
    }
    println!(
        "isolation matrix: {pairs} ordered pairs, {probes_run} probes ({allowed} where a network \
         is shared, {} where none is), {through} leaks, {:.1} s",
        probes_run - allowed,
        took.as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(pairs, 56);
    for (s, _) in SANDBOXES {
        d.ok(&["rm", "-f", s]);
    }
}
