//! OTLP log requests as borrowed values: what normalization reads.
//!
//! Strings and bytes borrow from whatever holds the request: prost's decoded
//! types (HTTP/JSON, captures) through `from_prost`, or the received protobuf
//! bytes themselves through [`crate::wire`], which skips prost's allocation of
//! every string and attribute. Normalization has one path over these types, so
//! both decoders give the same events by construction of everything after them.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};

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

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogsRef<'a> {
    pub resources: Vec<ResourceLogsRef<'a>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResourceLogsRef<'a> {
    pub attributes: Vec<KvRef<'a>>,
    pub scopes: Vec<ScopeLogsRef<'a>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScopeLogsRef<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub records: Vec<LogRecordRef<'a>>,
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

impl<'a> LogsRef<'a> {
    /// Borrows a prost-decoded request.
    pub fn from_prost(req: &'a ExportLogsServiceRequest) -> Self {
        LogsRef {
            resources: req
                .resource_logs
                .iter()
                .map(|rl| ResourceLogsRef {
                    attributes: rl
                        .resource
                        .as_ref()
                        .map(|r| kvs(&r.attributes))
                        .unwrap_or_default(),
                    scopes: rl
                        .scope_logs
                        .iter()
                        .map(|sl| ScopeLogsRef {
                            name: sl.scope.as_ref().map_or("", |s| s.name.as_str()),
                            version: sl.scope.as_ref().map_or("", |s| s.version.as_str()),
                            records: sl
                                .log_records
                                .iter()
                                .map(|r| LogRecordRef {
                                    time_unix_nano: r.time_unix_nano,
                                    observed_time_unix_nano: r.observed_time_unix_nano,
                                    severity_number: r.severity_number,
                                    severity_text: &r.severity_text,
                                    body: any(r.body.as_ref()),
                                    attributes: kvs(&r.attributes),
                                    trace_id: &r.trace_id,
                                    span_id: &r.span_id,
                                    event_name: &r.event_name,
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Number of log records.
    pub fn records(&self) -> usize {
        self.resources
            .iter()
            .flat_map(|r| &r.scopes)
            .map(|s| s.records.len())
            .sum()
    }
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
