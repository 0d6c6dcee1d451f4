//! Upstream fixtures beyond dnsmasq: a scripted UDP+TCP server and a BIND `named` with a TSIG
//! key.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Ns, wait_for};

/// How a scripted upstream answers one query: its bytes and whether it came over TCP in, the
/// reply to send out (None: no reply).
pub type Script = dyn Fn(&[u8], bool) -> Option<Vec<u8>> + Send + Sync;

/// The queries a scripted upstream got: bytes, and whether over TCP.
type QueryLog = Arc<Mutex<Vec<(Vec<u8>, bool)>>>;

/// A fixture upstream on UDP and TCP at one address (sockets bound inside the namespace) whose
/// replies a test scripts, for what dnsmasq cannot be made to send: big answers truncated over
/// UDP, EDNS options such as COOKIE and NSID, the AD bit, malformed replies. Every query it
/// got is kept. Runs until the process ends.
pub struct Scripted {
    pub addr: SocketAddr,
    queries: QueryLog,
}

impl Scripted {
    pub fn start(
        ns: &Ns,
        addr: &str,
        script: impl Fn(&[u8], bool) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> Scripted {
        let udp = ns.udp(addr);
        let local = udp.local_addr().expect("local addr");
        let tcp = ns.enter(move || TcpListener::bind(local).expect("bind fixture TCP socket"));
        let script: Arc<Script> = Arc::new(script);
        let queries: QueryLog = Arc::new(Mutex::new(Vec::new()));
        {
            let (script, queries) = (script.clone(), queries.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65535];
                while let Ok((n, from)) = udp.recv_from(&mut buf) {
                    queries.lock().unwrap().push((buf[..n].to_vec(), false));
                    if let Some(r) = script(&buf[..n], false) {
                        let _ = udp.send_to(&r, from);
                    }
                }
            });
        }
        {
            let queries = queries.clone();
            std::thread::spawn(move || {
                for conn in tcp.incoming() {
                    let Ok(mut c) = conn else { continue };
                    let (script, queries) = (script.clone(), queries.clone());
                    std::thread::spawn(move || {
                        let mut len = [0u8; 2];
                        while c.read_exact(&mut len).is_ok() {
                            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                            if c.read_exact(&mut q).is_err() {
                                return;
                            }
                            queries.lock().unwrap().push((q.clone(), true));
                            if let Some(r) = script(&q, true) {
                                let mut framed = (r.len() as u16).to_be_bytes().to_vec();
                                framed.extend_from_slice(&r);
                                if c.write_all(&framed).is_err() {
                                    return;
                                }
                            }
                        }
                    });
                }
            });
        }
        Scripted {
            addr: local,
            queries,
        }
    }

    /// Every query so far: its bytes, and whether it came over TCP.
    pub fn queries(&self) -> Vec<(Vec<u8>, bool)> {
        self.queries.lock().unwrap().clone()
    }
}

/// A BIND `named` in a namespace on 127.0.0.1 (it listens on interface addresses only),
/// authoritative for one zone, with one TSIG key (hmac-sha256), logging queries.
pub struct Named {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub pid: u32,
    pub log: PathBuf,
}

impl Named {
    /// Starts named on 127.0.0.1:`port` serving `zone` (`zone_text`: a zone file) and knowing
    /// the key (name, base64 secret); waits until it answers.
    pub fn start(
        ns: &Ns,
        dir: &Path,
        port: u16,
        zone: &str,
        zone_text: &str,
        key: (&str, &str),
    ) -> Named {
        let d = dir.join(format!("named-{port}"));
        std::fs::create_dir_all(&d).expect("named dir");
        let zone_file = d.join("zone");
        std::fs::write(&zone_file, zone_text).expect("zone file");
        let log = d.join("named.log");
        let conf = d.join("named.conf");
        let (key_name, secret) = key;
        std::fs::write(
            &conf,
            format!(
                r#"options {{
    directory "{dir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    pid-file none;
    session-keyfile none;
    managed-keys-directory "{dir}";
    querylog yes;
}};
controls {{ }};
logging {{
    channel all {{ file "{log}"; print-time yes; severity info; }};
    category default {{ all; }};
    category queries {{ all; }};
}};
key "{key_name}" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "{zone}" {{ type primary; file "{zone_file}"; }};
"#,
                dir = d.display(),
                log = log.display(),
                zone_file = zone_file.display(),
            ),
        )
        .expect("named.conf");
        let conf_s = conf.display().to_string();
        let pid = ns.spawn(
            ns.cmd("named", &["-f", "-4", "-c", &conf_s]),
            Some(&d.join("named.out")),
        );
        wait_for(Duration::from_secs(20), || {
            let out = ns.run(
                "dig",
                &[
                    "+tries=1",
                    "+time=1",
                    "@127.0.0.1",
                    "-p",
                    &port.to_string(),
                    zone,
                    "SOA",
                ],
            );
            String::from_utf8_lossy(&out.stdout)
                .contains("status: NOERROR")
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "named did not start:\n{}{}",
                std::fs::read_to_string(d.join("named.out")).unwrap_or_default(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Named {
            addr: format!("127.0.0.1:{port}"),
            pid,
            log,
        }
    }

    /// How many queries for `name` named has logged.
    pub fn queries_for(&self, name: &str) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("query: ") && l.contains(&format!("query: {name} ")))
            .count()
    }
}
