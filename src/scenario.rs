//! Scenario files: stories of agent activity, attack or benign, with the
//! alerts they must raise (`expect`) and the rules that must stay silent
//! (`expect_none`), in the format of vigil's acceptance scenarios (see
//! tests/scenarios/README.md). `vigil demo` sends them over OTLP;
//! `vigil rules test --scenario` ([`check_all`]) runs each through the
//! mappings and rules in process and checks its expectations, so a detection
//! engineer can test a rule pack against stories without a server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::Config;

/// One scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// What the story is about (for its readers; vigil does not use it).
    #[serde(default, rename = "description")]
    pub _description: String,
    /// Event times are this plus each record's `at`.
    pub base_time: String,
    /// A fragment of vigil.yaml the scenario needs (lists, business hours).
    #[serde(default)]
    pub config: Option<Value>,
    pub records: Vec<RecordSpec>,
    #[serde(default)]
    pub expect: Vec<Expected>,
    #[serde(default)]
    pub expect_none: Vec<String>,
}

/// A record of a scenario, repeated `repeat` times `every` apart.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    #[serde(default = "plus_zero")]
    pub at: String,
    pub signal: SignalSpec,
    #[serde(default)]
    pub resource: Map<String, Value>,
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// Logs: the body (a string or any JSON value) and severity text.
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub severity: Option<String>,
    /// Spans: name, kind, duration and status.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub kind: Option<SpanKindSpec>,
    #[serde(default)]
    pub duration_ms: Option<f64>,
    #[serde(default)]
    pub status: Option<StatusSpec>,
    #[serde(default)]
    pub status_message: Option<String>,
    #[serde(default)]
    pub repeat: Option<u64>,
    #[serde(default)]
    pub every: Option<String>,
    /// Arrives this late: after the records up to `at + delay`.
    #[serde(default)]
    pub delay: Option<String>,
}

fn plus_zero() -> String {
    "+0s".into()
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignalSpec {
    Log,
    Span,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum SpanKindSpec {
    Client,
    Server,
    Internal,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StatusSpec {
    Ok,
    Error,
}

/// An alert the scenario must raise exactly once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub rule_id: String,
    /// `null`: an alert with no user.
    pub user: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
}

/// One sending of a record: its event time and when it arrives.
pub struct Instance<'a> {
    /// Order of arrival among the scenario's records.
    pub seq: usize,
    pub arrival_ns: i64,
    pub time_ns: i64,
    pub record: &'a RecordSpec,
}

impl Scenario {
    /// Reads a scenario; errors name the file, line and column.
    pub fn parse(text: &str, name: &str) -> Result<Scenario> {
        let s: Scenario = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{name}:{}:{}: {e}", e.line(), e.column()))?;
        if event::parse_rfc3339_ns(&s.base_time).is_none() {
            bail!(
                "{name}: base_time {:?} is not an RFC 3339 time (2026-03-10T15:00:00Z)",
                s.base_time
            );
        }
        Ok(s)
    }

    /// Every sending of every record, in order of arrival (`at + delay`,
    /// then the order of the file), as a merged live stream would bring them.
    pub fn instances(&self) -> Result<Vec<Instance<'_>>> {
        let base = event::parse_rfc3339_ns(&self.base_time).context("bad base_time")?;
        let ns = |secs: f64| base.saturating_add((secs * 1e9).round() as i64);
        let mut out = Vec::new();
        for (i, rec) in self.records.iter().enumerate() {
            let what = |field: &str| format!("records[{i}].{field}");
            let at = parse_offset(&rec.at).with_context(|| what("at"))?;
            let every = parse_offset(rec.every.as_deref().unwrap_or("0s"))
                .with_context(|| what("every"))?;
            let delay = parse_offset(rec.delay.as_deref().unwrap_or("0s"))
                .with_context(|| what("delay"))?;
            if rec.signal == SignalSpec::Span && rec.name.is_none() {
                bail!("records[{i}]: a span needs a name");
            }
            for k in 0..rec.repeat.unwrap_or(1) {
                let t = at + k as f64 * every;
                out.push(Instance {
                    seq: out.len(),
                    arrival_ns: ns(t + delay),
                    time_ns: ns(t),
                    record: rec,
                });
            }
        }
        out.sort_by_key(|i| (i.arrival_ns, i.seq));
        Ok(out)
    }
}

/// `+1h30m` -> 5400.0 seconds, `-5m` -> -300.0, `250ms` -> 0.25.
pub fn parse_offset(text: &str) -> Result<f64> {
    let t = text.trim();
    let (sign, body) = match t.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, t.strip_prefix('+').unwrap_or(t)),
    };
    if body.is_empty() {
        bail!("bad offset {text:?}: empty");
    }
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
                _ => bail!("bad offset {text:?}: units are ms, s, m, h and d"),
            }
        };
        let n: f64 = num
            .parse()
            .with_context(|| format!("bad offset {text:?}: a unit without a number"))?;
        total += n * unit;
        num.clear();
    }
    if !num.is_empty() {
        bail!("bad offset {text:?}: a number without a unit");
    }
    Ok(sign * total)
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
        Value::Object(m) => any_value::Value::KvlistValue(KeyValueList { values: kvs(m) }),
        Value::Null => return AnyValue { value: None },
    };
    AnyValue { value: Some(value) }
}

fn kvs(m: &Map<String, Value>) -> Vec<KeyValue> {
    m.iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(any(v)),
            ..Default::default()
        })
        .collect()
}

/// A span attribute as the OpenTelemetry SDK keeps it: scalars and lists of
/// one scalar type; maps, nulls and mixed lists are dropped.
fn span_attribute(v: &Value) -> bool {
    let scalar_type = |v: &Value| match v {
        Value::String(_) => Some(0),
        Value::Bool(_) => Some(1),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(2),
        Value::Number(_) => Some(3),
        _ => None,
    };
    match v {
        Value::Array(a) => {
            let mut types = a.iter().map(scalar_type);
            match types.next() {
                None => true,
                Some(first) => first.is_some() && types.all(|t| t == first),
            }
        }
        v => scalar_type(v).is_some(),
    }
}

/// The resource as the SDK sends it: `service.name` defaults to
/// `unknown_service`.
fn resource(attrs: &Map<String, Value>) -> Resource {
    let mut attrs = attrs.clone();
    attrs
        .entry("service.name")
        .or_insert_with(|| Value::String("unknown_service".into()));
    Resource {
        attributes: kvs(&attrs),
        ..Default::default()
    }
}

/// Groups records into one logs and one traces request, a resource per
/// distinct resource, each record shaped as the OpenTelemetry SDK sends it
/// (scope `scenario`, severity number INFO).
pub fn requests(chunk: &[Instance<'_>]) -> (ExportLogsServiceRequest, ExportTraceServiceRequest) {
    let mut logs: BTreeMap<String, (Resource, Vec<LogRecord>)> = BTreeMap::new();
    let mut spans: BTreeMap<String, (Resource, Vec<Span>)> = BTreeMap::new();
    for inst in chunk {
        let r = inst.record;
        let key = Value::Object(r.resource.clone()).to_string();
        let time = u64::try_from(inst.time_ns).unwrap_or(0);
        match r.signal {
            SignalSpec::Span => {
                let kind = match r.kind {
                    Some(SpanKindSpec::Client) => span::SpanKind::Client,
                    Some(SpanKindSpec::Server) => span::SpanKind::Server,
                    _ => span::SpanKind::Internal,
                };
                let duration_ms = r.duration_ms.unwrap_or(10.0);
                let seq = inst.seq as u64 + 1;
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&time.to_be_bytes());
                trace_id[8..].copy_from_slice(&seq.to_be_bytes());
                let attributes: Map<String, Value> = r
                    .attributes
                    .iter()
                    .filter(|(_, v)| span_attribute(v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let entry = spans
                    .entry(key)
                    .or_insert_with(|| (resource(&r.resource), Vec::new()));
                entry.1.push(Span {
                    trace_id: trace_id.to_vec(),
                    span_id: (time ^ seq).to_be_bytes().to_vec(),
                    name: r.name.clone().unwrap_or_default(),
                    kind: kind as i32,
                    start_time_unix_nano: time,
                    end_time_unix_nano: time + (duration_ms * 1e6) as u64,
                    attributes: kvs(&attributes),
                    status: (r.status == Some(StatusSpec::Error)).then(|| Status {
                        code: status::StatusCode::Error as i32,
                        message: r.status_message.clone().unwrap_or_default(),
                    }),
                    ..Default::default()
                });
            }
            SignalSpec::Log => {
                let entry = logs
                    .entry(key)
                    .or_insert_with(|| (resource(&r.resource), Vec::new()));
                entry.1.push(LogRecord {
                    time_unix_nano: time,
                    observed_time_unix_nano: time,
                    severity_number: 9,
                    severity_text: r.severity.clone().unwrap_or_else(|| "INFO".into()),
                    body: r.body.as_ref().map(any),
                    attributes: kvs(&r.attributes),
                    ..Default::default()
                });
            }
        }
    }
    let scope = || {
        Some(
            opentelemetry_proto::tonic::common::v1::InstrumentationScope {
                name: "scenario".into(),
                ..Default::default()
            },
        )
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: logs
            .into_values()
            .map(|(resource, log_records)| ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    scope: scope(),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    let traces = ExportTraceServiceRequest {
        resource_spans: spans
            .into_values()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    scope: scope(),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    (logs, traces)
}

/// What one scenario came to.
pub struct Outcome {
    pub name: String,
    pub file: PathBuf,
    pub records: usize,
    pub alerts: Vec<event::Alert>,
    /// Why it failed; empty when it passed.
    pub problems: Vec<String>,
}

/// The scenario files named: files as they are, folders' `*.json` (their
/// subfolders' too, a group of scenarios each) in path order.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for f in entries {
            if f.is_dir() {
                walk(&f, out)?;
            } else if f.is_file() && f.extension().is_some_and(|x| x == "json") {
                out.push(f);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let before = out.len();
            walk(p, &mut out)?;
            if out.len() == before {
                bail!("{} holds no scenario files (*.json)", p.display());
            }
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("{}: no such scenario file or folder", p.display());
        }
    }
    Ok(out)
}

/// `base` with the scenario's `config` over it: sections merge key by key,
/// while a list and `business_hours` are replaced whole (as in a rule test's
/// `config:`).
fn merged_config(base: &serde_yaml::Value, fragment: &Value, name: &str) -> Result<Config> {
    // The fragment alone first, so that its mistakes are named as its own.
    let text = serde_json::to_string_pretty(fragment)?;
    Config::parse(&text, &format!("{name}: config"))?;
    fn merge(into: &mut serde_yaml::Value, over: serde_yaml::Value, top: bool) {
        match (into, over) {
            (serde_yaml::Value::Mapping(a), serde_yaml::Value::Mapping(b)) => {
                for (k, v) in b {
                    let whole = top && k.as_str() == Some("business_hours");
                    match a.get_mut(&k) {
                        Some(slot) if !whole => merge(slot, v, false),
                        _ => {
                            a.insert(k, v);
                        }
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let mut value = base.clone();
    if !value.is_mapping() {
        value = serde_yaml::Value::Mapping(Default::default());
    }
    merge(&mut value, serde_yaml::to_value(fragment)?, true);
    Config::parse(
        &serde_yaml::to_string(&value)?,
        &format!("{name}: config over --config"),
    )
}

/// Runs one scenario through the mappings and rules of `config`, in
/// process: each record is normalized as `vigil serve` normalizes it when it
/// arrives (one request per record, received at its arrival time), the
/// engine takes the events in that order and is flushed at the end, as at a
/// shutdown.
fn run_one(file: &Path, base: &serde_yaml::Value, rules_config: &Config) -> Result<Outcome> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {name}"))?;
    let scenario = Scenario::parse(&text, &name)?;
    let mut config = match &scenario.config {
        Some(fragment) => merged_config(base, fragment, &name)?,
        None => rules_config.clone(),
    };
    config.rules.clone_from(&rules_config.rules);
    config.default_rules = rules_config.default_rules;
    let set = rules::load(config.default_rules, &config.rules, &config.rules_context())
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let mut problems = Vec::new();
    let expected: std::collections::BTreeSet<&String> =
        scenario.expect.iter().map(|e| &e.rule_id).collect();
    for rule in expected.iter().copied().chain(&scenario.expect_none) {
        match set.rules().iter().find(|r| &r.id == rule) {
            None => problems.push(format!("names rule `{rule}`, which is not loaded")),
            // Why an expected alert cannot come; a silent rule is silent.
            Some(r) if expected.contains(rule) && (!r.enabled || r.inactive_reason.is_some()) => {
                problems.push(format!(
                    "rule `{rule}` is not active: {}",
                    r.inactive_reason.as_deref().unwrap_or("disabled")
                ))
            }
            Some(_) => {}
        }
    }
    let mappings = ingest::MappingSet::load(&config.mappings)
        .map_err(|e| anyhow::anyhow!("{name}: loading mappings: {e}"))?;
    let normalizer = ingest::Normalizer::new(std::sync::Arc::new(mappings))
        .with_max_clock_ahead(config.ingest.max_clock_ahead);
    let mut engine = rules::Engine::new(set, config.engine.engine_config());
    let instances = scenario
        .instances()
        .map_err(|e| anyhow::anyhow!("{name}: {e:#}"))?;
    let mut alerts = Vec::new();
    for inst in &instances {
        let (logs, traces) = requests(std::slice::from_ref(inst));
        let n = if inst.record.signal == SignalSpec::Log {
            normalizer.logs(&logs, &config.tenant, inst.arrival_ns)
        } else {
            normalizer.traces(&traces, &config.tenant, inst.arrival_ns)
        };
        if let Some(e) = n.error {
            problems.push(format!("record {} refused: {e}", inst.seq));
        }
        alerts.extend(engine.push(n.events));
    }
    alerts.extend(engine.finish());
    problems.extend(judge(&scenario, &alerts));
    let records = instances.len();
    drop(instances);
    Ok(Outcome {
        name: scenario.name,
        file: file.to_path_buf(),
        records,
        alerts,
        problems,
    })
}

fn matches(alert: &event::Alert, want: &Expected) -> bool {
    alert.rule_id == want.rule_id
        && alert.user == want.user
        && want
            .session
            .as_ref()
            .is_none_or(|s| alert.session.as_deref() == Some(s.as_str()))
}

fn describe(a: &event::Alert) -> String {
    format!(
        "{} user={} session={}: {}",
        a.rule_id,
        a.user.as_deref().unwrap_or("-"),
        a.session.as_deref().unwrap_or("-"),
        a.summary
    )
}

/// What the alerts miss or add against the scenario's expectations: each
/// expected alert exactly once, nothing else, nothing of `expect_none`.
fn judge(scenario: &Scenario, alerts: &[event::Alert]) -> Vec<String> {
    let mut problems = Vec::new();
    for want in &scenario.expect {
        let n = alerts.iter().filter(|a| matches(a, want)).count();
        if n != 1 {
            problems.push(format!(
                "expected {} user={}{} once, fired {n} times",
                want.rule_id,
                want.user.as_deref().unwrap_or("-"),
                want.session
                    .as_deref()
                    .map(|s| format!(" session={s}"))
                    .unwrap_or_default()
            ));
        }
    }
    for a in alerts {
        if scenario.expect_none.contains(&a.rule_id) {
            problems.push(format!("must stay silent: {}", describe(a)));
        } else if !scenario.expect.iter().any(|w| matches(a, w)) {
            problems.push(format!("unexpected: {}", describe(a)));
        }
    }
    problems
}

/// Runs every scenario of `paths` against the rules of `rules_config` (its
/// rule files and default pack), each with its own `config` over the
/// configuration file `base_path` (or vigil's defaults).
pub fn check_all(
    paths: &[PathBuf],
    base_path: Option<&Path>,
    rules_config: &Config,
) -> Result<Vec<Outcome>> {
    let base: serde_yaml::Value = match base_path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read the configuration", p.display()))?;
            serde_yaml::from_str(&text).with_context(|| format!("{}", p.display()))?
        }
        None => serde_yaml::Value::Null,
    };
    // A scenario that cannot be run fails alone; the others still run.
    Ok(files(paths)?
        .iter()
        .map(|f| {
            run_one(f, &base, rules_config).unwrap_or_else(|e| Outcome {
                name: f
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                file: f.clone(),
                records: 0,
                alerts: Vec::new(),
                problems: vec![format!("{e:#}")],
            })
        })
        .collect())
}

/// The outcomes as a pass/fail table, then what failed and why.
pub fn print_table(outcomes: &[Outcome], w: &mut impl std::io::Write) -> std::io::Result<()> {
    let nw = outcomes
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    writeln!(
        w,
        "{:<6} {:<nw$} {:>7} {:>6} FILE",
        "RESULT", "SCENARIO", "RECORDS", "ALERTS"
    )?;
    for o in outcomes {
        let r = if o.problems.is_empty() {
            "pass"
        } else {
            "FAIL"
        };
        writeln!(
            w,
            "{:<6} {:<nw$} {:>7} {:>6} {}",
            r,
            o.name,
            o.records,
            o.alerts.len(),
            o.file.display()
        )?;
    }
    for o in outcomes.iter().filter(|o| !o.problems.is_empty()) {
        writeln!(w, "\nFAIL {} ({}):", o.name, o.file.display())?;
        for p in &o.problems {
            writeln!(w, "  {p}")?;
        }
    }
    let failed = outcomes.iter().filter(|o| !o.problems.is_empty()).count();
    writeln!(
        w,
        "\n{} scenarios passed, {failed} failed",
        outcomes.len() - failed
    )
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
        assert_eq!(parse_offset("90s").unwrap(), 90.0);
        for bad in ["+5", "+5y", "", "+", "h"] {
            assert!(parse_offset(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn folders_give_their_json_files_and_their_subfolders_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "b.json",
            "a.json",
            "notes.md",
            "g2/z.json",
            "g1/y.json",
            "g1/deep/x.json",
        ] {
            let path = root.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "{}").unwrap();
        }
        let names: Vec<String> = files(&[root.to_path_buf()])
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "a.json",
                "b.json",
                "g1/deep/x.json",
                "g1/y.json",
                "g2/z.json"
            ]
        );
        std::fs::create_dir_all(root.join("empty/sub")).unwrap();
        let err = files(&[root.join("empty")]).unwrap_err().to_string();
        assert!(err.contains("holds no scenario files"), "{err}");
    }

    const STORY: &str = r#"{
      "name": "t", "base_time": "2026-03-10T15:00:00Z",
      "records": [
        {"at": "+10s", "signal": "log", "resource": {"service.name": "claude-code"},
         "body": "claude_code.tool_result", "attributes": {"tool_name": "Read"}},
        {"at": "+0s", "signal": "span", "name": "tools/call x", "kind": "server",
         "attributes": {"a": 1, "m": {"k": "v"}, "l": ["x", 2]},
         "repeat": 3, "every": "5s"},
        {"at": "+1s", "signal": "log", "body": {"k": "v"}, "delay": "20s"}
      ],
      "expect": [{"rule_id": "r", "user": "u"}]
    }"#;

    #[test]
    fn records_arrive_in_the_order_of_at_plus_delay() {
        let s = Scenario::parse(STORY, "t.json").unwrap();
        let order: Vec<(i64, usize)> = s
            .instances()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    (i.arrival_ns - 1_773_154_800_000_000_000) / 1_000_000_000,
                    i.seq,
                )
            })
            .collect();
        // The spans at 0, 5 and 10 s; the log at 10 s; the late log at 1 + 20 s.
        assert_eq!(order, [(0, 1), (5, 2), (10, 0), (10, 3), (21, 4)]);
        let late = s.instances().unwrap().pop().unwrap();
        assert_eq!(late.time_ns, 1_773_154_801_000_000_000);
    }

    #[test]
    fn records_become_what_the_sdk_sends() {
        let s = Scenario::parse(STORY, "t.json").unwrap();
        let all = s.instances().unwrap();
        let (logs, traces) = requests(&all);
        assert_eq!(logs.resource_logs.len(), 2, "a resource each");
        let unnamed = logs
            .resource_logs
            .iter()
            .find(|r| {
                r.resource.as_ref().unwrap().attributes[0].value
                    == Some(any(&Value::String("unknown_service".into())))
            })
            .expect("the SDK's default service name");
        assert_eq!(
            unnamed.scope_logs[0].log_records[0].body,
            Some(any(&serde_json::json!({"k": "v"})))
        );
        let spans = &traces.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 3);
        // The SDK drops a map and a list of mixed types from span attributes.
        let keys: Vec<&str> = spans[0].attributes.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["a"]);
        let ids: std::collections::HashSet<&Vec<u8>> = spans.iter().map(|s| &s.trace_id).collect();
        assert_eq!(ids.len(), 3, "a trace each");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let typo = STORY.replace("\"repeat\"", "\"repaet\"");
        let e = Scenario::parse(&typo, "t.json").unwrap_err().to_string();
        assert!(e.contains("t.json:") && e.contains("repaet"), "{e}");
        let bad = STORY.replace("+10s", "+10y");
        let e = format!(
            "{:#}",
            Scenario::parse(&bad, "t.json")
                .unwrap()
                .instances()
                .err()
                .unwrap()
        );
        assert!(e.contains("records[0].at") && e.contains("+10y"), "{e}");
        let e = Scenario::parse(&STORY.replace("2026-03-10T15:00:00Z", "today"), "t.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("base_time"), "{e}");
    }

    #[test]
    fn the_scenario_config_goes_over_the_file() {
        let base: serde_yaml::Value = serde_yaml::from_str(
            "lists:\n  internal_domains: [corp.example]\n  approved_mcp_domains: [a.example]\n\
             business_hours:\n  timezone: Europe/Berlin\n  users:\n    x@example.com: {timezone: Asia/Tokyo}\n\
             engine:\n  allowed_lateness: 10s\n",
        )
        .unwrap();
        let fragment = serde_json::json!({
            "lists": {"approved_mcp_domains": ["b.example"]},
            "business_hours": {"timezone": "America/New_York"},
            "engine": {"idle_timeout": "3s"}
        });
        let c = merged_config(&base, &fragment, "s.json").unwrap();
        // Lists are replaced by name, business hours as a whole, sections merge.
        assert_eq!(c.lists.0["approved_mcp_domains"], ["b.example"]);
        assert_eq!(c.lists.0["internal_domains"], ["corp.example"]);
        assert_eq!(c.business_hours.timezone.name(), "America/New_York");
        assert!(c.business_hours.users.is_empty());
        assert_eq!(
            c.engine.allowed_lateness,
            std::time::Duration::from_secs(10)
        );
        assert_eq!(c.engine.idle_timeout, std::time::Duration::from_secs(3));
        // A mistake in the fragment is named as the scenario's.
        let e = merged_config(&base, &serde_json::json!({"lits": {}}), "s.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.json: config") && e.contains("lits"), "{e}");
    }

    fn alert(rule: &str, user: &str, session: Option<&str>) -> event::Alert {
        event::Alert {
            rule_id: rule.into(),
            user: Some(user.into()),
            session: session.map(Into::into),
            summary: "s".into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_expected_alert_once_and_nothing_else() {
        let mut s = Scenario::parse(STORY, "t.json").unwrap();
        s.expect_none = vec!["quiet".into()];
        s.expect[0].session = Some("s1".into());
        assert!(judge(&s, &[alert("r", "u", Some("s1"))]).is_empty());
        let p = judge(&s, &[]);
        assert_eq!(p, ["expected r user=u session=s1 once, fired 0 times"]);
        let p = judge(
            &s,
            &[
                alert("r", "u", Some("s1")),
                alert("r", "u", Some("s1")),
                alert("r", "u", Some("s2")),
                alert("quiet", "u", None),
            ],
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("fired 2 times"));
        assert!(p[1].starts_with("unexpected: r user=u session=s2"));
        assert!(p[2].starts_with("must stay silent: quiet"));
    }
}
