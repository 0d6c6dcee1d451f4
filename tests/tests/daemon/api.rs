//! The API locked down: the socket's mode, the daemon's own peer-credential check (run as
//! nobody with setpriv), request bodies capped, and names, aliases, labels and CIDRs refused
//! with one-line errors that change nothing.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sdnet_tests::{Daemon, TempDir, sdctl};

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `prog ARGS` as nobody (uid and gid 65534, no groups).
fn as_nobody(prog: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg("timeout")
        .arg("30")
        .arg(prog)
        .args(args)
        .env_remove("SDNET_SOCKET")
        .output()
        .expect("setpriv")
}

/// An sdctl nobody can execute: the build's own, or a copy when its directory is closed.
fn sdctl_for_nobody(copy: &TempDir) -> PathBuf {
    let bin = sdctl();
    let out = as_nobody(&bin, &["--version"]);
    if out.status.success() {
        return bin;
    }
    let b = copy.path().join("sdctl");
    std::fs::copy(&bin, &b).unwrap();
    std::fs::set_permissions(copy.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    b
}

/// How a raw request states its body's length.
enum Len {
    /// Content-Length of the body.
    Exact,
    /// Content-Length claiming this many bytes.
    Claim(usize),
    /// Chunked, no length up front.
    Chunked,
}

/// One HTTP/1.1 request on the unix socket, written raw; the status and body of the reply.
/// The body is written from another thread: the daemon may answer before reading it all.
fn raw(socket: &Path, method: &str, path: &str, len: Len, body: Vec<u8>) -> (u16, String) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let (framing, body) = match len {
        Len::Exact => (format!("Content-Length: {}", body.len()), body),
        Len::Claim(n) => (format!("Content-Length: {n}"), body),
        Len::Chunked => {
            let mut b = format!("{:x}\r\n", body.len()).into_bytes();
            b.extend_from_slice(&body);
            b.extend_from_slice(b"\r\n0\r\n\r\n");
            ("Transfer-Encoding: chunked".to_string(), b)
        }
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: sdnet\r\nContent-Type: application/json\r\n\
         {framing}\r\nConnection: close\r\n\r\n"
    );
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&body);
    });
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

fn post(socket: &Path, path: &str, body: &str) -> (u16, String) {
    raw(socket, "POST", path, Len::Exact, body.as_bytes().to_vec())
}

#[test]
fn api_refuses_non_root_peers() {
    let d = Daemon::start("apiroot");
    let sock = d.socket.display().to_string();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let copy = TempDir::new("apinobody");
    let bin = sdctl_for_nobody(&copy);

    // The socket's mode keeps nobody out at connect.
    let out = as_nobody(&bin, &["--socket", &sock, "network", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out).trim_end(),
        "sdctl: permission denied: the sdnet API is for root (uid 65534)"
    );

    // A host that opened the socket up (its directory and mode): the daemon's own check of
    // the peer's credentials refuses, with a 403 and the same words.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [
        vec!["network", "ls"],
        vec!["network", "create", "--subnet", "10.91.0.0/24", "evil"],
        vec!["run", "-d", "--name", "evil"],
    ] {
        let mut a = vec!["--socket", sock.as_str()];
        a.extend(args.iter());
        let out = as_nobody(&bin, &a);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr_of(&out));
        assert_eq!(
            stderr_of(&out).trim_end(),
            "sdctl: permission denied: the sdnet API is for root (uid 65534)",
            "{args:?}"
        );
    }
    let curl = as_nobody(
        Path::new("curl"),
        &[
            "-s",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            &sock,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"name":"evil2"}"#,
            "http://sdnet/v1/networks",
        ],
    );
    let text = String::from_utf8_lossy(&curl.stdout);
    assert!(
        text.ends_with("\n403")
            && text.contains(
                r#"{"error":"permission denied: the sdnet API is for root (uid 65534)"}"#
            ),
        "{text}"
    );
    // Nothing was made; root is still served.
    let nets = d.ok(&["network", "ls"]);
    assert!(!nets.contains("evil"), "{nets}");
    assert!(d.ok(&["ps", "-a", "-q"]).trim().is_empty());
    assert!(d.log().contains("API request refused: not root"));
}

#[test]
fn api_bodies_are_capped() {
    let d = Daemon::start("apibody");
    let nets_before = d.ok(&["network", "ls", "-q"]);

    // 2 MiB: refused by size (413), whether the length is announced or the body just long.
    let big = format!(
        r#"{{"name":"big","labels":{{"k":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let (status, body) = post(&d.socket, "/v1/networks", &big);
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        body,
        r#"{"error":"request body too large: the API takes at most 1024 KiB"}"#
    );
    // Announced as 64 MiB: refused before a byte of it is read.
    let (status, body) = raw(
        &d.socket,
        "POST",
        "/v1/sandboxes",
        Len::Claim(64 << 20),
        vec![b' '; 4 << 10],
    );
    assert_eq!(status, 413, "{body}");
    // No length up front: refused once the cap is passed.
    let (status, body) = raw(
        &d.socket,
        "POST",
        "/v1/networks",
        Len::Chunked,
        big.clone().into_bytes(),
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("request body too large"), "{body}");

    // Under the cap the body is read and its contents judged: a label value too long.
    let under = format!(
        r#"{{"name":"under","labels":{{"k":"{}"}}}}"#,
        "x".repeat(900 << 10)
    );
    let (status, body) = post(&d.socket, "/v1/networks", &under);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("the value is longer than 1024 bytes"),
        "{body}"
    );

    // Not JSON, or the wrong shape: a one-line 400/422 in the API's error shape.
    for bad in ["{", "[]", r#"{"name": 5}"#] {
        let (status, body) = post(&d.socket, "/v1/networks", bad);
        assert!(status == 400 || status == 422, "{bad}: {status} {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().is_some_and(|e| !e.contains('\n')),
            "{body}"
        );
    }
    // The daemon is fine and nothing changed.
    assert_eq!(d.ok(&["network", "ls", "-q"]), nets_before);
}

#[test]
fn bad_names_aliases_labels_and_cidrs_change_nothing() {
    let d = Daemon::start("apival");
    d.ok(&["network", "create", "--subnet", "10.92.0.0/24", "good"]);
    d.ok(&["run", "-d", "--name", "one", "--network", "good"]);
    let nets_before = d.ok(&["network", "ls", "-q"]);
    let ps_before = d.ok(&["ps", "-a", "-q"]);
    let inspect_before = d.ok(&["inspect", "one"]);
    let long = "a".repeat(300);
    let label_key = format!("{}=v", "k".repeat(200));

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["network", "create", &long], "invalid network name"),
        (
            vec!["network", "create", "--label", "bad key=v", "x1"],
            "invalid label key \"bad key\": only letters",
        ),
        (
            vec!["network", "create", "--label", &label_key, "x2"],
            "longer than 128 bytes",
        ),
        (
            vec!["network", "create", "--subnet", "0.0.0.0/0", "x3"],
            "invalid subnet 0.0.0.0/0: IPv4 networks are /8 or longer",
        ),
        (
            vec!["network", "create", "--subnet", "127.1.0.0/24", "x4"],
            "invalid subnet 127.1.0.0/24: loopback addresses cannot be a network's",
        ),
        (
            vec!["network", "create", "--subnet", "224.1.0.0/16", "x5"],
            "multicast",
        ),
        (
            vec!["network", "create", "--subnet", "169.254.9.0/24", "x6"],
            "link-local",
        ),
        (
            vec!["network", "create", "--ipv6", "--subnet", "ff02::/64", "x7"],
            "multicast",
        ),
        (
            vec![
                "network",
                "create",
                "--subnet",
                "10.93.0.0/24",
                "--aux-address",
                "bad name=10.93.0.5",
                "x8",
            ],
            "invalid aux-address name",
        ),
        (
            vec![
                "run",
                "-d",
                "--name",
                "two",
                "--network",
                "good",
                "--network-alias",
                "bad alias",
            ],
            "invalid alias name \"bad alias\"",
        ),
        (
            vec!["network", "connect", "--alias", "a..b", "good", "one"],
            "invalid alias name \"a..b\": empty label",
        ),
        (
            vec!["run", "-d", "--name", "bad/name", "--network", "good"],
            "invalid sandbox name",
        ),
        (
            vec![
                "services",
                "create",
                "-d",
                "--name",
                "svc",
                "--network",
                "good,alias=x_y z",
                "--",
                "sleep",
                "9",
            ],
            "invalid alias name",
        ),
    ];
    for (args, want) in &cases {
        let err = d.fails(args);
        assert!(err.starts_with("sdctl: "), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
    }

    // What the client cannot send but a raw request can.
    let aliases: Vec<String> = (0..65).map(|i| format!("\"a{i}\"")).collect();
    let raw_cases = [
        (
            "/v1/networks",
            r#"{"name":"x9","labels":{"k":"a\u0007b"}}"#.to_string(),
            "control characters are not allowed in the value",
        ),
        (
            "/v1/networks/good/connect",
            format!(r#"{{"sandbox":"one","aliases":[{}]}}"#, aliases.join(",")),
            "65 aliases on one network: at most 64 are allowed",
        ),
        (
            "/v1/sandboxes",
            format!(r#"{{"name":"three","networks":[{{"network":"{long}"}}]}}"#),
            "invalid network name: 300 bytes, longer than 253",
        ),
        (
            "/v1/sandboxes",
            r#"{"name":"four","networks":[{"network":"good","ipv4":"127.0.0.1"}]}"#.to_string(),
            "invalid address 127.0.0.1: loopback addresses",
        ),
        (
            "/v1/sandboxes",
            r#"{"name":"five","command":["sle\u0000ep"]}"#.to_string(),
            "contains a NUL byte",
        ),
        (
            "/v1/networks",
            r#"{"name":"x10","ipam":[{"subnet":"10.94.0.0/24","ip_range":"127.0.0.0/28"}]}"#
                .to_string(),
            "invalid ip-range 127.0.0.0/28",
        ),
    ];
    for (path, body, want) in &raw_cases {
        let (status, reply) = post(&d.socket, path, body);
        assert_eq!(status, 400, "{path} {body}: {reply}");
        assert!(reply.contains(want), "{path}: want {want:?} in {reply}");
    }

    assert_eq!(d.ok(&["network", "ls", "-q"]), nets_before);
    assert_eq!(d.ok(&["ps", "-a", "-q"]), ps_before);
    assert!(d.ok(&["services", "ls", "-q"]).trim().is_empty());
    assert_eq!(d.ok(&["inspect", "one"]), inspect_before);
    d.ok(&["rm", "-f", "one"]);
}
