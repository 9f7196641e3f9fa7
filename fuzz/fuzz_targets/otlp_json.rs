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
use vigil_fuzz::{default_normalizer, from_json, normalize, Request};
use vigil_ingest::json::{self, Bump};
use vigil_ingest::otlp::{LogsRef, TracesRef};

fuzz_target!(|data: &[u8]| {
    let n = default_normalizer();
    let arena = Bump::new();
    let fast = json::decode_logs(data, &arena);
    match from_json::<ExportLogsServiceRequest>(data) {
        Ok(r) => {
            if let Some(fast) = fast {
                assert_eq!(format!("{fast:?}"), format!("{:?}", LogsRef::from_prost(&r)));
            }
            normalize(n, &Request::Logs(r));
        }
        Err(e) => assert!(fast.is_none(), "read what the reference refuses: {e}"),
    }
    let fast = json::decode_traces(data, &arena);
    match from_json::<ExportTraceServiceRequest>(data) {
        Ok(r) => {
            if let Some(fast) = fast {
                assert_eq!(format!("{fast:?}"), format!("{:?}", TracesRef::from_prost(&r)));
            }
            normalize(n, &Request::Traces(r));
        }
        Err(e) => assert!(fast.is_none(), "read what the reference refuses: {e}"),
    }
    if let Ok(r) = from_json::<ExportMetricsServiceRequest>(data) {
        normalize(n, &Request::Metrics(r));
    }
});
