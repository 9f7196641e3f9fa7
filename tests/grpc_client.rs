//! A tonic client built from opentelemetry-proto talks to a real `vigil serve`:
//! plain and gzip-compressed exports of logs, spans and metrics are accepted,
//! normalized, archived, and turned into the alert the default pack promises.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tonic::codec::CompressionEncoding;

const T0: u64 = 1_773_154_800_000_000_000; // 2026-03-10T15:00:00Z, a Tuesday

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

struct Server {
    child: Child,
    http: u16,
    grpc: u16,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let (grpc, http) = (free_port(), free_port());
        std::fs::write(dir.join("vigil.yaml"), "engine:\n  idle_timeout: 1s\n").expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["serve", "--config"])
            .arg(dir.join("vigil.yaml"))
            .args([
                "--grpc-listen",
                &format!("127.0.0.1:{grpc}"),
                "--http-listen",
                &format!("127.0.0.1:{http}"),
                "--data-dir",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vigil starts");
        let s = Server { child, http, grpc };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", s.grpc)).is_err() {
            assert!(Instant::now() < deadline, "vigil did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let code = self.child.wait().expect("wait");
        assert!(code.success(), "vigil exited with {code}");
    }
}

fn claude_logs(records: Vec<Vec<KeyValue>>, body: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "claude-code")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records
                    .into_iter()
                    .enumerate()
                    .map(|(i, attributes)| LogRecord {
                        time_unix_nano: T0 + i as u64 * 1_000_000_000,
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(body.into())),
                        }),
                        attributes,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_exports_are_archived_and_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let endpoint = format!("http://127.0.0.1:{}", server.grpc);

    let mut logs = LogsServiceClient::connect(endpoint.clone())
        .await
        .expect("connect")
        .send_compressed(CompressionEncoding::Gzip);
    let read_key = vec![
        kv("event.name", "tool_result"),
        kv("session.id", "sess-rust-1"),
        kv("user.email", "rust@example.com"),
        kv("tool_name", "Read"),
        kv("success", "true"),
        kv(
            "tool_parameters",
            r#"{"file_path": "/home/rust/.ssh/id_rsa"}"#,
        ),
    ];
    let resp = logs
        .export(claude_logs(vec![read_key], "claude_code.tool_result"))
        .await
        .expect("export logs")
        .into_inner();
    assert!(resp
        .partial_success
        .is_none_or(|p| p.rejected_log_records == 0));

    let mut traces = TraceServiceClient::connect(endpoint.clone())
        .await
        .expect("connect");
    let span = Span {
        name: "chat gpt-4o".into(),
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        start_time_unix_nano: T0 + 5_000_000_000,
        end_time_unix_nano: T0 + 6_000_000_000,
        attributes: vec![
            kv("gen_ai.request.model", "gpt-4o"),
            kv("user.email", "rust@example.com"),
        ],
        ..Default::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "litellm")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    traces.export(req).await.expect("export spans");

    let mut metrics = MetricsServiceClient::connect(endpoint)
        .await
        .expect("connect");
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "claude-code")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "claude_code.cost.usage".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: T0,
                            value: Some(number_data_point::Value::AsDouble(0.25)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    metrics.export(req).await.expect("export metrics");

    // The sensitive read raises its alert once the stream goes quiet.
    let alerts_path = dir.path().join("alerts.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    let alerts = loop {
        let text = std::fs::read_to_string(&alerts_path).unwrap_or_default();
        if text.contains("sensitive-file-read") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = server.http;
    server.stop();
    let alert: serde_json::Value = serde_json::from_str(
        alerts
            .lines()
            .find(|l| l.contains("sensitive-file-read"))
            .expect("alert raised"),
    )
    .expect("json");
    assert_eq!(alert["user"], "rust@example.com");
    assert_eq!(alert["session"], "sess-rust-1");

    let mut kinds: Vec<String> = Vec::new();
    for batch in
        sinks::archive::read_events(&dir.path().join("archive"), None, None).expect("archive opens")
    {
        for e in batch.expect("batch reads") {
            kinds.push(format!("{}:{}", e.source, e.kind));
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["agent:file_read", "agent:metric", "ai_gateway:model_call"]
    );
}
