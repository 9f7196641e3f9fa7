//! OTLP/JSON decode + normalization: the input is a request body as the HTTP
//! receiver gets it with `Content-Type: application/json`, decoded the way
//! `ingest/src/http.rs` does (serde_json into the opentelemetry-proto types)
//! as each signal in turn, and normalized with the default mapping pack.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use vigil_fuzz::{default_normalizer, from_json, normalize, Request};

fuzz_target!(|data: &[u8]| {
    let n = default_normalizer();
    if let Ok(r) = from_json::<ExportLogsServiceRequest>(data) {
        normalize(n, &Request::Logs(r));
    }
    if let Ok(r) = from_json::<ExportTraceServiceRequest>(data) {
        normalize(n, &Request::Traces(r));
    }
    if let Ok(r) = from_json::<ExportMetricsServiceRequest>(data) {
        normalize(n, &Request::Metrics(r));
    }
});
