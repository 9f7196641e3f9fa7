//! Helpers shared by vigil's fuzz targets: the default normalizer, the OTLP
//! JSON decoding the HTTP receiver does, and a few fixed requests of real
//! shapes to run compiled mappings over.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use vigil_ingest::{MappingSet, Normalizer};

pub const TENANT: &str = "fuzz";
/// A fixed receive time (2026-03-10T14:00:00Z), so runs are reproducible.
pub const OBSERVED_NS: i64 = 1_773_151_200_000_000_000;

/// The normalizer with the embedded default mapping pack, built once.
pub fn default_normalizer() -> &'static Normalizer {
    static N: OnceLock<Normalizer> = OnceLock::new();
    N.get_or_init(|| {
        Normalizer::new(Arc::new(
            MappingSet::load(&[]).expect("default mappings load"),
        ))
    })
}

/// The HTTP receiver's reference decoding of an OTLP/JSON body.
pub use vigil_ingest::json_decode as from_json;

/// The reference's request (`reference`: prost's or serde's decoding of the
/// input), after checking that a fast reader's reading (`fast`) is the same
/// request (`view` renders the reference's the reader's way, as Debug text so
/// NaN doubles compare equal) or that the reader declined.
pub fn reference_reading<F: std::fmt::Debug, P, E: std::fmt::Display>(
    fast: Option<F>,
    reference: Result<P, E>,
    view: impl Fn(&P) -> String,
) -> Option<P> {
    match reference {
        Ok(r) => {
            if let Some(fast) = fast {
                assert_eq!(format!("{fast:?}"), view(&r));
            }
            Some(r)
        }
        Err(e) => {
            assert!(
                fast.is_none(),
                "the fast reader read what the reference refuses: {e}"
            );
            None
        }
    }
}

/// A request of any signal, as a receiver would hand it to normalization.
pub enum Request {
    Logs(ExportLogsServiceRequest),
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

/// Normalizes `req` and touches every event, so nothing is optimized away.
pub fn normalize(n: &Normalizer, req: &Request) -> usize {
    let out = match req {
        Request::Logs(r) => n.logs(r, TENANT, OBSERVED_NS),
        Request::Traces(r) => n.traces(r, TENANT, OBSERVED_NS),
        Request::Metrics(r) => n.metrics(r, TENANT, OBSERVED_NS),
    };
    out.events
        .iter()
        .map(|e| e.event_id.len() + e.attrs.len())
        .sum::<usize>()
        + out.rejected as usize
}

const SAMPLE_LOGS: &str = include_str!("samples/logs.json");
const SAMPLE_TRACES: &str = include_str!("samples/traces.json");
const SAMPLE_METRICS: &str = include_str!("samples/metrics.json");

/// Requests of each source vigil knows (Claude Code logs and metrics, MCP
/// gateway and GenAI gateway spans, endpoint logs), decoded once.
pub fn samples() -> &'static [Request] {
    static S: OnceLock<Vec<Request>> = OnceLock::new();
    S.get_or_init(|| {
        vec![
            Request::Logs(from_json(SAMPLE_LOGS.as_bytes()).expect("sample logs")),
            Request::Traces(from_json(SAMPLE_TRACES.as_bytes()).expect("sample traces")),
            Request::Metrics(from_json(SAMPLE_METRICS.as_bytes()).expect("sample metrics")),
        ]
    })
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// A Claude Code `tool_result` log record whose `tool_parameters` is `params`.
pub fn tool_result(tool_name: &str, params: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "claude-code")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: OBSERVED_NS as u64,
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(
                            "claude_code.tool_result".into(),
                        )),
                    }),
                    attributes: vec![
                        kv("event.name", "tool_result"),
                        kv("session.id", "sess-fuzz"),
                        kv("user.email", "fuzz@example.com"),
                        kv("tool_name", tool_name),
                        kv("decision", "accept"),
                        kv("success", "true"),
                        kv("tool_parameters", params),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A file path private to this process, for APIs that read files.
pub fn scratch_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vigil-fuzz-{}-{name}", std::process::id()))
}
