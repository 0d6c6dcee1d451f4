//! DNS wire format for the hot path: parse only what an answer needs (header, the one
//! question, the OPT record) and write responses straight into a buffer. hickory-proto is the
//! reference decoder: tests decode every response with it.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 12;
pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_SIG: u16 = 24;
pub const TYPE_TSIG: u16 = 250;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

/// Payload size we advertise in our OPT records (RFC 9715's safe size).
pub const OUR_EDNS_PAYLOAD: u16 = 1232;
/// Largest UDP response we send, whatever the client advertises.
pub const MAX_UDP_RESPONSE: usize = 4096;
/// Classic UDP limit without EDNS.
pub const CLASSIC_UDP_LIMIT: usize = 512;
pub(crate) const OPT_RR_LEN: usize = 11;

/// The longest presentation name we handle (255 octets on the wire).
pub const MAX_NAME: usize = 255;

/// Header flag bits (second and third header bytes as one u16).
pub mod flag {
    pub const QR: u16 = 0x8000;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const RA: u16 = 0x0080;
    pub const AD: u16 = 0x0020;
    pub const CD: u16 = 0x0010;
}

/// Lower-cased, dot-joined form of a query name, kept on the stack: the lookup key.
#[derive(Clone)]
pub struct NameKey {
    buf: [u8; MAX_NAME],
    len: u8,
    labels: u8,
    /// A label holds a '.' or a byte outside printable ASCII: such a name can never be local.
    odd: bool,
}

impl NameKey {
    pub fn as_str(&self) -> &str {
        // Only printable ASCII is stored unescaped; anything else sets `odd` and is replaced
        // by '?', so the buffer is always valid UTF-8.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
    pub fn labels(&self) -> u8 {
        self.labels
    }
    /// True if the name can be a local name at all.
    pub fn plain(&self) -> bool {
        !self.odd
    }
    pub fn from_str_lossy(s: &str) -> NameKey {
        let mut k = NameKey {
            buf: [0; MAX_NAME],
            len: 0,
            labels: 0,
            odd: false,
        };
        let s = s.trim_end_matches('.');
        for (i, b) in s.bytes().take(MAX_NAME).enumerate() {
            k.buf[i] = b.to_ascii_lowercase();
            k.len += 1;
        }
        k.labels = if s.is_empty() {
            0
        } else {
            s.split('.').count() as u8
        };
        k
    }
}

impl std::fmt::Debug for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A parsed query: borrowed from the packet it came in.
#[derive(Clone, Debug)]
pub struct Query<'a> {
    pub id: u16,
    pub flags: u16,
    /// The question section exactly as sent (name + type + class), echoed verbatim so the
    /// client sees its own case.
    pub question: &'a [u8],
    pub key: NameKey,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
    /// Carries a TSIG or SIG(0) record: never answered from the cache, forwarded as is.
    pub signed: bool,
}

impl Query<'_> {
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xF) as u8
    }
    pub fn rd(&self) -> bool {
        self.flags & flag::RD != 0
    }
    pub fn cd(&self) -> bool {
        self.flags & flag::CD != 0
    }
    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }
    /// Largest UDP response this client accepts (bounded by ours).
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => (e.payload as usize).clamp(CLASSIC_UDP_LIMIT, MAX_UDP_RESPONSE),
            None => CLASSIC_UDP_LIMIT,
        }
    }
}

/// Why a packet cannot be answered normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not worth a reply: shorter than a header, or a response (QR=1).
    Drop,
    /// Answer with this rcode and no question (FORMERR, NOTIMP).
    Rcode(u8),
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses a query packet. Only standard queries (opcode 0) with one question are answered;
/// anything unusual gets FORMERR or NOTIMP, and responses or runts are dropped.
pub fn parse_query(msg: &[u8]) -> Result<Query<'_>, Reject> {
    if msg.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let flags = be16(msg, 2).ok_or(Reject::Drop)?;
    if flags & flag::QR != 0 {
        return Err(Reject::Drop);
    }
    let opcode = ((flags >> 11) & 0xF) as u8;
    if opcode != 0 {
        return Err(Reject::Rcode(RCODE_NOTIMP));
    }
    let formerr = Reject::Rcode(RCODE_FORMERR);
    let qd = be16(msg, 4).ok_or(formerr)?;
    let an = be16(msg, 6).ok_or(formerr)?;
    let ns = be16(msg, 8).ok_or(formerr)?;
    let ar = be16(msg, 10).ok_or(formerr)?;
    if qd != 1 {
        return Err(formerr);
    }
    let mut key = NameKey {
        buf: [0; MAX_NAME],
        len: 0,
        labels: 0,
        odd: false,
    };
    let mut pos = HEADER_LEN;
    let mut wire_len = 0usize;
    loop {
        let len = *msg.get(pos).ok_or(formerr)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xC0 != 0 {
            // Compression pointers cannot point anywhere useful from the question.
            return Err(formerr);
        }
        wire_len += len + 1;
        if wire_len + 1 > MAX_NAME {
            return Err(formerr);
        }
        let label = msg.get(pos..pos + len).ok_or(formerr)?;
        if key.labels > 0 {
            key.buf[key.len as usize] = b'.';
            key.len += 1;
        }
        for &b in label {
            let c = if b == b'.' || !(0x21..0x7f).contains(&b) {
                key.odd = true;
                b'?'
            } else {
                b.to_ascii_lowercase()
            };
            key.buf[key.len as usize] = c;
            key.len += 1;
        }
        key.labels += 1;
        pos += len;
    }
    let qtype = be16(msg, pos).ok_or(formerr)?;
    let qclass = be16(msg, pos + 2).ok_or(formerr)?;
    pos += 4;
    let question = &msg[HEADER_LEN..pos];
    // Skip answer and authority records (unusual in a query, but legal), then look for OPT.
    for _ in 0..(an as usize + ns as usize) {
        pos = skip_rr(msg, pos).ok_or(formerr)?.end;
    }
    let mut edns = None;
    let mut signed = false;
    for _ in 0..ar {
        let rr = skip_rr(msg, pos).ok_or(formerr)?;
        signed |= rr.rtype == TYPE_TSIG || rr.rtype == TYPE_SIG;
        if rr.rtype == TYPE_OPT {
            if edns.is_some() || rr.name_start + 1 != rr.name_end || msg[rr.name_start] != 0 {
                return Err(formerr); // RFC 6891: one OPT, owned by the root
            }
            let ttl = rr.ttl;
            edns = Some(Edns {
                payload: rr.class,
                version: ((ttl >> 16) & 0xFF) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
            });
        }
        pos = rr.end;
    }
    Ok(Query {
        id: be16(msg, 0).ok_or(formerr)?,
        flags,
        question,
        key,
        qtype,
        qclass,
        edns,
        signed,
    })
}

/// Where one resource record sits in a message.
#[derive(Clone, Copy, Debug)]
pub struct RrSpan {
    pub name_start: usize,
    pub name_end: usize,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    /// Offset of the TTL field.
    pub ttl_at: usize,
    pub rdata_start: usize,
    pub end: usize,
}

/// Skips a (possibly compressed) name; returns the offset after it.
pub fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    let mut total = 0usize;
    loop {
        let len = *msg.get(pos)? as usize;
        match len & 0xC0 {
            0x00 => {
                pos += 1;
                if len == 0 {
                    return Some(pos);
                }
                total += len + 1;
                if total > MAX_NAME {
                    return None;
                }
                pos += len;
                if pos > msg.len() {
                    return None;
                }
            }
            0xC0 => {
                msg.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
}

/// Walks one resource record starting at `pos`.
pub fn skip_rr(msg: &[u8], pos: usize) -> Option<RrSpan> {
    let name_end = skip_name(msg, pos)?;
    let rtype = be16(msg, name_end)?;
    let class = be16(msg, name_end + 2)?;
    let ttl_at = name_end + 4;
    let ttl = u32::from_be_bytes(msg.get(ttl_at..ttl_at + 4)?.try_into().ok()?);
    let rdlen = be16(msg, name_end + 8)? as usize;
    let rdata_start = name_end + 10;
    let end = rdata_start + rdlen;
    if end > msg.len() {
        return None;
    }
    Some(RrSpan {
        name_start: pos,
        name_end,
        rtype,
        class,
        ttl,
        ttl_at,
        rdata_start,
        end,
    })
}

/// Writes a response into a caller-owned buffer. The question is copied from the query, so
/// names in answers point at offset 12; records that do not fit the size limit set TC.
pub struct Response<'b> {
    out: &'b mut Vec<u8>,
    limit: usize,
    edns: Option<Edns>,
    counts: [u16; 3],
    section: usize,
    truncated: bool,
}

/// Pointer to the question name (always at offset 12).
const QNAME_PTR: [u8; 2] = [0xC0, 0x0C];

impl<'b> Response<'b> {
    /// Starts a response to `q`. `limit` is the largest message allowed (UDP: the client's;
    /// TCP: 65535). RD and CD are echoed, opcode is 0, QR is set.
    pub fn new(out: &'b mut Vec<u8>, q: &Query<'_>, rcode: u8, flags: u16, limit: usize) -> Self {
        out.clear();
        let f = flag::QR | (q.flags & (flag::RD | flag::CD)) | flags | (rcode as u16 & 0xF);
        out.extend_from_slice(&q.id.to_be_bytes());
        out.extend_from_slice(&f.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(q.question);
        Response {
            out,
            limit,
            edns: q.edns,
            counts: [0; 3],
            section: 0,
            truncated: false,
        }
    }

    fn room(&self) -> usize {
        let reserve = if self.edns.is_some() { OPT_RR_LEN } else { 0 };
        self.limit.saturating_sub(reserve)
    }

    /// Moves on to the authority (1) or additional (2) section.
    pub fn section(&mut self, s: usize) {
        self.section = self.section.max(s.min(2));
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Appends one record unless it would break the limit. In the answer section that sets
    /// TC; records past the answer section are simply left out (RFC 2181 §9).
    fn push(&mut self, owner: &[u8], rtype: u16, ttl: u32, rdata: &[&[u8]]) -> bool {
        if self.truncated {
            return false;
        }
        let rdlen: usize = rdata.iter().map(|p| p.len()).sum();
        let need = owner.len() + 10 + rdlen;
        if self.out.len() + need > self.room() {
            if self.section == 0 {
                self.truncated = true;
            }
            return false;
        }
        self.out.extend_from_slice(owner);
        self.out.extend_from_slice(&rtype.to_be_bytes());
        self.out.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.out.extend_from_slice(&ttl.to_be_bytes());
        self.out.extend_from_slice(&(rdlen as u16).to_be_bytes());
        for p in rdata {
            self.out.extend_from_slice(p);
        }
        self.counts[self.section] += 1;
        true
    }

    pub fn a(&mut self, ttl: u32, ip: Ipv4Addr) -> bool {
        self.push(&QNAME_PTR, TYPE_A, ttl, &[&ip.octets()])
    }

    pub fn aaaa(&mut self, ttl: u32, ip: Ipv6Addr) -> bool {
        self.push(&QNAME_PTR, TYPE_AAAA, ttl, &[&ip.octets()])
    }

    /// PTR answer; `target` is a wire-format name.
    pub fn ptr(&mut self, ttl: u32, target: &[u8]) -> bool {
        self.push(&QNAME_PTR, TYPE_PTR, ttl, &[target])
    }

    /// SRV answer; returns the offset of the target name (for additional records to point
    /// at), or None if it did not fit.
    pub fn srv(
        &mut self,
        ttl: u32,
        priority: u16,
        weight: u16,
        port: u16,
        target: &[u8],
    ) -> Option<u16> {
        let at = self.out.len() + 2 + 10 + 6;
        let fixed = [
            priority.to_be_bytes(),
            weight.to_be_bytes(),
            port.to_be_bytes(),
        ]
        .concat();
        if self.push(&QNAME_PTR, TYPE_SRV, ttl, &[&fixed, target]) && at < 0x3FFF {
            Some(at as u16)
        } else {
            None
        }
    }

    /// An address record owned by the name at `name_at` (additional section glue).
    pub fn glue_a(&mut self, name_at: u16, ttl: u32, ip: Ipv4Addr) -> bool {
        let ptr = (0xC000 | name_at).to_be_bytes();
        self.push(&ptr, TYPE_A, ttl, &[&ip.octets()])
    }

    pub fn glue_aaaa(&mut self, name_at: u16, ttl: u32, ip: Ipv6Addr) -> bool {
        let ptr = (0xC000 | name_at).to_be_bytes();
        self.push(&ptr, TYPE_AAAA, ttl, &[&ip.octets()])
    }

    /// A synthetic SOA for negative answers (RFC 2308 takes the negative TTL from it). `owner_is_qname`
    /// names the question as the zone apex (NODATA for a local name); otherwise the root.
    pub fn soa(&mut self, owner_is_qname: bool, serial: u32, negative_ttl: u32) -> bool {
        const MNAME: &[u8] = b"\x02ns\x05sdnet\x00";
        const RNAME: &[u8] = b"\x0ahostmaster\x05sdnet\x00";
        let owner: &[u8] = if owner_is_qname { &QNAME_PTR } else { &[0] };
        let mut nums = [0u8; 20];
        for (i, v) in [serial, 3600, 600, 86400, negative_ttl].iter().enumerate() {
            nums[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
        }
        self.push(owner, TYPE_SOA, negative_ttl, &[MNAME, RNAME, &nums])
    }

    /// Finishes the message: OPT (if the query had EDNS), counts, TC. Returns its length.
    pub fn finish(self) -> usize {
        self.finish_with_ext_rcode(0)
    }

    /// Like `finish`, with the upper 8 bits of an extended rcode (BADVERS = 1).
    pub fn finish_with_ext_rcode(self, ext_rcode: u8) -> usize {
        let mut ar = self.counts[2];
        if let Some(e) = self.edns {
            // Version 0 is all we speak; DO is echoed (RFC 3225).
            let ttl: u32 = ((ext_rcode as u32) << 24) | if e.dnssec_ok { 0x8000 } else { 0 };
            self.out.push(0);
            self.out.extend_from_slice(&TYPE_OPT.to_be_bytes());
            self.out.extend_from_slice(&OUR_EDNS_PAYLOAD.to_be_bytes());
            self.out.extend_from_slice(&ttl.to_be_bytes());
            self.out.extend_from_slice(&[0, 0]);
            ar += 1;
        }
        self.out[6..8].copy_from_slice(&self.counts[0].to_be_bytes());
        self.out[8..10].copy_from_slice(&self.counts[1].to_be_bytes());
        self.out[10..12].copy_from_slice(&ar.to_be_bytes());
        if self.truncated {
            self.out[2] |= (flag::TC >> 8) as u8;
        }
        self.out.len()
    }
}

/// Writes a header-only error reply (FORMERR, NOTIMP) to a packet that could not be parsed as a
/// query; the ID and opcode are echoed when present. FORMERR echoes RD and CD; NOTIMP does not
/// (an opcode we do not implement gives those bits no meaning: BIND clears them too).
/// Returns None if nothing should be sent.
pub fn error_reply(msg: &[u8], rcode: u8, out: &mut Vec<u8>) -> Option<usize> {
    if msg.len() < 4 {
        return None;
    }
    out.clear();
    out.extend_from_slice(&msg[0..2]);
    let f = u16::from_be_bytes([msg[2], msg[3]]);
    let echoed = if rcode == RCODE_NOTIMP {
        0x7800
    } else {
        0x7800 | flag::RD | flag::CD
    };
    let f = flag::QR | (f & echoed) | rcode as u16;
    out.extend_from_slice(&f.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    Some(out.len())
}

/// Encodes a dotted name (no trailing dot needed) into wire format. Labels longer than 63
/// bytes or names over 255 bytes are refused.
pub fn encode_name(name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len() + 2);
    let name = name.trim_end_matches('.');
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

/// Parses the IP address out of a reverse name key (`4.3.2.1.in-addr.arpa`,
/// nibbles `.ip6.arpa`), as produced by `NameKey` (lower case).
pub fn reverse_ip(key: &str) -> Option<std::net::IpAddr> {
    if let Some(rest) = key.strip_suffix(".in-addr.arpa") {
        let mut o = [0u8; 4];
        let mut n = 0;
        for part in rest.split('.') {
            if n == 4
                || part.is_empty()
                || part.len() > 3
                || (part.len() > 1 && part.starts_with('0'))
            {
                return None;
            }
            o[3 - n] = part.parse().ok()?;
            n += 1;
        }
        return (n == 4).then(|| Ipv4Addr::from(o).into());
    }
    if let Some(rest) = key.strip_suffix(".ip6.arpa") {
        let b = rest.as_bytes();
        if b.len() != 63 {
            return None;
        }
        let mut v: u128 = 0;
        for (i, chunk) in b.chunks(2).enumerate() {
            if i < 31 && chunk.get(1) != Some(&b'.') {
                return None;
            }
            let d = (chunk[0] as char).to_digit(16)? as u128;
            v |= d << (4 * i);
        }
        return Some(Ipv6Addr::from(v).into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend(encode_name(name).unwrap());
        m.extend(qtype.to_be_bytes());
        m.extend(CLASS_IN.to_be_bytes());
        if let Some(p) = edns {
            m[11] = 1;
            m.extend([0, 0, 41]);
            m.extend(p.to_be_bytes());
            m.extend([0, 0, 0x80, 0, 0, 0]);
        }
        m
    }

    #[test]
    fn parses_query_and_edns() {
        let m = query("WeB.Net1", TYPE_A, Some(1232));
        let q = parse_query(&m).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.key.as_str(), "web.net1");
        assert_eq!(q.key.labels(), 2);
        assert!(q.key.plain());
        assert_eq!(q.qtype, TYPE_A);
        assert_eq!(
            q.edns,
            Some(Edns {
                payload: 1232,
                version: 0,
                dnssec_ok: true
            })
        );
        assert_eq!(q.udp_limit(), 1232);
        assert!(q.rd());
    }

    #[test]
    fn rejects() {
        assert_eq!(parse_query(&[0; 5]).unwrap_err(), Reject::Drop);
        let mut m = query("a", TYPE_A, None);
        m[2] |= 0x80;
        assert_eq!(parse_query(&m).unwrap_err(), Reject::Drop);
        let mut m = query("a", TYPE_A, None);
        m[2] |= 2 << 3; // opcode STATUS
        assert_eq!(parse_query(&m).unwrap_err(), Reject::Rcode(RCODE_NOTIMP));
        let mut m = query("a", TYPE_A, None);
        m[5] = 2;
        assert_eq!(parse_query(&m).unwrap_err(), Reject::Rcode(RCODE_FORMERR));
        let m = query("a", TYPE_A, None);
        assert_eq!(
            parse_query(&m[..m.len() - 1]).unwrap_err(),
            Reject::Rcode(RCODE_FORMERR)
        );
    }

    #[test]
    fn notimp_clears_rd_and_cd_formerr_echoes_them() {
        // Opcode 15 with RD and CD set (ISC genreport's `opcodeflg`).
        let mut m = query("a", TYPE_A, None);
        m[2] = (15 << 3) | 0x01; // opcode 15, RD
        m[3] = 0x10; // CD
        assert_eq!(parse_query(&m).unwrap_err(), Reject::Rcode(RCODE_NOTIMP));
        let mut out = Vec::new();
        assert_eq!(error_reply(&m, RCODE_NOTIMP, &mut out), Some(12));
        let f = u16::from_be_bytes([out[2], out[3]]);
        assert_eq!(f, flag::QR | (15 << 11) | RCODE_NOTIMP as u16, "{f:#06x}");
        assert_eq!(&out[0..2], &m[0..2]);
        let mut m = query("a", TYPE_A, None);
        m[3] = 0x10;
        error_reply(&m, RCODE_FORMERR, &mut out);
        let f = u16::from_be_bytes([out[2], out[3]]);
        assert_eq!(f, flag::QR | flag::RD | flag::CD | RCODE_FORMERR as u16);
    }

    #[test]
    fn odd_labels_are_never_plain() {
        let mut m = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend([3, b'a', b'.', b'b', 0, 0, 1, 0, 1]);
        let q = parse_query(&m).unwrap();
        assert!(!q.key.plain());
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_ip("3.0.20.172.in-addr.arpa"),
            Some("172.20.0.3".parse().unwrap())
        );
        assert_eq!(reverse_ip("0.20.172.in-addr.arpa"), None);
        assert_eq!(reverse_ip("03.0.20.172.in-addr.arpa"), None);
        let ip: Ipv6Addr = "fd00::1:2".parse().unwrap();
        let nibbles: Vec<String> = ip
            .octets()
            .iter()
            .rev()
            .flat_map(|b| [format!("{:x}", b & 0xF), format!("{:x}", b >> 4)])
            .collect();
        let key = format!("{}.ip6.arpa", nibbles.join("."));
        assert_eq!(reverse_ip(&key), Some(ip.into()));
    }

    #[test]
    fn truncates_at_limit() {
        let m = query("x", TYPE_A, None);
        let q = parse_query(&m).unwrap();
        let mut out = Vec::new();
        let mut r = Response::new(&mut out, &q, 0, flag::AA, 512);
        let mut n = 0;
        while r.a(0, Ipv4Addr::new(10, 0, 0, n)) {
            n += 1;
        }
        assert!(r.truncated());
        let len = r.finish();
        assert!(len <= 512);
        assert_eq!(out[2] & 0x02, 0x02);
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), n as u16);
    }
}
