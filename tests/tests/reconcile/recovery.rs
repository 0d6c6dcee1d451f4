//! A restart finds the same namespaces and processes; `rm` leaves no log behind.

use std::path::Path;
use std::time::Duration;

use sdnet_tests::{Daemon, KillMarked, netns_of_pid, unique, wait_for};

use crate::common::{exec_net, s};

#[test]
fn restart_finds_the_same_namespaces_and_processes_and_rm_leaves_no_log() {
    let mut d = Daemon::start_with("rrec", &["--resync-interval", "1s"]);
    let mark = format!("SDNET_TEST_MARK={}", unique());
    let _reaper = KillMarked(mark.clone());
    d.ok(&["network", "create", "--subnet", "10.64.0.0/24", "n"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "p",
        "--network",
        "n",
        "-e",
        &mark,
        "--",
        "sleep",
        "300",
    ]);
    d.ok(&["run", "-d", "--name", "q", "--network", "n"]);
    let q_ip = d.ip("q", "n");
    let pid = d.inspect("p")["pid"].as_u64().expect("p's pid") as u32;
    let p_net = netns_of_pid(pid).expect("p's namespace");
    assert_eq!(exec_net(&d, "p"), p_net);
    let q_net = exec_net(&d, "q");
    assert_ne!(q_net, p_net);
    // What the process itself sees: its namespaces (network and mount: its resolv.conf).
    let in_proc = |args: &[&str]| {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "-m", "--"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    assert_eq!(
        in_proc(&["dig", "+short", "+tries=2", "+time=2", "q"]),
        (true, q_ip.clone())
    );

    d.kill9_and_restart();
    assert_eq!(
        exec_net(&d, "p"),
        p_net,
        "exec enters another namespace than the process's"
    );
    assert_eq!(exec_net(&d, "q"), q_net, "q's namespace changed");
    let v = d.inspect("p");
    assert_eq!(
        (s(&v["status"]), v["pid"].as_u64()),
        ("running".into(), Some(pid as u64))
    );
    assert_eq!(netns_of_pid(pid), Some(p_net.clone()));
    let ps = d.ok(&["ps"]);
    assert!(
        ps.lines().any(|l| l.contains(" p ") || l.ends_with(" p")),
        "{ps}"
    );
    // The process's DNS and traffic work after the restart.
    assert_eq!(
        in_proc(&["dig", "+short", "+tries=2", "+time=2", "q"]),
        (true, q_ip.clone())
    );
    assert!(
        in_proc(&["ping", "-c1", "-W2", &q_ip]).0,
        "p cannot reach q"
    );
    assert_eq!(d.dig("p", &["q"]).data("A"), [q_ip.clone()]);
    assert_eq!(d.dig("q", &["p"]).data("A"), [d.ip("p", "n")]);

    // kill -9 while `rm -f` runs, at several points — some timed from the call, some from the
    // moment the store file changes (the removal committing: the reconciler has not acted on
    // it yet) — and after the restart (and a resync) a removed sandbox leaves neither its log
    // file nor its process.
    let logs = d.dir.path().join("state").join("logs");
    let db = d.dir.path().join("state").join("state.redb");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let points: [(bool, u64); 9] = [
        (false, 0),
        (false, 15),
        (false, 60),
        (true, 0),
        (true, 0),
        (true, 200),
        (true, 500),
        (true, 1000),
        (true, 3000),
    ];
    for (i, (on_write, delay_us)) in points.into_iter().enumerate() {
        let name = format!("r{i}");
        d.ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "n",
            "-e",
            &mark,
            "--",
            "sleep",
            "300",
        ]);
        let v = d.inspect(&name);
        let id = s(&v["id"]);
        let rpid = v["pid"].as_u64().unwrap() as u32;
        let log = logs.join(format!("{id}.log"));
        assert!(log.exists(), "{} missing", log.display());
        let before = mtime(&db);
        std::thread::scope(|sc| {
            let d = &d;
            let name = name.clone();
            let rm = sc.spawn(move || d.sdctl(&["rm", "-f", &name]));
            if on_write {
                // Spin (bounded) until the store file changes.
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while mtime(&db) == before && std::time::Instant::now() < deadline {
                    std::hint::spin_loop();
                }
                std::thread::sleep(Duration::from_micros(delay_us));
            } else {
                std::thread::sleep(Duration::from_millis(delay_us));
            }
            d.kill9();
            let _ = rm.join();
        });
        d.restart();
        let gone = d.try_ps().unwrap().iter().all(|v| v["id"] != id.as_str());
        if !gone {
            // The removal did not reach the store: the sandbox is whole; remove it for real.
            d.ok(&["rm", "-f", &name]);
        }
        let when = if on_write {
            format!("{delay_us} µs after the store changed")
        } else {
            format!("{delay_us} ms after the call")
        };
        eprintln!("rm -f {name}, kill -9 {when}: reached the store: {gone}");
        let clean = wait_for(Duration::from_secs(5), || {
            (!log.exists() && netns_of_pid(rpid).is_none()).then_some(())
        });
        assert!(
            clean.is_some(),
            "rm -f {name} killed {when} (reached the store: {gone}): log left: {}, \
             process {rpid} left: {}",
            log.exists(),
            netns_of_pid(rpid).is_some()
        );
    }
    // p and q are untouched by all that.
    assert_eq!(exec_net(&d, "p"), p_net);
    assert_eq!(d.dig("p", &["q"]).data("A"), [q_ip]);
}
