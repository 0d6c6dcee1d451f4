//! A published port of a service without tasks refuses at once and stays reserved.

use std::time::Duration;

use sdnet_tests::{Daemon, wait_for};

/// Connects to `addr` from the daemon's namespace; Ok(first line) or Err(socat's stderr).
fn connect(d: &Daemon, addr: &str) -> Result<String, String> {
    let out = d.ns.run(
        "socat",
        &["-T2", "-", &format!("TCP:{addr},connect-timeout=3")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().next() {
        Some(l) if out.status.success() => Ok(l.to_string()),
        _ => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// Refused at once ("Connection refused"), not left to time out, and the port held: nobody
/// else can bind it.
fn assert_refused_and_reserved(d: &Daemon, port: u16, when: &str) {
    match connect(d, &format!("127.0.0.1:{port}")) {
        Err(e) if e.contains("Connection refused") => {}
        other => panic!("{when}: port {port}: expected a refusal, got {other:?}"),
    }
    let b = d.ns.run(
        "socat",
        &["-T1", &format!("TCP-LISTEN:{port}"), "OPEN:/dev/null"],
    );
    assert!(!b.status.success(), "{when}: port {port} is not reserved");
}

#[test]
fn published_port_of_a_service_without_tasks_refuses_at_once() {
    let mut d = Daemon::start("rzero");
    d.ok(&["network", "create", "--subnet", "10.65.0.0/24", "n"]);
    d.ok(&[
        "services",
        "create",
        "--name",
        "z",
        "--replicas",
        "0",
        "--network",
        "n",
        "-p",
        "18089:80",
        "--detach",
        "--",
        "sleep",
        "300",
    ]);
    assert_refused_and_reserved(&d, 18089, "0 replicas");

    // Scaled down to 0 after serving: refused again (no rule left pointing at a gone task).
    d.ok(&[
        "services",
        "create",
        "--name",
        "y",
        "--replicas",
        "1",
        "--network",
        "n",
        "-p",
        "18090:80",
        "--",
        "socat",
        "TCP-LISTEN:80,fork,reuseaddr",
        "SYSTEM:echo y-here",
    ]);
    let served = wait_for(Duration::from_secs(10), || {
        connect(&d, "127.0.0.1:18090")
            .ok()
            .filter(|l| l == "y-here")
    });
    assert!(served.is_some(), "y does not answer on 18090");
    d.ok(&["services", "scale", "y=0"]);
    assert_refused_and_reserved(&d, 18090, "scaled to 0");

    // And after a restart.
    d.kill9_and_restart();
    assert_refused_and_reserved(&d, 18089, "0 replicas, after a restart");
    assert_refused_and_reserved(&d, 18090, "scaled to 0, after a restart");
}
