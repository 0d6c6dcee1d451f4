//! `sdctl services …`: create, list, inspect, ps, scale, update, rm.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::api::*;
use crate::cli::{ClientOpts, HealthArgs, ServicesCommand};
use crate::client::http::{Client, seg};
use crate::client::output;

fn health_spec(h: &HealthArgs) -> Option<HealthSpec> {
    let cmd = h.health_cmd.clone()?;
    let interval = h.health_interval.unwrap_or(Duration::from_secs(5));
    Some(HealthSpec {
        cmd,
        interval_ms: interval.as_millis() as u64,
        timeout_ms: h.health_timeout.unwrap_or(interval).as_millis() as u64,
        retries: h.health_retries.unwrap_or(3),
        start_period_ms: h.health_start_period.unwrap_or_default().as_millis() as u64,
    })
}

fn check_env(env: &[String]) -> Result<()> {
    for e in env {
        if e.is_empty() || e.starts_with('=') {
            bail!("invalid environment entry {e:?}: expected KEY=VALUE");
        }
    }
    Ok(())
}

/// Waits until the service runs its desired tasks (and nothing drains), with a progress bar.
async fn wait_converged(c: &Client, name: &str) -> Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix}: {pos}/{len} tasks running {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(name.to_string());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s: ServiceInfo = c.get(&format!("/services/{}", seg(name))).await?;
        bar.set_length(s.replicas as u64);
        bar.set_position(s.running.min(s.replicas) as u64);
        let busy = s.tasks.iter().filter(|t| t.state != "running").count();
        bar.set_message(if busy > 0 {
            format!("({busy} starting or draining)")
        } else {
            String::new()
        });
        if s.running == s.replicas && busy == 0 {
            bar.finish();
            return Ok(());
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!("service {name} did not converge in 120 s (see `sdctl services ps {name}`)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(opts: &ClientOpts, cmd: ServicesCommand) -> Result<i32> {
    let c = Client::new(&opts.socket);
    match cmd {
        ServicesCommand::Create(a) => {
            check_env(&a.env)?;
            if a.health.no_healthcheck {
                bail!("--no-healthcheck only makes sense with update");
            }
            let req = ServiceCreate {
                name: a.name.clone(),
                command: a.command,
                env: a.env,
                replicas: a.replicas,
                networks: a.networks,
                endpoint_mode: a.endpoint_mode.into(),
                ports: a.ports,
                publish: a.publish,
                health: health_spec(&a.health),
                restart: a.restart,
                drain_ms: a.drain.as_millis() as u64,
                global: a.mode == crate::cli::ServiceModeArg::Global,
                constraints: a.constraints,
            };
            let s: ServiceInfo = c.post("/services", &req).await?;
            if !a.detach {
                wait_converged(&c, &s.name).await?;
            }
            println!("{}", s.id);
        }
        ServicesCommand::Ls { out } => {
            let list: Vec<ServiceInfo> = c.get("/services").await?;
            output::services(&list, &out);
        }
        ServicesCommand::Inspect { names } => {
            let mut all = Vec::new();
            let mut failed = false;
            for n in &names {
                match c.get::<ServiceInfo>(&format!("/services/{}", seg(n))).await {
                    Ok(s) => all.push(s),
                    Err(e) => {
                        eprintln!("sdctl: {e:#}");
                        failed = true;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&all)?);
            return Ok(i32::from(failed));
        }
        ServicesCommand::Ps { name, out } => {
            let s: ServiceInfo = c.get(&format!("/services/{}", seg(&name))).await?;
            output::tasks(&s, &out);
        }
        ServicesCommand::Scale { specs, detach } => {
            let mut parsed = Vec::new();
            for spec in &specs {
                let (n, k) = spec
                    .split_once('=')
                    .ok_or_else(|| anyhow!("invalid scale {spec:?}: expected SERVICE=REPLICAS"))?;
                let k: u32 = k.parse().map_err(|_| {
                    anyhow!("invalid scale {spec:?}: replicas must be a number ≥ 0")
                })?;
                parsed.push((n.to_string(), k));
            }
            for (n, k) in &parsed {
                let u = ServiceUpdate {
                    replicas: Some(*k),
                    ..ServiceUpdate::default()
                };
                let _: ServiceInfo = c.post(&format!("/services/{}/update", seg(n)), &u).await?;
                println!("{n} scaled to {k}");
            }
            if !detach {
                for (n, _) in &parsed {
                    wait_converged(&c, n).await?;
                }
            }
        }
        ServicesCommand::Update(a) => {
            check_env(&a.env)?;
            let health = if a.health.no_healthcheck {
                Some(None)
            } else {
                health_spec(&a.health).map(Some)
            };
            let u = ServiceUpdate {
                replicas: a.replicas,
                command: (!a.command.is_empty()).then_some(a.command),
                env: (!a.env.is_empty()).then_some(a.env),
                health,
                restart: a.restart,
                drain_ms: a.drain.map(|d| d.as_millis() as u64),
            };
            let s: ServiceInfo = c
                .post(&format!("/services/{}/update", seg(&a.name)), &u)
                .await?;
            if !a.detach {
                wait_converged(&c, &s.name).await?;
            }
            println!("{}", s.name);
        }
        ServicesCommand::Rm { names } => {
            let mut failed = false;
            for n in &names {
                match c.delete::<Removed>(&format!("/services/{}", seg(n))).await {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        eprintln!("sdctl: {e:#}");
                        failed = true;
                    }
                }
            }
            return Ok(i32::from(failed));
        }
    }
    Ok(0)
}
