//! One zone of the host zone set as a hickory `ZoneHandler`: exact lookups in the built record
//! sets, NODATA for names that exist with other types (or only below them), NXDOMAIN for the
//! rest (the catalog puts the SOA in authority for both), and AXFR for allowed sources.

use std::sync::Arc;

use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::{
    LowerName, RData, Record, RecordSet, RecordType, TSigResponseContext,
};
use hickory_server::server::{Request, RequestInfo, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, AxfrRecords, LookupControlFlow, LookupError, LookupOptions,
    LookupRecords, MessageResponseBuilder, ZoneHandler, ZoneTransfer, ZoneType,
};
use ipnet::IpNet;
use tracing::{info, warn};

use super::zones::ZoneData;

pub struct Zone {
    pub data: ZoneData,
    /// Sources allowed to transfer the zone.
    pub allow: Arc<[IpNet]>,
}

/// What the server records of a reply that could not be sent.
fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// Records per message of a transfer: far below 64 KiB whatever the names.
const PER_MESSAGE: usize = 200;

impl Zone {
    fn allowed(&self, request: &Request) -> bool {
        let src = request.src().ip();
        let src = match src {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(Into::into).unwrap_or(src),
            v4 => v4,
        };
        let ok = self.allow.iter().any(|n| n.contains(&src));
        if !ok {
            info!(%src, zone = %self.data.origin, "zone transfer refused");
        }
        ok
    }

    /// AXFR over TCP as a stream of messages (the catalog's answer is one message, which
    /// cannot hold a zone past 64 KiB): the SOA, every record set, the SOA again.
    pub async fn transfer<R: ResponseHandler>(&self, request: &Request, mut rh: R) -> ResponseInfo {
        if !self.allowed(request) {
            let m = MessageResponseBuilder::new(&request.queries, None)
                .error_msg(&request.metadata, ResponseCode::Refused);
            return match rh.send_response(m).await {
                Ok(i) => i,
                Err(_) => failed(request),
            };
        }
        let sets = self.data.ordered();
        let body = sets
            .iter()
            .filter(|s| s.record_type() != RecordType::SOA)
            .flat_map(|s| s.records_without_rrsigs());
        let all: Vec<&Record> = self
            .data
            .soa
            .records_without_rrsigs()
            .chain(body)
            .chain(self.data.soa.records_without_rrsigs())
            .collect();
        let mut last = None;
        for chunk in all.chunks(PER_MESSAGE) {
            let mut meta = Metadata::response_from_request(&request.metadata);
            meta.authoritative = true;
            let m = MessageResponseBuilder::new(&request.queries, None).build(
                meta,
                chunk.iter().copied(),
                std::iter::empty(),
                std::iter::empty(),
                std::iter::empty(),
            );
            match rh.send_response(m).await {
                Ok(i) => last = Some(i),
                Err(e) => {
                    warn!(zone = %self.data.origin, "zone transfer: {e}");
                    return failed(request);
                }
            }
        }
        last.unwrap_or_else(|| failed(request))
    }

    fn find(
        &self,
        name: &LowerName,
        rtype: RecordType,
        opts: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        use LookupControlFlow::Continue;
        let d = &self.data;
        if rtype == RecordType::ANY {
            let Some(types) = d.types(name) else {
                return Continue(Err(self.missing(name)));
            };
            let sets: Vec<_> = types
                .iter()
                .filter_map(|t| d.sets.get(&(name.clone(), *t)).cloned())
                .collect();
            if sets.is_empty() {
                return Continue(Err(LookupError::NameExists));
            }
            return Continue(Ok(AuthLookup::answers(
                LookupRecords::many(opts, sets),
                None,
            )));
        }
        match d.sets.get(&(name.clone(), rtype)) {
            Some(set) => Continue(Ok(AuthLookup::answers(
                LookupRecords::new(opts, set.clone()),
                self.glue(set, opts),
            ))),
            None if d.exists(name) => Continue(Err(LookupError::NameExists)),
            None => Continue(Err(self.missing(name))),
        }
    }

    /// The addresses of SRV and NS targets in the zone, for the additional section.
    fn glue(&self, set: &RecordSet, opts: LookupOptions) -> Option<LookupRecords> {
        let mut targets: Vec<LowerName> = set
            .records_without_rrsigs()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(LowerName::new(&srv.target)),
                RData::NS(ns) => Some(LowerName::new(&ns.0)),
                _ => None,
            })
            .collect();
        targets.sort();
        targets.dedup();
        let sets: Vec<Arc<RecordSet>> = targets
            .into_iter()
            .flat_map(|t| [(t.clone(), RecordType::A), (t, RecordType::AAAA)])
            .filter_map(|k| self.data.sets.get(&k).cloned())
            .collect();
        (!sets.is_empty()).then(|| LookupRecords::many(opts, sets))
    }

    fn missing(&self, name: &LowerName) -> LookupError {
        if self.data.origin.zone_of(name) {
            LookupError::from(ResponseCode::NXDomain)
        } else {
            LookupError::from(ResponseCode::Refused)
        }
    }
}

#[async_trait::async_trait]
impl ZoneHandler for Zone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    /// Transfers are checked against `--host-dns-allow-transfer` in `zone_transfer`.
    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::AllowAll
    }

    fn origin(&self) -> &LowerName {
        &self.data.origin
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        _info: Option<&RequestInfo<'_>>,
        opts: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        if rtype == RecordType::AXFR {
            return LookupControlFlow::Break(Err(LookupError::from(ResponseCode::Refused)));
        }
        if rtype == RecordType::IXFR && *name == self.data.origin {
            // Over UDP: the current SOA alone, which tells the client to come over TCP
            // (RFC 1995 §2) unless it is up to date.
            return LookupControlFlow::Continue(Ok(AuthLookup::answers(
                LookupRecords::new(opts, self.data.soa.clone()),
                None,
            )));
        }
        self.find(name, rtype, opts)
    }

    async fn search(
        &self,
        request: &Request,
        opts: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        let info = match request.request_info() {
            Ok(i) => i,
            Err(e) => return (LookupControlFlow::Break(Err(e)), None),
        };
        let q = info.query;
        (
            self.lookup(q.name(), q.query_type(), None, opts).await,
            None,
        )
    }

    async fn nsec_records(
        &self,
        _name: &LowerName,
        _opts: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        // The zone is not signed.
        LookupControlFlow::Continue(Ok(AuthLookup::default()))
    }

    async fn zone_transfer(
        &self,
        request: &Request,
        opts: LookupOptions,
        _now: u64,
    ) -> Option<(
        Result<ZoneTransfer, LookupError>,
        Option<TSigResponseContext>,
    )> {
        if !self.allowed(request) {
            return Some((Err(LookupError::from(ResponseCode::Refused)), None));
        }
        let soa = || LookupRecords::new(opts, self.data.soa.clone());
        Some((
            Ok(ZoneTransfer {
                start_soa: soa(),
                records: AxfrRecords::new(false, self.data.ordered()),
                end_soa: soa(),
            }),
            None,
        ))
    }
}
