//! OTLP capture files: every export request vigil accepted, as it came
//! (protobuf, or OTLP/JSON bodies as JSON), so an incident can be replayed
//! exactly through normalization and rules
//! (`vigil serve --capture DIR`, `vigil replay --otlp FILE...`).
//!
//! A capture file is `capture-<start ns>-<seq>.otlp`: a header line
//! `VIGILCAP1\n`, then records of
//! `[signal: u8 (1 logs, 2 traces, 3 metrics; 4 logs, 5 traces in JSON)]
//! [tenant len: u16 LE][tenant][received ns: i64 LE][len: u32 LE]
//! [Export*ServiceRequest protobuf, or its OTLP/JSON body]`.
//! Files roll past a size; a file being written is named `.capture-*.tmp` and
//! renamed when rolled or closed, so a reader never sees half a file.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::Payload;

const MAGIC: &[u8; 10] = b"VIGILCAP1\n";
/// Largest request a capture record may hold (matches the largest body vigil accepts by default, with room).
const MAX_RECORD: u32 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("capture {path}: not a vigil capture file")]
    NotCapture { path: PathBuf },
    #[error("capture {path}: record {index} is corrupt: {message}")]
    Corrupt {
        path: PathBuf,
        index: u64,
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CaptureError + '_ {
    move |source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One captured export request.
#[derive(Debug)]
pub struct Captured {
    pub tenant: String,
    pub received_ns: i64,
    pub payload: Payload,
}

/// Appends accepted requests to rolling capture files.
pub struct CaptureWriter {
    dir: PathBuf,
    max_file_bytes: u64,
    current: Option<(PathBuf, PathBuf, BufWriter<File>, u64)>,
    seq: u64,
}

impl CaptureWriter {
    /// Opens `dir` (created if missing); leftover `.tmp` files of a crash are renamed into place.
    pub fn open(dir: &Path, max_file_bytes: u64) -> Result<Self, CaptureError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(done) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
                // A crash leaves whole records followed at worst by a torn one, which the reader stops at.
                fs::rename(&path, dir.join(done)).map_err(io_err(&path))?;
            }
        }
        Ok(CaptureWriter {
            dir: dir.to_path_buf(),
            max_file_bytes: max_file_bytes.max(1),
            current: None,
            seq: 0,
        })
    }

    /// Appends one request; flushed to the OS before returning.
    pub fn append(
        &mut self,
        tenant: &str,
        received_ns: i64,
        payload: &Payload,
    ) -> Result<(), CaptureError> {
        let (signal, body) = match payload {
            Payload::Logs(r) => (1u8, Cow::Owned(r.encode_to_vec())),
            Payload::LogsBytes(b) => (1u8, Cow::Borrowed(b.as_ref())),
            Payload::Traces(r) => (2u8, Cow::Owned(r.encode_to_vec())),
            Payload::TracesBytes(b) => (2u8, Cow::Borrowed(b.as_ref())),
            Payload::LogsJson(b) => (4u8, Cow::Borrowed(b.as_ref())),
            Payload::TracesJson(b) => (5u8, Cow::Borrowed(b.as_ref())),
            Payload::Metrics(r) => (3u8, Cow::Owned(r.encode_to_vec())),
        };
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.3 >= self.max_file_bytes)
        {
            self.roll()?;
        }
        if self.current.is_none() {
            let name = format!("capture-{received_ns:020}-{:06}.otlp", self.seq);
            self.seq += 1;
            let tmp = self.dir.join(format!(".{name}.tmp"));
            let file = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut w = BufWriter::new(file);
            w.write_all(MAGIC).map_err(io_err(&tmp))?;
            self.current = Some((tmp, self.dir.join(name), w, MAGIC.len() as u64));
        }
        let (tmp, _, w, size) = self.current.as_mut().expect("opened above");
        let tenant = tenant.as_bytes();
        let tenant = &tenant[..tenant.len().min(u16::MAX as usize)];
        let mut head = Vec::with_capacity(16 + tenant.len());
        head.push(signal);
        head.extend_from_slice(&(tenant.len() as u16).to_le_bytes());
        head.extend_from_slice(tenant);
        head.extend_from_slice(&received_ns.to_le_bytes());
        head.extend_from_slice(&(body.len() as u32).to_le_bytes());
        w.write_all(&head)
            .and_then(|()| w.write_all(&body))
            .and_then(|()| w.flush())
            .map_err(io_err(tmp))?;
        *size += (head.len() + body.len()) as u64;
        Ok(())
    }

    fn roll(&mut self) -> Result<(), CaptureError> {
        if let Some((tmp, dest, mut w, _)) = self.current.take() {
            w.flush().map_err(io_err(&tmp))?;
            w.get_ref().sync_all().map_err(io_err(&tmp))?;
            fs::rename(&tmp, &dest).map_err(io_err(&tmp))?;
        }
        Ok(())
    }

    /// Finishes the current file.
    pub fn close(mut self) -> Result<(), CaptureError> {
        self.roll()
    }
}

/// Capture files named by `paths` (files, or folders holding `capture-*.otlp`), in name order.
pub fn capture_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CaptureError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = fs::read_dir(p)
                .map_err(io_err(p))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("capture-") && n.ends_with(".otlp"))
                })
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Reads one capture file's records in order. A torn last record (a crash
/// while writing) ends the file quietly; corruption elsewhere is an error.
pub struct CaptureReader {
    path: PathBuf,
    r: BufReader<File>,
    index: u64,
}

impl CaptureReader {
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut r = BufReader::new(file);
        let mut magic = [0u8; 10];
        if r.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Err(CaptureError::NotCapture {
                path: path.to_path_buf(),
            });
        }
        Ok(CaptureReader {
            path: path.to_path_buf(),
            r,
            index: 0,
        })
    }

    fn corrupt(&self, message: impl Into<String>) -> CaptureError {
        CaptureError::Corrupt {
            path: self.path.clone(),
            index: self.index,
            message: message.into(),
        }
    }
}

impl Iterator for CaptureReader {
    type Item = Result<Captured, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut signal = [0u8; 1];
        match self.r.read(&mut signal) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(io_err(&self.path)(e))),
        }
        let mut read = |n: usize| -> Option<Vec<u8>> {
            let mut buf = vec![0u8; n];
            self.r.read_exact(&mut buf).ok().map(|()| buf)
        };
        // A short read here is a torn tail: the file ends.
        let tlen = u16::from_le_bytes(read(2)?.try_into().ok()?) as usize;
        let tenant = read(tlen)?;
        let received_ns = i64::from_le_bytes(read(8)?.try_into().ok()?);
        let len = u32::from_le_bytes(read(4)?.try_into().ok()?);
        if len > MAX_RECORD {
            return Some(Err(self.corrupt(format!("record of {len} bytes"))));
        }
        let body = read(len as usize)?;
        let payload = match signal[0] {
            1 => ExportLogsServiceRequest::decode(body.as_slice()).map(Payload::Logs),
            2 => ExportTraceServiceRequest::decode(body.as_slice()).map(Payload::Traces),
            3 => ExportMetricsServiceRequest::decode(body.as_slice()).map(Payload::Metrics),
            // JSON is read (and checked) when it is normalized again.
            4 => Ok(Payload::LogsJson(body.into())),
            5 => Ok(Payload::TracesJson(body.into())),
            other => return Some(Err(self.corrupt(format!("unknown signal {other}")))),
        };
        let item = match payload {
            Ok(payload) => Ok(Captured {
                tenant: String::from_utf8_lossy(&tenant).into_owned(),
                received_ns,
                payload,
            }),
            Err(e) => Err(self.corrupt(e.to_string())),
        };
        self.index += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    fn logs(n: u64) -> Payload {
        Payload::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: (0..n)
                        .map(|i| LogRecord {
                            time_unix_nano: i + 1,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }

    fn count(p: &Payload) -> usize {
        match p {
            Payload::Logs(r) => r.resource_logs[0].scope_logs[0].log_records.len(),
            _ => 0,
        }
    }

    #[test]
    fn json_requests_are_captured_as_they_came() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = CaptureWriter::open(dir.path(), 1 << 20).expect("open");
        let body: &[u8] = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"7","body":{"stringValue":"a \"quoted\" body"}}]}]}]}"#;
        let spans: &[u8] = br#"{"resourceSpans":[]}"#;
        w.append(
            "acme",
            1,
            &Payload::LogsJson(bytes::Bytes::from_static(body)),
        )
        .expect("append");
        w.append("acme", 2, &logs(2)).expect("append");
        w.append(
            "acme",
            3,
            &Payload::TracesJson(bytes::Bytes::from_static(spans)),
        )
        .expect("append");
        w.close().expect("close");
        let files = capture_files(&[dir.path().to_path_buf()]).expect("list");
        let got: Vec<Captured> = CaptureReader::open(&files[0])
            .expect("open")
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[0].payload, Payload::LogsJson(b) if b.as_ref() == body));
        assert_eq!(count(&got[1].payload), 2);
        assert!(matches!(&got[2].payload, Payload::TracesJson(b) if b.as_ref() == spans));
        assert_eq!((got[0].received_ns, got[2].tenant.as_str()), (1, "acme"));
    }

    #[test]
    fn round_trip_roll_and_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = CaptureWriter::open(dir.path(), 1).expect("open");
        for i in 0..5 {
            w.append("acme", 100 + i, &logs(i as u64 + 1))
                .expect("append");
        }
        // Not closed: the file in progress is hidden until a reopen puts it in place.
        drop(w);
        assert_eq!(
            capture_files(&[dir.path().to_path_buf()])
                .expect("list")
                .len(),
            4
        );
        let w = CaptureWriter::open(dir.path(), 1).expect("reopen");
        w.close().expect("close");
        let files = capture_files(&[dir.path().to_path_buf()]).expect("list");
        let mut got = Vec::new();
        for f in &files {
            for c in CaptureReader::open(f).expect("open") {
                let c = c.expect("record");
                assert_eq!(c.tenant, "acme");
                got.push((c.received_ns, count(&c.payload)));
            }
        }
        assert_eq!(got, vec![(100, 1), (101, 2), (102, 3), (103, 4), (104, 5)]);

        // A torn tail ends the file without an error.
        let last = files.last().expect("a file");
        let bytes = fs::read(last).expect("read");
        fs::write(last, &bytes[..bytes.len() - 3]).expect("truncate");
        let n = CaptureReader::open(last)
            .expect("open")
            .filter(|r| r.is_ok())
            .count();
        assert_eq!(n, 0, "the only record of the last file is torn");
        let other = dir.path().join("capture-x.otlp");
        fs::write(&other, b"garbage").expect("write");
        assert!(matches!(
            CaptureReader::open(&other),
            Err(CaptureError::NotCapture { .. })
        ));
    }
}
