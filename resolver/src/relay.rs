//! Upstream answers on their way to clients (the forwarding path; local answers never come
//! here).
//!
//! Every reply from an upstream server is decoded with hickory-proto and checked before any of
//! it is cached or relayed: our ID, QR, opcode QUERY, exactly our question (up to case), every
//! record well formed, at most one OPT and only in the additional section, nothing after a
//! signature. What is kept is an [`Answer`]: the records re-encoded by hickory-proto (so
//! compression pointers only point backwards, and any prefix of the records is a valid message),
//! without the upstream's OPT or signature, with where each record ends and where its TTL sits.
//!
//! Each client gets the answer rendered for it ([`Answer::render`]): its ID, its question (its
//! case), its RD and CD, AD only if the upstream set it and the client asked (AD or DO, RFC
//! 6840 §5.7–5.8), TTLs aged by the time spent in the cache, our own OPT record if the client
//! sent one (hop-by-hop options such as COOKIE, TCP keepalive and padding are never relayed;
//! NSID is not either: it names the upstream, not the server the client asked; Extended DNS
//! Errors describe the answer and are kept), and as many whole records as fit the client's size
//! (TC set when answer or authority records were left out; additional records may be dropped
//! silently, RFC 2181 §9).

use hickory_proto::op::{Header, MessageType, OpCode, Query as HQuery};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{Name, RData, Record, RecordData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_proto::{ProtoError, serialize::binary::DecodeError};

use crate::wire::{
    HEADER_LEN, OPT_RR_LEN, OUR_EDNS_PAYLOAD, Query, RCODE_NOERROR, RCODE_NXDOMAIN, TYPE_OPT, flag,
};

/// Extended DNS Error option code (RFC 8914).
const OPTION_EDE: u16 = 15;
/// Extended DNS Errors kept per answer, in bytes (a few short ones; more is noise).
const MAX_EDE: usize = 128;
/// Type ANY.
const TYPE_ANY: u16 = 255;

/// Why an upstream reply was refused.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("undecodable reply: {0}")]
    Decode(#[from] DecodeError),
    #[error("not a reply to our query (ID {id:#06x}, QR or opcode)")]
    NotOurs { id: u16 },
    #[error("the reply answers another question")]
    Question,
    #[error("OPT record outside the additional section, or more than one")]
    Opt,
    #[error("signature record misplaced (not last in the additional section)")]
    Signature,
    #[error("cannot re-encode the reply: {0}")]
    Encode(#[from] ProtoError),
}

/// Where one kept record ends and where its TTL sits, as offsets into the answer's bytes (the
/// same offsets in every rendering: header and question have the same length).
#[derive(Clone, Copy, Debug)]
struct Span {
    end: u16,
    ttl_at: u16,
}

/// An upstream's answer, checked and re-encoded, ready to be rendered for any client asking
/// the same question (see the module doc).
#[derive(Debug)]
pub struct Answer {
    /// A 12-byte placeholder header, the question as the upstream sent it, then the kept
    /// records in section order.
    wire: Box<[u8]>,
    /// Length of the question in `wire`.
    qlen: u16,
    records: Box<[Span]>,
    /// Kept records per section (answer, authority, additional).
    counts: [u16; 3],
    /// AA, TC, RA and AD as the upstream set them (TC also when we could not keep everything).
    flags: u16,
    /// The whole (extended) rcode.
    rcode: u16,
    /// Extended DNS Error options as they go into an OPT's RDATA (code, length, data).
    ede: Box<[u8]>,
    /// The reply carried a TSIG or SIG(0) record (dropped here): never cached.
    signed: bool,
    /// TTL for a cache (RFC 2308 for negative answers); None if the reply must not be cached.
    ttl: Option<u32>,
}

/// The query we send upstream for an unsigned client query: the client's question, RD and CD,
/// AD set to ask for the upstream's verdict (RFC 6840 §5.7: the answer is cached for every client,
/// and rendered with AD only for those who asked), and, if the client used EDNS, an OPT of our own
/// (our payload size, the client's DO, no options: nothing of the client's hop-by-hop state is
/// passed on). The cache key (question, EDNS, DO, CD) is therefore all the upstream sees.
pub fn upstream_query(q: &Query<'_>, id: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + q.question.len() + OPT_RR_LEN);
    let flags = (q.flags & (flag::RD | flag::CD)) | flag::AD;
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, q.edns.is_some() as u8]);
    m.extend_from_slice(q.question);
    if q.edns.is_some() {
        let ttl: u32 = if q.dnssec_ok() { 0x8000 } else { 0 };
        m.push(0);
        m.extend_from_slice(&TYPE_OPT.to_be_bytes());
        m.extend_from_slice(&OUR_EDNS_PAYLOAD.to_be_bytes());
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&[0, 0]);
    }
    m
}

/// DNSSEC records a server must not add for a client that did not set DO (RFC 4035 §3.2.1),
/// unless the question asked for that type.
fn dnssec_only(t: RecordType, qtype: u16) -> bool {
    matches!(t, RecordType::RRSIG | RecordType::NSEC | RecordType::NSEC3)
        && qtype != u16::from(t)
        && qtype != TYPE_ANY
}

/// Writes one record like hickory-proto's `Record::emit` does, returning the offset of its TTL.
/// An owner spelled exactly like the question (`qname`, written at offset 12) is written as a
/// pointer to it here: hickory compresses only the first 120 names of a message (a bound on
/// its search), so past them every record of a big RRset spelled its owner out, and a 32 KB
/// answer of 2,000 A records grew past 64 KB and was cut, TC even over TCP.
fn emit_record(enc: &mut BinEncoder<'_>, r: &Record, qname: &Name) -> Result<usize, ProtoError> {
    if r.name.is_fqdn() == qname.is_fqdn() && r.name.iter().eq(qname.iter()) {
        enc.emit_u16(0xC000 | HEADER_LEN as u16)?;
    } else {
        r.name.emit(enc)?;
    }
    enc.emit_u16(u16::from(r.record_type()))?;
    r.dns_class.emit(enc)?;
    let ttl_at = enc.offset();
    enc.emit_u32(r.ttl)?;
    let place = enc.place::<u16>()?;
    // Zero-length RDATA (legal for some types) decodes as an "update" placeholder: nothing to write.
    if !r.data.is_update() {
        r.data.emit(enc)?;
    }
    let len = enc.len_since_place(&place);
    place.replace(enc, u16::try_from(len).unwrap_or(u16::MAX))?;
    Ok(ttl_at)
}

impl Answer {
    /// Decodes and checks `resp` as the reply to our query `id` for the client query `q`.
    pub fn decode(resp: &[u8], id: u16, q: &Query<'_>) -> Result<Answer, RelayError> {
        let mut d = BinDecoder::new(resp);
        let header = Header::read(&mut d)?;
        let m = header.metadata;
        if m.id != id || m.message_type != MessageType::Response || m.op_code != OpCode::Query {
            return Err(RelayError::NotOurs { id: m.id });
        }
        if header.counts.queries != 1 {
            return Err(RelayError::Question);
        }
        let question = HQuery::read(&mut d)?;
        let ours = HQuery::read(&mut BinDecoder::new(q.question))?;
        // hickory's Name equality ignores ASCII case.
        if question.name() != ours.name()
            || question.query_type() != ours.query_type()
            || question.query_class() != ours.query_class()
        {
            return Err(RelayError::Question);
        }

        let mut wire = Vec::with_capacity(resp.len());
        let mut enc = BinEncoder::new(&mut wire);
        enc.emit_vec(&[0; HEADER_LEN])?;
        question.emit(&mut enc)?;
        let qlen = enc.offset() - HEADER_LEN;
        let mut a = Answer {
            wire: Box::default(),
            qlen: qlen as u16,
            records: Box::default(),
            counts: [0; 3],
            flags: 0,
            rcode: (resp[3] & 0xF) as u16,
            ede: Box::default(),
            signed: false,
            ttl: None,
        };
        let mut records = Vec::new();
        let mut ede = Vec::new();
        let mut truncated = m.truncation;
        let mut full = false;
        let mut seen_opt = false;
        let mut min_answer_ttl: Option<u32> = None;
        let mut negative_ttl: Option<u32> = None;
        let sections = [
            header.counts.answers,
            header.counts.authorities,
            header.counts.additionals,
        ];
        for (section, &n) in sections.iter().enumerate() {
            for _ in 0..n {
                let r = Record::read(&mut d)?;
                if a.signed {
                    return Err(RelayError::Signature);
                }
                let rtype = r.record_type();
                match rtype {
                    RecordType::OPT => {
                        if section != 2 || seen_opt {
                            return Err(RelayError::Opt);
                        }
                        seen_opt = true;
                        // Extended rcode: the OPT's TTL holds its upper 8 bits.
                        a.rcode |= ((r.ttl >> 24) as u16) << 4;
                        if let RData::OPT(opt) = &r.data {
                            for (_, option) in &opt.options {
                                if let EdnsOption::Unknown(OPTION_EDE, data) = option
                                    && ede.len() + 4 + data.len() <= MAX_EDE
                                {
                                    ede.extend_from_slice(&OPTION_EDE.to_be_bytes());
                                    ede.extend_from_slice(&(data.len() as u16).to_be_bytes());
                                    ede.extend_from_slice(data);
                                }
                            }
                        }
                        continue;
                    }
                    RecordType::TSIG if section != 2 => return Err(RelayError::Signature),
                    RecordType::TSIG | RecordType::SIG if section == 2 => {
                        a.signed = true;
                        continue;
                    }
                    t if !q.dnssec_ok() && dnssec_only(t, q.qtype) => continue,
                    _ => {}
                }
                if section == 0 {
                    min_answer_ttl = Some(min_answer_ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                } else if section == 1
                    && negative_ttl.is_none()
                    && let RData::SOA(soa) = &r.data
                {
                    negative_ttl = Some(r.ttl.min(soa.minimum));
                }
                if full {
                    continue; // still decoded, to check the rest of the reply
                }
                let start = enc.offset();
                match emit_record(&mut enc, &r, question.name()) {
                    Ok(ttl_at) => {
                        let end = enc.offset();
                        records.push(Span {
                            end: end as u16,
                            ttl_at: ttl_at as u16,
                        });
                        a.counts[section] += 1;
                    }
                    Err(_) => {
                        // Past 64 KiB re-encoded (the upstream compressed harder than we do):
                        // keep what fits, as a truncated answer.
                        enc.set_offset(start);
                        enc.trim();
                        full = true;
                        truncated |= section < 2;
                    }
                }
            }
        }
        drop(enc);
        let mut flags = 0;
        for (on, bit) in [
            (m.authoritative, flag::AA),
            (truncated, flag::TC),
            (m.recursion_available, flag::RA),
            (m.authentic_data, flag::AD),
        ] {
            if on {
                flags |= bit;
            }
        }
        a.flags = flags;
        let rcode = a.rcode as u8;
        a.ttl = match (a.rcode > 0xF, rcode, min_answer_ttl) {
            _ if truncated || a.signed => None,
            (false, RCODE_NOERROR, Some(t)) => Some(t),
            (false, RCODE_NOERROR, None) => negative_ttl,
            // NXDOMAIN, maybe after a CNAME chain: no longer than any record in it.
            (false, RCODE_NXDOMAIN, t) => negative_ttl.map(|n| t.map_or(n, |t| t.min(n))),
            _ => None,
        };
        a.wire = wire.into();
        a.records = records.into();
        a.ede = ede.into();
        Ok(a)
    }

    /// The whole rcode (extended bits included).
    pub fn rcode(&self) -> u16 {
        self.rcode
    }

    /// The upstream said TC (or we could not keep every answer record).
    pub fn truncated(&self) -> bool {
        self.flags & flag::TC != 0
    }

    /// The reply was signed (TSIG or SIG(0)).
    pub fn signed(&self) -> bool {
        self.signed
    }

    /// Bytes this answer holds (its own size and what it points to), for the cache's bound.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Answer>()
            + self.wire.len()
            + self.records.len() * std::mem::size_of::<Span>()
            + self.ede.len()
    }

    /// How long this answer may be cached, before any cap; None if it must not be.
    pub fn cache_ttl(&self) -> Option<u32> {
        self.ttl
    }

    /// Writes the answer for client query `q` into `out`: `age` seconds taken off every TTL,
    /// at most `limit` bytes (see the module doc).
    pub fn render(&self, q: &Query<'_>, age: u32, limit: usize, out: &mut Vec<u8>) {
        out.clear();
        let body = HEADER_LEN + self.qlen as usize;
        let ad = self.flags & flag::AD != 0 && (q.flags & flag::AD != 0 || q.dnssec_ok());
        let mut flags = flag::QR
            | (self.flags & (flag::AA | flag::TC | flag::RA))
            | (q.flags & (flag::RD | flag::CD))
            | (self.rcode & 0xF);
        if ad {
            flags |= flag::AD;
        }
        out.extend_from_slice(&q.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        // Records may point into the question: the client's has the same length (same name up
        // to case), but never trust that blindly.
        match self.wire.get(HEADER_LEN..body) {
            Some(theirs) if theirs.len() != q.question.len() => out.extend_from_slice(theirs),
            _ => out.extend_from_slice(q.question),
        }
        let ede: &[u8] = if limit >= body + OPT_RR_LEN + self.ede.len() {
            &self.ede
        } else {
            &[]
        };
        let room = match q.edns {
            Some(_) => limit.saturating_sub(OPT_RR_LEN + ede.len()),
            None => limit,
        };
        // Whole records, in order, as long as they fit: a prefix is always a valid message.
        let mut kept = self.records.len();
        if self.wire.len() > room {
            kept = self
                .records
                .iter()
                .take_while(|s| s.end as usize <= room)
                .count();
        }
        let end = match kept {
            0 => body,
            n => self.records[n - 1].end as usize,
        };
        out.extend_from_slice(self.wire.get(body..end).unwrap_or(&[]));
        if age > 0 {
            for s in &self.records[..kept] {
                let at = s.ttl_at as usize;
                if let Some(ttl) = out.get_mut(at..at + 4) {
                    let aged =
                        u32::from_be_bytes([ttl[0], ttl[1], ttl[2], ttl[3]]).saturating_sub(age);
                    ttl.copy_from_slice(&aged.to_be_bytes());
                }
            }
        }
        let mut counts = [0u16; 3];
        let mut left = kept;
        for (c, &n) in counts.iter_mut().zip(&self.counts) {
            *c = n.min(left as u16);
            left -= *c as usize;
        }
        // Answer or authority records left out: TC. Additional ones only: no (RFC 2181 §9).
        if counts[0] < self.counts[0] || counts[1] < self.counts[1] {
            out[2] |= (flag::TC >> 8) as u8;
        }
        let mut ar = counts[2];
        if let Some(e) = q.edns {
            let ttl: u32 =
                (((self.rcode >> 4) as u32) << 24) | if e.dnssec_ok { 0x8000 } else { 0 };
            out.push(0);
            out.extend_from_slice(&TYPE_OPT.to_be_bytes());
            out.extend_from_slice(&OUR_EDNS_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(ede.len() as u16).to_be_bytes());
            out.extend_from_slice(ede);
            ar += 1;
        }
        out[6..8].copy_from_slice(&counts[0].to_be_bytes());
        out[8..10].copy_from_slice(&counts[1].to_be_bytes());
        out[10..12].copy_from_slice(&ar.to_be_bytes());
    }
}

#[cfg(test)]
mod tests;
