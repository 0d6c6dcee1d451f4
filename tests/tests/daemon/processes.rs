//! Processes in sandboxes: logs, `exec` and its exit codes, foreground and `--rm` runs.

use std::time::Duration;

use sdnet_tests::{Daemon, wait_for};

#[test]
fn processes_exec_logs_and_exit_codes() {
    let d = Daemon::start("dproc");
    d.ok(&["network", "create", "--subnet", "10.78.0.0/24", "n"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "svc",
        "--hostname",
        "svc-host",
        "--network",
        "n",
        "--",
        "sh",
        "-c",
        "echo started; hostname; grep nameserver /etc/resolv.conf; exec sleep 300",
    ]);
    let logs = wait_for(Duration::from_secs(10), || {
        let l = d.ok(&["logs", "svc"]);
        l.contains("nameserver").then_some(l)
    })
    .expect("logs");
    assert!(
        logs.contains("started")
            && logs.contains("svc-host")
            && logs.contains("nameserver 127.0.0.11"),
        "{logs}"
    );
    // exec: exit code passed through, hostname and network of the sandbox.
    assert_eq!(
        d.exec("svc", &["sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    assert_eq!(d.exec_ok("svc", &["hostname"]).trim(), "svc-host");
    assert!(d.exec_ok("svc", &["ip", "-o", "addr"]).contains("10.78.0."));
    // rm of a running process needs -f.
    assert!(d.fails(&["rm", "svc"]).contains("-f"));
    let ps = d.ok(&["ps"]);
    assert!(
        ps.lines().any(|l| l.contains("svc") && l.contains(" Up ")),
        "{ps}"
    );
    // Foreground run: output, exit code, --rm removes it.
    let out = d.sdctl(&[
        "run",
        "--rm",
        "--name",
        "once",
        "--network",
        "n",
        "--",
        "sh",
        "-c",
        "echo hi from once; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hi from once"));
    assert!(!d.ok(&["ps", "-a"]).contains("once"));
    // A process that exits: the sandbox shows Exited with its code; -d --rm is removed.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "short",
        "--network",
        "n",
        "--",
        "sh",
        "-c",
        "exit 5",
    ]);
    let exited = wait_for(Duration::from_secs(10), || {
        let ps = d.ok(&["ps", "-a"]);
        ps.lines()
            .any(|l| l.contains("short") && l.contains("Exited (5)"))
            .then_some(())
    });
    assert!(exited.is_some(), "{}", d.ok(&["ps", "-a"]));
    d.ok(&[
        "run",
        "-d",
        "--rm",
        "--name",
        "gone",
        "--network",
        "n",
        "--",
        "true",
    ]);
    let removed = wait_for(Duration::from_secs(10), || {
        (!d.ok(&["ps", "-a"]).contains("gone")).then_some(())
    });
    assert!(removed.is_some());
    d.ok(&["rm", "-f", "svc", "short"]);
}

/// Descriptors below 1024 the daemon holds (libnftables select()s on its socket, so it is
/// used only while low descriptors are free; without them every nft transaction spawns the
/// `nft` binary, which made a create at the 1,000th sandbox 5× slower).
fn low_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|fd| *fd < 1024)
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn sandboxes_leave_the_low_descriptors_free() {
    let d = Daemon::start("dlowfd");
    d.ok(&["network", "create", "--subnet", "10.79.0.0/24", "n"]);
    d.ok(&["run", "-d", "--name", "first", "--network", "n"]);
    let before = low_fds(d.pid);
    for i in 0..30 {
        d.ok(&["run", "-d", "--name", &format!("s{i}"), "--network", "n"]);
    }
    // Each sandbox holds a namespace handle and its DNS sockets (and copies): all above 1024.
    // What may take low ones: the libnftables contexts kept for reuse (at most 16).
    let after = low_fds(d.pid);
    assert!(
        after < before + 24,
        "30 sandboxes took {} descriptors below 1024 ({before} → {after})",
        after.saturating_sub(before)
    );
    // And they still answer, also after a restart (the keeper hands the sockets back).
    let mut d = d;
    d.stop_and_restart();
    let restored = low_fds(d.pid);
    assert!(
        restored < before + 24,
        "after a restart: {restored} descriptors below 1024 (first start: {before})"
    );
    let ip = d.ip("s29", "n");
    assert_eq!(d.dig("first", &["s29"]).data("A"), [ip]);
}
