//! OTLP log and trace requests as borrowed values: what normalization reads.
//!
//! Strings and bytes borrow from whatever holds the request: prost's decoded
//! types (HTTP/JSON, captures) through `from_prost`, or the received protobuf
//! bytes themselves through [`crate::wire`], which skips prost's allocation of
//! every string and attribute. Normalization has one path over these types, so
//! both decoders give the same events by construction of everything after them.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// An attribute value. `None` in [`KvRef::value`] stands for both an absent
/// value and an `AnyValue` with no variant set, which OTLP treats alike.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyRef<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    Array(Vec<Option<AnyRef<'a>>>),
    Kvlist(Vec<KvRef<'a>>),
    /// Only profiles use string-table indexes; kept as the number.
    Strindex(i32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct KvRef<'a> {
    pub key: &'a str,
    pub value: Option<AnyRef<'a>>,
}

/// A request: records (log records or spans) under their resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRef<'a, R> {
    pub resources: Vec<ResourceRef<'a, R>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRef<'a, R> {
    pub attributes: Vec<KvRef<'a>>,
    pub scopes: Vec<ScopeRef<'a, R>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScopeRef<'a, R> {
    pub name: &'a str,
    pub version: &'a str,
    pub records: Vec<R>,
}

pub type LogsRef<'a> = RequestRef<'a, LogRecordRef<'a>>;
pub type TracesRef<'a> = RequestRef<'a, SpanRef<'a>>;

impl<R> RequestRef<'_, R> {
    /// Number of records.
    pub fn records(&self) -> usize {
        self.resources
            .iter()
            .flat_map(|r| &r.scopes)
            .map(|s| s.records.len())
            .sum()
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogRecordRef<'a> {
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
    pub severity_number: i32,
    pub severity_text: &'a str,
    pub body: Option<AnyRef<'a>>,
    pub attributes: Vec<KvRef<'a>>,
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub event_name: &'a str,
}

/// A span, with what normalization reads of it (not its events and links).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpanRef<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub name: &'a str,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Vec<KvRef<'a>>,
    /// The status code and message; 0 and "" when the span has no status.
    pub status_code: i32,
    pub status_message: &'a str,
}

impl<'a> LogsRef<'a> {
    /// Borrows a prost-decoded request.
    pub fn from_prost(req: &'a ExportLogsServiceRequest) -> Self {
        borrow(
            &req.resource_logs,
            |rl| (rl.resource.as_ref(), &rl.scope_logs),
            |sl| (sl.scope.as_ref(), &sl.log_records),
            |r| LogRecordRef {
                time_unix_nano: r.time_unix_nano,
                observed_time_unix_nano: r.observed_time_unix_nano,
                severity_number: r.severity_number,
                severity_text: &r.severity_text,
                body: any(r.body.as_ref()),
                attributes: kvs(&r.attributes),
                trace_id: &r.trace_id,
                span_id: &r.span_id,
                event_name: &r.event_name,
            },
        )
    }
}

impl<'a> TracesRef<'a> {
    /// Borrows a prost-decoded request.
    pub fn from_prost(req: &'a ExportTraceServiceRequest) -> Self {
        borrow(
            &req.resource_spans,
            |rs| (rs.resource.as_ref(), &rs.scope_spans),
            |ss| (ss.scope.as_ref(), &ss.spans),
            |sp| SpanRef {
                trace_id: &sp.trace_id,
                span_id: &sp.span_id,
                parent_span_id: &sp.parent_span_id,
                name: &sp.name,
                kind: sp.kind,
                start_time_unix_nano: sp.start_time_unix_nano,
                end_time_unix_nano: sp.end_time_unix_nano,
                attributes: kvs(&sp.attributes),
                status_code: sp.status.as_ref().map_or(0, |s| s.code),
                status_message: sp.status.as_ref().map_or("", |s| s.message.as_str()),
            },
        )
    }
}

/// The resource and scope levels that logs and traces share, borrowed.
fn borrow<'a, RP: 'a, SP: 'a, P: 'a, R>(
    resources: &'a [RP],
    resource_parts: impl Fn(&'a RP) -> (Option<&'a Resource>, &'a Vec<SP>),
    scope_parts: impl Fn(&'a SP) -> (Option<&'a InstrumentationScope>, &'a Vec<P>),
    record: impl Fn(&'a P) -> R,
) -> RequestRef<'a, R> {
    RequestRef {
        resources: resources
            .iter()
            .map(|rp| {
                let (res, scopes) = resource_parts(rp);
                ResourceRef {
                    attributes: resource(res),
                    scopes: scopes
                        .iter()
                        .map(|sp| {
                            let (sc, records) = scope_parts(sp);
                            let (name, version) = scope(sc);
                            ScopeRef {
                                name,
                                version,
                                records: records.iter().map(&record).collect(),
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// Borrows a prost resource's attributes (none without a resource).
pub fn resource(resource: Option<&Resource>) -> Vec<KvRef<'_>> {
    resource.map(|r| kvs(&r.attributes)).unwrap_or_default()
}

/// A prost scope's name and version ("" without a scope).
pub fn scope(scope: Option<&InstrumentationScope>) -> (&str, &str) {
    scope.map_or(("", ""), |s| (s.name.as_str(), s.version.as_str()))
}

/// Borrows prost attributes.
pub fn kvs(list: &[KeyValue]) -> Vec<KvRef<'_>> {
    list.iter()
        .map(|kv| KvRef {
            key: &kv.key,
            value: any(kv.value.as_ref()),
        })
        .collect()
}

/// Borrows a prost value.
pub fn any(value: Option<&AnyValue>) -> Option<AnyRef<'_>> {
    use any_value::Value as V;
    Some(match value?.value.as_ref()? {
        V::StringValue(s) => AnyRef::Str(s),
        V::BoolValue(b) => AnyRef::Bool(*b),
        V::IntValue(i) => AnyRef::Int(*i),
        V::DoubleValue(d) => AnyRef::Double(*d),
        V::BytesValue(b) => AnyRef::Bytes(b),
        V::StringValueStrindex(i) => AnyRef::Strindex(*i),
        V::ArrayValue(a) => AnyRef::Array(a.values.iter().map(|v| any(Some(v))).collect()),
        V::KvlistValue(l) => AnyRef::Kvlist(kvs(&l.values)),
    })
}
