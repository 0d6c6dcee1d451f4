//! Legacy links at create time (`run --link`, `--expose`): each target is looked up in the
//! desired state the transaction is built on and checked the way Docker checks it; the
//! sandbox's record keeps the target's name and the alias. `rm --link` takes one out of the
//! record again.

use super::{ApiError, ApiResult, bad, lookup_err, settle, write};
use crate::api::{ExposedPort, LinkSpec, NetworkAttach};
use crate::daemon::Node;
use crate::daemon::state::{Desired, Dirty, Entry, Lookup};
use crate::daemon::store::schema::{self, ExposeRec, LinkRec, NetMode, NetworkRec, PublishRec};
use crate::daemon::store::{Compare, Txn};

/// The links of a sandbox named `linker` on `nets` (its networks), checked against `d`.
pub fn plan(
    d: &Desired,
    linker: &str,
    mode: NetMode,
    nets: &[(&Entry<NetworkRec>, &NetworkAttach)],
    specs: &[LinkSpec],
) -> ApiResult<Vec<LinkRec>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    if mode == NetMode::Host || nets.is_empty() {
        return bad("links need a network of the sandbox's own: not with --network host or none");
    }
    let mut out: Vec<LinkRec> = Vec::with_capacity(specs.len());
    for s in specs {
        let id = d.sandbox_id(&s.target).map_err(|e| match e {
            Lookup::NotFound => {
                ApiError::NotFound(format!("cannot link to {}: no such sandbox", s.target))
            }
            Lookup::Ambiguous => ApiError::BadRequest(format!(
                "cannot link to {}: the ID prefix is ambiguous",
                s.target
            )),
        })?;
        let target = &d.sandboxes[id].rec;
        let alias = s.alias.clone().unwrap_or_else(|| target.name.clone());
        if out.iter().any(|l| l.alias.eq_ignore_ascii_case(&alias)) {
            return bad(format!("link alias {alias} given twice"));
        }
        let theirs = d.endpoints.get(id.as_str());
        let on = |n: &NetworkRec| theirs.is_some_and(|m| m.contains_key(n.id.as_str()));
        let bridge = nets.iter().find(|(n, _)| n.rec.default_bridge());
        let shared_user = nets
            .iter()
            .any(|(n, _)| !n.rec.predefined && n.rec.dns_on() && on(&n.rec));
        match bridge {
            // Docker reads the target's address and variables when the link is made.
            Some((b, _)) if on(&b.rec) && d.status_of(id).is_some_and(|st| st.exited) => {
                return Err(ApiError::Conflict(format!(
                    "cannot link to a non running sandbox: /{} AS /{linker}/{alias}",
                    target.name
                )));
            }
            Some((b, _)) if on(&b.rec) => {}
            Some(_) if !shared_user => {
                return bad(format!(
                    "cannot link to /{}, as it does not belong to the default network",
                    target.name
                ));
            }
            None if !shared_user => {
                return bad(format!(
                    "cannot link to {}: it shares no network with DNS with this sandbox",
                    target.name
                ));
            }
            _ => {}
        }
        out.push(LinkRec {
            target: target.name.clone(),
            alias,
        });
    }
    Ok(out)
}

/// `rm --link LINKER/ALIAS` (Docker's `rm --link`): the link goes from the linking
/// sandbox's record; no sandbox is removed. The reconciler then writes its hosts file
/// without the link's lines and takes the alias out of its resolver view; a running process
/// keeps the variables it was started with (as in Docker). Returns the link as
/// `/LINKER/ALIAS` once that is applied.
pub async fn remove(node: &Node, linker: &str, alias: &str) -> ApiResult<String> {
    let mut id = String::new();
    let mut shown = String::new();
    let rev = write(node, |d| {
        let sid = d
            .sandbox_id(linker)
            .map_err(|e| lookup_err("sandbox", linker, e))?;
        let e = &d.sandboxes[sid];
        // Aliases are unique per sandbox regardless of case, and answer regardless of it.
        let Some(i) = e
            .rec
            .links
            .iter()
            .position(|l| l.alias.eq_ignore_ascii_case(alias))
        else {
            return Err(ApiError::NotFound(format!(
                "sandbox {} has no link {alias}",
                e.rec.name
            )));
        };
        let mut rec = (*e.rec).clone();
        let gone = rec.links.remove(i);
        shown = format!("/{}/{}", rec.name, gone.alias);
        id = sid.clone();
        Ok(Txn::new()
            .when(Compare::ModRev(schema::sandbox(sid), e.rev))
            .put(schema::sandbox(sid), schema::encode(&rec)))
    })
    .await?;
    settle(node, rev, &Dirty::Sandbox(id)).await?;
    Ok(shown)
}

/// Exposed ports: `--expose` and the container ports of `-p`, sorted (tcp before udp on one
/// port, as Docker sorts them), no duplicates.
pub fn exposed(expose: &[ExposedPort], published: &[PublishRec]) -> Vec<ExposeRec> {
    let mut v: Vec<ExposeRec> = expose
        .iter()
        .flat_map(|e| {
            e.ports().map(|port| ExposeRec {
                port,
                protocol: e.protocol,
            })
        })
        .chain(published.iter().map(|p| ExposeRec {
            port: p.container_port,
            protocol: p.protocol,
        }))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// How `inspect` shows a link (Docker's `HostConfig.Links`).
pub fn shown(linker: &str, l: &LinkRec) -> String {
    format!("/{}:/{linker}/{}", l.target, l.alias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdnet_resolver::model::Protocol;

    #[test]
    fn exposed_ports_merge_sort_and_dedup() {
        let e = |s: &str| s.parse::<ExposedPort>().unwrap();
        let p = |cp: u16, protocol| PublishRec {
            host_ip: None,
            host_port: 1,
            container_port: cp,
            protocol,
            host_mode: false,
        };
        let v = exposed(
            &[e("443"), e("53/udp"), e("80-81")],
            &[p(53, Protocol::Tcp), p(80, Protocol::Tcp)],
        );
        let got: Vec<String> = v
            .iter()
            .map(|x| format!("{}/{}", x.port, x.protocol))
            .collect();
        assert_eq!(got, ["53/tcp", "53/udp", "80/tcp", "81/tcp", "443/tcp"]);
        assert_eq!(
            shown(
                "web",
                &LinkRec {
                    target: "db1".into(),
                    alias: "db".into()
                }
            ),
            "/db1:/web/db"
        );
    }
}
