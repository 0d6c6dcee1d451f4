//! Services end to end: VIP and dnsrr names, SRV and PTR, nftables load balancing with the
//! client's address kept, health gating, replacement of dead tasks, drain on scale-down,
//! published service ports, bad input and restart recovery — through the real daemon, with
//! dig and real TCP connections from inside sandboxes.

// `[ip.clone()]` reads better in an assertion than `slice::from_ref(&ip)`.
#![allow(clippy::cloned_ref_to_slice_refs)]

use std::collections::HashMap;
use std::time::Duration;

use sdnet_tests::{Daemon, Remote, helper_bin, wait_for};

fn whoami() -> String {
    helper_bin("whoami-server").display().to_string()
}

/// hostname → connections that landed there.
fn tally(lines: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in lines {
        let host = l.split_whitespace().next().unwrap_or("").to_string();
        *m.entry(host).or_insert(0) += 1;
    }
    m
}

fn task_ips(d: &Daemon, svc: &str) -> Vec<String> {
    let mut v: Vec<String> = d
        .tasks(svc)
        .iter()
        .filter(|t| t["state"] == "running")
        .flat_map(|t| t["ips"].as_array().cloned().unwrap_or_default())
        .filter_map(|ip| {
            ip.as_str()
                .and_then(|s| s.split('=').nth(1))
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

fn vip(d: &Daemon, svc: &str) -> String {
    let out = d.ok(&["services", "inspect", svc]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["networks"][0]["vip"]
        .as_str()
        .expect("vip")
        .to_string()
}

#[test]
fn names_vip_dnsrr_srv_ptr() {
    let d = Daemon::start("svcn");
    d.ok(&["network", "create", "--subnet", "10.90.1.0/24", "n"]);
    d.ok(&[
        "services",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "n,alias=api",
        "--port",
        "http:80/tcp",
        "--",
        "sleep",
        "300",
    ]);
    d.ok(&[
        "services",
        "create",
        "--name",
        "rr",
        "--replicas",
        "2",
        "--network",
        "n",
        "--endpoint-mode",
        "dnsrr",
        "--",
        "sleep",
        "300",
    ]);
    d.ok(&["run", "-d", "--name", "cl", "--network", "n"]);
    let web_vip = vip(&d, "web");
    let ips = task_ips(&d, "web");
    assert_eq!(ips.len(), 3);

    // vip mode: exactly the VIP, TTL 600; the alias too.
    let q = d.dig("cl", &["web"]);
    assert_eq!(q.data("A"), [web_vip.clone()]);
    assert_eq!(q.answer[0].ttl, 600);
    assert_eq!(d.dig("cl", &["api"]).data("A"), [web_vip.clone()]);
    assert!(d.dig("cl", &["web", "AAAA"]).answer.is_empty());
    // tasks.web: the task IPs, rotating.
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..6 {
        let q = d.dig("cl", &["tasks.web"]);
        assert_eq!(q.sorted("A"), ips);
        firsts.insert(q.data("A")[0].clone());
    }
    assert!(firsts.len() > 1, "order never rotated");
    // dnsrr: task IPs, no VIP.
    assert_eq!(d.dig("cl", &["rr"]).sorted("A"), task_ips(&d, "rr"));
    // SRV with the targets' addresses in the additional section.
    let q = d.dig("cl", &["_http._tcp.web", "SRV"]);
    assert_eq!(q.data("SRV").len(), 3, "{}", q.raw);
    let mut glue: Vec<String> = q
        .additional
        .iter()
        .filter(|r| r.rtype == "A")
        .map(|r| r.data.clone())
        .collect();
    glue.sort();
    assert_eq!(glue, ips);
    for srv in q.data("SRV") {
        let target = srv.split_whitespace().last().unwrap().to_string();
        assert!(
            target.starts_with("web.") && target.ends_with(".n."),
            "{srv}"
        );
        assert_eq!(
            d.dig("cl", &[&target]).data("A").len(),
            1,
            "target resolves"
        );
    }
    // PTR of the VIP and of a task.
    assert_eq!(d.dig("cl", &["-x", &web_vip]).data("PTR"), ["web.n."]);
    let task0 = d.tasks("web")[0]["name"].as_str().unwrap().to_string();
    let t0ip = d.ip(&task0, "n");
    assert_eq!(
        d.dig("cl", &["-x", &t0ip]).data("PTR"),
        [format!("{task0}.n.")]
    );
    // The client's LB table turned conntrack on in its namespace; the resolver's traffic
    // stays untracked there (every query would otherwise add entries).
    let tracked = d.exec_ok("cl", &["conntrack", "-L"]);
    assert!(!tracked.contains("127.0.0.11"), "{tracked}");
    // ls shows running/desired and the VIP.
    let ls = d.ok(&["services", "ls"]);
    assert!(ls.contains("3/3") && ls.contains(&web_vip), "{ls}");
}

#[test]
fn vip_balances_keeps_client_ip_scales_and_replaces() {
    let d = Daemon::start("svclb");
    d.ok(&["network", "create", "--subnet", "10.90.2.0/24", "n"]);
    let server = whoami();
    d.ok(&[
        "services",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "n",
        "--drain",
        "200ms",
        "--",
        &server,
        "80",
    ]);
    d.ok(&["run", "-d", "--name", "cl", "--network", "n"]);
    let cl_ip = d.ip("cl", "n");
    let v = vip(&d, "web");
    let target = format!("{v}:80");
    wait_for(Duration::from_secs(10), || {
        (tally(&d.connect_many("cl", &target, 30)).len() == 3).then_some(())
    })
    .expect("3 tasks answering");

    let lines = d.connect_many("cl", &target, 3000);
    let t = tally(&lines);
    assert!(!t.contains_key(""), "failed connections: {t:?}");
    assert_eq!(t.len(), 3, "{t:?}");
    for (host, n) in &t {
        assert!((850..=1150).contains(n), "{host} got {n} of 3000: {t:?}");
    }
    // Each task saw the client's own address (no SNAT).
    assert!(
        lines.iter().all(|l| l.ends_with(&format!(" {cl_ip}"))),
        "{:?}",
        &lines[..3]
    );

    // Scale to 5: all five receive traffic. (Without a health check a task is in the LB once
    // its process runs, which may be a moment before it listens: wait for that first.)
    d.ok(&["services", "scale", "web=5"]);
    wait_for(Duration::from_secs(10), || {
        let t = tally(&d.connect_many("cl", &target, 50));
        (t.len() == 5 && !t.contains_key("")).then_some(())
    })
    .expect("5 tasks listening");
    let t = tally(&d.connect_many("cl", &target, 500));
    assert_eq!(t.len(), 5, "{t:?}");

    // Kill one task's process: it leaves DNS and the LB, and is replaced in the same slot.
    let victim = d.tasks("web")[0].clone();
    let name = victim["name"].as_str().unwrap().to_string();
    let slot = victim["slot"].as_u64().unwrap();
    let pid = d.inspect(&name)["pid"].as_u64().unwrap();
    // SAFETY: killing a process of this test's daemon.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let replaced = wait_for(Duration::from_secs(15), || {
        let tasks = d.tasks("web");
        let running = tasks.iter().filter(|t| t["state"] == "running").count();
        let fresh = tasks.iter().any(|t| {
            t["slot"].as_u64() == Some(slot)
                && t["name"] != name.as_str()
                && t["state"] == "running"
        });
        (running == 5 && fresh).then_some(())
    });
    assert!(replaced.is_some(), "{:?}", d.tasks("web"));
    // The dead task's name is gone (its address may be reused by the replacement).
    assert!(d.dig("cl", &[&name]).answer.is_empty());
    assert_eq!(d.dig("cl", &["tasks.web"]).data("A").len(), 5);
    let t = tally(&d.connect_many("cl", &target, 300));
    assert!(!t.contains_key(""), "{t:?}");
    assert_eq!(t.len(), 5);
}

#[test]
fn health_gates_dns_and_lb_and_no_backend_is_refused() {
    let d = Daemon::start("svch");
    let marks = sdnet_tests::TempDir::new("hc");
    d.ok(&["network", "create", "--subnet", "10.90.3.0/24", "n"]);
    let check = format!("test -e {}/$(hostname)", marks.path().display());
    d.ok(&[
        "services",
        "create",
        "--name",
        "hw",
        "--replicas",
        "2",
        "--network",
        "n",
        "--health-cmd",
        &check,
        "--health-interval",
        "200ms",
        "--health-retries",
        "1",
        "--detach",
        "--",
        &whoami(),
        "80",
    ]);
    d.ok(&["run", "-d", "--name", "cl", "--network", "n"]);
    let v = vip(&d, "hw");
    // Never healthy: not in DNS, and the VIP refuses at once (reset, not a timeout).
    std::thread::sleep(Duration::from_millis(800));
    assert!(d.dig("cl", &["tasks.hw"]).data("A").is_empty());
    assert!(d.tasks("hw").iter().all(|t| t["health"] != "healthy"));
    let out = d.exec(
        "cl",
        &[
            "socat",
            "-T2",
            "-",
            &format!("TCP:{v}:80,connect-timeout=3"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Connection refused"),
        "expected a reset, got: {err}"
    );

    // Healthy once the check passes: in DNS and the LB.
    let hosts: Vec<String> = d
        .tasks("hw")
        .iter()
        .map(|t| {
            d.inspect(t["name"].as_str().unwrap())["hostname"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for h in &hosts {
        std::fs::write(marks.path().join(h), "").unwrap();
    }
    let both = wait_for(Duration::from_secs(10), || {
        (d.dig("cl", &["tasks.hw"]).data("A").len() == 2).then_some(())
    });
    assert!(both.is_some(), "{:?}", d.tasks("hw"));
    let t = tally(&d.connect_many("cl", &format!("{v}:80"), 100));
    assert_eq!(t.len(), 2, "{t:?}");

    // Turning unhealthy takes it out of both within an interval or so.
    std::fs::remove_file(marks.path().join(&hosts[0])).unwrap();
    let out = wait_for(Duration::from_secs(5), || {
        (d.dig("cl", &["tasks.hw"]).data("A").len() == 1).then_some(())
    });
    assert!(out.is_some());
    let t = tally(&d.connect_many("cl", &format!("{v}:80"), 100));
    assert_eq!(t.len(), 1, "{t:?}");
    assert!(!t.contains_key(&hosts[0]));
}

#[test]
fn drain_on_scale_down_and_rolling_update() {
    let d = Daemon::start("svcd");
    d.ok(&["network", "create", "--subnet", "10.90.4.0/24", "n"]);
    d.ok(&[
        "services",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "n",
        "--drain",
        "1s",
        "--",
        "sleep",
        "300",
    ]);
    d.ok(&["run", "-d", "--name", "cl", "--network", "n"]);
    d.ok(&["services", "scale", "--detach", "web=1"]);
    // Out of DNS at once, while the drained tasks still exist.
    assert_eq!(d.dig("cl", &["tasks.web"]).data("A").len(), 1);
    assert!(d.tasks("web").iter().any(|t| t["state"] == "draining"));
    let gone = wait_for(Duration::from_secs(10), || {
        (d.tasks("web").len() == 1).then_some(())
    });
    assert!(gone.is_some(), "{:?}", d.tasks("web"));

    // A new command rolls the tasks over.
    d.ok(&["services", "scale", "web=2"]);
    let before: Vec<String> = d
        .tasks("web")
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    d.ok(&[
        "services", "update", "web", "--drain", "100ms", "--", "sleep", "301",
    ]);
    let after = d.tasks("web");
    assert_eq!(after.len(), 2, "{after:?}");
    for t in &after {
        assert!(
            !before.contains(&t["name"].as_str().unwrap().to_string()),
            "not rolled: {after:?}"
        );
        let cmd = d.inspect(t["name"].as_str().unwrap())["command"].clone();
        assert_eq!(cmd, serde_json::json!(["sleep", "301"]));
    }
    d.ok(&["services", "rm", "web"]);
    assert!(d.dig("cl", &["web"]).answer.is_empty());
    assert!(!d.ok(&["ps", "-a"]).contains("web."));
}

#[test]
fn published_service_port_reaches_tasks() {
    let d = Daemon::start("svcp");
    let remote = Remote::attach(&d);
    d.ok(&["network", "create", "--subnet", "10.90.5.0/24", "n"]);
    d.ok(&[
        "services",
        "create",
        "--name",
        "pub",
        "--replicas",
        "2",
        "--network",
        "n",
        "-p",
        "8088:80",
        "--",
        &whoami(),
        "80",
    ]);
    let seen = wait_for(Duration::from_secs(10), || {
        let mut hosts = std::collections::HashSet::new();
        for _ in 0..40 {
            let l = sdnet_tests::ask_tcp(&remote.ns, "192.0.2.1:8088");
            if let Some(h) = l.split_whitespace().next() {
                hosts.insert(h.to_string());
            }
        }
        (hosts.len() == 2).then_some(hosts)
    });
    assert!(seen.is_some(), "published port did not reach both tasks");
    assert!(sdnet_tests::ask_tcp(&d.ns, "127.0.0.1:8088").contains(' '));
    // Taken: nobody else may publish it.
    let err = d.fails(&[
        "run",
        "-d",
        "--name",
        "x",
        "--network",
        "n",
        "-p",
        "8088:80",
    ]);
    assert!(err.contains("already published by service pub"), "{err}");
}

#[test]
fn bad_service_input() {
    let d = Daemon::start("svcb");
    d.ok(&["network", "create", "--subnet", "10.90.6.0/24", "n"]);
    d.ok(&[
        "services",
        "create",
        "--name",
        "ok",
        "--network",
        "n",
        "--detach",
        "--",
        "sleep",
        "300",
    ]);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "services",
                "create",
                "--name",
                "x",
                "--network",
                "nope",
                "--",
                "true",
            ],
            "not found",
        ),
        (
            vec![
                "services",
                "create",
                "--name",
                "x",
                "--network",
                "n",
                "--replicas",
                "-1",
                "--",
                "true",
            ],
            "",
        ),
        (
            vec![
                "services",
                "create",
                "--name",
                "x",
                "--network",
                "n",
                "--port",
                "http",
                "--",
                "true",
            ],
            "invalid --port",
        ),
        (
            vec![
                "services",
                "create",
                "--name",
                "x",
                "--network",
                "n",
                "--port",
                "http:0/tcp",
                "--",
                "true",
            ],
            "invalid --port",
        ),
        (
            vec![
                "services",
                "create",
                "--name",
                "x",
                "--network",
                "n",
                "-p",
                "80",
                "--",
                "true",
            ],
            "invalid port",
        ),
        (
            vec![
                "services",
                "create",
                "--name",
                "ok",
                "--network",
                "n",
                "--",
                "true",
            ],
            "already exists",
        ),
        (
            vec![
                "services",
                "create",
                "--name",
                "x",
                "--network",
                "bridge",
                "--",
                "true",
            ],
            "user-defined",
        ),
        (
            vec![
                "services",
                "create",
                "--name",
                "bad name",
                "--network",
                "n",
                "--",
                "true",
            ],
            "invalid service name",
        ),
        (vec!["services", "scale", "nope=2"], "not found"),
        (vec!["services", "scale", "ok=x"], "replicas"),
        (vec!["services", "rm", "nope"], "not found"),
    ];
    for (args, want) in cases {
        let err = d.fails(&args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let ls = d.ok(&["services", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 1, "{ls}");
}

#[test]
fn services_survive_kill9_and_dead_tasks_are_replaced() {
    let mut d = Daemon::start("svck");
    d.ok(&["network", "create", "--subnet", "10.90.7.0/24", "n"]);
    d.ok(&[
        "services",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--network",
        "n",
        "--",
        "sleep",
        "300",
    ]);
    d.ok(&["run", "-d", "--name", "cl", "--network", "n"]);
    let tasks = d.tasks("web");
    let survivor = tasks[0]["name"].as_str().unwrap().to_string();
    let victim = tasks[1]["name"].as_str().unwrap().to_string();
    let victim_pid = d.inspect(&victim)["pid"].as_u64().unwrap();
    let v = vip(&d, "web");
    // The daemon dies, then a task dies while nobody watches.
    // SAFETY: signalling processes this test started.
    unsafe { libc::kill(d.pid as i32, libc::SIGKILL) };
    unsafe { libc::kill(victim_pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    d.kill9_and_restart();
    let ok = wait_for(Duration::from_secs(15), || {
        let t = d.tasks("web");
        let running = t.iter().filter(|x| x["state"] == "running").count();
        (running == 2 && !t.iter().any(|x| x["name"] == victim.as_str())).then_some(())
    });
    assert!(ok.is_some(), "{:?}", d.tasks("web"));
    assert!(
        d.tasks("web")
            .iter()
            .any(|x| x["name"] == survivor.as_str()),
        "survivor adopted"
    );
    assert_eq!(d.dig("cl", &["web"]).data("A"), [v]);
    assert_eq!(d.dig("cl", &["tasks.web"]).data("A").len(), 2);
}
