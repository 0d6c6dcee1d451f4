//! The README's walkthrough, run exactly as written: every `sh` block marked
//! `<!-- walkthrough -->`, line by line in one shell with `set -e`, against a daemon of its
//! own (its namespace plays the host). A command the README shows that does not work as
//! shown fails this test.

use std::path::Path;

use sdnet_tests::{Daemon, sdctl};

/// The marked blocks of README.md, in order.
fn walkthrough_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(l) = lines.next() {
        if l.trim() != "<!-- walkthrough -->" {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.starts_with("```sh"),
            "a walkthrough marker must precede ```sh"
        );
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        blocks.push(body.join("\n"));
    }
    blocks
}

#[test]
fn readme_walkthrough_runs_as_shown() {
    let d = Daemon::start("readme");
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let blocks = walkthrough_blocks(&readme);
    assert!(
        blocks.len() >= 2,
        "expected the tutorial and the services walkthrough"
    );
    let bin_dir = sdctl().parent().expect("sdctl's directory").to_path_buf();
    let script = format!(
        "set -euo pipefail\nexport PATH={}:$PATH\nexport SDNET_SOCKET={}\n{}\n",
        bin_dir.display(),
        d.socket.display(),
        blocks.join("\n")
    );
    let path = d.dir.path().join("walkthrough.sh");
    std::fs::write(&path, script).expect("script");
    let out =
        d.ns.cmd(
            "timeout",
            &["600", "bash", "-x", path.to_str().expect("path")],
        )
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walkthrough failed ({}):\n--- stdout ---\n{stdout}\n--- trace ---\n{stderr}\n--- daemon log ---\n{}",
        out.status,
        d.log()
    );
    // What the comments promise.
    for want in [
        "alpine2.alpine-net.", // the PTR
        "hello from web",      // the published port through DNAT
        "hello from alpine2",  // logs
        "v2 from ",            // the rolled-over command, answering through the VIP
    ] {
        assert!(stdout.contains(want), "{want:?} missing:\n{stdout}");
    }
    // And it cleaned up after itself: only the pre-defined networks remain.
    let nets = d.ok(&["network", "ls", "-q"]);
    assert_eq!(nets.lines().count(), 3, "{nets}");
    assert!(d.ok(&["ps", "-a", "-q"]).trim().is_empty());
}
