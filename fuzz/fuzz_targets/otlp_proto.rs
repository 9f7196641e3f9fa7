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
use vigil_fuzz::{default_normalizer, normalize, Request};

fuzz_target!(|data: &[u8]| {
    let n = default_normalizer();
    let fast = vigil_ingest::wire::decode_logs(data);
    match ExportLogsServiceRequest::decode(data) {
        Ok(r) => {
            if let Some(fast) = fast {
                let reference = vigil_ingest::otlp::LogsRef::from_prost(&r);
                // Debug text, so that NaN doubles compare equal.
                assert_eq!(format!("{fast:?}"), format!("{reference:?}"));
            }
            normalize(n, &Request::Logs(r));
        }
        Err(e) => assert!(fast.is_none(), "the walk accepted what prost refuses: {e}"),
    }
    let fast = vigil_ingest::wire::decode_traces(data);
    match ExportTraceServiceRequest::decode(data) {
        Ok(r) => {
            if let Some(fast) = fast {
                let reference = vigil_ingest::otlp::TracesRef::from_prost(&r);
                assert_eq!(format!("{fast:?}"), format!("{reference:?}"));
            }
            normalize(n, &Request::Traces(r));
        }
        Err(e) => assert!(fast.is_none(), "the walk accepted what prost refuses: {e}"),
    }
    if let Ok(r) = ExportMetricsServiceRequest::decode(data) {
        normalize(n, &Request::Metrics(r));
    }
});
