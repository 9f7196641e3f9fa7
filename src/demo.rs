//! `vigil demo`: shows vigil working before any gateway is wired. It starts
//! `vigil serve` on free loopback ports, sends a day of agent, gateway and
//! endpoint telemetry for a few people over real OTLP/gRPC (benign work and
//! every attack the default pack knows), prints the alerts as they fire, and
//! says where the archive is and what to ask it next.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use serde_json::Value;

/// The day the demo replays: the acceptance scenarios of the default pack.
const STORIES: &[&str] = &[
    include_str!("../tests/scenarios/benign-workday.json"),
    include_str!("../tests/scenarios/scheduled-task-created.json"),
    include_str!("../tests/scenarios/mcp-unapproved-server.json"),
    include_str!("../tests/scenarios/connector-write-off-hours.json"),
    include_str!("../tests/scenarios/connector-write-burst.json"),
    include_str!("../tests/scenarios/sensitive-file-read.json"),
    include_str!("../tests/scenarios/unattended-session.json"),
    include_str!("../tests/scenarios/bypass-permissions-enabled.json"),
    include_str!("../tests/scenarios/exfiltration-chain.json"),
];

/// What the organization tells vigil, merged from the stories.
const DEMO_CONFIG: &str = r#"# written by `vigil demo`
engine:
  idle_timeout: 1s
lists:
  approved_mcp_domains: ["*.slack.com", mcp.slack.com, mcp.atlassian.com, "*.corp.example.com", "*.example-connectors.com"]
  internal_domains: ["*.example.com", github.com]
business_hours:
  timezone: America/New_York
  days: [mon, tue, wed, thu, fri]
  start: "08:00"
  end: "19:00"
  users:
    ken@example.com: {timezone: Asia/Tokyo}
"#;

/// One record of a story, at its event time.
struct Record {
    arrival: f64,
    time_ns: u64,
    value: Value,
}

fn parse_offset(text: &str) -> Result<f64> {
    let t = text.trim();
    let (sign, body) = match t.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, t.trim_start_matches('+')),
    };
    let mut total = 0.0;
    let mut num = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            0.001
        } else {
            match c {
                's' => 1.0,
                'm' => 60.0,
                'h' => 3600.0,
                'd' => 86400.0,
                _ => bail!("bad offset {text:?}"),
            }
        };
        total += num
            .parse::<f64>()
            .with_context(|| format!("bad offset {text:?}"))?
            * unit;
        num.clear();
    }
    if !num.is_empty() {
        bail!("bad offset {text:?}: a number without a unit");
    }
    Ok(sign * total)
}

fn expand(story: &Value) -> Result<Vec<Record>> {
    let base = story["base_time"]
        .as_str()
        .context("story without base_time")?;
    let base_ns = event::parse_rfc3339_ns(base).context("bad base_time")? as f64;
    let mut out = Vec::new();
    for rec in story["records"]
        .as_array()
        .context("story without records")?
    {
        let n = rec.get("repeat").and_then(Value::as_u64).unwrap_or(1);
        let every = parse_offset(rec.get("every").and_then(Value::as_str).unwrap_or("0s"))?;
        let delay = parse_offset(rec.get("delay").and_then(Value::as_str).unwrap_or("0s"))?;
        let at = parse_offset(rec.get("at").and_then(Value::as_str).unwrap_or("+0s"))?;
        for i in 0..n {
            let t = at + i as f64 * every;
            out.push(Record {
                arrival: t + delay,
                time_ns: (base_ns + t * 1e9) as u64,
                value: rec.clone(),
            });
        }
    }
    Ok(out)
}

fn any(v: &Value) -> AnyValue {
    let value = match v {
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
        },
        Value::Array(a) => any_value::Value::ArrayValue(ArrayValue {
            values: a.iter().map(any).collect(),
        }),
        Value::Object(_) => any_value::Value::KvlistValue(KeyValueList { values: kvs(v) }),
        Value::Null => return AnyValue { value: None },
    };
    AnyValue { value: Some(value) }
}

fn kvs(v: &Value) -> Vec<KeyValue> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(any(v)),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn run(data_dir: PathBuf) -> Result<std::process::ExitCode> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let alerts_path = data_dir.join("alerts.jsonl");
    if alerts_path.exists() {
        bail!(
            "{} already holds a vigil data directory; remove it or pass --data-dir",
            data_dir.display()
        );
    }
    let config_path = data_dir.join("vigil.yaml");
    std::fs::write(&config_path, DEMO_CONFIG).context("writing the demo configuration")?;
    let (grpc, http) = (free_port()?, free_port()?);
    let exe = std::env::current_exe().context("locating the vigil binary")?;
    let log = std::fs::File::create(data_dir.join("vigil.log"))?;
    let child = Command::new(exe)
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .args([
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting vigil serve")?;
    let mut server = Server(child);
    println!("vigil demo: vigil serve is receiving OTLP on 127.0.0.1:{grpc} (gRPC) and 127.0.0.1:{http} (HTTP)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err() {
        if let Ok(Some(status)) = server.0.try_wait() {
            bail!(
                "vigil serve exited with {status}; see {}",
                data_dir.join("vigil.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "vigil serve did not start; see {}",
                data_dir.join("vigil.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut records = Vec::new();
    let mut people = std::collections::BTreeSet::new();
    for text in STORIES {
        let story: Value = serde_json::from_str(text).context("a demo story is not valid JSON")?;
        for r in expand(&story)? {
            if let Some(u) = r.value["attributes"]["user.email"]
                .as_str()
                .or(r.value["attributes"]["user.name"].as_str())
            {
                people.insert(u.to_string());
            }
            records.push(r);
        }
    }
    records.sort_by(|a, b| {
        a.time_ns
            .cmp(&b.time_ns)
            .then(a.arrival.total_cmp(&b.arrival))
    });
    println!(
        "sending {} records of agent, AI gateway, MCP gateway and endpoint telemetry for {} people over OTLP/gRPC...\n",
        records.len(),
        people.len()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoint = format!("http://127.0.0.1:{grpc}");
    let mut table = AlertTable::new(&alerts_path);
    table.header();
    runtime.block_on(async {
        let mut logs = LogsServiceClient::connect(endpoint.clone()).await?;
        let mut traces = TraceServiceClient::connect(endpoint).await?;
        // Runs of one signal, in event-time order: a logs request and a traces
        // request from the same stretch of time would make one of them late.
        for chunk in records
            .chunk_by(|a, b| a.value["signal"] == b.value["signal"])
            .flat_map(|run| run.chunks(25))
        {
            let (l, t) = requests(chunk);
            if !l.resource_logs.is_empty() {
                logs.export(l).await.context("exporting logs")?;
            }
            if !t.resource_spans.is_empty() {
                traces.export(t).await.context("exporting spans")?;
            }
            table.print_new()?;
        }
        anyhow::Ok(())
    })?;

    // Close the client connections before asking vigil to stop.
    drop(runtime);
    // The engine releases what it holds once the stream is quiet (idle timeout 1 s).
    let quiet_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < quiet_until {
        table.print_new()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = server.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = server.0.wait()?;
    table.print_new()?;
    if !status.success() {
        bail!(
            "vigil serve exited with {status}; see {}",
            data_dir.join("vigil.log").display()
        );
    }
    let archive = data_dir.join("archive");
    println!(
        "\n{} alerts. Everything vigil saw is archived as Parquet in {}:",
        table.count,
        archive.display()
    );
    println!("  duckdb -c \"select kind, count(*) from read_parquet('{}/events/**/*.parquet', hive_partitioning=true) group by 1 order by 2 desc\"", archive.display());
    println!("  duckdb -c \"select time, user, tool, path, command from read_parquet('{}/events/**/*.parquet') where user = 'mike@example.com' order by time\"", archive.display());
    println!(
        "Alerts are in {} (one JSON object per line); replay them with:",
        alerts_path.display()
    );
    println!(
        "  vigil replay --archive {} --config {}",
        archive.display(),
        config_path.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Groups records into one logs and one traces request, a resource per distinct resource.
fn requests(chunk: &[Record]) -> (ExportLogsServiceRequest, ExportTraceServiceRequest) {
    let mut logs: BTreeMap<String, Vec<LogRecord>> = BTreeMap::new();
    let mut spans: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for (i, r) in chunk.iter().enumerate() {
        let v = &r.value;
        let resource = v
            .get("resource")
            .cloned()
            .unwrap_or(Value::Null)
            .to_string();
        let attributes = kvs(v.get("attributes").unwrap_or(&Value::Null));
        if v["signal"] == "span" {
            let kind = match v.get("kind").and_then(Value::as_str) {
                Some("client") => span::SpanKind::Client,
                Some("server") => span::SpanKind::Server,
                _ => span::SpanKind::Internal,
            };
            let duration_ms = v.get("duration_ms").and_then(Value::as_f64).unwrap_or(10.0);
            let error = v.get("status").and_then(Value::as_str) == Some("error");
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&r.time_ns.to_be_bytes());
            trace_id[8..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            spans.entry(resource).or_default().push(Span {
                trace_id: trace_id.to_vec(),
                span_id: (r.time_ns ^ (i as u64 + 1)).to_be_bytes().to_vec(),
                name: v["name"].as_str().unwrap_or("span").to_string(),
                kind: kind as i32,
                start_time_unix_nano: r.time_ns,
                end_time_unix_nano: r.time_ns + (duration_ms * 1e6) as u64,
                attributes,
                status: error.then(|| Status {
                    code: status::StatusCode::Error as i32,
                    message: String::new(),
                }),
                ..Default::default()
            });
        } else {
            logs.entry(resource).or_default().push(LogRecord {
                time_unix_nano: r.time_ns,
                observed_time_unix_nano: r.time_ns,
                severity_number: 9,
                severity_text: "INFO".into(),
                body: v.get("body").map(any),
                attributes,
                ..Default::default()
            });
        }
    }
    let res = |text: &str| Resource {
        attributes: kvs(&serde_json::from_str(text).unwrap_or(Value::Null)),
        ..Default::default()
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: logs
            .into_iter()
            .map(|(r, records)| ResourceLogs {
                resource: Some(res(&r)),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    let traces = ExportTraceServiceRequest {
        resource_spans: spans
            .into_iter()
            .map(|(r, spans)| ResourceSpans {
                resource: Some(res(&r)),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    (logs, traces)
}

/// Prints alerts from alerts.jsonl as a table, as they are appended.
struct AlertTable {
    path: PathBuf,
    offset: u64,
    count: usize,
}

impl AlertTable {
    fn new(path: &Path) -> Self {
        AlertTable {
            path: path.to_path_buf(),
            offset: 0,
            count: 0,
        }
    }

    fn header(&self) {
        println!(
            "{:<27} {:<9} {:<20} {:<14} SUMMARY",
            "RULE", "SEVERITY", "USER", "SESSION"
        );
    }

    fn print_new(&mut self) -> Result<()> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Ok(());
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::new(f);
        let mut line = String::new();
        let mut out = std::io::stdout().lock();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += n as u64;
            let Ok(a) = serde_json::from_str::<event::Alert>(&line) else {
                continue;
            };
            self.count += 1;
            let cut = |s: &str, n: usize| {
                if s.chars().count() > n {
                    format!("{}…", s.chars().take(n - 1).collect::<String>())
                } else {
                    s.to_string()
                }
            };
            writeln!(
                out,
                "{:<27} {:<9} {:<20} {:<14} {}",
                a.rule_id,
                a.severity.as_str(),
                cut(a.user.as_deref().unwrap_or("-"), 20),
                cut(a.session.as_deref().unwrap_or("-"), 14),
                cut(&a.summary, 90)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_like_the_scenario_sender() {
        assert_eq!(parse_offset("+1h30m").unwrap(), 5400.0);
        assert_eq!(parse_offset("-6h30m").unwrap(), -23400.0);
        assert_eq!(parse_offset("+0h5s").unwrap(), 5.0);
        assert_eq!(parse_offset("+250ms").unwrap(), 0.25);
        assert!(parse_offset("+5").is_err());
        assert!(parse_offset("+5y").is_err());
    }

    #[test]
    fn every_story_expands_and_becomes_requests() {
        let mut total = 0;
        for text in STORIES {
            let story: Value = serde_json::from_str(text).unwrap();
            let records = expand(&story).unwrap();
            let (l, t) = requests(&records);
            let n: usize = l
                .resource_logs
                .iter()
                .map(|r| r.scope_logs[0].log_records.len())
                .sum::<usize>()
                + t.resource_spans
                    .iter()
                    .map(|r| r.scope_spans[0].spans.len())
                    .sum::<usize>();
            assert_eq!(n, records.len());
            total += n;
        }
        assert!(total > 150, "a day of telemetry, not {total} records");
    }
}
