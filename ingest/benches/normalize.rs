//! Ingest throughput on Claude-Code-shaped log records (13 attributes, about
//! 490 bytes each, 1,000 per request): prost decode alone (the floor), and
//! decode + normalization by the default mapping pack, and the same two with
//! the receivers' walk of the bytes (`wire`) instead of prost, in the same run.
//! `cargo bench -p vigil-ingest --bench normalize`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use vigil_ingest::{MappingSet, Normalizer};

const RECORDS: usize = 1000;

fn s(k: &str, v: String) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v)),
        }),
        ..Default::default()
    }
}

fn request() -> Vec<u8> {
    let records = (0..RECORDS)
        .map(|i| LogRecord {
            time_unix_nano: 1_773_154_800_000_000_000 + i as u64 * 1_000_000,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(
                    "claude_code.tool_result".into(),
                )),
            }),
            attributes: vec![
                s("event.name", "tool_result".into()),
                s("event.timestamp", "2026-03-10T15:00:00.000Z".into()),
                s("session.id", format!("sess-{:04}", i % 200)),
                s("user.email", format!("user{}@example.com", i % 50)),
                s(
                    "organization.id",
                    "5f0c1e9a-8d2b-4c1f-9a77-2b8e4d1c0a11".into(),
                ),
                s("user.account_uuid", format!("acc-{}", i % 50)),
                s("terminal.type", "iTerm.app".into()),
                s(
                    "tool_name",
                    if i % 3 == 0 {
                        "Bash".into()
                    } else {
                        "Read".into()
                    },
                ),
                s("success", "true".into()),
                s("duration_ms", "35".into()),
                s("decision_type", "accept".into()),
                s("decision_source", "config".into()),
                s(
                    "tool_parameters",
                    format!(
                        "{{\"file_path\": \"/Users/u{}/src/svc/mod{}.rs\"}}",
                        i % 50,
                        i
                    ),
                ),
            ],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", "claude-code".into()),
                    s("service.version", "2.1.230".into()),
                    s("os.type", "darwin".into()),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn bench(c: &mut Criterion) {
    let bytes = request();
    eprintln!(
        "request: {} bytes, {} bytes/record",
        bytes.len(),
        bytes.len() / RECORDS
    );
    let normalizer = Normalizer::new(Arc::new(MappingSet::load(&[]).expect("default pack")));
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("prost_decode_only", |b| {
        b.iter(|| ExportLogsServiceRequest::decode(bytes.as_slice()).expect("decodes"))
    });
    g.bench_function("decode_and_normalize", |b| {
        b.iter(|| {
            let req = ExportLogsServiceRequest::decode(bytes.as_slice()).expect("decodes");
            normalizer
                .logs(&req, "default", vigil_ingest::now_ns())
                .events
                .len()
        })
    });
    g.bench_function("wire_decode_only", |b| {
        b.iter(|| {
            vigil_ingest::wire::decode_logs(&bytes)
                .expect("decodes")
                .records()
        })
    });
    g.bench_function("wire_decode_and_normalize", |b| {
        b.iter(|| {
            let req = vigil_ingest::wire::decode_logs(&bytes).expect("decodes");
            normalizer
                .logs_ref(&req, "default", vigil_ingest::now_ns())
                .events
                .len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
