//! The records every stage of vigil shares: the normalized [`Event`] that ingest
//! produces from OTLP, and the [`Alert`] that the rules engine produces from events.
//!
//! Nothing here knows about OTLP, Kafka or Parquet. The Arrow schemas of both
//! records live in [`schema`] so that the archive writer and the replay reader
//! agree on one definition.

pub mod attrs;
pub mod schema;
pub mod wire;

pub use attrs::Attrs;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// Version of the alert JSON document (docs/alert-schema.md). Bumped on any
/// change a consumer could notice.
pub const ALERT_SCHEMA_VERSION: u32 = 1;

/// Version of the event record (docs/event-schema.md and the archive schema).
/// 2: a tool call's arguments are attributes `args.<member>` (see
/// [`ARGS_PREFIX`]); records of version 1 are read as such.
pub const EVENT_SCHEMA_VERSION: u32 = 2;

/// The attributes that held tool arguments in records of version 1, under
/// each product's name; a reader of such records names them `args.*`.
pub const V1_ARGUMENT_ROOTS: &[&str] = &[
    "tool_input",
    "arguments",
    "function_args",
    "gen_ai.tool.call.arguments",
    "gcp.vertex.agent.tool_call_args",
    "tool_arguments",
    "tfy.input",
    "input.value",
];

/// Tenant used when authentication is off and no mapping names one.
pub const DEFAULT_TENANT: &str = "default";

/// Which family of sender produced a record.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Agent,
    AiGateway,
    McpGateway,
    Endpoint,
    #[default]
    Unknown,
}

/// What happened, in vigil's vocabulary. Rules select on this first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    UserPrompt,
    ModelCall,
    ToolCall,
    ToolDecision,
    McpConnect,
    ConnectorAction,
    FileRead,
    FileWrite,
    ProcessStart,
    ScheduledTaskCreate,
    PermissionModeChange,
    SessionStart,
    SessionEnd,
    Metric,
    #[default]
    Other,
}

/// Result of the action the event describes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
    #[default]
    Unknown,
}

macro_rules! str_enum {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),+];

            /// The snake_case name used in JSON, Parquet and rules.
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $text),+ }
            }

            /// Parses the snake_case name; `None` for anything else.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(<$ty>::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(Source {
    Agent => "agent",
    AiGateway => "ai_gateway",
    McpGateway => "mcp_gateway",
    Endpoint => "endpoint",
    Unknown => "unknown",
});

str_enum!(EventKind {
    UserPrompt => "user_prompt",
    ModelCall => "model_call",
    ToolCall => "tool_call",
    ToolDecision => "tool_decision",
    McpConnect => "mcp_connect",
    ConnectorAction => "connector_action",
    FileRead => "file_read",
    FileWrite => "file_write",
    ProcessStart => "process_start",
    ScheduledTaskCreate => "scheduled_task_create",
    PermissionModeChange => "permission_mode_change",
    SessionStart => "session_start",
    SessionEnd => "session_end",
    Metric => "metric",
    Other => "other",
});

str_enum!(Outcome {
    Success => "success",
    Failure => "failure",
    Denied => "denied",
    Unknown => "unknown",
});

/// A short text field of an event: kept inline up to 24 bytes (users,
/// sessions, tools, actions, products nearly always fit), so most events
/// need no allocation for them.
pub type Text = compact_str::CompactString;

/// One normalized record: every OTLP log record and span becomes exactly one.
///
/// Times are nanoseconds since the Unix epoch, UTC. Optional strings are `None`
/// when the sender did not say; attributes that no column takes stay in `attrs`
/// (resource attributes prefixed `resource.`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// Event time: the record's time (span start), else its observed time.
    #[serde(with = "ns_rfc3339")]
    pub time: i64,
    /// When vigil received the record.
    #[serde(with = "ns_rfc3339")]
    pub observed_time: i64,
    /// Stable hash of the normalized content: the same record gets the same id on every replay.
    pub event_id: String,
    pub tenant: Text,
    pub source: Source,
    /// `service.name` of the sender.
    pub product: Option<Text>,
    pub kind: EventKind,
    /// Verb: `send`, `post`, `delete`, `read`, `write`, `create`, `connect`, `execute`, ...
    pub action: Option<Text>,
    pub outcome: Outcome,
    pub user: Option<Text>,
    pub session: Option<Text>,
    pub host: Option<Text>,
    pub tool: Option<Text>,
    pub mcp_server: Option<Text>,
    pub connector: Option<Text>,
    /// URL (or address) reached.
    pub target: Option<Text>,
    /// Host part of `target`, or the server reached.
    pub domain: Option<Text>,
    pub path: Option<Text>,
    /// Command line of a process start or a shell tool call.
    pub command: Option<Text>,
    pub model: Option<Text>,
    pub tokens_in: Option<i64>,
    pub tokens_out: Option<i64>,
    /// A human acted: a prompt, or a permission decision made by a person.
    pub interactive: bool,
    pub attrs: Attrs,
}

/// The names of the event's columns, in schema order. Rules may name any of
/// these, or `attrs.<key>` for an attribute.
pub const EVENT_FIELDS: &[&str] = &[
    "time",
    "observed_time",
    "event_id",
    "tenant",
    "source",
    "product",
    "kind",
    "action",
    "outcome",
    "user",
    "session",
    "host",
    "tool",
    "mcp_server",
    "connector",
    "target",
    "domain",
    "path",
    "command",
    "model",
    "tokens_in",
    "tokens_out",
    "interactive",
    "attrs",
];

/// A field's value as a rule sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

impl<'a> FieldValue<'a> {
    /// The value as text, for string matchers (`Int` and `Bool` print as decimal / `true`).
    pub fn to_text(&self) -> std::borrow::Cow<'a, str> {
        match *self {
            FieldValue::Str(s) => std::borrow::Cow::Borrowed(s),
            FieldValue::Int(i) => std::borrow::Cow::Owned(i.to_string()),
            FieldValue::Bool(b) => std::borrow::Cow::Borrowed(if b { "true" } else { "false" }),
        }
    }

    /// The value as a number, when it is one (strings are parsed).
    pub fn to_f64(&self) -> Option<f64> {
        match *self {
            FieldValue::Str(s) => s.trim().parse().ok(),
            FieldValue::Int(i) => Some(i as f64),
            FieldValue::Bool(_) => None,
        }
    }
}

/// A tool call's arguments are attributes `args.<member>` whatever the
/// source calls them (Claude Code's `tool_input`, Codex's `arguments`, a
/// gateway's `gen_ai.tool.call.arguments`, ...): the mappings' `arguments`.
pub const ARGS_PREFIX: &str = "args";

/// The attribute naming where the source carried the arguments
/// (`tool_input`, `arguments`, ...).
pub const ARGS_ATTR: &str = "vigil.args";

impl Event {
    /// Looks a field up by its column name, `attrs.<key>` or `args.<member>`.
    /// `None` when the field is absent (an unset optional column or a
    /// missing attribute).
    pub fn field(&self, name: &str) -> Option<FieldValue<'_>> {
        use FieldValue::*;
        fn opt(v: &Option<Text>) -> Option<FieldValue<'_>> {
            v.as_deref().map(FieldValue::Str)
        }
        Some(match name {
            "time" => Int(self.time),
            "observed_time" => Int(self.observed_time),
            "event_id" => Str(&self.event_id),
            "tenant" => Str(&self.tenant),
            "source" => Str(self.source.as_str()),
            "product" => return opt(&self.product),
            "kind" => Str(self.kind.as_str()),
            "action" => return opt(&self.action),
            "outcome" => Str(self.outcome.as_str()),
            "user" => return opt(&self.user),
            "session" => return opt(&self.session),
            "host" => return opt(&self.host),
            "tool" => return opt(&self.tool),
            "mcp_server" => return opt(&self.mcp_server),
            "connector" => return opt(&self.connector),
            "target" => return opt(&self.target),
            "domain" => return opt(&self.domain),
            "path" => return opt(&self.path),
            "command" => return opt(&self.command),
            "model" => return opt(&self.model),
            "tokens_in" => return self.tokens_in.map(Int),
            "tokens_out" => return self.tokens_out.map(Int),
            "interactive" => Bool(self.interactive),
            // `args.<member>` is short for `attrs.args.<member>`.
            other if other.starts_with("args.") => return self.attrs.get(other).map(Str),
            other => {
                let key = other.strip_prefix("attrs.")?;
                return self.attrs.get(key).map(Str);
            }
        })
    }

    /// True when `name` is a column, or an `attrs.` or `args.` path a rule
    /// may reference.
    pub fn is_known_field(name: &str) -> bool {
        EVENT_FIELDS.contains(&name)
            || ["attrs.", "args."]
                .iter()
                .any(|p| name.strip_prefix(p).is_some_and(|k| !k.is_empty()))
    }

    /// The optional text columns, in schema order (product to model).
    pub fn text_fields(&self) -> [&Option<Text>; 13] {
        [
            &self.product,
            &self.action,
            &self.user,
            &self.session,
            &self.host,
            &self.tool,
            &self.mcp_server,
            &self.connector,
            &self.target,
            &self.domain,
            &self.path,
            &self.command,
            &self.model,
        ]
    }

    /// Computes the stable id from everything but `observed_time` and the id itself.
    /// The same record normalized twice (live, or replayed) gets the same id.
    pub fn compute_id(&self) -> String {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // Each part length-prefixed, hashed once: the same digest as feeding
        // the parts to a streaming hasher, at a fraction of the cost.
        fn put(buf: &mut Vec<u8>, s: &str) {
            buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            let mut int = itoa::Buffer::new();
            put(buf, int.format(self.time));
            put(buf, &self.tenant);
            put(buf, self.source.as_str());
            put(buf, self.kind.as_str());
            put(buf, self.outcome.as_str());
            for v in self.text_fields() {
                put(buf, v.as_deref().unwrap_or("\u{0}"));
            }
            // As `format!("{:?}/{:?}/{}", tokens_in, tokens_out, interactive)`
            // writes it ("Some(12)/None/true"), without the formatter.
            let at = buf.len();
            buf.extend_from_slice(&[0; 8]);
            for tokens in [self.tokens_in, self.tokens_out] {
                match tokens {
                    Some(n) => {
                        buf.extend_from_slice(b"Some(");
                        buf.extend_from_slice(int.format(n).as_bytes());
                        buf.extend_from_slice(b")/");
                    }
                    None => buf.extend_from_slice(b"None/"),
                }
            }
            buf.extend_from_slice(if self.interactive { b"true" } else { b"false" });
            let len = (buf.len() - at - 8) as u64;
            buf[at..at + 8].copy_from_slice(&len.to_le_bytes());
            for (k, v) in &self.attrs {
                put(buf, k);
                put(buf, v);
            }
            let digest = xxhash_rust::xxh3::xxh3_128(buf);
            // As `format!("{digest:032x}")` writes it: per byte, not per char
            // through the formatter (that was 2% of the receivers' time).
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut hex = [0u8; 32];
            for (i, c) in hex.iter_mut().enumerate() {
                *c = HEX[(digest >> ((31 - i) * 4)) as usize & 0xf];
            }
            String::from_utf8_lossy(&hex).into_owned()
        })
    }
}

/// A small deterministic generator for the crate's randomized tests.
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// How bad an alert is; ordered from least to most severe.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Informational,
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

str_enum!(Severity {
    Informational => "informational",
    Low => "low",
    Medium => "medium",
    High => "high",
    Critical => "critical",
});

impl Severity {
    /// OCSF `severity_id` (1 informational .. 5 critical).
    pub fn ocsf_id(self) -> u8 {
        match self {
            Severity::Informational => 1,
            Severity::Low => 2,
            Severity::Medium => 3,
            Severity::High => 4,
            Severity::Critical => 5,
        }
    }
}

/// A piece of evidence: one event that contributed to an alert, with the
/// fields an analyst reads first.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Evidence {
    pub event_id: String,
    #[serde(with = "ns_rfc3339")]
    pub time: i64,
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl Evidence {
    pub fn from_event(e: &Event) -> Self {
        Evidence {
            event_id: e.event_id.clone(),
            time: e.time,
            kind: e.kind,
            action: e.action.as_deref().map(str::to_owned),
            tool: e.tool.as_deref().map(str::to_owned),
            path: e.path.as_deref().map(str::to_owned),
            domain: e.domain.as_deref().map(str::to_owned),
            command: e.command.as_deref().map(str::to_owned),
        }
    }
}

/// A detection: one rule fired for one key. The JSON form is documented in
/// docs/alert-schema.md and versioned by [`ALERT_SCHEMA_VERSION`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Alert {
    pub schema_version: u32,
    /// Stable hash of rule id, key and triggering event ids.
    pub id: String,
    pub rule_id: String,
    pub title: String,
    pub severity: Severity,
    pub tags: Vec<String>,
    pub tenant: String,
    /// The rule's group-by fields and their values for this alert, e.g. `{"user": "dana@example.com"}`.
    pub key: BTreeMap<String, String>,
    pub user: Option<String>,
    pub session: Option<String>,
    pub host: Option<String>,
    /// Event time of the event that made the rule fire.
    #[serde(with = "ns_rfc3339")]
    pub time: i64,
    /// Event time of the earliest evidence.
    #[serde(with = "ns_rfc3339")]
    pub first_seen: i64,
    /// Event time of the latest evidence.
    #[serde(with = "ns_rfc3339")]
    pub last_seen: i64,
    /// Events that matched (for threshold and sequence rules, the events counted).
    pub count: u64,
    /// Earlier triggers of the same rule and key folded into this alert by suppression.
    pub suppressed: u64,
    /// Ids of the evidence events, in event-time order.
    pub event_ids: Vec<String>,
    /// The evidence events' key fields (at most the first 20).
    pub evidence: Vec<Evidence>,
    /// One human sentence.
    pub summary: String,
    /// True when produced by `vigil replay` rather than the live pipeline.
    pub replayed: bool,
}

impl Alert {
    /// The id of an alert: stable over rule, key and triggering event ids.
    pub fn compute_id(
        rule_id: &str,
        key: &BTreeMap<String, String>,
        trigger_event_ids: &[String],
    ) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut put = |s: &str| {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        put(rule_id);
        for (k, v) in key {
            put(k);
            put(v);
        }
        for id in trigger_event_ids {
            put(id);
        }
        format!("{:032x}", h.digest128())
    }
}

/// Formats nanoseconds since the epoch as RFC 3339 with nanosecond precision, UTC.
pub fn format_ns(ns: i64) -> String {
    Utc.timestamp_nanos(ns)
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses RFC 3339 into nanoseconds since the epoch.
pub fn parse_rfc3339_ns(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()?
        .with_timezone(&Utc)
        .timestamp_nanos_opt()
}

/// Serde helper: `i64` nanoseconds as an RFC 3339 string (accepts integers on
/// input too). Binary formats (not human-readable) carry the integer as is.
pub mod ns_rfc3339 {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ns: &i64, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_i64(*ns);
        }
        s.serialize_str(&super::format_ns(*ns))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        if !d.is_human_readable() {
            return i64::deserialize(d);
        }
        struct V;
        impl de::Visitor<'_> for V {
            type Value = i64;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an RFC 3339 time or integer nanoseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
                super::parse_rfc3339_ns(v)
                    .ok_or_else(|| E::custom(format!("invalid RFC 3339 time {v:?}")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
                Ok(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
                i64::try_from(v).map_err(|_| E::custom("time out of range"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            time: 1_773_154_800_000_000_000,
            tenant: DEFAULT_TENANT.into(),
            source: Source::Agent,
            kind: EventKind::FileRead,
            user: Some("gina@example.com".into()),
            path: Some("/Users/gina/.ssh/id_ed25519".into()),
            attrs: [("terminal.type".to_string(), "iTerm.app".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn event_id_ignores_observed_time_but_not_content() {
        let a = sample();
        let mut b = sample();
        b.observed_time = 42;
        assert_eq!(a.compute_id(), b.compute_id());
        b.path = Some("/Users/gina/.ssh/id_rsa".into());
        assert_ne!(a.compute_id(), b.compute_id());
    }

    #[test]
    fn event_ids_stay_what_earlier_versions_archived() {
        // Archived events carry their id and alerts name them: an id that
        // changed between versions would make a replay disagree with the run
        // that wrote the archive.
        let mut e = sample();
        e.tokens_in = Some(12);
        e.interactive = true;
        assert_eq!(e.compute_id(), "02315c087a75453944af0afffd0ec2ec");
    }

    /// The id as the formatter-based version computed it, part by part.
    fn reference_id(e: &Event) -> String {
        let mut buf = Vec::new();
        let mut put = |s: &str| {
            buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        };
        put(&e.time.to_string());
        put(&e.tenant);
        put(e.source.as_str());
        put(e.kind.as_str());
        put(e.outcome.as_str());
        for v in e.text_fields() {
            put(v.as_deref().unwrap_or("\u{0}"));
        }
        put(&format!(
            "{:?}/{:?}/{}",
            e.tokens_in, e.tokens_out, e.interactive
        ));
        for (k, v) in &e.attrs {
            put(k);
            put(v);
        }
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&buf))
    }

    #[test]
    fn event_ids_match_the_formatted_reference() {
        let mut next = xorshift(11);
        let mut leading_zero = false;
        for i in 0..2000 {
            let mut e = sample();
            e.time = (next() as i64) >> (next() % 64);
            e.tokens_in = (!next().is_multiple_of(3)).then(|| next() as i64 >> (next() % 64));
            e.tokens_out = next().is_multiple_of(3).then(|| -(next() as i64 % 1000));
            e.interactive = next().is_multiple_of(2);
            e.attrs.insert("n", i.to_string());
            let id = e.compute_id();
            assert_eq!(id, reference_id(&e));
            leading_zero |= id.starts_with('0');
        }
        assert!(leading_zero, "some digest starts with a zero nibble");
    }

    #[test]
    fn field_lookup_covers_columns_and_attrs() {
        let e = sample();
        assert_eq!(e.field("kind"), Some(FieldValue::Str("file_read")));
        assert_eq!(e.field("user"), Some(FieldValue::Str("gina@example.com")));
        assert_eq!(
            e.field("attrs.terminal.type"),
            Some(FieldValue::Str("iTerm.app"))
        );
        assert_eq!(e.field("session"), None);
        assert_eq!(e.field("attrs.missing"), None);
        assert!(Event::is_known_field("domain"));
        assert!(!Event::is_known_field("domian"));
        assert!(Event::is_known_field("args.to"));
        assert!(!Event::is_known_field("args."));
    }

    #[test]
    fn args_are_short_for_their_attributes() {
        let mut e = Event::default();
        e.attrs
            .extend([("args.to", "[\"a@x.example\"]"), ("tool_input.cc", "x")]);
        assert_eq!(e.field("args.to"), e.field("attrs.args.to"));
        assert_eq!(
            e.field("args.to"),
            Some(FieldValue::Str("[\"a@x.example\"]"))
        );
        assert_eq!(e.field("args.cc"), None);
    }

    #[test]
    fn event_json_round_trips_with_rfc3339_times() {
        let mut e = sample();
        e.event_id = e.compute_id();
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"time\":\"2026-03-10T15:00:00Z\""), "{text}");
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn enums_parse_their_own_names() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(Severity::parse("high"), Some(Severity::High));
        assert!(Severity::Critical > Severity::High);
    }
}
