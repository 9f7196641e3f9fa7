//! Capture files (`vigil replay --otlp FILE`): the input is a whole capture
//! file, read with `CaptureReader` (header, record framing, protobuf bodies)
//! through a scratch file private to this process; every record read is
//! normalized with the default mapping pack.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vigil_fuzz::{default_normalizer, normalize, Request};
use vigil_ingest::capture::CaptureReader;
use vigil_ingest::Payload;

fuzz_target!(|data: &[u8]| {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| vigil_fuzz::scratch_file("capture.otlp"));
    if std::fs::write(path, data).is_err() {
        return;
    }
    let Ok(reader) = CaptureReader::open(path) else {
        return;
    };
    let n = default_normalizer();
    for item in reader.take(256) {
        let Ok(c) = item else { break };
        let req = match c.payload {
            Payload::Logs(r) => Request::Logs(r),
            Payload::LogsJson(body) => match vigil_fuzz::from_json(&body) {
                Ok(r) => Request::Logs(r),
                Err(_) => continue,
            },
            Payload::TracesJson(body) => match vigil_fuzz::from_json(&body) {
                Ok(r) => Request::Traces(r),
                Err(_) => continue,
            },
            Payload::LogsBytes(_) | Payload::TracesBytes(_) => {
                unreachable!("capture files are read back as prost requests")
            }
            Payload::Traces(r) => Request::Traces(r),
            Payload::Metrics(r) => Request::Metrics(r),
        };
        normalize(n, &req);
    }
});
