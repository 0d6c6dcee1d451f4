//! Part 2 of lb-bench: the first packet through the VIP vs direct (see the binary's docs).

use super::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 1);
const TASKS: usize = 10;

fn task_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 64, 0, 2 + i as u8)
}

/// Creates the veth between client and server, addresses, routes (async: netstack's Netlink).
async fn plumb(client: &Netns, server: &Netns) -> sdnet_netstack::Result<()> {
    let nc = Netlink::connect(client).await?;
    let ns = Netlink::connect(server).await?;
    let c_idx = nc.create_veth("lbc0", "lbs0", Some(server)).await?;
    nc.add_address(
        c_idx,
        ipnet::IpNet::V4(
            ipnet::Ipv4Net::new(CLIENT_IP, 24)
                .map_err(|e| sdnet_netstack::Error::Invalid(e.to_string()))?,
        ),
    )
    .await?;
    nc.set_up(c_idx).await?;
    // The VIP needs a route for the output route lookup (done before the nat hook): the
    // default route of a sandbox, here via the server.
    nc.replace_route(
        "0.0.0.0/0"
            .parse()
            .map_err(|e: ipnet::AddrParseError| sdnet_netstack::Error::Invalid(e.to_string()))?,
        Some(task_ip(0).into()),
        Some(c_idx),
    )
    .await?;
    let s_idx = ns
        .link_index("lbs0")
        .await?
        .ok_or_else(|| sdnet_netstack::Error::Invalid("lbs0 missing in the server".into()))?;
    for i in 0..TASKS {
        let a = ipnet::Ipv4Net::new(task_ip(i), 24)
            .map_err(|e| sdnet_netstack::Error::Invalid(e.to_string()))?;
        ns.add_address(s_idx, ipnet::IpNet::V4(a)).await?;
    }
    ns.set_up(s_idx).await?;
    Ok(())
}

/// The listener: answers every connection with `lbbench <local ip> <peer ip>\n` and closes.
fn serve(l: TcpListener, stop: &AtomicBool) {
    for c in l.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut c) = c else { continue };
        let local = c
            .local_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let peer = c
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let _ = c.write_all(format!("lbbench {local} {peer}\n").as_bytes());
    }
}

/// One connection: connect() + first reply byte (the timed part), then the rest of the line.
/// Returns (ms to the first byte, the server's local address, the peer address it saw).
fn one_conn(to: SocketAddr) -> Res<(f64, String, String)> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("{to}: {e}"))?;
    let mut first = [0u8; 1];
    let n = s.read(&mut first).map_err(|e| format!("read {to}: {e}"))?;
    let elapsed = ms(t.elapsed());
    if n == 0 {
        return Err(format!("{to}: closed without a reply"));
    }
    let mut rest = Vec::with_capacity(64);
    s.read_to_end(&mut rest)
        .map_err(|e| format!("read {to}: {e}"))?;
    let mut line = vec![first[0]];
    line.extend_from_slice(&rest);
    let line = String::from_utf8_lossy(&line);
    let mut w = line.split_whitespace();
    match (w.next(), w.next(), w.next()) {
        (Some("lbbench"), Some(local), Some(peer)) => Ok((elapsed, local.into(), peer.into())),
        _ => Err(format!("{to}: unexpected reply {line:?}")),
    }
}

struct Samples {
    vip: Vec<f64>,
    direct: Vec<f64>,
    bare: Vec<f64>,
    vip_hits: std::collections::BTreeMap<String, usize>,
    peers_seen: BTreeSet<String>,
    stopped_by_time: bool,
    /// Loading the client's LB table.
    table_ms: f64,
}

pub(super) fn first_packet(work: &Work, o: &Opts) -> Res<()> {
    eprintln!(
        "lb-bench: first packet, {} connections each way, table of {} services",
        o.conns, o.latency_services
    );
    let client = work.netns("client")?;
    let server = work.netns("server")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(plumb(&client, &server))
        .map_err(|e| format!("veth/addresses/routes: {e}"))?;
    drop(rt);

    // The listener is bound by a thread inside the server namespace; the socket stays there.
    let port = o.port;
    let listener = server
        .run(move || TcpListener::bind(("0.0.0.0", port)))
        .map_err(|e| format!("entering the server namespace: {e}"))?
        .map_err(|e| format!("binding :{port} in the server namespace: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server_thread = std::thread::Builder::new()
        .name("listener".into())
        .spawn(move || serve(listener, &stop2))
        .map_err(|e| format!("spawning the listener: {e}"))?;

    let r = measure(&client, o);

    // Stop the listener: set the flag, then wake accept() with one connection.
    stop.store(true, Ordering::Relaxed);
    let _ = client.run(move || {
        TcpStream::connect_timeout(
            &SocketAddr::from((task_ip(0), port)),
            Duration::from_secs(1),
        )
    });
    let _ = server_thread.join();
    work.delete_netns(client);
    work.delete_netns(server);
    let smp = r?;

    let (b, v, d) = (
        stats(smp.bare.clone()),
        stats(smp.vip.clone()),
        stats(smp.direct.clone()),
    );
    let us =
        |s: &Option<Stats>, f: fn(&Stats) -> f64| s.as_ref().map_or(f64::NAN, |s| f(s) * 1000.0);
    let n = |s: &Option<Stats>| s.as_ref().map_or(0, |s| s.n);
    let ratio = |f: fn(&Stats) -> f64| match (&v, &d) {
        (Some(v), Some(d)) if f(d) > 0.0 => f(v) / f(d),
        _ => f64::NAN,
    };
    let hits: Vec<String> = smp
        .vip_hits
        .iter()
        .map(|(k, c)| format!("{k}:{c}"))
        .collect();
    println!(
        "first_packet services={} table_load_ms={:.1} bare_n={} bare_median_us={:.1} bare_p99_us={:.1} \
         direct_n={} direct_median_us={:.1} direct_p99_us={:.1} vip_n={} vip_median_us={:.1} \
         vip_p99_us={:.1} ratio_median={:.3} ratio_p99={:.3} stopped_by_time={}",
        o.latency_services,
        smp.table_ms,
        n(&b),
        us(&b, |s| s.median),
        us(&b, |s| s.p99),
        n(&d),
        us(&d, |s| s.median),
        us(&d, |s| s.p99),
        n(&v),
        us(&v, |s| s.median),
        us(&v, |s| s.p99),
        ratio(|s| s.median),
        ratio(|s| s.p99),
        smp.stopped_by_time
    );
    let peers: Vec<&String> = smp.peers_seen.iter().collect();
    println!(
        "first_packet backends_hit={}/{TASKS} spread={} client_ip_seen={peers:?}",
        smp.vip_hits.len(),
        hits.join(",")
    );
    if smp.vip_hits.len() != TASKS || smp.peers_seen.iter().any(|p| p != &CLIENT_IP.to_string()) {
        return Err(format!(
            "first packet: VIP traffic reached {} of {TASKS} backends, peers seen {peers:?} \
             (want all backends and only {CLIENT_IP})",
            smp.vip_hits.len()
        ));
    }
    Ok(())
}

fn measure(client: &Netns, o: &Opts) -> Res<Samples> {
    let port = o.port;
    let conns = o.conns;
    let deadline = Instant::now() + Duration::from_secs(o.conn_secs);
    let direct_to = |k: usize| SocketAddr::from((task_ip(k % TASKS), port));
    let vip_to = SocketAddr::from((VIP, port));

    // Baseline before any nftables table exists here (no conntrack in this namespace yet).
    let bare_n = (conns / 4).max(1);
    let mut smp = client
        .run(move || -> Res<Samples> {
            let mut smp = Samples {
                vip: Vec::with_capacity(conns),
                direct: Vec::with_capacity(conns),
                bare: Vec::with_capacity(bare_n),
                vip_hits: Default::default(),
                peers_seen: Default::default(),
                stopped_by_time: false,
                table_ms: 0.0,
            };
            for k in 0..TASKS * 5 {
                one_conn(direct_to(k))?; // warm-up: neighbours, code paths
            }
            for k in 0..bare_n {
                if Instant::now() > deadline {
                    smp.stopped_by_time = true;
                    break;
                }
                smp.bare.push(one_conn(direct_to(k))?.0);
            }
            Ok(smp)
        })
        .map_err(|e| format!("entering the client namespace: {e}"))??;

    // The LB table: VIP 10.96.0.1 → the ten tasks, plus other services so the vmap is not
    // trivially small.
    let mut vips = vec![VipLb::new(VIP, (0..TASKS).map(task_ip).collect())];
    for i in 1..o.latency_services {
        vips.push(VipLb::new(
            vip_addr(i),
            (0..o.backends)
                .map(|j| backend_addr(1000 + i * o.backends + j))
                .collect(),
        ));
    }
    let load_ms = apply_timed(client, &table(&vips))?;
    smp.table_ms = load_ms;

    client
        .run(move || -> Res<Samples> {
            for k in 0..TASKS * 5 {
                one_conn(vip_to)?;
                one_conn(direct_to(k))?;
            }
            // Alternate, so load drift hits both the same way.
            for k in 0..conns {
                if Instant::now() > deadline {
                    smp.stopped_by_time = true;
                    break;
                }
                let (t, local, peer) = one_conn(vip_to)?;
                smp.vip.push(t);
                *smp.vip_hits.entry(local).or_default() += 1;
                smp.peers_seen.insert(peer);
                let (t, local, _) = one_conn(direct_to(k))?;
                if local != task_ip(k % TASKS).to_string() {
                    return Err(format!(
                        "direct connection to {} answered by {local}",
                        direct_to(k)
                    ));
                }
                smp.direct.push(t);
            }
            Ok(smp)
        })
        .map_err(|e| format!("entering the client namespace: {e}"))?
}
