//! Docker-style output: borderless tables, `--format json`, `-q` for IDs.

use std::time::{Duration, SystemTime};

use comfy_table::{Table, presets};

use crate::api::{NetworkInfo, NodeInfo, SandboxInfo, SandboxStatus, ServiceInfo, parse_rfc3339};
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

/// A duration in Docker's words ("Less than a second", "1 second", "About a minute",
/// "5 minutes", "About an hour", "2 hours", "3 days", "2 weeks", "4 months", "2 years").
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let minutes = secs / 60;
    // Hours are rounded to the nearest one (90 minutes is "2 hours").
    let hours = (secs + 1800) / 3600;
    let days = hours / 24;
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{secs} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if days < 14 => format!("{days} days"),
        _ if days < 60 => format!("{} weeks", days / 7),
        _ if days < 730 => format!("{} months", days / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    }
}

/// Time from an API timestamp to `now` (zero when it is in the future or unreadable).
fn since(ts: &str, now: SystemTime) -> Option<Duration> {
    let t = parse_rfc3339(ts)?;
    Some(now.duration_since(t).unwrap_or_default())
}

/// "5 minutes ago" (CREATED).
pub fn ago(ts: &str, now: SystemTime) -> String {
    match since(ts, now) {
        Some(d) => format!("{} ago", human_duration(d)),
        None => ts.to_string(),
    }
}

/// Docker's STATUS: "Up 5 minutes", "Exited (3) 2 seconds ago".
pub fn status(s: &SandboxInfo, now: SystemTime) -> String {
    match s.status {
        SandboxStatus::Running => {
            // Up since its process started, or since it was made when it has none.
            let from = s.started_at.as_deref().unwrap_or(&s.created);
            match since(from, now) {
                Some(d) => format!("Up {}", human_duration(d)),
                None => "Up".into(),
            }
        }
        SandboxStatus::Paused => {
            let from = s.started_at.as_deref().unwrap_or(&s.created);
            match since(from, now) {
                Some(d) => format!("Up {} (Paused)", human_duration(d)),
                None => "Up (Paused)".into(),
            }
        }
        SandboxStatus::Restarting | SandboxStatus::Exited => {
            let mut out = if s.status == SandboxStatus::Restarting {
                "Restarting".to_string()
            } else {
                "Exited".to_string()
            };
            if let Some(c) = s.exit_code {
                out.push_str(&format!(" ({c})"));
            }
            if let Some(d) = s.finished_at.as_deref().and_then(|t| since(t, now)) {
                out.push_str(&format!(" {} ago", human_duration(d)));
            }
            out
        }
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

pub fn nodes(list: &[NodeInfo], out: &OutputOpts) {
    if out.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(list).unwrap_or_default());
        return;
    }
    if out.quiet {
        for n in list {
            println!("{}", &n.id[..12.min(n.id.len())]);
        }
        return;
    }
    let mut t = table(&[
        "ID",
        "NAME",
        "STATUS",
        "MANAGER STATUS",
        "ADDRESS",
        "ENDPOINTS",
        "TASKS",
    ]);
    for n in list {
        let id = &n.id[..12.min(n.id.len())];
        t.add_row(vec![
            if n.is_self {
                format!("{id} *")
            } else {
                id.to_string()
            },
            n.name.clone(),
            n.status.clone(),
            if n.leader { "Leader" } else { "" }.into(),
            n.addr.to_string(),
            n.endpoints.to_string(),
            n.tasks.to_string(),
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
    let now = SystemTime::now();
    for s in list {
        let mut cmd = s.command.join(" ");
        if cmd.len() > 30 {
            cmd.truncate(27);
            cmd.push_str("...");
        }
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
            ago(&s.created, now),
            status(s, now),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rfc3339;

    #[test]
    fn durations_in_dockers_words() {
        let d = Duration::from_secs;
        for (secs, want) in [
            (0, "Less than a second"),
            (1, "1 second"),
            (2, "2 seconds"),
            (59, "59 seconds"),
            (60, "About a minute"),
            (119, "About a minute"),
            (120, "2 minutes"),
            (5 * 60 + 10, "5 minutes"),
            (59 * 60 + 59, "59 minutes"),
            (3600, "About an hour"),
            (89 * 60, "About an hour"),
            (90 * 60, "2 hours"),
            (2 * 3600, "2 hours"),
            (47 * 3600, "47 hours"),
            (48 * 3600, "2 days"),
            (13 * 86400, "13 days"),
            (14 * 86400, "2 weeks"),
            (59 * 86400, "8 weeks"),
            (60 * 86400, "2 months"),
            (729 * 86400, "24 months"),
            (730 * 86400, "2 years"),
        ] {
            assert_eq!(human_duration(d(secs)), want, "{secs} s");
        }
    }

    fn sandbox(status: SandboxStatus) -> SandboxInfo {
        SandboxInfo {
            id: "0".repeat(64),
            name: "a".into(),
            hostname: "a".into(),
            created: rfc3339(1_000),
            started_at: None,
            finished_at: None,
            status,
            netns: Default::default(),
            adopted: false,
            endpoints: vec![],
            ports: vec![],
            dns: vec![],
            command: vec![],
            pid: None,
            exit_code: None,
            resolv_conf: None,
            hosts_file: None,
            dns_ports: None,
            restart_policy: "no".into(),
            restart_count: 0,
            links: vec![],
            exposed_ports: vec![],
        }
    }

    #[test]
    fn ps_status_and_created_as_docker_says_them() {
        let at = |secs: u64| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let mut s = sandbox(SandboxStatus::Running);
        assert_eq!(status(&s, at(1_000)), "Up Less than a second");
        assert_eq!(status(&s, at(1_300)), "Up 5 minutes");
        s.started_at = Some(rfc3339(1_299));
        s.pid = Some(7);
        assert_eq!(status(&s, at(1_300)), "Up 1 second");
        assert_eq!(status(&s, at(1_299 + 7200)), "Up 2 hours");
        assert_eq!(ago(&s.created, at(1_300)), "5 minutes ago");
        assert_eq!(ago(&s.created, at(1_000)), "Less than a second ago");
        // A clock behind the record is not "minus" anything.
        assert_eq!(ago(&s.created, at(10)), "Less than a second ago");

        let mut s = sandbox(SandboxStatus::Exited);
        s.exit_code = Some(3);
        s.finished_at = Some(rfc3339(1_298));
        assert_eq!(status(&s, at(1_300)), "Exited (3) 2 seconds ago");
        s.exit_code = Some(0);
        s.finished_at = Some(rfc3339(1_300));
        assert_eq!(status(&s, at(1_300 + 3600)), "Exited (0) About an hour ago");
        s.finished_at = None;
        assert_eq!(status(&s, at(1_300)), "Exited (0)");

        let mut s = sandbox(SandboxStatus::Restarting);
        s.exit_code = Some(1);
        s.finished_at = Some(rfc3339(1_299));
        assert_eq!(status(&s, at(1_300)), "Restarting (1) 1 second ago");
        let mut s = sandbox(SandboxStatus::Paused);
        s.started_at = Some(rfc3339(1_290));
        assert_eq!(status(&s, at(1_300)), "Up 10 seconds (Paused)");
    }
}
