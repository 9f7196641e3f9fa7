//! `vigil demo`: shows vigil working before any gateway is wired. It starts
//! `vigil serve` on free loopback ports, sends a day of agent, gateway and
//! endpoint telemetry for a few people over real OTLP/gRPC (benign work and
//! every attack the default pack knows), prints the alerts as they fire, and
//! says where the archive is and what to ask it next.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::scenario::{self, Scenario};

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

    let stories = STORIES
        .iter()
        .map(|text| Scenario::parse(text, "a demo story"))
        .collect::<Result<Vec<_>>>()?;
    let mut records = Vec::new();
    let mut people = std::collections::BTreeSet::new();
    for story in &stories {
        for r in story.instances()? {
            let attrs = &r.record.attributes;
            if let Some(u) = attrs
                .get("user.email")
                .or(attrs.get("user.name"))
                .and_then(|u| u.as_str())
            {
                people.insert(u.to_string());
            }
            records.push(r);
        }
    }
    records.sort_by_key(|r| (r.time_ns, r.arrival_ns));
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
            .chunk_by(|a, b| a.record.signal == b.record.signal)
            .flat_map(|run| run.chunks(25))
        {
            let (l, t) = scenario::requests(chunk);
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
    fn every_story_expands_and_becomes_requests() {
        let mut total = 0;
        for text in STORIES {
            let story = Scenario::parse(text, "story").unwrap();
            let records = story.instances().unwrap();
            let (l, t) = scenario::requests(&records);
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
