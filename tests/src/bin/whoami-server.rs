//! A tiny TCP server for load-balancing tests: answers every connection with
//! "<hostname> <peer address>\n" and closes it.
//!
//! whoami-server PORT

use std::io::Write;
use std::net::TcpListener;

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(80);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim().to_string();
    let l = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("whoami-server: bind {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {port} as {host}");
    for c in l.incoming().flatten() {
        let peer = c
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let mut c = c;
        let _ = writeln!(c, "{host} {peer}");
    }
}
