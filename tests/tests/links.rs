//! Legacy links (`sdctl run --link NAME[:ALIAS]`): on the default bridge, hosts-file lines
//! and Docker's variables in the linked process's environment; on a user-defined network, an
//! alias only the linking sandbox's resolver answers; removal and re-creation of the target;
//! `rm --link` taking one link away; bad links refused with nothing left behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sdnet_tests::{Daemon, wait_for};

/// The environment of a sandbox's supervised process, read from /proc.
fn process_env(d: &Daemon, sandbox: &str) -> BTreeMap<String, String> {
    let pid = d.inspect(sandbox)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{sandbox} has no process: {}", d.inspect(sandbox)));
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn hosts(d: &Daemon, sandbox: &str) -> String {
    d.exec_ok(sandbox, &["cat", "/etc/hosts"])
}

#[test]
fn links_on_the_default_bridge_give_hosts_lines_and_variables() {
    let d = Daemon::start("lnkbr");
    // The target: a TCP server on an exposed port, a published one, and variables.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "db1",
        "--hostname",
        "dbhost",
        "--expose",
        "5432",
        "--expose",
        "53/udp",
        "-p",
        "18080:80",
        "-e",
        "PASSWORD=s3cret=x",
        "-e",
        "HOME=/nope",
        "--",
        "socat",
        "TCP-LISTEN:5432,reuseaddr,fork",
        "SYSTEM:echo pong-from-db1",
    ]);
    let ip = d.ip("db1", "bridge");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--link",
        "db1:my-db",
        "-e",
        "MY_DB_ENV_PASSWORD=mine",
        "--",
        "sleep",
        "300",
    ]);
    d.ok(&["run", "-d", "--name", "plain"]);

    // Docker's variables in the linked process's environment.
    let env = process_env(&d, "web");
    let want = [
        ("MY_DB_NAME", "/web/my-db".to_string()),
        ("MY_DB_PORT", format!("udp://{ip}:53")),
        ("MY_DB_PORT_53_UDP", format!("udp://{ip}:53")),
        ("MY_DB_PORT_53_UDP_PROTO", "udp".into()),
        ("MY_DB_PORT_80_TCP", format!("tcp://{ip}:80")),
        ("MY_DB_PORT_5432_TCP", format!("tcp://{ip}:5432")),
        ("MY_DB_PORT_5432_TCP_ADDR", ip.clone()),
        ("MY_DB_PORT_5432_TCP_PORT", "5432".into()),
        ("MY_DB_PORT_5432_TCP_PROTO", "tcp".into()),
        // The linker's own -e wins over the link's variable of the same name.
        ("MY_DB_ENV_PASSWORD", "mine".into()),
    ];
    for (k, v) in want {
        assert_eq!(env.get(k), Some(&v), "{k} in {env:?}");
    }
    assert!(!env.contains_key("MY_DB_ENV_HOME"), "{env:?}");

    // The hosts file: alias, the target's hostname and name; the name reaches it.
    let h = hosts(&d, "web");
    assert!(h.contains(&format!("{ip}\tmy-db dbhost db1\n")), "{h}");
    let out = d.exec_ok(
        "web",
        &[
            "socat",
            "-T",
            "5",
            "-u",
            "TCP:my-db:5432,connect-timeout=5",
            "-",
        ],
    );
    assert_eq!(out.trim(), "pong-from-db1");
    assert!(d.exec_ok("web", &["getent", "hosts", "db1"]).contains(&ip));
    // No DNS on the default bridge: a sandbox without the link does not know the name.
    assert!(!hosts(&d, "plain").contains("db1"));
    assert!(
        !d.exec("plain", &["getent", "hosts", "my-db"])
            .status
            .success()
    );

    // inspect shows the link as Docker does, and the ports a link announces.
    let v = d.inspect("web");
    assert_eq!(v["links"], serde_json::json!(["/db1:/web/my-db"]), "{v}");
    let v = d.inspect("db1");
    assert_eq!(
        v["exposed_ports"],
        serde_json::json!(["53/udp", "80/tcp", "5432/tcp"]),
        "{v}"
    );

    // The target removed: its lines go. Made again (another sandbox took its old address
    // first), the lines follow its new address.
    d.ok(&["rm", "-f", "db1"]);
    assert!(!hosts(&d, "web").contains("db1"), "{}", hosts(&d, "web"));
    d.ok(&["run", "-d", "--name", "filler"]);
    d.ok(&["run", "-d", "--name", "db1", "--hostname", "dbhost"]);
    let ip2 = d.ip("db1", "bridge");
    assert_ne!(ip, ip2);
    let h = hosts(&d, "web");
    assert!(h.contains(&format!("{ip2}\tmy-db dbhost db1\n")), "{h}");
    assert!(!h.contains(&format!("{ip}\t")), "{h}");
    // Removing the linker leaves the target alone.
    d.ok(&["rm", "-f", "web"]);
    assert!(d.inspect("db1")["status"] == "running");
}

#[test]
fn links_on_a_user_network_are_aliases_only_the_linker_resolves() {
    let d = Daemon::start("lnkuser");
    // Internal: names nobody has are NXDOMAIN at once (nothing to forward to).
    d.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.216.0.0/24",
        "lnet",
    ]);
    d.ok(&["network", "create", "--subnet", "10.216.1.0/24", "lother"]);
    d.ok(&["run", "-d", "--name", "t1", "--network", "lnet"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "q",
        "--network",
        "lnet",
        "--link",
        "t1:DB",
    ]);
    d.ok(&["run", "-d", "--name", "r", "--network", "lnet"]);
    let ip = d.ip("t1", "lnet");

    for name in ["db", "DB", "db.lnet"] {
        assert_eq!(d.dig("q", &[name]).data("A"), [ip.as_str()], "{name}");
    }
    assert_eq!(d.dig("q", &["t1"]).data("A"), [ip.as_str()]);
    // Only q's view has the alias.
    assert_eq!(d.dig("r", &["db"]).status, "NXDOMAIN");
    assert_eq!(d.dig("r", &["t1"]).data("A"), [ip.as_str()]);
    // No hosts-file lines off the default bridge.
    assert!(!hosts(&d, "q").contains("t1"));
    assert_eq!(d.inspect("q")["links"], serde_json::json!(["/t1:/q/DB"]));

    // The target removed: the alias stops answering; made again, it answers its new address.
    d.ok(&["rm", "-f", "t1"]);
    assert_eq!(d.dig("q", &["db"]).status, "NXDOMAIN");
    d.ok(&["run", "-d", "--name", "filler", "--network", "lnet"]);
    d.ok(&["run", "-d", "--name", "t1", "--network", "lnet"]);
    let ip2 = d.ip("t1", "lnet");
    assert_ne!(ip, ip2);
    assert_eq!(d.dig("q", &["db"]).data("A"), [ip2.as_str()]);
    assert_eq!(d.dig("r", &["db"]).status, "NXDOMAIN");

    // A target on no network the linker is on: refused, as Docker refuses a link it cannot
    // make.
    d.ok(&["run", "-d", "--name", "far", "--network", "lother"]);
    let e = d.fails(&[
        "run",
        "-d",
        "--name",
        "q2",
        "--network",
        "lnet",
        "--link",
        "far:f",
    ]);
    assert!(e.contains("far") && e.contains("shares no network"), "{e}");
    assert!(!d.ok(&["ps", "-a"]).contains("q2"));
}

/// Every file under `dir` (relative paths).
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn bad_links_are_refused_and_leave_nothing_behind() {
    let d = Daemon::start("lnkbad");
    d.ok(&["network", "create", "--subnet", "10.216.2.0/24", "lbad"]);
    d.ok(&["run", "-d", "--name", "there", "--network", "lbad"]);
    d.ok(&["run", "-d", "--name", "gone", "--", "sh", "-c", "exit 0"]);
    wait_for(Duration::from_secs(10), || {
        (d.inspect("gone")["status"] == "exited").then_some(())
    })
    .expect("gone exits");
    let run = d.dir.path().join("run");
    let logs = d.dir.path().join("state").join("logs");
    // (IDs, not the table: its CREATED and STATUS columns move with the clock.)
    let before = (d.ok(&["ps", "-a", "-q"]), files(&run), files(&logs));

    // Unknown target: a clear error naming it.
    let e = d.fails(&[
        "run", "-d", "--name", "bad1", "--link", "nosuch", "--", "sleep", "300",
    ]);
    assert!(e.contains("nosuch") && e.contains("no such sandbox"), "{e}");
    // On the default bridge, the target must run and be on it (Docker's errors).
    let e = d.fails(&["run", "-d", "--name", "bad2", "--link", "gone:g"]);
    assert!(e.contains("non running sandbox: /gone AS /bad2/g"), "{e}");
    let e = d.fails(&["run", "-d", "--name", "bad3", "--link", "there"]);
    assert!(e.contains("does not belong to the default network"), "{e}");
    // Nothing to link from without a network of its own; one alias twice; a bad alias.
    let e = d.fails(&[
        "run",
        "-d",
        "--name",
        "bad4",
        "--network",
        "host",
        "--link",
        "there",
    ]);
    assert!(e.contains("links need a network"), "{e}");
    let e = d.fails(&[
        "run",
        "-d",
        "--name",
        "bad5",
        "--network",
        "lbad",
        "--link",
        "there:x",
        "--link",
        "there:X",
    ]);
    assert!(e.contains("given twice"), "{e}");
    let e = d.fails(&["run", "-d", "--name", "bad6", "--link", "there:a b"]);
    assert!(e.contains("link alias"), "{e}");

    // Nothing was made: no sandbox, namespace, files or log.
    let after = (d.ok(&["ps", "-a", "-q"]), files(&run), files(&logs));
    assert_eq!(before, after);
    for n in ["bad1", "bad2", "bad3", "bad4", "bad5", "bad6"] {
        assert!(d.fails(&["inspect", n]).contains("not found"), "{n}");
    }
}

#[test]
fn rm_link_removes_the_link_and_no_sandbox() {
    let d = Daemon::start("lnkrm");
    // The default bridge: hosts lines (and variables, which a running process keeps).
    d.ok(&[
        "run", "-d", "--name", "db1", "--expose", "5432", "--", "sleep", "300",
    ]);
    d.ok(&["run", "-d", "--name", "cache1", "--", "sleep", "300"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--link",
        "db1:db",
        "--link",
        "cache1:cache",
        "--",
        "sleep",
        "300",
    ]);
    let (db_ip, cache_ip) = (d.ip("db1", "bridge"), d.ip("cache1", "bridge"));
    let h = hosts(&d, "web");
    assert!(h.contains(&format!("{db_ip}\tdb ")), "{h}");
    assert!(h.contains(&format!("{cache_ip}\tcache ")), "{h}");
    let pid = d.inspect("web")["pid"].clone();
    assert!(process_env(&d, "web").contains_key("DB_NAME"));

    // Docker's form, `/LINKING/ALIAS`: printed back as given.
    assert_eq!(d.ok(&["rm", "--link", "/web/db"]).trim(), "/web/db");
    let h = hosts(&d, "web");
    assert!(!h.contains("\tdb "), "the link's line went: {h}");
    assert!(!h.contains(&format!("{db_ip}\t")), "{h}");
    assert!(
        h.contains(&format!("{cache_ip}\tcache ")),
        "the other link stays: {h}"
    );
    assert!(
        !d.exec("web", &["getent", "hosts", "db"]).status.success(),
        "db no longer resolves in web"
    );
    // No sandbox removed; the process runs on with its variables (as in Docker).
    for n in ["db1", "cache1", "web"] {
        assert_eq!(d.inspect(n)["status"], "running", "{n}");
    }
    assert_eq!(d.inspect("web")["pid"], pid);
    assert!(process_env(&d, "web").contains_key("DB_NAME"));
    assert_eq!(
        d.inspect("web")["links"],
        serde_json::json!(["/cache1:/web/cache"])
    );

    // Clear errors: the link is gone, no such sandbox, not a link name.
    let e = d.fails(&["rm", "-l", "web/db"]);
    assert!(e.contains("sandbox web has no link db"), "{e}");
    let e = d.fails(&["rm", "--link", "/nosuch/db"]);
    assert!(e.contains("sandbox nosuch not found"), "{e}");
    let e = d.fails(&["rm", "--link", "web"]);
    assert!(
        e.contains("invalid link name") && e.contains("/LINKING/ALIAS"),
        "{e}"
    );
    // Several at once: each reported; one failure fails the command.
    let out = d.sdctl(&["rm", "--link", "web/cache", "web/nope"]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "web/cache");
    assert!(!hosts(&d, "web").contains("cache"), "{}", hosts(&d, "web"));

    // A user-defined network: the alias stops answering from the linker's resolver.
    d.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.216.3.0/24",
        "lrm",
    ]);
    d.ok(&["run", "-d", "--name", "t1", "--network", "lrm"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "q",
        "--network",
        "lrm",
        "--link",
        "t1:Store",
    ]);
    let ip = d.ip("t1", "lrm");
    assert_eq!(d.dig("q", &["store"]).data("A"), [ip.as_str()]);
    // Aliases match regardless of case.
    d.ok(&["rm", "--link", "/q/STORE"]);
    assert_eq!(d.dig("q", &["store"]).status, "NXDOMAIN");
    assert_eq!(d.dig("q", &["store.lrm"]).status, "NXDOMAIN");
    assert_eq!(d.dig("q", &["t1"]).data("A"), [ip.as_str()]);
    assert_eq!(d.inspect("q")["links"], serde_json::json!([]));
    // The target made again does not bring the link back.
    d.ok(&["rm", "-f", "t1"]);
    d.ok(&["run", "-d", "--name", "t1", "--network", "lrm"]);
    assert_eq!(d.dig("q", &["store"]).status, "NXDOMAIN");
}
