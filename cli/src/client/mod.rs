//! The client half of `sdctl`: Docker-style commands that talk to the daemon's API.

mod docs;
pub mod http;
mod lifecycle;
mod output;
mod services;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::api::*;
use crate::cli::{
    ClientOpts, Command, DnsCommand, GlobalOpts, NetworkCommand, NetworkCreateArgs, NodeCommand,
    RunArgs,
};
use crate::enter::Enter;
use http::{Client, seg};

/// Runs a client command; returns the process exit code.
pub fn run(global: &GlobalOpts, cmd: Command) -> Result<i32> {
    let client = ClientOpts {
        socket: global.client_socket(),
    };
    match cmd {
        // Exec must leave the runtime behind before it changes namespaces (single thread).
        Command::Exec { name, command } => {
            let info: ExecInfo = block(async {
                Client::new(&client.socket)
                    .get(&format!("/sandboxes/{}/exec", seg(&name)))
                    .await
            })?;
            exec(&info, &command)
        }
        Command::Completion { shell } => {
            docs::completion(shell, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Man { dir } => {
            match dir {
                Some(d) => {
                    for p in docs::man_pages(&d)? {
                        println!("{}", p.display());
                    }
                }
                None => docs::man(&mut std::io::stdout().lock())?,
            }
            Ok(0)
        }
        cmd => block(run_async(&client, cmd)),
    }
}

fn block<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(f)
}

/// `rm --link /LINKING/ALIAS…`: each link taken from its linking sandbox (Docker prints
/// each argument as it was given).
async fn remove_links(client: &ClientOpts, names: &[String]) -> Result<i32> {
    let c = Client::new(&client.socket);
    let mut failed = false;
    for n in names {
        let r = match n.parse::<LinkName>() {
            Ok(l) => c
                .delete::<Removed>(&format!(
                    "/sandboxes/{}/links/{}",
                    seg(&l.linker),
                    seg(&l.alias)
                ))
                .await
                .map(|_| ()),
            Err(e) => Err(anyhow::anyhow!(e)),
        };
        match r {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("sdctl: {e:#}");
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}

async fn run_async(client: &ClientOpts, cmd: Command) -> Result<i32> {
    match cmd {
        Command::Network { command } => network(client, command).await,
        Command::Node { command } => node(client, command).await,
        Command::Services { command } => services::run(client, command).await,
        Command::Run(args) => run_sandbox(client, args).await,
        Command::Version => version(client).await,
        Command::Ps { all, out } => {
            let list: Vec<SandboxInfo> = Client::new(&client.socket)
                .get(if all {
                    "/sandboxes?all=true"
                } else {
                    "/sandboxes"
                })
                .await?;
            output::sandboxes(&list, &out);
            Ok(0)
        }
        Command::Inspect { names } => {
            let c = Client::new(&client.socket);
            let mut all = Vec::new();
            let mut failed = false;
            for n in &names {
                match c
                    .get::<SandboxInfo>(&format!("/sandboxes/{}", seg(n)))
                    .await
                {
                    Ok(s) => all.push(s),
                    Err(e) => {
                        eprintln!("sdctl: {e:#}");
                        failed = true;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
            Ok(i32::from(failed))
        }
        Command::Rm {
            link: true, names, ..
        } => remove_links(client, &names).await,
        Command::Rm { force, names, .. } => {
            let c = Client::new(&client.socket);
            let mut failed = false;
            for n in &names {
                let path = format!(
                    "/sandboxes/{}{}",
                    seg(n),
                    if force { "?force=true" } else { "" }
                );
                match c.delete::<Removed>(&path).await {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        eprintln!("sdctl: {e:#}");
                        failed = true;
                    }
                }
            }
            Ok(i32::from(failed))
        }
        Command::Start { names } => {
            lifecycle::each(&Client::new(&client.socket), &names, "start", &()).await
        }
        Command::Stop(a) => {
            let body = StopRequest { timeout_s: a.time };
            lifecycle::each(&Client::new(&client.socket), &a.names, "stop", &body).await
        }
        Command::Restart(a) => {
            let body = StopRequest { timeout_s: a.time };
            lifecycle::each(&Client::new(&client.socket), &a.names, "restart", &body).await
        }
        Command::Kill { signal, names } => {
            let body = KillRequest {
                signal: Some(signal),
            };
            lifecycle::each(&Client::new(&client.socket), &names, "kill", &body).await
        }
        Command::Pause { names } => {
            lifecycle::each(&Client::new(&client.socket), &names, "pause", &()).await
        }
        Command::Unpause { names } => {
            lifecycle::each(&Client::new(&client.socket), &names, "unpause", &()).await
        }
        Command::Wait { names } => lifecycle::wait(&Client::new(&client.socket), &names).await,
        Command::Port { name, private } => {
            let sb: SandboxInfo = Client::new(&client.socket)
                .get(&format!("/sandboxes/{}", seg(&name)))
                .await?;
            for l in lifecycle::port_lines(&sb, private.as_deref())? {
                println!("{l}");
            }
            Ok(0)
        }
        Command::Events {
            since,
            until,
            filters,
            format,
        } => {
            lifecycle::events(
                &Client::new(&client.socket),
                since.as_deref(),
                until.as_deref(),
                &filters,
                format,
            )
            .await
        }
        Command::Logs { follow, name } => {
            follow_logs(&Client::new(&client.socket), &name, follow).await?;
            Ok(0)
        }
        Command::Dns {
            command:
                DnsCommand::Query {
                    from,
                    tcp,
                    name,
                    qtype,
                },
        } => {
            let ans: DnsAnswer = Client::new(&client.socket)
                .post(
                    "/dns/query",
                    &DnsQuery {
                        from,
                        name,
                        qtype,
                        tcp,
                    },
                )
                .await?;
            print!("{}", ans.text);
            Ok(0)
        }
        Command::Exec { .. }
        | Command::Completion { .. }
        | Command::Man { .. }
        | Command::Daemon(_)
        | Command::AardvarkDns(_)
        | Command::Dns {
            command: DnsCommand::Serve(_),
        } => Err(anyhow!("not a client command")),
    }
}

fn kv(s: &str, what: &str) -> Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| anyhow!("invalid {what} {s:?}: expected KEY=VALUE"))
}

/// The CNI configuration `network create` sends (its content: the file may change or go):
/// `--cni-conf FILE`, or the file in `--cni-conf-dir DIR` whose network `name` is NAME.
fn cni_config(a: &NetworkCreateArgs) -> Result<Option<String>> {
    if let Some(f) = &a.cni_conf {
        return std::fs::read_to_string(f)
            .map(Some)
            .with_context(|| format!("reading {}", f.display()));
    }
    let Some(dir) = &a.cni_conf_dir else {
        return Ok(None);
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("conf" | "conflist" | "json")
            )
        })
        .collect();
    // libcni's order: by file name; the first with the name wins.
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let name = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string));
        if name.as_deref() == Some(a.name.as_str()) {
            return Ok(Some(text));
        }
    }
    bail!(
        "no CNI configuration named {:?} in {} (.conflist, .conf, .json)",
        a.name,
        dir.display()
    )
}

fn network_create(a: NetworkCreateArgs) -> Result<NetworkCreate> {
    let mut ipam: Vec<IpamRequest> = a
        .subnet
        .iter()
        .map(|s| IpamRequest {
            subnet: Some(*s),
            ..IpamRequest::default()
        })
        .collect();
    // Docker matches each --ip-range/--gateway/--aux-address to the subnet that holds it.
    let owner = |ipam: &mut Vec<IpamRequest>, ip: &IpAddr, what: &str| -> Result<usize> {
        if ipam.is_empty() {
            bail!("{what} {ip} needs a --subnet");
        }
        ipam.iter()
            .position(|r| r.subnet.is_some_and(|s| s.contains(ip)))
            .ok_or_else(|| anyhow!("{what} {ip} is not in any --subnet"))
    };
    for r in &a.ip_range {
        let i = owner(&mut ipam, &r.network(), "--ip-range")?;
        if ipam[i].ip_range.replace(*r).is_some() {
            bail!(
                "several --ip-range for subnet {}",
                ipam[i].subnet.map(|s| s.to_string()).unwrap_or_default()
            );
        }
    }
    for g in &a.gateway {
        let i = owner(&mut ipam, g, "--gateway")?;
        if ipam[i].gateway.replace(*g).is_some() {
            bail!("several --gateway for one subnet");
        }
    }
    for x in &a.aux_address {
        let (k, v) = kv(x, "--aux-address")?;
        let ip: IpAddr = v
            .parse()
            .map_err(|_| anyhow!("invalid --aux-address {x:?}: bad IP"))?;
        let i = owner(&mut ipam, &ip, "--aux-address")?;
        ipam[i].aux.insert(k, ip);
    }
    let mut mtu = a.mtu;
    let mut options = BTreeMap::new();
    for o in &a.opts {
        let (k, v) = kv(o, "--opt")?;
        match k.as_str() {
            "mtu" | "com.docker.network.driver.mtu" => {
                mtu = Some(v.parse().map_err(|_| anyhow!("invalid MTU {v:?}"))?)
            }
            // The driver's own options: the daemon checks them.
            _ => {
                options.insert(k, v);
            }
        }
    }
    if let Some(text) = cni_config(&a)? {
        if a.driver != Driver::Cni {
            bail!("--cni-conf and --cni-conf-dir are for -d cni");
        }
        options.insert(CNI_CONFIG_OPTION.to_string(), text);
    }
    let labels = a
        .labels
        .iter()
        .map(|l| kv(l, "--label"))
        .collect::<Result<_>>()?;
    Ok(NetworkCreate {
        name: a.name,
        driver: a.driver,
        ipam,
        ipv6: a.ipv6,
        internal: a.internal,
        attachable: a.attachable,
        dns: Some(!a.no_dns),
        host_dns: Some(a.host_dns),
        mtu,
        dns_servers: a.dns_servers,
        ttl: a.dns_ttl,
        labels,
        options,
    })
}

async fn node(opts: &ClientOpts, cmd: NodeCommand) -> Result<i32> {
    let c = Client::new(&opts.socket);
    match cmd {
        NodeCommand::Ls { out } => {
            let list: Vec<NodeInfo> = c.get("/nodes").await?;
            output::nodes(&list, &out);
            Ok(0)
        }
        NodeCommand::Inspect { names } => {
            let mut all = Vec::new();
            let mut failed = false;
            for n in &names {
                match c.get::<NodeInfo>(&format!("/nodes/{}", seg(n))).await {
                    Ok(x) => all.push(x),
                    Err(e) => {
                        eprintln!("sdctl: {e:#}");
                        failed = true;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
            Ok(i32::from(failed))
        }
        NodeCommand::Rm { names } => {
            let mut failed = false;
            for n in &names {
                match c.delete::<Removed>(&format!("/nodes/{}", seg(n))).await {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        eprintln!("sdctl: {e:#}");
                        failed = true;
                    }
                }
            }
            Ok(i32::from(failed))
        }
    }
}

async fn network(opts: &ClientOpts, cmd: NetworkCommand) -> Result<i32> {
    let c = Client::new(&opts.socket);
    match cmd {
        NetworkCommand::Create(a) => {
            let req = network_create(a)?;
            let n: NetworkInfo = c.post("/networks", &req).await?;
            println!("{}", n.id);
        }
        NetworkCommand::Ls { out } => {
            let list: Vec<NetworkInfo> = c.get("/networks").await?;
            output::networks(&list, &out);
        }
        NetworkCommand::Inspect { names } => {
            let mut all = Vec::new();
            let mut failed = false;
            for n in &names {
                match c.get::<NetworkInfo>(&format!("/networks/{}", seg(n))).await {
                    Ok(x) => all.push(x),
                    Err(e) => {
                        eprintln!("sdctl: {e:#}");
                        failed = true;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
            return Ok(i32::from(failed));
        }
        NetworkCommand::Rm { names } => {
            let mut failed = false;
            for n in &names {
                match c.delete::<Removed>(&format!("/networks/{}", seg(n))).await {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        eprintln!("sdctl: {e:#}");
                        failed = true;
                    }
                }
            }
            return Ok(i32::from(failed));
        }
        NetworkCommand::Prune { force } => {
            if !force {
                let stdin = std::io::stdin();
                let tty = std::io::IsTerminal::is_terminal(&stdin);
                if !confirm(
                    PRUNE_WARNING,
                    tty,
                    &mut stdin.lock(),
                    &mut std::io::stdout(),
                )? {
                    return Ok(0);
                }
            }
            let r: Removed = c.post("/networks/prune", &serde_json::json!({})).await?;
            if !r.removed.is_empty() {
                println!("Deleted Networks:");
                for n in r.removed {
                    println!("{n}");
                }
            }
        }
        NetworkCommand::Connect {
            aliases,
            ip,
            ip6,
            network,
            sandbox,
        } => {
            let _: SandboxInfo = c
                .post(
                    &format!("/networks/{}/connect", seg(&network)),
                    &ConnectRequest {
                        sandbox,
                        aliases,
                        ipv4: ip,
                        ipv6: ip6,
                    },
                )
                .await?;
        }
        NetworkCommand::Disconnect {
            force,
            network,
            sandbox,
        } => {
            let _: SandboxInfo = c
                .post(
                    &format!("/networks/{}/disconnect", seg(&network)),
                    &DisconnectRequest { sandbox, force },
                )
                .await?;
        }
    }
    Ok(0)
}

const PRUNE_WARNING: &str = "WARNING! This will remove all custom networks not used by at least one sandbox.\nAre you sure you want to continue? [y/N] ";

/// Docker's confirmation prompt: true only for "y" or "yes". Without a terminal on stdin
/// there is nobody to ask: refuse (with a way out) rather than guess.
fn confirm(
    prompt: &str,
    tty: bool,
    input: &mut impl std::io::BufRead,
    out: &mut impl std::io::Write,
) -> Result<bool> {
    if !tty {
        bail!(
            "not pruning without confirmation: stdin is not a terminal (use -f to skip the prompt)"
        );
    }
    write!(out, "{prompt}")?;
    out.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer).context("reading the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// `sdctl version`: the client's version, then the daemon's (an error when none answers).
async fn version(client: &ClientOpts) -> Result<i32> {
    let mut out = String::new();
    version_text(&mut out, None);
    print!("{out}");
    let info: DaemonInfo = Client::new(&client.socket).get("/info").await?;
    let mut out = String::new();
    version_text(&mut out, Some((&info, &client.socket)));
    print!("{out}");
    Ok(0)
}

fn version_text(out: &mut String, server: Option<(&DaemonInfo, &Path)>) {
    use std::fmt::Write;
    match server {
        None => {
            let _ = writeln!(out, "Client:");
            let _ = writeln!(out, " Version:      {}", env!("CARGO_PKG_VERSION"));
            let _ = writeln!(out, " API version:  {}", API_PREFIX.trim_start_matches('/'));
        }
        Some((i, socket)) => {
            let _ = writeln!(out, "\nServer:");
            let _ = writeln!(out, " Version:      {}", i.version);
            let _ = writeln!(out, " PID:          {}", i.pid);
            let _ = writeln!(out, " Socket:       {}", socket.display());
            let _ = writeln!(out, " State dir:    {}", i.state_dir.display());
            let _ = writeln!(out, " Run dir:      {}", i.run_dir.display());
            let _ = writeln!(out, " Networks:     {}", i.networks);
            let _ = writeln!(out, " Sandboxes:    {}", i.sandboxes);
        }
    }
}

async fn run_sandbox(client: &ClientOpts, a: RunArgs) -> Result<i32> {
    let c = Client::new(&client.socket);
    let mut networks: Vec<NetworkAttach> = a
        .networks
        .iter()
        .map(|n| NetworkAttach {
            network: n.clone(),
            ..NetworkAttach::default()
        })
        .collect();
    if networks.is_empty() && (!a.aliases.is_empty() || a.ip.is_some() || a.ip6.is_some()) {
        bail!("--network-alias, --ip and --ip6 need a --network");
    }
    if let Some(first) = networks.first_mut() {
        first.aliases = a.aliases.clone();
        first.ipv4 = a.ip;
        first.ipv6 = a.ip6;
    }
    let foreground = !a.detach && !a.command.is_empty();
    if a.rm && a.restart.policy != SandboxRestartPolicy::No {
        bail!("conflicting options: --restart and --rm");
    }
    let netns = match &a.netns {
        // Relative paths mean nothing to the daemon.
        Some(p) => {
            Some(std::fs::canonicalize(p).with_context(|| format!("--netns {}", p.display()))?)
        }
        None => None,
    };
    let req = SandboxCreate {
        name: a.name.clone(),
        hostname: a.hostname.clone(),
        networks,
        ports: a.publish.clone(),
        dns: a.dns.clone(),
        netns,
        command: a.command.clone(),
        env: a.env.clone(),
        // In the foreground the client removes it after reading the exit code.
        auto_remove: a.rm && !foreground,
        restart: a.restart,
        links: a.links.clone(),
        expose: a.expose.clone(),
    };
    let sb: SandboxInfo = c.post("/sandboxes", &req).await?;
    if !foreground {
        println!("{}", sb.id);
        return Ok(0);
    }
    let code = follow_logs(&c, &sb.id, true).await?;
    if a.rm {
        let _: Removed = c
            .delete(&format!("/sandboxes/{}?force=true", sb.id))
            .await?;
    }
    Ok(code.unwrap_or(0))
}

/// Prints a sandbox's output; with `follow`, until its process exits. Returns the exit code.
async fn follow_logs(c: &Client, name: &str, follow: bool) -> Result<Option<i32>> {
    use std::io::Write;
    let mut offset = 0u64;
    loop {
        let chunk: LogChunk = c
            .get(&format!("/sandboxes/{}/logs?offset={offset}", seg(name)))
            .await?;
        print!("{}", chunk.data);
        let _ = std::io::stdout().flush();
        let grew = chunk.offset != offset;
        offset = chunk.offset;
        if !follow || (!chunk.running && !grew) {
            break;
        }
        if !grew {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let sb: SandboxInfo = c.get(&format!("/sandboxes/{}", seg(name))).await?;
    Ok(sb.exit_code)
}

/// `sdctl exec`: enter the sandbox in this process and replace it with the command, so
/// stdin, the terminal, signals and the exit code are the command's own.
fn exec(info: &ExecInfo, command: &[String]) -> Result<i32> {
    let tasks = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1);
    if tasks > 1 {
        bail!("internal: exec needs a single-threaded process ({tasks} threads)");
    }
    // The daemon may live in another mount namespace (`ip netns exec h1 sdctl daemon`): reach
    // its files through its root.
    let root = PathBuf::from(format!("/proc/{}/root", info.daemon_pid));
    let via = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let netns = if info.netns.as_os_str().is_empty() {
        PathBuf::from(format!("/proc/{}/ns/net", info.daemon_pid))
    } else {
        via(&info.netns)
    };
    // Bind mounts cannot take their source from another mount namespace: use the file as we
    // see it when it is the same path here, else a private copy of the daemon's.
    let local = |p: &Path| -> Option<PathBuf> {
        if p.exists() {
            return Some(p.to_path_buf());
        }
        let text = std::fs::read(via(p)).ok()?;
        let copy = std::env::temp_dir().join(format!(
            "sdnet-exec-{}-{}",
            std::process::id(),
            p.file_name()?.to_string_lossy()
        ));
        std::fs::write(&copy, text).ok()?;
        Some(copy)
    };
    let resolv = info.resolv_conf.as_deref().and_then(local);
    let hosts = info.hosts_file.as_deref().and_then(local);
    let mut files: Vec<(&Path, &Path)> = Vec::new();
    if let Some(r) = &resolv {
        files.push((r, Path::new("/etc/resolv.conf")));
    }
    if let Some(h) = &hosts {
        files.push((h, Path::new("/etc/hosts")));
    }
    let enter = Enter::prepare(Some(&netns), &info.hostname, &files)?;
    enter
        .apply()
        .context("entering the sandbox (are you root?)")?;
    let (prog, args) = command.split_first().context("no command")?;
    let err = std::process::Command::new(prog).args(args).exec();
    eprintln!("sdctl: exec {prog}: {err}");
    Ok(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(tty: bool, answer: &str) -> (Result<bool>, String) {
        let mut out = Vec::new();
        let r = confirm(PRUNE_WARNING, tty, &mut answer.as_bytes(), &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn prune_asks_like_docker() {
        for (answer, yes) in [
            ("y\n", true),
            ("Y\n", true),
            ("yes\n", true),
            ("\n", false),
            ("n\n", false),
            ("", false),
            ("yep\n", false),
        ] {
            let (r, shown) = ask(true, answer);
            assert_eq!(r.unwrap(), yes, "{answer:?}");
            assert_eq!(
                shown,
                "WARNING! This will remove all custom networks not used by at least one \
                 sandbox.\nAre you sure you want to continue? [y/N] "
            );
        }
        // Nobody to ask: refuse, and say how to go on.
        let (r, shown) = ask(false, "y\n");
        let e = r.unwrap_err().to_string();
        assert!(e.contains("-f") && e.contains("not a terminal"), "{e}");
        assert!(shown.is_empty());
    }

    #[test]
    fn version_text_has_client_and_server() {
        let mut out = String::new();
        version_text(&mut out, None);
        assert!(out.starts_with("Client:\n Version:"), "{out}");
        assert!(out.contains(env!("CARGO_PKG_VERSION")));
        let info = DaemonInfo {
            version: "9.9.9".into(),
            pid: 42,
            state_dir: "/var/lib/sdnet".into(),
            run_dir: "/run/sdnet".into(),
            networks: 3,
            sandboxes: 1,
        };
        let mut out = String::new();
        version_text(&mut out, Some((&info, Path::new("/run/sdnet/sdnet.sock"))));
        assert!(
            out.contains("Server:\n Version:      9.9.9\n PID:          42\n"),
            "{out}"
        );
    }
}
