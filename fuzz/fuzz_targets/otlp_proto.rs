//! OTLP/protobuf decode + normalization: the input is a request body as the
//! gRPC and HTTP receivers get it, decoded as each signal in turn (as a sender
//! could post any bytes to any of /v1/logs, /v1/traces, /v1/metrics) and
//! normalized with the default mapping pack.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use vigil_fuzz::{default_normalizer, normalize, Request};

fuzz_target!(|data: &[u8]| {
    let n = default_normalizer();
    if let Ok(r) = ExportLogsServiceRequest::decode(data) {
        normalize(n, &Request::Logs(r));
    }
    if let Ok(r) = ExportTraceServiceRequest::decode(data) {
        normalize(n, &Request::Traces(r));
    }
    if let Ok(r) = ExportMetricsServiceRequest::decode(data) {
        normalize(n, &Request::Metrics(r));
    }
});
