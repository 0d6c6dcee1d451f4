//! `start`, `stop`, `restart`, `kill`, `wait`, `port`, `pause`, `unpause` and `events`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};

use super::http::{Client, seg};
use crate::api::*;
use crate::cli::Format;

/// The same call for each sandbox named; its name printed on success (as Docker does).
pub async fn each<B: serde::Serialize>(
    c: &Client,
    names: &[String],
    action: &str,
    body: &B,
) -> Result<i32> {
    let mut failed = false;
    for n in names {
        match c
            .post::<B, SandboxInfo>(&format!("/sandboxes/{}/{action}", seg(n)), body)
            .await
        {
            Ok(_) => println!("{n}"),
            Err(e) => {
                eprintln!("sdctl: {e:#}");
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}

/// `sdctl wait`: each process's exit code, one per line.
pub async fn wait(c: &Client, names: &[String]) -> Result<i32> {
    let mut failed = false;
    for n in names {
        match c
            .post::<(), WaitResult>(&format!("/sandboxes/{}/wait", seg(n)), &())
            .await
        {
            Ok(w) => println!("{}", w.status_code),
            Err(e) => {
                eprintln!("sdctl: {e:#}");
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}

/// `sdctl port NAME [PRIVATE[/PROTO]]`, worded like `docker port`.
pub fn port_lines(sb: &SandboxInfo, private: Option<&str>) -> Result<Vec<String>> {
    let want = match private {
        None => None,
        Some(p) => {
            let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            let num: u16 = num
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid port {p:?}: expected PORT[/tcp|udp]"))?;
            if !matches!(proto, "tcp" | "udp") {
                bail!("invalid protocol {proto:?}: use tcp or udp");
            }
            Some((num, proto.to_string()))
        }
    };
    let host = |p: &PortSpec| {
        let ip = p
            .host_ip
            .map_or_else(|| "0.0.0.0".to_string(), |ip| ip.to_string());
        if ip.contains(':') {
            format!("[{ip}]:{}", p.host_port)
        } else {
            format!("{ip}:{}", p.host_port)
        }
    };
    let mut out = Vec::new();
    for p in &sb.ports {
        let proto = p.protocol.to_string();
        match &want {
            None => out.push(format!("{}/{proto} -> {}", p.container_port, host(p))),
            Some((n, pr)) if *n == p.container_port && *pr == proto => out.push(host(p)),
            Some(_) => {}
        }
    }
    if let (Some(p), true) = (private, out.is_empty()) {
        let p = if p.contains('/') {
            p.to_string()
        } else {
            format!("{p}/tcp")
        };
        bail!("no public port '{p}' published for {}", sb.name);
    }
    Ok(out)
}

/// A time for `--since`/`--until`: RFC 3339, Unix seconds (with a fraction), or a duration
/// before now (`10m`). Nanoseconds since the epoch.
pub fn parse_time(s: &str, now: SystemTime) -> Result<u64> {
    let t = if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        t
    } else if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            bail!("invalid time {s:?}");
        }
        UNIX_EPOCH + Duration::from_secs_f64(secs)
    } else {
        match crate::duration::parse(s) {
            Ok(d) => now.checked_sub(d).unwrap_or(UNIX_EPOCH),
            Err(_) => bail!(
                "invalid time {s:?}: use RFC 3339 (2024-01-02T15:04:05Z), Unix seconds, or a duration ago (10m)"
            ),
        }
    };
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0))
}

/// `--filter` of `sdctl events`: values per key; a key's values OR, keys AND.
#[derive(Debug, Default)]
pub struct EventFilter(BTreeMap<String, Vec<String>>);

impl EventFilter {
    pub fn parse(args: &[String]) -> Result<EventFilter> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in args {
            let Some((k, v)) = a.split_once('=') else {
                bail!("invalid filter {a:?}: expected KEY=VALUE");
            };
            let k = match k {
                "container" => "sandbox",
                "type" | "event" | "sandbox" | "network" | "service" => k,
                _ => {
                    bail!("invalid filter key {k:?}: use type, event, sandbox, network or service")
                }
            };
            if k == "type" && !matches!(v, "sandbox" | "network" | "service") {
                bail!("invalid filter type={v}: use sandbox, network or service");
            }
            m.entry(k.to_string()).or_default().push(v.to_string());
        }
        Ok(EventFilter(m))
    }

    pub fn matches(&self, e: &Event) -> bool {
        let one = |key: &str, ok: &dyn Fn(&str) -> bool| {
            self.0.get(key).is_none_or(|vs| vs.iter().any(|v| ok(v)))
        };
        let named = |kind: &str, v: &str| {
            e.kind == kind && (e.name == v || (!v.is_empty() && e.id.starts_with(v)))
        };
        one("type", &|v| e.kind == v)
            && one("event", &|v| e.action == v)
            && one("sandbox", &|v| {
                named("sandbox", v) || e.attributes.get("sandbox").is_some_and(|s| s == v)
            })
            && one("network", &|v| named("network", v))
            && one("service", &|v| named("service", v))
    }
}

/// An event as `docker events` prints one.
pub fn human(e: &Event) -> String {
    let mut attrs: Vec<String> = e
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    attrs.push(format!("name={}", e.name));
    attrs.sort();
    format!(
        "{} {} {} {} ({})",
        e.time,
        e.kind,
        e.action,
        e.id,
        attrs.join(", ")
    )
}

/// `sdctl events`: prints events until `until` (or forever).
pub async fn events(
    c: &Client,
    since: Option<&str>,
    until: Option<&str>,
    filters: &[String],
    format: Format,
) -> Result<i32> {
    let now = SystemTime::now();
    let filter = EventFilter::parse(filters)?;
    let mut q = Vec::new();
    if let Some(s) = since {
        q.push(format!("since={}", parse_time(s, now)?));
    }
    if let Some(u) = until {
        q.push(format!("until={}", parse_time(u, now)?));
    }
    let path = format!("/events?{}", q.join("&"));
    c.lines(&path, |line| {
        let Ok(e) = serde_json::from_str::<Event>(line) else {
            return;
        };
        if !filter.matches(&e) {
            return;
        }
        match format {
            Format::Json => println!("{line}"),
            Format::Table => println!("{}", human(&e)),
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })
    .await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, action: &str, name: &str, attrs: &[(&str, &str)]) -> Event {
        Event {
            time: "2026-01-01T00:00:00.000000001Z".into(),
            time_nano: 1,
            kind: kind.into(),
            action: action.into(),
            id: "0123456789ab".into(),
            name: name.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn filters_or_within_a_key_and_across_keys() {
        let f = EventFilter::parse(&["event=die".into(), "event=start".into()]).unwrap();
        assert!(f.matches(&ev("sandbox", "die", "a", &[])));
        assert!(f.matches(&ev("sandbox", "start", "a", &[])));
        assert!(!f.matches(&ev("sandbox", "create", "a", &[])));
        let f = EventFilter::parse(&["type=network".into(), "sandbox=web".into()]).unwrap();
        assert!(f.matches(&ev("network", "connect", "n1", &[("sandbox", "web")])));
        assert!(!f.matches(&ev("sandbox", "create", "web", &[])));
        assert!(!f.matches(&ev("network", "connect", "n1", &[("sandbox", "db")])));
        let f = EventFilter::parse(&["sandbox=web".into()]).unwrap();
        assert!(f.matches(&ev("sandbox", "die", "web", &[])));
        assert!(f.matches(&ev("sandbox", "die", "x", &[])) == "0123456789ab".starts_with("web"));
        assert!(EventFilter::parse(&["bogus=1".into()]).is_err());
        assert!(EventFilter::parse(&["type=volume".into()]).is_err());
        assert!(EventFilter::parse(&["event".into()]).is_err());
    }

    #[test]
    fn times_in_three_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(parse_time("10s", now).unwrap(), 990_000_000_000);
        assert_eq!(parse_time("12.5", now).unwrap(), 12_500_000_000);
        assert_eq!(
            parse_time("1970-01-01T00:01:00Z", now).unwrap(),
            60_000_000_000
        );
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn ports_like_docker_port() {
        let sb: SandboxInfo = serde_json::from_value(serde_json::json!({
            "id": "x", "name": "web", "hostname": "h", "created": "2026-01-01T00:00:00Z",
            "status": "running", "netns": "/n", "adopted": false, "endpoints": [],
            "ports": [], "dns": [], "command": [],
            "pid": null, "exit_code": null, "resolv_conf": null, "hosts_file": null,
            "dns_ports": null
        }))
        .unwrap();
        let mut sb: SandboxInfo = sb;
        sb.ports = vec![
            "8080:80/tcp".parse().unwrap(),
            "127.0.0.1:5353:53/udp".parse().unwrap(),
        ];
        assert_eq!(
            port_lines(&sb, None).unwrap(),
            ["80/tcp -> 0.0.0.0:8080", "53/udp -> 127.0.0.1:5353"]
        );
        assert_eq!(port_lines(&sb, Some("80")).unwrap(), ["0.0.0.0:8080"]);
        assert_eq!(port_lines(&sb, Some("53/udp")).unwrap(), ["127.0.0.1:5353"]);
        let e = port_lines(&sb, Some("81")).unwrap_err().to_string();
        assert_eq!(e, "no public port '81/tcp' published for web");
    }
}
