//! Swarm services across nodes: services on overlay networks live in etcd, one node (the
//! dispatcher, elected through a lease) assigns their task slots to live nodes, each node runs
//! its own; `web`, `tasks.web` and the VIP answer and balance the same on every node; node loss
//! moves tasks and the dispatcher's role. Real etcd, real daemons, real VXLAN, dig and TCP from
//! sandboxes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use sdnet_tests::cluster::Cluster;
use sdnet_tests::{Daemon, helper_bin, wait_for};

fn whoami() -> String {
    helper_bin("whoami-server").display().to_string()
}

/// Running tasks of a service per node name, as `services ps` on `d` shows them.
fn per_node(d: &Daemon, svc: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in d.tasks(svc).iter().filter(|t| t["state"] == "running") {
        *m.entry(t["node"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    m
}

/// Waits (a few seconds: other nodes' tasks arrive through etcd) until `d` shows `want`
/// running tasks per node; what it shows then.
fn spread(d: &Daemon, svc: &str, want: &[(&str, usize)]) -> BTreeMap<String, usize> {
    let want: BTreeMap<String, usize> = want.iter().map(|(n, k)| (n.to_string(), *k)).collect();
    wait_for(Duration::from_secs(15), || {
        let m = per_node(d, svc);
        (m == want).then_some(m)
    })
    .unwrap_or_else(|| per_node(d, svc))
}

/// The running tasks' addresses on `net`, sorted.
fn task_ips(d: &Daemon, svc: &str, net: &str) -> Vec<String> {
    let prefix = format!("{net}=");
    let mut v: Vec<String> = d
        .tasks(svc)
        .iter()
        .filter(|t| t["state"] == "running")
        .flat_map(|t| t["ips"].as_array().cloned().unwrap_or_default())
        .filter_map(|ip| ip.as_str()?.strip_prefix(&prefix).map(str::to_string))
        .collect();
    v.sort();
    v
}

fn vip(d: &Daemon, svc: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(&["services", "inspect", svc])).expect("inspect JSON");
    v[0]["networks"][0]["vip"]
        .as_str()
        .expect("a VIP")
        .to_string()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn tally(lines: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in lines {
        let host = l.split_whitespace().next().unwrap_or("").to_string();
        *m.entry(host).or_insert(0) += 1;
    }
    m
}

/// An overlay `ov` seen by every node.
fn overlay(c: &Cluster) {
    c.nodes[0].ok(&["network", "create", "-d", "overlay", "--attachable", "ov"]);
    wait_for(Duration::from_secs(10), || {
        c.nodes
            .iter()
            .all(|n| n.ok(&["network", "ls"]).contains(" ov "))
            .then_some(())
    })
    .expect("ov on every node");
}

#[test]
fn swarm_services_spread_answer_and_balance_on_every_node() {
    let c = Cluster::start("cs1", 3, &[]);
    overlay(&c);
    let server = whoami();
    // Created on n1; the call returns once the three tasks run (wherever they run).
    c.nodes[1].ok(&[
        "services",
        "create",
        "--name",
        "web",
        "--replicas",
        "6",
        "--network",
        "ov",
        "--drain",
        "200ms",
        "--",
        &server,
        "80",
    ]);
    assert_eq!(
        spread(&c.nodes[0], "web", &[("n0", 2), ("n1", 2), ("n2", 2)]),
        BTreeMap::from([("n0".into(), 2), ("n1".into(), 2), ("n2".into(), 2)]),
        "{:?}",
        c.nodes[0].tasks("web")
    );
    // Every node shows the same service, 6/6.
    for n in &c.nodes {
        let ls = n.ok(&["services", "ls"]);
        assert!(ls.contains("web") && ls.contains("6/6"), "{ls}");
    }
    let v = vip(&c.nodes[0], "web");
    let ips = task_ips(&c.nodes[0], "web", "ov");
    assert_eq!(ips.len(), 6);
    // A client on each node: `web` is the VIP, `tasks.web` every task on every node.
    for (i, n) in c.nodes.iter().enumerate() {
        let cl = format!("c{i}");
        n.ok(&["run", "-d", "--name", &cl, "--network", "ov"]);
        assert_eq!(vip(n, "web"), v);
        let got = wait_for(Duration::from_secs(10), || {
            let a = sorted(n.dig(&cl, &["tasks.web"]).data("A"));
            (a == ips).then_some(a)
        });
        assert!(
            got.is_some(),
            "tasks.web on n{i}: {:?}",
            n.dig(&cl, &["tasks.web"])
        );
        assert_eq!(n.dig(&cl, &["web"]).data("A"), vec![v.clone()]);
    }
    // The VIP from n0 reaches the tasks on all three nodes, evenly, with the client's address.
    let c0_ip = c.nodes[0].ip("c0", "ov");
    let target = format!("{v}:80");
    let lines = c.nodes[0].connect_many("c0", &target, 3000);
    let t = tally(&lines);
    assert!(!t.contains_key(""), "failed connections: {t:?}");
    assert_eq!(t.len(), 6, "{t:?}");
    for (host, n) in &t {
        assert!((400..=600).contains(n), "{host} got {n} of 3000: {t:?}");
    }
    assert!(
        lines.iter().all(|l| l.ends_with(&format!(" {c0_ip}"))),
        "{:?}",
        &lines[..3]
    );

    // Scale from another node: five tasks, two nodes with two.
    c.nodes[2].ok(&["services", "scale", "web=5"]);
    let five = wait_for(Duration::from_secs(20), || {
        let m = per_node(&c.nodes[0], "web");
        (m.values().sum::<usize>() == 5 && m.values().all(|k| (1..=2).contains(k))).then_some(m)
    });
    assert!(five.is_some(), "{:?}", c.nodes[0].tasks("web"));
    let ls = c.nodes[1].ok(&["services", "ls"]);
    assert!(ls.contains("5/5"), "{ls}");
    let ips5 = task_ips(&c.nodes[0], "web", "ov");
    let got = wait_for(Duration::from_secs(10), || {
        (sorted(c.nodes[1].dig("c1", &["tasks.web"]).data("A")) == ips5).then_some(())
    });
    assert!(got.is_some(), "{:?}", c.nodes[1].dig("c1", &["tasks.web"]));
    let t = tally(&c.nodes[1].connect_many("c1", &target, 200));
    assert!(!t.contains_key("") && t.len() == 5, "{t:?}");

    // Constraints and global mode.
    c.nodes[0].ok(&[
        "services",
        "create",
        "--name",
        "pinned",
        "--replicas",
        "2",
        "--constraint",
        "node.name==n2",
        "--network",
        "ov",
        "--",
        "sleep",
        "300",
    ]);
    assert_eq!(
        spread(&c.nodes[1], "pinned", &[("n2", 2)]),
        BTreeMap::from([("n2".into(), 2)])
    );
    c.nodes[0].ok(&[
        "services",
        "create",
        "--name",
        "agent",
        "--mode",
        "global",
        "--network",
        "ov",
        "--",
        "sleep",
        "300",
    ]);
    assert_eq!(
        spread(&c.nodes[2], "agent", &[("n0", 1), ("n1", 1), ("n2", 1)]),
        BTreeMap::from([("n0".into(), 1), ("n1".into(), 1), ("n2".into(), 1)])
    );
    let err = c.nodes[0].fails(&[
        "services",
        "create",
        "--name",
        "bad",
        "--constraint",
        "node.role==manager",
        "--network",
        "ov",
        "--",
        "sleep",
        "1",
    ]);
    assert!(err.contains("unknown key"), "{err}");

    // Removal on any node takes every node's tasks away.
    c.nodes[2].ok(&["services", "rm", "web"]);
    for (i, n) in c.nodes.iter().enumerate() {
        let cl = format!("c{i}");
        let gone = wait_for(Duration::from_secs(10), || {
            let no_tasks = !n.ok(&["ps", "-a"]).contains("web.");
            (no_tasks && n.dig(&cl, &["tasks.web"]).answer.is_empty()).then_some(())
        });
        assert!(
            gone.is_some(),
            "web's tasks still on n{i}:\n{}",
            n.ok(&["ps", "-a"])
        );
    }
}

#[test]
fn a_lost_node_hands_its_tasks_and_the_dispatcher_role_to_the_others() {
    let mut c = Cluster::start("cs2", 3, &["--node-ttl", "3s"]);
    overlay(&c);
    c.nodes[0].ok(&[
        "services",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "ov",
        "--drain",
        "200ms",
        "--",
        "sleep",
        "300",
    ]);
    // The dispatcher is one of the nodes; it is the one that dies.
    let nodes: Vec<serde_json::Value> =
        serde_json::from_str(&c.nodes[0].ok(&["node", "ls", "--format", "json"])).unwrap();
    let leaders: Vec<&serde_json::Value> = nodes.iter().filter(|n| n["leader"] == true).collect();
    assert_eq!(leaders.len(), 1, "{nodes:?}");
    let dead: usize = leaders[0]["name"].as_str().unwrap()[1..].parse().unwrap();
    let alive: Vec<usize> = (0..3).filter(|i| *i != dead).collect();
    let watcher = &c.nodes[alive[0]];
    watcher.ok(&["run", "-d", "--name", "cl", "--network", "ov"]);
    c.nodes[dead].kill9();

    // Within the TTL (+ margin) its task runs on a live node, tasks.web has three live
    // addresses, and another node dispatches.
    let dead_name = format!("n{dead}");
    let moved = wait_for(Duration::from_secs(20), || {
        let m = per_node(watcher, "web");
        (m.values().sum::<usize>() == 3 && !m.contains_key(&dead_name)).then_some(m)
    });
    assert!(
        moved.is_some(),
        "{:?}\n{}",
        watcher.tasks("web"),
        watcher.log()
    );
    let ips = task_ips(watcher, "web", "ov");
    let answers = wait_for(Duration::from_secs(10), || {
        (sorted(watcher.dig("cl", &["tasks.web"]).data("A")) == ips).then_some(())
    });
    assert!(answers.is_some(), "{:?}", watcher.dig("cl", &["tasks.web"]));
    let new_leader = wait_for(Duration::from_secs(10), || {
        let nodes: Vec<serde_json::Value> =
            serde_json::from_str(&watcher.ok(&["node", "ls", "--format", "json"])).ok()?;
        nodes
            .iter()
            .find(|n| n["leader"] == true && n["name"] != dead_name.as_str())
            .map(|n| n["name"].as_str().unwrap_or("").to_string())
    });
    assert!(new_leader.is_some(), "{}", watcher.ok(&["node", "ls"]));
    // The new dispatcher works: scaling places the new slot on a live node.
    watcher.ok(&["services", "scale", "web=4"]);
    let m = wait_for(Duration::from_secs(15), || {
        let m = per_node(watcher, "web");
        (m.values().sum::<usize>() == 4).then_some(m)
    })
    .unwrap_or_else(|| per_node(watcher, "web"));
    assert_eq!(m.values().sum::<usize>(), 4, "{m:?}");
    assert!(!m.contains_key(&dead_name), "{m:?}");

    // The dead node comes back: its old task's slot runs elsewhere now, so that task goes;
    // no slot runs twice.
    c.nodes[dead].restart();
    let watcher = &c.nodes[alive[0]];
    let settled = wait_for(Duration::from_secs(20), || {
        let tasks = watcher.tasks("web");
        let slots: BTreeSet<u64> = tasks.iter().filter_map(|t| t["slot"].as_u64()).collect();
        let stale = c.nodes[dead].ok(&["ps", "-a"]).matches("web.").count();
        let expected_here = per_node(watcher, "web")
            .get(&dead_name)
            .copied()
            .unwrap_or(0);
        (tasks.len() == 4 && slots.len() == 4 && stale == expected_here).then_some(())
    });
    assert!(
        settled.is_some(),
        "{:?}\n{}",
        watcher.tasks("web"),
        c.nodes[dead].ok(&["ps", "-a"])
    );
}

#[test]
fn health_dnsrr_srv_ptr_and_rolling_updates_across_nodes() {
    let c = Cluster::start("cs3", 3, &[]);
    overlay(&c);
    let marks = sdnet_tests::TempDir::new("hcc");
    let check = format!("test -e {}/$(hostname)", marks.path().display());
    c.nodes[0].ok(&[
        "services",
        "create",
        "--name",
        "hw",
        "--replicas",
        "3",
        "--network",
        "ov",
        "--port",
        "http:80/tcp",
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
    c.nodes[0].ok(&["run", "-d", "--name", "cl", "--network", "ov"]);
    let n0 = &c.nodes[0];
    let v = vip(n0, "hw");
    // Three tasks placed, none healthy: none in DNS anywhere.
    let placed = wait_for(Duration::from_secs(15), || {
        (n0.tasks("hw").len() == 3).then_some(())
    });
    assert!(placed.is_some(), "{:?}", n0.tasks("hw"));
    std::thread::sleep(Duration::from_millis(800));
    assert!(n0.dig("cl", &["tasks.hw"]).data("A").is_empty());
    // The task on n2 turns healthy (its check runs on n2): it shows on n0 in DNS and the LB.
    let on = |node: &str| -> (String, String, String) {
        let t = n0
            .tasks("hw")
            .into_iter()
            .find(|t| t["node"] == node)
            .unwrap_or_else(|| panic!("no task on {node}: {:?}", n0.tasks("hw")));
        let name = t["name"].as_str().unwrap_or("").to_string();
        let owner = &c.nodes[node[1..].parse::<usize>().unwrap()];
        let host = owner.inspect(&name)["hostname"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (name, host, owner.ip(t["name"].as_str().unwrap_or(""), "ov"))
    };
    let (name2, host2, ip2) = on("n2");
    std::fs::write(marks.path().join(&host2), "").unwrap();
    let seen = wait_for(Duration::from_secs(10), || {
        (n0.dig("cl", &["tasks.hw"]).data("A") == vec![ip2.clone()]).then_some(())
    });
    assert!(seen.is_some(), "{:?}", n0.tasks("hw"));
    let t = tally(&n0.connect_many("cl", &format!("{v}:80"), 50));
    assert_eq!(t.keys().collect::<Vec<_>>(), vec![&host2], "{t:?}");
    // PTR of a task on another node; SRV lists the healthy tasks.
    let ptr = n0.dig("cl", &["-x", &ip2]).data("PTR");
    assert!(
        ptr.iter().any(|p| p.starts_with(&name2)),
        "{ptr:?} for {name2}"
    );
    for (name, host, _) in [on("n0"), on("n1")] {
        let _ = name;
        std::fs::write(marks.path().join(&host), "").unwrap();
    }
    let all = wait_for(Duration::from_secs(10), || {
        (n0.dig("cl", &["tasks.hw"]).data("A").len() == 3).then_some(())
    });
    assert!(all.is_some(), "{:?}", n0.tasks("hw"));
    let srv = n0.dig("cl", &["SRV", "_http._tcp.hw"]).data("SRV");
    assert_eq!(srv.len(), 3, "{srv:?}");
    // Unhealthy on n2 again: out of DNS on n0.
    std::fs::remove_file(marks.path().join(&host2)).unwrap();
    let out = wait_for(Duration::from_secs(10), || {
        let a = n0.dig("cl", &["tasks.hw"]).data("A");
        (a.len() == 2 && !a.contains(&ip2)).then_some(())
    });
    assert!(out.is_some(), "{:?}", n0.dig("cl", &["tasks.hw"]));

    // dnsrr: the name lists the tasks on every node.
    c.nodes[1].ok(&[
        "services",
        "create",
        "--name",
        "rr",
        "--replicas",
        "3",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        "ov",
        "--",
        "sleep",
        "300",
    ]);
    let rr = task_ips(n0, "rr", "ov");
    assert_eq!(rr.len(), 3);
    let got = wait_for(Duration::from_secs(10), || {
        (sorted(n0.dig("cl", &["rr"]).data("A")) == rr).then_some(())
    });
    assert!(got.is_some(), "{:?}", n0.dig("cl", &["rr"]));

    // A rolling update from any node replaces every task, wherever it runs.
    let before: BTreeSet<String> = n0
        .tasks("rr")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or("").to_string())
        .collect();
    c.nodes[2].ok(&["services", "update", "rr", "--", "sleep", "301"]);
    let rolled = wait_for(Duration::from_secs(30), || {
        let now: Vec<serde_json::Value> = n0.tasks("rr");
        let names: BTreeSet<String> = now
            .iter()
            .map(|t| t["name"].as_str().unwrap_or("").to_string())
            .collect();
        (now.len() == 3
            && now.iter().all(|t| t["state"] == "running")
            && names.is_disjoint(&before))
        .then_some(())
    });
    assert!(rolled.is_some(), "{:?}", n0.tasks("rr"));
}

/// One TCP connection from namespace `ns` to `addr`: the first line the server sent, or the
/// connection error ("" on a timeout).
fn ask(ns: &sdnet_tests::Ns, addr: &str) -> Result<String, String> {
    ns.enter(|| {
        use std::io::BufRead;
        let a: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let c = std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
        let mut line = String::new();
        std::io::BufReader::new(c)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(line.trim().to_string())
    })
}

#[test]
fn published_ports_answer_on_every_node_through_the_mesh_and_host_mode_where_tasks_run() {
    let c = Cluster::start("cs4", 3, &[]);
    overlay(&c);
    let server = whoami();
    // Two tasks, on n0 and n1; n2 runs none.
    c.nodes[0].ok(&[
        "services",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--constraint",
        "node.name!=n2",
        "--network",
        "ov",
        "-p",
        "8080:80",
        "--",
        &server,
        "80",
    ]);
    assert_eq!(
        spread(&c.nodes[2], "web", &[("n0", 1), ("n1", 1)]),
        BTreeMap::from([("n0".into(), 1), ("n1".into(), 1)])
    );
    // Every node's ingress sandbox is up (the scheduler makes it); n2's answers for the tasks
    // on n0 and n1, from another node and from n2's own 127.0.0.1.
    let hosts: BTreeSet<String> = ["n0", "n1"]
        .iter()
        .map(|n| {
            let t = c.nodes[2]
                .tasks("web")
                .into_iter()
                .find(|t| t["node"] == *n)
                .expect("task");
            let owner = &c.nodes[n[1..].parse::<usize>().unwrap()];
            owner.inspect(t["name"].as_str().unwrap())["hostname"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let n2 = format!("{}:8080", Cluster::addr(2));
    let served = wait_for(Duration::from_secs(15), || {
        ask(&c.nodes[0].ns, &n2).ok().filter(|l| !l.is_empty())
    });
    assert!(served.is_some(), "{}", c.nodes[2].log());
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let line = ask(&c.nodes[0].ns, &n2).expect("through n2's mesh");
        seen.insert(line.split_whitespace().next().unwrap_or("").to_string());
    }
    assert_eq!(seen, hosts, "answers through n2 came from {seen:?}");
    let local = ask(&c.nodes[2].ns, "127.0.0.1:8080").expect("127.0.0.1 on n2");
    assert!(hosts.contains(line_host(&local)), "{local}");
    // Every node answers, with or without a task.
    for i in 0..2 {
        let a = format!("{}:8080", Cluster::addr(i));
        let l = ask(&c.nodes[2].ns, &a).expect("mesh");
        assert!(hosts.contains(line_host(&l)), "{l}");
    }
    // The guard: over the ingress overlay a task takes only its published target port — the
    // task on n0 cannot reach the task on n1 there on another port (dropped, not refused).
    let ingress_ip = |n: &str| -> (String, String) {
        let t = c.nodes[0]
            .tasks("web")
            .into_iter()
            .find(|t| t["node"] == n)
            .expect("task");
        let ip = t["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str()?.strip_prefix("ingress=").map(str::to_string))
            .next()
            .expect("an ingress address");
        (t["name"].as_str().unwrap_or("").to_string(), ip)
    };
    let (t0, _) = ingress_ip("n0");
    let (_, ip1) = ingress_ip("n1");
    let out = c.nodes[0].exec(
        &t0,
        &[
            "socat",
            "-T2",
            "-",
            &format!("TCP:{ip1}:81,connect-timeout=2"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !err.contains("refused"),
        "port 81 of a task answered over the ingress overlay: {err}"
    );
    let guard = c.nodes[0].exec_ok(&t0, &["nft", "list", "table", "ip", "sdnet-ingress-guard"]);
    assert!(guard.contains("tcp dport 80 accept"), "{guard}");

    // No task left: refused at once (a reset), on every node.
    c.nodes[1].ok(&["services", "scale", "web=0"]);
    let refused = wait_for(Duration::from_secs(10), || match ask(&c.nodes[0].ns, &n2) {
        Err(e) if e.contains("refused") => Some(()),
        _ => None,
    });
    assert!(refused.is_some(), "{:?}", ask(&c.nodes[0].ns, &n2));

    // mode=host: only the node with a task answers, and the task sees the client's address.
    c.nodes[0].ok(&[
        "services",
        "create",
        "--name",
        "hm",
        "--constraint",
        "node.name==n1",
        "--network",
        "ov",
        "-p",
        "mode=host,published=9090,target=80",
        "--",
        &server,
        "80",
    ]);
    let n1 = format!("{}:9090", Cluster::addr(1));
    let line = wait_for(Duration::from_secs(10), || {
        ask(&c.nodes[0].ns, &n1).ok().filter(|l| !l.is_empty())
    })
    .expect("n1:9090");
    assert!(
        line.ends_with(&format!(" {}", Cluster::addr(0))),
        "the task saw {line}"
    );
    let err = ask(&c.nodes[0].ns, &format!("{}:9090", Cluster::addr(2)));
    assert!(
        matches!(&err, Err(e) if e.contains("refused")),
        "n2 has no task of hm: {err:?}"
    );
    // The long form is for services only.
    let e = c.nodes[0].fails(&[
        "run",
        "-d",
        "--name",
        "x",
        "--network",
        "ov",
        "-p",
        "mode=host,published=9191,target=80",
    ]);
    assert!(e.contains("mode=host is for services"), "{e}");
}

fn line_host(l: &str) -> &str {
    l.split_whitespace().next().unwrap_or("")
}
