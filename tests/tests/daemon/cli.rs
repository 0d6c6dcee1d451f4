//! The client: bad input refused, global flags, one-line errors, Docker habits, the socket.

use std::path::Path;
use std::time::Duration;

use sdnet_tests::{Daemon, Ns, TempDir, sdctl, wait_for};

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let d = Daemon::start("dbad");
    d.ok(&["network", "create", "--subnet", "10.74.0.0/24", "good"]);
    d.ok(&["run", "-d", "--name", "one", "--network", "good"]);
    let nets_before = d.ok(&["network", "ls", "-q"]);
    let ps_before = d.ok(&["ps", "-a", "-q"]);

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["network", "create", "-bad"], ""),
        (
            vec!["network", "create", "bad name"],
            "invalid network name",
        ),
        (
            vec!["network", "create", "--subnet", "10.74.0.0/33", "x1"],
            "invalid",
        ),
        (
            vec!["network", "create", "--subnet", "10.74.0.128/25", "x2"],
            "overlaps",
        ),
        (
            vec!["network", "create", "--subnet", "10.75.0.1/24", "x3"],
            "host bits",
        ),
        (
            vec![
                "network",
                "create",
                "--subnet",
                "10.76.0.0/24",
                "--gateway",
                "10.77.0.1",
                "x4",
            ],
            "not in any --subnet",
        ),
        (
            vec![
                "network",
                "create",
                "--subnet",
                "10.76.0.0/24",
                "--ip-range",
                "10.76.0.128/24",
                "x5",
            ],
            "",
        ),
        (vec!["network", "create", "good"], "already exists"),
        (vec!["network", "rm", "good"], "in use"),
        (vec!["network", "rm", "bridge"], "pre-defined"),
        (vec!["network", "rm", "nosuchnet"], "not found"),
        (
            vec!["run", "-d", "--name", "one", "--network", "good"],
            "already in use",
        ),
        (
            vec![
                "run",
                "-d",
                "--name",
                "two",
                "--network",
                "good",
                "--ip",
                "10.99.0.5",
            ],
            "not in subnet",
        ),
        (
            vec!["run", "-d", "--name", "two", "--network", "nosuchnet"],
            "not found",
        ),
        (
            vec!["run", "-d", "--name", "t w o", "--network", "good"],
            "invalid sandbox name",
        ),
        (
            vec![
                "run",
                "-d",
                "--name",
                "two",
                "--network",
                "good",
                "-p",
                "99999:80",
            ],
            "invalid port",
        ),
        (
            vec![
                "run",
                "-d",
                "--name",
                "two",
                "--network",
                "host",
                "--network",
                "good",
            ],
            "cannot be combined",
        ),
        (vec!["rm", "nosuchbox"], "not found"),
        (vec!["inspect", "nosuchbox"], "not found"),
        (vec!["exec", "nosuchbox", "--", "true"], "not found"),
        (
            vec!["network", "connect", "good", "one"],
            "already connected",
        ),
        (
            vec!["network", "disconnect", "bridge", "one"],
            "not connected",
        ),
    ];
    for (args, want) in cases {
        let err = d.fails(&args);
        assert!(
            err.to_lowercase().contains(&want.to_lowercase()),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // Fixed IP already taken.
    let ip = d.ip("one", "good");
    let err = d.fails(&[
        "run",
        "-d",
        "--name",
        "two",
        "--network",
        "good",
        "--ip",
        &ip,
    ]);
    assert!(err.contains("in use") || err.contains("allocated"), "{err}");
    assert_eq!(d.ok(&["network", "ls", "-q"]), nets_before);
    assert_eq!(d.ok(&["ps", "-a", "-q"]), ps_before);
    // Nothing half-made left behind by the refused requests.
    assert_eq!(d.our_links().len(), 3, "{:?}", d.our_links()); // 2 bridges + one veth

    // No daemon: a clear message saying how to start it.
    let out = std::process::Command::new(sdnet_tests::sdctl())
        .args(["ps", "--socket", "/nonexistent/sdnet.sock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("sdctl daemon"),
        "{err}"
    );
}

/// A time `inspect` printed: RFC 3339 in UTC, within a few minutes of now.
fn assert_recent_rfc3339(v: &serde_json::Value, what: &str) -> std::time::SystemTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"));
    assert!(
        s.ends_with('Z') && s.as_bytes().get(10) == Some(&b'T'),
        "{what}: {s}"
    );
    let t = humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{what}: {s}: {e}"));
    let now = std::time::SystemTime::now();
    let off = now.duration_since(t).unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_secs(300), "{what}: {s} is not now");
    t
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn daemon_socket_follows_its_run_dir_and_cleanup_spares_live_sockets() {
    let d = Daemon::start("dsock");
    let live = d.socket.display().to_string();

    // A second daemon without --socket (and without SDNET_SOCKET): it listens in its run dir.
    let ns = Ns::new("dsock2");
    let dir = TempDir::new("dsock2");
    let p = |x: &str| dir.path().join(x).display().to_string();
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
    let base = [
        "daemon",
        "--state-dir",
        &p("state"),
        "--run-dir",
        &p("run"),
        "--etc-netns-dir",
        &p("etc-netns"),
        "--no-netns-links",
        "--resolv-conf",
        &p("resolv.conf"),
    ];
    let mut cmd = ns.cmd(sdctl(), &base);
    cmd.env_remove("SDNET_SOCKET");
    let pid = ns.spawn(cmd, Some(&dir.path().join("daemon.log")));
    let own = dir.path().join("run").join("sdnet.sock");
    let up = wait_for(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&own)
            .ok()
            .map(|_| ())
    });
    assert!(
        up.is_some(),
        "no socket at {}:\n{}",
        own.display(),
        std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
    );
    let own = own.display().to_string();
    let out = d.sdctl_bare(&["--socket", &own, "network", "ls"]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    // Killed: its socket is a leftover now.
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    ns.stop(pid);
    assert!(Path::new(&own).exists());

    // --cleanup of that run dir naming the first daemon's live socket: the socket stays.
    let cleanup = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.push("--cleanup");
        args.extend_from_slice(extra);
        let mut cmd = ns.cmd(sdctl(), &args);
        cmd.env_remove("SDNET_SOCKET");
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "cleanup {extra:?}: {}",
            stderr_of(&out)
        );
    };
    cleanup(&["--socket", &live]);
    assert!(
        Path::new(&live).exists(),
        "a live daemon's socket was removed"
    );
    d.ok(&["ps"]);
    assert!(Path::new(&own).exists(), "not the socket it was told");

    // Without --socket it removes its own run dir's leftover, nothing else.
    cleanup(&[]);
    assert!(!Path::new(&own).exists(), "the leftover socket stayed");
    assert!(Path::new(&live).exists());
    d.ok(&["ps"]);
}

#[test]
fn global_flags_unknown_flags_and_one_line_errors() {
    let d = Daemon::start("dcli");
    let sock = d.socket.display().to_string();
    let unix = format!("unix://{sock}");

    // Global flags before or after the subcommand (no SDNET_SOCKET here).
    for args in [
        &["--socket", &sock, "ps"][..],
        &["ps", "--socket", &sock],
        &["-H", &unix, "ps", "-a"],
        &["--log-level", "debug", "--socket", &sock, "network", "ls"],
        &["network", "--socket", &sock, "ls", "--log-level", "warn"],
    ] {
        let out = d.sdctl_bare(args);
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
    }

    d.ok(&["network", "create", "--subnet", "10.81.0.0/24", "net1"]);
    d.ok(&["run", "-d", "--name", "a1", "--network", "net1"]);
    let logs_dir = d.dir.path().join("state").join("logs");
    let logs = || std::fs::read_dir(&logs_dir).map(|r| r.count()).unwrap_or(0);
    let logs_before = logs();

    // An unknown flag is an error naming it, in one line, exit code 2; nothing is made.
    let usage = |args: &[&str]| {
        let out = d.sdctl(args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        err.trim_end().to_string()
    };
    assert_eq!(
        usage(&[
            "run",
            "-d",
            "--name",
            "b2",
            "--volume",
            "/data:/data",
            "--network",
            "net1"
        ]),
        "sdctl: unexpected argument '--volume' found (see 'sdctl run --help')"
    );
    let e = usage(&[
        "services",
        "create",
        "--name",
        "s",
        "--network",
        "net1",
        "--bogus",
        "x",
    ]);
    assert!(
        e.contains("'--bogus'") && e.contains("sdctl services create --help"),
        "{e}"
    );
    let e = usage(&["services", "update", "s", "--bogus", "x"]);
    assert!(
        e.contains("'--bogus'") && e.contains("sdctl services update --help"),
        "{e}"
    );
    let e = usage(&["network", "create", "--subnet", "10.20.0.0/33", "x"]);
    assert!(e.contains("prefix length 33 is longer than 32"), "{e}");
    assert!(!e.contains("invalid IP address syntax"), "{e}");
    // A command that cannot start leaves neither a sandbox nor a log file.
    let err = d.fails(&[
        "run",
        "-d",
        "--name",
        "b3",
        "--network",
        "net1",
        "--",
        "/nonexistent/cmd",
    ]);
    assert!(err.contains("No such file"), "{err}");
    let all = d.ok(&["ps", "-a"]);
    // By whole words: a random sandbox ID can hold "b2".
    assert!(
        !all.split_whitespace().any(|w| w == "b2" || w == "b3"),
        "{all}"
    );
    assert_eq!(logs(), logs_before, "a log file was left behind");

    // Every bridge network is attachable, as --attachable's help says.
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(&["network", "inspect", "net1"])).unwrap();
    assert_eq!(v[0]["attachable"], true, "{v}");

    // Not root: say that root is needed, not how to start a daemon.
    let bin = sdctl();
    let nobody = |bin: &Path| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin)
            .args(["--socket", &sock, "ps"])
            .env_remove("SDNET_SOCKET")
            .output()
            .unwrap()
    };
    let mut out = nobody(&bin);
    let copy = TempDir::new("nobody");
    if stderr_of(&out).contains("Permission denied") && !stderr_of(&out).starts_with("sdctl") {
        // The build's directory is closed to nobody: run a copy they can reach.
        let b = copy.path().join("sdctl");
        std::fs::copy(&bin, &b).unwrap();
        std::fs::set_permissions(
            copy.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        out = nobody(&b);
    }
    assert_eq!(
        stderr_of(&out).trim_end(),
        "sdctl: permission denied: the sdnet API is for root (uid 65534)"
    );
    d.ok(&["rm", "-f", "a1"]);
}

#[test]
fn docker_habits_version_prune_ps_status_and_times() {
    let d = Daemon::start("dhab");
    d.ok(&["network", "create", "--subnet", "10.83.0.0/24", "net1"]);
    d.ok(&["run", "-d", "--name", "a1", "--network", "net1"]);
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(&["network", "inspect", "net1"])).unwrap();
    assert_recent_rfc3339(&v[0]["created"], "network created");

    // version: the client's and the daemon's.
    let v = d.ok(&["version"]);
    assert!(
        v.starts_with("Client:\n Version:") && v.contains("\nServer:\n Version:"),
        "{v}"
    );
    assert!(v.contains(&format!(" PID:          {}", d.pid)), "{v}");
    let out = d.sdctl_bare(&["version", "--socket", "/nonexistent/sdnet.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Client:"));
    assert!(
        stderr_of(&out).contains("sdctl daemon"),
        "{}",
        stderr_of(&out)
    );

    // network prune asks; with nobody to ask (stdin is not a terminal) it refuses.
    d.ok(&["network", "create", "--subnet", "10.82.0.0/24", "spare"]);
    let err = d.fails(&["network", "prune"]);
    assert!(err.contains("-f") && err.lines().count() == 1, "{err}");
    assert!(d.ok(&["network", "ls"]).contains("spare"));
    let pruned = d.ok(&["network", "prune", "-f"]);
    assert!(
        pruned.contains("spare") && !pruned.contains("net1"),
        "{pruned}"
    );

    // ps: Docker's STATUS and CREATED; inspect: RFC 3339 times of the process.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "up1",
        "--network",
        "net1",
        "--",
        "sleep",
        "300",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "ex3",
        "--network",
        "net1",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    let ps = wait_for(Duration::from_secs(10), || {
        let ps = d.ok(&["ps", "-a"]);
        ps.lines()
            .any(|l| l.contains("ex3") && l.contains("Exited (3) ") && l.contains(" ago   net1"))
            .then_some(ps)
    })
    .unwrap_or_else(|| panic!("{}", d.ok(&["ps", "-a"])));
    for name in ["a1", "up1"] {
        // By the NAME column: a random ID can hold "a1".
        let line = ps
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap();
        assert!(line.contains(" ago ") && line.contains(" Up "), "{ps}");
    }
    let up = d.inspect("up1");
    let created = assert_recent_rfc3339(&up["created"], "created");
    let started = assert_recent_rfc3339(&up["started_at"], "started_at");
    assert!(started >= created, "{up}");
    assert!(up["finished_at"].is_null(), "{up}");
    let ex = d.inspect("ex3");
    let started = assert_recent_rfc3339(&ex["started_at"], "started_at");
    let finished = assert_recent_rfc3339(&ex["finished_at"], "finished_at");
    assert!(finished >= started, "{ex}");
    assert!(d.inspect("a1")["started_at"].is_null());
    d.ok(&[
        "services",
        "create",
        "-d",
        "--name",
        "s",
        "--network",
        "net1",
        "--",
        "sleep",
        "300",
    ]);
    let v: serde_json::Value = serde_json::from_str(&d.ok(&["services", "inspect", "s"])).unwrap();
    assert_recent_rfc3339(&v[0]["created"], "service created");

    d.ok(&["services", "rm", "s"]);
    d.ok(&["rm", "-f", "a1", "up1", "ex3"]);
}
