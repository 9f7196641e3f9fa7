//! OTLP/protobuf decode + normalization: the input is a request body as the
//! gRPC and HTTP receivers get it, decoded as each signal in turn (as a sender
//! could post any bytes to any of /v1/logs, /v1/traces, /v1/metrics) and
//! normalized with the default mapping pack. The receivers' own walk of log
//! and trace bytes (`vigil_ingest::wire`) must read what prost reads, or decline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use vigil_fuzz::{default_normalizer, normalize, reference_reading, Request};
use vigil_ingest::otlp::{LogsRef, TracesRef};
use vigil_ingest::wire;

fuzz_target!(|data: &[u8]| {
    let n = default_normalizer();
    let logs = reference_reading(
        wire::decode_logs(data),
        ExportLogsServiceRequest::decode(data),
        |r: &ExportLogsServiceRequest| format!("{:?}", LogsRef::from_prost(r)),
    );
    if let Some(r) = logs {
        normalize(n, &Request::Logs(r));
    }
    let traces = reference_reading(
        wire::decode_traces(data),
        ExportTraceServiceRequest::decode(data),
        |r: &ExportTraceServiceRequest| format!("{:?}", TracesRef::from_prost(r)),
    );
    if let Some(r) = traces {
        normalize(n, &Request::Traces(r));
    }
    if let Ok(r) = ExportMetricsServiceRequest::decode(data) {
        normalize(n, &Request::Metrics(r));
    }
});
