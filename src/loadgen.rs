//! `vigil loadgen`: a load generator for a running vigil. It builds realistic
//! mixed OTLP (Claude Code log events, AI gateway GenAI spans, MCP gateway
//! `tools/call` spans, ECS endpoint logs), encodes the requests before the
//! send loop, and sends them with several connections over gRPC or HTTP
//! protobuf, paced to a target rate. Event times follow the wall clock from
//! `--start-time`, so the engine's watermark moves as in production: each
//! pre-encoded request is copied and its fixed64 timestamps are shifted in
//! place just before it is sent.
//!
//! It reports sent, accepted, rejected (partial success) and refused
//! (429/503, RESOURCE_EXHAUSTED/UNAVAILABLE, retried) records and the request
//! latency, every few seconds and at the end. `--probe-alerts` measures the
//! time from sending a sensitive file read to its alert appearing in
//! alerts.jsonl; `--floor` measures prost's decode of the same requests
//! in-process (the floor that `scripts/bench` compares vigil against).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes};
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
    /// OTLP/HTTP with JSON bodies (what Portkey, Cloudflare's gateway and
    /// `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` agents send).
    HttpJson,
}

#[derive(Args, Debug)]
pub struct LoadgenArgs {
    /// OTLP endpoint: the gRPC address (4317) or the HTTP base URL (4318).
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    endpoint: String,
    /// Transport: gRPC (tonic), HTTP with protobuf bodies, or HTTP with OTLP JSON bodies.
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: Protocol,
    /// Target records per second; 0 sends as fast as vigil answers.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long to send (e.g. 30s, 2m); the default unless --records is given.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many records instead of after a duration.
    #[arg(long)]
    records: Option<u64>,
    /// Records per export request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Requests in flight, each on its own connection.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Distinct agent sessions (each belongs to one user).
    #[arg(long, default_value_t = 10_000)]
    sessions: u64,
    /// Share of records per source family, in percent or any weights.
    #[arg(
        long,
        default_value = "agent=70,ai_gateway=10,mcp_gateway=10,endpoint=10"
    )]
    mix: String,
    /// Event time of the first record (RFC 3339) [default: now]; it then advances with the wall clock.
    #[arg(long)]
    start_time: Option<String>,
    /// Seed of the generator: the same seed gives the same records.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Distinct requests encoded up front and cycled (time-shifted); 0 encodes every request
    /// afresh on a generator thread, ahead of the senders.
    #[arg(long, default_value_t = 64)]
    pool: usize,
    /// Agent records walk the sessions in order, one prompt then one tool call each
    /// (memory tests: every session gets live state).
    #[arg(long)]
    sweep: bool,
    /// Seconds between progress lines.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    report_every: Duration,
    /// Measure alert latency: send a sensitive file read this often (e.g. 100ms) and watch
    /// --probe-alerts for its alert.
    #[arg(long, value_parser = humantime::parse_duration)]
    probe_every: Option<Duration>,
    /// The alerts.jsonl of the vigil under test (with --probe-every).
    #[arg(long)]
    probe_alerts: Option<PathBuf>,
    /// Do not send: decode the encoded requests with prost in-process and print records/s.
    #[arg(long)]
    floor: bool,
    /// Do not send: measure the CPU per record of each stage of `vigil serve` (read,
    /// normalize, Arrow columns, Parquet, write-ahead log, rules) on one thread, over
    /// --records records (default 200000), event time advancing as if at --rate (default
    /// 1000000 records/s).
    #[arg(long, conflicts_with = "floor")]
    stages: bool,
    /// With --stages: the vigil configuration whose mappings, rules and archive settings are
    /// measured [default: vigil's defaults].
    #[arg(long, requires = "stages")]
    config: Option<PathBuf>,
    /// With --stages: also run each active rule alone over the same records and print what
    /// each costs per record.
    #[arg(long, requires = "stages")]
    per_rule: bool,
    /// Print the final summary as one JSON object.
    #[arg(long)]
    json: bool,
}

// ---------------------------------------------------------------------------
// Generation

/// Sources of the mix, in the order of `--mix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Family {
    Agent,
    AiGateway,
    McpGateway,
    Endpoint,
}

const FAMILIES: [(&str, Family); 4] = [
    ("agent", Family::Agent),
    ("ai_gateway", Family::AiGateway),
    ("mcp_gateway", Family::McpGateway),
    ("endpoint", Family::Endpoint),
];

/// Cumulative weights of the families; a record's family is drawn from them.
#[derive(Clone, Debug)]
struct Mix {
    cumulative: Vec<(u64, Family)>,
}

impl Mix {
    fn parse(text: &str) -> Result<Mix> {
        let mut cumulative = Vec::new();
        let mut total = 0;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .with_context(|| format!("bad --mix entry {part:?}: expected name=weight"))?;
            let family = FAMILIES
                .iter()
                .find(|(n, _)| *n == name.trim())
                .map(|(_, f)| *f)
                .with_context(|| {
                    format!("unknown source {name:?} in --mix (agent, ai_gateway, mcp_gateway, endpoint)")
                })?;
            let w: u64 = weight
                .trim()
                .parse()
                .with_context(|| format!("bad weight in --mix entry {part:?}"))?;
            if w > 0 {
                total += w;
                cumulative.push((total, family));
            }
        }
        if total == 0 {
            bail!("--mix gives every source a weight of 0");
        }
        Ok(Mix { cumulative })
    }

    fn pick(&self, r: u64) -> Family {
        let total = self
            .cumulative
            .last()
            .expect("parse rejects an empty mix")
            .0;
        let x = r % total;
        self.cumulative
            .iter()
            .find(|(c, _)| x < *c)
            .expect("x is below the total")
            .1
    }
}

/// splitmix64: small, fast, and the same on every platform.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Timestamps are encoded as this marker plus an offset, then shifted to the
/// send time; the marker's high bytes (0x0d 0xe0 0xb6) never occur in ASCII.
const MARK: u64 = 1_000_000_000_000_000_000;
/// Event-time spacing of records inside one request.
const STEP_NS: u64 = 1_000;

/// One export request, encoded, with where its timestamps are.
#[derive(Clone)]
struct Encoded {
    signal: Signal,
    records: u64,
    bytes: Bytes,
    /// Byte offsets of the timestamps (MARK + offset): fixed64 in
    /// protobuf, 19 decimal digits in JSON.
    stamps: Vec<usize>,
    json: bool,
    /// Largest timestamp offset: the request's last record.
    span_ns: u64,
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Logs,
    Traces,
}

impl Encoded {
    fn new(signal: Signal, records: u64, bytes: Vec<u8>, span_ns: u64) -> Encoded {
        // Tags of fixed64 time fields: LogRecord 1 and 11, Span 7 and 8.
        let tags: &[u8] = match signal {
            Signal::Logs => &[0x09, 0x59],
            Signal::Traces => &[0x39, 0x41],
        };
        let mut stamps = Vec::with_capacity(records as usize * 2);
        let mut i = 0;
        while i + 9 <= bytes.len() {
            if tags.contains(&bytes[i]) {
                let v = u64::from_le_bytes(bytes[i + 1..i + 9].try_into().expect("8 bytes"));
                if (MARK..MARK + (1 << 40)).contains(&v) {
                    stamps.push(i + 1);
                    i += 9;
                    continue;
                }
            }
            i += 1;
        }
        debug_assert_eq!(
            stamps.len() as u64,
            records * 2,
            "two timestamps per record"
        );
        Encoded {
            signal,
            records,
            bytes: Bytes::from(bytes),
            stamps,
            json: false,
            span_ns,
        }
    }

    /// The same request as OTLP JSON (lowerCamelCase keys, times as
    /// decimal strings, ids in hex), as an `http/json` exporter sends it.
    fn into_json(self) -> Encoded {
        let bytes = match self.signal {
            Signal::Logs => serde_json::to_vec(
                &ExportLogsServiceRequest::decode(self.bytes).expect("loadgen's own encoding"),
            ),
            Signal::Traces => serde_json::to_vec(
                &ExportTraceServiceRequest::decode(self.bytes).expect("loadgen's own encoding"),
            ),
        }
        .expect("OTLP requests serialize to JSON");
        // Every time is a quoted 19-digit number: `"timeUnixNano":"1000..."`.
        let mut stamps = Vec::with_capacity(self.records as usize * 2);
        let key = b"UnixNano\":\"";
        let mut i = 0;
        while let Some(at) = find(&bytes[i..], key) {
            let p = i + at + key.len();
            let digits = bytes
                .get(p..p + 19)
                .filter(|d| d.iter().all(u8::is_ascii_digit));
            let v = digits.and_then(|d| std::str::from_utf8(d).ok()?.parse::<u64>().ok());
            if v.is_some_and(|v| (MARK..MARK + (1 << 40)).contains(&v))
                && bytes.get(p + 19) == Some(&b'"')
            {
                stamps.push(p);
            }
            i = p;
        }
        debug_assert_eq!(
            stamps.len() as u64,
            self.records * 2,
            "two timestamps per record"
        );
        Encoded {
            bytes: Bytes::from(bytes),
            stamps,
            json: true,
            ..self
        }
    }

    /// A copy whose last record is at `end_ns` (event time, ns since the epoch).
    fn at(&self, end_ns: u64) -> Bytes {
        let base = end_ns.saturating_sub(self.span_ns);
        let mut out = self.bytes.to_vec();
        for &p in &self.stamps {
            if self.json {
                let v: u64 = std::str::from_utf8(&out[p..p + 19])
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .expect("19 digits found when encoded");
                // Any time from 2001 to 2286 has 19 digits: the width stays.
                let shifted = format!("{:019}", v - MARK + base);
                assert_eq!(shifted.len(), 19, "event times from 2001 to 2286");
                out[p..p + 19].copy_from_slice(shifted.as_bytes());
            } else {
                let v = u64::from_le_bytes(out[p..p + 8].try_into().expect("8 bytes"));
                out[p..p + 8].copy_from_slice(&(v - MARK + base).to_le_bytes());
            }
        }
        Bytes::from(out)
    }
}

fn kv(k: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

fn resource(attrs: Vec<KeyValue>) -> Option<Resource> {
    Some(Resource {
        attributes: attrs,
        ..Default::default()
    })
}

const REPOS: [&str; 6] = ["api", "web", "billing", "infra", "ml-pipeline", "docs"];
const COMMANDS: [&str; 8] = [
    "cargo test",
    "git status",
    "git diff --stat",
    "npm run build",
    "ls -la src",
    "pytest -q tests/unit",
    "rg -n TODO src",
    "curl -s https://docs.rs/serde",
];
const MODELS: [&str; 3] = ["claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"];
/// (tool, server): reads and writes through MCP connectors.
const MCP_TOOLS: [(&str, &str); 6] = [
    ("jira_search", "mcp.atlassian.com"),
    ("slack_search_messages", "mcp.slack.com"),
    ("github_get_file", "api.githubcopilot.com"),
    ("slack_post_message", "mcp.slack.com"),
    ("jira_create_issue", "mcp.atlassian.com"),
    ("send_email", "gmail.mcp.example-connectors.com"),
];

/// Builds requests of `batch` records, deterministically from the seed.
struct Generator {
    rng: Rng,
    mix: Mix,
    users: u64,
    sessions: u64,
    batch: usize,
    sweep: bool,
    /// Next agent record in sweep mode.
    sweep_at: u64,
    logs: Vec<(Family, LogRecord)>,
    spans: Vec<(Family, Span)>,
    /// Records generated so far (the event-time offset of the next one).
    seq: u64,
}

impl Generator {
    fn new(seed: u64, mix: Mix, users: u64, sessions: u64, batch: usize, sweep: bool) -> Self {
        Generator {
            rng: Rng(seed),
            mix,
            users: users.max(1),
            sessions: sessions.max(1),
            batch: batch.max(1),
            sweep,
            sweep_at: 0,
            logs: Vec::new(),
            spans: Vec::new(),
            seq: 0,
        }
    }

    fn user(&self, u: u64) -> String {
        format!("user{u:05}@example.com")
    }

    fn session_id(&self, s: u64) -> String {
        // Shaped like Claude Code's session UUIDs, stable per session index.
        let h = Rng(s ^ 0x5bd1_e995).next();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            s as u32,
            (h >> 48) as u16,
            (h >> 36) & 0xfff,
            (h >> 24) & 0xfff,
            h & 0xffff_ffff_ffff
        )
    }

    /// The next request, whichever signal fills up first.
    fn next_request(&mut self) -> Encoded {
        loop {
            let family = self.mix.pick(self.rng.next());
            let t = MARK + (self.seq % (1 << 30)) * STEP_NS;
            self.seq += 1;
            match family {
                Family::Agent => {
                    let r = self.agent(t);
                    self.logs.push((family, r));
                }
                Family::Endpoint => {
                    let r = self.endpoint(t);
                    self.logs.push((family, r));
                }
                Family::AiGateway | Family::McpGateway => {
                    let s = self.span(family, t);
                    self.spans.push((family, s));
                }
            }
            if self.logs.len() >= self.batch {
                return self.flush_logs();
            }
            if self.spans.len() >= self.batch {
                return self.flush_spans();
            }
        }
    }

    fn flush_logs(&mut self) -> Encoded {
        let records = std::mem::take(&mut self.logs);
        let n = records.len() as u64;
        let first = records
            .iter()
            .map(|(_, r)| r.time_unix_nano)
            .min()
            .unwrap_or(MARK);
        let last = records
            .iter()
            .map(|(_, r)| r.time_unix_nano)
            .max()
            .unwrap_or(MARK);
        let mut agent = Vec::new();
        let mut endpoint = Vec::new();
        for (f, mut r) in records {
            // Offsets relative to this request's first record.
            r.time_unix_nano = r.time_unix_nano - first + MARK;
            r.observed_time_unix_nano = r.time_unix_nano;
            match f {
                Family::Agent => agent.push(r),
                _ => endpoint.push(r),
            }
        }
        let mut resource_logs = Vec::new();
        for (attrs, recs) in [
            (
                vec![
                    kv("service.name", "claude-code"),
                    kv("service.version", "2.1.230"),
                    kv("os.type", "darwin"),
                    kv("host.arch", "arm64"),
                ],
                agent,
            ),
            (vec![kv("service.name", "endpoint-agent")], endpoint),
        ] {
            if !recs.is_empty() {
                resource_logs.push(ResourceLogs {
                    resource: resource(attrs),
                    scope_logs: vec![ScopeLogs {
                        log_records: recs,
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }
        }
        let bytes = ExportLogsServiceRequest { resource_logs }.encode_to_vec();
        Encoded::new(Signal::Logs, n, bytes, last - first)
    }

    fn flush_spans(&mut self) -> Encoded {
        let spans = std::mem::take(&mut self.spans);
        let n = spans.len() as u64;
        let first = spans
            .iter()
            .map(|(_, s)| s.start_time_unix_nano)
            .min()
            .unwrap_or(MARK);
        let last = spans
            .iter()
            .map(|(_, s)| s.start_time_unix_nano)
            .max()
            .unwrap_or(MARK);
        let mut ai = Vec::new();
        let mut mcp = Vec::new();
        for (f, mut s) in spans {
            let d = s.end_time_unix_nano - s.start_time_unix_nano;
            s.start_time_unix_nano = s.start_time_unix_nano - first + MARK;
            s.end_time_unix_nano = s.start_time_unix_nano + d;
            match f {
                Family::AiGateway => ai.push(s),
                _ => mcp.push(s),
            }
        }
        let mut resource_spans = Vec::new();
        for (name, spans) in [("ai-gateway", ai), ("mcp-gateway", mcp)] {
            if !spans.is_empty() {
                resource_spans.push(ResourceSpans {
                    resource: resource(vec![kv("service.name", name)]),
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }
        }
        let bytes = ExportTraceServiceRequest { resource_spans }.encode_to_vec();
        Encoded::new(Signal::Traces, n, bytes, last - first)
    }

    /// A Claude Code log event (the shapes of its OpenTelemetry export).
    fn agent(&mut self, t: u64) -> LogRecord {
        let (s, what) = if self.sweep {
            let i = self.sweep_at;
            self.sweep_at += 1;
            (
                (i / 2) % self.sessions,
                if i.is_multiple_of(2) { 0 } else { 40 },
            )
        } else {
            (self.rng.below(self.sessions), self.rng.below(100))
        };
        let u = s % self.users;
        let user = self.user(u);
        let mut attrs = vec![
            kv("event.name", ""),
            kv("session.id", self.session_id(s)),
            kv("user.email", user),
            kv("organization.id", "5f0c1e9a-8d2b-4c1f-9a77-2b8e4d1c0a11"),
            kv("user.account_uuid", format!("acc-{u:05}")),
            kv("terminal.type", "iTerm.app"),
            kv_int("event.sequence", (self.seq % 10_000) as i64),
        ];
        let name = match what {
            0..=9 => {
                attrs.push(kv_int("prompt_length", 20 + self.rng.below(400) as i64));
                attrs.push(kv("prompt", "<REDACTED>"));
                "user_prompt"
            }
            10..=34 => {
                let model = MODELS[self.rng.below(3) as usize];
                attrs.push(kv("model", model));
                attrs.push(kv("cost_usd", "0.0213"));
                attrs.push(kv_int("duration_ms", 800 + self.rng.below(4000) as i64));
                attrs.push(kv_int("input_tokens", 200 + self.rng.below(8000) as i64));
                attrs.push(kv_int("output_tokens", 50 + self.rng.below(2000) as i64));
                attrs.push(kv_int("cache_read_tokens", self.rng.below(4000) as i64));
                "api_request"
            }
            35..=79 => {
                let repo = REPOS[self.rng.below(REPOS.len() as u64) as usize];
                let (tool, params) = match self.rng.below(10) {
                    0..=3 => (
                        "Read",
                        format!(
                            "{{\"file_path\": \"/Users/user{u:05}/src/{repo}/mod{}.rs\"}}",
                            self.rng.below(200)
                        ),
                    ),
                    4..=6 => {
                        let c = COMMANDS[self.rng.below(COMMANDS.len() as u64) as usize];
                        let head = c.split(' ').next().unwrap_or(c);
                        (
                            "Bash",
                            format!("{{\"bash_command\": \"{head}\", \"full_command\": \"{c}\"}}"),
                        )
                    }
                    7..=8 => (
                        "Edit",
                        format!(
                            "{{\"file_path\": \"/Users/user{u:05}/src/{repo}/lib{}.rs\"}}",
                            self.rng.below(50)
                        ),
                    ),
                    _ => (
                        "Grep",
                        format!("{{\"pattern\": \"fn main\", \"path\": \"/Users/user{u:05}/src/{repo}\"}}"),
                    ),
                };
                attrs.push(kv("tool_name", tool));
                attrs.push(kv("tool_use_id", format!("toolu_{:016x}", self.rng.next())));
                attrs.push(kv("success", "true"));
                attrs.push(kv_int("duration_ms", 5 + self.rng.below(500) as i64));
                attrs.push(kv("decision_type", "accept"));
                attrs.push(kv("decision_source", "config"));
                attrs.push(kv("tool_parameters", params));
                "tool_result"
            }
            _ => {
                let tool = ["Bash", "Edit", "Write", "WebFetch"][self.rng.below(4) as usize];
                attrs.push(kv("tool_name", tool));
                attrs.push(kv("tool_use_id", format!("toolu_{:016x}", self.rng.next())));
                attrs.push(kv("decision", "accept"));
                attrs.push(kv("source", "config"));
                "tool_decision"
            }
        };
        attrs[0] = kv("event.name", name);
        LogRecord {
            time_unix_nano: t,
            observed_time_unix_nano: t,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!("claude_code.{name}"))),
            }),
            attributes: attrs,
            ..Default::default()
        }
    }

    /// An ECS-shaped endpoint event: a process start or a file open.
    fn endpoint(&mut self, t: u64) -> LogRecord {
        let u = self.rng.below(self.users);
        let host = format!("dev-{u:05}");
        let mut attrs = vec![
            kv("host.name", host),
            kv("user.name", format!("user{u:05}")),
            kv("host.os.type", "linux"),
        ];
        let action = if self.rng.below(2) == 0 {
            let c = COMMANDS[self.rng.below(COMMANDS.len() as u64) as usize];
            attrs.push(kv("event.category", "process"));
            attrs.push(kv("event.action", "exec"));
            attrs.push(kv("process.executable", "/usr/bin/bash"));
            attrs.push(kv("process.command_line", c));
            "exec"
        } else {
            let repo = REPOS[self.rng.below(REPOS.len() as u64) as usize];
            attrs.push(kv("event.category", "file"));
            attrs.push(kv("event.action", "open"));
            attrs.push(kv(
                "file.path",
                format!("/home/user{u:05}/src/{repo}/README.md"),
            ));
            attrs.push(kv("process.executable", "/usr/bin/python3"));
            "open"
        };
        attrs.push(kv_int("process.pid", 1000 + self.rng.below(60_000) as i64));
        LogRecord {
            time_unix_nano: t,
            observed_time_unix_nano: t,
            severity_number: 9,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(action.into())),
            }),
            attributes: attrs,
            ..Default::default()
        }
    }

    /// A GenAI chat span from an AI gateway, or an MCP `tools/call` span from an MCP gateway.
    fn span(&mut self, family: Family, t: u64) -> Span {
        let s = self.rng.below(self.sessions);
        let user = self.user(s % self.users);
        let id = self.rng.next();
        let (name, kind, duration_ms, attributes) = if family == Family::AiGateway {
            let model = MODELS[self.rng.below(3) as usize];
            (
                format!("chat {model}"),
                span::SpanKind::Client,
                500 + self.rng.below(5000),
                vec![
                    kv("gen_ai.operation.name", "chat"),
                    kv("gen_ai.provider.name", "anthropic"),
                    kv("gen_ai.request.model", model),
                    kv_int(
                        "gen_ai.usage.input_tokens",
                        200 + self.rng.below(8000) as i64,
                    ),
                    kv_int(
                        "gen_ai.usage.output_tokens",
                        50 + self.rng.below(2000) as i64,
                    ),
                    kv("user.email", user),
                    kv("gen_ai.conversation.id", self.session_id(s)),
                ],
            )
        } else {
            // Mostly reads; a third writes through the connector.
            let (tool, server) = MCP_TOOLS[self.rng.below(MCP_TOOLS.len() as u64) as usize];
            (
                format!("tools/call {tool}"),
                span::SpanKind::Server,
                50 + self.rng.below(400),
                vec![
                    kv("mcp.method.name", "tools/call"),
                    kv("gen_ai.tool.name", tool),
                    kv("gen_ai.operation.name", "execute_tool"),
                    kv("mcp.session.id", format!("mcp-{s:08x}")),
                    kv("mcp.protocol.version", "2025-06-18"),
                    kv("jsonrpc.request.id", (id % 1000).to_string()),
                    kv("server.address", server),
                    kv_int("server.port", 443),
                    kv("network.transport", "tcp"),
                    kv("user.email", user),
                    kv(
                        "gen_ai.tool.call.arguments",
                        "{\"channel_id\": \"C0TEAM\", \"text\": \"status update\"}",
                    ),
                ],
            )
        };
        Span {
            trace_id: [id.to_be_bytes(), self.rng.next().to_be_bytes()].concat(),
            span_id: self.rng.next().to_be_bytes().to_vec(),
            name,
            kind: kind as i32,
            start_time_unix_nano: t,
            end_time_unix_nano: t + duration_ms * 1_000_000,
            attributes,
            ..Default::default()
        }
    }
}

/// The probe: a sensitive file read in a session of its own, so each probe raises one alert.
fn probe_request(run: u64, n: u64, time_ns: u64) -> ExportLogsServiceRequest {
    let session = format!("probe-{run:x}-{n}");
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(vec![kv("service.name", "claude-code")]),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: time_ns,
                    observed_time_unix_nano: time_ns,
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(
                            "claude_code.tool_result".into(),
                        )),
                    }),
                    attributes: vec![
                        kv("event.name", "tool_result"),
                        kv("session.id", session),
                        kv("user.email", "probe@loadgen.invalid"),
                        kv("tool_name", "Read"),
                        kv("success", "true"),
                        kv(
                            "tool_parameters",
                            "{\"file_path\": \"/home/probe/.ssh/id_ed25519\"}",
                        ),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

// ---------------------------------------------------------------------------
// Pacing and statistics

/// When request `k` (0-based) is due at `rate` records/s with `batch` records each.
fn due_after(k: u64, batch: usize, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(k as f64 * batch as f64 / rate as f64)
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    refused: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    /// Request latencies in microseconds since the last progress line, and all of them.
    latencies: Mutex<(Vec<u32>, Vec<u32>)>,
}

impl Stats {
    fn latency(&self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        let mut l = self.latencies.lock().expect("no panics while held");
        l.0.push(us);
        l.1.push(us);
    }
}

/// The `q` quantile (0..=1) of `v`, in milliseconds; sorts `v`.
fn quantile_ms(v: &mut [u32], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i] as f64 / 1000.0
}

// ---------------------------------------------------------------------------
// Transports

/// Sends pre-encoded bytes as the request message and decodes the response with prost.
struct RawCodec<R>(std::marker::PhantomData<R>);

struct RawEncoder;
struct RawDecoder<R>(std::marker::PhantomData<R>);

impl<R: Message + Default + Send + Sync + 'static> Codec for RawCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder<R>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder<R> {
        RawDecoder(std::marker::PhantomData)
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl<R: Message + Default> Decoder for RawDecoder<R> {
    type Item = R;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, tonic::Status> {
        let r = R::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|e| tonic::Status::internal(format!("bad response: {e}")))?;
        Ok(Some(r))
    }
}

/// What vigil answered to one request.
enum Outcome {
    /// Accepted; the number of records rejected through partial success.
    Accepted(u64),
    /// 429/503, RESOURCE_EXHAUSTED/UNAVAILABLE: retry later.
    Refused,
    Failed(String),
}

enum Client {
    Grpc(tonic::client::Grpc<Channel>),
    Http {
        base: String,
        sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        json: bool,
    },
}

impl Client {
    async fn connect(protocol: Protocol, endpoint: &str) -> Result<Client> {
        match protocol {
            Protocol::Grpc => {
                let channel = Endpoint::from_shared(endpoint.to_string())
                    .context("bad --endpoint")?
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {endpoint}"))?;
                Ok(Client::Grpc(tonic::client::Grpc::new(channel)))
            }
            Protocol::Http | Protocol::HttpJson => {
                let uri: tonic::codegen::http::Uri = endpoint.parse().context("bad --endpoint")?;
                let host = uri.host().context("--endpoint without a host")?.to_string();
                let port = uri.port_u16().unwrap_or(80);
                let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .with_context(|| format!("connecting to {endpoint}"))?;
                stream.set_nodelay(true)?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(conn);
                Ok(Client::Http {
                    base: format!("{}://{host}:{port}", uri.scheme_str().unwrap_or("http")),
                    sender,
                    json: protocol == Protocol::HttpJson,
                })
            }
        }
    }

    async fn send(&mut self, signal: Signal, body: Bytes) -> Outcome {
        match self {
            Client::Grpc(grpc) => {
                if let Err(e) = grpc.ready().await {
                    return Outcome::Failed(e.to_string());
                }
                let result = match signal {
                    Signal::Logs => grpc
                        .unary(
                            tonic::Request::new(body),
                            PathAndQuery::from_static(
                                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                            ),
                            RawCodec::<ExportLogsServiceResponse>(Default::default()),
                        )
                        .await
                        .map(|r| {
                            r.into_inner()
                                .partial_success
                                .map_or(0, |p| p.rejected_log_records)
                        }),
                    Signal::Traces => grpc
                        .unary(
                            tonic::Request::new(body),
                            PathAndQuery::from_static(
                                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                            ),
                            RawCodec::<ExportTraceServiceResponse>(Default::default()),
                        )
                        .await
                        .map(|r| {
                            r.into_inner()
                                .partial_success
                                .map_or(0, |p| p.rejected_spans)
                        }),
                };
                match result {
                    Ok(rejected) => Outcome::Accepted(rejected.max(0) as u64),
                    Err(s) if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => {
                        Outcome::Refused
                    }
                    Err(s) => Outcome::Failed(format!("{:?}: {}", s.code(), s.message())),
                }
            }
            Client::Http { base, sender, json } => {
                let path = match signal {
                    Signal::Logs => "/v1/logs",
                    Signal::Traces => "/v1/traces",
                };
                let req = hyper::Request::post(format!("{base}{path}"))
                    .header(
                        "content-type",
                        if *json {
                            "application/json"
                        } else {
                            "application/x-protobuf"
                        },
                    )
                    .body(Full::new(body))
                    .expect("a well-formed request");
                if let Err(e) = sender.ready().await {
                    return Outcome::Failed(e.to_string());
                }
                let resp = match sender.send_request(req).await {
                    Ok(r) => r,
                    Err(e) => return Outcome::Failed(e.to_string()),
                };
                let status = resp.status().as_u16();
                let body = match resp.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return Outcome::Failed(e.to_string()),
                };
                match status {
                    200 => {
                        // The answer comes in the request's content type.
                        fn read<T: prost::Message + Default + serde::de::DeserializeOwned>(
                            body: Bytes,
                            json: bool,
                        ) -> Option<T> {
                            if json {
                                serde_json::from_slice(&body).ok()
                            } else {
                                T::decode(body).ok()
                            }
                        }
                        let rejected = match signal {
                            Signal::Logs => read::<ExportLogsServiceResponse>(body, *json)
                                .and_then(|r| r.partial_success)
                                .map_or(0, |p| p.rejected_log_records),
                            Signal::Traces => read::<ExportTraceServiceResponse>(body, *json)
                                .and_then(|r| r.partial_success)
                                .map_or(0, |p| p.rejected_spans),
                        };
                        Outcome::Accepted(rejected.max(0) as u64)
                    }
                    429 | 503 => Outcome::Refused,
                    s => Outcome::Failed(format!("HTTP {s}")),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The run

/// Where requests come from: a pool cycled with shifted times, or a generator thread.
enum Requests {
    Pool(Vec<Encoded>),
    Stream(tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Encoded>>),
}

impl Requests {
    async fn get(&self, k: u64) -> Option<Encoded> {
        match self {
            Requests::Pool(p) => Some(p[(k % p.len() as u64) as usize].clone()),
            Requests::Stream(rx) => rx.lock().await.recv().await,
        }
    }
}

/// Event time as a function of wall time: `start_ns` at the start of the run.
#[derive(Clone, Copy)]
struct Clock {
    started: Instant,
    start_ns: u64,
}

impl Clock {
    fn now_ns(&self) -> u64 {
        self.start_ns + self.started.elapsed().as_nanos() as u64
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn run(args: LoadgenArgs) -> Result<std::process::ExitCode> {
    let mix = Mix::parse(&args.mix)?;
    if args.batch == 0 || args.concurrency == 0 {
        bail!("--batch and --concurrency must be at least 1");
    }
    let start_ns = match &args.start_time {
        Some(t) => {
            event::parse_rfc3339_ns(t).with_context(|| format!("bad --start-time {t:?}"))? as u64
        }
        None => now_ns(),
    };
    let make_gen = || {
        Generator::new(
            args.seed,
            mix.clone(),
            args.users,
            args.sessions,
            args.batch,
            args.sweep,
        )
    };
    let json = args.protocol == Protocol::HttpJson;
    let next = move |g: &mut Generator| {
        let e = g.next_request();
        if json {
            e.into_json()
        } else {
            e
        }
    };
    if args.floor || args.stages {
        // Measured in process, over one pool of requests.
        let mut g = make_gen();
        let pool: Vec<Encoded> = (0..args.pool.max(1)).map(|_| next(&mut g)).collect();
        let duration = args.duration.unwrap_or(Duration::from_secs(5));
        return match (args.stages, json) {
            (true, _) => stages(&args, &pool, start_ns),
            (false, true) => floor_json(&pool, duration),
            (false, false) => floor(&pool, duration),
        };
    }
    let limit = args.records;
    let duration = match (args.duration, limit) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(30)),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (requests, generator) = if args.pool == 0 {
        let (tx, rx) = tokio::sync::mpsc::channel(args.concurrency * 2);
        let mut g = make_gen();
        let stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("loadgen-encode".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if tx.blocking_send(next(&mut g)).is_err() {
                        break;
                    }
                }
            })?;
        (Requests::Stream(tokio::sync::Mutex::new(rx)), Some(handle))
    } else {
        let mut g = make_gen();
        let pool = (0..args.pool).map(|_| next(&mut g)).collect::<Vec<_>>();
        (Requests::Pool(pool), None)
    };
    let requests = Arc::new(requests);

    eprintln!(
        "loadgen: {} over {:?} to {}, rate {}, batch {}, concurrency {}, {} users, {} sessions, mix {}",
        match duration {
            Some(d) => humantime::format_duration(d).to_string(),
            None => format!("{} records", limit.unwrap_or(0)),
        },
        args.protocol,
        args.endpoint,
        if args.rate == 0 { "max".into() } else { format!("{}/s", args.rate) },
        args.batch,
        args.concurrency,
        args.users,
        args.sessions,
        args.mix
    );

    let result = runtime.block_on(async {
        let clock = Clock {
            started: Instant::now(),
            start_ns,
        };
        let tickets = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for _ in 0..args.concurrency {
            let mut client = Client::connect(args.protocol, &args.endpoint).await?;
            let (stats, stop, tickets, requests) =
                (stats.clone(), stop.clone(), tickets.clone(), requests.clone());
            let (batch, rate) = (args.batch, args.rate);
            workers.push(tokio::spawn(async move {
                let mut first_error = None;
                loop {
                    let k = tickets.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed)
                        || limit.is_some_and(|n| k.saturating_mul(batch as u64) >= n)
                    {
                        break;
                    }
                    tokio::time::sleep_until((clock.started + due_after(k, batch, rate)).into())
                        .await;
                    let Some(req) = requests.get(k).await else { break };
                    let mut attempt = 0u32;
                    loop {
                        let body = req.at(clock.now_ns());
                        let t0 = Instant::now();
                        let outcome = client.send(req.signal, body).await;
                        stats.latency(t0.elapsed());
                        match outcome {
                            Outcome::Accepted(rejected) => {
                                stats.sent.fetch_add(req.records, Ordering::Relaxed);
                                stats
                                    .accepted
                                    .fetch_add(req.records.saturating_sub(rejected), Ordering::Relaxed);
                                stats.rejected.fetch_add(rejected, Ordering::Relaxed);
                                break;
                            }
                            Outcome::Refused if attempt < 10 => {
                                stats.refused.fetch_add(1, Ordering::Relaxed);
                                stats.retried.fetch_add(1, Ordering::Relaxed);
                                attempt += 1;
                                tokio::time::sleep(Duration::from_millis(50 * attempt as u64))
                                    .await;
                            }
                            Outcome::Refused => {
                                stats.refused.fetch_add(1, Ordering::Relaxed);
                                stats.failed.fetch_add(req.records, Ordering::Relaxed);
                                break;
                            }
                            Outcome::Failed(e) => {
                                stats.failed.fetch_add(req.records, Ordering::Relaxed);
                                first_error.get_or_insert(e);
                                break;
                            }
                        }
                    }
                }
                first_error
            }));
        }
        let probes = match (args.probe_every, &args.probe_alerts) {
            (Some(every), Some(path)) => Some(Probes::start(
                args.endpoint.clone(),
                every,
                path.clone(),
                clock,
                stop.clone(),
            )?),
            (Some(_), None) => bail!("--probe-every needs --probe-alerts (the alerts.jsonl of the vigil under test)"),
            _ => None,
        };
        let reporter = {
            let (stats, stop) = (stats.clone(), stop.clone());
            let every = args.report_every.max(Duration::from_millis(100));
            let json = args.json;
            tokio::spawn(async move {
                let mut last = (0u64, Instant::now());
                let mut tick = tokio::time::interval_at((Instant::now() + every).into(), every);
                loop {
                    tick.tick().await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut lat = std::mem::take(
                        &mut stats.latencies.lock().expect("no panics while held").0,
                    );
                    let sent = stats.sent.load(Ordering::Relaxed);
                    let rate = (sent - last.0) as f64 / last.1.elapsed().as_secs_f64();
                    last = (sent, Instant::now());
                    let line = format!(
                        "{:>6.1}s  {:>10.0} records/s  sent {sent}  accepted {}  rejected {}  refused {}  p50 {:.1} ms  p99 {:.1} ms",
                        clock.started.elapsed().as_secs_f64(),
                        rate,
                        stats.accepted.load(Ordering::Relaxed),
                        stats.rejected.load(Ordering::Relaxed),
                        stats.refused.load(Ordering::Relaxed),
                        quantile_ms(&mut lat, 0.5),
                        quantile_ms(&mut lat, 0.99),
                    );
                    // With --json, stdout carries only the summary.
                    if json {
                        eprintln!("{line}");
                    } else {
                        println!("{line}");
                    }
                }
            })
        };
        if let Some(d) = duration {
            let deadline = clock.started + d;
            while Instant::now() < deadline && !workers.iter().all(|w| w.is_finished()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.store(true, Ordering::Relaxed);
        }
        let mut errors = Vec::new();
        for w in workers {
            if let Some(e) = w.await? {
                errors.push(e);
            }
        }
        let elapsed = clock.started.elapsed();
        stop.store(true, Ordering::Relaxed);
        reporter.abort();
        let probe_report = match probes {
            Some(p) => Some(p.finish().await),
            None => None,
        };
        anyhow::Ok((elapsed, errors, probe_report))
    });
    stop.store(true, Ordering::Relaxed);
    drop(requests);
    if let Some(g) = generator {
        // The thread notices the closed channel or the stop flag.
        let _ = g.join();
    }
    let (elapsed, errors, probe_report) = result?;
    let mut all = std::mem::take(&mut stats.latencies.lock().expect("no panics while held").1);
    let s = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let (p50, p99) = (quantile_ms(&mut all, 0.5), quantile_ms(&mut all, 0.99));
    if args.json {
        let mut v = serde_json::json!({
            "sent": s(&stats.sent), "accepted": s(&stats.accepted), "rejected": s(&stats.rejected),
            "refused_requests": s(&stats.refused), "retried_requests": s(&stats.retried),
            "failed": s(&stats.failed), "elapsed_s": secs, "records_per_s": s(&stats.accepted) as f64 / secs,
            "requests": all.len(), "latency_p50_ms": p50, "latency_p99_ms": p99,
        });
        if let Some(p) = &probe_report {
            v["probes_sent"] = p.sent.into();
            v["probes_seen"] = p.seen.into();
            v["alert_latency_p50_ms"] = p.p50_ms.into();
            v["alert_latency_p99_ms"] = p.p99_ms.into();
        }
        println!("{v}");
    } else {
        println!(
            "done in {secs:.1}s: sent {} accepted {} rejected {} refused {} (retried {}) failed {}; {:.0} records/s accepted; request latency p50 {p50:.1} ms p99 {p99:.1} ms",
            s(&stats.sent),
            s(&stats.accepted),
            s(&stats.rejected),
            s(&stats.refused),
            s(&stats.retried),
            s(&stats.failed),
            s(&stats.accepted) as f64 / secs,
        );
        if let Some(p) = &probe_report {
            println!(
                "alert latency (send -> line in alerts.jsonl): {} probes, {} alerts seen, p50 {:.1} ms p99 {:.1} ms",
                p.sent, p.seen, p.p50_ms, p.p99_ms
            );
        }
    }
    for e in errors.iter().take(3) {
        eprintln!("loadgen: request failed: {e}");
    }
    Ok(if s(&stats.failed) > 0 {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// Records/s of `read` over `pool`, for `per`, on `n` threads at once, summed.
fn rate_on(
    pool: &[Encoded],
    per: Duration,
    n: usize,
    read: &(dyn Fn(&Encoded) -> usize + Sync),
) -> u64 {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let t0 = Instant::now();
                    let mut done = 0u64;
                    while t0.elapsed() < per {
                        for e in pool {
                            std::hint::black_box(read(e));
                            done += e.records;
                        }
                    }
                    done as f64 / t0.elapsed().as_secs_f64()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("decode thread") as u64)
            .sum()
    })
}

/// `--floor --protocol http-json`: the reference's decoding of the same
/// requests as OTLP/JSON (serde into prost types) against the receivers'
/// JSON reader, on one thread each.
fn floor_json(pool: &[Encoded], duration: Duration) -> Result<std::process::ExitCode> {
    let reference = |e: &Encoded| -> usize {
        match e.signal {
            Signal::Logs => ingest::json_decode::<ExportLogsServiceRequest>(&e.bytes)
                .expect("our own encoding decodes")
                .resource_logs
                .len(),
            Signal::Traces => ingest::json_decode::<ExportTraceServiceRequest>(&e.bytes)
                .expect("our own encoding decodes")
                .resource_spans
                .len(),
        }
    };
    let reader = |e: &Encoded| -> usize {
        let arena = ingest::json::Bump::new();
        match e.signal {
            Signal::Logs => ingest::json::decode_logs(&e.bytes, &arena).map(|r| r.records()),
            Signal::Traces => ingest::json::decode_traces(&e.bytes, &arena).map(|r| r.records()),
        }
        .expect("the receivers' reader takes loadgen's requests")
    };
    let bytes: usize = pool.iter().map(|e| e.bytes.len()).sum();
    let records: u64 = pool.iter().map(|e| e.records).sum();
    println!(
        "floor: OTLP/JSON of {} requests ({} bytes/record): serde into prost types {} records/s on 1 thread; receivers' read (ingest::json) {} records/s on 1 thread",
        pool.len(),
        bytes as u64 / records.max(1),
        rate_on(pool, duration / 2, 1, &reference),
        rate_on(pool, duration / 2, 1, &reader),
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// prost's owned decode of the pooled requests: the floor vigil is compared
/// with; and, beside it, the receivers' own read of the same bytes.
fn floor(pool: &[Encoded], duration: Duration) -> Result<std::process::ExitCode> {
    let decode = |e: &Encoded| -> usize {
        match e.signal {
            Signal::Logs => ExportLogsServiceRequest::decode(e.bytes.clone())
                .expect("our own encoding decodes")
                .resource_logs
                .len(),
            Signal::Traces => ExportTraceServiceRequest::decode(e.bytes.clone())
                .expect("our own encoding decodes")
                .resource_spans
                .len(),
        }
    };
    // What the receivers do instead: logs walked in place, spans by prost.
    let walk = |e: &Encoded| -> usize {
        match e.signal {
            Signal::Logs => ingest::wire::decode_logs(&e.bytes)
                .expect("our own encoding is read")
                .records(),
            Signal::Traces => decode(e),
        }
    };
    let bytes: usize = pool.iter().map(|e| e.bytes.len()).sum();
    let records: u64 = pool.iter().map(|e| e.records).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let walked = rate_on(pool, duration / 2, 1, &walk);
    let results: Vec<(usize, u64)> = [1, threads]
        .into_iter()
        .map(|n| (n, rate_on(pool, duration / 2, n, &decode)))
        .collect();
    println!(
        "floor: prost decode of {} requests ({} bytes/record): {} records/s on 1 thread, {} records/s on {} threads; receivers' read (logs walked by ingest::wire, spans by prost): {} records/s on 1 thread",
        pool.len(),
        bytes as u64 / records.max(1),
        results[0].1,
        results[1].1,
        results[1].0,
        walked
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// `--stages`: see [`crate::stages`].
fn stages(args: &LoadgenArgs, pool: &[Encoded], start_ns: u64) -> Result<std::process::ExitCode> {
    let config = crate::config::Config::load_or_default(args.config.as_deref())?;
    let wanted = args.records.unwrap_or(200_000).max(1);
    let rate = if args.rate > 0 { args.rate } else { 1_000_000 };
    // Each request is shifted as it is needed: the run's memory stays flat.
    let requests = || {
        let mut records = 0;
        pool.iter().cycle().map_while(move |e| {
            if records >= wanted {
                return None;
            }
            records += e.records;
            let end_ns = start_ns + (records as u128 * 1_000_000_000 / rate as u128) as u64;
            let bytes = e.at(end_ns);
            Some(match (e.signal, e.json) {
                (Signal::Logs, false) => ingest::Payload::LogsBytes(bytes),
                (Signal::Logs, true) => ingest::Payload::LogsJson(bytes),
                (Signal::Traces, false) => ingest::Payload::TracesBytes(bytes),
                (Signal::Traces, true) => ingest::Payload::TracesJson(bytes),
            })
        })
    };
    let scratch = crate::scratch::Scratch::new("stages")?;
    let report = crate::stages::measure(&config, requests, &scratch.0, args.per_rule)?;
    // Written, not printed: a reader that stops early (`| head`) ends the
    // output with an error instead of a panic.
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "stages: {} records in {} requests, one stage at a time on 1 thread; CPU per record:",
        report.records, report.requests
    )?;
    for s in &report.stages {
        writeln!(
            out,
            "  {:<10} {:>6.2} us  {}",
            s.name, s.us_per_record, s.what
        )?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    writeln!(
        out,
        "  {:<10} {:>6.2} us  = {:.0} records/s on 1 core, {:.0} on {cores} (without the OTLP transport and the handoffs between threads)",
        "total",
        report.total_us_per_record,
        report.per_core(),
        report.per_core() * cores as f64,
    )?;
    if !report.rules.is_empty() {
        writeln!(out, "each active rule alone, over the same records:")?;
        for r in &report.rules {
            writeln!(
                out,
                "  {:>6.2} us  {} ({} alerts)",
                r.us_per_record, r.id, r.alerts
            )?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// Alert latency probes

struct ProbeReport {
    sent: u64,
    seen: u64,
    p50_ms: f64,
    p99_ms: f64,
}

struct Probes {
    sender: tokio::task::JoinHandle<()>,
    watcher: std::thread::JoinHandle<Vec<u32>>,
    sent: Arc<Mutex<HashMap<String, Instant>>>,
    watching: Arc<AtomicBool>,
}

impl Probes {
    fn start(
        endpoint: String,
        every: Duration,
        alerts: PathBuf,
        clock: Clock,
        stop: Arc<AtomicBool>,
    ) -> Result<Probes> {
        let run = now_ns() & 0xffff_ffff;
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let watching = Arc::new(AtomicBool::new(true));
        // Start reading where the file ends now: earlier alerts are not ours.
        let offset = std::fs::metadata(&alerts).map_or(0, |m| m.len());
        let watcher = {
            let (sent, watching) = (sent.clone(), watching.clone());
            std::thread::Builder::new()
                .name("loadgen-probe".into())
                .spawn(move || watch_alerts(&alerts, offset, &sent, &watching))?
        };
        let sender = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let Ok(mut client) = Client::connect(Protocol::Grpc, &endpoint).await else {
                    return;
                };
                let mut tick = tokio::time::interval(every);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let req = probe_request(run, n, clock.now_ns()).encode_to_vec();
                    sent.lock()
                        .expect("no panics while held")
                        .insert(format!("probe-{run:x}-{n}"), Instant::now());
                    let _ = client.send(Signal::Logs, Bytes::from(req)).await;
                    n += 1;
                }
            })
        };
        Ok(Probes {
            sender,
            watcher,
            sent,
            watching,
        })
    }

    async fn finish(self) -> ProbeReport {
        let _ = self.sender.await;
        // The last probes need a later event (or the idle timeout) to pass the watermark.
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.watching.store(false, Ordering::Relaxed);
        let mut lat = tokio::task::spawn_blocking(move || self.watcher.join().unwrap_or_default())
            .await
            .unwrap_or_default();
        let sent = self.sent.lock().expect("no panics while held").len() as u64 + lat.len() as u64;
        ProbeReport {
            sent,
            seen: lat.len() as u64,
            p50_ms: quantile_ms(&mut lat, 0.5),
            p99_ms: quantile_ms(&mut lat, 0.99),
        }
    }
}

/// Polls alerts.jsonl every millisecond; a probe's latency is from its send
/// to the poll that first sees its alert line (so up to 1 ms late).
fn watch_alerts(
    path: &std::path::Path,
    mut offset: u64,
    sent: &Mutex<HashMap<String, Instant>>,
    watching: &AtomicBool,
) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut line = String::new();
    while watching.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1));
        let Ok(mut f) = std::fs::File::open(path) else {
            continue;
        };
        if f.seek(SeekFrom::Start(offset)).is_err() {
            continue;
        }
        let mut reader = BufReader::new(f);
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') => offset += n as u64,
                _ => break,
            }
            let seen = Instant::now();
            if !line.contains("\"probe-") {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["rule_id"] != "sensitive-file-read" {
                continue;
            }
            if let Some(session) = v["session"].as_str() {
                if let Some(t0) = sent.lock().expect("no panics while held").remove(session) {
                    latencies.push(seen.duration_since(t0).as_micros() as u32);
                }
            }
        }
    }
    latencies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator(seed: u64, mix: &str) -> Generator {
        Generator::new(seed, Mix::parse(mix).unwrap(), 100, 1000, 200, false)
    }

    #[test]
    fn the_same_seed_gives_the_same_requests() {
        let (mut a, mut b, mut c) = (
            generator(7, "agent=70,ai_gateway=10,mcp_gateway=10,endpoint=10"),
            generator(7, "agent=70,ai_gateway=10,mcp_gateway=10,endpoint=10"),
            generator(8, "agent=70,ai_gateway=10,mcp_gateway=10,endpoint=10"),
        );
        for _ in 0..5 {
            let (x, y, z) = (a.next_request(), b.next_request(), c.next_request());
            assert_eq!(x.bytes, y.bytes);
            assert_ne!(x.bytes, z.bytes);
        }
    }

    #[test]
    fn records_follow_the_mix() {
        let mix = Mix::parse("agent=70,ai_gateway=10,mcp_gateway=10,endpoint=10").unwrap();
        let mut rng = Rng(3);
        let mut counts: HashMap<Family, u64> = HashMap::new();
        let n = 100_000;
        for _ in 0..n {
            *counts.entry(mix.pick(rng.next())).or_default() += 1;
        }
        let share = |f| counts[&f] as f64 / n as f64;
        assert!((share(Family::Agent) - 0.70).abs() < 0.01);
        for f in [Family::AiGateway, Family::McpGateway, Family::Endpoint] {
            assert!((share(f) - 0.10).abs() < 0.01, "{f:?}: {}", share(f));
        }
        assert!(Mix::parse("agent=0").is_err());
        assert!(Mix::parse("agents=1").is_err());
        assert_eq!(
            Mix::parse("endpoint=1").unwrap().pick(12345),
            Family::Endpoint
        );
    }

    #[test]
    fn requests_decode_and_carry_every_record() {
        let mut g = generator(1, "agent=50,ai_gateway=20,mcp_gateway=20,endpoint=10");
        let (mut logs, mut spans) = (0, 0);
        for _ in 0..10 {
            let e = g.next_request();
            assert_eq!(e.records, 200);
            assert_eq!(e.stamps.len(), 400);
            match e.signal {
                Signal::Logs => {
                    let r = ExportLogsServiceRequest::decode(e.bytes.clone()).unwrap();
                    logs += r
                        .resource_logs
                        .iter()
                        .map(|r| r.scope_logs[0].log_records.len())
                        .sum::<usize>();
                }
                Signal::Traces => {
                    let r = ExportTraceServiceRequest::decode(e.bytes.clone()).unwrap();
                    spans += r
                        .resource_spans
                        .iter()
                        .map(|r| r.scope_spans[0].spans.len())
                        .sum::<usize>();
                }
            }
        }
        assert_eq!(logs + spans, 2000);
        assert!(logs > spans);
    }

    #[test]
    fn shifted_times_end_at_the_send_time() {
        let mut g = generator(1, "agent=1");
        let e = g.next_request();
        let end = 1_773_154_800_000_000_000;
        let r = ExportLogsServiceRequest::decode(e.at(end)).unwrap();
        let recs = &r.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(recs.last().unwrap().time_unix_nano, end);
        assert_eq!(recs[0].time_unix_nano, end - 199 * STEP_NS);
        assert!(recs
            .iter()
            .all(|r| r.observed_time_unix_nano == r.time_unix_nano));
    }

    #[test]
    fn json_requests_are_the_same_requests_shifted_the_same_way() {
        let mut g = generator(3, "agent=50,ai_gateway=25,mcp_gateway=25");
        let end = 1_773_154_800_000_000_000;
        for _ in 0..6 {
            let e = g.next_request();
            let proto = e.at(end);
            let json = e.into_json();
            assert_eq!(json.stamps.len() as u64, json.records * 2);
            let body = json.at(end);
            match json.signal {
                Signal::Logs => assert_eq!(
                    serde_json::from_slice::<ExportLogsServiceRequest>(&body).unwrap(),
                    ExportLogsServiceRequest::decode(proto).unwrap()
                ),
                Signal::Traces => assert_eq!(
                    serde_json::from_slice::<ExportTraceServiceRequest>(&body).unwrap(),
                    ExportTraceServiceRequest::decode(proto).unwrap()
                ),
            }
            // What vigil's OTLP/JSON reader takes without the reference.
            let arena = ingest::json::Bump::new();
            match json.signal {
                Signal::Logs => assert!(ingest::json::decode_logs(&body, &arena).is_some()),
                Signal::Traces => assert!(ingest::json::decode_traces(&body, &arena).is_some()),
            }
        }
    }

    #[test]
    fn sweep_gives_each_session_a_prompt_then_a_tool_call() {
        let mut g = Generator::new(1, Mix::parse("agent=1").unwrap(), 10, 50, 100, true);
        let r = ExportLogsServiceRequest::decode(g.next_request().bytes).unwrap();
        let recs = &r.resource_logs[0].scope_logs[0].log_records;
        let attr = |r: &LogRecord, k: &str| {
            r.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| match &a.value {
                    Some(AnyValue {
                        value: Some(any_value::Value::StringValue(s)),
                    }) => Some(s.clone()),
                    _ => None,
                })
        };
        let sessions: std::collections::HashSet<_> = recs
            .iter()
            .map(|r| attr(r, "session.id").unwrap())
            .collect();
        assert_eq!(sessions.len(), 50);
        for pair in recs.chunks(2) {
            assert_eq!(attr(&pair[0], "event.name").unwrap(), "user_prompt");
            assert_eq!(attr(&pair[1], "event.name").unwrap(), "tool_result");
            assert_eq!(attr(&pair[0], "session.id"), attr(&pair[1], "session.id"));
        }
    }

    #[test]
    fn pacing_spreads_requests_over_the_second() {
        assert_eq!(due_after(0, 1000, 100_000), Duration::ZERO);
        assert_eq!(due_after(100, 1000, 100_000), Duration::from_secs(1));
        assert_eq!(due_after(5, 1000, 10_000), Duration::from_millis(500));
        assert_eq!(due_after(1_000_000, 1000, 0), Duration::ZERO);
    }

    #[test]
    fn quantiles_pick_from_the_sorted_latencies() {
        let mut v: Vec<u32> = (1..=100).rev().map(|ms| ms * 1000).collect();
        assert_eq!(quantile_ms(&mut v, 0.5), 51.0);
        assert_eq!(quantile_ms(&mut v, 0.99), 99.0);
        assert_eq!(quantile_ms(&mut [], 0.99), 0.0);
    }
}
