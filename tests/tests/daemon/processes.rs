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
