//! Upstream replies built with hickory-proto (or by hand where they must be malformed), checked
//! and rendered; every rendering is decoded again with hickory-proto.

use std::net::Ipv4Addr;
use std::str::FromStr;

use hickory_proto::op::{Edns, Message, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsOption, NSIDPayload};
use hickory_proto::rr::rdata::{A, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::*;
use crate::wire::{RCODE_SERVFAIL, TYPE_A, encode_name, parse_query};

const ID: u16 = 0x4242;
const COOKIE: u16 = 10;
const KEEPALIVE: u16 = 11;
const PADDING: u16 = 12;

/// A client query: `flags` as in the header (RD = 0x0100), `edns`: (payload, DO).
fn query(name: &str, qtype: u16, flags: u16, edns: Option<(u16, bool)>) -> Vec<u8> {
    let mut m = vec![0xab, 0xcd];
    m.extend(flags.to_be_bytes());
    m.extend([0, 1, 0, 0, 0, 0, 0, edns.is_some() as u8]);
    m.extend(encode_name(name).unwrap());
    m.extend(qtype.to_be_bytes());
    m.extend([0, 1]);
    if let Some((payload, dnssec_ok)) = edns {
        m.extend([0, 0, 41]);
        m.extend(payload.to_be_bytes());
        m.extend([0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    m
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn a_record(owner: &str, ttl: u32, last: u8) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
    )
}

fn soa_record(owner: &str, ttl: u32, minimum: u32) -> Record {
    let soa = SOA::new(
        name("ns.example."),
        name("hostmaster.example."),
        1,
        3600,
        600,
        86400,
        minimum,
    );
    Record::from_rdata(name(owner), ttl, RData::SOA(soa))
}

/// An upstream reply to `qname` A with these answers (ID = `ID`).
fn reply(qname: &str, answers: Vec<Record>) -> Message {
    let mut m = Message::response(ID, OpCode::Query);
    m.metadata.recursion_available = true;
    m.add_query(HQuery::query(name(qname), RecordType::A));
    m.add_answers(answers);
    m
}

fn decode(resp: &[u8], q: &[u8]) -> Result<Answer, RelayError> {
    Answer::decode(resp, ID, &parse_query(q).unwrap())
}

fn render(a: &Answer, q: &[u8], age: u32, limit: usize) -> (Vec<u8>, Message) {
    let q = parse_query(q).unwrap();
    let mut out = Vec::new();
    a.render(&q, age, limit, &mut out);
    assert!(
        out.len() <= limit,
        "{} bytes over a limit of {limit}",
        out.len()
    );
    let m = Message::from_vec(&out).expect("rendering decodes");
    (out, m)
}

fn ips(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .map(|ip| ip.to_string())
        .collect()
}

#[test]
fn rejects_replies_that_are_not_ours() {
    let q = query("www.example", TYPE_A, 0x0100, None);
    let good = reply("www.example.", vec![a_record("www.example.", 60, 1)]);
    assert!(decode(&good.to_vec().unwrap(), &q).is_ok());

    let mut other_id = good.clone();
    other_id.metadata.id = ID + 1;
    let e = decode(&other_id.to_vec().unwrap(), &q).unwrap_err();
    assert!(matches!(e, RelayError::NotOurs { .. }), "{e}");

    let mut bytes = good.to_vec().unwrap();
    bytes[2] &= 0x7F; // QR=0: a query, not a reply
    assert!(matches!(
        decode(&bytes, &q),
        Err(RelayError::NotOurs { .. })
    ));

    let mut bytes = good.to_vec().unwrap();
    bytes[2] |= 2 << 3; // opcode STATUS
    assert!(matches!(
        decode(&bytes, &q),
        Err(RelayError::NotOurs { .. })
    ));

    let other_name = reply("evil.example.", vec![a_record("evil.example.", 60, 6)]);
    let e = decode(&other_name.to_vec().unwrap(), &q).unwrap_err();
    assert!(matches!(e, RelayError::Question), "{e}");

    let mut other_type = good.clone();
    other_type.queries[0].set_query_type(RecordType::AAAA);
    assert!(matches!(
        decode(&other_type.to_vec().unwrap(), &q),
        Err(RelayError::Question)
    ));

    let mut no_question = good.to_vec().unwrap();
    no_question[5] = 0;
    assert!(decode(&no_question, &q).is_err());

    // The question's case may differ: still ours.
    let upper = reply("WWW.Example.", vec![a_record("WWW.Example.", 60, 1)]);
    assert!(decode(&upper.to_vec().unwrap(), &q).is_ok());
}

#[test]
fn rejects_malformed_sections() {
    let q = query("www.example", TYPE_A, 0x0100, Some((1232, false)));
    let good = reply(
        "www.example.",
        vec![
            a_record("www.example.", 60, 1),
            a_record("www.example.", 60, 2),
        ],
    );
    let bytes = good.to_vec().unwrap();
    assert!(decode(&bytes, &q).is_ok());

    // ANCOUNT says 3, two records follow.
    let mut more = bytes.clone();
    more[7] = 3;
    assert!(matches!(decode(&more, &q), Err(RelayError::Decode(_))));
    // A record cut short.
    assert!(decode(&bytes[..bytes.len() - 2], &q).is_err());
    // RDLENGTH past the end.
    let mut long = bytes.clone();
    let n = long.len();
    long[n - 5] = 0x40;
    assert!(decode(&long, &q).is_err());
    // A compression pointer loop in an answer's owner name.
    let mut looped = bytes.clone();
    let first = HEADER_LEN + q.len() - HEADER_LEN - 11; // first answer, right after the question
    looped[first..first + 2].copy_from_slice(&[0xC0, first as u8]);
    assert!(decode(&looped, &q).is_err());

    // OPT in the answer section; two OPTs.
    let mut opt_in_answer = reply("www.example.", vec![]);
    let mut opt = Edns::new();
    opt.set_max_payload(1232);
    opt_in_answer.set_edns(opt.clone());
    let mut b = opt_in_answer.to_vec().unwrap();
    b[7] = 1; // the OPT (the only record) now counts as an answer
    b[11] = 0;
    assert!(decode(&b, &q).is_err());
    let mut two = reply("www.example.", vec![]);
    two.set_edns(opt);
    let mut b = two.to_vec().unwrap();
    let opt_rr = b[b.len() - 11..].to_vec();
    b.extend_from_slice(&opt_rr);
    b[11] = 2;
    assert!(decode(&b, &q).is_err());

    // A record after a TSIG record.
    let mut signed = tsig_signed(&good.to_vec().unwrap());
    assert!(decode(&signed, &q).is_ok());
    signed.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 9]);
    signed[11] += 1;
    assert!(matches!(decode(&signed, &q), Err(RelayError::Signature)));
}

/// `msg` with a (made-up) TSIG record appended.
fn tsig_signed(msg: &[u8]) -> Vec<u8> {
    let mut m = msg.to_vec();
    m.extend_from_slice(b"\x01k\x00");
    m.extend_from_slice(&250u16.to_be_bytes());
    m.extend_from_slice(&255u16.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    let mut rdata = b"\x0bhmac-sha256\x00".to_vec();
    rdata.extend_from_slice(&[0, 0, 0x60, 0, 0, 0]); // time signed
    rdata.extend_from_slice(&300u16.to_be_bytes()); // fudge
    rdata.extend_from_slice(&32u16.to_be_bytes());
    rdata.extend_from_slice(&[0x5a; 32]);
    rdata.extend_from_slice(&msg[0..2]); // original ID
    rdata.extend_from_slice(&[0, 0, 0, 0]); // error, other length
    m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(&rdata);
    let ar = u16::from_be_bytes([m[10], m[11]]) + 1;
    m[10..12].copy_from_slice(&ar.to_be_bytes());
    m
}

#[test]
fn signed_replies_are_never_cacheable_and_lose_their_signature() {
    let q = query("www.example", TYPE_A, 0x0100, None);
    let good = reply("www.example.", vec![a_record("www.example.", 60, 1)]);
    let a = decode(&tsig_signed(&good.to_vec().unwrap()), &q).unwrap();
    assert!(a.signed());
    assert_eq!(a.cache_ttl(), None);
    let (_, m) = render(&a, &q, 0, 512);
    assert!(m.signature().is_none() && m.additionals.is_empty());
    assert_eq!(ips(&m), ["192.0.2.1"]);
}

#[test]
fn truncation_keeps_whole_records_that_fit() {
    let answers: Vec<Record> = (1..=60).map(|i| a_record("big.example.", 300, i)).collect();
    let mut up = reply("big.example.", answers);
    up.add_additional(a_record("ns.example.", 300, 250));
    let bytes = up.to_vec().unwrap();
    // Plain DNS (musl, older Alpine): 512 bytes, TC, and still as many addresses as fit.
    let q = query("big.example", TYPE_A, 0x0100, None);
    let a = decode(&bytes, &q).unwrap();
    assert!(!a.truncated());
    let (out, m) = render(&a, &q, 0, 512);
    assert!(m.metadata.truncation, "TC set");
    let fit = (512 - out[..HEADER_LEN].len() - (q.len() - HEADER_LEN)) / 16;
    assert_eq!(m.answers.len(), fit, "every whole record that fits");
    assert_eq!(ips(&m)[..3], ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
    assert!(m.additionals.is_empty());
    // Its EDNS size (the OPT is reserved for).
    let q = query("big.example", TYPE_A, 0x0100, Some((700, false)));
    let a = decode(&bytes, &q).unwrap();
    let (out, m) = render(&a, &q, 0, 700);
    assert!(m.metadata.truncation && m.edns.is_some());
    assert!(
        out.len() > 700 - 16,
        "{} bytes: room for one more record",
        out.len()
    );
    // Everything fits: no TC, the additional record too.
    let (_, m) = render(&a, &q, 0, 4096);
    assert!(!m.metadata.truncation);
    assert_eq!((m.answers.len(), m.additionals.len()), (60, 1));
    // Only the additional record left out: no TC (RFC 2181 §9).
    let exact = HEADER_LEN + (q.len() - HEADER_LEN - 11) + 60 * 16 + 11;
    let (_, m) = render(&a, &q, 0, exact);
    assert!(!m.metadata.truncation);
    assert_eq!((m.answers.len(), m.additionals.len()), (60, 0));
}

/// A big RRset (2,000 A records, 32 KB as the upstream compressed it) stays 32 KB and whole
/// over TCP: hickory-proto compresses only a message's first 120 names, so it used to grow to
/// 38 bytes a record, past 64 KB, and reach TCP clients cut short with TC.
#[test]
fn big_rrsets_keep_their_owner_compressed() {
    let q = query("huge-1-0-1c58c7.f.example", TYPE_A, 0x0100, None);
    let mut up = q.clone();
    up[0..2].copy_from_slice(&ID.to_be_bytes());
    up[2..4].copy_from_slice(&[0x81, 0x80]);
    up[6..8].copy_from_slice(&2000u16.to_be_bytes());
    for i in 0..2000u16 {
        up.extend([0xC0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 198, 18]);
        up.extend(i.to_be_bytes());
    }
    let a = decode(&up, &q).unwrap();
    assert!(!a.truncated());
    let (out, m) = render(&a, &q, 0, 65535);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 2000);
    assert_eq!(out.len(), up.len(), "as compact as the upstream's");
    assert!(
        m.answers
            .iter()
            .all(|r| r.name == name("huge-1-0-1c58c7.f.example."))
    );
    assert_eq!(ips(&m)[1999], "198.18.7.207");
}

#[test]
fn truncation_keeps_compression_valid() {
    // A CNAME chain: later names point into earlier records; any prefix must still decode.
    let mut answers = vec![Record::from_rdata(
        name("www.example."),
        300,
        RData::CNAME(CNAME(name("edge.cdn.example."))),
    )];
    answers.extend((1..=40).map(|i| a_record("edge.cdn.example.", 300, i)));
    let bytes = reply("www.example.", answers).to_vec().unwrap();
    let q = query("www.example", TYPE_A, 0x0100, None);
    let a = decode(&bytes, &q).unwrap();
    for limit in [60, 100, 200, 300, 512] {
        let (_, m) = render(&a, &q, 0, limit);
        assert!(m.metadata.truncation);
        if let Some(first) = m.answers.first() {
            assert_eq!(first.record_type(), RecordType::CNAME);
        }
        for r in m.answers.iter().skip(1) {
            assert_eq!(r.name, name("edge.cdn.example."));
        }
    }
}

#[test]
fn opt_is_ours_not_the_upstreams() {
    let mut up = reply("www.example.", vec![a_record("www.example.", 60, 1)]);
    let mut e = Edns::new();
    e.set_max_payload(4096);
    let opts = e.options_mut();
    opts.insert(EdnsOption::Unknown(COOKIE, vec![7; 24]));
    opts.insert(EdnsOption::NSID(
        NSIDPayload::new(b"upstream-1".to_vec()).unwrap(),
    ));
    opts.insert(EdnsOption::Unknown(KEEPALIVE, vec![0, 100]));
    opts.insert(EdnsOption::Unknown(PADDING, vec![0; 40]));
    opts.insert(EdnsOption::Unknown(OPTION_EDE, vec![0, 18, b'x']));
    up.set_edns(e);
    let bytes = up.to_vec().unwrap();

    let q = query("www.example", TYPE_A, 0x0100, Some((1400, true)));
    let a = decode(&bytes, &q).unwrap();
    let (_, m) = render(&a, &q, 0, 1400);
    let edns = m.edns.expect("OPT for an EDNS client");
    assert_eq!(edns.max_payload(), OUR_EDNS_PAYLOAD);
    assert!(edns.flags().dnssec_ok, "DO echoed");
    let codes: Vec<u16> = edns
        .options()
        .options
        .iter()
        .map(|(c, _)| u16::from(*c))
        .collect();
    assert_eq!(
        codes,
        [OPTION_EDE],
        "only the Extended DNS Error is relayed"
    );
    // Without DO: not echoed; without EDNS: no OPT at all.
    let q = query("www.example", TYPE_A, 0x0100, Some((1232, false)));
    let (_, m) = render(&a, &q, 0, 1232);
    assert!(!m.edns.unwrap().flags().dnssec_ok);
    let q = query("www.example", TYPE_A, 0x0100, None);
    let (_, m) = render(&a, &q, 0, 512);
    assert!(m.edns.is_none());
    assert_eq!(ips(&m), ["192.0.2.1"]);
}

#[test]
fn extended_rcode_goes_into_our_opt() {
    let mut up = reply("www.example.", vec![]);
    up.metadata.response_code = ResponseCode::BADCOOKIE;
    up.set_edns(Edns::new());
    let bytes = up.to_vec().unwrap();
    let q = query("www.example", TYPE_A, 0x0100, Some((1232, false)));
    let a = decode(&bytes, &q).unwrap();
    assert_eq!(a.rcode(), 23);
    assert_eq!(a.cache_ttl(), None);
    let (_, m) = render(&a, &q, 0, 1232);
    assert_eq!(m.metadata.response_code, ResponseCode::BADCOOKIE);
}

#[test]
fn ad_only_for_clients_that_asked() {
    let mut up = reply("www.example.", vec![a_record("www.example.", 60, 1)]);
    up.metadata.authentic_data = true;
    let bytes = up.to_vec().unwrap();
    let plain = query("www.example", TYPE_A, 0x0100, None);
    let a = decode(&bytes, &plain).unwrap();
    let (_, m) = render(&a, &plain, 0, 512);
    assert!(
        !m.metadata.authentic_data,
        "no AD for a query without AD or DO"
    );
    let ad = query("www.example", TYPE_A, 0x0120, None);
    assert!(render(&a, &ad, 0, 512).1.metadata.authentic_data);
    let dnssec_ok = query("www.example", TYPE_A, 0x0100, Some((1232, true)));
    assert!(render(&a, &dnssec_ok, 0, 1232).1.metadata.authentic_data);
    // The upstream did not vouch for it: never AD.
    let bytes = reply("www.example.", vec![a_record("www.example.", 60, 1)])
        .to_vec()
        .unwrap();
    let a = decode(&bytes, &ad).unwrap();
    assert!(!render(&a, &ad, 0, 512).1.metadata.authentic_data);
}

#[test]
fn upstream_query_asks_for_ad_and_passes_nothing_hop_by_hop() {
    // A client query with CD, a COOKIE and a big EDNS size.
    let mut client = query("www.example", TYPE_A, 0x0110, None);
    client[11] = 1;
    client.extend([0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 12, 0, 10, 0, 8]);
    client.extend([1, 2, 3, 4, 5, 6, 7, 8]);
    let q = parse_query(&client).unwrap();
    let up = Message::from_vec(&upstream_query(&q, 0x7777)).unwrap();
    assert_eq!(up.metadata.id, 0x7777);
    assert!(up.metadata.authentic_data && up.metadata.checking_disabled);
    assert!(up.metadata.recursion_desired);
    assert_eq!(up.queries[0].name(), &name("www.example."));
    let edns = up.edns.unwrap();
    assert!(edns.flags().dnssec_ok);
    assert_eq!(edns.max_payload(), OUR_EDNS_PAYLOAD);
    assert!(
        edns.options().options.is_empty(),
        "client's COOKIE not passed on"
    );
    // No EDNS from the client: none upstream.
    let plain = query("www.example", TYPE_A, 0x0000, None);
    let up = Message::from_vec(&upstream_query(&parse_query(&plain).unwrap(), 1)).unwrap();
    assert!(up.edns.is_none() && !up.metadata.recursion_desired);
}

#[test]
fn dnssec_records_only_for_dnssec_ok() {
    let rrsig = Record::from_rdata(
        name("www.example."),
        60,
        RData::Unknown {
            code: RecordType::RRSIG,
            rdata: hickory_proto::rr::rdata::NULL::with(vec![0; 30]),
        },
    );
    let up = reply("www.example.", vec![a_record("www.example.", 60, 1), rrsig]);
    let bytes = up.to_vec().unwrap();
    let plain = query("www.example", TYPE_A, 0x0100, Some((1232, false)));
    let a = decode(&bytes, &plain).unwrap();
    assert_eq!(render(&a, &plain, 0, 1232).1.answers.len(), 1);
    let dnssec_ok = query("www.example", TYPE_A, 0x0100, Some((1232, true)));
    let a = decode(&bytes, &dnssec_ok).unwrap();
    assert_eq!(render(&a, &dnssec_ok, 0, 1232).1.answers.len(), 2);
}

#[test]
fn ttls_age_and_the_client_gets_its_own_id_case_and_flags() {
    let up = reply(
        "www.example.",
        vec![
            a_record("www.example.", 300, 1),
            a_record("www.example.", 60, 2),
        ],
    );
    let q = query("WwW.ExAmPle", TYPE_A, 0x0110, None);
    let a = decode(&up.to_vec().unwrap(), &q).unwrap();
    assert_eq!(a.cache_ttl(), Some(60));
    let (out, m) = render(&a, &q, 45, 512);
    assert_eq!(&out[0..2], &[0xab, 0xcd]);
    assert_eq!(&out[HEADER_LEN..q.len()], &q[HEADER_LEN..], "client's case");
    assert!(m.metadata.recursion_desired && m.metadata.checking_disabled);
    assert!(m.metadata.recursion_available);
    let ttls: Vec<u32> = m.answers.iter().map(|r| r.ttl).collect();
    assert_eq!(ttls, [255, 15]);
    let (_, m) = render(&a, &q, 100, 512);
    assert_eq!(m.answers[1].ttl, 0, "aged TTLs stop at 0");
}

#[test]
fn cache_ttls() {
    let q = query("www.example", TYPE_A, 0x0100, None);
    let ttl = |m: &Message| decode(&m.to_vec().unwrap(), &q).unwrap().cache_ttl();
    // NXDOMAIN and NODATA: min(SOA TTL, SOA minimum); without an SOA: not cacheable.
    let mut nx = reply("www.example.", vec![]);
    nx.metadata.response_code = ResponseCode::NXDomain;
    assert_eq!(ttl(&nx), None);
    nx.add_authority(soa_record("example.", 900, 30));
    assert_eq!(ttl(&nx), Some(30));
    let mut nodata = reply("www.example.", vec![]);
    nodata.add_authority(soa_record("example.", 20, 300));
    assert_eq!(ttl(&nodata), Some(20));
    // NXDOMAIN after a CNAME: no longer than the CNAME.
    let mut chain = reply(
        "www.example.",
        vec![Record::from_rdata(
            name("www.example."),
            10,
            RData::CNAME(CNAME(name("gone.example."))),
        )],
    );
    chain.metadata.response_code = ResponseCode::NXDomain;
    chain.add_authority(soa_record("example.", 900, 300));
    assert_eq!(ttl(&chain), Some(10));
    // Failures and truncated replies: never.
    let mut fail = reply("www.example.", vec![]);
    fail.metadata.response_code = ResponseCode::ServFail;
    fail.add_authority(soa_record("example.", 900, 300));
    assert_eq!(ttl(&fail), None);
    let a = decode(&fail.to_vec().unwrap(), &q).unwrap();
    assert_eq!(a.rcode(), RCODE_SERVFAIL as u16);
    let mut tc = reply("www.example.", vec![a_record("www.example.", 60, 1)]);
    tc.metadata.truncation = true;
    assert_eq!(ttl(&tc), None);
    let a = decode(&tc.to_vec().unwrap(), &q).unwrap();
    assert!(a.truncated());
    assert!(
        render(&a, &q, 0, 512).1.metadata.truncation,
        "upstream's TC kept"
    );
}
