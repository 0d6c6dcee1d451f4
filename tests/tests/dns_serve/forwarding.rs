//! The forwarding path end to end: upstream replies checked before they are relayed, big
//! answers truncated to whole records, the client's own OPT and AD, TSIG-signed queries. The
//! upstreams are scripted fixtures (what dnsmasq cannot be made to send) and a real BIND.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, OpCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption, NSIDPayload};
use hickory_proto::rr::{RData, Record};
use sdnet_tests::{Dig, Named, Ns, Scripted, TempDir};

use super::{serve, state};

/// An upstream's reply to the query `q` (its bytes) with A records for its name.
fn a_reply(q: &[u8], ips: impl IntoIterator<Item = Ipv4Addr>) -> Option<Message> {
    let q = Message::from_vec(q).ok()?;
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_queries(q.queries.clone());
    let name = q.queries.first()?.name().clone();
    for ip in ips {
        m.add_answer(Record::from_rdata(name.clone(), 300, RData::A(A(ip))));
    }
    if q.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    Some(m)
}

/// Every reply from an upstream is decoded and checked before it is relayed: a malformed one
/// (right ID and question, one record fewer than ANCOUNT says) counts as that upstream
/// failing, and the next one answers.
#[test]
fn malformed_upstream_replies_fail_over() {
    let ns = Ns::new("dnsc");
    let dir = TempDir::new("dnsc");
    let bad = Scripted::start(&ns, "127.0.0.5:53", |q, _| {
        let mut r = a_reply(q, [Ipv4Addr::new(192, 0, 2, 66)])?.to_vec().ok()?;
        r[7] += 1;
        Some(r)
    });
    let good = Scripted::start(&ns, "127.0.0.6:53", |q, _| {
        a_reply(q, [Ipv4Addr::new(192, 0, 2, 8)])?.to_vec().ok()
    });
    let s = serve(
        &ns,
        &dir,
        &state(),
        &[
            "--as",
            "a",
            "--upstream",
            &bad.addr.to_string(),
            "--upstream",
            &good.addr.to_string(),
        ],
    );
    for (name, tcp) in [("x.example", false), ("y.example", true)] {
        let mut args = vec![name];
        if tcp {
            args.push("+tcp");
        }
        let d = s.dig(&args);
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(d.data("A"), ["192.0.2.8"], "{}", d.raw);
    }
    assert_eq!(bad.queries().len(), 2, "the bad upstream was asked first");
}

/// An upstream answer too big for the client's UDP size keeps as many whole records as fit,
/// TC set: musl before 1.2.4 (older Alpine) never retries over TCP, so "TC and nothing" left it
/// with no address at all. The upstream here behaves like Unbound: over UDP, a reply too big
/// for the query's size is TC=1 with no records, so the resolver asks it again over TCP.
#[test]
fn big_upstream_answers_keep_whole_records() {
    let ns = Ns::new("dnsg");
    let dir = TempDir::new("dnsg");
    let up = Scripted::start(&ns, "127.0.0.5:53", |q, tcp| {
        let query = Message::from_vec(q).ok()?;
        let full = a_reply(q, (1..=100).map(|i| Ipv4Addr::new(192, 0, 2, i)))?
            .to_vec()
            .ok()?;
        let limit = query
            .edns
            .as_ref()
            .map_or(512, |e| e.max_payload() as usize);
        if tcp || full.len() <= limit {
            return Some(full);
        }
        let mut tc = a_reply(q, [])?;
        tc.metadata.truncation = true;
        tc.to_vec().ok()
    });
    let s = serve(
        &ns,
        &dir,
        &state(),
        &["--as", "a", "--upstream", &up.addr.to_string()],
    );
    // Plain DNS, 512 bytes: (512 - header - question) / 16 bytes per A record.
    let d = s.dig(&["+noedns", "+ignore", "big.example"]);
    assert!(d.has_flag("tc"), "{}", d.raw);
    assert_eq!(d.answer.len(), (512 - 12 - 17) / 16, "{}", d.raw);
    assert_eq!(d.data("A")[..2], ["192.0.2.1", "192.0.2.2"]);
    assert!(
        up.queries().iter().any(|(_, tcp)| *tcp),
        "the truncated UDP reply was asked again over TCP"
    );
    // Again, from the cache: the same.
    let asked = up.queries().len();
    let d = s.dig(&["+noedns", "+ignore", "big.example"]);
    assert_eq!(d.answer.len(), (512 - 12 - 17) / 16, "{}", d.raw);
    assert_eq!(up.queries().len(), asked, "answered from the cache");
    // The client's EDNS size (its OPT record takes 11 bytes).
    let d = s.dig(&["+bufsize=1232", "+ignore", "big.example"]);
    assert!(d.has_flag("tc"), "{}", d.raw);
    assert_eq!(d.answer.len(), (1232 - 12 - 17 - 11) / 16, "{}", d.raw);
    // dig retries over TCP by itself: everything.
    assert_eq!(s.dig(&["+noedns", "big.example"]).answer.len(), 100);
    assert_eq!(s.dig(&["+tcp", "big.example"]).answer.len(), 100);
}

/// One client's EDNS state never reaches another: the upstream's COOKIE (BIND and Unbound as
/// downstream resolvers report "Client COOKIE mismatch" for someone else's), NSID, padding
/// are not relayed, not even to the client that sent the query, nor replayed from the cache.
#[test]
fn upstream_edns_options_are_not_relayed() {
    let ns = Ns::new("dnse");
    let dir = TempDir::new("dnse");
    let up = Scripted::start(&ns, "127.0.0.5:53", |q, _| {
        let query = Message::from_vec(q).ok()?;
        let mut r = a_reply(q, [Ipv4Addr::new(192, 0, 2, 10)])?;
        // The client cookie of the query if it had one, a server cookie, NSID, padding.
        let mut cookie = match query.edns.as_ref().and_then(|e| e.option(EdnsCode::Cookie)) {
            Some(EdnsOption::Unknown(_, c)) => c[..8.min(c.len())].to_vec(),
            _ => vec![0x11; 8],
        };
        cookie.extend([0x22; 16]);
        let mut e = Edns::new();
        e.set_max_payload(1232);
        let o = e.options_mut();
        o.insert(EdnsOption::Unknown(10, cookie));
        o.insert(EdnsOption::NSID(
            NSIDPayload::new(b"upstream-1".to_vec()).ok()?,
        ));
        o.insert(EdnsOption::Unknown(12, vec![0; 32]));
        r.set_edns(e);
        r.to_vec().ok()
    });
    let s = serve(
        &ns,
        &dir,
        &state(),
        &["--as", "a", "--upstream", &up.addr.to_string()],
    );
    // Client 1 sends a COOKIE and asks for NSID; client 2 (another dig: another client
    // cookie) gets the cached answer.
    for args in [["+cookie", "+nsid"], ["+cookie", "+nonsid"]] {
        let d = s.dig(&[args[0], args[1], "cookie.example"]);
        assert_eq!(d.data("A"), ["192.0.2.10"], "{}", d.raw);
        assert!(d.opt, "our own OPT: {}", d.raw);
        for bad in ["COOKIE", "NSID", "PAD"] {
            assert!(!d.raw.contains(bad), "{bad} relayed:\n{}", d.raw);
        }
    }
    assert_eq!(
        up.queries().len(),
        1,
        "the second answer came from the cache"
    );
    // What went upstream carried none of the client's options either.
    let (q, _) = &up.queries()[0];
    let q = Message::from_vec(q).unwrap();
    assert!(q.edns.unwrap().options().options.is_empty());
}

/// AD is the upstream's verdict, cached, and each query gets it per its own bits: a query with
/// AD (glibc's `trust-ad`) for a name cached from a query without AD gets AD=1 where the
/// upstream sets it; a query with neither AD nor DO never does (RFC 6840 §5.7–5.8).
#[test]
fn ad_bit_per_query_from_the_cached_upstream_verdict() {
    let ns = Ns::new("dnsd");
    let dir = TempDir::new("dnsd");
    // A validating resolver: AD only to queries with AD or DO.
    let up = Scripted::start(&ns, "127.0.0.5:53", |q, _| {
        let query = Message::from_vec(q).ok()?;
        let mut r = a_reply(q, [Ipv4Addr::new(192, 0, 2, 20)])?;
        r.metadata.authentic_data = query.metadata.authentic_data
            || query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        r.to_vec().ok()
    });
    let s = serve(
        &ns,
        &dir,
        &state(),
        &["--as", "a", "--upstream", &up.addr.to_string()],
    );
    let d = s.dig(&["+noadflag", "secure.example"]);
    assert_eq!(d.data("A"), ["192.0.2.20"]);
    assert!(!d.has_flag("ad"), "AD without AD or DO: {:?}", d.flags);
    let d = s.dig(&["+adflag", "secure.example"]);
    assert!(d.has_flag("ad"), "AD lost by the cache: {:?}", d.flags);
    assert_eq!(
        up.queries().len(),
        1,
        "the second answer came from the cache"
    );
}

const TSIG_KEY: &str = "sdnet-test";
const TSIG_SECRET: &str = "c2RuZXQtdGVzdC1zZWNyZXQta2V5LWZvci10c2lnIQ==";
const TSIG_ZONE: &str = "$TTL 300
@ IN SOA ns.tsig.example. hostmaster.tsig.example. 1 3600 600 86400 300
@ IN NS ns
ns IN A 192.0.2.53
www IN A 192.0.2.80
web2 IN A 192.0.2.81
";

/// TSIG-signed queries are forwarded as sent and their signed replies relayed as received,
/// never answered from nor put into the cache: dig verifies every signature, and unsigned
/// queries never get a stale TSIG record.
#[test]
fn tsig_signed_queries_bypass_the_cache() {
    let ns = Ns::new("dnsk");
    let dir = TempDir::new("dnsk");
    let named = Named::start(
        &ns,
        dir.path(),
        5354,
        "tsig.example",
        TSIG_ZONE,
        (TSIG_KEY, TSIG_SECRET),
    );
    let s = serve(
        &ns,
        &dir,
        &state(),
        &["--as", "a", "--upstream", &named.addr],
    );
    let key = format!("hmac-sha256:{TSIG_KEY}:{TSIG_SECRET}");
    let signed_ok = |d: &Dig| {
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert!(
            d.raw.contains("TSIG PSEUDOSECTION"),
            "unsigned reply:\n{}",
            d.raw
        );
        for bad in ["Couldn't verify", "verify failure", "expected a TSIG"] {
            assert!(!d.raw.contains(bad), "{bad}:\n{}", d.raw);
        }
    };
    // Cached from an unsigned query; a signed query must not get that copy.
    let d = s.dig(&["www.tsig.example"]);
    assert_eq!(d.data("A"), ["192.0.2.80"]);
    assert!(!d.raw.contains("TSIG PSEUDOSECTION"));
    for transport in ["+notcp", "+tcp"] {
        let d = s.dig(&[transport, "-y", &key, "www.tsig.example"]);
        signed_ok(&d);
        assert_eq!(d.data("A"), ["192.0.2.80"]);
    }
    // Signed first: its reply is not kept for an unsigned query (no stale TSIG record).
    let d = s.dig(&["-y", &key, "web2.tsig.example"]);
    signed_ok(&d);
    let d = s.dig(&["web2.tsig.example"]);
    assert_eq!(d.data("A"), ["192.0.2.81"]);
    assert!(!d.raw.contains("TSIG"), "stale TSIG record:\n{}", d.raw);
    // named saw every signed query, and both web2 queries.
    assert_eq!(named.queries_for("www.tsig.example"), 3);
    assert_eq!(named.queries_for("web2.tsig.example"), 2);
}
