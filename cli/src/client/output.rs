//! Docker-style output: borderless tables, `--format json`, `-q` for IDs.

use comfy_table::{Table, presets};

use crate::api::{NetworkInfo, SandboxInfo, SandboxStatus, ServiceInfo};
use crate::cli::{Format, OutputOpts};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()));
    t
}

fn print(mut t: Table) {
    // Docker style: no left padding, three spaces between columns.
    for c in t.column_iter_mut() {
        c.set_padding((0, 3));
    }
    for line in t.to_string().lines() {
        println!("{}", line.trim_end());
    }
}

pub fn ago(ts: u64) -> String {
    let now = crate::daemon::core::now();
    let d = now.saturating_sub(ts);
    match d {
        0..=1 => "Less than a second ago".into(),
        2..=59 => format!("{d} seconds ago"),
        60..=119 => "About a minute ago".into(),
        120..=3599 => format!("{} minutes ago", d / 60),
        3600..=7199 => "About an hour ago".into(),
        7200..=86399 => format!("{} hours ago", d / 3600),
        _ => format!("{} days ago", d / 86400),
    }
}

pub fn networks(list: &[NetworkInfo], out: &OutputOpts) {
    if out.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
        return;
    }
    if out.quiet {
        for n in list {
            println!("{}", &n.id[..12]);
        }
        return;
    }
    let mut t = table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET", "DNS"]);
    for n in list {
        let subnets: Vec<String> = n.subnets.iter().map(|s| s.subnet.to_string()).collect();
        t.add_row(vec![
            n.id[..12].to_string(),
            n.name.clone(),
            n.driver.to_string(),
            n.scope.clone(),
            subnets.join(","),
            if n.dns { "on".into() } else { "off".into() },
        ]);
    }
    print(t);
}

pub fn sandboxes(list: &[SandboxInfo], out: &OutputOpts) {
    if out.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
        return;
    }
    if out.quiet {
        for s in list {
            println!("{}", &s.id[..12]);
        }
        return;
    }
    let mut t = table(&[
        "SANDBOX ID",
        "NAME",
        "COMMAND",
        "CREATED",
        "STATUS",
        "NETWORKS",
        "PORTS",
    ]);
    for s in list {
        let mut cmd = s.command.join(" ");
        if cmd.len() > 30 {
            cmd.truncate(27);
            cmd.push_str("...");
        }
        let status = match (s.status, s.exit_code) {
            (SandboxStatus::Running, _) if s.pid.is_some() => "Running".to_string(),
            (SandboxStatus::Running, _) => "Up".to_string(),
            (SandboxStatus::Exited, Some(c)) => format!("Exited ({c})"),
            (SandboxStatus::Exited, None) => "Exited".to_string(),
        };
        let nets: Vec<String> = s
            .endpoints
            .iter()
            .map(|e| match e.ipv4 {
                Some(ip) => format!("{}={ip}", e.network),
                None => e.network.clone(),
            })
            .collect();
        let ports: Vec<String> = s.ports.iter().map(|p| p.to_string()).collect();
        t.add_row(vec![
            s.id[..12].to_string(),
            s.name.clone(),
            if cmd.is_empty() {
                "-".into()
            } else {
                format!("\"{cmd}\"")
            },
            ago(s.created),
            status,
            nets.join(","),
            ports.join(", "),
        ]);
    }
    print(t);
}

pub fn services(list: &[ServiceInfo], out: &OutputOpts) {
    if out.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
        return;
    }
    if out.quiet {
        for s in list {
            println!("{}", &s.id[..12]);
        }
        return;
    }
    let mut t = table(&["ID", "NAME", "MODE", "REPLICAS", "VIPS", "PORTS"]);
    for s in list {
        let vips: Vec<String> = s
            .networks
            .iter()
            .filter_map(|n| n.vip.map(|v| format!("{}={v}", n.network)))
            .collect();
        let mut ports: Vec<String> = s.publish.iter().map(|p| p.to_string()).collect();
        ports.extend(
            s.ports
                .iter()
                .map(|p| format!("{}:{}/{}", p.name, p.port, p.protocol)),
        );
        t.add_row(vec![
            s.id[..12].to_string(),
            s.name.clone(),
            s.mode.to_string(),
            format!("{}/{}", s.running, s.replicas),
            vips.join(","),
            ports.join(", "),
        ]);
    }
    print(t);
}

pub fn tasks(s: &ServiceInfo, out: &OutputOpts) {
    if out.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s.tasks).unwrap_or_default()
        );
        return;
    }
    if out.quiet {
        for t in &s.tasks {
            println!("{}", &t.id[..12]);
        }
        return;
    }
    let mut tb = table(&["NAME", "SLOT", "STATE", "HEALTH", "NODE", "IP"]);
    for t in &s.tasks {
        let state = match t.exit_code {
            Some(c) if t.state == "exited" => format!("exited ({c})"),
            _ => t.state.clone(),
        };
        tb.add_row(vec![
            t.name.clone(),
            t.slot.to_string(),
            state,
            if t.health.is_empty() {
                "-".into()
            } else {
                t.health.clone()
            },
            t.node.clone(),
            t.ips.join(","),
        ]);
    }
    print(tb);
}
