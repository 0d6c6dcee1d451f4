//! Sandbox lifecycle: stop/start/restart keep the sandbox (namespace, address, name), kill
//! with a signal, wait, port, pause/unpause, `--restart` policies, and `sdctl events`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sdnet_tests::{Daemon, sdctl, wait_for};

fn status(d: &Daemon, name: &str) -> String {
    d.inspect(name)["status"].as_str().unwrap_or("").to_string()
}

fn pid(d: &Daemon, name: &str) -> Option<u64> {
    d.inspect(name)["pid"].as_u64()
}

fn count(log: &str, line: &str) -> usize {
    log.lines().filter(|l| l.trim() == line).count()
}

/// Waits until the sandbox's process runs (after a start or a policy restart).
fn running(d: &Daemon, name: &str) -> u64 {
    wait_for(Duration::from_secs(10), || {
        (status(d, name) == "running")
            .then(|| pid(d, name))
            .flatten()
    })
    .unwrap_or_else(|| panic!("{name} does not run: {}\n{}", d.inspect(name), d.log()))
}

#[test]
fn stop_start_restart_keep_the_sandbox_and_its_name() {
    let d = Daemon::start("lcstop");
    d.ok(&["network", "create", "--subnet", "10.141.1.0/24", "lcn"]);
    d.ok(&["run", "-d", "--name", "peer", "--network", "lcn"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "lcn",
        "--",
        "sh",
        "-c",
        "echo run; trap 'echo term; exit 0' TERM; while :; do sleep 0.1; done",
    ]);
    let ip = d.ip("web", "lcn");
    let first = running(&d, "web");
    wait_for(Duration::from_secs(5), || {
        d.ok(&["logs", "web"]).contains("run").then_some(())
    })
    .expect("first run");

    // stop: SIGTERM (the trap answers), the sandbox stays with its address and its name.
    assert_eq!(d.ok(&["stop", "-t", "5", "web"]).trim(), "web");
    let v = d.inspect("web");
    assert_eq!(v["status"], "exited", "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(v["pid"].is_null());
    assert!(d.ok(&["logs", "web"]).contains("term"));
    assert_eq!(d.ip("web", "lcn"), ip);
    assert!(d.netns_path("web").exists());
    assert!(d.exec_ok("web", &["ip", "-o", "addr"]).contains(&ip));
    // Decided: a stopped sandbox still answers by name (it is its namespace, which stays).
    assert_eq!(d.dig("peer", &["web"]).data("A"), vec![ip.clone()]);
    let ps = d.ok(&["ps"]);
    assert!(!ps.contains("web"), "{ps}");
    let ps = d.ok(&["ps", "-a"]);
    assert!(
        ps.lines()
            .any(|l| l.contains("web") && l.contains("Exited (0)")),
        "{ps}"
    );

    // start: the command runs again, in the same sandbox.
    assert_eq!(d.ok(&["start", "web"]).trim(), "web");
    let second = running(&d, "web");
    assert_ne!(first, second);
    wait_for(Duration::from_secs(5), || {
        (count(&d.ok(&["logs", "web"]), "run") == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("two runs: {}", d.ok(&["logs", "web"])));
    assert_eq!(d.ip("web", "lcn"), ip);
    // start of a running sandbox: nothing happens (Docker's too).
    d.ok(&["start", "web"]);
    assert_eq!(pid(&d, "web"), Some(second));

    // restart: stop (the trap runs again) and start.
    d.ok(&["restart", "web"]);
    let third = running(&d, "web");
    assert_ne!(third, second);
    let log = d.ok(&["logs", "web"]);
    assert_eq!((count(&log, "run"), count(&log, "term")), (3, 2), "{log}");
    assert_eq!(d.inspect("web")["restart_count"], 0);

    // A process that ignores SIGTERM is killed after the timeout.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "--network",
        "lcn",
        "--",
        "sh",
        "-c",
        "trap '' TERM; while :; do sleep 0.1; done",
    ]);
    running(&d, "stubborn");
    d.ok(&["stop", "-t", "1", "stubborn"]);
    let v = d.inspect("stubborn");
    assert_eq!(
        (v["status"].as_str(), v["exit_code"].as_i64()),
        (Some("exited"), Some(137)),
        "{v}"
    );

    // Errors.
    assert!(d.fails(&["start", "nosuch"]).contains("not found"));
    assert!(d.fails(&["stop", "nosuch"]).contains("not found"));
    assert!(d.fails(&["stop", "peer"]).contains("no command"));
}

#[test]
fn kill_wait_port_pause() {
    let d = Daemon::start("lckill");
    d.ok(&["network", "create", "--subnet", "10.141.2.0/24", "lcn"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "trapper",
        "--network",
        "lcn",
        "-p",
        "18080:80",
        "-p",
        "127.0.0.1:15353:53/udp",
        "--",
        "sh",
        "-c",
        "trap 'echo got-usr1' USR1; echo ready; while :; do sleep 0.1; done",
    ]);
    let p = running(&d, "trapper");
    wait_for(Duration::from_secs(5), || {
        d.ok(&["logs", "trapper"]).contains("ready").then_some(())
    })
    .expect("ready");
    d.ok(&["kill", "-s", "USR1", "trapper"]);
    wait_for(Duration::from_secs(5), || {
        d.ok(&["logs", "trapper"])
            .contains("got-usr1")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no USR1 seen: {}", d.ok(&["logs", "trapper"])));
    assert_eq!(pid(&d, "trapper"), Some(p), "USR1 does not end it");
    assert!(
        d.fails(&["kill", "-s", "NOSUCH", "trapper"])
            .contains("invalid signal")
    );

    // port
    assert_eq!(
        d.ok(&["port", "trapper"]),
        "80/tcp -> 0.0.0.0:18080\n53/udp -> 127.0.0.1:15353\n"
    );
    assert_eq!(d.ok(&["port", "trapper", "80/tcp"]), "0.0.0.0:18080\n");
    assert_eq!(d.ok(&["port", "trapper", "53/udp"]), "127.0.0.1:15353\n");
    assert!(
        d.fails(&["port", "trapper", "81"])
            .contains("no public port '81/tcp'")
    );

    // kill (SIGKILL by default), then wait prints the exit code; again at once once exited.
    d.ok(&["kill", "trapper"]);
    assert_eq!(d.ok(&["wait", "trapper"]).trim(), "137");
    assert!(d.fails(&["kill", "trapper"]).contains("not running"));

    // wait blocks until the process exits.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "waiter",
        "--network",
        "lcn",
        "--",
        "sh",
        "-c",
        "sleep 1; exit 5",
    ]);
    assert_eq!(d.ok(&["wait", "waiter"]).trim(), "5");
    assert_eq!(d.ok(&["wait", "waiter"]).trim(), "5");

    // pause freezes the process (its counter stops), unpause resumes it.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "counter",
        "--network",
        "lcn",
        "--",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done",
    ]);
    running(&d, "counter");
    let lines = |d: &Daemon| d.ok(&["logs", "counter"]).lines().count();
    wait_for(Duration::from_secs(5), || (lines(&d) > 3).then_some(())).expect("counting");
    d.ok(&["pause", "counter"]);
    assert_eq!(status(&d, "counter"), "paused");
    assert!(d.ok(&["ps"]).contains("(Paused)"));
    let frozen = lines(&d);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(lines(&d), frozen, "a paused process kept counting");
    assert!(d.fails(&["pause", "counter"]).contains("already paused"));
    assert!(d.fails(&["kill", "counter"]).contains("paused"));
    d.ok(&["unpause", "counter"]);
    wait_for(Duration::from_secs(5), || {
        (lines(&d) > frozen + 3).then_some(())
    })
    .expect("counting again after unpause");
    assert!(d.fails(&["unpause", "counter"]).contains("not paused"));
    // A paused sandbox stops (it is thawed to get its signal).
    d.ok(&["pause", "counter"]);
    d.ok(&["stop", "-t", "5", "counter"]);
    assert_eq!(status(&d, "counter"), "exited");
}

#[test]
fn restart_policies() {
    let d = Daemon::start("lcpol");
    d.ok(&["network", "create", "--subnet", "10.141.3.0/24", "lcn"]);
    // on-failure:2: two restarts, then it stays exited.
    d.ok(&[
        "run",
        "-d",
        "--restart",
        "on-failure:2",
        "--name",
        "flaky",
        "--network",
        "lcn",
        "--",
        "sh",
        "-c",
        "echo try; exit 3",
    ]);
    wait_for(Duration::from_secs(10), || {
        let v = d.inspect("flaky");
        (v["status"] == "exited" && v["restart_count"] == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("{}\n{}", d.inspect("flaky"), d.log()));
    std::thread::sleep(Duration::from_millis(1500));
    let v = d.inspect("flaky");
    assert_eq!(
        (v["status"].as_str(), v["restart_count"].as_u64()),
        (Some("exited"), Some(2)),
        "{v}"
    );
    assert_eq!(v["restart_policy"], "on-failure:2");
    assert_eq!(count(&d.ok(&["logs", "flaky"]), "try"), 3);
    assert!(d.ok(&["ps", "-a"]).contains("Exited (3)"));
    // on-failure does not restart a success.
    d.ok(&[
        "run",
        "-d",
        "--restart",
        "on-failure",
        "--name",
        "fine",
        "--network",
        "lcn",
        "--",
        "sh",
        "-c",
        "echo once",
    ]);
    assert_eq!(d.ok(&["wait", "fine"]).trim(), "0");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(d.inspect("fine")["restart_count"], 0);

    // always: started again after a kill; not after a stop.
    d.ok(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "phoenix",
        "--network",
        "lcn",
        "--",
        "sh",
        "-c",
        "echo up; while :; do sleep 0.1; done",
    ]);
    let p1 = running(&d, "phoenix");
    d.ok(&["kill", "phoenix"]);
    let p2 = wait_for(Duration::from_secs(10), || {
        let v = d.inspect("phoenix");
        (v["status"] == "running" && v["restart_count"] == 1)
            .then(|| v["pid"].as_u64())
            .flatten()
    })
    .unwrap_or_else(|| panic!("not restarted: {}", d.inspect("phoenix")));
    assert_ne!(p1, p2);
    wait_for(Duration::from_secs(5), || {
        (count(&d.ok(&["logs", "phoenix"]), "up") == 2).then_some(())
    })
    .expect("two runs");
    d.ok(&["stop", "-t", "2", "phoenix"]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(status(&d, "phoenix"), "exited");

    // Daemon restarts: a stopped `always` sandbox is started with the daemon, a stopped
    // `unless-stopped` one is not; a running one is adopted, not restarted.
    d.ok(&[
        "run",
        "-d",
        "--restart",
        "unless-stopped",
        "--name",
        "quiet",
        "--network",
        "lcn",
        "--",
        "sh",
        "-c",
        "while :; do sleep 0.1; done",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--restart",
        "unless-stopped",
        "--name",
        "steady",
        "--network",
        "lcn",
        "--",
        "sh",
        "-c",
        "while :; do sleep 0.1; done",
    ]);
    running(&d, "quiet");
    let steady = running(&d, "steady");
    d.ok(&["stop", "-t", "2", "quiet"]);
    let mut d = d;
    d.stop_and_restart();
    running(&d, "phoenix");
    assert_eq!(pid(&d, "steady"), Some(steady));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(status(&d, "quiet"), "exited");

    // Errors.
    let e = d.fails(&["run", "-d", "--restart", "sometimes", "--", "true"]);
    assert!(e.contains("invalid restart policy"), "{e}");
    let e = d.fails(&["run", "-d", "--restart", "always:3", "--", "true"]);
    assert!(e.contains("only be used with 'on-failure'"), "{e}");
    let e = d.fails(&["run", "-d", "--rm", "--restart", "always", "--", "true"]);
    assert!(e.contains("conflicting options"), "{e}");
}

/// Collects the lines of a streaming `sdctl events` until `done` matches one (bounded).
fn stream_until(d: &Daemon, args: &[&str], done: &str) -> Vec<String> {
    let mut child = Command::new(sdctl())
        .arg("events")
        .args(args)
        .env("SDNET_SOCKET", &d.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("sdctl events");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let end = l.contains(done);
                lines.push(l);
                if end {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn events_in_order_with_filters() {
    let d = Daemon::start("lcev");
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 1.0;
    let since = format!("{t0:.3}");
    d.ok(&["network", "create", "--subnet", "10.141.4.0/24", "evnet"]);
    d.ok(&["network", "create", "--subnet", "10.141.5.0/24", "evnet2"]);
    d.ok(&["run", "-d", "--name", "other", "--network", "evnet"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "ev1",
        "--network",
        "evnet",
        "--",
        "sh",
        "-c",
        "while :; do sleep 0.1; done",
    ]);
    running(&d, "ev1");
    d.ok(&["network", "connect", "evnet2", "ev1"]);
    d.ok(&["network", "disconnect", "evnet2", "ev1"]);
    d.ok(&["kill", "ev1"]);
    assert_eq!(d.ok(&["wait", "ev1"]).trim(), "137");
    d.ok(&["rm", "ev1"]);

    let lines = stream_until(
        &d,
        &[
            "--since",
            &since,
            "--filter",
            "sandbox=ev1",
            "--format",
            "json",
        ],
        "\"destroy\"",
    );
    let evs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let seq: Vec<String> = evs
        .iter()
        .map(|e| {
            let net = if e["type"] == "network" {
                format!(":{}", e["name"].as_str().unwrap_or(""))
            } else {
                String::new()
            };
            format!(
                "{} {}{net}",
                e["type"].as_str().unwrap(),
                e["action"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        seq,
        [
            "sandbox create",
            "network connect:evnet",
            "sandbox start",
            "network connect:evnet2",
            "network disconnect:evnet2",
            "sandbox kill",
            "sandbox die",
            "network disconnect:evnet",
            "sandbox destroy",
        ],
        "{lines:#?}"
    );
    let die = &evs[6];
    assert_eq!(die["attributes"]["exitCode"], "137");
    let times: Vec<u64> = evs
        .iter()
        .map(|e| e["time_nano"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");

    // Filters by type and event; the human format.
    let lines = stream_until(
        &d,
        &[
            "--since",
            &since,
            "--until",
            "0s",
            "--filter",
            "type=network",
            "--filter",
            "event=create",
            "--filter",
            "network=evnet",
            "--filter",
            "network=evnet2",
        ],
        "evnet2",
    );
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains(" network create ") && lines[0].contains("name=evnet)"),
        "{lines:#?}"
    );
    assert!(lines[1].contains("name=evnet2"), "{lines:#?}");

    // Live: an event after the stream started arrives.
    let mut child = Command::new(sdctl())
        .args(["events", "--filter", "event=die", "--format", "json"])
        .env("SDNET_SOCKET", &d.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("sdctl events");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    d.ok(&[
        "run",
        "-d",
        "--name",
        "ev2",
        "--network",
        "evnet",
        "--",
        "sh",
        "-c",
        "exit 9",
    ]);
    let got = rx.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    let got = got.expect("a live die event");
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(
        (v["name"].as_str(), v["attributes"]["exitCode"].as_str()),
        (Some("ev2"), Some("9"))
    );

    // Bad filters are refused.
    assert!(
        d.fails(&["events", "--filter", "colour=red"])
            .contains("invalid filter key")
    );
}
