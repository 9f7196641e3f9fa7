//! OTLP/protobuf decode + normalization: the input is a request body as the
//! gRPC and HTTP receivers get it, decoded as each signal in turn (as a sender
//! could post any bytes to any of /v1/logs, /v1/traces, /v1/metrics) and
//! normalized with the default mapping pack. The receivers' own walk of log
//! and trace bytes (`vigil_ingest::wire`) must read what prost reads, or decline.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use vigil_fuzz::{default_normalizer, normalize, Request};
use vigil_ingest::otlp::{LogsRef, TracesRef};
use vigil_ingest::wire;

fuzz_target!(|data: &[u8]| {
    let n = default_normalizer();
    let logs = prost_reading(
        wire::decode_logs(data),
        data,
        |r: &ExportLogsServiceRequest| format!("{:?}", LogsRef::from_prost(r)),
    );
    if let Some(r) = logs {
        normalize(n, &Request::Logs(r));
    }
    let traces = prost_reading(
        wire::decode_traces(data),
        data,
        |r: &ExportTraceServiceRequest| format!("{:?}", TracesRef::from_prost(r)),
    );
    if let Some(r) = traces {
        normalize(n, &Request::Traces(r));
    }
    if let Ok(r) = ExportMetricsServiceRequest::decode(data) {
        normalize(n, &Request::Metrics(r));
    }
});

/// prost's request from `data`, after checking that the walk's reading
/// (`fast`) is the same request (`view` renders prost's the walk's way, as
/// Debug text so NaN doubles compare equal) or that the walk declined.
fn prost_reading<F: Debug, P: Message + Default>(
    fast: Option<F>,
    data: &[u8],
    view: impl Fn(&P) -> String,
) -> Option<P> {
    match P::decode(data) {
        Ok(r) => {
            if let Some(fast) = fast {
                assert_eq!(format!("{fast:?}"), view(&r));
            }
            Some(r)
        }
        Err(e) => {
            assert!(fast.is_none(), "the walk accepted what prost refuses: {e}");
            None
        }
    }
}
