//! OTLP/JSON decode + normalization: the input is a request body as the HTTP
//! receiver gets it with `Content-Type: application/json`, decoded as each
//! signal in turn and normalized with the default mapping pack. The
//! receivers' own JSON reader (`vigil_ingest::json`) must read what the
//! reference (serde_json into the opentelemetry-proto types) reads, or decline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use vigil_fuzz::{default_normalizer, from_json, normalize, reference_reading, Request};
use vigil_ingest::json::{self, Bump};
use vigil_ingest::otlp::{LogsRef, TracesRef};

fuzz_target!(|data: &[u8]| {
    let n = default_normalizer();
    let arena = Bump::new();
    let logs = reference_reading(
        json::decode_logs(data, &arena),
        from_json::<ExportLogsServiceRequest>(data),
        |r: &ExportLogsServiceRequest| format!("{:?}", LogsRef::from_prost(r)),
    );
    if let Some(r) = logs {
        normalize(n, &Request::Logs(r));
    }
    let traces = reference_reading(
        json::decode_traces(data, &arena),
        from_json::<ExportTraceServiceRequest>(data),
        |r: &ExportTraceServiceRequest| format!("{:?}", TracesRef::from_prost(r)),
    );
    if let Some(r) = traces {
        normalize(n, &Request::Traces(r));
    }
    if let Ok(r) = from_json::<ExportMetricsServiceRequest>(data) {
        normalize(n, &Request::Metrics(r));
    }
});
